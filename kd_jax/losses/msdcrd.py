"""MSDCRD: contrastive representation distillation via multi-scale feature decoupling.

Wang et al., arXiv 2502.05835. No code exists and only the abstracts could be consulted:
this module implements a reconstruction of the idea the abstract states (sliding-window
multi-scale local features, sample categorisation, sample-wise and feature-wise contrastive
losses within one batch), a reimplementation of that idea, not a reproduction.

Pipeline for one batch, per window size w in `windows`:
1. `adaptive_pool_to`: if the student and teacher pre-pool maps (B, H, W, C) differ in
   spatial size, each is adaptive-average-pooled to the common grid (min H, min W) (the
   larger goes to the smaller; SDD's torch-style windows [floor(i*L/P), ceil((i+1)*L/P))).
2. `sliding_window_pool`: average pooling with a w x w window and stride 1 -> (B, P, C),
   P = (h-w+1)(w'-w+1), positions row-major. Each window position of each image is one
   "local sample"; w = h = w' gives the global feature.
3. Embedding: each local sample goes through its own network's head (kernel (C, K),
   bias (K,)). Default (parameter-free): the network's final linear layer, so both live in
   the K-class space whatever their widths; or trainable projection heads (C, 128).
4. `msdcrd_sample_weights`: SDD's complementary rule per window: a sample whose teacher
   local prediction (argmax of the teacher's LOCAL LOGITS, i.e. the pooled vector through
   the teacher's classifier) is right while the teacher's global prediction is wrong, or
   the reverse, weighs `complementary_weight`; the others weigh 1. Constants.
5. Sample-wise InfoNCE over the S = B*P rows (rows L2-normalised), anchor = student row a,
   positive = teacher row a, negatives = all other teacher rows; weighted mean over rows.
6. Feature-wise InfoNCE on the transposed view: the K columns of the un-normalised (S, K)
   embeddings, each L2-normalised over the S rows, are the instances; plain mean over K.
Each term is then averaged over the window sizes (`msdcrd_terms`); `msdcrd_objective`
adds CE (and optionally KD) on the global logits.

`info_nce_rows` is the shared InfoNCE; with `chunk_size` it never materialises the
(S, S) similarity matrix (see its docstring for the forward and backward memory).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.losses.common import (
    Array,
    as_value_error,
    ce_loss,
    check_labels,
    check_linear_head,
    check_logits,
    check_scalar,
    loss_dtype,
)
from kd_jax.losses.kd import kd_loss
from kd_jax.losses.sdd import _window_matrix, sdd_region_weights

NORM_EPS = 1e-12  # torch F.normalize's eps: x / max(||x||, eps)
# Full float32 matmuls on accelerators too (their default may be TF32/bf16 passes).
_HIGHEST = jax.lax.Precision.HIGHEST

Head = tuple[Any, Any]  # (kernel (C, K), bias (K,))


# --- pooling -------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@functools.lru_cache(maxsize=None)
def _sliding_matrix(in_size: int, window: int) -> np.ndarray:
    """0/1 membership matrix (in - window + 1, in): row i covers [i, i + window)."""
    out_size = in_size - window + 1
    member = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        member[i, i : i + window] = 1.0
    return member


def _separable_pool(x: Array, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> Array:
    """sum over the window rows x cols of an NHWC map, divided by the window sizes."""
    sums = jnp.einsum(
        "ph,bhwc,qw->bpqc",
        rows.astype(x.dtype),
        x,
        cols.astype(x.dtype),
        precision=_HIGHEST,
    )
    return sums / jnp.asarray(counts, x.dtype)[None, :, :, None]


def sliding_window_pool(feature_map: Any, window: int) -> Array:
    """Average pooling with a window x window window and stride 1: (B, H, W, C) -> (B, P, C).

    P = (H - window + 1) * (W - window + 1); position (i, j) (the window's top-left
    corner) is index i * (W - window + 1) + j (row-major). window = H = W is the global
    average pool. Computed in float32 (float64 for float64 inputs).
    """
    x = check_logits("feature_map", feature_map, rank=4)
    x = x.astype(loss_dtype(x))
    batch, height, width, channels = x.shape
    if not _is_int(window) or not 1 <= window <= min(height, width):
        raise ValueError(
            f"window must be an int in [1, min(H, W)] = [1, {min(height, width)}] for a "
            f"{height}x{width} feature_map, got {window!r}"
        )
    rows, cols = _sliding_matrix(height, window), _sliding_matrix(width, window)
    counts = np.full((rows.shape[0], cols.shape[0]), float(window * window))
    pooled = _separable_pool(x, rows, cols, counts)
    return pooled.reshape(batch, -1, channels)


def adaptive_pool_to(feature_map: Any, size: tuple[int, int]) -> Array:
    """torch.nn.AdaptiveAvgPool2d((h, w)) on an NHWC map: (B, H, W, C) -> (B, h, w, C).

    Window i of L -> P covers [floor(i*L/P), ceil((i+1)*L/P)) (SDD's adaptive windows,
    `kd_jax.losses.sdd`); a same-size target returns the map unchanged. Only downsampling
    (h <= H, w <= W) is allowed: MSDCRD pools the larger map to the smaller.
    """
    x = check_logits("feature_map", feature_map, rank=4)
    x = x.astype(loss_dtype(x))
    _, height, width, _ = x.shape
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(_is_int(s) for s in size)
        or not (1 <= size[0] <= height and 1 <= size[1] <= width)
    ):
        raise ValueError(
            f"size must be a pair of ints (h, w) with 1 <= h <= {height} and "
            f"1 <= w <= {width} (the feature_map's H, W), got {size!r}"
        )
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return x
    rows, row_len = _window_matrix(height, out_h)
    cols, col_len = _window_matrix(width, out_w)
    counts = row_len[:, None].astype(np.float64) * col_len[None, :]
    return _separable_pool(x, rows, cols, counts)


# --- InfoNCE -------------------------------------------------------------------------------


def _l2_normalize(x: Array, axis: int) -> Array:
    # sqrt(max(s, eps^2)) == max(sqrt(s), eps) but has a finite gradient at x = 0.
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, NORM_EPS**2))


def _full_logsumexp(anchors: Array, candidates: Array) -> Array:
    logits = jnp.matmul(anchors, candidates.T, precision=_HIGHEST)  # (S, S)
    return jax.nn.logsumexp(logits, axis=1)


def _streamed_logsumexp(anchors: Array, candidates: Array, chunk: int) -> Array:
    """LSE_j(a_i . c_j) for every row i, one (chunk, chunk) block of logits at a time.

    Rows and columns are zero-padded to a multiple of `chunk`; padded columns are masked
    to -inf and padded rows dropped. `lax.map` walks the anchor blocks; for each, `lax.scan`
    walks the candidate blocks carrying a running (max, sum of exp(x - max)) per row.
    Both bodies are rematerialised on the backward pass (`jax.checkpoint`).
    """
    size, dim = anchors.shape
    num_blocks = -(-size // chunk)
    pad = num_blocks * chunk - size
    a_blocks = jnp.pad(anchors, ((0, pad), (0, 0))).reshape(num_blocks, chunk, dim)
    c_blocks = jnp.pad(candidates, ((0, pad), (0, 0))).reshape(num_blocks, chunk, dim)
    col_valid = (np.arange(num_blocks * chunk) < size).reshape(num_blocks, chunk)

    def row_block(a_block: Array) -> Array:  # (chunk, D) -> (chunk,)
        def column_step(carry, xs):
            running_max, running_sum = carry
            c_block, valid = xs
            logits = jnp.matmul(a_block, c_block.T, precision=_HIGHEST)  # (chunk, chunk)
            logits = jnp.where(valid[None, :], logits, -jnp.inf)
            # The shift is a constant (as in jax.nn.logsumexp): max + log(sum exp(x - max))
            # is exactly LSE for any max, so its gradient is softmax without a max term.
            new_max = jnp.maximum(running_max, jax.lax.stop_gradient(jnp.max(logits, axis=1)))
            running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
                jnp.exp(logits - new_max[:, None]), axis=1
            )
            return (new_max, running_sum), None

        init = (
            jnp.full((chunk,), -jnp.inf, anchors.dtype),  # block 0 has a valid column
            jnp.zeros((chunk,), anchors.dtype),
        )
        (row_max, row_sum), _ = jax.lax.scan(
            jax.checkpoint(column_step, prevent_cse=False), init, (c_blocks, col_valid)
        )
        return row_max + jnp.log(row_sum)

    lse = jax.lax.map(jax.checkpoint(row_block, prevent_cse=False), a_blocks)
    return lse.reshape(-1)[:size]


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def info_nce_rows(
    anchors: Any, candidates: Any, tau: Any, *, chunk_size: int | None = None
) -> Array:
    """InfoNCE per anchor with in-batch negatives: (S, D), (S, D) -> (S,).

    l_i = -log softmax_j(a_i . c_j / tau)[i] = LSE_j(a_i . c_j / tau) - a_i . c_i / tau:
    anchor i's positive is candidate i, every other candidate is a negative. No
    normalisation is applied here (MSDCRD passes L2-normalised rows). Both inputs get
    gradients; stop_gradient the candidates yourself if they are constants.

    Memory. chunk_size=None builds the (S, S) logits matrix (forward) and autodiff keeps
    its softmax (backward): O(S^2). With chunk_size = c (any S: the rows are zero-padded
    to a multiple of c and the padding masked), the log-sum-exp is fully streamed: anchor
    blocks of c rows (`lax.map`) x candidate blocks of c rows (`lax.scan`) with a running
    (max, sum) per row, so the forward peak is one (c, c) logits block on top of the
    O(S*D) inputs. Backward: both loop bodies are under `jax.checkpoint`, so autodiff
    saves only the loop inputs (the padded blocks, O(S*D)) and the per-row running
    (max, sum) carries of the anchor block being differentiated (O(S)), and recomputes the
    (c, c) blocks: peak O(c^2 + S*D) as well, for three evaluations of every logits block
    (forward, outer and inner rematerialisation) plus the two gradient matmuls. No S x S
    array exists in either pass (tests/test_losses_msdcrd.py checks the jaxprs). The
    result equals the unchunked one up to summation order.
    """
    a = check_logits("anchors", anchors)
    c = check_logits("candidates", candidates)
    with as_value_error(
        f"anchors and candidates must have the same shape (S, D); got {a.shape} and {c.shape}"
    ):
        chex.assert_equal_shape([a, c])
    check_scalar("tau", tau, positive=True)
    _check_chunk_size(chunk_size)
    dtype = loss_dtype(a, c)
    a = a.astype(dtype) / jnp.asarray(tau, dtype)  # fold 1/tau into the anchors
    c = c.astype(dtype)
    positive = jnp.sum(a * c, axis=1)
    size = a.shape[0]
    if chunk_size is None:
        lse = _full_logsumexp(a, c)
    else:
        lse = _streamed_logsumexp(a, c, min(chunk_size, size))
    return lse - positive


# --- MSDCRD --------------------------------------------------------------------------------


def _check_head(name: str, head: Any, channels: int, map_name: str) -> tuple[Array, Array]:
    """Validates a (kernel (C, K), bias (K,)) pair whose C matches the map's channels."""
    if not isinstance(head, (tuple, list)) or len(head) != 2:
        raise ValueError(f"{name} must be a pair (kernel (C, K), bias (K,)), got {type(head)}")
    return check_linear_head(head[0], head[1], channels, name=f"{name} ", map_name=map_name)


