"""Sampling linear boundaries of the head G (Eq. 2) and the sides of feature maps (§4.1).

For a reference feature map t, ΔG(t) = max₁ G(t) − max₂ G(t). When G is piecewise
linear, ΔG is linear on the region around t, so

    W = ∂ΔG/∂t |_t,   b = ΔG(t) − ⟨W, t⟩

is exactly one of G's linear boundaries. The side of a feature map ψ with
respect to boundary h is ⟨W_h, ψ⟩ + b_h > 0.
"""

from __future__ import annotations

import functools

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ri_jax.solver import WORD_BITS, pack_bits

Array = jax.Array

DEFAULT_NUM_BOUNDARIES = 50
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
    if int(num_refs) < 1:
        raise ValueError(f"num_refs: need at least one reference, got {num_refs}")
    if int(num_boundaries) < 1:
        raise ValueError(f"num_boundaries: must be >= 1, got {num_boundaries}")
    if num_boundaries > num_refs:
        warnings.warn(f"num_boundaries: {num_boundaries} boundaries requested from only "
                      f"{num_refs} references; using {num_refs}", stacklevel=2)
        num_boundaries = num_refs
    return jax.random.permutation(key, int(num_refs))[:int(num_boundaries)].astype(jnp.int32)


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


def _check_head(head_fn, feats: Array) -> None:
    try:
        out = jax.eval_shape(head_fn, jax.ShapeDtypeStruct((1,) + feats.shape[1:], feats.dtype))
    except Exception as err:  # re-raised with the argument named
        raise ValueError(f"head_fn: cannot be applied to feature maps of shape "
                         f"{feats.shape[1:]}: {err}") from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
        raise ValueError(f"head_fn: must map [B, *feat_shape] to logits [B, C], got "
                         f"{getattr(out, 'shape', type(out))} for B = 1")
    if out.shape[1] < 2:
        raise ValueError(f"head_fn: needs at least 2 logits for ΔG, got {out.shape[1]}")


def _check_feats(feats) -> Array:
    feats = jnp.asarray(feats)
    if feats.ndim < 2:
        raise ValueError(f"feats: expected [N, *feat_shape], got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise ValueError("feats: is empty")
    if not jnp.issubdtype(feats.dtype, jnp.floating):
        raise ValueError(f"feats: expected floating feature maps, got dtype {feats.dtype}")
    if not bool(jnp.all(jnp.isfinite(feats))):
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
    _check_head(head_fn, feats)
    direction = jax.random.normal(jax.random.key(0), feats.shape[1:], feats.dtype)
    try:
        hash(head_fn)  # the compiled pass is cached per head_fn object
    except TypeError:
        head_fn = functools.partial(head_fn)  # hashable by identity
    value, w, curved = _linearise(head_fn, feats, direction,
                                  check_curvature=piecewise_linear is None)
    if piecewise_linear is None:
        piecewise_linear = not bool(jnp.any(curved))

    if not piecewise_linear:
        warnings.warn("head_fn: the head is not piecewise linear, so Eq. 2 gives only a "
                      "local linearisation of its decision boundary at each sample",
                      stacklevel=2)
    b = value - jnp.einsum("q...,q...->q", w, feats, precision=_HIGHEST)
    if not (bool(jnp.all(jnp.isfinite(w))) and bool(jnp.all(jnp.isfinite(b)))):
        raise ValueError("head_fn: produced non-finite logits or gradients")
    return Boundaries(w=w, b=b)


@jax.jit
def _side_chunk(w_flat: Array, b: Array, feats_flat: Array) -> Array:
    return (jnp.dot(w_flat, feats_flat.T, precision=_HIGHEST) + b[:, None]) > 0


def sides(boundaries: Boundaries, feats: Array, *, chunk_size: int = 1024) -> Array:
    """Side of every feature map for every boundary: ⟨W_h, ψ_n⟩ + b_h > 0.

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])``.
      feats: [N, *feat_shape].
      chunk_size: feature maps per matmul (rounded up to a multiple of 32); the last chunk is
        padded so every chunk reuses one compiled kernel.

    Returns:
      bool[Q, N].
    """
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
    w_flat = w.reshape(w.shape[0], -1)
    flat = feats.reshape(n, -1)
    parts = []
    for i in range(0, n, chunk):
        part = flat[i:i + chunk]
        parts.append(_side_chunk(w_flat, b, jnp.pad(part, ((0, chunk - part.shape[0]), (0, 0)))))
    return jnp.concatenate(parts, axis=1)[:, :n]


def sides_packed(boundaries: Boundaries, feats: Array, *, chunk_size: int = 1024) -> Array:
    """``sides`` packed along the feature maps (see ``ri_jax.solver.pack_bits``).

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])``.
      feats: [N, *feat_shape].
      chunk_size: as in ``sides``.

    Returns:
      uint32[Q, ⌈N/32⌉], padding bits zero.
    """
    return pack_bits(sides(boundaries, feats, chunk_size=chunk_size))

