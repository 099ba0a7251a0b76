"""Sampling linear boundaries of the head G (Eq. 2) and the sides of feature maps (§4.1).

For a feature map t, ΔG(t) = max₁ G(t) − max₂ G(t). When G is piecewise linear, ΔG
is linear on the region around t, so

    W = ∂ΔG/∂t |_t,   b = ΔG(t) − ⟨W, t⟩

is exactly one of G's linear boundaries. The side of a feature map ψ with
respect to boundary h is ⟨W_h, ψ⟩ + b_h > 0.

Where t comes from is where the paper's text and the authors' code differ; both are here:

* **paper** (§4.1: "sample a subset of reference images from R, and apply Equation (2)
  on each"): t = ψ(r) for a random sample Q of references, shared by every input
  (``sample_indices`` + ``sample_boundaries``).
* **authors** (their public code, ``RuleMinerLargeCandiPool.CandidatePoolLabel`` in the
  ``dnn_invariant`` family): for each input x of class c, a pool of |Q| references is
  drawn without replacement from D(x), the references predicted as another class
  (``draw_pools``). For each drawn r, ``pos = ψ(x)``, ``neg = ψ(r)``; repeat
  ``t = 0.9·pos + 0.1·neg``; if the top class of G(t) is c then ``pos = t`` else
  ``neg = t``; until ``(top1(G(t)) − top2(G(t)))² < 1e-5`` and the top class is c.
  Eq. 2 is applied at that t, so every boundary lies on the model's decision boundary
  between x and an other-class image (``search_boundary_point``, ``pool_boundaries``).
  Their loop has no cap; ours stops after ``max_steps`` and then uses the last point
  with top class c (the closest to the boundary on x's side found), flagged
  ``converged = False``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from ri_jax.bits import WORD_BITS, num_words, pack_bits, valid_words
from ri_jax.errors import all_finite
from ri_jax.sharding import batch_spec, padded_size, replicate, shard_batch, to_host

Array = jax.Array

DEFAULT_NUM_BOUNDARIES = 50
# The authors' boundary search: t = STEP·pos + (1 − STEP)·neg, stop at ΔG(t)² < TOL.
SEARCH_STEP = 0.9
SEARCH_TOLERANCE = 1e-5
# 0.9^400 < 1e-18: far past float32 resolution, so a search that has not converged by
# then will not (ours caps the loop; the authors' has no cap).
DEFAULT_MAX_SEARCH_STEPS = 400
_HIGHEST = jax.lax.Precision.HIGHEST


class Boundaries(NamedTuple):
    """Sampled hyperplanes ⟨W_h, t⟩ + b_h = 0.

    Attributes:
      w: [Q, *feat_shape] normals W_h.
      b: [Q] offsets b_h.
    """

    w: Array
    b: Array


def sample_indices(num_refs: int, num_boundaries: int = DEFAULT_NUM_BOUNDARIES, *,
                   key: Array) -> Array:
    """Draws the references whose boundaries form Q, without replacement.

    Args:
      num_refs: size of the reference set R.
      num_boundaries: |Q|; capped at ``num_refs`` with a warning.
      key: PRNG key.

    Returns:
      int32[min(num_boundaries, num_refs)] distinct indices into R.
    """
    num_boundaries = cap_num_boundaries(num_boundaries, num_refs)
    return jax.random.permutation(key, int(num_refs))[:num_boundaries].astype(jnp.int32)


def cap_num_boundaries(num_boundaries: int, num_refs: int) -> int:
    """|Q| to use: ``num_boundaries``, capped at ``num_refs`` with a warning.

    A shared sample draws Q without replacement from the references; a per-input pool
    would repeat references (identical boundaries) past N, so both variants cap at N.

    Raises:
      ValueError: ``num_refs`` < 1 or ``num_boundaries`` < 1, naming the argument.
    """
    if int(num_refs) < 1:
        raise ValueError(f"num_refs: need at least one reference, got {num_refs}")
    if int(num_boundaries) < 1:
        raise ValueError(f"num_boundaries: must be >= 1, got {num_boundaries}")
    if num_boundaries > num_refs:
        warnings.warn(f"num_boundaries: {num_boundaries} boundaries requested from only "
                      f"{num_refs} references; using {num_refs}", stacklevel=3)
        return int(num_refs)
    return int(num_boundaries)


def delta_g(logits: Array) -> Array:
    """ΔG = largest − second largest logit, with a deterministic subgradient at ties.

    ``lax.top_k`` puts the lower index first among equal values, so with tied logits
    ΔG = G_i − G_j = 0 for the two lowest tied indices i < j, and its gradient is
    ∇G_i − ∇G_j: the normal of the boundary between those two classes (finite, no NaN).

    Args:
      logits: [C], C ≥ 2.

    Returns:
      scalar.
    """
    top, _ = jax.lax.top_k(logits, 2)
    return top[0] - top[1]


def _linearise_impl(head_fn: Callable[[Array], Array], ts: Array, direction: Array,
               check_curvature: bool) -> tuple[Array, Array, Array]:
    """ΔG, ∂ΔG/∂t and "is ΔG curved here" for every t in ``ts``, in ONE backward pass.

    Examples are independent, so the gradient of Σ_q ΔG(t_q) with respect to the batch
    [Q, ...] holds every per-example gradient: the head runs batched, natively, instead
    of Q batch-of-one copies under vmap. The curvature check is the forward-mode
    derivative of that gradient along ``direction`` (a Hessian–vector product per example).
    """
    def total(batch):
        dg = jax.vmap(delta_g)(head_fn(batch))
        return jnp.sum(dg), dg

    grad_fn = jax.grad(total, has_aux=True)
    if not check_curvature:
        w, value = grad_fn(ts)
        return value, w, jnp.zeros(ts.shape[0], bool)
    (w, value), (hvp, _) = jax.jvp(grad_fn, (ts,), (jnp.broadcast_to(direction, ts.shape),))
    return value, w, jnp.any(hvp.reshape(ts.shape[0], -1) != 0, axis=1)


# Compiled once per (head_fn object, check) pair and feature shape.
_linearise = jax.jit(_linearise_impl, static_argnames=("head_fn", "check_curvature"))


def check_head(head_fn, feats: Array, name: str = "head_fn") -> None:
    """One trial call of G on a single ψ of ``feats`` (traced, nothing is computed).

    Args:
      head_fn: G.
      feats: [N, *feat_shape] feature maps (or a ``jax.ShapeDtypeStruct`` of them).
      name: the argument named in errors.

    Raises:
      ValueError: naming ``name`` and ψ's shape when G does not accept it (a head built
        for other feature maps fails deep inside JAX otherwise) or does not give logits.
    """
    try:
        out = jax.eval_shape(head_fn, jax.ShapeDtypeStruct((1,) + feats.shape[1:], feats.dtype))
    except Exception as err:  # re-raised with the argument named
        raise ValueError(f"{name}: head(ψ) failed for ψ of shape {tuple(feats.shape[1:])} "
                         f"(one feature map, batch of 1): {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"{name}: must map [B, *feat_shape] to logits [B, C], got "
                         f"{getattr(out, 'shape', type(out))} for B = 1")
    if out.shape[1] < 2:
        raise ValueError(f"{name}: needs at least 2 logits for ΔG, got {out.shape[1]}")


def _check_feats(feats) -> Array:
    feats = jnp.asarray(feats)
    if feats.ndim < 2:
        raise ValueError(f"feats: expected [N, *feat_shape], got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise ValueError("feats: is empty")
    if not jnp.issubdtype(feats.dtype, jnp.floating):
        raise ValueError(f"feats: expected floating feature maps, got dtype {feats.dtype}")
    if not all_finite(feats):
        raise ValueError("feats: contains NaN or inf")
    return feats


def sample_boundaries(head_fn: Callable[[Array], Array], feats: Array, *,
                      piecewise_linear: bool | None = None) -> Boundaries:
    """Eq. 2 at every feature map of the sample, in one jitted batched backward pass.

    Args:
      head_fn: G, logits [B, C] from feature maps [B, *feat_shape]; must be traceable by JAX
        and treat examples independently (e.g. ``functools.partial(fns.head, params)``).
      feats: [Q, *feat_shape] reference feature maps t (the sample Q).
      piecewise_linear: whether G is piecewise linear (ReLU, max-pool, affine layers).
        None checks it: the Hessian–vector product of ΔG along a fixed random direction
        is exactly zero under autodiff for such heads (ReLU and max-pool have zero second
        derivative) and generically non-zero for smooth ones (tanh, GELU, softmax). When
        the head is not piecewise linear (declared False or detected), a warning says
        that Eq. 2 is then only a local linearisation (the tangent hyperplane of ΔG at t).

    Returns:
      ``Boundaries(w [Q, *feat_shape], b [Q])``.
    """
    feats = _check_feats(feats)
    if piecewise_linear not in (None, True, False):
        raise ValueError(f"piecewise_linear: expected True, False or None, got {piecewise_linear!r}")
    check_head(head_fn, feats)
    value, w, curved = _linearised(head_fn, feats, check_curvature=piecewise_linear is None)
    if piecewise_linear is None:
        piecewise_linear = not bool(jnp.any(curved))

    if not piecewise_linear:
        warn_not_piecewise_linear(stacklevel=2)
    b = value - jnp.einsum("q...,q...->q", w, feats, precision=_HIGHEST)
    if not all_finite(w, b):
        raise ValueError("head_fn: produced non-finite logits or gradients")
    return Boundaries(w=w, b=b)


def warn_not_piecewise_linear(stacklevel: int = 2) -> None:
    """The warning for a head that is not piecewise linear (either variant)."""
    warnings.warn("head_fn: the head is not piecewise linear, so Eq. 2 gives only a "
                  "local linearisation of its decision boundary at each sample",
                  stacklevel=stacklevel + 1)


def is_piecewise_linear(head_fn: Callable[[Array], Array], feats: Array) -> bool:
    """The curvature check of ``sample_boundaries`` on a few feature maps (≤ 4 of ``feats``).

    For the per-input pools, whose boundaries are only searched per input later: the head
    is checked once, when the interpreter is built.
    """
    _, _, curved = _linearised(head_fn, _check_feats(feats)[:4], check_curvature=True)
    return not bool(jnp.any(curved))


def _linearised(head_fn: Callable[[Array], Array], feats: Array, *,
                check_curvature: bool) -> tuple[Array, Array, Array]:
    """``_linearise`` with a fixed curvature direction, compiled once per ``head_fn`` object."""
    # Any fixed direction serves the curvature check; a NumPy draw compiles nothing.
    direction = np.random.default_rng(0).standard_normal(feats.shape[1:]).astype(feats.dtype)
    try:
        hash(head_fn)  # the compiled pass is cached per head_fn object
    except TypeError:
        head_fn = functools.partial(head_fn)  # hashable by identity
    return _linearise(head_fn, feats, direction, check_curvature=check_curvature)


@jax.jit
def _side_chunk(w_flat: Array, b: Array, feats_flat: Array) -> Array:
    return (jnp.dot(w_flat, feats_flat.T, precision=_HIGHEST) + b[:, None]) > 0


@jax.jit
def _side_chunk_packed(w_flat: Array, b: Array, feats_flat: Array) -> Array:
    return pack_bits(_side_chunk(w_flat, b, feats_flat))


@jax.jit
def _side_chunk_dots(w_flat: Array, b: Array, feats_flat: Array) -> tuple[Array, Array]:
    # The products of ``_side_chunk`` (same operation, so the same bits), kept as well.
    dots = jnp.dot(w_flat, feats_flat.T, precision=_HIGHEST)
    return pack_bits((dots + b[:, None]) > 0), dots


def _check_sides_args(boundaries: Boundaries, feats, chunk_size: int):
    w, b = jnp.asarray(boundaries.w), jnp.asarray(boundaries.b)
    feats = _check_feats(feats)
    if w.ndim < 2 or b.shape != w.shape[:1]:
        raise ValueError(f"boundaries: expected w [Q, *feat_shape] and b [Q], got "
                         f"{w.shape} and {b.shape}")
    if feats.shape[1:] != w.shape[1:]:
        raise ValueError(f"feats: feature shape {feats.shape[1:]} does not match the "
                         f"boundaries' {w.shape[1:]}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    n = feats.shape[0]
    chunk = min(-(-int(chunk_size) // WORD_BITS), -(-n // WORD_BITS)) * WORD_BITS
    return w.reshape(w.shape[0], -1), b, feats.reshape(n, -1), chunk


def _map_feature_chunks(fn, w_flat, b, flat, chunk):
    """``fn`` on fixed-size chunks of the feature maps (the last one zero-padded); ``fn``'s
    outputs (arrays, or a tuple of them) are concatenated along their axis 1."""
    n = flat.shape[0]
    parts = []
    for i in range(0, n, chunk):
        part = flat[i:i + chunk]
        parts.append(fn(w_flat, b, jnp.pad(part, ((0, chunk - part.shape[0]), (0, 0)))))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)


def _sides(boundaries: Boundaries, feats: Array, *, chunk_size: int = 1024) -> Array:
    """bool[Q, N] sides of N feature maps against Q boundaries, in padded chunks of maps
    (every chunk reuses one compiled kernel)."""
    w_flat, b, flat, chunk = _check_sides_args(boundaries, feats, chunk_size)
    return _map_feature_chunks(_side_chunk, w_flat, b, flat, chunk)[:, :flat.shape[0]]


def _sides_packed(boundaries: Boundaries, feats: Array, *, chunk_size: int = 1024) -> Array:
    """``_sides`` packed, uint32[Q, ⌈N/32⌉]: each chunk (a multiple of 32 maps) is packed as
    soon as it is computed, so the memory held is the words plus one chunk of bools."""
    w_flat, b, flat, chunk = _check_sides_args(boundaries, feats, chunk_size)
    words = _map_feature_chunks(_side_chunk_packed, w_flat, b, flat, chunk)
    n = flat.shape[0]
    # Bits of zero-padded feature maps may be set (b > 0): clear the padding bits.
    return words[:, :num_words(n)] & valid_words(n, num_words(n))


def _sides_and_dots(boundaries: Boundaries, feats: Array, *,
                    chunk_size: int = 1024) -> tuple[Array, Array]:
    """``_sides_packed`` and the products ⟨W_h, ψ_n⟩ they were taken from, float32[Q, N]."""
    w_flat, b, flat, chunk = _check_sides_args(boundaries, feats, chunk_size)
    words, products = _map_feature_chunks(_side_chunk_dots, w_flat, b, flat, chunk)
    n = flat.shape[0]
    return words[:, :num_words(n)] & valid_words(n, num_words(n)), products[:, :n]


@functools.partial(jax.jit, static_argnames=("mesh", "packed"))
def _sharded_side_kernel(w_flat: Array, b: Array, feats_flat: Array, mesh, packed: bool) -> Array:
    spec = batch_spec(mesh)

    def local(w_flat, b, feats_flat):
        side = _side_chunk(w_flat, b, feats_flat)  # the one-device rule and precision
        return pack_bits(side) if packed else side

    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(), spec),
                         out_specs=PartitionSpec(None, *spec))(w_flat, b, feats_flat)


def _sharded_sides(boundaries: Boundaries, feats, mesh, packed: bool) -> np.ndarray:
    """``_sides`` / ``_sides_packed`` with the feature maps split over ``mesh``'s devices.

    Each device packs whole words (its share is padded to a multiple of 32 maps), so the
    per-device words concatenate into the global packing; padding bits are cleared.
    Returns a host array.
    """
    w_flat, b, flat, _ = _check_sides_args(boundaries, feats, 1)
    flat = np.asarray(flat)
    n = flat.shape[0]
    size = padded_size(n, mesh, granule=WORD_BITS if packed else 1)
    out = to_host(_sharded_side_kernel(replicate(w_flat, mesh), replicate(b, mesh),
                                       shard_batch(flat, mesh, size=size), mesh, packed))
    if not packed:
        return out[:, :n]
    return out[:, :num_words(n)] & np.asarray(valid_words(n, num_words(n)))


def side_bits(boundaries: Boundaries, feats: Array, *, packed: bool = True, dots: bool = False,
              mesh=None, chunk_size: int = 1024):
    """The side of every feature map for every boundary, ⟨W_h, ψ_n⟩ + b_h > 0 (§4.1).

    The one function for side bits: against one shared sample (``b`` [Q]) or against each
    input's own pool (``b`` [B, Q]: all B·Q normals go through one [B·Q, D] × [D, chunk]
    product per chunk of maps, the Q·N·D multiply-adds per input the sides cost at least),
    packed along the maps or not, on one device or split over the devices of ``mesh``.

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])`` or, one pool per input,
        ``Boundaries(w [B, Q, *feat_shape], b [B, Q])``.
      feats: [N, *feat_shape] feature maps.
      packed: pack the bits along the N maps (``ri_jax.bits.pack_bits``), padding bits zero.
      dots: also return the products ⟨W_h, ψ_n⟩ the bits were taken from, so Eq. 6
        (``ranking.pool_distances``) needs no second pass over the maps (packed, one device).
      mesh: a ``jax.sharding.Mesh``: split the maps over its devices (a host array back).
      chunk_size: maps per matmul on one device (rounded up to a multiple of 32; the last
        chunk is zero-padded so every chunk reuses one compiled kernel).

    Returns:
      bool[*lead, N], or packed uint32[*lead, ⌈N/32⌉], where ``lead`` is ``b``'s shape;
      with ``dots``, (that, float32[*lead, N]).
    """
    w, b = jnp.asarray(boundaries.w), jnp.asarray(boundaries.b)
    if b.ndim not in (1, 2) or w.ndim < b.ndim + 1 or w.shape[:b.ndim] != b.shape:
        raise ValueError(f"boundaries: expected w [Q, *feat_shape] and b [Q], or w [B, Q, "
                         f"*feat_shape] and b [B, Q], got {w.shape} and {b.shape}")
    lead = b.shape
    flat = Boundaries(w.reshape((-1,) + w.shape[b.ndim:]), b.reshape(-1))
    if dots and (mesh is not None or not packed):
        raise ValueError("dots: the products come with packed bits on one device "
                         "(packed=True, mesh=None)")
    if dots:
        words, products = _sides_and_dots(flat, feats, chunk_size=chunk_size)
        return words.reshape(lead + words.shape[1:]), products.reshape(lead + products.shape[1:])
    if mesh is not None:
        out = _sharded_sides(flat, feats, mesh, packed)
    else:
        out = (_sides_packed if packed else _sides)(flat, feats, chunk_size=chunk_size)
    return out.reshape(lead + out.shape[1:])


class BoundaryPoints(NamedTuple):
    """Points found by the authors' search (add leading axes under vmap).

    Attributes:
      point: [*feat_shape], the last t, on the decision boundary when converged; else the
        last point whose top class is c (x itself if no step kept class c).
      steps: int32, interpolation steps taken.
      converged: bool, (top1 − top2)² < tol at ``point`` with top class c.
    """

    point: Array
    steps: Array
    converged: Array


def _top_two(head_fn, t: Array) -> tuple[Array, Array]:
    """(ΔG(t), top class) of one feature map, with ``delta_g``'s tie rule."""
    logits = head_fn(t[None])[0]
    top, index = jax.lax.top_k(logits, 2)
    return top[0] - top[1], index[0]


