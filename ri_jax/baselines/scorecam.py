"""Score-CAM (Wang et al., 2020) weights at x; maps anywhere via ``heatmaps.cam``.

For every channel k of ψ(x): upsample ψ^k bilinearly to the image size (the same
``heatmaps.upsample`` as every other map), min–max normalise it to [0, 1], multiply
the RAW image by it, normalise the product and forward it through the full model.
The channel's score is the softmax probability of class c on that masked image,
and the weights are a softmax over channels of these scores,
α = softmax_k(p_c(x ∘ M_k)). This is Algorithm 1 of the Score-CAM paper: its
baseline subtraction p_c(x ∘ M_k) − p_c(x_b) shifts every channel by the same
constant, which the softmax ignores. (The authors' released code instead weights by
p_c directly and skips constant channels; pytorch-grad-cam uses the softmax over
channels, as here.)

A channel whose upsampled map is constant gives a zero mask (a black image), never
NaN, and keeps its softmax weight.

The masked forward passes are batched: channels are split into chunks of
``chunk_size`` (the last chunk padded with zero channels) and ``lax.map`` runs one
``forward_fn`` call per chunk, so memory is bounded by ``chunk_size`` images.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ri_jax.baselines.gradcam import check_class_idx, check_psi
from ri_jax.heatmaps import normalize_map, upsample

Array = jax.Array
ForwardFn = Callable[[Array], Array]
NormalizeFn = Callable[[Array], Array]


def scorecam_mask(channel: Array, image_size: int) -> Array:
    """One channel as a soft mask.

    Args:
      channel: [h, w] one channel ψ^k.
      image_size: side S of the image.

    Returns:
      [S, S] upsampled channel min–max normalised to [0, 1]; zeros if it is constant.
    """
    return normalize_map(upsample(channel, image_size))


def _check_inputs(forward_fn: ForwardFn, raw_image: Array, psi: Array, class_idx,
                  chunk_size: int) -> None:
    if jnp.ndim(raw_image) != 3 or raw_image.shape[0] != raw_image.shape[1] or raw_image.shape[2] != 3:
        raise ValueError(f"raw_image: expected one square RGB image [S, S, 3], got shape {jnp.shape(raw_image)}")
    check_psi(psi)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be a positive int, got {chunk_size!r}")
    logits = jax.eval_shape(forward_fn, jax.ShapeDtypeStruct((1, *raw_image.shape), raw_image.dtype))
    check_class_idx(class_idx, logits.shape[-1])


def scorecam_scores(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_image: Array,
                    psi: Array, class_idx, *, chunk_size: int = 32) -> Array:
    """Class-c probability of the image masked by each channel.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]`` (the full model).
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_image: [S, S, 3] raw input image x in [0, 1].
      psi: [h, w, c] feature map ψ(x).
      class_idx: scalar int, the class c to explain.
      chunk_size: masked images per ``forward_fn`` call.

    Returns:
      [c] softmax(forward_fn(normalize_fn(x ∘ M_k)))[c] for every channel k.
    """
    _check_inputs(forward_fn, raw_image, psi, class_idx, chunk_size)
    size = raw_image.shape[0]
    channels = psi.shape[-1]
    chunk = min(chunk_size, channels)
    num_chunks = -(-channels // chunk)
    maps = jnp.moveaxis(psi, -1, 0)
    # Zero padding channels give black images whose scores are cut off below.
    maps = jnp.pad(maps, ((0, num_chunks * chunk - channels), (0, 0), (0, 0)))
    maps = maps.reshape(num_chunks, chunk, *psi.shape[:2])

    def chunk_scores(chunk_maps: Array) -> Array:
        masks = jax.vmap(scorecam_mask, in_axes=(0, None))(chunk_maps, size)
        masked = raw_image[None] * masks[..., None]
        probs = jax.nn.softmax(forward_fn(normalize_fn(masked)), axis=-1)
        return probs[:, class_idx]

    return jax.lax.map(chunk_scores, maps).reshape(-1)[:channels]


def scorecam_weights(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_image: Array,
                     psi: Array, class_idx, *, chunk_size: int = 32) -> Array:
    """Score-CAM channel weights at one input image.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]`` (the full model).
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_image: [S, S, 3] raw input image x in [0, 1].
      psi: [h, w, c] feature map ψ(x).
      class_idx: scalar int, the class c to explain.
      chunk_size: masked images per ``forward_fn`` call.

    Returns:
      [c] α = softmax over channels of ``scorecam_scores``.
    """
    return jax.nn.softmax(scorecam_scores(forward_fn, normalize_fn, raw_image, psi, class_idx,
                                          chunk_size=chunk_size))


def scorecam_weights_batch(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                           psis: Array, class_idx: Array, *, chunk_size: int = 32) -> Array:
    """``scorecam_weights`` over a batch, one image at a time (``lax.map``).

    ``forward_fn`` already batches over channels, so images are mapped sequentially
    to keep memory at ``chunk_size`` masked images.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      psis: [B, h, w, c] their feature maps.
      class_idx: int[B] class of each image.
      chunk_size: masked images per ``forward_fn`` call.

    Returns:
      [B, c] channel weights.
    """
    if jnp.ndim(raw_images) != 4:
        raise ValueError(f"raw_images: expected [B, S, S, 3], got shape {jnp.shape(raw_images)}")
    if jnp.ndim(psis) != 4 or psis.shape[0] != raw_images.shape[0]:
        raise ValueError(f"psis: expected [B, h, w, c] with B = {raw_images.shape[0]}, "
                         f"got shape {jnp.shape(psis)}")
    logits = jax.eval_shape(forward_fn, jax.ShapeDtypeStruct((1, *raw_images.shape[1:]), raw_images.dtype))
    check_class_idx(class_idx, logits.shape[-1], (raw_images.shape[0],))
    return jax.lax.map(
        lambda args: scorecam_weights(forward_fn, normalize_fn, *args, chunk_size=chunk_size),
        (raw_images, psis, jnp.asarray(class_idx)))
