"""Masking and scoring: AD / AI of heat maps or pixel masks on their target images (§6.2).

Every protocol masks and scores here. ``MaskingOptions`` says how many pixels a heat
map keeps and what the others become (``fill``: black, the paper's and the default;
the model's normalisation mean colour; or the image blurred, ``ri_jax.metrics``);
``_keep_masks`` (top share of each map, or with ``inverse`` its bottom share, with its
tie report) and ``_masked_softmax`` (the kept pixels, the rest filled, through the
model) are the two traced steps every scoring function below is built from.
``fill_prior_report`` gives the model's probabilities on an all-fill image and
``per_class_report`` splits AD / AI by the class predicted on the unmasked image.

``evaluate_heatmaps`` keeps each map's top 20 % pixels and reports AD / AI (Eqs. 7–8)
in percent with ``ri_jax.metrics``, with per-image scores and how ties at the cut
were broken (``TIE_RULE``); given the cached logits of the unmasked images, only the
masked ones go through the model. ``evaluate_masks`` scores given masks (ACE's
segments); ``masked_class_scores`` scores each image's own class on many (input,
similar image) pairs at once (Figure 4, case studies).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.metrics import (DEFAULT_FILL, KEEP_FRACTION, Fill, blur_sigma, check_fill,
                            drop_and_increase, fill_prior, kept_pixels, make_fill, mask_image,
                            masked_scores_from_masks, num_kept, per_class)
from ri_jax.model import Model
from ri_jax.protocols.batching import check_batch, check_positive, map_chunks

Array = jax.Array

TIE_RULE = ("exactly round(20% of pixels) are kept; among pixels tied at the cut, those first in "
            "a fixed pseudo-random pixel order are kept, spread evenly over the image "
            "(ri_jax.metrics.tie_priority)")


@dataclasses.dataclass(frozen=True)
class MaskingOptions:
    """How a heat map becomes a masked image.

    Attributes:
      keep_fraction: share of pixels kept, highest map values first (0.2 in the paper).
      fill: what the other pixels become, one of ``metrics.FILLS`` ("black", the paper's,
        "mean" or "blur").
      blur_sigma: σ in pixels of the "blur" fill; None = ``metrics.BLUR_SIGMA_FRACTION`` · S.
    """

    keep_fraction: float = KEEP_FRACTION
    fill: str = DEFAULT_FILL
    blur_sigma: float | None = None

    def __post_init__(self):
        check_fill(self.fill)
        if self.blur_sigma is not None:
            blur_sigma(1, self.blur_sigma)  # validates it

    def painter(self, model: Model, image_size: int) -> Fill:
        """The ``metrics.Fill`` of these options for the model's S × S images."""
        return make_fill(self.fill, model.normalize, image_size, sigma=self.blur_sigma)

    def describe(self, image_size: int) -> dict:
        """``{"fill", "blur_sigma"}`` as written into a results file's config (σ in pixels, or None)."""
        return {"fill": self.fill,
                "blur_sigma": blur_sigma(image_size, self.blur_sigma) if self.fill == "blur" else None}


class Evaluation(NamedTuple):
    """AD / AI of heat maps (or pixel masks) on their target images.

    Attributes:
      ad: Average Drop (Eq. 7), percent.
      ai: Average Increase (Eq. 8), percent.
      drop: float32[B] per-image max(0, Y − Y′)/Y (0 where Y = 0); ``ad = 100·mean(drop)``.
      increase: bool[B] per-image Y < Y′; ``ai = 100·mean(increase)``.
      y: float32[B] Y_c on the unmasked image (c = the model's prediction there).
      y_masked: float32[B] Y_c on the masked image.
      classes: int32[B] c.
      tied_images: images whose 20 % cut fell among tied values (−1 for masks).
      tied_pixels: tied pixels dropped by the tie rule, summed over images (−1 for masks).
      flat_maps: constant heat maps (every pixel tied; e.g. empty polytopes) (−1 for masks).
    """

    ad: float
    ai: float
    drop: np.ndarray
    increase: np.ndarray
    y: np.ndarray
    y_masked: np.ndarray
    classes: np.ndarray
    tied_images: int
    tied_pixels: int
    flat_maps: int

    def tie_report(self) -> dict:
        """The tie counts as written into the results files."""
        return {"tied_images": self.tied_images, "tied_pixels": self.tied_pixels,
                "flat_maps": self.flat_maps}

    def per_class(self, class_names: tuple[str, ...]) -> dict:
        """``per_class_report`` of this evaluation."""
        return per_class_report(self, class_names)


def _keep_masks(heatmaps: Array, fraction: float, inverse: bool = False
                ) -> tuple[Array, Array, Array]:
    """bool[B, S, S] top-``fraction`` masks (``inverse``: bottom), int[B] tied pixels dropped,
    bool[B] constant maps."""
    masks, ties = jax.vmap(lambda m: kept_pixels(m, fraction, inverse=inverse))(heatmaps)
    flat = jnp.min(heatmaps, axis=(1, 2)) == jnp.max(heatmaps, axis=(1, 2))
    return masks, ties, flat


