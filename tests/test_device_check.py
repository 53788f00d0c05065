"""benchmarks/device_check.py --tiny: the device check's every part runs on CPU with tiny
models (so the command cannot rot before a device runs it), and what it reports holds here:
no compile after the first call (a padded k-step call included), no donation warning, the
device batches equal the host's, an async save followed by donated steps restores the
saved state, two runs are bitwise equal, the trainer compiles its step once, the evaluation
sums agree on every path, and the RESULTS.md section goes only where --write-results says.
"""

import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_device_check_tiny_on_cpu(tmp_path):
    before = sha(RESULTS)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    out, section = tmp_path / "check.json", tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py"),
                           "--tiny", "--json", str(out), "--write-results", str(section)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and r["backend"]["platform"] == "cpu"
    assert [(s["dtype"], s["k"]) for s in r["steps"]] == [
        ("float32", 1), ("float32", 2), ("bfloat16", 1), ("bfloat16", 2)]
    for s in r["steps"]:
        assert s["later_call_compiles"] == 0 and s["first_call_compiles"] >= 1, s
        assert s["donation_warnings"] == [] and s["step_ms"] > 0, s
    assert r["batches"] == {"train_labels_equal": True, "train_image_max_ulp": 0,
                            "train_image_max_abs": 0.0, "test_batches_bitwise": True}
    assert r["bytes"]["train_logical"] == 9 * 64 * (16 * 16 * 3 + 4)
    assert r["save"]["restored_equals_saved"]
    assert r["repeat"]["bitwise_equal"]
    assert r["trainer"]["train_step_compiles"] == 1 and r["trainer"]["images_per_s"] > 0
    assert r["eval"]["sums_equal"]
    assert [v["calls"] for k, v in r["eval"].items() if k != "sums_equal"] == [4, 4, 2]
    assert r["torch"] == {"skipped": "no CUDA torch on this machine"}
    assert r["defaults"] == {"eval_batch_size": 64, "checkpoint_every_epochs": 1,
                             "checkpoint_every_minutes": 0.0, "steps_per_dispatch": 1}
    text = section.read_text()
    assert "<!-- results:device_check:cpu_" in text and ":tiny -->" in text
    assert "(--tiny: tiny models, a smoke run, not a device measurement)" in text
    assert sha(RESULTS) == before   # the repository's results file is not touched
