"""Reproduce a published table in one command: `python -m kd_jax.reproduce TABLE --workdir DIR`.

- `kd_jax.reproduce.plan`: the table's groups (pair x seed), their lockstep and separate
  configs, steps per run, teachers, disk.
- `kd_jax.reproduce.measure`: a group's step: its memory and a short measured step; the
  device steps benchmarks/RESULTS.md holds.
- `kd_jax.reproduce.runner`: running the plan (lockstep rule, workdir locks, resumption).
- `kd_jax.reproduce.report`: ours beside the published numbers (text, Markdown, CSV).
- `kd_jax.reproduce.dry_run`: `--dry-run`'s plan with its time and disk estimates.
- `python -m kd_jax.reproduce` (`__main__`): the command line.

The tables are kd_jax.reference.published.TABLES (`--list`).
"""