def _masked_softmax(model: Model, raw: Array, masks: Array, fill: Fill) -> Array:
    """float32[B, C] softmax of the images keeping only ``masks`` (the rest ``fill``)."""
    masked = jax.vmap(mask_image, in_axes=(0, 0, None))(raw, masks, fill)
    return jax.nn.softmax(model.forward(model.normalize(masked)), axis=-1)


_keep_masks_jit = jax.jit(_keep_masks, static_argnames=("fraction", "inverse"))
_masked_softmax_jit = jax.jit(_masked_softmax, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: Model, images: Array) -> Array:
    return model.forward(images)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _masked_class_chunk(model, raw, heatmaps, classes, fraction, fill):
    masks, ties, flat = _keep_masks(heatmaps, fraction)
    probs = _masked_softmax(model, raw, masks, fill)
    return jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0], ties, flat


def masked_probabilities(model: Model, raw: np.ndarray, masks: np.ndarray, *,
                         masking: MaskingOptions = MaskingOptions(),
                         batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities of images keeping only the pixels in ``masks`` (the rest filled).

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      masks: bool[B, S, S] pixels kept (e.g. ``ace_adapter.ace_masks``).
      masking: ``MaskingOptions`` (only its fill is used).
      batch_size: images per forward chunk.

    Returns:
      float32[B, C].
    """
    raw = check_batch(raw, "raw", 4)
    masks = check_batch(masks, "masks", 3, len(raw))
    fill = masking.painter(model, raw.shape[1])
    return map_chunks(lambda r, m: _masked_softmax_jit(model, r, m, fill),
                      (raw, masks.astype(bool)), check_positive(batch_size, "batch_size"))


def evaluate_masks(model: Model, raw: np.ndarray, masks: np.ndarray, *,
                   logits: np.ndarray | None = None, masking: MaskingOptions = MaskingOptions(),
                   batch_size: int = 64) -> Evaluation:
    """AD / AI when only the pixels in ``masks`` are kept (e.g. ACE's segments).

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw target images in [0, 1].
      masks: bool[B, S, S] pixels kept; the rest gets ``masking.fill``.
      logits: optional float32[B, C] the model's logits on the unmasked targets (e.g. the
        cached ``Features.logits``): then only the masked images go through the model.
        Without them ``metrics.masked_scores_from_masks`` forwards both.
      masking: ``MaskingOptions`` (only its fill is used).
      batch_size: images per forward chunk.

    Returns:
      ``Evaluation`` with the tie fields set to −1.
    """
    raw = check_batch(raw, "raw", 4)
    masks = check_batch(masks, "masks", 3, len(raw))
    batch_size = check_positive(batch_size, "batch_size")
    if logits is None:
        scores = masked_scores_from_masks(functools.partial(_forward, model),
                                          model.normalize, jnp.asarray(raw),
                                          jnp.asarray(masks, bool), fill=masking.fill,
                                          blur_sigma=masking.blur_sigma, batch_size=batch_size)
        y, y_masked = np.asarray(scores.y_orig), np.asarray(scores.y_masked)
        classes = np.asarray(scores.classes)
    else:
        logits = check_batch(logits, "logits", 2, len(raw))
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
        classes = probs.argmax(axis=1).astype(np.int32)
        masked = masked_probabilities(model, raw, masks, masking=masking,
                                      batch_size=batch_size)
        rows = np.arange(len(raw))
        y, y_masked = probs[rows, classes], masked[rows, classes]
    # Eq. 7 per image; an image with Y = 0 contributes 0, as in metrics.average_drop.
    drop, increase = drop_and_increase(y, y_masked)
    return Evaluation(ad=float(100.0 * drop.mean()), ai=float(100.0 * increase.mean()),
                      drop=drop.astype(np.float32), increase=increase, y=y, y_masked=y_masked,
                      classes=classes, tied_images=-1, tied_pixels=-1, flat_maps=-1)


def _check_heatmaps(raw: np.ndarray, heatmaps: np.ndarray, masking: MaskingOptions
                    ) -> tuple[np.ndarray, np.ndarray]:
    raw = check_batch(raw, "raw", 4)
    heatmaps = check_batch(heatmaps, "heatmaps", 3, len(raw))
    if heatmaps.shape[1:] != raw.shape[1:3]:
        raise ValueError(f"heatmaps: maps of shape {heatmaps.shape[1:]} do not match images "
                         f"{raw.shape[1:3]}")
    num_kept(heatmaps[0].size, masking.keep_fraction)  # validates the fraction
    return raw, heatmaps


def evaluate_heatmaps(model: Model, raw: np.ndarray, heatmaps: np.ndarray, *,
                      logits: np.ndarray | None = None,
                      masking: MaskingOptions = MaskingOptions(), inverse: bool = False,
                      batch_size: int = 64) -> Evaluation:
    """AD / AI of heat maps: keep each map's top ``masking.keep_fraction`` of pixels (§6.2).

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw target images in [0, 1].
      heatmaps: float32[B, S, S] heat maps drawn on those images.
      logits: optional cached logits on the unmasked targets (see ``evaluate_masks``).
      masking: ``MaskingOptions``.
      inverse: keep each map's *least* important share instead (``metrics.bottom_fraction_mask``:
        the same pixel order read from the other end), the check a method should win clearly.
      batch_size: maps per jitted mask call and images per forward chunk.

    Returns:
      ``Evaluation`` including the tie report (``TIE_RULE``).
    """
    raw, heatmaps = _check_heatmaps(raw, heatmaps, masking)
    keep = functools.partial(_keep_masks_jit, fraction=float(masking.keep_fraction),
                             inverse=bool(inverse))
    masks, ties, flat = map_chunks(keep, (heatmaps.astype(np.float32),), batch_size)
    ev = evaluate_masks(model, raw, masks, logits=logits, masking=masking,
                        batch_size=batch_size)
    return ev._replace(tied_images=int(np.sum(ties > 0)), tied_pixels=int(np.sum(ties)),
                       flat_maps=int(np.sum(flat)))


def masked_class_scores(model: Model, raw: np.ndarray, heatmaps: np.ndarray,
                        classes: np.ndarray, *, masking: MaskingOptions = MaskingOptions(),
                        batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y_c of images masked to the top share of their heat maps (one forward per image).

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      heatmaps: float32[B, S, S] their heat maps.
      classes: int[B] the class c scored on each image.
      masking: ``MaskingOptions`` (``metrics.top_fraction_mask``; the rest gets its fill).
      batch_size: images per jitted call.

    Returns:
      ``(y_masked float[B], tied_pixels int[B], flat bool[B])``: softmax probability of c
      on the masked image, pixels dropped among ties at the cut (``metrics.cut_ties``) and
      whether the map is constant.
    """
    if np.shape(heatmaps) != np.shape(raw)[:3] or np.shape(classes) != np.shape(raw)[:1]:
        raise ValueError(f"heatmaps, classes: shapes {np.shape(heatmaps)}, {np.shape(classes)} do "
                         f"not match raw {np.shape(raw)}")
    fill = masking.painter(model, np.shape(raw)[1])
    fn = lambda r, h, c: _masked_class_chunk(model, r, h, c, float(masking.keep_fraction), fill)
    return map_chunks(fn, (raw, heatmaps, np.asarray(classes, np.int32)), batch_size)


