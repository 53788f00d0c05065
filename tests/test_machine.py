"""kd_jax.machine: the record of the machine a printed result came from."""

import os

import jax

from kd_jax import machine


def test_describe_matches_this_process():
    info = machine.describe()
    assert info["platform"] == jax.devices()[0].platform
    assert info["device_count"] == jax.device_count() and info["cores"] == os.cpu_count()
    assert info["versions"]["jax"] == jax.__version__
    assert info["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith(("flags", "Features"))]
        flags = set(lines[0].split(":", 1)[1].split()) if lines else set()
        assert info["isa"] == ({f: f in flags for f in machine.ISA_FLAGS} if flags else {})


def test_one_line():
    cpu = {"platform": "cpu", "device_kind": "cpu", "device_count": 2, "cpu": "AMD EPYC",
           "cores": 2, "isa": {"avx": True, "fma": True, "avx2": False},
           "versions": {"jax": "0.10.2"}, "xla_flags": "--xla_cpu_max_isa=AVX2"}
    assert machine.one_line(cpu) == ("AMD EPYC, 2 cores (avx fma; no avx2), cpu x 2, jax 0.10.2, "
                                     "XLA_FLAGS=--xla_cpu_max_isa=AVX2")
    gpu = {**cpu, "platform": "gpu", "device_kind": "NVIDIA H200", "device_count": 8,
           "cores": 16, "isa": {}, "xla_flags": ""}
    assert machine.one_line(gpu) == "AMD EPYC, 16 cores, 8 x NVIDIA H200, jax 0.10.2"


def test_isa_flag_changes_rounding():
    """benchmarks/isa_rounding.py: XLA still takes --xla_cpu_max_isa (docs/quickstart.md's
    stand-ins for other processors), and SSE4.2 code (no AVX, no FMA) rounds the probe
    differently."""
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "isa_rounding.py"),
                          "--isas", "SSE4_2"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    row = re.search(r"^SSE4_2\s+([\d.]+)%\s+(\S+)", out, re.M)
    assert row is not None, out
    if machine.describe()["isa"].get("avx"):   # only a machine with AVX has something to lose
        assert float(row[1]) > 0 and float(row[2]) > 0, out


class FakeDevice:
    def __init__(self, platform, **attrs):
        self.platform = platform
        self.__dict__.update(attrs)


def test_bf16_is_fast_on_tpus_and_ampere_or_later_gpus():
    assert machine.bf16_is_fast(FakeDevice("tpu"))
    for capability, fast in (("7.5", False), ("7.0", False), ("6.0", False), ("8.0", True),
                             ("8.9", True), ("9.0", True), ("10.0", True), ("12.1", True)):
        assert machine.bf16_is_fast(FakeDevice("gpu", compute_capability=capability)) == fast
    assert machine.bf16_is_fast(FakeDevice("gpu"))   # no capability to read: assumed yes
    assert not machine.bf16_is_fast(jax.devices()[0])   # this CPU