def _check_windows(windows: Any, height: int, width: int) -> tuple[int, ...]:
    try:
        parsed = tuple(windows)
    except TypeError:
        parsed = None
    limit = min(height, width)
    if (
        parsed is None
        or isinstance(windows, str)
        or not parsed
        or not all(_is_int(w) and 1 <= w <= limit for w in parsed)
        or len(set(parsed)) != len(parsed)
    ):
        raise ValueError(
            f"windows must be a non-empty sequence of distinct ints in [1, {limit}] (the "
            f"common {height}x{width} grid of the student and teacher maps), got {windows!r}"
        )
    return tuple(int(w) for w in parsed)


def _embed(pooled: Array, kernel: Array, bias: Array, dtype: Any) -> Array:
    """(B, P, C) -> (B, P, K): the head on every local sample."""
    out = jnp.einsum(
        "bpc,ck->bpk", pooled.astype(dtype), kernel.astype(dtype), precision=_HIGHEST
    )
    return out + bias.astype(dtype)


def msdcrd_sample_weights(
    teacher_local_logits: Any, teacher_logits: Any, labels: Any, complementary_weight: Any
) -> Array:
    """Complementary-sample weights (B, P) for one window size; constants.

    teacher_local_logits (B, P, K): the teacher's classifier on each local sample;
    teacher_logits (B, K): its global logits. w_bp = complementary_weight if exactly one
    of (argmax teacher_local_logits[b, p] == y_b) and (argmax teacher_logits[b] == y_b)
    holds, else 1 (SDD's rule, `sdd_region_weights`, with the global logits as region 0).
    complementary_weight=1 turns the categorisation off. Argmax ties pick the first index.
    """
    local = check_logits("teacher_local_logits", teacher_local_logits, rank=3)
    global_ = check_logits("teacher_logits", teacher_logits)
    with as_value_error(
        f"teacher_logits must have shape {(local.shape[0], local.shape[2])} to match "
        f"teacher_local_logits {local.shape}; got {global_.shape}"
    ):
        chex.assert_shape(global_, (local.shape[0], local.shape[2]))
    dtype = loss_dtype(local, global_)
    regions = jnp.concatenate([global_[:, None, :].astype(dtype), local.astype(dtype)], axis=1)
    return sdd_region_weights(regions, labels, complementary_weight)[:, 1:]


