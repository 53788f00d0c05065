"""The shipped config files: `python -m kd_jax.main --config NAME.py[:ARG]` picks one by name.

Each file is plain Python with a `get_config(arg)` returning a ConfigDict (see
kd_jax.recipes.builder); the CLI loads them by path (kd_jax.cli.resolve_config_path), so they
are package files here only to ship inside the wheel.
"""
