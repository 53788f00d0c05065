"""Distillation methods, one self-contained module each, found by name in a registry.

A method (`MethodSpec`) knows its name, whether it needs a teacher, its reference
hyperparameters per dataset and pair (read from kd_jax.reference.table, a layer below), how
to check them, how to build its pure `compute_loss` from them, and any trainable parameters
of its own. The trainer, config validation, the config builder and the summaries read only
this registry, so adding a method is one new module here (plus its config file and tests):

    kd_jax.methods.names()       # ['ce', 'kd', 'dkd', 'nkd', 'sdd', 'clkd', 'msdcrd']
    spec = kd_jax.methods.get("sdd")
"""

from kd_jax.methods.base import (HeadShapes, LossFn, MethodSpec, ModelOutput, Recipe, Terms,
                                 Variants, label_of)
from kd_jax.methods.registry import get, method_keys, names, register

# Importing a method module registers it (the order is the order of names()).
from kd_jax.methods import ce  # noqa: F401,E402
from kd_jax.methods import kd  # noqa: F401,E402
from kd_jax.methods import dkd  # noqa: F401,E402
from kd_jax.methods import nkd  # noqa: F401,E402
from kd_jax.methods import sdd  # noqa: F401,E402
from kd_jax.methods import clkd  # noqa: F401,E402
from kd_jax.methods import msdcrd  # noqa: F401,E402

__all__ = ["HeadShapes", "LossFn", "MethodSpec", "ModelOutput", "Recipe", "Terms", "Variants",
           "get", "label_of", "method_keys", "names", "register"]
