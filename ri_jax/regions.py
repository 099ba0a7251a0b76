"""Interpretations used as classifiers (appendix D).

Each interpretation v is a convex polytope P(x_v): the boundaries it selected and
the side of x_v on each. It predicts Class(x_v) for every image it covers. An
image covered by several polytopes takes the label of the one covering the most
reference images (ties: the lowest region index); an image covered by none is
reported as uncovered (label −1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.boundaries import Boundaries, side_bits

Array = jax.Array


class DecisionRegions(NamedTuple):
    """V polytopes over one shared sample of boundaries Q, or each over its own pool.

    Attributes:
      w: [Q, *feat_shape] shared boundary normals, or [V, Q, *feat_shape], one pool per
        polytope (the authors' variant).
      b: [Q] boundary offsets, or [V, Q].
      selected: bool[V, Q], boundaries of each polytope.
      signs: bool[V, Q], the side of each polytope's input x_v on every boundary.
      label: int32[V], Class(x_v).
      num_covered_refs: int32[V], reference images each polytope covers.
    """

    w: Array
    b: Array
    selected: Array
    signs: Array
    label: Array
    num_covered_refs: Array


class RegionPrediction(NamedTuple):
    """Labels from ``predict``.

    Attributes:
      label: int32[N], the chosen region's class, −1 when uncovered.
      covered_any: bool[N], covered by at least one region.
      chosen_region: int32[N], index of the region that decided, −1 when uncovered.
    """

    label: Array
    covered_any: Array
    chosen_region: Array


def _check_regions(regions: DecisionRegions) -> None:
    w, b = regions.w, regions.b
    lead = b.ndim
    if lead not in (1, 2) or w.ndim < lead + 1 or b.shape != w.shape[:lead]:
        raise ValueError(f"regions: expected w [Q, *feat_shape] and b [Q] (or w [V, Q, ...] "
                         f"and b [V, Q]), got {w.shape} and {b.shape}")
    q = b.shape[-1]
    sel, signs = regions.selected, regions.signs
    if sel.dtype != jnp.bool_ or sel.ndim != 2 or sel.shape[1] != q:
        raise ValueError(f"regions.selected: expected bool[V, {q}], got {sel.dtype}{sel.shape}")
    if signs.dtype != jnp.bool_ or signs.shape != sel.shape:
        raise ValueError(f"regions.signs: expected bool{sel.shape}, got "
                         f"{signs.dtype}{signs.shape}")
    v = sel.shape[0]
    if v == 0:
        raise ValueError("regions: need at least one region (V >= 1)")
    if lead == 2 and b.shape[0] != v:
        raise ValueError(f"regions: {b.shape[0]} pools of boundaries for {v} regions")
    for name in ("label", "num_covered_refs"):
        arr = getattr(regions, name)
        if arr.shape != (v,) or not jnp.issubdtype(arr.dtype, jnp.integer):
            raise ValueError(f"regions.{name}: expected int[{v}], got {arr.dtype}{arr.shape}")


def covers(regions: DecisionRegions, feats: Array, *, chunk_size: int = 1024) -> Array:
    """Which polytopes cover which feature maps.

    Args:
      regions: ``DecisionRegions`` with V polytopes.
      feats: [N, *feat_shape].
      chunk_size: feature maps per side computation (see ``boundaries.side_bits``).

    Returns:
      bool[N, V]: True when feature map n is on x_v's side of every boundary selected by v
      (an empty polytope covers everything).
    """
    regions = DecisionRegions(*map(jnp.asarray, regions))
    _check_regions(regions)
    if regions.b.ndim == 2:
        return _covers_per_region(regions, feats, chunk_size)
    side = side_bits(Boundaries(regions.w, regions.b), feats, packed=False,
                     chunk_size=chunk_size).T  # [N, Q]
    # Count the selected boundaries on which n and x_v disagree; exact in float32 for Q < 2^24.
    wrong_if_true = (regions.selected & ~regions.signs).astype(jnp.float32)
    wrong_if_false = (regions.selected & regions.signs).astype(jnp.float32)
    s = side.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    mismatches = (jnp.dot(s, wrong_if_true.T, precision=hi)
                  + jnp.dot(1.0 - s, wrong_if_false.T, precision=hi))
    return mismatches == 0


def _covers_per_region(regions: DecisionRegions, feats: Array, chunk_size: int) -> Array:
    """``covers`` when each polytope has its own pool: sides against all V·Q boundaries."""
    side = side_bits(Boundaries(regions.w, regions.b), feats, packed=False,
                     chunk_size=chunk_size)  # [V, Q, N]
    wrong = regions.selected[:, :, None] & (side != regions.signs[:, :, None])
    return ~jnp.any(wrong, axis=1).T


def predict(regions: DecisionRegions, feats: Array, *, chunk_size: int = 1024) -> RegionPrediction:
    """Labels feature maps with the covering polytope that covers the most references.

    Args:
      regions: ``DecisionRegions`` with V polytopes.
      feats: [N, *feat_shape].
      chunk_size: as in ``covers``.

    Returns:
      ``RegionPrediction``; label and chosen_region are −1 for uncovered feature maps.
    """
    regions = DecisionRegions(*map(jnp.asarray, regions))
    cov = covers(regions, feats, chunk_size=chunk_size)
    covered_any = jnp.any(cov, axis=1)
    # argmax returns the first maximum: ties go to the lowest region index.
    score = jnp.where(cov, regions.num_covered_refs.astype(jnp.int32)[None, :], -1)
    best = jnp.argmax(score, axis=1).astype(jnp.int32)
    chosen = jnp.where(covered_any, best, -1)
    label = jnp.where(covered_any, regions.label.astype(jnp.int32)[best], -1)
    return RegionPrediction(label=label, covered_any=covered_any, chosen_region=chosen)


def covered_by_class(covered, classes, class_names) -> dict[str, int]:
    """How many covered references each class holds (by prediction or by label).

    Args:
      covered: bool[N], the references inside a polytope.
      classes: int[N], each reference's class id (−1: unknown, counted nowhere).
      class_names: the name of each class id.

    Returns:
      class name → count, every class listed (zeros too), in class order.
    """
    counts = np.bincount(np.asarray(classes)[np.asarray(covered, bool)] + 1,
                         minlength=len(class_names) + 1)[1:]
    return {name: int(count) for name, count in zip(class_names, counts)}