class _Inputs(NamedTuple):
    """msdcrd_terms' inputs, checked, cast to the loss dtype and pooled to the common grid
    (h, w); the teacher's parts are constants (the teacher head unless trainable)."""

    student_map: Array       # (B, h, w, Cs)
    teacher_map: Array       # (B, h, w, Ct)
    student_head: Head       # kernel (Cs, K), bias (K,)
    teacher_head: Head       # kernel (Ct, K), bias (K,)
    classifier: Head         # the teacher's local classifier: kernel (Ct, Kc), bias (Kc,)
    teacher_logits: Array    # (B, Kc)
    labels: Array            # (B,) int
    windows: tuple[int, ...]
    dtype: Any               # float32, or float64 for float64 inputs


def _check_terms_inputs(
    student_map: Any,
    teacher_map: Any,
    student_head: Head,
    teacher_head: Head,
    labels: Any,
    teacher_logits: Any,
    teacher_local_classifier: Head | None,
    windows: Sequence[int],
    tau: Any,
    complementary_weight: Any,
    chunk_size: int | None,
    teacher_head_trainable: bool,
) -> tuple[_Inputs, tuple[int, int]]:
    """Validates `msdcrd_terms`' arguments (one ValueError naming the problem) and returns
    them as arrays, uncast and unpooled, with the common grid (h, w) = (min(Hs, Ht),
    min(Ws, Wt)) of the (B, Hs, Ws, Cs) and (B, Ht, Wt, Ct) maps."""
    s_map = check_logits("student_map", student_map, rank=4)
    t_map = check_logits("teacher_map", teacher_map, rank=4)
    batch = s_map.shape[0]
    if t_map.shape[0] != batch:
        raise ValueError(
            f"student_map and teacher_map must have the same batch size; got "
            f"{s_map.shape} and {t_map.shape}"
        )
    s_kernel, s_bias = _check_head("student_head", student_head, s_map.shape[3], "student_map")
    t_kernel, t_bias = _check_head("teacher_head", teacher_head, t_map.shape[3], "teacher_map")
    if s_kernel.shape[1] != t_kernel.shape[1]:
        raise ValueError(
            f"student_head and teacher_head must embed into the same K dimensions; got "
            f"kernels {s_kernel.shape} and {t_kernel.shape}"
        )
    if teacher_local_classifier is None:
        c_kernel, c_bias = t_kernel, t_bias
    else:
        c_kernel, c_bias = _check_head(
            "teacher_local_classifier", teacher_local_classifier, t_map.shape[3], "teacher_map"
        )
    t_logits = check_logits("teacher_logits", teacher_logits)
    with as_value_error(
        f"teacher_logits must have shape {(batch, c_kernel.shape[1])} (batch, classes of "
        f"the teacher's local classifier); got {t_logits.shape}"
    ):
        chex.assert_shape(t_logits, (batch, c_kernel.shape[1]))
    labels = check_labels(labels, batch)
    check_scalar("tau", tau, positive=True)
    check_scalar("complementary_weight", complementary_weight)
    _check_chunk_size(chunk_size)
    if not isinstance(teacher_head_trainable, bool):
        raise ValueError(f"teacher_head_trainable must be a bool, got {teacher_head_trainable!r}")
    grid = (min(s_map.shape[1], t_map.shape[1]), min(s_map.shape[2], t_map.shape[2]))
    windows = _check_windows(windows, *grid)
    dtype = loss_dtype(s_map, t_map, s_kernel, s_bias, t_kernel, t_bias, c_kernel, c_bias)
    checked = _Inputs(s_map, t_map, (s_kernel, s_bias), (t_kernel, t_bias), (c_kernel, c_bias),
                      t_logits, labels, windows, dtype)
    return checked, grid


