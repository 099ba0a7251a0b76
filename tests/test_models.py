import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ri_jax.models.vgg import VGG_LAYERS, ModelConfig, make_vgg


@pytest.mark.parametrize("arch", sorted(VGG_LAYERS))
def test_shapes_for_every_config(arch):
    cfg = ModelConfig(arch=arch, width=1 / 16, image_size=64, num_classes=3)
    fns = make_vgg(cfg)
    params = fns.init(jax.random.key(0))
    x = jnp.zeros((2, 64, 64, 3))
    psi = fns.features(params, x)
    assert psi.shape == (2,) + cfg.feature_shape == (2, 4, 4, 32)
    assert fns.head(params, psi).shape == (2, 3)
    n_convs = sum(1 for c in VGG_LAYERS[arch] if c != "M")
    assert len([k for k in params["params"] if k.startswith("conv_")]) == n_convs


@pytest.mark.parametrize("arch,size", [("vgg19", 96), ("vgg11", 32), ("vgg16", 64)])
def test_head_of_features_is_the_forward_pass(arch, size):
    cfg = ModelConfig(arch=arch, width=1 / 8, image_size=size, num_classes=2)
    fns = make_vgg(cfg)
    params = fns.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (3, size, size, 3))
    np.testing.assert_array_equal(fns.head(params, fns.features(params, x)), fns.apply(params, x))


def test_vgg19_paper_feature_shape():
    assert ModelConfig(arch="vgg19", image_size=224).feature_shape == (14, 14, 512)
    assert ModelConfig(arch="vgg19", width=0.125, image_size=96).feature_shape == (6, 6, 64)


def test_head_is_piecewise_linear_no_batchnorm(tiny_model):
    fns, params = tiny_model
    names = set(params["params"])
    assert not any("bn" in n.lower() or "norm" in n.lower() for n in names)
    # Along a tiny step the head of a ReLU network is exactly affine (same activation pattern).
    psi = jax.random.uniform(jax.random.key(3), (1, 2, 2, 32))
    d = jax.random.normal(jax.random.key(4), psi.shape) * 1e-4
    f = lambda t: fns.head(params, t)[0]
    np.testing.assert_allclose(f(psi + d) - f(psi), f(psi + 2 * d) - f(psi + d), atol=1e-6)


def test_dropout_only_while_training(tiny_model):
    fns, params = tiny_model
    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
    np.testing.assert_array_equal(fns.apply(params, x), fns.apply(params, x))
    a = fns.apply(params, x, train=True, dropout_key=jax.random.key(0))
    b = fns.apply(params, x, train=True, dropout_key=jax.random.key(1))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("kwargs,arg", [({"arch": "vgg7"}, "arch"), ({"image_size": 100}, "image_size"),
                                        ({"width": 0}, "width"), ({"num_classes": 1}, "num_classes"),
                                        ({"num_classes": 2, "class_names": ("a",)}, "class_names")])
def test_bad_config_names_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        ModelConfig(**kwargs)