def search_boundary_point(head_fn: Callable[[Array], Array], psi_x: Array, psi_r: Array,
                          c: Array, *, max_steps: int = DEFAULT_MAX_SEARCH_STEPS,
                          tol: float = SEARCH_TOLERANCE) -> BoundaryPoints:
    """The authors' search for a point of G's decision boundary between x and r.

    ``pos = ψ(x)``, ``neg = ψ(r)``; repeat ``t = 0.9·pos + 0.1·neg``, ``pos = t`` if the top
    class of G(t) is c else ``neg = t``; until ``ΔG(t)² < tol`` with top class c, or
    ``max_steps`` steps. One pair; ``jax.vmap`` it over inputs × pool.

    Args:
      head_fn: G, logits [B, C] from [B, *feat_shape].
      psi_x: [*feat_shape], ψ(x) (top class c).
      psi_r: [*feat_shape], ψ(r) of a reference predicted as another class.
      c: int32, Class(x).
      max_steps: cap on the steps (static).
      tol: the authors' 1e-5 on ΔG², i.e. |ΔG| < 0.0032.

    Returns:
      ``BoundaryPoints`` for this pair.
    """
    c = jnp.asarray(c, jnp.int32)

    def cond(state):
        _, _, steps, done = state
        return ~done & (steps < max_steps)

    def body(state):
        pos, neg, steps, _ = state
        t = SEARCH_STEP * pos + (1.0 - SEARCH_STEP) * neg
        gap, top = _top_two(head_fn, t)
        is_c = top == c
        pos = jnp.where(is_c, t, pos)
        neg = jnp.where(is_c, neg, t)
        return pos, neg, steps + 1, is_c & (gap * gap < tol)

    init = (psi_x, psi_r, jnp.asarray(0, jnp.int32), jnp.asarray(False))
    pos, _, steps, done = jax.lax.while_loop(cond, body, init)
    # On convergence the last t had class c, so it is ``pos``.
    return BoundaryPoints(point=pos, steps=steps, converged=done)


