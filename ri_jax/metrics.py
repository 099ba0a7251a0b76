"""Evaluation metrics: Average Drop / Increase (§6.2, Eqs. 7–8) and decision regions as classifiers (App. D).

AD and AI keep the most important ``fraction`` of an image's pixels (20 % in the
paper), paint the rest with a *fill*, and compare the softmax probability Y_c of the
class c the model predicts on the unmasked image before and after masking. The
library returns fractions in [0, 1]; experiment scripts multiply by 100 for the
paper's percentages.

Which pixels are kept: exactly k = floor(fraction · S² + 1/2) pixels (round half
up), the highest values first. Among pixels tied at the cut, those earlier in the
fixed pseudo-random pixel order of ``tie_priority`` are kept (so a tied flat region is
sampled evenly over the image, not from its top rows); ``cut_ties`` counts the tied
pixels that were dropped. NaN heat-map values rank below every number, and −0 ties
with 0. ``kept_pixels`` gives the mask and that count at once without sorting the map:
it selects the value at the cut bit by bit on integer keys that order like the values,
then ranks only the pixels tied with it.

The *inverse* of a map (``bottom_fraction_mask``) keeps the k pixels that same total
order ranks last: lowest values first, NaN lowest of all, and among pixels tied at the
cut those *latest* in ``tie_priority``. It is the complement of the top S² − k pixels,
so a map and its inverse never share a pixel when 2k ≤ S².

Fills (``FILLS``; ``make_fill``): what the dropped pixels become.
  * ``"black"``: raw 0, the paper's "masked in black" (the default);
  * ``"mean"``: the model's normalisation mean colour in raw space, i.e. the raw colour
    the model sees as 0 after normalisation;
  * ``"blur"``: the image itself under a strong Gaussian blur (as insertion / deletion
    metrics use): σ = ``BLUR_SIGMA_FRACTION`` · S pixels unless given, separable,
    truncated at ``BLUR_TRUNCATE`` σ, borders reflected (``scipy.ndimage.gaussian_filter``'s
    defaults, against which it is tested).
No flat fill is neutral: the model has its own class prior on an all-fill image
(``fill_prior``), which pulls masked images towards one class. ``per_class`` splits
AD / AI by the class predicted on the unmasked image to show it.

The "Centre square" control (``centre_square_heatmap``) ranks pixels by their
Chebyshev distance to the image centre, so the cut keeps the largest centred square
of at most k pixels and fills the remaining k − a² pixels from the next square ring
in ``tie_priority`` order: exactly k pixels, like every other map.
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
FILLS = ("black", "mean", "blur")
DEFAULT_FILL = "black"
BLUR_SIGMA_FRACTION = 0.1  # σ = 0.1 · S: 9.6 px at 96 px, 22.4 px at 224 px
BLUR_TRUNCATE = 4.0  # kernel radius in σ (scipy.ndimage.gaussian_filter's default)


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


class Fill(NamedTuple):
    """What the dropped pixels of an image x become: ``K x Kᵀ + colour`` per channel.

    One linear form covers every mode, so masking has a single jit-friendly code path:
    ``"black"`` and ``"mean"`` have K = 0 and a constant colour, ``"blur"`` has K the
    1-D Gaussian blur matrix (separable: rows, then columns) and colour 0.

    Attributes:
      matrix: float32[S, S] K.
      colour: float32[3] raw RGB added everywhere.
    """

    matrix: Array
    colour: Array


class PerClass(NamedTuple):
    """AD / AI split by the class c predicted on the unmasked image.

    Attributes:
      count: int32[C] images predicted as each class; 0 marks that class's ad / ai as undefined.
      ad: float32[C] Average Drop over those images, a fraction (0.0 where count is 0).
      ai: float32[C] Average Increase over those images, a fraction (0.0 where count is 0).
    """

    count: Array
    ad: Array
    ai: Array


class FillPrior(NamedTuple):
    """The model's view of an image that is all fill.

    Attributes:
      probabilities: float32[C] softmax of the model on the all-fill image; for ``"blur"``
        (one fully blurred image per input) the mean over the images.
      predicted: float32[C] share of all-fill images predicted as each class (one-hot for a
        constant fill).
    """

    probabilities: Array
    predicted: Array


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


def _sort_keys(flat: Array) -> Array:
    """Unsigned integer keys in the order of the values: NaN lowest (as −inf), −0 tied with 0.

    The cut is then a selection on integers (``_kth_largest``) instead of a sort. Floats
    are read bit by bit, so a subnormal value stays above 0 even where the CPU flushes
    subnormals to zero in arithmetic.
    """
    if jnp.issubdtype(flat.dtype, jnp.floating):
        flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))  # exact for f16, bf16
    elif jnp.issubdtype(flat.dtype, jnp.unsignedinteger):
        flat = flat.astype(jnp.promote_types(flat.dtype, jnp.uint32))
    else:
        flat = flat.astype(jnp.promote_types(flat.dtype, jnp.int32))
    bits = 8 * flat.dtype.itemsize
    unsigned = jnp.dtype(f"uint{bits}")
    raw = jax.lax.bitcast_convert_type(flat, unsigned)
    sign = jnp.asarray(1 << (bits - 1), unsigned)
    if jnp.issubdtype(flat.dtype, jnp.unsignedinteger):
        return raw
    if jnp.issubdtype(flat.dtype, jnp.integer):  # two's complement: flip the sign bit
        return raw ^ sign
    inf = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, flat.dtype), unsigned)
    magnitude = raw & ~sign
    raw = jnp.where(magnitude > inf, inf | sign, raw)  # NaN (any payload) -> -inf
    raw = jnp.where(magnitude == 0, jnp.zeros_like(raw), raw)  # -0 -> +0
    return jnp.where(raw >= sign, ~raw, raw | sign)  # IEEE: negatives reversed, below positives


def _kth_largest(keys: Array, k: int) -> Array:
    """The k-th largest of unsigned ``keys`` (k ≥ 1; all ones for k = 0), bit by bit from
    the top: the largest t with at least k keys ≥ t."""
    bits = 8 * keys.dtype.itemsize

    def step(i, t):
        candidate = t | jnp.left_shift(jnp.asarray(1, keys.dtype),
                                       (bits - 1 - i).astype(keys.dtype))
        return jnp.where(jnp.sum(keys >= candidate) >= k, candidate, t)

    return jax.lax.fori_loop(0, bits, step, jnp.zeros((), keys.dtype))


def kept_pixels(heatmap: Array, fraction: float = KEEP_FRACTION, *,
                inverse: bool = False) -> tuple[Array, Array]:
    """The pixels kept for AD / AI, and how many tied pixels the tie rule dropped.

    The k = ``num_kept(S*S, fraction)`` pixels first in the keep order: highest values
    first, NaN last, ties in ``tie_priority`` order (``inverse``: the last k of that order).
    Found by selecting the value at the cut and ranking only the pixels tied with it, so
    no map is sorted.

    Args:
      heatmap: [S, S] importance map (any real values).
      fraction: share of pixels to keep, in [0, 1] (static).
      inverse: keep the least important share instead (static).

    Returns:
      ``(bool[S, S] with exactly k True entries, int32 pixels equal to the value at the
      cut but not kept)``; the count is 0 when nothing or everything is kept.
    """
    _check_map(heatmap)
    n = heatmap.size
    k = num_kept(n, fraction)
    keys = _sort_keys(jnp.asarray(heatmap).reshape(-1))
    priority = tie_priority(n)
    if inverse:  # the same order read from the other end
        keys, priority = ~keys, priority[::-1]
    cut = _kth_largest(keys, k)
    above = keys > cut
    tied = (keys == cut)[priority]  # in tie order
    kept_tied = tied & (jnp.cumsum(tied) <= k - jnp.sum(above))
    kept = above | kept_tied[np.argsort(priority)]
    dropped = (jnp.sum(tied, dtype=jnp.int32) - jnp.sum(kept_tied, dtype=jnp.int32)
               if 0 < k < n else jnp.zeros((), jnp.int32))
    return kept.reshape(heatmap.shape), dropped


def top_fraction_mask(heatmap: Array, fraction: float = KEEP_FRACTION) -> Array:
    """The pixels kept for AD / AI.

    Args:
      heatmap: [S, S] importance map (any real values).
      fraction: share of pixels to keep, in [0, 1] (static).

    Returns:
      bool[S, S] with exactly ``num_kept(S*S, fraction)`` True entries: the highest
      values, ties broken by the fixed pixel order of ``tie_priority``.
    """
    return kept_pixels(heatmap, fraction)[0]


def bottom_fraction_mask(heatmap: Array, fraction: float = KEEP_FRACTION) -> Array:
    """The pixels a map's *inverse* keeps: its least important ``fraction``.

    Args:
      heatmap: [S, S] importance map (any real values).
      fraction: share of pixels to keep, in [0, 1] (static).

    Returns:
      bool[S, S] with exactly k = ``num_kept(S*S, fraction)`` True entries: the k pixels
      ranked last by ``top_fraction_mask``'s order (lowest values first, NaN lowest; among
      pixels tied at the cut, those latest in ``tie_priority``). Equal to the complement of
      the top S² − k pixels.
    """
    return kept_pixels(heatmap, fraction, inverse=True)[0]


def cut_ties(heatmap: Array, fraction: float = KEEP_FRACTION, *, inverse: bool = False) -> Array:
    """How many pixels tied with the last kept pixel were dropped by the tie rule.

    Args:
      heatmap: [S, S] importance map.
      fraction: share of pixels kept, in [0, 1] (static).
      inverse: count for ``bottom_fraction_mask`` instead of ``top_fraction_mask`` (static).

    Returns:
      int32 scalar: pixels whose value equals the kept value nearest the cut (the lowest
      kept, or for ``inverse`` the highest kept) but that are not kept (0 when nothing or
      everything is kept).
    """
    return kept_pixels(heatmap, fraction, inverse=inverse)[1]


def centre_square_heatmap(image_size: int) -> np.ndarray:
    """The "Centre square" control: minus each pixel's Chebyshev distance to the image centre.

    Its top ``fraction`` (``top_fraction_mask``) is the largest centred a × a square with
    a² ≤ k (a has the parity of S, so the square is exactly centred; a may be 0) plus k − a² pixels of
    the next square ring, chosen in ``tie_priority`` order: exactly k pixels, the same on
    every image.

    Args:
      image_size: side S.

    Returns:
      float32[S, S], 0 at the centre pixel(s), decreasing outwards.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size: must be a positive int, got {image_size!r}")
    offset = np.abs(np.arange(image_size) - (image_size - 1) / 2)
    return -np.maximum(offset[:, None], offset[None, :]).astype(np.float32)


