"""The reference recipes: the hyperparameter table, the published numbers, the config builder.

- `kd_jax.recipes.table`: per dataset the solver, per pair the lr, DKD beta and SDD scales.
- `kd_jax.recipes.published`: the published top-1 that runs are compared with.
- `kd_jax.recipes.builder`: (method, dataset, pair) -> a config holding every value.
"""

from kd_jax.recipes import published, table
from kd_jax.recipes.builder import (base_config, build_config, build_lockstep_config,
                                    method_block, pairs, parse_pair, parse_students,
                                    reference_hparams, split_variant, student_entry)

__all__ = ["base_config", "build_config", "build_lockstep_config", "method_block", "pairs",
           "parse_pair", "parse_students", "published", "reference_hparams", "split_variant",
           "student_entry", "table"]
