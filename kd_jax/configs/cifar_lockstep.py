"""Several students of one CIFAR-100 pair trained in lockstep, sharing one teacher forward.

The argument is the pair, then the students by method key: ce, kd, dkd, nkd, clkd, sd_kd,
sd_dkd, sd_nkd (and msdcrd); `key@k` adds a student of the same method initialised with
seed + k. Each student has its method's reference recipe for the pair and its own outputs
in <workdir>/<name> (summary.json, metrics.jsonl, final_model); one checkpoint holds all.

Usage:
    python -m kd_jax.main --config cifar_lockstep.py:resnet32x4-resnet8x4,kd,dkd,sd_dkd \
        --workdir DIR --config.teacher.checkpoint=teachers/resnet32x4
Override one student's value with --config.students.<name>.method.<key>=VALUE.
"""

from kd_jax import data, recipes


def get_config(arg=None):
    return recipes.build_lockstep_config(data.CIFAR100, arg,
                                         default="resnet32x4-resnet8x4,kd,dkd,sd_dkd")
