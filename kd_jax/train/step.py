"""The jitted train and eval steps: pure functions over (TrainState, batch).

Data parallelism is jit over a Mesh: the batch is sharded P('data'), the state and the
teacher replicated P(); means over the batch (losses, BatchNorm statistics) are therefore
over the GLOBAL batch, exactly as on one device. The state is donated.

A step updates every student of the state (one for a solo run, several in lockstep) on the
same batch, with ONE teacher forward shared by all of them. The loop over students runs at
trace time: the step is a single XLA program.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.methods import LossFn, ModelOutput
from kd_jax.train.state import StudentState, TrainState, global_norm


class StepStudent(NamedTuple):
    graphdef: Any          # the student's train-mode graphdef
    compute_loss: LossFn
    tx: Optional[optax.GradientTransformation] = None   # its optimizer; None: the step's tx


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh ('data',) over all devices (of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def head_of(model) -> tuple[jax.Array, jax.Array]:
    """(kernel (C, K), bias (K,)) of the model's final linear layer."""
    return model.head.kernel[...], model.head.bias[...]


def total_order_key(x: jax.Array) -> jax.Array:
    """int32 keys (same shape) ordered as the IEEE total order of x as float32, the order
    lax.top_k sorts by: -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN.

    The float's bits as int32 order non-negative floats already; flipping all but the sign
    bit of the negative ones reverses their order."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) 1.0 where the label is among the k largest of logits (B, K): fewer than k
    classes rank above it (k > K: always).

    Class j ranks above label y when logits[j] > logits[y] in the total order, or they are
    equal and j < y: lax.top_k's order (ties to the lower index), so this equals
    ``any(lax.top_k(logits, k)[1] == y)``. Elementwise over (B, K) and a sum over K: a
    sharded batch is counted where it lies, with no gather and no sort of the batch.
    """
    key = total_order_key(logits)
    classes = jnp.arange(logits.shape[-1])
    is_label = classes == labels[:, None]                                   # (B, K)
    label_key = jnp.max(jnp.where(is_label, key, jnp.iinfo(jnp.int32).min), axis=-1,
                        keepdims=True)                                      # (B, 1)
    above = (key > label_key) | ((key == label_key) & (classes < labels[:, None]))
    return (jnp.sum(above, axis=-1) < k).astype(jnp.float32)


def teacher_forward(teacher_graphdef, teacher_state, images) -> ModelOutput:
    """The teacher's outputs as constants (its graphdef is in inference mode)."""
    teacher = nnx.merge(teacher_graphdef, teacher_state)
    logits, features = teacher(images)
    return jax.lax.stop_gradient(ModelOutput(logits, features, head_of(teacher)))


def _student_update(student: StepStudent, s: StudentState, tx, images, labels,
                    teacher_out: Optional[ModelOutput], lr, epoch):
    def loss_fn(params, model_state):
        # Fresh Variable objects (tree.map rebuilds them) created inside the differentiated
        # trace, where BatchNorm may update its statistics.
        model_state = jax.tree.map(lambda x: x, model_state)
        model = nnx.merge(student.graphdef, params["model"], model_state)
        logits, features = model(images)
        out = ModelOutput(logits, features, head_of(model))
        loss, terms = student.compute_loss(out, teacher_out, labels, epoch, params["extra"])
        _, _, new_model_state = nnx.split(model, nnx.Param, ...)
        return loss, (terms, new_model_state, logits)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (terms, model_state, logits)), grads = grad_fn(s.params, s.model_state)
    opt_state = s.opt_state
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    tx = student.tx if student.tx is not None else tx
    updates, opt_state = tx.update(grads, opt_state, s.params)
    params = optax.apply_updates(s.params, updates)
    metrics = {"loss": loss, "top1": jnp.mean(topk_correct(logits, labels, 1)),
               "lr": jnp.asarray(lr, jnp.float32),
               # The raw loss gradient's global L2 norm over all trainable parameters, before
               # any clip (> optimizer.clip_grad_norm: the clip bound this step).
               "grad_norm": global_norm(grads),
               **{k: v for k, v in terms.items() if k != "loss"}}
    return StudentState(params=params, model_state=model_state, opt_state=opt_state), metrics


def _train_step_fn(students: Mapping[str, StepStudent], teacher_graphdef: Optional[Any],
                   tx: Optional[optax.GradientTransformation], compute_dtype: Any):
    """The pure train step (state, teacher_state, batch, lr, epoch) -> (state, metrics)."""

    def train_step(state: TrainState, teacher_state, batch, lr, epoch):
        images = batch["image"].astype(compute_dtype)
        labels = batch["label"]
        teacher_out = None
        if teacher_graphdef is not None:
            teacher_out = teacher_forward(teacher_graphdef, teacher_state, images)
        new_students, metrics = {}, {}
        for name, student in students.items():
            new_students[name], metrics[name] = _student_update(
                student, state.students[name], tx, images, labels, teacher_out, lr, epoch)
        return state.replace(step=state.step + 1, students=new_students), metrics

    return train_step


