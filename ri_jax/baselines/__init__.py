"""Baselines of §6.1, each split into "weights at an input x" and "map on any image".

Every CAM method returns channel weights α [c] computed at x; the heat map of any
image x' (x itself or a new image, the paper's reuse extension) is
``heatmap(α, ψ(x'), image_size)``, the same ``ri_jax.heatmaps.cam`` RI uses, so
all methods share upsampling and normalisation. To draw one α on many images:
``jax.vmap(heatmap, in_axes=(None, 0, None))(alpha, psis, image_size)``.

ACE (segments and concepts rather than channel weights) lives in
``ri_jax.baselines.ace``; its segmentation needs the ``ace`` extra (scikit-image).
"""

from ri_jax.baselines.ace import (ACECache, ACEConfig, ACEResult, ConceptExplanation,
                                  ace_keep_mask, discover_concepts, explain_batch, explain_image)
from ri_jax.baselines.gradcam import class_score_grad, gradcam_weights, gradcam_weights_batch
from ri_jax.baselines.gradcam_pp import gradcam_pp_weights, gradcam_pp_weights_batch
from ri_jax.baselines.scorecam import (scorecam_chunk_size, scorecam_mask, scorecam_scores,
                                       scorecam_weights, scorecam_weights_batch)
from ri_jax.heatmaps import cam as heatmap

__all__ = [
    "ACECache",
    "ACEConfig",
    "ACEResult",
    "ConceptExplanation",
    "ace_keep_mask",
    "discover_concepts",
    "explain_batch",
    "explain_image",
    "class_score_grad",
    "gradcam_weights",
    "gradcam_weights_batch",
    "gradcam_pp_weights",
    "gradcam_pp_weights_batch",
    "heatmap",
    "scorecam_chunk_size",
    "scorecam_mask",
    "scorecam_scores",
    "scorecam_weights",
    "scorecam_weights_batch",
]
