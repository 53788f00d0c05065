"""Which machine a number came from: processor, vector instruction set, devices, versions.

XLA compiles CPU code for the instruction set of the host processor (with or without FMA,
AVX2, AVX-512), so two processors of one class can round differently and a seeded run
repeats exactly only on the same kind of machine. Printed results carry this record so that
two of them can be compared.
"""

from __future__ import annotations

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


def describe() -> dict:
    """{platform, device_kind, device_count, cpu, cores, isa: {flag: bool}, os, versions,
    xla_flags} of this process's machine and JAX backend."""
    import jax

    device = jax.devices()[0]
    cpu, flags = _cpuinfo()
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "cpu": cpu, "cores": os.cpu_count(),
            "isa": {f: f in flags for f in ISA_FLAGS} if flags else {},
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