@jax.jit
def pool_keys(key: Array, ids: Array) -> Array:
    """The PRNG keys of per-input pools: ``fold_in(key, i)`` for each id, [len(ids)].

    Folding in an input's id (rather than splitting by position) keeps its pool the same
    however the inputs are batched or chunked.
    """
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(ids, jnp.int32))


def draw_pools(ref_preds: Array, classes: Array, pool_size: int = DEFAULT_NUM_BOUNDARIES, *,
               keys: Array) -> tuple[Array, Array]:
    """Each input's pool: ``pool_size`` references drawn without replacement from D(x).

    Args:
      ref_preds: int32[N], the references' predicted classes.
      classes: int32[B], Class(x) of each input.
      pool_size: |Q| (static).
      keys: [B] PRNG keys, one per input.

    Returns:
      (int32[B, pool_size] reference indices, int32[B] |D(x)|). Where |D(x)| < pool_size
      the draw is a random order of all of D(x), repeated to fill the pool (the repeats
      give identical boundaries, which Algorithm 1 never selects twice). Inputs with
      |D(x)| = 0 get index 0 everywhere: a reference of their own class, so their
      searches do not converge and their polytope is empty (no D(x) to remove).
    """
    ref_preds = jnp.asarray(ref_preds, jnp.int32)

    def one(key, c):
        other = ref_preds != c
        score = jnp.where(other, jax.random.uniform(key, ref_preds.shape), 2.0)
        # The first ``pool_size`` of a stable ascending sort of the scores (top_k keeps the
        # lower index among equals too), without sorting all N.
        order = jax.lax.top_k(-score, min(pool_size, ref_preds.shape[0]))[1].astype(jnp.int32)
        count = jnp.sum(other, dtype=jnp.int32)
        return order[jnp.arange(pool_size) % jnp.maximum(count, 1)], count

    return jax.vmap(one)(keys, jnp.asarray(classes, jnp.int32))


