"""benchmarks/train_step.py: its PyTorch step computes the JAX step's objective, the
script runs end to end on CPU, and its results file keeps other machines' sections.

The PyTorch objectives (benchmarks/torch_step.py) are an independent transcription of the
methods; comparing them with kd_jax's on the same random logits, feature maps and heads
(float64 on both sides, 1e-10) makes the benchmark's JAX/PyTorch columns a comparison of
the same computation.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch: the PyTorch step of the benchmark")

import jax  # noqa: E402

from kd_jax import methods  # noqa: E402
from kd_jax.methods import ModelOutput  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import torch_step  # noqa: E402
import train_step  # noqa: E402

B, K, C, H = 8, 10, 6, 8


class _Head:
    def __init__(self, weight, bias):
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))
            self.fc.bias.copy_(torch.tensor(bias))


@pytest.mark.parametrize("method_key", ["kd", "dkd", "sd_dkd", "clkd"])
@pytest.mark.parametrize("pair", ["resnet32x4-resnet8x4", "resnet32x4-ShuffleV1"])
def test_torch_objective_equals_kd_jax(method_key, pair):
    config = train_step.make_config(pair, method_key, "float32")
    hp = {k: v for k, v in config.method.to_dict().items() if k != "name"}
    spec = methods.get(config.method.name)
    rng = np.random.default_rng(0)
    s_logits, t_logits = 3 * rng.normal(size=(2, B, K))
    s_map, t_map = np.abs(rng.normal(size=(2, B, H, H, C)))   # post-ReLU maps, NHWC
    s_w, t_w = rng.normal(size=(2, K, C))                      # torch layout (K, C)
    s_b, t_b = rng.normal(size=(2, K))
    labels = rng.integers(0, K, B)
    epoch = 30

    with jax.enable_x64(True):
        compute_loss = spec.build(hp)
        student = ModelOutput(s_logits, {"pre_pool": s_map}, (s_w.T, s_b))
        teacher = ModelOutput(t_logits, {"pre_pool": t_map}, (t_w.T, t_b))
        expected, _ = compute_loss(student, teacher, labels, np.int32(epoch), None)
        expected = float(expected)

    loss = torch_step.objective(method_key, hp, epoch)
    nchw = lambda x: torch.tensor(np.transpose(x, (0, 3, 1, 2)))   # noqa: E731
    got = loss(torch.tensor(s_logits), {"feats": [nchw(s_map)]}, _Head(s_w, s_b),
               torch.tensor(t_logits), {"feats": [nchw(t_map)]}, _Head(t_w, t_b),
               torch.tensor(labels).long())
    assert np.isfinite(expected) and expected > 0
    np.testing.assert_allclose(got.item(), expected, rtol=1e-10)


def test_script_runs_on_cpu_and_keeps_other_sections(tmp_path):
    """One small run: the table row, the CPU scaling subprocess (2 simulated devices), and
    the results file, where it replaces this machine's stale section and keeps the others."""
    key, _ = train_step.section_key(train_step.machine())
    other = "<!-- results:gpu_H100 -->\n## gpu: H100\nkept\n<!-- /results:gpu_H100 -->"
    stale = f"<!-- results:{key} -->\nstale\n<!-- /results:{key} -->"
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Train-step benchmark results\n\n{other}\n\n{stale}\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
           "--pairs", "resnet32x4-resnet8x4", "--methods", "kd", "--dtypes", "bfloat16",
           "--batch-sizes", "8", "--steps", "1", "--repeats", "1", "--warmup", "0",
           "--devices", "2",
           "--scaling-batch", "4", "--no-conv-floor", "--no-torch",
           "--write-results", str(results)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet32x4-resnet8x4   kd      bfloat16" in proc.stdout
    assert "2 device(s): global batch 8" in proc.stdout
    text = results.read_text()
    assert other in text and "stale" not in text
    assert text.count(f"<!-- results:{key} -->") == 1
    assert "| resnet32x4-resnet8x4 | kd | bfloat16 | 8 |" in text
    assert f"jax {jax.__version__}" in text and "| 2 | 8 |" in text