def centre_square_mask(image_size: int, fraction: float = KEEP_FRACTION) -> np.ndarray:
    """bool[S, S] the pixels the "Centre square" control keeps (``centre_square_heatmap``)."""
    return np.asarray(top_fraction_mask(jnp.asarray(centre_square_heatmap(image_size)), fraction))


def check_fill(fill: str) -> str:
    """Returns ``fill`` if it is one of ``FILLS``; raises ValueError naming the argument otherwise."""
    if fill not in FILLS:
        raise ValueError(f"fill: unknown fill {fill!r}; choose one of {list(FILLS)}")
    return fill


def blur_sigma(image_size: int, sigma: float | None = None) -> float:
    """The blur's σ in pixels: ``sigma`` if given, else ``BLUR_SIGMA_FRACTION`` · S."""
    if sigma is None:
        return BLUR_SIGMA_FRACTION * image_size
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 \
            or not math.isfinite(sigma):
        raise ValueError(f"blur_sigma: must be a positive number of pixels, got {sigma!r}")
    return float(sigma)


def gaussian_blur_matrix(size: int, sigma: float, truncate: float = BLUR_TRUNCATE) -> np.ndarray:
    """1-D Gaussian blur along one axis as a matrix: ``blurred = K @ signal``.

    The kernel is exp(−t²/2σ²) for |t| ≤ radius = int(truncate·σ + 1/2), normalised to sum
    1; indices beyond the border are reflected (… c b a | a b c … c b a | a b c …), as
    ``scipy.ndimage.gaussian_filter1d(mode="reflect")``, so every row sums to 1.

    Args:
      size: signal length S.
      sigma: σ in pixels (> 0).
      truncate: kernel radius in σ.

    Returns:
      float32[S, S].
    """
    sigma = blur_sigma(size, sigma)
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    source = np.arange(size)[:, None] + taps[None, :]
    source = source % (2 * size)
    source = np.where(source >= size, 2 * size - 1 - source, source)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.repeat(np.arange(size), len(taps)), source.reshape(-1)),
              np.tile(weights, size))
    return matrix.astype(np.float32)