class _Lanes(NamedTuple):
    """``search_lanes``'s loop state: L searches in flight and the answers written so far.

    Attributes:
      pair: int32[L], the (input, pool reference) pair of each lane, B·Q when idle.
      pos, neg: [L, *feat_shape], the search's bracket (class c at ``pos``).
      steps: int32[L], steps taken by each lane's search.
      next: int32, the next pair to start.
      out: ``BoundaryPoints`` with a leading B·Q axis, rows written as searches stop.
    """

    pair: Array
    pos: Array
    neg: Array
    steps: Array
    next: Array
    out: BoundaryPoints


# Searches in flight in ``search_lanes``: enough rows for the head's matmuls to run at
# full speed, few enough that the last searches to start leave little idle. On 2 CPU
# cores (embedded model, 3,200 searches) 128 lanes beat 96 by 10 %, 256 by 5-10 % and
# 1,024 by 45 %, and 64 run 3.7× slower (XLA:CPU leaves its fast matmul path); an
# accelerator wants thousands of rows per matmul.
SEARCH_LANES = {"cpu": 128}
DEFAULT_SEARCH_LANES = 2048


def search_lane_count(platform: str | None = None) -> int:
    """Searches in flight on ``platform`` (default JAX's default backend)."""
    return SEARCH_LANES.get(platform or jax.default_backend(), DEFAULT_SEARCH_LANES)


