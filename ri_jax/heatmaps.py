"""Heat maps from channel weights (Eq. 5), shared by RI and the CAM baselines.

Every method here is split in two: channel weights α are computed at an input
image x, and ``cam`` turns α and the feature map ψ of *any* image into a heat
map. Reusing α unchanged on other images is what makes an interpretation
reusable (§5.1, §6.1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def normalize_map(m: Array) -> Array:
    """Min–max normalises a map to [0, 1] as Grad-CAM does; a constant map gives zeros (never NaN)."""
    lo, hi = jnp.min(m), jnp.max(m)
    span = hi - lo
    return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), jnp.zeros_like(m))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _resized_identity(n: int, image_size: int) -> Array:
    return jax.image.resize(jnp.eye(n, dtype=jnp.float32), (image_size, n), method="bilinear")


@functools.lru_cache(maxsize=None)
def _interpolation_matrix(n: int, image_size: int) -> np.ndarray:
    """[image_size, n] float32: ``jax.image.resize``'s bilinear weights along one axis.

    A constant per shape, computed once by one compiled call, also from inside a trace (run
    op by op there, it cost ~30 small compilations per new shape).
    """
    return np.asarray(_resized_identity.lower(n, image_size).compile()())


def upsample(m: Array, image_size: int) -> Array:
    """Bilinear upsampling of a [h, w] map to [image_size, image_size].

    The same result as ``jax.image.resize(m, (S, S), "bilinear")`` (which is separable and
    linear), written as two small matrix products: about twice as fast for many maps.
    """
    rows = _interpolation_matrix(m.shape[0], image_size)
    cols = _interpolation_matrix(m.shape[1], image_size)
    return jnp.einsum("sh,hw,tw->st", rows, m, cols, precision=jax.lax.Precision.HIGHEST)


def cam(alpha: Array, psi: Array, image_size: int) -> Array:
    """One heat map from channel weights.

    Args:
      alpha: [c] channel weights.
      psi: [h, w, c] feature map of the image to explain.
      image_size: side of the output map.

    Returns:
      [image_size, image_size] map in [0, 1]: upsample(ReLU(Σ_k α_k ψ^k)), min–max normalised.
    """
    raw = jax.nn.relu(jnp.einsum("hwc,c->hw", psi, alpha))
    return normalize_map(upsample(raw, image_size))


def ri_channel_weights(w: Array, b: Array, psi_x: Array) -> Array:
    """Channel weights of every sampled boundary, oriented towards x (Eq. 5).

    Args:
      w: [Q, h, w, c] boundary normals W_h.
      b: [Q] offsets b_h.
      psi_x: [h, w, c] feature map of the input x.

    Returns:
      [Q, c]: α_{h,k} = spatial mean of s_h W_h^k with s_h = sign so that ⟨s_h W_h, ψ(x)⟩ + s_h b_h > 0
      (s_h = −1 when x lies exactly on the boundary, matching ``boundaries.side_bits``, which puts
      such points on the negative side, so α always points into x's polytope).
    """
    side = jnp.einsum("qhwc,hwc->q", w, psi_x, precision=jax.lax.Precision.HIGHEST) + b
    sign = jnp.where(side > 0, 1.0, -1.0)
    return sign[:, None] * jnp.mean(w, axis=(1, 2))


@functools.lru_cache(maxsize=None)
def _extreme_rows(n: int, image_size: int) -> np.ndarray:
    """Output rows of ``upsample`` along one axis that hold the extremes of every map.

    Output row s of the upsampled axis is the fixed combination ``R[s] @ m`` of the n input
    rows. Where R's rows change affinely with s (second difference 0), every map is affine
    in s too, so over each such run its min and max sit at the run's ends: the first and
    last rows and the kinks (rows where the second difference of R is nonzero; about 2n).

    Returns:
      int[K] sorted row indices, K ≤ image_size.
    """
    weights = _interpolation_matrix(n, image_size).astype(np.float64)
    if image_size <= 2:
        return np.arange(image_size)
    # A real kink has a second difference of about n / image_size; 1e-5 only absorbs the
    # float32 rounding of the weights (keeping an extra row is always safe).
    second = np.abs(weights[:-2] - 2 * weights[1:-1] + weights[2:]).max(axis=1)
    kinks = np.nonzero(second > 1e-5)[0] + 1
    return np.unique(np.concatenate([[0, image_size - 1], kinks]))


def polytope_heatmap(alphas: Array, selected: Array, psi: Array, image_size: int) -> Array:
    """Heat map of a polytope: the mean of its boundaries' normalised maps (``cam``).

    Computed without drawing the Q maps: upsampling is linear with rows summing to 1, so
    mean_q (up(r_q) − lo_q) / span_q = up(Σ_q (r_q − lo_q) / (span_q · count)) for the
    low-resolution ReLU maps r_q [h, w]; each map's min lo_q and max of its upsampled
    version lie on the few rows and columns of ``_extreme_rows``. So one image costs
    Q·h·w·c for the raw maps, Q·(2h)·(2w)·h for their extremes and one upsampling,
    instead of Q full-size maps.

    Args:
      alphas: [Q, c] channel weights from ``ri_channel_weights`` (computed at x, reused anywhere).
      selected: bool[Q] boundaries of the polytope P(x).
      psi: [h, w, c] feature map of the image to draw on.
      image_size: side of the output map.

    Returns:
      [image_size, image_size] map in [0, 1]; all zeros for an empty polytope.
    """
    h, w = psi.shape[:2]
    raw = jax.nn.relu(jnp.einsum("hwc,qc->qhw", psi, alphas))
    rows = _interpolation_matrix(h, image_size)[_extreme_rows(h, image_size)]
    cols = _interpolation_matrix(w, image_size)[_extreme_rows(w, image_size)]
    extremes = jnp.einsum("sh,qhw,tw->qst", rows, raw, cols,
                          precision=jax.lax.Precision.HIGHEST)
    lo, hi = jnp.min(extremes, axis=(1, 2)), jnp.max(extremes, axis=(1, 2))
    span = hi - lo
    weight = selected.astype(raw.dtype)
    # A constant map normalises to zeros: it counts in the mean but adds nothing.
    scale = jnp.where(span > 0, weight / jnp.where(span > 0, span, 1.0), 0.0)
    scale = scale / jnp.maximum(jnp.sum(weight), 1.0)
    combined = jnp.einsum("q,qhw->hw", scale, raw - lo[:, None, None],
                          precision=jax.lax.Precision.HIGHEST)
    # Rounding may step a hair outside the exact mean's range [0, 1].
    return jnp.clip(upsample(combined, image_size), 0.0, 1.0)