def normalisation_mean(normalize_fn: NormalizeFn) -> np.ndarray:
    """The raw RGB colour that ``normalize_fn`` maps to 0 (its mean, for ``(x − mean) / std``).

    Solved from ``normalize_fn`` at raw 0 and 1, which is exact for any per-channel affine
    normalisation; anything else raises.

    Returns:
      float32[3].
    """
    probe = jnp.asarray([0.0, 0.5, 1.0], jnp.float32)[:, None, None, None] * jnp.ones((1, 1, 1, 3))
    at = np.asarray(normalize_fn(probe), np.float64).reshape(3, -1)
    slope = at[2] - at[0]
    # Half a level of 8-bit rounding is allowed at the midpoint: a grey model's luma rounds.
    if not np.all(np.isfinite(at)) or np.any(slope == 0) or not np.allclose(
            at[1], (at[0] + at[2]) / 2, rtol=1e-5, atol=1e-6 + float(np.max(np.abs(slope))) / 255):
        raise ValueError("fill: 'mean' needs a per-channel affine normalize_fn ((x - mean) / std)")
    # A grey model (one input channel) reads luma, which maps a grey raw colour to itself.
    return np.broadcast_to(-at[0] / slope, (3,)).astype(np.float32)


def make_fill(fill: str, normalize_fn: NormalizeFn, image_size: int, *,
              sigma: float | None = None) -> Fill:
    """The ``Fill`` of one fill mode for S × S images.

    Args:
      fill: one of ``FILLS``.
      normalize_fn: the model's input normalisation (gives the ``"mean"`` colour).
      image_size: side S.
      sigma: blur σ in pixels for ``"blur"`` (default ``BLUR_SIGMA_FRACTION`` · S).

    Returns:
      ``Fill``.
    """
    check_fill(fill)
    zeros = jnp.zeros((image_size, image_size), jnp.float32)
    if fill == "blur":
        return Fill(jnp.asarray(gaussian_blur_matrix(image_size, blur_sigma(image_size, sigma))),
                    jnp.zeros(3, jnp.float32))
    colour = normalisation_mean(normalize_fn) if fill == "mean" else np.zeros(3, np.float32)
    return Fill(zeros, jnp.asarray(colour))


