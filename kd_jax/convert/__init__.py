"""kd_jax.convert."""
