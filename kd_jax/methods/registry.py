"""Name -> MethodSpec registry; the trainer, validation, quickstart and summary read it."""

from __future__ import annotations

from kd_jax.methods.base import MethodSpec

_SPECS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _SPECS:
        raise ValueError(f"method {spec.name!r} registered twice")
    _SPECS[spec.name] = spec
    return spec


def names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_SPECS)


def get(name: str) -> MethodSpec:
    if name not in _SPECS:
        raise ValueError(f"method.name={name!r}; allowed: {', '.join(_SPECS)}")
    return _SPECS[name]


def method_keys() -> dict[str, tuple[str, str]]:
    """Every method key ('kd', 'sd_dkd', ...) -> (method name, variant).

    A key is the method's name, or the key of one of its variants (SDD: 'sd_kd').
    """
    keys = {}
    for spec in _SPECS.values():
        for variant in spec.variant_choices or ("",):
            keys[spec.variant_key(variant)] = (spec.name, variant)
    return keys