def _pool_and_freeze(
    checked: _Inputs, grid: tuple[int, int], teacher_head_trainable: bool
) -> _Inputs:
    """Both maps cast to the loss dtype and pooled to the common grid (`adaptive_pool_to`):
    (B, Hs, Ws, Cs) -> (B, h, w, Cs), likewise the teacher's; then every teacher part under
    stop_gradient but a trainable teacher head."""
    stop = jax.lax.stop_gradient
    s_map = adaptive_pool_to(checked.student_map.astype(checked.dtype), grid)
    t_map = stop(adaptive_pool_to(checked.teacher_map.astype(checked.dtype), grid))
    t_head = checked.teacher_head
    if not teacher_head_trainable:
        t_head = (stop(t_head[0]), stop(t_head[1]))
    return checked._replace(
        student_map=s_map,
        teacher_map=t_map,
        teacher_head=t_head,
        classifier=(stop(checked.classifier[0]), stop(checked.classifier[1])),
        teacher_logits=stop(checked.teacher_logits),
    )


def _sample_term(
    s_rows: Array, t_rows: Array, weights: Array, tau: Any, chunk_size: int | None
) -> Array:
    """Sample-wise term of one window: 1/S sum_a w_a InfoNCE_a over the S rows of the
    (S, K) embeddings, rows L2-normalised; weights (S,) are constants."""
    per_row = info_nce_rows(
        _l2_normalize(s_rows, axis=1),
        _l2_normalize(t_rows, axis=1),
        tau,
        chunk_size=chunk_size,
    )
    return jnp.sum(jax.lax.stop_gradient(weights) * per_row) / s_rows.shape[0]


