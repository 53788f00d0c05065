"""The training state: one pytree of arrays, with the module graphs kept outside.

    TrainState(step, students={name: StudentState}, rng)
    StudentState(params={"model": the student's Params, "extra": method params or None},
                 model_state=the student's other variables (BatchNorm statistics),
                 opt_state)

A solo run has one student (named "student"); a lockstep run one per entry, all updated by
the same jitted step. Each student is split ONCE with nnx.split into (graphdef, params,
model_state); the step merges them back inside (no per-step Python graph traversal). `extra`
is where a method keeps trainable modules of its own (e.g. projection heads); they are
optimised with the student. The epoch is not stored: it is step // steps_per_epoch + 1, and
the data order is a function of (seed, epoch, step), so a restored state resumes exactly.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class StudentState:
    params: Any              # {"model": nnx.State of Params, "extra": pytree or None}
    model_state: Any         # nnx.State of the student's other variables (BatchStat).
    opt_state: Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimizer steps taken.
    students: Any            # {name: StudentState}
    rng: jax.Array           # uint32 (2,) raw key, for methods that sample.


CLIP_EPS = 1e-6   # torch.nn.utils.clip_grad_norm_'s epsilon in max_norm / (norm + eps).


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves together (a scalar, at least float32), as torch's norm_type=2."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(jnp.float32, *leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dtype))) for x in leaves))


def clip_grad_norm(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2) as an optax transform.

    g <- g * min(max_norm / (||g||_2 + 1e-6), 1) with ||g|| the global norm over every
    leaf; max_norm <= 0 leaves g unchanged. Unlike optax.clip_by_global_norm (which scales by
    max_norm / ||g|| without the epsilon), this is torch's formula to the last bit. Stateless.
    """

    def update_fn(updates, state, params=None):
        del params
        if max_norm <= 0:
            return updates, state
        coef = jnp.minimum(max_norm / (global_norm(updates) + CLIP_EPS), 1.0)
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(optimizer_config, clip_grad_norm_to: Optional[float] = None
                   ) -> optax.GradientTransformation:
    """[gradient clip ->] SGD with momentum and COUPLED weight decay (PyTorch's SGD
    weight_decay) on all params.

    torch (SDD's BaseTrainer.train_iter): loss.backward(); clip_grad_norm_(max_norm=40);
    optimizer.step(), where step does g += wd * p; buf = m * buf + g; p -= lr * buf. So the
    clip sees the RAW loss gradient and comes first in the chain; optax.sgd's trace is the
    same buffer and scales by lr after it, so changing lr between epochs matches too. The lr
    is an injected hyperparameter set by the step from its `lr` argument (no recompile).

    clip_grad_norm_to: the max norm (0 = off); None reads optimizer_config.clip_grad_norm
    (absent: 0). The chain has the same (stateless) clip element either way, so checkpoints
    of runs with and without a clip have the same tree.
    """
    o = optimizer_config
    max_norm = (float(o.get("clip_grad_norm", 0.0) or 0.0) if clip_grad_norm_to is None
                else float(clip_grad_norm_to))

    def chain(learning_rate):
        return optax.chain(clip_grad_norm(max_norm),
                           optax.add_decayed_weights(o.weight_decay),
                           optax.sgd(learning_rate, momentum=o.momentum or None))

    return optax.inject_hyperparams(chain)(learning_rate=o.lr)


def split_student(student: nnx.Module):
    """(train graphdef, eval graphdef, params, model_state) of a student module.

    The two graphdefs differ only in BatchNorm's `use_running_average` flag.
    """
    student.eval()
    eval_graphdef = nnx.graphdef(student)
    student.train()
    graphdef, params, model_state = nnx.split(student, nnx.Param, ...)
    return graphdef, eval_graphdef, params, model_state


def init_student(params, model_state, tx: optax.GradientTransformation,
                 extra: Any = None) -> StudentState:
    trainable = {"model": params, "extra": extra}
    return StudentState(params=trainable, model_state=model_state, opt_state=tx.init(trainable))


def init_state(students: dict[str, StudentState], seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), students=dict(students),
                      rng=jax.random.PRNGKey(seed))


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the orbax restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state)


def param_count(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


@jax.jit
def non_finite_counts(students: Any) -> tuple[dict, dict]:
    """({name: int32 count of NaN/inf values}, {name: int32 count of float values}) over
    each student's whole state (parameters, BatchNorm statistics, optimizer state).

    One fused reduction on the device: cheap enough to run before every save and export.
    """
    def counts(tree):
        leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
        bad = sum((jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for x in leaves),
                  jnp.zeros((), jnp.int32))
        return bad, sum(int(x.size) for x in leaves)

    bad, total = {}, {}
    for name, s in students.items():
        bad[name], total[name] = counts(s)
    return bad, total
