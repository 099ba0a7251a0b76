"""Shared fixtures: a tiny VGG so the suite stays fast on 2 CPU cores."""

import jax
import pytest

from ri_jax.models.vgg import ModelConfig, make_vgg

TINY = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2, class_names=("a", "b"))


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_model():
    fns = make_vgg(TINY)
    return fns, fns.init(jax.random.key(0))