def per_class_report(ev: Evaluation, class_names: tuple[str, ...]) -> dict:
    """AD / AI (percent) of one evaluation split by the class predicted on the unmasked image.

    Args:
      ev: an ``Evaluation``.
      class_names: the C class names, in label order.

    Returns:
      ``{class name: {"count", "AD", "AI"}}``; AD and AI are None for a class no image is
      predicted as.
    """
    split = per_class(ev.y, ev.y_masked, np.asarray(ev.classes, np.int32), len(class_names))
    return {name: {"count": int(n), "AD": float(100 * ad) if n else None,
                   "AI": float(100 * ai) if n else None}
            for name, n, ad, ai in zip(class_names, np.asarray(split.count), np.asarray(split.ad),
                                       np.asarray(split.ai))}


def fill_prior_report(model: Model, raw: np.ndarray, masking: MaskingOptions,
                      class_names: tuple[str, ...], *, batch_size: int = 64) -> dict:
    """The fill's own class prior: the model's probabilities on an image that is all fill.

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] the images scored (the "blur" fill blurs each of them
        completely; a constant fill uses only their size).
      masking: ``MaskingOptions`` (its fill).
      class_names: the C class names.
      batch_size: images per forward pass.

    Returns:
      ``{"fill", "blur_sigma", "images", "probabilities": {class: p}, "predicted": {class:
      share}}``: for "blur" the mean probability over the fully blurred images and the share
      predicted as each class; for a constant fill one image (``images`` = 1).
    """
    raw = check_batch(raw, "raw", 4)
    prior = fill_prior(functools.partial(_forward, model), model.normalize, jnp.asarray(raw),
                       fill=masking.fill, blur_sigma=masking.blur_sigma,
                       batch_size=check_positive(batch_size, "batch_size"))
    return {**masking.describe(raw.shape[1]),
            "images": len(raw) if masking.fill == "blur" else 1,
            "probabilities": dict(zip(class_names, map(float, np.asarray(prior.probabilities)))),
            "predicted": dict(zip(class_names, map(float, np.asarray(prior.predicted))))}
