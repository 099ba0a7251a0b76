"""Grad-CAM++ (Chattopadhay et al., 2018) weights at x; maps anywhere via ``heatmaps.cam``.

The paper's closed form uses S_c = exp(y_c). For a head that is piecewise linear
in ψ (ReLU and max-pool only, as here) the higher derivatives of y_c vanish, so
with g = ∂y_c/∂ψ:

    ∂S/∂A = S·g,   ∂²S/∂A² = S·g²,   ∂³S/∂A³ = S·g³,

    a^k_ij = g²_ij / (2 g²_ij + Σ_ab A^k_ab · g³_ij)      (the S factors cancel)
    α_k   = Σ_ij a^k_ij · ReLU(g_ij)

This is the common form (pytorch-grad-cam's too): the remaining factor S in
ReLU(S·g) is a positive constant per image, which the min–max normalisation of
``cam`` removes, so it is dropped. Where the denominator is 0 a^k_ij is taken as 0;
for ψ ≥ 0 (after a ReLU) that needs g ≤ 0, where ReLU(g) = 0 anyway.

Against pytorch-grad-cam 1.5.7's ``GradCAMPlusPlus`` (``benchmarks/peer_cams.py``, same
network and classes) the one difference is its ε = 1e-6 added to the denominator,
a = g² / (2g² + Σ A g³ + 1e-6), where we divide exactly: with small gradients that
shifts the weights by a few parts in 10⁴ (maps by ~1e-4); adding the same ε to ours
agrees to float32 precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ri_jax.baselines.gradcam import HeadFn, check_cam_batch, class_score_grad

Array = jax.Array


def gradcam_pp_weights(head_fn: HeadFn, psi: Array, class_idx) -> Array:
    """Grad-CAM++ channel weights at one input image.

    Args:
      head_fn: ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``.
      psi: [h, w, c] feature map A of the input image x.
      class_idx: scalar int, the class c to explain.

    Returns:
      [c] α_k = Σ_ij a^k_ij ReLU(g^k_ij), a^k_ij = g² / (2g² + Σ_ab A^k_ab g³) (0 where the
      denominator is 0); see the module docstring.
    """
    g = class_score_grad(head_fn, psi, class_idx)
    g2 = g * g
    denom = 2.0 * g2 + jnp.sum(psi, axis=(0, 1)) * g2 * g
    keep = (denom != 0) & (g > 0)
    # a·ReLU(g) in one where: a can be huge where ReLU(g) = 0, and huge·0 must not become NaN.
    terms = jnp.where(keep, g2 * g / jnp.where(keep, denom, 1.0), 0.0)
    return jnp.sum(terms, axis=(0, 1))


def gradcam_pp_weights_batch(head_fn: HeadFn, psis: Array, class_idx: Array) -> Array:
    """``gradcam_pp_weights`` over a batch.

    Args:
      head_fn: ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``.
      psis: [B, h, w, c] feature maps.
      class_idx: int[B] class of each image.

    Returns:
      [B, c] channel weights.
    """
    check_cam_batch(head_fn, psis, class_idx)
    return jax.vmap(lambda p, k: gradcam_pp_weights(head_fn, p, k))(psis, jnp.asarray(class_idx))