def fill_image(raw_image: Array, fill: Fill) -> Array:
    """[S, S, 3] what every pixel of ``raw_image`` [S, S, 3] becomes when dropped: K x Kᵀ + colour."""
    blurred = jnp.einsum("si,ijc,tj->stc", fill.matrix, raw_image, fill.matrix,
                         precision=jax.lax.Precision.HIGHEST)
    return blurred + fill.colour


def mask_image(raw_image: Array, mask: Array, fill: Fill | None = None) -> Array:
    """Replaces the pixels outside ``mask`` by the fill.

    Args:
      raw_image: [S, S, 3] raw image in [0, 1].
      mask: bool[S, S] pixels to keep.
      fill: ``make_fill``'s fill; None paints black (raw 0).

    Returns:
      [S, S, 3] raw image, ``fill_image`` outside the mask.
    """
    if jnp.ndim(raw_image) != 3 or jnp.shape(raw_image)[:2] != jnp.shape(mask):
        raise ValueError(f"mask: shape {jnp.shape(mask)} does not match raw_image {jnp.shape(raw_image)}")
    outside = jnp.zeros_like(raw_image) if fill is None else fill_image(raw_image, fill)
    return jnp.where(mask[..., None], raw_image, outside)


def _check_images(raw_images: Array, other: Array, name: str) -> None:
    if jnp.ndim(raw_images) != 4 or raw_images.shape[-1] != 3 or raw_images.shape[0] == 0:
        raise ValueError(f"raw_images: expected a non-empty batch [B, S, S, 3], got shape {jnp.shape(raw_images)}")
    if jnp.shape(other) != raw_images.shape[:3]:
        raise ValueError(f"{name}: expected shape {raw_images.shape[:3]}, got {jnp.shape(other)}")
    if not isinstance(other, jax.core.Tracer) and jnp.issubdtype(other.dtype, jnp.floating) \
            and bool(jnp.any(jnp.isnan(other))):
        raise ValueError(f"{name}: contains NaN")


