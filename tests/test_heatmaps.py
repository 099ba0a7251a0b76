"""Heat maps from channel weights (ri_jax.heatmaps) against NumPy loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.heatmaps import cam, normalize_map, polytope_heatmap, ri_channel_weights, upsample


def numpy_upsample(m, size):
    """Bilinear resize with half-pixel centres and edge weights renormalised (clamped edges)."""
    h, w = m.shape

    def weights(n_in):
        u = (np.arange(size) + 0.5) * n_in / size - 0.5
        k = np.maximum(0.0, 1.0 - np.abs(u[:, None] - np.arange(n_in)[None, :]))
        return k / k.sum(axis=1, keepdims=True)

    return weights(h) @ m @ weights(w).T


def numpy_normalize(m):
    span = m.max() - m.min()
    return np.zeros_like(m) if span == 0 else (m - m.min()) / span


def numpy_cam(alpha, psi, size):
    raw = np.maximum(0.0, sum(alpha[k] * psi[:, :, k] for k in range(len(alpha))))
    return numpy_normalize(numpy_upsample(raw, size))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([4, 12]))
def test_cam_matches_numpy(seed, size):
    rng = np.random.default_rng(seed)
    psi = np.maximum(rng.normal(size=(2, 2, 3)), 0).astype(np.float32)
    alpha = rng.normal(size=3).astype(np.float32)
    got = np.asarray(cam(jnp.asarray(alpha), jnp.asarray(psi), size))
    np.testing.assert_allclose(got, numpy_cam(alpha.astype(np.float64), psi, size), atol=1e-5)
    assert got.min() >= 0 and got.max() <= 1


def test_upsample_is_bilinear():
    m = np.arange(6, dtype=np.float32).reshape(2, 3) ** 2
    np.testing.assert_allclose(upsample(jnp.asarray(m), 6), numpy_upsample(m, 6), atol=1e-5)


def test_constant_and_zero_maps_give_zeros_not_nan():
    np.testing.assert_array_equal(normalize_map(jnp.full((3, 3), 2.5)), 0.0)
    psi = jnp.ones((2, 2, 3))
    # Negative evidence everywhere: ReLU zeroes the raw map.
    np.testing.assert_array_equal(cam(-jnp.ones(3), psi, 8), 0.0)
    np.testing.assert_array_equal(cam(jnp.ones(3), jnp.zeros((2, 2, 3)), 8), 0.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_channel_weights_are_oriented_towards_x(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    psi = rng.normal(size=(2, 2, 3)).astype(np.float32)
    got = np.asarray(ri_channel_weights(jnp.asarray(w), jnp.asarray(b), jnp.asarray(psi)))
    for h in range(4):
        value = np.sum(w[h] * psi) + b[h]
        sign = 1.0 if value > 0 else -1.0
        np.testing.assert_allclose(got[h], sign * w[h].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
        # The oriented hyperplane puts x on its positive side.
        assert sign * value >= 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_polytope_heatmap_is_the_mean_of_selected_maps(seed):
    rng = np.random.default_rng(seed)
    alphas = rng.normal(size=(5, 3)).astype(np.float32)
    selected = rng.random(5) < 0.5
    psi = np.maximum(rng.normal(size=(2, 2, 3)), 0).astype(np.float32)
    got = np.asarray(polytope_heatmap(jnp.asarray(alphas), jnp.asarray(selected),
                                      jnp.asarray(psi), 8))
    maps = [numpy_cam(alphas[h].astype(np.float64), psi, 8) for h in range(5) if selected[h]]
    expected = np.mean(maps, axis=0) if maps else np.zeros((8, 8))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all(np.isfinite(got))


def dense_polytope_heatmap(alphas, selected, psi, image_size):
    """The pre-#14 formulation: draw all Q maps at full size, then average the selected ones."""
    maps = jax.vmap(cam, in_axes=(0, None, None))(alphas, psi, image_size)
    weight = selected.astype(maps.dtype)
    return jnp.einsum("q,qij->ij", weight, maps) / jnp.maximum(jnp.sum(weight), 1.0)


# One compilation per shape: hypothesis draws the values, the shapes come from a short list
# (upsampling by integer and odd factors, downsampling, one pixel, the embedded 6 → 96).
_SHAPES = [(1, 1, 8), (2, 3, 13), (3, 2, 5), (4, 4, 3), (5, 7, 32), (6, 6, 96), (6, 6, 1)]
_fast = jax.jit(polytope_heatmap, static_argnums=3)
_dense = jax.jit(dense_polytope_heatmap, static_argnums=3)


