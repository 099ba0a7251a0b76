"""AD / AI masking and region metrics against hand-computed and brute-force references."""

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
                                     st.floats(-10, 10, width=32, allow_subnormal=False)]))
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


def test_exactly_twenty_percent_at_paper_size():
    heatmap = jax.random.uniform(jax.random.key(0), (224, 224))
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
    raw = jax.random.uniform(jax.random.key(1), (7, 5, 5, 3))
    heatmaps = jax.random.uniform(jax.random.key(2), (7, 5, 5))
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
