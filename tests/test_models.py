import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ri_jax.models.vgg import (VGG_LAYERS, Conv3x3, ModelConfig, lax_conv3x3, make_vgg,
                               tap_sum_conv3x3)


def random_params(fns, seed: int):
    """Parameters of ``fns``'s structure drawn by NumPy (He-scaled), without compiling init:
    a check that holds for any parameters need not pay ~3 s of compilation per config."""
    shapes = jax.eval_shape(fns.init, jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * np.sqrt(
        2 / max(1, int(np.prod(s.shape[:-1]))))).astype(s.dtype), shapes)


@pytest.mark.parametrize("arch", sorted(VGG_LAYERS))
def test_shapes_for_every_config(arch):
    # Shapes only, so abstractly: every function is traced, nothing is compiled.
    cfg = ModelConfig(arch=arch, width=1 / 16, image_size=64, num_classes=3)
    fns = make_vgg(cfg)
    params = jax.eval_shape(fns.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    psi = jax.eval_shape(fns.features, params, x)
    assert psi.shape == (2,) + cfg.feature_shape == (2, 4, 4, 32)
    assert jax.eval_shape(fns.head, params, psi).shape == (2, 3)
    assert jax.eval_shape(fns.apply, params, x).shape == (2, 3)
    n_convs = sum(1 for c in VGG_LAYERS[arch] if c != "M")
    assert len([k for k in params["params"] if k.startswith("conv_")]) == n_convs
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("arch,size", [("vgg19", 96), ("vgg11", 32), ("vgg16", 64)])
def test_head_of_features_is_the_forward_pass(arch, size):
    cfg = ModelConfig(arch=arch, width=1 / 8, image_size=size, num_classes=2)
    fns = make_vgg(cfg)
    params = random_params(fns, 1)
    x = np.random.default_rng(2).standard_normal((3, size, size, 3), dtype=np.float32)
    logits = fns.apply(params, x)
    assert np.ptp(np.asarray(logits)) > 0  # not a dead network, where any two agree
    np.testing.assert_array_equal(fns.head(params, fns.features(params, x)), logits)


@pytest.mark.parametrize("c_in,c_out", [(1, 2), (3, 8), (4, 5), (8, 3)])
def test_conv3x3_is_flax_conv(c_in, c_out):
    # Same parameters (names, shapes, initial values) as the nn.Conv it replaced, so
    # checkpoints load unchanged, and the same outputs and gradients to float rounding,
    # whichever formulation runs (c_in ≤ 3 runs the tap sum on this CPU).
    x = jnp.asarray(np.random.default_rng(c_in).standard_normal((2, 7, 9, c_in), np.float32))
    ours, flax_conv = Conv3x3(c_out), nn.Conv(c_out, (3, 3), padding="SAME",
                                               kernel_init=nn.initializers.kaiming_normal())
    params = ours.init(jax.random.key(c_out), x)
    expected = flax_conv.init(jax.random.key(c_out), x)
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1))(params, x),
                         jax.grad(lambda p, x: loss(flax_conv, p, x), argnums=(0, 1))(params, x)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     got, want)
    np.testing.assert_allclose(tap_sum_conv3x3(x, params["params"]["kernel"]),
                               lax_conv3x3(x, params["params"]["kernel"]), rtol=1e-5, atol=1e-5)


def test_only_the_rgb_layer_leaves_the_convolution_op_and_only_on_a_cpu():
    cfg = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
    fns = make_vgg(cfg)
    params = jax.eval_shape(fns.init, jax.random.key(0))
    traced = fns.features.trace(params, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))

    def conv_kernels(text):  # kernel shapes of the convolution ops in a StableHLO text
        return {re.search(r"tensor<(3x3x\d+x\d+)xf32>", line).group(1)
                for line in text.splitlines() if "stablehlo.convolution" in line}

    cpu, gpu = conv_kernels(traced.lower().as_text()), conv_kernels(
        traced.lower(lowering_platforms=("cuda",)).as_text())
    assert "3x3x3x4" in gpu and gpu - cpu == {"3x3x3x4"} and "3x3x4x8" in cpu


def test_same_config_same_functions():
    # Equal configs share the jitted functions, so their compiled programs are reused.
    a = make_vgg(ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2))
    b = make_vgg(ModelConfig(arch="vgg11", width=0.0625, image_size=32, num_classes=2))
    assert a is b and a.features is b.features
    assert make_vgg(ModelConfig(arch="vgg11", width=1 / 16, image_size=64, num_classes=2)) is not a


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


def test_head_max_pool_is_flax_max_pool_in_value_and_gradient():
    # Post-ReLU maps tie often (zeros, and rounded values here): the gradient must still go
    # to each window's first largest element only, as XLA's select-and-scatter sends it.
    from ri_jax.models.vgg import max_pool_2x2
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(4, 7, 6, 5)), 0) * 2).astype(np.float32)
    w = rng.normal(size=(3 * 3 * 5, 3)).astype(np.float32)

    def loss(pool):
        return lambda t: jnp.sum(jnp.tanh(pool(t).reshape(t.shape[0], -1) @ w))

    flax_pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), flax_pool(x))
    np.testing.assert_array_equal(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(flax_pool))(x))
    # Forward over reverse (the curvature check of Eq. 2) runs, and is zero for a ReLU head.
    relu_loss = lambda t: jnp.sum(jax.nn.relu(max_pool_2x2(t).reshape(t.shape[0], -1) @ w))
    _, hvp = jax.jvp(jax.grad(relu_loss), (x,), (np.ones_like(x),))
    np.testing.assert_array_equal(hvp, 0.0)
