"""Decision regions as classifiers (ri_jax.regions), by hand in 2D and against NumPy loops."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.regions import DecisionRegions, covered_by_class, covers, predict

# Boundaries in a 2-D feature space: x > 0, y > 0, x + y > 3.
W = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
B = jnp.asarray([0.0, 0.0, -3.0])
REGIONS = DecisionRegions(
    w=W, b=B,
    selected=jnp.asarray([[True, True, False],     # v0: first quadrant
                          [True, False, False],    # v1: left half-plane
                          [False, False, True]]),  # v2: above x + y = 3
    signs=jnp.asarray([[True, True, True],
                       [False, True, True],        # sides of unselected boundaries are ignored
                       [False, False, True]]),
    label=jnp.asarray([0, 1, 2], jnp.int32),
    num_covered_refs=jnp.asarray([10, 5, 20], jnp.int32))
POINTS = jnp.asarray([[1.0, 1.0], [-1.0, 5.0], [2.0, 2.0], [-1.0, -1.0], [1.0, -1.0],
                      [5.0, -1.0]])


def test_hand_built_covers_and_predict():
    np.testing.assert_array_equal(covers(REGIONS, POINTS), [
        [True, False, False], [False, True, True], [True, False, True],
        [False, True, False], [False, False, False], [False, False, True]])
    pred = predict(REGIONS, POINTS)
    # Several covering regions: the one covering the most references decides.
    np.testing.assert_array_equal(pred.label, [0, 2, 2, 1, -1, 2])
    np.testing.assert_array_equal(pred.chosen_region, [0, 2, 2, 1, -1, 2])
    np.testing.assert_array_equal(pred.covered_any, [True, True, True, True, False, True])


def test_empty_polytope_covers_everything_and_ties_pick_lowest_region():
    regions = REGIONS._replace(selected=REGIONS.selected.at[1].set(False),
                               num_covered_refs=jnp.asarray([20, 20, 20], jnp.int32))
    pred = predict(regions, POINTS)
    assert np.all(pred.covered_any)
    np.testing.assert_array_equal(pred.chosen_region, [0, 1, 0, 1, 1, 1])


def numpy_predict(w, b, selected, signs, label, count, feats):
    side = feats @ w.T + b > 0
    out = []
    for s in side:
        best = -1
        for v in range(len(label)):
            if all(s[q] == signs[v, q] for q in range(len(b)) if selected[v, q]):
                if best < 0 or count[v] > count[best]:
                    best = v
        out.append(best)
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_predict_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    q, v, n = 6, 4, 30
    w = rng.normal(size=(q, 3)).astype(np.float32)
    b = rng.normal(size=q).astype(np.float32)
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    selected = rng.random((v, q)) < 0.4
    signs = rng.random((v, q)) < 0.5
    label = rng.integers(0, 3, v).astype(np.int32)
    count = rng.integers(0, 3, v).astype(np.int32)  # ties are frequent
    values = feats.astype(np.float64) @ w.T.astype(np.float64) + b
    feats = feats[np.all(np.abs(values) > 1e-4, axis=1)]  # keep sides unambiguous in float32
    regions = DecisionRegions(*(jnp.asarray(a) for a in (w, b, selected, signs, label, count)))
    pred = predict(regions, jnp.asarray(feats))
    chosen = numpy_predict(w, b, selected, signs, label, count, feats)
    np.testing.assert_array_equal(pred.chosen_region, chosen)
    np.testing.assert_array_equal(pred.label, np.where(chosen >= 0, label[chosen], -1))
    np.testing.assert_array_equal(pred.covered_any, chosen >= 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="selected"):
        covers(REGIONS._replace(selected=REGIONS.selected[:, :2]), POINTS)
    with pytest.raises(ValueError, match="signs"):
        covers(REGIONS._replace(signs=REGIONS.signs.astype(jnp.int32)), POINTS)
    with pytest.raises(ValueError, match="label"):
        covers(REGIONS._replace(label=REGIONS.label[:2]), POINTS)
    with pytest.raises(ValueError, match="feats"):
        predict(REGIONS, jnp.ones((3, 5)))


def test_covered_by_class_counts_each_class_and_skips_unknown_labels():
    covered = np.array([1, 1, 0, 1, 1, 1], bool)
    classes = np.array([0, 2, 1, -1, 2, 2])
    assert covered_by_class(covered, classes, ("a", "b", "c")) == {"a": 1, "b": 0, "c": 3}
    assert covered_by_class(np.zeros(6, bool), classes, ("a", "b", "c")) == {"a": 0, "b": 0,
                                                                            "c": 0}