_mask_batch = jax.jit(jax.vmap(mask_image, in_axes=(0, 0, None)))
_fill_batch = jax.jit(jax.vmap(fill_image, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnames=("fraction", "inverse"))
def _top_masks(heatmaps: Array, fraction: float, inverse: bool) -> Array:
    keep = bottom_fraction_mask if inverse else top_fraction_mask
    return jax.vmap(lambda m: keep(m, fraction))(heatmaps)


@jax.jit
def _class_scores(logits: Array) -> tuple[Array, Array, Array]:
    """Logits of [originals; masked] → (Y_c, Y'_c, c) with c the argmax on the originals."""
    n = logits.shape[0] // 2
    probs = jax.nn.softmax(logits, axis=-1)
    classes = jnp.argmax(probs[:n], axis=-1)
    picked = jnp.take_along_axis(probs, jnp.tile(classes, 2)[:, None], axis=-1)[:, 0]
    return picked[:n], picked[n:], classes.astype(jnp.int32)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")


def masked_scores_from_masks(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                             masks: Array, *, fill: str = DEFAULT_FILL, blur_sigma: float | None = None,
                             batch_size: int = 64) -> MaskedScores:
    """Y_c before and after keeping only the masked pixels (for ACE's segments or any pixel set).

    ``forward_fn`` is called on fixed-size batches of 2·``batch_size`` images (the last
    chunk is padded), so a jitted ``forward_fn`` compiles once.

    Args:
      forward_fn: ``forward_fn(normalised images [n, S, S, 3]) -> logits [n, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      masks: bool[B, S, S] pixels to keep.
      fill: what the other pixels become, one of ``FILLS`` (default black, the paper's).
      blur_sigma: σ in pixels for ``fill="blur"`` (default ``BLUR_SIGMA_FRACTION`` · S).
      batch_size: images per chunk.

    Returns:
      ``MaskedScores``; c is the argmax of the model on each unmasked image.
    """
    _check_images(raw_images, masks, "masks")
    _check_batch_size(batch_size)
    painter = make_fill(fill, normalize_fn, raw_images.shape[1], sigma=blur_sigma)
    masks = jnp.asarray(masks, bool)
    total = raw_images.shape[0]
    chunk = min(batch_size, total)
    pad = -total % chunk
    raw = jnp.pad(raw_images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    masks = jnp.pad(masks, ((0, pad), (0, 0), (0, 0)))
    parts = []
    for start in range(0, total + pad, chunk):
        originals = raw[start:start + chunk]
        masked = _mask_batch(originals, masks[start:start + chunk], painter)
        parts.append(_class_scores(forward_fn(normalize_fn(jnp.concatenate([originals, masked])))))
    y, y_masked, classes = (jnp.concatenate(p)[:total] for p in zip(*parts))
    return MaskedScores(y_orig=y, y_masked=y_masked, classes=classes)


def masked_scores(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                  heatmaps: Array, *, fraction: float = KEEP_FRACTION, inverse: bool = False,
                  fill: str = DEFAULT_FILL, blur_sigma: float | None = None,
                  batch_size: int = 64) -> MaskedScores:
    """Y_c before and after keeping the top ``fraction`` of each heat map's pixels.

    Args:
      forward_fn: ``forward_fn(normalised images [n, S, S, 3]) -> logits [n, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      heatmaps: [B, S, S] heat maps on those images.
      fraction: share of pixels kept (``top_fraction_mask``).
      inverse: keep each map's *least* important ``fraction`` instead (``bottom_fraction_mask``).
      fill: what the other pixels become, one of ``FILLS``.
      blur_sigma: σ in pixels for ``fill="blur"``.
      batch_size: images per chunk.

    Returns:
      ``MaskedScores``; c is the argmax of the model on each unmasked image.
    """
    _check_images(raw_images, heatmaps, "heatmaps")
    masks = _top_masks(jnp.asarray(heatmaps), fraction, bool(inverse))
    return masked_scores_from_masks(forward_fn, normalize_fn, raw_images, masks, fill=fill,
                                    blur_sigma=blur_sigma, batch_size=batch_size)


def fill_prior(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array, *,
               fill: str = DEFAULT_FILL, blur_sigma: float | None = None,
               batch_size: int = 64) -> FillPrior:
    """The model's class probabilities on an image that is all fill (every pixel dropped).

    A constant fill (black, mean) gives one image whatever ``raw_images`` holds (only
    their size is used); ``"blur"`` gives one fully blurred image per raw image, and the
    prior is the mean over them.

    Args:
      forward_fn: ``forward_fn(normalised images [n, S, S, 3]) -> logits [n, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      fill: one of ``FILLS``.
      blur_sigma: σ in pixels for ``fill="blur"``.
      batch_size: images per forward call.

    Returns:
      ``FillPrior``.
    """
    if jnp.ndim(raw_images) != 4 or jnp.shape(raw_images)[-1] != 3 or jnp.shape(raw_images)[0] == 0:
        raise ValueError(f"raw_images: expected a non-empty batch [B, S, S, 3], got shape {jnp.shape(raw_images)}")
    _check_batch_size(batch_size)
    painter = make_fill(fill, normalize_fn, raw_images.shape[1], sigma=blur_sigma)
    images = jnp.asarray(raw_images if fill == "blur" else raw_images[:1])
    total = images.shape[0]
    chunk = min(batch_size, total)
    images = jnp.pad(images, ((0, -total % chunk), (0, 0), (0, 0), (0, 0)))
    probs = []
    for start in range(0, images.shape[0], chunk):
        filled = _fill_batch(images[start:start + chunk], painter)
        probs.append(jax.nn.softmax(forward_fn(normalize_fn(filled)), axis=-1))
    probs = jnp.concatenate(probs)[:total]
    predicted = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1])
    return FillPrior(probabilities=jnp.mean(probs, axis=0), predicted=jnp.mean(predicted, axis=0))


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


