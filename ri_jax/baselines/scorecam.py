"""Score-CAM (Wang et al., 2020) weights at x; maps anywhere via ``heatmaps.cam``.

For every channel k of ψ(x): upsample ψ^k bilinearly to the image size (the same
half-pixel ``heatmaps.upsample`` as every other map), min–max normalise it to [0, 1]
(M_k), multiply the RAW image by it, normalise the product and forward it through the
full model. The channel's score s_k is the softmax probability of class c on that
masked image (``score="probability"``, the default) or its logit (``score="logit"``),
and the weights are a softmax over channels, α = softmax_k(s_k). With probabilities
this is Algorithm 1 of the Score-CAM paper: its baseline subtraction
p_c(x ∘ M_k) − p_c(x_b) shifts every channel by the same constant, which the softmax
ignores.

How this differs from its peers (checked by ``benchmarks/peer_cams.py`` against
pytorch-grad-cam 1.5.7 on a numerically identical torch copy of the network):
  * pytorch-grad-cam's ``ScoreCAM`` with its default target (``ClassifierOutputTarget``)
    scores the raw **logit**, where our default scores the softmax probability
    (``score="logit"`` reproduces it; its ``ClassifierOutputSoftmaxTarget`` matches our
    default);
  * it multiplies the model's **normalised** input by the masks, where we mask the raw
    image and then normalise (so a dropped pixel is raw black, as in AD / AI);
    ``masked_input="normalised"`` reproduces it;
  * it upsamples ψ^k with ``UpsamplingBilinear2d``, i.e. ``align_corners=True``, where we
    use half-pixel bilinear (``align_corners=False``, like ``cv2.resize`` and every other
    map here); ``mask_upsampling="align_corners"`` reproduces it;
  * it divides by max − min + 1e-8 when normalising a mask (we divide exactly), and uses
    the same softmax over channels.
  With all three options set to pytorch-grad-cam's choices the two agree to float32
  precision. The authors' released code (github.com/haofanwang/Score-CAM,
  ``cam/scorecam.py``) scores the **softmax probability** of the target class on the
  masked **normalised** input, upsamples half-pixel (``align_corners=False``), and
  weights every channel by that probability directly (no softmax over channels),
  skipping channels whose upsampled map is constant.

A channel whose upsampled map is constant gives a zero mask (a black image, or a zero
normalised input), never NaN, and keeps its softmax weight.

The masked forward passes are batched: channels are split into chunks of
``chunk_size`` (the last chunk padded with zero channels) and ``lax.map`` runs one
``forward_fn`` call per chunk, so memory is bounded by ``chunk_size`` images. By
default (``chunk_size=None``) a chunk holds as many channels as fit
``MASKED_PIXELS_PER_PASS`` image pixels, in chunks of equal size: every channel in one
pass for small images (all 64 of the embedded 96-pixel model), 40 at a time for
VGG-19's 512 at 224 pixels. The chunking never changes the weights.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.baselines.gradcam import check_class_idx, check_psi
from ri_jax.heatmaps import normalize_map, upsample

Array = jax.Array
ForwardFn = Callable[[Array], Array]
NormalizeFn = Callable[[Array], Array]

SCORES = ("probability", "logit")
MASKED_INPUTS = ("raw", "normalised")
MASK_UPSAMPLING = ("half_pixel", "align_corners")

# Masked images × S² of one default forward pass: 2^21 pixels is 41 images at 224 px,
# about 0.5 GB for the first activation of a width-1 VGG.
MASKED_PIXELS_PER_PASS = 2**21


def scorecam_chunk_size(channels: int, image_size: int) -> int:
    """Masked images per forward pass when ``chunk_size`` is None.

    The fewest passes of at most ``MASKED_PIXELS_PER_PASS`` pixels each (at least one
    image), with the channels spread evenly over them so the last pass pads little.
    """
    cap = max(1, MASKED_PIXELS_PER_PASS // (image_size * image_size))
    passes = -(-channels // cap)
    return -(-channels // passes)


def _align_corners_matrix(n: int, image_size: int) -> np.ndarray:
    """[image_size, n] bilinear weights with the corner samples aligned (torch ``align_corners=True``)."""
    if n == 1:
        return np.ones((image_size, 1), np.float32)
    src = np.arange(image_size) * (n - 1) / max(image_size - 1, 1)
    lo = np.minimum(np.floor(src).astype(int), n - 2)
    frac = src - lo
    out = np.zeros((image_size, n))
    out[np.arange(image_size), lo] = 1 - frac
    out[np.arange(image_size), lo + 1] += frac
    return out.astype(np.float32)


def scorecam_mask(channel: Array, image_size: int, *, mask_upsampling: str = "half_pixel") -> Array:
    """One channel as a soft mask.

    Args:
      channel: [h, w] one channel ψ^k.
      image_size: side S of the image.
      mask_upsampling: ``"half_pixel"`` (``heatmaps.upsample``) or ``"align_corners"``
        (pytorch-grad-cam's ``UpsamplingBilinear2d``).

    Returns:
      [S, S] upsampled channel min–max normalised to [0, 1]; zeros if it is constant.
    """
    if mask_upsampling == "half_pixel":
        return normalize_map(upsample(channel, image_size))
    rows = jnp.asarray(_align_corners_matrix(channel.shape[0], image_size))
    cols = jnp.asarray(_align_corners_matrix(channel.shape[1], image_size))
    return normalize_map(jnp.einsum("sh,hw,tw->st", rows, channel, cols,
                                    precision=jax.lax.Precision.HIGHEST))


def _check_options(score: str, masked_input: str, mask_upsampling: str) -> None:
    for name, value, allowed in (("score", score, SCORES), ("masked_input", masked_input, MASKED_INPUTS),
                                 ("mask_upsampling", mask_upsampling, MASK_UPSAMPLING)):
        if value not in allowed:
            raise ValueError(f"{name}: unknown value {value!r}; choose one of {list(allowed)}")


def _num_classes(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_shape: tuple,
                 dtype) -> int:
    """C, from the shapes alone; the model's input has its own channels (1 for a grey model)."""
    return jax.eval_shape(lambda raw: forward_fn(normalize_fn(raw)),
                          jax.ShapeDtypeStruct((1, *raw_shape), dtype)).shape[-1]


def _check_inputs(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_image: Array, psi: Array,
                  class_idx, chunk_size: int) -> None:
    if jnp.ndim(raw_image) != 3 or raw_image.shape[0] != raw_image.shape[1] or raw_image.shape[2] != 3:
        raise ValueError(f"raw_image: expected one square RGB image [S, S, 3], got shape {jnp.shape(raw_image)}")
    check_psi(psi)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size: must be a positive int or None, "
                         f"got {chunk_size!r}")
    check_class_idx(class_idx, _num_classes(forward_fn, normalize_fn, raw_image.shape,
                                            raw_image.dtype))


