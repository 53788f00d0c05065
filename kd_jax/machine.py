"""Which machine a number came from: processor, vector instruction set, devices, versions.

XLA compiles CPU code for the instruction set of the host processor (with or without FMA,
AVX2, AVX-512), so two processors of one class can round differently and a seeded run
repeats exactly only on the same kind of machine. Printed results carry this record so that
two of them can be compared.
"""

from __future__ import annotations

import functools
import os
import platform
import re

# The CPU features that change which code XLA generates (and so how it rounds).
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_bf16", "amx_bf16")
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "torch")


def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(model name, flags) from /proc/cpuinfo; (platform.processor(), ()) without it."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return platform.processor() or "-", ()
    names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return (names[0].strip() if names else platform.processor() or "-",
            tuple(flags[0].split()) if flags else ())


@functools.lru_cache(maxsize=None)
def _isa() -> tuple[tuple[str, bool], ...]:
    _, flags = _cpuinfo()
    return tuple((f, f in flags) for f in ISA_FLAGS) if flags else ()


def isa() -> dict[str, bool]:
    """{flag: present} for ISA_FLAGS on this host's processor; {} where unknown (no
    /proc/cpuinfo, e.g. macOS). Read once: the processor does not change within a process."""
    return dict(_isa())


# XLA's --xla_cpu_max_isa levels, in order, and the first one each ISA flag needs.
_MAX_ISA_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX")
_FLAG_LEVEL = {"sse4_2": "SSE4_2", "avx": "AVX", "fma": "AVX2", "avx2": "AVX2",
               "avx512f": "AVX512", "avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX"}


def xla_isa(xla_flags: str | None = None) -> dict[str, bool]:
    """`isa()` less the flags above `--xla_cpu_max_isa` in XLA_FLAGS (or `xla_flags`): the
    instruction set XLA compiles for, so that an AVX-512 machine run with
    `--xla_cpu_max_isa=AVX2` stands in for an AVX2 processor."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    found = re.findall(r"--xla_cpu_max_isa=(\w+)", flags)
    cap = found[-1].upper() if found else ""
    if cap not in _MAX_ISA_LEVELS:
        return isa()
    top = _MAX_ISA_LEVELS.index(cap)
    return {f: on and _MAX_ISA_LEVELS.index(_FLAG_LEVEL[f]) <= top for f, on in isa().items()}


# NVIDIA GPUs run bfloat16 on tensor cores from compute capability 8.0 (Ampere: A100, A10,
# L4, H100); before (T4 7.5, V100 7.0, P100 6.0) bf16 has no tensor cores and is slower.
BF16_TENSOR_CORES_FROM = (8, 0)


def bf16_is_fast(device) -> bool:
    """Whether `device` (a jax.Device) runs bfloat16 convolutions and matmuls at full rate:
    TPUs, and GPUs of compute capability >= BF16_TENSOR_CORES_FROM (one that does not say:
    assumed yes); not CPUs, which convert bf16."""
    if device.platform == "tpu":
        return True
    if device.platform != "gpu":
        return False
    try:   # CUDA devices: "major.minor", e.g. "7.5"
        capability = tuple(int(x) for x in str(device.compute_capability).split("."))
    except (AttributeError, ValueError):
        return True
    return capability >= BF16_TENSOR_CORES_FROM


def describe() -> dict:
    """{platform, device_kind, device_count, cpu, cores, isa: {flag: bool}, os, versions,
    xla_flags} of this process's machine and JAX backend."""
    import jax

    device = jax.devices()[0]
    cpu, _ = _cpuinfo()
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "cpu": cpu, "cores": os.cpu_count(),
            "isa": isa(),
            "os": platform.platform(), "versions": versions,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def one_line(info: dict) -> str:
    """'AMD EPYC, 2 cores (avx fma; no avx2 avx512f ...), cpu x 1, jax 0.10.2' (+ XLA_FLAGS)."""
    isa = info.get("isa") or {}
    has = " ".join(f for f, on in isa.items() if on)
    lacks = " ".join(f for f, on in isa.items() if not on)
    features = f" ({has or '-'}{'; no ' + lacks if lacks else ''})" if isa else ""
    devices = (f"{info['platform']} x {info['device_count']}" if info["platform"] == "cpu"
               else f"{info['device_count']} x {info['device_kind']}")
    line = (f"{info['cpu']}, {info['cores']} cores{features}, {devices}, "
            f"jax {info['versions'].get('jax', '?')}")
    return line + (f", XLA_FLAGS={info['xla_flags']}" if info.get("xla_flags") else "")
