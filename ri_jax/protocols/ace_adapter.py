"""ACE in the §6 protocols: discovery on image sets, reuse on targets as kept segments.

ACE explains with image segments, not channel weights: its interpretations are
concept sets discovered on a set of images (``ace_interpretations``), reused on a
target by segmenting it and keeping the segments of significant concepts until more
than 20 % of the pixels are kept (``ace_masks``, §6.2), and scored with
``scoring.evaluate_masks``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from ri_jax.baselines.ace import ACECache, ACEConfig, ACEResult, discover_concepts, explain_batch
from ri_jax.metrics import KEEP_FRACTION
from ri_jax.model import Model
from ri_jax.protocols.batching import check_batch

Array = jax.Array
ACE_DISCOVERY_IMAGES = 50  # default discovery set around one input x: x and its 49 nearest references


@dataclasses.dataclass(frozen=True)
class ACESettings:
    """ACE in a protocol.

    Attributes:
      config: ``ACEConfig`` (segmentation, clustering, TCAV).
      max_images: discovery images per set (protocol-specific meaning; 0 = its default).
      random_images: references (any class, seeded) whose patches form TCAV's random sets.
    """

    config: ACEConfig = ACEConfig()
    max_images: int = 0
    random_images: int = 50


class ACEMasks(NamedTuple):
    """ACE's kept pixels on target images.

    Attributes:
      masks: bool[B, S, S] pixels kept.
      reached: bool[B] more than ``fraction`` of the pixels kept (False: ACE's significant
        segments on that image cover less, and all of them are kept — possibly none).
      num_segments: int32[B] segments of significant concepts found on each target.
    """

    masks: np.ndarray
    reached: np.ndarray
    num_segments: np.ndarray


def random_reference_images(ref_raw: Callable[[np.ndarray], np.ndarray], num_refs: int,
                            count: int, *, key: Array) -> np.ndarray:
    """Raw images of ``count`` references (any class) drawn with ``key``, whose patches form
    TCAV's random counterparts.

    Args:
      ref_raw: indices int[n] -> float32[n, S, S, 3] raw reference images.
      num_refs: N references.
      count: images drawn (capped at N).
      key: PRNG key.

    Returns:
      float32[min(count, N), S, S, 3], in reference order.
    """
    chosen = np.sort(np.asarray(jax.random.choice(
        key, num_refs, (min(count, num_refs),), replace=False)))
    return ref_raw(chosen)


def ace_interpretations(model: Model, discovery_sets: Sequence[np.ndarray],
                        classes: Sequence[int], config: ACEConfig = ACEConfig(), *, key: Array,
                        cache: ACECache, random_images: np.ndarray | None = None,
                        progress: bool = False) -> list[ACEResult]:
    """ACE's V interpretations, one per discovery set of raw images (§6.4).

    Args:
      model: the ``ri_jax.model.Model``.
      discovery_sets: V raw image arrays [N_v, S, S, 3] in [0, 1].
      classes: V classes to explain (e.g. the prediction on each set's input image).
      config: ACE settings.
      key: PRNG key, split over the sets.
      cache: one ``ACECache`` per model, shared with ``ace_masks``.
      random_images: optional raw images [R, S, S, 3] whose patches form TCAV's random
        counterparts for every set (default: each set's own patches).
      progress: show ACE's progress bars.

    Returns:
      V ``ACEResult``s (a set may yield no significant concept).
    """
    if len(discovery_sets) == 0 or len(discovery_sets) != len(classes):
        raise ValueError(f"discovery_sets: need one non-empty list with one class per set, got "
                         f"{len(discovery_sets)} sets and {len(classes)} classes")
    keys = jax.random.split(key, len(discovery_sets))
    return [discover_concepts(model, images, int(c), config, key=k, random_images=random_images,
                              cache=cache, progress=progress)
            for images, c, k in zip(discovery_sets, classes, keys)]


def ace_masks(results: Sequence[ACEResult], which: np.ndarray, raw: np.ndarray, model: Model, *, cache: ACECache, fraction: float = KEEP_FRACTION) -> ACEMasks:
    """Reuses ACE interpretation ``which[b]`` on target b (§6.1) and keeps its pixels (§6.2).

    Args:
      results: V ``ACEResult``s.
      which: int[B] interpretation of each target, in [0, V).
      raw: float32[B, S, S, 3] raw targets in [0, 1].
      model: the ``ri_jax.model.Model``.
      cache: the ``ACECache`` used to discover ``results``.
      fraction: pixel share the kept segments must exceed.

    Returns:
      ``ACEMasks``.
    """
    raw = check_batch(raw, "raw", 4)
    which = check_batch(which, "which", 1, len(raw))
    if not np.issubdtype(which.dtype, np.integer) or which.min() < 0 or which.max() >= len(results):
        raise ValueError(f"which: expected integer indices in [0, {len(results)})")
    masks = np.zeros(raw.shape[:3], bool)
    reached = np.zeros(len(raw), bool)
    count = np.zeros(len(raw), np.int32)
    # One batched explain call per interpretation; ACE segments every target once (cached).
    for v in np.unique(which):
        idx = np.flatnonzero(which == v)
        for i, e in zip(idx, explain_batch(results[v], model, raw[idx], cache=cache,
                                           fraction=fraction)):
            masks[i], reached[i], count[i] = e.keep, e.reached, len(e.segments)
    return ACEMasks(masks=masks, reached=reached, num_segments=count)


def ace_summary(results: Sequence[ACEResult], found: ACEMasks) -> dict:
    """What ACE's V interpretations were, for the results files.

    Args:
      results: V ``ACEResult``s.
      found: ``ace_masks`` on the evaluated targets.

    Returns:
      dict: ``interpretations`` V, ``without_significant_concept`` (sets that found none),
      {mean, min, max} of ``significant_concepts``, and on the targets ``empty_masks`` (no
      segment kept: a black image) and ``below_fraction`` (kept share not above it).
    """
    sig = np.array([int(np.sum(r.significant)) for r in results], np.float64)
    return {"interpretations": len(results),
            "without_significant_concept": int(np.sum(sig == 0)),
            "significant_concepts": {"mean": float(sig.mean()), "min": float(sig.min()),
                                     "max": float(sig.max())},
            "empty_masks": int(np.sum(~found.masks.any(axis=(1, 2)))),
            "below_fraction": int(np.sum(~found.reached))}
