"""kd_jax.train."""
