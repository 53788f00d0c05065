"""kd_jax.data."""