def _feature_term(s_rows: Array, t_rows: Array, tau: Any) -> Array:
    """Feature-wise term of one window: the mean InfoNCE over the K columns of the (S, K)
    embeddings, each L2-normalised over the S rows (the transposed view, (K, S))."""
    per_column = info_nce_rows(
        _l2_normalize(s_rows, axis=0).T, _l2_normalize(t_rows, axis=0).T, tau
    )
    return jnp.mean(per_column)


def _window_terms(
    x: _Inputs, window: int, tau: Any, complementary_weight: Any, chunk_size: int | None
) -> tuple[Array, Array]:
    """(sample_k, feature_k) for window size k: the (B, h, w, C) maps pooled by k x k
    sliding windows to (B, P, C), embedded to (B, P, K) and flattened to S = B*P rows
    ordered (b, p); the teacher's local logits (B, P, Kc) give the sample weights."""
    s_pooled = sliding_window_pool(x.student_map, window)  # (B, P, Cs)
    t_pooled = sliding_window_pool(x.teacher_map, window)
    s_embed = _embed(s_pooled, *x.student_head, x.dtype)  # (B, P, K)
    t_embed = _embed(t_pooled, *x.teacher_head, x.dtype)
    t_local = _embed(t_pooled, *x.classifier, x.dtype)  # (B, P, Kc)
    weights = msdcrd_sample_weights(t_local, x.teacher_logits, x.labels, complementary_weight)

    num_rows, dim = s_embed.shape[0] * s_embed.shape[1], s_embed.shape[2]
    s_rows, t_rows = s_embed.reshape(num_rows, dim), t_embed.reshape(num_rows, dim)
    return (
        _sample_term(s_rows, t_rows, weights.reshape(num_rows), tau, chunk_size),
        _feature_term(s_rows, t_rows, tau),
    )


