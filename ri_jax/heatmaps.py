"""Heat maps from channel weights (Eq. 5), shared by RI and the CAM baselines.

Every method here is split in two: channel weights α are computed at an input
image x, and ``cam`` turns α and the feature map ψ of *any* image into a heat
map. Reusing α unchanged on other images is what makes an interpretation
reusable (§5.1, §6.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def normalize_map(m: Array) -> Array:
    """Min–max normalises a map to [0, 1] as Grad-CAM does; a constant map gives zeros (never NaN)."""
    lo, hi = jnp.min(m), jnp.max(m)
    span = hi - lo
    return jnp.where(span > 0, (m - lo) / jnp.where(span > 0, span, 1.0), jnp.zeros_like(m))


def _interpolation_matrix(n: int, image_size: int) -> Array:
    """[image_size, n]: ``jax.image.resize``'s bilinear weights along one axis."""
    return jax.image.resize(jnp.eye(n, dtype=jnp.float32), (image_size, n), method="bilinear")


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
      (s_h = −1 when x lies exactly on the boundary, matching ``boundaries.sides``, which puts
      such points on the negative side, so α always points into x's polytope).
    """
    side = jnp.einsum("qhwc,hwc->q", w, psi_x, precision=jax.lax.Precision.HIGHEST) + b
    sign = jnp.where(side > 0, 1.0, -1.0)
    return sign[:, None] * jnp.mean(w, axis=(1, 2))


def polytope_heatmap(alphas: Array, selected: Array, psi: Array, image_size: int) -> Array:
    """Heat map of a polytope: the mean of its boundaries' normalised maps.

    Args:
      alphas: [Q, c] channel weights from ``ri_channel_weights`` (computed at x, reused anywhere).
      selected: bool[Q] boundaries of the polytope P(x).
      psi: [h, w, c] feature map of the image to draw on.
      image_size: side of the output map.

    Returns:
      [image_size, image_size] map in [0, 1]; all zeros for an empty polytope.
    """
    maps = jax.vmap(cam, in_axes=(0, None, None))(alphas, psi, image_size)
    weight = selected.astype(maps.dtype)
    count = jnp.sum(weight)
    return jnp.einsum("q,qij->ij", weight, maps) / jnp.maximum(count, 1.0)