def scorecam_scores(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_image: Array,
                    psi: Array, class_idx, *, chunk_size: int | None = None,
                    score: str = "probability", masked_input: str = "raw",
                    mask_upsampling: str = "half_pixel") -> Array:
    """Class-c score of the image masked by each channel.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]`` (the full model).
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_image: [S, S, 3] raw input image x in [0, 1].
      psi: [h, w, c] feature map ψ(x).
      class_idx: scalar int, the class c to explain.
      chunk_size: masked images per ``forward_fn`` call (None: ``scorecam_chunk_size``).
      score: ``"probability"`` (softmax of class c, the default) or ``"logit"`` (pytorch-grad-cam's
        default target).
      masked_input: ``"raw"`` (mask x, then normalise; the default) or ``"normalised"`` (mask the
        normalised x, as pytorch-grad-cam and the authors' code do).
      mask_upsampling: ``"half_pixel"`` (the default) or ``"align_corners"`` (pytorch-grad-cam).

    Returns:
      [c] for every channel k, softmax(forward_fn(normalize_fn(x ∘ M_k)))[c] (or the logit, or
      with ``normalize_fn(x) ∘ M_k`` as input, per the options).
    """
    _check_options(score, masked_input, mask_upsampling)
    _check_inputs(forward_fn, normalize_fn, raw_image, psi, class_idx, chunk_size)
    size = raw_image.shape[0]
    channels = psi.shape[-1]
    chunk = (scorecam_chunk_size(channels, size) if chunk_size is None
             else min(chunk_size, channels))
    num_chunks = -(-channels // chunk)
    maps = jnp.moveaxis(psi, -1, 0)
    # Zero padding channels give black images whose scores are cut off below.
    maps = jnp.pad(maps, ((0, num_chunks * chunk - channels), (0, 0), (0, 0)))
    maps = maps.reshape(num_chunks, chunk, *psi.shape[:2])

    normalised = normalize_fn(raw_image)

    def chunk_scores(chunk_maps: Array) -> Array:
        masks = jax.vmap(lambda m: scorecam_mask(m, size, mask_upsampling=mask_upsampling))(chunk_maps)
        if masked_input == "raw":
            inputs = normalize_fn(raw_image[None] * masks[..., None])
        else:
            inputs = normalised[None] * masks[..., None]
        logits = forward_fn(inputs)
        if score == "probability":
            logits = jax.nn.softmax(logits, axis=-1)
        return logits[:, class_idx]

    return jax.lax.map(chunk_scores, maps).reshape(-1)[:channels]


def scorecam_weights(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_image: Array,
                     psi: Array, class_idx, *, chunk_size: int | None = None,
                     score: str = "probability", masked_input: str = "raw",
                     mask_upsampling: str = "half_pixel") -> Array:
    """Score-CAM channel weights at one input image.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]`` (the full model).
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_image: [S, S, 3] raw input image x in [0, 1].
      psi: [h, w, c] feature map ψ(x).
      class_idx: scalar int, the class c to explain.
      chunk_size: masked images per ``forward_fn`` call (None: ``scorecam_chunk_size``).
      score: ``"probability"`` (softmax of class c, the default) or ``"logit"`` (pytorch-grad-cam's
        default target).
      masked_input: ``"raw"`` (mask x, then normalise; the default) or ``"normalised"`` (mask the
        normalised x, as pytorch-grad-cam and the authors' code do).
      mask_upsampling: ``"half_pixel"`` (the default) or ``"align_corners"`` (pytorch-grad-cam).

    Returns:
      [c] α = softmax over channels of ``scorecam_scores``.
    """
    return jax.nn.softmax(scorecam_scores(forward_fn, normalize_fn, raw_image, psi, class_idx,
                                          chunk_size=chunk_size, score=score,
                                          masked_input=masked_input,
                                          mask_upsampling=mask_upsampling))


def scorecam_weights_batch(forward_fn: ForwardFn, normalize_fn: NormalizeFn, raw_images: Array,
                           psis: Array, class_idx: Array, *, chunk_size: int | None = None,
                           score: str = "probability", masked_input: str = "raw",
                           mask_upsampling: str = "half_pixel") -> Array:
    """``scorecam_weights`` over a batch, one image at a time (``lax.map``).

    ``forward_fn`` already batches over channels, so images are mapped sequentially
    to keep memory at ``chunk_size`` masked images.

    Args:
      forward_fn: ``forward_fn(normalised images [B, S, S, 3]) -> logits [B, C]``.
      normalize_fn: maps raw [0, 1] images to the model's input normalisation.
      raw_images: [B, S, S, 3] raw images in [0, 1].
      psis: [B, h, w, c] their feature maps.
      class_idx: int[B] class of each image.
      chunk_size: masked images per ``forward_fn`` call (None: ``scorecam_chunk_size``).
      score: ``"probability"`` (softmax of class c, the default) or ``"logit"`` (pytorch-grad-cam's
        default target).
      masked_input: ``"raw"`` (mask x, then normalise; the default) or ``"normalised"`` (mask the
        normalised x, as pytorch-grad-cam and the authors' code do).
      mask_upsampling: ``"half_pixel"`` (the default) or ``"align_corners"`` (pytorch-grad-cam).

    Returns:
      [B, c] channel weights.
    """
    _check_options(score, masked_input, mask_upsampling)
    if jnp.ndim(raw_images) != 4:
        raise ValueError(f"raw_images: expected [B, S, S, 3], got shape {jnp.shape(raw_images)}")
    if jnp.ndim(psis) != 4 or psis.shape[0] != raw_images.shape[0]:
        raise ValueError(f"psis: expected [B, h, w, c] with B = {raw_images.shape[0]}, "
                         f"got shape {jnp.shape(psis)}")
    check_class_idx(class_idx, _num_classes(forward_fn, normalize_fn, raw_images.shape[1:],
                                            raw_images.dtype), (raw_images.shape[0],))
    return jax.lax.map(
        lambda args: scorecam_weights(forward_fn, normalize_fn, *args, chunk_size=chunk_size,
                                      score=score, masked_input=masked_input,
                                      mask_upsampling=mask_upsampling),
        (raw_images, psis, jnp.asarray(class_idx)))