def search_lanes(head_fn: Callable[[Array], Array], psi_x: Array, classes: Array,
                 pool_feats: Array, *, max_steps: int, tol, lanes: int) -> BoundaryPoints:
    """``search_boundary_point`` for every (input, pool reference) pair, on refilled lanes.

    A vmapped while loop would step all B·Q searches until the slowest stops (e.g. 54
    steps where the mean is 20, 2.7× the head evaluations needed). Here ``lanes`` searches
    are in flight; each iteration evaluates the head once on the lanes' points, and a
    lane whose search stopped writes its answer and starts the next pair. The head then
    runs about Σ steps / lanes + max steps times on ``lanes`` points. Each pair follows
    ``search_boundary_point``'s arithmetic exactly (same t, same decisions).

    Args:
      head_fn: G.
      psi_x: [B, *feat_shape].
      classes: int32[B].
      pool_feats: [B, Q, *feat_shape].
      max_steps, tol: as in ``search_boundary_point``.
      lanes: searches in flight (static; capped at B·Q; ``search_lane_count()``).

    Returns:
      ``BoundaryPoints`` with [B, Q] axes.
    """
    psi_x, classes, pool_feats = (jnp.asarray(a) for a in (psi_x, classes, pool_feats))
    b, q = pool_feats.shape[:2]
    pairs = b * q
    lanes = max(1, min(int(lanes), pairs))
    refs = pool_feats.reshape((pairs,) + psi_x.shape[1:])
    lane_ids = jnp.arange(lanes, dtype=jnp.int32)

    def start(pair):
        """(pos, neg) of pairs (``pairs``: an idle lane, given x and r of pair 0)."""
        safe = jnp.where(pair < pairs, pair, 0)
        return psi_x[safe // q], refs[safe]

    def cond(state: _Lanes):
        return jnp.any(state.pair < pairs)

    def body(state: _Lanes) -> _Lanes:
        pair, pos, neg, steps, nxt, out = state
        t = SEARCH_STEP * pos + (1.0 - SEARCH_STEP) * neg
        top, index = jax.lax.top_k(head_fn(t), 2)
        gap = top[:, 0] - top[:, 1]
        is_c = index[:, 0] == classes[jnp.where(pair < pairs, pair, 0) // q]
        wide = is_c.reshape((lanes,) + (1,) * (pos.ndim - 1))
        pos, neg = jnp.where(wide, t, pos), jnp.where(wide, neg, t)
        steps = steps + 1
        done = is_c & (gap * gap < tol)
        stop = (done | (steps >= max_steps)) & (pair < pairs)
        at = jnp.where(stop, pair, pairs)  # ``pairs``: dropped by the scatters
        out = BoundaryPoints(point=out.point.at[at].set(pos, mode="drop"),
                             steps=out.steps.at[at].set(steps, mode="drop"),
                             converged=out.converged.at[at].set(done, mode="drop"))
        new = nxt + jnp.cumsum(stop, dtype=jnp.int32) - 1
        pair = jnp.where(stop, jnp.where(new < pairs, new, pairs), pair)
        fresh_pos, fresh_neg = start(pair)
        wide = stop.reshape(wide.shape)
        return _Lanes(pair=pair, pos=jnp.where(wide, fresh_pos, pos),
                      neg=jnp.where(wide, fresh_neg, neg), steps=jnp.where(stop, 0, steps),
                      next=nxt + jnp.sum(stop, dtype=jnp.int32), out=out)

    out = BoundaryPoints(point=jnp.zeros_like(refs), steps=jnp.zeros((pairs,), jnp.int32),
                         converged=jnp.zeros((pairs,), jnp.bool_))
    pos, neg = start(lane_ids)
    init = _Lanes(pair=lane_ids, pos=pos, neg=neg, steps=jnp.zeros((lanes,), jnp.int32),
                  next=jnp.asarray(lanes, jnp.int32), out=out)
    out = jax.lax.while_loop(cond, body, init).out
    return BoundaryPoints(point=out.point.reshape(pool_feats.shape),
                          steps=out.steps.reshape(b, q), converged=out.converged.reshape(b, q))


@functools.partial(jax.jit, static_argnames=("head_fn", "max_steps", "lanes"))
def _pool_boundaries(head_fn, psi_x, classes, pool_feats, max_steps, tol, lanes):
    b, q = pool_feats.shape[:2]
    found = search_lanes(head_fn, psi_x, classes, pool_feats, max_steps=max_steps, tol=tol,
                         lanes=lanes)
    points = found.point.reshape((b * q,) + psi_x.shape[1:])
    value, w, _ = _linearise_impl(head_fn, points, points[0], check_curvature=False)
    offset = value - jnp.einsum("q...,q...->q", w, points, precision=_HIGHEST)
    bounds = Boundaries(w=w.reshape(pool_feats.shape), b=offset.reshape(b, q))
    return bounds, found


def pool_boundaries(head_fn: Callable[[Array], Array], psi_x: Array, classes: Array,
                    pool_feats: Array, *, max_steps: int = DEFAULT_MAX_SEARCH_STEPS,
                    tol: float = SEARCH_TOLERANCE) -> tuple[Boundaries, BoundaryPoints]:
    """The authors' per-input boundaries: search every (x, r) pair, then Eq. 2 there.

    One jitted call per shape: the B·Q searches run on refilled lanes (``search_lanes``),
    so the head is evaluated about Σ steps times, not B·Q × the slowest search's steps, and
    Eq. 2 at all B·Q points is one batched backward pass. W is ∇(G_top1 − G_top2)
    at the point, with the two classes on top there.

    Args:
      head_fn: G (hashable; compiled once per object), piecewise linear.
      psi_x: [B, *feat_shape] inputs' feature maps.
      classes: int32[B], Class(x) = argmax G(ψ(x)).
      pool_feats: [B, Q, *feat_shape], ψ of each input's pool (``draw_pools``).
      max_steps: cap on each search.
      tol: convergence threshold on ΔG².

    Returns:
      (``Boundaries(w [B, Q, *feat_shape], b [B, Q])``, ``BoundaryPoints`` with [B, Q] axes).
    """
    psi_x = _check_feats(psi_x)
    pool_feats = jnp.asarray(pool_feats)
    if pool_feats.ndim != psi_x.ndim + 1 or pool_feats.shape[0] != psi_x.shape[0] \
            or pool_feats.shape[2:] != psi_x.shape[1:]:
        raise ValueError(f"pool_feats: expected [{psi_x.shape[0]}, Q, *{psi_x.shape[1:]}], got "
                         f"{pool_feats.shape}")
    classes = jnp.asarray(classes, jnp.int32)
    if classes.shape != psi_x.shape[:1]:
        raise ValueError(f"classes: expected int[{psi_x.shape[0]}], got {classes.shape}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps: must be >= 1, got {max_steps}")
    if not float(tol) > 0:
        raise ValueError(f"tol: must be > 0, got {tol}")
    check_head(head_fn, psi_x)
    try:
        hash(head_fn)
    except TypeError:
        head_fn = functools.partial(head_fn)
    bounds, found = _pool_boundaries(head_fn, psi_x, classes, pool_feats, int(max_steps),
                                     jnp.float32(tol), search_lane_count())
    if not all_finite(bounds.w, bounds.b):
        raise ValueError("head_fn: produced non-finite logits or gradients")
    return bounds, found