def msdcrd_terms(
    student_map: Any,
    teacher_map: Any,
    student_head: Head,
    teacher_head: Head,
    labels: Any,
    teacher_logits: Any,
    *,
    windows: Sequence[int],
    tau: Any,
    complementary_weight: Any,
    teacher_local_classifier: Head | None = None,
    chunk_size: int | None = None,
    teacher_head_trainable: bool = False,
) -> dict[str, Array]:
    """The two MSDCRD contrastive terms, {"sample", "feature"}, each a scalar.

    Inputs: student_map (B, Hs, Ws, Cs), teacher_map (B, Ht, Wt, Ct): the pre-pool maps
    (the tensors SDD pools). student_head = (kernel (Cs, K), bias (K,)), teacher_head =
    (kernel (Ct, K), bias (K,)): the embedding heads (default mode: each network's final
    linear layer; projection mode: CRD-style (C, 128) heads; K must agree). labels (B,)
    int; teacher_logits (B, Kc): the teacher's global logits. teacher_local_classifier
    = (kernel (Ct, Kc), bias (Kc,)), the teacher's classifier used for its local
    predictions; None means teacher_head (right in the default mode only: with projection
    heads pass the teacher's final linear layer).

    Both maps are first pooled to the common grid (h, w) = (min(Hs, Ht), min(Ws, Wt))
    (`adaptive_pool_to`; no-op for the map already that size). For each window size k in
    `windows` (distinct ints in [1, min(h, w)], else ValueError), with P = (h-k+1)(w-k+1),
    S = B*P and rows ordered (b, p):
      E^S = sliding_window_pool(student, k) @ kernel_S + bias_S   (S, K), E^T likewise;
      sample_k = 1/S sum_a w_a l_a,  l_a = -log softmax_j(ŝ_a . t̂_j / tau)[a],
        ŝ, t̂ = rows of E^S, E^T over x / max(||x||, 1e-12); w = `msdcrd_sample_weights`
        of the teacher's local logits (teacher_local_classifier on the pooled teacher
        samples) against teacher_logits;
      feature_k = 1/K sum_d -log softmax_e(š_d . ť_e / tau)[d], š_d, ť_d = the columns
        of E^S, E^T L2-normalised over the S rows (unweighted).
    sample = mean_k sample_k, feature = mean_k feature_k.

    Everything from the teacher (map, head, classifier, logits) is under stop_gradient;
    the student map and head get gradients. teacher_head_trainable=True lets teacher_head
    get gradients too (projection mode: the teacher's CRD-style embedding head is trained
    with the student, as in CRD); the teacher map, classifier and logits stay constants.
    Computed in float32 (bf16/f16 upcast) or float64 for float64 inputs. chunk_size (None
    or int) streams the sample-wise (S, S) similarity in (chunk_size, chunk_size) blocks
    (`info_nce_rows`: O(chunk^2 + S*K) memory forward and backward, instead of O(S^2)); the
    feature-wise (K, K) matrix is always built whole (K x K, e.g. 1000^2: small next to
    S^2 = 12544^2 at k=1 on ImageNet).
    """
    checked, grid = _check_terms_inputs(
        student_map, teacher_map, student_head, teacher_head, labels, teacher_logits,
        teacher_local_classifier, windows, tau, complementary_weight, chunk_size,
        teacher_head_trainable,
    )
    inputs = _pool_and_freeze(checked, grid, teacher_head_trainable)
    sample_terms, feature_terms = [], []
    for window in inputs.windows:  # static loop over a few window sizes
        sample, feature = _window_terms(inputs, window, tau, complementary_weight, chunk_size)
        sample_terms.append(sample)
        feature_terms.append(feature)
    return {
        "sample": sum(sample_terms) / len(inputs.windows),
        "feature": sum(feature_terms) / len(inputs.windows),
    }


def msdcrd_objective(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    student_map: Any,
    teacher_map: Any,
    student_head: Head,
    teacher_head: Head,
    *,
    windows: Sequence[int],
    tau: float,
    complementary_weight: float,
    chunk_size: int | None,
    ce_weight: float,
    contrastive_weight: float,
    kd_weight: float,
    temperature: float,
    teacher_head_trainable: bool,
    teacher_local_classifier: Head | None = None,
) -> tuple[Array, dict[str, Array]]:
    """ce_weight*CE + contrastive_weight*(sample + feature) + kd_weight*KD(T).

    CE and KD are on the (B, Kc) global logits; the other arguments go to `msdcrd_terms`
    (teacher_head_trainable: True for trainable projection heads). Terms (raw, unweighted):
    ce, sample, feature, and kd when kd_weight is not a concrete 0 (a traced kd_weight
    always computes it). The reconstruction's values: `kd_jax.methods.msdcrd`.
    """
    for name, value in (
        ("ce_weight", ce_weight),
        ("contrastive_weight", contrastive_weight),
        ("kd_weight", kd_weight),
    ):
        check_scalar(name, value)
    ce = ce_loss(student_logits, labels)
    terms = msdcrd_terms(
        student_map,
        teacher_map,
        student_head,
        teacher_head,
        labels,
        teacher_logits,
        teacher_local_classifier=teacher_local_classifier,
        windows=windows,
        tau=tau,
        complementary_weight=complementary_weight,
        chunk_size=chunk_size,
        teacher_head_trainable=teacher_head_trainable,
    )
    loss = ce_weight * ce + contrastive_weight * (terms["sample"] + terms["feature"])
    out = {"ce": ce, **terms}
    if not (isinstance(kd_weight, numbers.Real) and float(kd_weight) == 0.0):
        kd = kd_loss(student_logits, teacher_logits, temperature)
        loss = loss + kd_weight * kd
        out["kd"] = kd
    return loss, out
