"""The jitted train and eval steps: pure functions over (TrainState, batch).

Data parallelism is jit over a Mesh: the batch is sharded P('data'), the state and the
teacher replicated P(); means over the batch (losses, BatchNorm statistics) are therefore
over the GLOBAL batch, exactly as on one device. The state is donated.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from kd_jax.train.methods import Method
from kd_jax.train.state import TrainState


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh ('data',) over all devices (of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def _head(model) -> tuple[jax.Array, jax.Array]:
    return model.head.kernel[...], model.head.bias[...]


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B,) 1.0 where the label is among the k largest logits (k clipped to K)."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def make_train_step(graphdef, teacher_graphdef: Optional[Any], method: Method,
                    tx: optax.GradientTransformation, mesh: Mesh):
    """jit(train_step)(state, teacher_state, batch, lr, epoch) -> (state, metrics).

    batch: {"image": (B, H, W, C) f32, "label": (B,) i32} sharded over 'data';
    lr: f32 scalar (the epoch's learning rate); epoch: i32 scalar from 1 (warmups).
    metrics: {"loss", "top1" (batch accuracy), "lr", one entry per loss term}.
    """

    def train_step(state: TrainState, teacher_state, batch, lr, epoch):
        images, labels = batch["image"], batch["label"]
        teacher_out = teacher_head = None
        if teacher_graphdef is not None:
            # Teacher in inference mode (eval graphdef) and a constant for the gradient.
            teacher = nnx.merge(teacher_graphdef, teacher_state)
            teacher_out = jax.lax.stop_gradient(teacher(images))
            teacher_head = jax.lax.stop_gradient(_head(teacher))

        def loss_fn(params, model_state):
            # Fresh Variable objects (tree.map rebuilds them) created inside the
            # differentiated trace, where BatchNorm may update its statistics.
            model_state = jax.tree.map(lambda x: x, model_state)
            student = nnx.merge(graphdef, params["student"], model_state)
            student_out = student(images)
            loss, terms = method.compute_loss(student_out, teacher_out, labels, epoch,
                                              _head(student), teacher_head, params["extra"])
            _, _, new_model_state = nnx.split(student, nnx.Param, ...)
            return loss, (terms, new_model_state, student_out[0])

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (terms, model_state, logits)), grads = grad_fn(state.params, state.model_state)
        opt_state = state.opt_state
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "top1": jnp.mean(_topk_correct(logits, labels, 1)),
                   "lr": jnp.asarray(lr, jnp.float32),
                   **{k: v for k, v in terms.items() if k != "loss"}}
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state)
        return new_state, metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(eval_graphdef, mesh: Mesh):
    """jit(eval_step)(params, model_state, batch) -> sums {"top1", "top5", "count"}.

    batch carries "mask" (B,) marking real (1) vs padding (0) examples, so the full test
    set is covered with a fixed batch shape.
    """

    def eval_step(params, model_state, batch):
        model = nnx.merge(eval_graphdef, params, model_state)
        logits, _ = model(batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        return {"top1": jnp.sum(_topk_correct(logits, batch["label"], 1) * mask),
                "top5": jnp.sum(_topk_correct(logits, batch["label"], 5) * mask),
                "count": jnp.sum(mask)}

    return jax.jit(eval_step, out_shardings=NamedSharding(mesh, P()))
