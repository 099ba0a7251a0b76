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
    x = np.random.default_rng(2).standard_normal((3, size, size, 3), dtype=np.float32)
    np.testing.assert_array_equal(fns.head(params, fns.features(params, x)), fns.apply(params, x))


def test_vgg19_paper_feature_shape():
    assert ModelConfig(arch="vgg19", image_size=224).feature_shape == (14, 14, 512)
    assert ModelConfig(arch="vgg19", width=0.125, image_size=96).feature_shape == (6, 6, 64)


def test_head_is_piecewise_linear_no_batchnorm(tiny_model):
    fns, params = tiny_model
    names = set(params["params"])
    assert not any("bn" in n.lower() or "norm" in n.lower() for n in names)
    # A head of ReLUs, max-pools and affine maps has an identically zero Hessian: every
    # Hessian-vector product is exactly 0 (a curved op such as GELU or softplus is not).
    # Finite differences would be flaky: a step may cross a ReLU kink.
    psi = np.random.default_rng(3).random((1, 2, 2, 32), dtype=np.float32)
    d = np.random.default_rng(4).standard_normal(psi.shape, dtype=np.float32)
    for c in range(2):
        grad = jax.grad(lambda t: fns.head(params, t)[0, c])
        hvp = jax.jvp(grad, (psi,), (d,))[1]
        assert np.any(np.asarray(grad(psi)) != 0)  # the head is not constant here
        np.testing.assert_array_equal(hvp, 0.0)


def test_dropout_only_while_training(tiny_model):
    fns, params = tiny_model
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3), dtype=np.float32)
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