def make_train_step(students: Mapping[str, StepStudent], teacher_graphdef: Optional[Any],
                    tx: Optional[optax.GradientTransformation], mesh: Mesh,
                    compute_dtype: Any = jnp.float32,
                    prepare: Optional[Callable[[dict], dict]] = None):
    """jit(train_step)(state, teacher_state, batch, lr, epoch) -> (state, metrics).

    batch: {"image": (B, H, W, C) f32, "label": (B,) i32} sharded over 'data';
    lr: f32 scalar (the epoch's learning rate); epoch: i32 scalar from 1 (warmups).
    metrics: {student name: {"loss", "top1" (batch accuracy), "lr", "grad_norm" (pre-clip),
    one entry per term}}. Each student is updated by its StepStudent.tx (its own gradient
    clip), or by `tx` where that is None.
    Images enter the models in `compute_dtype`; parameters, BatchNorm statistics, optimizer
    state and losses stay float32. `prepare`: batch -> batch inside the program, first (e.g.
    kd_jax.data.on_device.finish_host_batch: uint8 host batches mirrored and normalised).
    """
    train_step = _train_step_fn(students, teacher_graphdef, tx, compute_dtype)
    if prepare is not None:
        step_fn = train_step

        def train_step(state, teacher_state, batch, lr, epoch):
            return step_fn(state, teacher_state, prepare(batch), lr, epoch)
    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, out_shardings=(replicated, replicated), donate_argnums=0)


def make_multi_train_step(students: Mapping[str, StepStudent], teacher_graphdef: Optional[Any],
                          tx: Optional[optax.GradientTransformation], mesh: Mesh,
                          make_batch: Callable[[Any, jax.Array], dict],
                          compute_dtype: Any = jnp.float32, unroll: bool = False):
    """jit(multi_step)(state, teacher_state, data, draws, live, lr, epoch) -> (state, metrics).

    k train steps in one call: a lax.scan of the `make_train_step` step over draws (k, B, ...)
    (sharded P(None, 'data')), whose step i trains on ``make_batch(data, draws[i])``, a batch
    built inside the program (e.g. kd_jax.data.on_device.train_batch from the train set on
    the devices). The batch is constrained to P('data') as the host path's batches are.
    live: int32 scalar, the steps that train: steps i >= live are masked (the state leaves
    the step unchanged, bit for bit: a select, not a branch, so no device waits for the
    host), so a call with fewer steps to take (an epoch's end, a resume, total_steps) pads
    its draws to the same k and reuses the one compiled program; with k = 1, live is 1.
    metrics: the step's metrics stacked over the k steps (every leaf (k,)); the masked
    steps' entries are meaningless and the caller drops them. Only the state is donated:
    `data` stays on the devices for the next call.
    `unroll`: the k steps as one straight-line program (compile time grows about k-fold);
    measured on XLA's CPU backend, a step inside the rolled loop ran several times slower than
    alone. k = 1 is always a plain call.
    """
    train_step = _train_step_fn(students, teacher_graphdef, tx, compute_dtype)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    def multi_step(state: TrainState, teacher_state, data, draws, live, lr, epoch):
        k = draws.shape[0]

        def body(state, xs):
            step_draws, i = xs
            batch = jax.lax.with_sharding_constraint(make_batch(data, step_draws),
                                                     batch_sharding)
            new_state, metrics = train_step(state, teacher_state, batch, lr, epoch)
            if k > 1:   # a padded step keeps the state it was given
                new_state = jax.tree.map(lambda new, old: jnp.where(i < live, new, old),
                                         new_state, state)
            return new_state, metrics

        steps = jnp.arange(k, dtype=jnp.int32)
        if unroll or k == 1:
            # A Python loop at trace time: no XLA while loop at all (lax.scan with unroll=True
            # keeps a one-trip loop for k = 1, which XLA's CPU backend also ran slowly).
            per_step = []
            for i in range(k):
                state, metrics = body(state, (draws[i], steps[i]))
                per_step.append(metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *per_step)
        return jax.lax.scan(body, state, (draws, steps))

    return jax.jit(multi_step, out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(eval_graphdefs: Mapping[str, Any], mesh: Mesh,
                   compute_dtype: Any = jnp.float32,
                   make_batch: Optional[Callable[[Any, jax.Array], dict]] = None):
    """jit(eval_step)(students, batch) -> {name: sums {"top1", "top5", "count"}}.

    students: {name: (params, model_state)}. batch carries "mask" (B,) marking real (1) vs
    padding (0) examples, so the full test set is covered with a fixed batch shape.
    With `make_batch`: jit(eval_step)(students, data, i), whose batch is
    ``make_batch(data, i)`` built inside the program (e.g. batch i of
    kd_jax.data.device_test_set.eval_batch from the test set on the devices), constrained
    to P('data') as the host path's batches are.
    """
    batch_sharding = NamedSharding(mesh, P("data"))

    def sums_of(students, batch):
        images = batch["image"].astype(compute_dtype)
        mask = batch["mask"].astype(jnp.float32)
        sums = {}
        for name, graphdef in eval_graphdefs.items():
            model = nnx.merge(graphdef, *students[name])
            logits, _ = model(images)
            sums[name] = {"top1": jnp.sum(topk_correct(logits, batch["label"], 1) * mask),
                          "top5": jnp.sum(topk_correct(logits, batch["label"], 5) * mask),
                          "count": jnp.sum(mask)}
        return sums

    if make_batch is None:
        eval_step = sums_of
    else:
        def eval_step(students, data, i):
            batch = jax.lax.with_sharding_constraint(make_batch(data, i), batch_sharding)
            return sums_of(students, batch)

    return jax.jit(eval_step, out_shardings=NamedSharding(mesh, P()))
