"""Grad-CAM (Selvaraju et al., 2017) split into "weights at x" and "map anywhere" (§6.1).

The channel weights are computed once at an input image x; the heat map of any
image x' is then ``ri_jax.heatmaps.cam(alpha, ψ(x'), image_size)``, exactly the
paper's extension of the CAM baselines to new images.

Gradients are of the class score y_c, the pre-softmax logit of class c, with
respect to ψ: ``∂ head_fn(ψ[None])[0, c] / ∂ψ``.

Against pytorch-grad-cam 1.5.7's ``GradCAM`` (default ``ClassifierOutputTarget``, the
logit; target layer ψ) on a numerically identical torch copy of the network
(``benchmarks/peer_cams.py``): the same map to float32 precision. It min–max
normalises before *and* after its ``cv2.resize`` (half-pixel bilinear, like
``heatmaps.upsample``), which gives the same map as resizing then normalising, since
bilinear resizing commutes with an affine rescale; its only other difference is the
1e-7 it adds to the normalisation's denominator.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
HeadFn = Callable[[Array], Array]


def check_psi(psi: Array, name: str = "psi") -> None:
    """Raises ValueError unless ``psi`` is one [h, w, c] feature map."""
    if jnp.ndim(psi) != 3:
        raise ValueError(f"{name}: expected one feature map [h, w, c], got shape {jnp.shape(psi)}")


def check_class_idx(class_idx, num_classes: int, shape: tuple[int, ...] = ()) -> None:
    """Raises ValueError unless ``class_idx`` has ``shape`` and concrete entries lie in [0, num_classes).

    Traced indices (under ``jit``/``vmap``) cannot be range-checked; JAX indexing clamps
    an out-of-range traced index, so callers must pass valid classes.
    """
    if jnp.shape(class_idx) != shape:
        raise ValueError(f"class_idx: expected shape {shape}, got {jnp.shape(class_idx)}")
    if isinstance(class_idx, jax.core.Tracer):
        return
    value = np.asarray(class_idx)
    if not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"class_idx: expected integers, got dtype {value.dtype}")
    if value.size and not (value.min() >= 0 and value.max() < num_classes):
        raise ValueError(f"class_idx: values must lie in [0, {num_classes}), "
                         f"got range [{value.min()}, {value.max()}]")


def num_classes_of(head_fn: HeadFn, psi) -> int:
    """Number of logits ``head_fn`` returns for one [h, w, c] feature map (an array or ShapeDtypeStruct; no compute)."""
    return jax.eval_shape(head_fn, jax.ShapeDtypeStruct((1, *psi.shape), psi.dtype)).shape[-1]


def check_cam_batch(head_fn: HeadFn, psis: Array, class_idx) -> None:
    """Validates a batch [B, h, w, c] of feature maps and its int[B] classes."""
    if jnp.ndim(psis) != 4:
        raise ValueError(f"psis: expected a batch of feature maps [B, h, w, c], got shape {jnp.shape(psis)}")
    check_class_idx(class_idx, num_classes_of(head_fn, jax.ShapeDtypeStruct(psis.shape[1:], psis.dtype)),
                    (psis.shape[0],))


def class_score_grad(head_fn: HeadFn, psi: Array, class_idx) -> Array:
    """Gradient of the class-c logit with respect to the feature map.

    Args:
      head_fn: ``head_fn(ψ [B, h, w, c]) -> logits [B, C]`` (G with its parameters bound).
      psi: [h, w, c] feature map of the input image.
      class_idx: scalar int, the class c.

    Returns:
      [h, w, c] ∂y_c/∂ψ.
    """
    check_psi(psi)
    check_class_idx(class_idx, num_classes_of(head_fn, psi))
    return jax.grad(lambda p: head_fn(p[None])[0, class_idx])(psi)


def gradcam_weights(head_fn: HeadFn, psi: Array, class_idx) -> Array:
    """Grad-CAM channel weights at one input image.

    Args:
      head_fn: ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``.
      psi: [h, w, c] feature map of the input image x.
      class_idx: scalar int, the class c to explain.

    Returns:
      [c] α_k = mean over (i, j) of ∂y_c/∂ψ^k_ij.
    """
    return jnp.mean(class_score_grad(head_fn, psi, class_idx), axis=(0, 1))


def gradcam_weights_batch(head_fn: HeadFn, psis: Array, class_idx: Array) -> Array:
    """``gradcam_weights`` over a batch.

    Args:
      head_fn: ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``.
      psis: [B, h, w, c] feature maps.
      class_idx: int[B] class of each image.

    Returns:
      [B, c] channel weights.
    """
    check_cam_batch(head_fn, psis, class_idx)
    return jax.vmap(lambda p, k: gradcam_weights(head_fn, p, k))(psis, jnp.asarray(class_idx))
