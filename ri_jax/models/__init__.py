"""Models whose head is piecewise linear, split into ψ (features) and G (head)."""

from ri_jax.models.vgg import VGG, VGG_LAYERS, ModelConfig, ModelFns, make_vgg

__all__ = ["VGG", "VGG_LAYERS", "ModelConfig", "ModelFns", "make_vgg"]
