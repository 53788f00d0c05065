"""Without PyTorch: `python -m kd_jax.teachers fetch`, `python -m kd_jax.convert`,
student.init_from and `python -m kd_jax.export --to torch` in a fresh interpreter where
`import torch` fails.

The block is Python's own: `sys.modules["torch"] = None` makes every `import torch` raise
ImportError, as on an install without torch; the run must leave it so (nothing imported torch
or replaced the block). The environment is test_no_tensorflow's `core_env`. The files are
written here by torch; oracle: the torch model's logits, which the student initialised from
the .pth must give, with the same weights as the fetched and the converted teacher; and the
torch model's state_dict, which the export of the converted teacher must hold bit for bit
(read by torch.load(weights_only=True) and loaded with strict=True).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the teacher files are written with torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_models  # noqa: E402
from test_no_tensorflow import core_env  # noqa: E402

BLOCK = 'import sys; sys.modules["torch"] = None\n'

RUN = BLOCK + """
import json
import jax
import ml_collections
import numpy as np
from flax import nnx
from kd_jax import convert
from kd_jax.convert.__main__ import main as convert_main
from kd_jax.export import main as export_main
from kd_jax.teachers import published_path
from kd_jax.teachers.__main__ import main as teachers_main
from kd_jax.train import setup
archive, pth, out, exported = sys.argv[1:5]
assert teachers_main(["fetch", "all", "--from", archive]) == 0
assert convert_main(["--arch", "resnet56", "--num-classes", "100", pth, out]) == 0
assert export_main([out, "--to", "torch", exported]) == 0
config = ml_collections.ConfigDict({"student": {"arch": "resnet56", "init_from": pth}})
models = {"fetched": convert.load_teacher(published_path("resnet56"), "resnet56", 100),
          "converted": convert.load_teacher(out, "resnet56", 100),
          "init_from": setup.init_from(config, 100)}
states = {name: jax.tree.leaves(nnx.state(m)) for name, m in models.items()}
same = all(np.array_equal(a, b) for leaves in states.values()
           for a, b in zip(leaves, states["init_from"], strict=True))
x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
logits = np.asarray(nnx.jit(lambda m, x: m(x)[0])(models["init_from"], x))
assert sys.modules["torch"] is None, "something replaced the block"
print(json.dumps({"same_state": same, "logits": logits.tolist()}))
"""


def run(tmp_path, code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=tmp_path,
                          env=core_env(tmp_path), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fetch_convert_and_init_from_without_torch(tmp_path):
    model = torch_models.randomize_(torch_models.create("resnet56", 100), 0).eval()
    member = tmp_path / "src" / "cifar_teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    os.makedirs(member.parent)
    # RepDistiller's 2019 files: the legacy layout, the accuracy as a tensor.
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": torch.tensor(72.3)},
               member, _use_new_zipfile_serialization=False)
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "cifar_teachers", arcname="cifar_teachers")
    exported = tmp_path / "exported.pth"
    proc = run(tmp_path, RUN, archive, member, tmp_path / "converted", exported)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "installed" in proc.stdout and "not in" in proc.stdout
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))[0].numpy()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same_state"], "fetch, convert and init_from read different weights"
    torch_models.assert_close(np.array(result["logits"], np.float32), expected, "logits")
    state_dict = torch.load(exported, weights_only=True)
    torch_models.create("resnet56", 100).load_state_dict(state_dict, strict=True)
    for key, want in model.state_dict().items():   # kd_jax writes num_batches_tracked = 0
        assert torch.equal(state_dict[key], torch.zeros_like(want) if
                           key.endswith("num_batches_tracked") else want), key


def test_the_block_makes_import_torch_fail(tmp_path):
    """The check itself can fail: under the block, `import torch` raises ImportError."""
    proc = run(tmp_path, BLOCK + "import torch")
    assert proc.returncode == 1 and "Error: import of torch halted" in proc.stderr
