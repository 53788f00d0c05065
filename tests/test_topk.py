"""top-1 / top-5 counted as ranks (kd_jax.train.step.topk_correct), without sorting the batch.

- Equal to an independent numpy definition (a stable descending sort of each row, NaN
  above +inf and -NaN below -inf, -0.0 below +0.0, ties to the lower class index) and to
  lax.top_k, which the metric used before, on rows full of ties and special values.
- On 4 simulated devices the compiled train and eval steps hold no TopK, no sort and no
  all-gather of the (B, K) logits: each device counts its own rows (before, an all-gather of
  f32[64,10] fed a TopK, and every device sorted the whole batch).
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from kd_jax.train.step import topk_correct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rank_key(v: float) -> tuple:
    """A class's place in lax.top_k's order: NaNs by sign at the ends, then the value, and
    -0.0 below +0.0."""
    if math.isnan(v):
        return (-1 if math.copysign(1.0, v) < 0 else 1, 0.0, 0)
    return (0, v, 0 if math.copysign(1.0, v) < 0 else 1)


def numpy_topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        # sorted(..., reverse=True) is stable: equal keys keep the lower index first.
        order = sorted(range(len(row)), key=lambda j: rank_key(row[j]), reverse=True)
        out.append(float(label in order[:k]))
    return np.asarray(out, np.float32)


def rows_with_ties(num_rows: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits drawn from a few values (so most rows tie), with +-0.0, +-inf and +-NaN."""
    rng = np.random.default_rng(seed)
    values = np.array([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan, -np.nan, 1e-30],
                      np.float32)
    logits = values[rng.integers(0, len(values), (num_rows, num_classes))]
    logits[: num_rows // 4] = rng.integers(0, 3, (num_rows // 4, num_classes))   # plain ties
    return logits, rng.integers(0, num_classes, num_rows).astype(np.int32)


@pytest.mark.parametrize("num_classes", [3, 10])
def test_rank_count_equals_sorting(num_classes):
    logits, labels = rows_with_ties(400, num_classes, seed=num_classes)
    nan_signs = np.signbit(logits[np.isnan(logits)])
    assert nan_signs.any() and not nan_signs.all()   # both NaNs occur
    fn = jax.jit(topk_correct, static_argnums=2)
    for k in (1, 5):
        got = np.asarray(fn(logits, labels, k))
        np.testing.assert_array_equal(got, numpy_topk_correct(logits, labels, k),
                                      err_msg=f"k={k}")
        top = np.asarray(jax.lax.top_k(logits, min(k, num_classes))[1])
        np.testing.assert_array_equal(got, np.any(top == labels[:, None], axis=-1))


HLO = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    jax.config.update("jax_disable_most_optimizations", True)
    import kd_jax.testing
    from kd_jax import data, recipes
    from kd_jax.train import config_validation, trainer
    c = recipes.build_config("sdd", data.CIFAR100, None, default_pair="resnet32x4-ShuffleV1")
    c.dataset.update(name="synthetic", num_classes=10, image_size=16)
    c.student.arch, c.teacher.arch, c.teacher.checkpoint = "tiny_cnn", "tiny_cnn_wide", "random"
    b = trainer.build(c, config_validation.validate(c), 10)
    assert jax.device_count() == 4
    batch = kd_jax.testing.random_batch(b.mesh, 64, 10, 16)
    train = b.train_step.lower(b.state, b.teacher_state, batch, np.float32(0.1),
                               np.int32(1)).compile().as_text()
    students = {n: (s.params["model"], s.model_state) for n, s in b.state.students.items()}
    eval_batch = dict(batch, mask=jax.numpy.ones(64))
    evaluate = b.eval_step.lower(students, eval_batch).compile().as_text()
    print("HLO " + json.dumps({"train": train, "eval": evaluate}))
""")


def test_no_gather_or_sort_of_the_batch_on_four_devices(tmp_path):
    script = tmp_path / "hlo.py"
    script.write_text(HLO)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hlo = json.loads(proc.stdout.split("HLO ", 1)[1])
    for name, text in hlo.items():
        lines = text.splitlines()
        assert any("all-reduce" in l for l in lines), name   # really compiled for 4 devices
        bad = [l.strip()[:160] for l in lines
               if "TopK" in l or " sort(" in l or ("all-gather(" in l and "[64,10]" in l)]
        assert not bad, f"{name}: {bad}"
