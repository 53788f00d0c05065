"""What the reference code bases set and the papers publish: pure data, no jax.

- `kd_jax.reference.table`: per dataset the solver; per (teacher, student) pair the student's
  lr, DKD's beta, SDD's scale sets and MSDCRD's windows; the gradient clip of each method's
  reference trainer.
- `kd_jax.reference.published`: the published top-1 that runs are compared with.

This package sits below `kd_jax.methods` (whose `hparams` read the table) and imports nothing
of kd_jax but `kd_jax.data.catalog` (dataset names); `kd_jax.recipes` turns it, through the
methods, into configs.
"""
