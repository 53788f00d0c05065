"""The reference recipes as configs: (method, dataset, pair) -> a config holding every value.

- `kd_jax.recipes.builder`: the config builder over the methods' reference hyperparameters.
- `kd_jax.recipes.quickstart`: the quickstart's teacher and pipeline configs.
- `kd_jax.recipes.own_data`: the configs of the user's own data (custom_teacher.py,
  custom_distill.py).
- `python -m kd_jax.recipes`: the recipe tables of docs/recipes.md.

The data the recipes are made of (solver, per-pair lr, DKD beta, SDD scales, gradient clips,
published top-1) lives a layer below the methods, in `kd_jax.reference`.
"""

from kd_jax.recipes.builder import (base_config, build_config, build_lockstep_config,
                                    method_block, pairs, parse_pair, parse_students,
                                    reference_hparams, split_variant, student_entry)

__all__ = ["base_config", "build_config", "build_lockstep_config", "method_block", "pairs",
           "parse_pair", "parse_students", "reference_hparams", "split_variant",
           "student_entry"]
