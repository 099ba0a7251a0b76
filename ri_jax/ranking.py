"""Ranking the references covered by P(x) by semantic distance (Eq. 6, §5.2).

Dist(x, x') = Σ_{h ∈ P(x)} |⟨n_h, ψ(x)⟩ − ⟨n_h, ψ(x')⟩| with the unit normal
n_h = W_h / ‖W_h‖. The paper writes the normal direction W→_h without fixing its
length; the unit normal makes each term the Euclidean distance between the two
projections on h's normal, so no boundary dominates through the scale of its
gradient. A boundary with W_h = 0 (possible only at a degenerate tie) adds 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def unit_normals(w: Array) -> Array:
    """W_h / ‖W_h‖ for every boundary, float[Q, D] (zero rows stay zero)."""
    w = jnp.asarray(w)
    flat = w.reshape(w.shape[0], -1)
    norm = jnp.linalg.norm(flat, axis=1, keepdims=True)
    return jnp.where(norm > 0, flat / jnp.where(norm > 0, norm, 1.0), 0.0)


def semantic_distance(w: Array, selected: Array, psi_x: Array, psis: Array) -> Array:
    """Eq. 6 between x and each of N feature maps.

    Args:
      w: [Q, *feat_shape] boundary normals W_h.
      selected: bool[Q], the boundaries of P(x).
      psi_x: [*feat_shape] feature map of x.
      psis: [N, *feat_shape] feature maps of the other images.

    Returns:
      float[N] distances (all 0 for an empty polytope).
    """
    w, selected = jnp.asarray(w), jnp.asarray(selected)
    psi_x, psis = jnp.asarray(psi_x), jnp.asarray(psis)
    if w.ndim < 2:
        raise ValueError(f"w: expected [Q, *feat_shape], got shape {w.shape}")
    if selected.dtype != jnp.bool_ or selected.shape != w.shape[:1]:
        raise ValueError(f"selected: expected bool[{w.shape[0]}], got "
                         f"{selected.dtype}{selected.shape}")
    if psi_x.shape != w.shape[1:]:
        raise ValueError(f"psi_x: expected shape {w.shape[1:]}, got {psi_x.shape}")
    if psis.ndim != w.ndim or psis.shape[1:] != w.shape[1:]:
        raise ValueError(f"psis: expected [N, *{w.shape[1:]}], got {psis.shape}")
    normals = unit_normals(w)
    return distance_from_projections(selected, projection(normals, psi_x),
                                     projections(normals, psis))


def projection(normals: Array, psi: Array) -> Array:
    """⟨n_h, ψ⟩ of one feature map [*feat_shape] for every boundary, float[Q]."""
    return jnp.dot(normals, psi.reshape(-1), precision=_HIGHEST)


def projections(normals: Array, psis: Array) -> Array:
    """⟨n_h, ψ⟩ for every feature map and boundary: all Eq. 6 needs from a reference.

    Args:
      normals: float[Q, D] unit normals (``unit_normals``).
      psis: [N, *feat_shape] feature maps, D values each.

    Returns:
      float[N, Q].
    """
    return jnp.dot(psis.reshape(psis.shape[0], -1), normals.T, precision=_HIGHEST)


def distance_from_projections(selected: Array, proj_x: Array, proj: Array) -> Array:
    """Eq. 6 from projections: Σ_{h ∈ P(x)} |proj_x[h] − proj[n, h]|.

    Args:
      selected: bool[Q], the boundaries of P(x).
      proj_x: float[Q], x's projections.
      proj: float[N, Q], the other images' projections.

    Returns:
      float[N].
    """
    return jnp.sum(jnp.where(selected, jnp.abs(proj - proj_x), 0.0), axis=1)


def pool_distances(selected: Array, dots_x: Array, dots: Array, w: Array) -> Array:
    """Eq. 6 from the products ⟨W_h, ψ⟩ the sides were taken from (per-input pools).

    Each input's projections on its own unit normals are its products over ‖W_h‖, so the
    distances cost no pass over the feature maps beyond the sides' own product.

    Args:
      selected: bool[B, Q], each input's P(x).
      dots_x: float[B, Q], ⟨W_h, ψ(x)⟩ for each input's own boundaries.
      dots: float[B, Q, N], ⟨W_h, ψ(r_n)⟩ (``boundaries.side_bits(dots=True)``).
      w: [B, Q, *feat_shape] the normals W_h.

    Returns:
      float[B, N] (0 for an empty polytope; a boundary with W_h = 0 adds 0).
    """
    norm = jnp.linalg.norm(w.reshape(w.shape[:2] + (-1,)), axis=-1)  # [B, Q]
    scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
    gap = jnp.abs(dots - dots_x[..., None]) * scale[..., None]  # [B, Q, N]
    return jnp.sum(jnp.where(selected[..., None], gap, 0.0), axis=1)


class Ranking(NamedTuple):
    """Covered images by ascending distance, in a fixed shape.

    Attributes:
      order: int32[N]; ``order[:count]`` are the covered indices by ascending distance
        (ties: lower index first), the uncovered ones follow in the same order.
      count: int32, number of covered images.
    """

    order: Array
    count: Array


def rank_covered(distances: Array, covered: Array) -> Ranking:
    """Sorts covered images by distance, pushing uncovered ones to the end.

    Args:
      distances: float[N].
      covered: bool[N].

    Returns:
      ``Ranking(order int32[N], count int32)``.
    """
    distances, covered = jnp.asarray(distances), jnp.asarray(covered)
    if distances.ndim != 1:
        raise ValueError(f"distances: expected [N], got shape {distances.shape}")
    if covered.dtype != jnp.bool_ or covered.shape != distances.shape:
        raise ValueError(f"covered: expected bool{distances.shape}, got "
                         f"{covered.dtype}{covered.shape}")
    # lexsort is stable and sorts by its last key first: uncovered last, then distance.
    order = jnp.lexsort((distances, ~covered)).astype(jnp.int32)
    return Ranking(order=order, count=jnp.sum(covered, dtype=jnp.int32))
