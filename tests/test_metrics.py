"""AD / AI masking and region metrics against hand-computed and brute-force references."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ri_jax import metrics

top_mask = jax.jit(metrics.top_fraction_mask, static_argnames="fraction")
ties = jax.jit(metrics.cut_ties, static_argnames="fraction")


def ref_keep(values, fraction):
    """Kept flat indices: sort by (−value, (i·2654435761) mod 2³²), NaN as −inf, take
    round-half-up(fraction·n)."""
    flat = [(-math.inf if math.isnan(v) else v) for v in np.asarray(values, np.float64).reshape(-1)]
    k = int(math.floor(fraction * len(flat) + 0.5))
    return sorted(range(len(flat)), key=lambda i: (-flat[i], (i * 2654435761) % 2**32))[:k], flat


@st.composite
def maps_and_fractions(draw):
    side = draw(st.sampled_from([1, 2, 3, 5, 8, 11]))
    # Few distinct levels make many ties; floats cover the tie-free case.
    elements = draw(st.sampled_from([st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                                     st.sampled_from([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan]),
                                     st.floats(-10, 10, width=32, allow_subnormal=False),
                                     st.floats(width=32)]))
    heatmap = draw(hnp.arrays(np.float32, (side, side), elements=elements))
    fraction = draw(st.sampled_from([0.2, 0.0, 1.0, 0.5, 0.33]))
    return heatmap, fraction


@settings(max_examples=100, deadline=None)
@given(maps_and_fractions())
def test_top_fraction_mask_matches_sort_reference(case):
    heatmap, fraction = case
    mask = np.asarray(top_mask(heatmap, fraction=fraction))
    kept, flat = ref_keep(heatmap, fraction)
    expected = np.zeros(heatmap.size, bool)
    expected[kept] = True
    np.testing.assert_array_equal(mask.reshape(-1), expected)
    assert mask.sum() == metrics.num_kept(heatmap.size, fraction)
    np.testing.assert_array_equal(mask, np.asarray(top_mask(heatmap, fraction=fraction)))
    if kept and len(kept) < len(flat):
        threshold = flat[kept[-1]]
        dropped_ties = sum(1 for i in range(len(flat)) if flat[i] == threshold and not expected[i])
    else:
        dropped_ties = 0
    assert int(ties(heatmap, fraction=fraction)) == dropped_ties


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float16", "bfloat16", "float32", "int8", "int32", "uint8",
                              "uint32"]),
       side=st.sampled_from([1, 3, 7]), fraction=st.sampled_from([0.2, 0.5, 0.0, 1.0]),
       inverse=st.booleans(), seed=st.integers(0, 2**16))
def test_kept_pixels_of_every_dtype_match_the_sort_reference(dtype, side, fraction, inverse, seed):
    rng = np.random.default_rng(seed)
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)  # the extremes and a few levels, so ties and the sign bit matter
        levels = np.array([info.min, info.max, 0, 1, info.min + 1, info.max - 1], np.int64)
        heatmap = levels[rng.integers(0, len(levels), (side, side))].astype(dtype)
        values = heatmap.astype(np.float64)
    else:
        levels = np.array([0.0, -0.0, 0.5, -2.0, np.inf, -np.inf, np.nan, 1e-3], np.float32)
        heatmap = jnp.asarray(levels[rng.integers(0, len(levels), (side, side))], dtype)
        values = np.asarray(heatmap.astype(jnp.float32), np.float64)
    k = metrics.num_kept(side * side, fraction)
    order, flat = ref_keep(values, 1.0)
    kept = order[len(order) - k:] if inverse else order[:k]
    mask, dropped = metrics.kept_pixels(jnp.asarray(heatmap), fraction, inverse=inverse)
    expected = np.zeros(side * side, bool)
    expected[kept] = True
    np.testing.assert_array_equal(np.asarray(mask).reshape(-1), expected)
    if 0 < k < len(flat):
        threshold = flat[kept[0] if inverse else kept[-1]]
        assert int(dropped) == sum(1 for i in range(len(flat))
                                   if flat[i] == threshold and not expected[i])
    else:
        assert int(dropped) == 0


def test_exactly_twenty_percent_at_paper_size():
    heatmap = np.random.default_rng(0).random((224, 224), dtype=np.float32)
    heatmap = jnp.round(heatmap * 4) / 4  # five levels: ties straddle the cut
    mask = top_mask(heatmap)
    assert int(mask.sum()) == round(0.2 * 224 * 224)
    assert int(ties(heatmap)) > 0


def test_ties_follow_the_fixed_pixel_order_by_hand():
    flat = np.zeros(25, np.float32)
    flat[[3, 7, 20]] = 1.0  # 3 clear winners, then 22 zeros tied for the 2 remaining places
    mask = np.asarray(top_mask(flat.reshape(5, 5))).reshape(-1)
    # (i·2654435761) mod 2³² for the tied i, smallest first: i = 0 (0), then i = 13.
    assert set(np.flatnonzero(mask)) == {0, 13, 3, 7, 20}
    assert int(ties(flat.reshape(5, 5))) == 20
    assert int(ties(np.arange(25, dtype=np.float32).reshape(5, 5))) == 0


def test_nan_ranks_last():
    heatmap = np.array([[np.nan, 0.1], [0.3, 0.2]], np.float32)
    mask = np.asarray(top_mask(heatmap, fraction=0.75))
    np.testing.assert_array_equal(mask, [[False, True], [True, True]])


def test_mask_image():
    raw = np.full((2, 2, 3), 0.7, np.float32)
    masked = np.asarray(metrics.mask_image(raw, np.array([[True, False], [False, True]])))
    np.testing.assert_array_equal(masked[0, 0], raw[0, 0])
    np.testing.assert_array_equal(masked[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(masked[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(masked[1, 1], raw[1, 1])


def toy_forward(x):
    """Logits [Σ red, Σ green] over the image: hand-computable scores."""
    return jnp.sum(x[..., :2], axis=(1, 2))


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def toy_image():
    """5×5 image: red 1 on row 0 and 0.8 elsewhere (Σ 21), green 1 off row 0 (Σ 20): class 0 by a margin of 1."""
    raw = np.zeros((5, 5, 3), np.float32)
    raw[..., 0] = 0.8
    raw[0, :, 0] = 1.0
    raw[1:, :, 1] = 1.0
    return raw


def test_masked_scores_by_hand():
    raw = np.stack([toy_image(), toy_image()])
    good = np.zeros((5, 5), np.float32)
    good[0] = 1.0  # keeps row 0: red 5, green 0 → margin 5
    bad = np.zeros((5, 5), np.float32)
    bad[4] = 1.0  # keeps row 4: red 4, green 5 → margin −1
    scores = metrics.masked_scores(toy_forward, lambda x: x, raw, np.stack([good, bad]), batch_size=2)
    np.testing.assert_array_equal(scores.classes, [0, 0])  # class from the unmasked image, even if e' flips
    np.testing.assert_allclose(scores.y_orig, [sigmoid(1), sigmoid(1)], rtol=1e-6)
    np.testing.assert_allclose(scores.y_masked, [sigmoid(5), sigmoid(-1)], rtol=1e-6)
    drop = (sigmoid(1) - sigmoid(-1)) / sigmoid(1)
    np.testing.assert_allclose(metrics.average_drop(scores.y_orig, scores.y_masked), drop / 2, rtol=1e-5)
    np.testing.assert_allclose(metrics.average_increase(scores.y_orig, scores.y_masked), 0.5)


def test_masked_scores_chunks_compile_once_and_agree():
    raw = np.random.default_rng(1).random((7, 5, 5, 3), dtype=np.float32)
    heatmaps = np.random.default_rng(2).random((7, 5, 5), dtype=np.float32)
    traced = jax.jit(chex.assert_max_traces(toy_forward, n=1))
    chunked = metrics.masked_scores(traced, lambda x: x - 0.5, raw, heatmaps, batch_size=3)
    whole = metrics.masked_scores(toy_forward, lambda x: x - 0.5, raw, heatmaps, batch_size=7)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    chex.assert_shape(list(chunked), (7,))
    masks = jax.vmap(metrics.top_fraction_mask)(heatmaps)
    from_masks = metrics.masked_scores_from_masks(toy_forward, lambda x: x - 0.5, raw, masks, batch_size=4)
    for a, b in zip(from_masks, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# No subnormals: XLA on CPU flushes them to zero (a softmax probability never is one in practice).
_probs = hnp.arrays(np.float32, st.sampled_from([1, 5, 16]),
                   elements=st.floats(0, 1, width=32, allow_subnormal=False))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_average_drop_and_increase_reference(data):
    y = data.draw(_probs)
    y_masked = data.draw(hnp.arrays(np.float32, y.shape,
                                   elements=st.floats(0, 1, width=32, allow_subnormal=False)))
    ad = float(metrics.average_drop(y, y_masked))
    ai = float(metrics.average_increase(y, y_masked))
    ref_ad = np.mean([max(0.0, a - b) / a if a > 0 else 0.0 for a, b in zip(y.astype(float), y_masked.astype(float))])
    assert 0.0 <= ad <= 1.0 + 1e-6
    np.testing.assert_allclose(ad, ref_ad, rtol=1e-5, atol=1e-6)
    assert ai == pytest.approx(np.mean(y < y_masked))


def test_average_drop_guards_zero_score():
    ad = metrics.average_drop(np.array([0.0, 0.5]), np.array([0.1, 0.25]))
    assert float(ad) == pytest.approx(0.25)


def test_region_metrics_by_hand():
    pred = np.array([0, 1, -1, 1, 0, -1])
    truth = np.array([0, 0, 1, 1, 1, 0])
    model = np.array([0, 1, 1, 1, 0, 0])
    r = metrics.region_metrics(pred, truth, model)
    assert float(r.acu_gt) == pytest.approx(2 / 4)  # covered: 0, 1, 3, 4; right: 0, 3
    assert float(r.acu_md) == pytest.approx(4 / 4)
    assert float(r.cvr) == pytest.approx(4 / 6)
    assert int(r.num_covered) == 4


def test_region_metrics_no_coverage_is_zero_not_nan():
    r = metrics.region_metrics(np.array([-1, -1, -1]), np.array([0, 1, 0]), np.array([0, 1, 1]))
    assert (float(r.acu_gt), float(r.acu_md), float(r.cvr), int(r.num_covered)) == (0.0, 0.0, 0.0, 0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="fraction"):
        metrics.top_fraction_mask(np.zeros((4, 4)), fraction=1.5)
    with pytest.raises(ValueError, match="heatmap"):
        metrics.top_fraction_mask(np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="mask"):
        metrics.mask_image(np.zeros((4, 4, 3)), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="heatmaps"):
        metrics.masked_scores(toy_forward, lambda x: x, np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="heatmaps"):
        metrics.masked_scores(toy_forward, lambda x: x, np.zeros((1, 2, 2, 3)), np.full((1, 2, 2), np.nan))
    with pytest.raises(ValueError, match="batch_size"):
        metrics.masked_scores(toy_forward, lambda x: x, np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4)), batch_size=0)
    with pytest.raises(ValueError, match="y"):
        metrics.average_drop(np.array([0.5]), np.array([0.5, 0.1]))
    with pytest.raises(ValueError, match="y_masked"):
        metrics.average_increase(np.array([0.5]), np.array([np.nan]))
    with pytest.raises(ValueError, match="predicted_label"):
        metrics.region_metrics(np.array([-2, 0]), np.array([0, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="model_pred"):
        metrics.region_metrics(np.array([0, 0]), np.array([0, 0]), np.array([0]))
    with pytest.raises(ValueError, match="predicted_label"):
        metrics.region_metrics(np.array([], int), np.array([], int), np.array([], int))


# ---------------------------------------------------------------- inverse, centre square, fills, per class

bottom_mask = jax.jit(metrics.bottom_fraction_mask, static_argnames="fraction")
inverse_ties = jax.jit(functools.partial(metrics.cut_ties, inverse=True), static_argnames="fraction")


@settings(max_examples=100, deadline=None)
@given(maps_and_fractions())
def test_bottom_fraction_mask_is_the_same_order_read_from_the_end(case):
    heatmap, fraction = case
    k = metrics.num_kept(heatmap.size, fraction)
    order, flat = ref_keep(heatmap, 1.0)  # the full keep order
    kept = order[len(order) - k:]
    expected = np.zeros(heatmap.size, bool)
    expected[kept] = True
    mask = np.asarray(bottom_mask(heatmap, fraction=fraction))
    np.testing.assert_array_equal(mask.reshape(-1), expected)
    # The complement of the top S² − k pixels; disjoint from the top k when 2k ≤ S².
    top_rest = np.zeros(heatmap.size, bool)
    top_rest[order[:len(order) - k]] = True
    np.testing.assert_array_equal(mask.reshape(-1), ~top_rest)
    if 2 * k <= heatmap.size:
        assert not np.any(mask & np.asarray(top_mask(heatmap, fraction=fraction)))
    if 0 < k < len(flat):
        threshold = flat[kept[0]]
        dropped = sum(1 for i in range(len(flat)) if flat[i] == threshold and not expected[i])
    else:
        dropped = 0
    assert int(inverse_ties(heatmap, fraction=fraction)) == dropped


def test_inverse_by_hand():
    heatmap = np.array([[0.9, 0.1], [np.nan, 0.5]], np.float32)
    np.testing.assert_array_equal(metrics.bottom_fraction_mask(heatmap, 0.5), [[False, True], [True, False]])
    flat = np.zeros(25, np.float32)  # all tied: the inverse keeps the last k of tie_priority
    last = metrics.tie_priority(25)[-5:]
    np.testing.assert_array_equal(np.flatnonzero(metrics.bottom_fraction_mask(flat.reshape(5, 5))),
                                  np.sort(last))


@pytest.mark.parametrize("size", [1, 4, 5, 10, 11, 32, 96])
def test_centre_square_keeps_k_pixels_as_a_centred_square_plus_part_of_the_next_ring(size):
    k = metrics.num_kept(size * size)
    mask = metrics.centre_square_mask(size)
    assert mask.sum() == k
    a = max((side for side in range(size % 2, size + 1, 2) if side * side <= k), default=0)
    lo = (size - a) // 2
    assert mask[lo:lo + a, lo:lo + a].all()  # the full centred a × a square
    outside = np.ones((size, size), bool)
    lo2 = max(lo - 1, 0)
    outside[lo2:lo2 + a + 2, lo2:lo2 + a + 2] = False
    assert not np.any(mask & outside)  # the rest lies on the next ring only
    np.testing.assert_array_equal(mask, metrics.centre_square_mask(size))  # same on every call


def test_centre_square_by_hand():
    # 5×5, k = 5: the centre pixel and 4 of its 8 neighbours, picked in tie_priority order.
    mask = metrics.centre_square_mask(5)
    ring = [i for i in metrics.tie_priority(25) if i != 12 and max(abs(i // 5 - 2), abs(i % 5 - 2)) == 1][:4]
    assert set(np.flatnonzero(mask)) == {12, *ring}


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 40), sigma=st.floats(0.3, 30.0), seed=st.integers(0, 2**16))
def test_gaussian_blur_matches_scipy(size, sigma, seed):
    from scipy import ndimage

    image = np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)
    fill = metrics.make_fill("blur", lambda x: x, size, sigma=sigma)
    got = np.asarray(metrics.fill_image(jnp.asarray(image), fill))
    want = ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect",
                                   truncate=metrics.BLUR_TRUNCATE)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(metrics.gaussian_blur_matrix(size, sigma).sum(axis=1), 1.0, rtol=1e-5)


def test_default_blur_sigma_scales_with_the_image():
    assert metrics.blur_sigma(96) == pytest.approx(9.6)
    assert metrics.blur_sigma(96, 2.5) == 2.5
    blurred = metrics.fill_image(np.random.default_rng(0).random((96, 96, 3), dtype=np.float32),
                                 metrics.make_fill("blur", lambda x: x, 96))
    assert float(jnp.std(blurred)) < 0.02  # strong: uniform noise (std 0.29) is almost flat


def test_normalisation_mean_recovers_the_model_mean(tiny_config):
    from ri_jax.models.vgg import make_vgg

    mean = metrics.normalisation_mean(make_vgg(tiny_config).normalize)
    np.testing.assert_allclose(mean, tiny_config.mean, rtol=1e-5)
    with pytest.raises(ValueError, match="affine"):
        metrics.normalisation_mean(lambda x: x ** 2)


def test_fills_by_hand():
    raw = np.full((4, 4, 3), 0.7, np.float32)
    raw[0, 0] = 0.1
    keep = np.zeros((4, 4), bool)
    keep[0, 0] = True
    normalize = lambda x: (x - jnp.array([0.2, 0.4, 0.6])) / 0.5
    black = np.asarray(metrics.mask_image(raw, keep, metrics.make_fill("black", normalize, 4)))
    mean = np.asarray(metrics.mask_image(raw, keep, metrics.make_fill("mean", normalize, 4)))
    blur = np.asarray(metrics.mask_image(raw, keep, metrics.make_fill("blur", normalize, 4, sigma=50.0)))
    for out in (black, mean, blur):
        np.testing.assert_array_equal(out[0, 0], raw[0, 0])  # kept pixels are untouched
    np.testing.assert_array_equal(black[1:], 0.0)
    np.testing.assert_allclose(mean[2, 3], [0.2, 0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(blur[3, 3], raw.mean(axis=(0, 1)), atol=2e-3)  # σ ≫ S: nearly the image mean
    np.testing.assert_array_equal(metrics.mask_image(raw, keep), black)  # no fill = black


@pytest.mark.parametrize("fill", metrics.FILLS)
@pytest.mark.parametrize("inverse", [False, True])
def test_masked_scores_with_fill_match_direct_computation(fill, inverse):
    raw = np.random.default_rng(3).random((5, 6, 6, 3), dtype=np.float32)
    heatmaps = np.random.default_rng(4).random((5, 6, 6), dtype=np.float32)
    normalize = lambda x: (x - 0.3) / 0.2
    scores = metrics.masked_scores(toy_forward, normalize, raw, heatmaps, fill=fill, inverse=inverse,
                                   blur_sigma=1.5, batch_size=2)
    keep = metrics.bottom_fraction_mask if inverse else metrics.top_fraction_mask
    painted = []
    for x, h in zip(np.asarray(raw), np.asarray(heatmaps)):
        if fill == "blur":
            from scipy import ndimage
            background = ndimage.gaussian_filter(x, (1.5, 1.5, 0), mode="reflect", truncate=4.0)
        else:
            background = np.full_like(x, 0.3 if fill == "mean" else 0.0)
        painted.append(np.where(np.asarray(keep(h))[..., None], x, background))
    probs = np.asarray(jax.nn.softmax(toy_forward(normalize(jnp.asarray(np.stack(painted)))), axis=-1))
    np.testing.assert_allclose(scores.y_masked, probs[np.arange(5), scores.classes], rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_per_class_matches_a_loop_over_classes(data):
    n = data.draw(st.sampled_from([1, 4, 9]))
    num_classes = data.draw(st.sampled_from([2, 3]))
    unit = st.floats(0, 1, width=32, allow_subnormal=False)
    y = data.draw(hnp.arrays(np.float32, n, elements=unit))
    y_masked = data.draw(hnp.arrays(np.float32, n, elements=unit))
    classes = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, num_classes - 1)))
    got = metrics.per_class(y, y_masked, classes, num_classes)
    for c in range(num_classes):
        rows = classes == c
        assert int(got.count[c]) == rows.sum()
        if rows.any():
            assert float(got.ad[c]) == pytest.approx(float(metrics.average_drop(y[rows], y_masked[rows])),
                                                     rel=1e-5, abs=1e-6)
            assert float(got.ai[c]) == pytest.approx(float(metrics.average_increase(y[rows], y_masked[rows])))
        else:
            assert (float(got.ad[c]), float(got.ai[c])) == (0.0, 0.0)


def test_fill_prior():
    raw = np.random.default_rng(5).random((7, 6, 6, 3), dtype=np.float32)
    normalize = lambda x: (x - 0.5) / 0.25
    black = metrics.fill_prior(toy_forward, normalize, raw, fill="black")
    # black normalises to −2 everywhere: logits (−72, −72), a tie → argmax class 0.
    np.testing.assert_allclose(black.probabilities, [0.5, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(black.predicted, [1.0, 0.0])
    mean = metrics.fill_prior(toy_forward, normalize, raw, fill="mean")
    np.testing.assert_allclose(mean.probabilities, [0.5, 0.5], rtol=1e-6)
    traced = jax.jit(chex.assert_max_traces(toy_forward, n=1))
    blur = metrics.fill_prior(traced, normalize, raw, fill="blur", blur_sigma=2.0, batch_size=3)
    fill = metrics.make_fill("blur", normalize, 6, sigma=2.0)
    blurred = jax.vmap(metrics.fill_image, in_axes=(0, None))(raw, fill)
    probs = jax.nn.softmax(toy_forward(normalize(blurred)), axis=-1)
    np.testing.assert_allclose(blur.probabilities, probs.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(blur.predicted, np.bincount(np.argmax(probs, -1), minlength=2) / 7)


def test_fill_and_class_bad_inputs_raise():
    raw, maps = np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="fill"):
        metrics.masked_scores(toy_forward, lambda x: x, raw, maps, fill="grey")
    with pytest.raises(ValueError, match="blur_sigma"):
        metrics.masked_scores(toy_forward, lambda x: x, raw, maps, fill="blur", blur_sigma=0.0)
    with pytest.raises(ValueError, match="fill"):
        metrics.fill_prior(toy_forward, lambda x: x, raw, fill="white")
    with pytest.raises(ValueError, match="raw_images"):
        metrics.fill_prior(toy_forward, lambda x: x, raw[0])
    with pytest.raises(ValueError, match="classes"):
        metrics.per_class(np.ones(2), np.ones(2), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="image_size"):
        metrics.centre_square_heatmap(0)