@functools.lru_cache
def bilinear_weights(n: int, size: int) -> np.ndarray:
    """[size, n] float64: the bilinear upsampling weights along one axis."""
    resize = jax.jit(jax.image.resize, static_argnums=(1, 2))  # one compilation, not one per op
    return np.asarray(resize(np.eye(n, dtype=np.float32), (size, n), "bilinear"), np.float64)


def rounding_scale(alphas, selected, psi, size) -> float:
    """max(1, max over drawn maps of max |up(r_q)| / span(up(r_q))), in float64."""
    raw = np.maximum(np.einsum("hwc,qc->qhw", psi.astype(np.float64), alphas.astype(np.float64)), 0)
    rows, cols = (bilinear_weights(n, size) for n in psi.shape[:2])
    up = np.einsum("sh,qhw,tw->qst", rows, raw, cols)
    hi, span = up.max(axis=(1, 2)), np.ptp(up, axis=(1, 2))
    drawn = selected & (span > 0)
    return float(max(1.0, np.max(hi[drawn] / span[drawn], initial=0.0)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(_SHAPES),
       offset=st.sampled_from([0.0, 0.5, 10.0]), zero_map=st.booleans())
def test_polytope_heatmap_equals_drawing_every_map(seed, shape, offset, zero_map):
    # Maps with a positive floor (lo > 0), all-zero maps (ReLU of negative evidence).
    h, w, size = shape
    rng = np.random.default_rng(seed)
    alphas = rng.normal(size=(4, 3)).astype(np.float32)
    psi = (np.maximum(rng.normal(size=(h, w, 3)), 0) + offset).astype(np.float32)
    if zero_map:
        alphas[0] = -np.abs(alphas[0]) - 0.1
    selected = jnp.asarray(rng.random(4) < 0.6)
    args = jnp.asarray(alphas), selected, jnp.asarray(psi)
    got = np.asarray(_fast(*args, size))
    # Both forms normalise (m − lo) / span in float32, after sums that round m, lo and the
    # span to ~10 ulps of max |m| each: the error is up to ~3 · 10 ulps · max |m| / span
    # (seen: 19 ulps at max |m| / span = 1), so the tolerance is 50 ulps of that ratio.
    atol = 50 * np.finfo(np.float32).eps * rounding_scale(alphas, np.asarray(selected), psi, size)
    np.testing.assert_allclose(got, _dense(*args, size), atol=atol)
    assert got.min() >= 0 and got.max() <= 1


def test_weights_from_x_are_reused_unchanged_on_other_images():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 2, 2, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=3), jnp.float32)
    psi_x, psi_y = (jnp.asarray(np.maximum(rng.normal(size=(2, 2, 4)), 0), jnp.float32)
                    for _ in range(2))
    alphas = ri_channel_weights(w, b, psi_x)
    selected = jnp.asarray([True, False, True])
    on_y = polytope_heatmap(alphas, selected, psi_y, 8)
    expected = (cam(alphas[0], psi_y, 8) + cam(alphas[2], psi_y, 8)) / 2
    np.testing.assert_allclose(on_y, expected, atol=1e-6)
    jitted = jax.jit(polytope_heatmap, static_argnums=3)
    np.testing.assert_allclose(jitted(alphas, selected, psi_y, 8), on_y, atol=1e-6)


def test_point_on_the_boundary_is_oriented_like_its_side_bit():
    # ⟨W, 0⟩ + 0 = 0: boundaries.side_bits puts x on the negative side, so α must be −mean(W).
    w = jnp.asarray(np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3))
    alphas = ri_channel_weights(w, jnp.zeros(1), jnp.zeros((2, 2, 3)))
    np.testing.assert_allclose(alphas[0], -w[0].mean(axis=(0, 1)))


@pytest.mark.parametrize("shape,size", [((6, 6), 96), ((2, 3), 32), ((14, 14), 224), ((1, 1), 8)])
def test_upsample_equals_jax_image_resize(shape, size):
    m = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
    expected = jax.image.resize(m, (size, size), method="bilinear")
    np.testing.assert_allclose(upsample(m, size), expected, rtol=1e-5, atol=1e-6)