def drop_and_increase(y: Array, y_masked: Array) -> tuple[Array, Array]:
    """Per-image terms of Eq. 7, max(0, Y − Y′) / Y (0 where Y = 0), and of Eq. 8, Y < Y′.

    The one definition of AD / AI: ``average_drop``, ``average_increase``, ``per_class`` and
    the protocols' scoring all average these terms.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.

    Returns:
      (float[B] drops, bool[B] increases), NumPy for NumPy inputs.
    """
    xp = jnp if isinstance(y, jax.Array) or isinstance(y_masked, jax.Array) else np
    drop = xp.where(y > 0, xp.maximum(y - y_masked, 0.0) / xp.where(y > 0, y, 1.0), 0.0)
    return drop, y < y_masked


def average_drop(y: Array, y_masked: Array) -> Array:
    """Average Drop (Eq. 7) as a fraction: mean of max(0, Y − Y') / Y.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.

    Returns:
      float scalar in [0, 1] for probabilities; an image with Y = 0 contributes 0.
    """
    _check_scores(y, y_masked)
    return jnp.mean(drop_and_increase(jnp.asarray(y), jnp.asarray(y_masked))[0])


def average_increase(y: Array, y_masked: Array) -> Array:
    """Average Increase (Eq. 8) as a fraction: share of images with Y < Y'.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.

    Returns:
      float scalar in [0, 1].
    """
    _check_scores(y, y_masked)
    increase = drop_and_increase(jnp.asarray(y), jnp.asarray(y_masked))[1]
    return jnp.mean(increase.astype(jnp.float32))


def per_class(y: Array, y_masked: Array, classes: Array, num_classes: int) -> PerClass:
    """AD / AI (Eqs. 7–8) over the images of each predicted class separately.

    Args:
      y: [B] Y_c(e) on the unmasked images.
      y_masked: [B] Y_c(e') on the masked images.
      classes: int[B] the class c predicted on each unmasked image.
      num_classes: C (static).

    Returns:
      ``PerClass``; a class no image is predicted as has count 0 and ad = ai = 0.0 (never NaN).
    """
    _check_scores(y, y_masked)
    if jnp.shape(classes) != jnp.shape(y) or not jnp.issubdtype(jnp.asarray(classes).dtype, jnp.integer):
        raise ValueError(f"classes: expected int[{jnp.shape(y)[0]}], got {jnp.asarray(classes).dtype}"
                         f"{list(jnp.shape(classes))}")
    if not isinstance(classes, jax.core.Tracer) and (
            int(jnp.min(classes)) < 0 or int(jnp.max(classes)) >= num_classes):
        raise ValueError(f"classes: values must lie in [0, {num_classes})")
    drop, increase = drop_and_increase(jnp.asarray(y, jnp.float32),
                                       jnp.asarray(y_masked, jnp.float32))
    increase = increase.astype(jnp.float32)
    sums = lambda v: jax.ops.segment_sum(v, jnp.asarray(classes), num_segments=num_classes)
    count = sums(jnp.ones_like(y)).astype(jnp.int32)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    return PerClass(count=count, ad=sums(drop) / denom, ai=sums(increase) / denom)


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
