"""Evaluation metrics: Average Drop / Increase (§6.2, Eqs. 7–8) and decision regions as classifiers (App. D).

AD and AI keep the most important ``fraction`` of an image's pixels (20 % in the
paper), paint the rest black in raw space (0 before normalisation), and compare
the softmax probability Y_c of the class c the model predicts on the unmasked
image before and after masking. The library returns fractions in [0, 1];
experiment scripts multiply by 100 for the paper's percentages.

Which pixels are kept: exactly k = floor(fraction · S² + 1/2) pixels (round half
up), the highest values first. Among pixels tied at the cut, those earlier in the
fixed pseudo-random pixel order of ``tie_priority`` are kept (so a tied flat region is
sampled evenly over the image, not from its top rows); ``cut_ties`` counts the tied
pixels that were dropped. NaN heat-map values rank below every number.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ForwardFn = Callable[[Array], Array]
NormalizeFn = Callable[[Array], Array]

KEEP_FRACTION = 0.2


class MaskedScores(NamedTuple):
    """Scores before and after masking, one entry per image.

    Attributes:
      y_orig: [B] softmax probability of ``classes`` on the unmasked images.
      y_masked: [B] softmax probability of ``classes`` on the masked images.
      classes: int32[B] the class the model predicts on each unmasked image.
    """

    y_orig: Array
    y_masked: Array
    classes: Array


class RegionMetrics(NamedTuple):
    """Decision regions used as classifiers (App. D).

    Attributes:
      acu_gt: accuracy against the ground truth on covered images (0.0 when none is covered).
      acu_md: agreement with the model's predictions on covered images (0.0 when none is covered).
      cvr: fraction of images covered by at least one region.
      num_covered: number of covered images; 0 marks acu_gt and acu_md as undefined.
    """

    acu_gt: Array
    acu_md: Array
    cvr: Array
    num_covered: Array


def num_kept(num_pixels: int, fraction: float = KEEP_FRACTION) -> int:
    """Pixels kept: floor(fraction · num_pixels + 1/2), i.e. rounded half up."""
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: must be a number in [0, 1], got {fraction!r}")
    return int(math.floor(fraction * num_pixels + 0.5))


def _check_map(heatmap: Array) -> None:
    if jnp.ndim(heatmap) != 2:
        raise ValueError(f"heatmap: expected one map [S, S], got shape {jnp.shape(heatmap)}")


TIE_HASH = 2654435761  # Knuth's multiplicative hash constant (odd, so i -> i·K mod 2³² is a bijection)


def tie_priority(num_pixels: int) -> np.ndarray:
    """Fixed order in which tied pixels are kept: row-major indices sorted by (i·K mod 2³²).

    Heat maps often have fewer than 20 % non-zero pixels, so the cut falls inside a large
    tied (zero) region. Keeping tied pixels in row-major order would always keep the top
    rows of the image; this fixed pseudo-random order spreads them over the image instead,
    and is the same for every map and every run.
    """
    keys = (np.arange(num_pixels, dtype=np.uint64) * TIE_HASH) % (1 << 32)
    return np.argsort(keys, kind="stable")


def _keep_order(heatmap: Array) -> Array:
    """Pixel indices, most important first; ties in ``tie_priority`` order; NaN last."""
    flat = heatmap.reshape(-1)
    flat = jnp.where(jnp.isnan(flat), -jnp.inf, flat)
    priority = jnp.asarray(tie_priority(flat.size), jnp.int32)
    return priority[jnp.argsort(flat[priority], descending=True, stable=True)]


def top_fraction_mask(heatmap: Array, fraction: float = KEEP_FRACTION) -> Array:
    """The pixels kept for AD / AI.

    Args:
      heatmap: [S, S] importance map (any real values).
      fraction: share of pixels to keep, in [0, 1] (static).

    Returns:
      bool[S, S] with exactly ``num_kept(S*S, fraction)`` True entries: the highest
      values, ties broken by the fixed pixel order of ``tie_priority``.
    """
    _check_map(heatmap)
    k = num_kept(heatmap.size, fraction)
    order = _keep_order(heatmap)
    flat = jnp.zeros(heatmap.size, bool).at[order[:k]].set(True)
    return flat.reshape(heatmap.shape)


def cut_ties(heatmap: Array, fraction: float = KEEP_FRACTION) -> Array:
    """How many pixels tied with the last kept pixel were dropped by the tie rule.

    Args:
      heatmap: [S, S] importance map.
      fraction: share of pixels kept, in [0, 1] (static).

    Returns:
      int32 scalar: pixels whose value equals the lowest kept value but that are not
      kept (0 when nothing or everything is kept).
    """
    _check_map(heatmap)
    k = num_kept(heatmap.size, fraction)
    if k in (0, heatmap.size):
        return jnp.zeros((), jnp.int32)
    flat = jnp.where(jnp.isnan(heatmap.reshape(-1)), -jnp.inf, heatmap.reshape(-1))
    order = _keep_order(heatmap)
    threshold = flat[order[k - 1]]
    kept = jnp.zeros(heatmap.size, bool).at[order[:k]].set(True)
    return jnp.sum((flat == threshold) & ~kept, dtype=jnp.int32)


def mask_image(raw_image: Array, mask: Array) -> Array:
    """Paints the pixels outside ``mask`` black.

    Args:
      raw_image: [S, S, 3] raw image in [0, 1].
      mask: bool[S, S] pixels to keep.

    Returns:
      [S, S, 3] raw image, 0 outside the mask.
    """
    if jnp.ndim(raw_image) != 3 or jnp.shape(raw_image)[:2] != jnp.shape(mask):
        raise ValueError(f"mask: shape {jnp.shape(mask)} does not match raw_image {jnp.shape(raw_image)}")
    return jnp.where(mask[..., None], raw_image, jnp.zeros_like(raw_image))


def _check_images(raw_images: Array, other: Array, name: str) -> None:
    if jnp.ndim(raw_images) != 4 or raw_images.shape[-1] != 3 or raw_images.shape[0] == 0:
        raise ValueError(f"raw_images: expected a non-empty batch [B, S, S, 3], got shape {jnp.shape(raw_images)}")
    if jnp.shape(other) != raw_images.shape[:3]:
        raise ValueError(f"{name}: expected shape {raw_images.shape[:3]}, got {jnp.shape(other)}")
    if not isinstance(other, jax.core.Tracer) and jnp.issubdtype(other.dtype, jnp.floating) \
            and bool(jnp.any(jnp.isnan(other))):
        raise ValueError(f"{name}: contains NaN")


_mask_batch = jax.jit(jax.vmap(mask_image))


@functools.partial(jax.jit, static_argnames="fraction")
def _top_masks(heatmaps: Array, fraction: float) -> Array:
    return jax.vmap(lambda m: top_fraction_mask(m, fraction))(heatmaps)


@jax.jit
def _class_scores(logits: Array) -> tuple[Array, Array, Array]:
    """Logits of [originals; masked] → (Y_c, Y'_c, c) with c the argmax on the originals."""
    n = logits.shape[0] // 2
    probs = jax.nn.softmax(logits, axis=-1)
    classes = jnp.argmax(probs[:n], axis=-1)
    picked = jnp.take_along_axis(probs, jnp.tile(classes, 2)[:, None], axis=-1)[:, 0]
    return picked[:n], picked[n:], classes.astype(jnp.int32)


def masked_scores_from_masks(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                             masks: Array, *, batch_size: int = 64) -> MaskedScores:
    """Y_c before and after keeping only the masked pixels (for ACE's segments or any pixel set).

    ``forward_fn`` is called on fixed-size batches of 2·``batch_size`` images (the last
    chunk is padded), so a jitted ``forward_fn`` compiles once.

    Args:
      forward_fn: ``forward_fn(normalised images [n, S, S, 3]) -> logits [n, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      masks: bool[B, S, S] pixels to keep.
      batch_size: images per chunk.

    Returns:
      ``MaskedScores``; c is the argmax of the model on each unmasked image.
    """
    _check_images(raw_images, masks, "masks")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    masks = jnp.asarray(masks, bool)
    total = raw_images.shape[0]
    chunk = min(batch_size, total)
    pad = -total % chunk
    raw = jnp.pad(raw_images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    masks = jnp.pad(masks, ((0, pad), (0, 0), (0, 0)))
    parts = []
    for start in range(0, total + pad, chunk):
        originals = raw[start:start + chunk]
        masked = _mask_batch(originals, masks[start:start + chunk])
        parts.append(_class_scores(forward_fn(normalize_fn(jnp.concatenate([originals, masked])))))
    y, y_masked, classes = (jnp.concatenate(p)[:total] for p in zip(*parts))
    return MaskedScores(y_orig=y, y_masked=y_masked, classes=classes)


def masked_scores(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                  heatmaps: Array, *, fraction: float = KEEP_FRACTION,
                  batch_size: int = 64) -> MaskedScores:
    """Y_c before and after keeping the top ``fraction`` of each heat map's pixels.

    Args:
      forward_fn: ``forward_fn(normalised images [n, S, S, 3]) -> logits [n, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      heatmaps: [B, S, S] heat maps on those images.
      fraction: share of pixels kept (``top_fraction_mask``).
      batch_size: images per chunk.

    Returns:
      ``MaskedScores``; c is the argmax of the model on each unmasked image.
    """
    _check_images(raw_images, heatmaps, "heatmaps")
    masks = _top_masks(jnp.asarray(heatmaps), fraction)
    return masked_scores_from_masks(forward_fn, normalize_fn, raw_images, masks, batch_size=batch_size)


def _check_scores(y: Array, y_masked: Array) -> None:
    if jnp.ndim(y) != 1 or jnp.shape(y) != jnp.shape(y_masked) or jnp.shape(y)[0] == 0:
        raise ValueError(f"y, y_masked: expected two non-empty [B] arrays of one shape, "
                         f"got {jnp.shape(y)} and {jnp.shape(y_masked)}")
    for name, v in (("y", y), ("y_masked", y_masked)):
        if isinstance(v, jax.core.Tracer):
            continue
        v = np.asarray(v)
        if not (np.all(np.isfinite(v)) and v.min() >= 0):
            raise ValueError(f"{name}: scores must be finite and non-negative")


def average_drop(y: Array, y_masked: Array) -> Array:
    """Average Drop (Eq. 7) as a fraction: mean of max(0, Y − Y') / Y.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.

    Returns:
      float scalar in [0, 1] for probabilities; an image with Y = 0 contributes 0.
    """
    _check_scores(y, y_masked)
    y, y_masked = jnp.asarray(y), jnp.asarray(y_masked)
    drop = jnp.maximum(y - y_masked, 0.0) / jnp.where(y > 0, y, 1.0)
    return jnp.mean(jnp.where(y > 0, drop, 0.0))


def average_increase(y: Array, y_masked: Array) -> Array:
    """Average Increase (Eq. 8) as a fraction: share of images with Y < Y'.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.

    Returns:
      float scalar in [0, 1].
    """
    _check_scores(y, y_masked)
    return jnp.mean((jnp.asarray(y) < jnp.asarray(y_masked)).astype(jnp.float32))


def region_metrics(predicted_label: Array, ground_truth: Array, model_pred: Array) -> RegionMetrics:
    """ACU-GT, ACU-MD and CVR of decision regions used as a classifier (App. D).

    Args:
      predicted_label: int[N] label given by the region covering each image, −1 if uncovered.
      ground_truth: int[N] true labels.
      model_pred: int[N] labels predicted by the CNN.

    Returns:
      ``RegionMetrics``; accuracies are over covered images only and are 0.0 with
      ``num_covered`` = 0 when no image is covered (never NaN).
    """
    shape = jnp.shape(predicted_label)
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(f"predicted_label: expected a non-empty [N] array, got shape {shape}")
    for name, v in (("ground_truth", ground_truth), ("model_pred", model_pred)):
        if jnp.shape(v) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {jnp.shape(v)}")
    for name, v in (("predicted_label", predicted_label), ("ground_truth", ground_truth),
                    ("model_pred", model_pred)):
        if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.integer):
            raise ValueError(f"{name}: expected integer labels, got dtype {jnp.asarray(v).dtype}")
    if not isinstance(predicted_label, jax.core.Tracer) and int(jnp.min(predicted_label)) < -1:
        raise ValueError("predicted_label: labels must be >= -1 (-1 = uncovered)")
    pred = jnp.asarray(predicted_label)
    covered = pred >= 0
    count = jnp.sum(covered, dtype=jnp.int32)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    acu_gt = jnp.sum(covered & (pred == jnp.asarray(ground_truth))) / denom
    acu_md = jnp.sum(covered & (pred == jnp.asarray(model_pred))) / denom
    cvr = count.astype(jnp.float32) / shape[0]
    return RegionMetrics(acu_gt=acu_gt, acu_md=acu_md, cvr=cvr, num_covered=count)
