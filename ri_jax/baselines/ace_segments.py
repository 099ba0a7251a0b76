"""ACE's image segments and patches (Ghorbani et al., 2019), as the RI paper reuses them (§6.1).

Every image is cut into superpixels by SLIC at several resolutions; a segment
that overlaps an already kept segment of a coarser resolution with Jaccard
similarity above a threshold is a duplicate and is dropped. Each kept segment
becomes a *patch*: the image with everything outside the segment painted a
constant grey (ACE's 117/255), cropped to the segment's bounding box and
resized back to the model's input size.

Segmentation is host-side NumPy / scikit-image (an optional extra, imported
lazily); patch construction is JAX and vmaps over segments.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ACE_FILL = 117.0 / 255.0  # ACE's ``average_image_value`` in raw [0, 1] space
_MISSING_SKIMAGE = "ACE needs scikit-image: pip install ri_jax[ace]"


def _slic():
    try:
        from skimage.segmentation import slic
    except ImportError as err:
        raise ImportError(_MISSING_SKIMAGE) from err
    return slic


def superpixel_levels(raw_image: np.ndarray, n_segments: Sequence[int], *,
                      compactness: float = 20.0, sigma: float = 1.0) -> list[np.ndarray]:
    """SLIC superpixels of one image at several resolutions.

    Args:
      raw_image: [S, S, 3] float image in [0, 1].
      n_segments: the SLIC segment count of each resolution, coarse first (ACE: 15, 50, 80).
      compactness: SLIC compactness (ACE: 20).
      sigma: Gaussian smoothing before SLIC (ACE: 1).

    Returns:
      One bool[K_l, S, S] array per resolution: the K_l disjoint segments covering the image.
    """
    slic = _slic()
    image = np.asarray(raw_image, np.float64)
    levels = []
    for n in n_segments:
        labels = slic(image, n_segments=int(n), compactness=float(compactness),
                      sigma=float(sigma), channel_axis=-1)
        ids = np.unique(labels)
        levels.append(labels[None] == ids[:, None, None])
    return levels


def jaccard_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Jaccard similarity |A∩B| / |A∪B| of two stacks of masks.

    Args:
      a: bool[M, S, S].
      b: bool[K, S, S].

    Returns:
      float64[M, K]; 0 where both masks are empty.
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a, b: need bool[M, S, S] and bool[K, S, S], got {a.shape} and {b.shape}")
    pixels = a.shape[1] * a.shape[2]
    fa = a.reshape(a.shape[0], pixels).astype(np.float64)
    fb = b.reshape(b.shape[0], pixels).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def drop_duplicates(levels: Sequence[np.ndarray], *, threshold: float = 0.5,
                    min_area: float = 0.001) -> np.ndarray:
    """ACE's de-duplication of multi-resolution segments.

    Resolutions are visited in order. A segment is kept when it covers more than
    ``min_area`` of the image and its Jaccard similarity with every segment kept
    from the *earlier* resolutions is at most ``threshold`` (segments of one
    resolution are disjoint, so they never duplicate each other; ACE compares
    only against earlier resolutions too).

    Args:
      levels: per resolution a bool[K_l, S, S] stack of segments.
      threshold: Jaccard similarity above which a segment is a duplicate.
      min_area: fraction of the image a segment must exceed.

    Returns:
      bool[M, S, S]: the kept segments, in resolution then segment order.
    """
    if not levels:
        raise ValueError("levels: need at least one resolution of segments")
    shape = levels[0].shape[1:]
    kept = np.zeros((0,) + shape, bool)
    for masks in levels:
        masks = np.asarray(masks, bool)
        if masks.ndim != 3 or masks.shape[1:] != shape:
            raise ValueError(f"levels: every entry must be bool[K, {shape[0]}, {shape[1]}], "
                             f"got shape {masks.shape}")
        big = masks.reshape(masks.shape[0], -1).mean(1) > min_area
        unique = np.all(jaccard_matrix(masks, kept) <= threshold, axis=1)
        kept = np.concatenate([kept, masks[big & unique]])
    return kept


def segment_image(raw_image: np.ndarray, n_segments: Sequence[int], *, compactness: float = 20.0,
                  sigma: float = 1.0, threshold: float = 0.5,
                  min_area: float = 0.001) -> np.ndarray:
    """ACE's segments of one image: multi-resolution SLIC, then ``drop_duplicates``.

    Args:
      raw_image: [S, S, 3] float image in [0, 1].
      n_segments, compactness, sigma: see ``superpixel_levels``.
      threshold, min_area: see ``drop_duplicates``.

    Returns:
      bool[M, S, S] segments (they may overlap across resolutions).
    """
    levels = superpixel_levels(raw_image, n_segments, compactness=compactness, sigma=sigma)
    return drop_duplicates(levels, threshold=threshold, min_area=min_area)


def _axis_samples(present: Array, size: int) -> tuple[Array, Array, Array]:
    """Bilinear sample positions that stretch the span of ``present`` onto ``size`` pixels.

    Half-pixel centres with edge clamping (PIL / ``jax.image.resize`` convention),
    so the result equals cropping the span and resizing it.
    """
    n = present.shape[0]
    lo = jnp.argmax(present)
    hi = n - 1 - jnp.argmax(present[::-1])
    span = (hi - lo + 1).astype(jnp.float32)
    pos = lo + (jnp.arange(size, dtype=jnp.float32) + 0.5) * span / size - 0.5
    pos = jnp.clip(pos, lo, hi)
    low = jnp.floor(pos).astype(jnp.int32)
    high = jnp.minimum(low + 1, hi)
    return low, high, pos - low


def make_patch(raw_image: Array, mask: Array, *, fill: float = ACE_FILL) -> Array:
    """One ACE patch: grey outside the segment, cropped to its bounding box, resized to the image size.

    Resizing is bilinear (ACE uses PIL bicubic on uint8; bilinear avoids overshoot
    and keeps values in [0, 1]). An empty mask gives an all-grey patch.

    Args:
      raw_image: [S, S, 3] image in [0, 1].
      mask: bool[S, S] segment.
      fill: grey level outside the segment, in raw space.

    Returns:
      [S, S, 3] patch in raw space (normalise it before the model sees it).
    """
    size_h, size_w = mask.shape
    filled = jnp.where(mask[..., None], raw_image, jnp.asarray(fill, raw_image.dtype))
    y0, y1, wy = _axis_samples(jnp.any(mask, axis=1), size_h)
    x0, x1, wx = _axis_samples(jnp.any(mask, axis=0), size_w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    top = filled[y0[:, None], x0[None, :]] * (1 - wx) + filled[y0[:, None], x1[None, :]] * wx
    bottom = filled[y1[:, None], x0[None, :]] * (1 - wx) + filled[y1[:, None], x1[None, :]] * wx
    return top * (1 - wy) + bottom * wy
