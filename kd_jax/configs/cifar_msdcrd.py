"""MSDCRD (multi-scale feature decoupling + contrastive distillation) on CIFAR-100.

A reimplementation of the idea in the abstract of arXiv 2502.05835, not a reproduction: no
paper text or code was available. Defaults: 1.0*CE + 0.8*(sample +
feature) over sliding windows (1, 2, 4) clipped to the pair's common pre-pool map, tau 0.07,
complementary samples weighted 2, parameter-free embedding through each network's own
classifier; KD's solver and the pair's lr.

Usage: python -m kd_jax.main --config cifar_msdcrd.py:resnet32x4-ShuffleV1 --workdir DIR
Options: --config.method.embedding=projection (trainable 128-d heads, CRD-style),
--config.method.chunk_size=256 (stream the sample-wise similarity), --config.method.kd_weight=1
(add KD at T=4), --config.method.complementary_weight=1 (no categorisation),
--config.method.windows="(1,2)".
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_config("msdcrd", data.CIFAR100, arg, default_pair="resnet32x4-ShuffleV1")
