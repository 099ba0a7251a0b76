"""k-means in Ω against a NumPy Lloyd loop and brute-force distances."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax import clustering


def np_lloyd(points, centres, max_iters, tol):
    """Float64 Lloyd loop with the library's stopping rule and farthest-point re-seeding."""
    x = np.asarray(points, np.float64).reshape(len(points), -1)
    c = np.asarray(centres, np.float64).copy()
    threshold = tol * np.mean(np.var(x, axis=0))
    iters, shift = 0, np.inf
    while iters < max_iters and shift > threshold:
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        labels = d.argmin(1)
        farthest = np.argsort(-d[np.arange(len(x)), labels], kind="stable")
        new, used = c.copy(), 0
        for j in range(len(c)):
            members = x[labels == j]
            if len(members):
                new[j] = members.mean(0)
            else:
                new[j] = x[farthest[used]]
                used += 1
        shift = ((new - c) ** 2).sum()
        c, iters = new, iters + 1
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    return c, d.argmin(1), d.min(1).sum(), iters


def blobs(seed, k=4, per=25, dim=6, spread=30.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * spread
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + rng.normal(size=(k * per, dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_separated_blobs(seed):
    points, truth = blobs(seed)
    result = clustering.kmeans(points, 4, key=jax.random.key(seed))
    assignment = np.asarray(result.assignment)
    # Same partition up to relabelling: a bijection between true blobs and clusters.
    pairs = set(zip(truth.tolist(), assignment.tolist()))
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    np.testing.assert_allclose(result.inertia, np_lloyd(points, result.centres, 1, 0.0)[2], rtol=1e-4)


def test_deterministic_under_same_key_and_varies_across_keys():
    points = np.random.default_rng(3).uniform(size=(200, 2)).astype(np.float32)
    runs = [clustering.kmeans(points, 6, key=jax.random.key(s)) for s in (0, 0, 1, 2, 3)]
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    centres = [np.sort(np.asarray(r.centres), axis=0) for r in runs[1:]]
    assert any(not np.allclose(centres[0], c, atol=1e-4) for c in centres[1:])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.sampled_from([1, 3, 5]), chunk=st.sampled_from([7, 1024]))
def test_lloyd_matches_numpy_loop(seed, k, chunk):
    # Overlapping blobs so Lloyd needs several iterations; tol=0 runs to an exact fixed point.
    points, _ = blobs(seed, k=3, per=20, dim=4, spread=2.0)
    init = points[np.asarray(clustering.kmeans_plusplus(points, k, key=jax.random.key(seed)))]
    got = clustering.lloyd(points, init, tol=0.0, chunk_size=chunk)
    centres, labels, inertia, iters = np_lloyd(points, init, 300, 0.0)
    np.testing.assert_array_equal(got.assignment, labels)
    np.testing.assert_allclose(got.centres, centres, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.inertia, inertia, rtol=1e-4)
    assert int(got.num_iters) == iters


def test_default_tolerance_stops_early_near_numpy_result():
    points, _ = blobs(4, k=3, per=30, dim=4, spread=2.0)
    init = points[:3]
    got = clustering.lloyd(points, init, tol=1e-2)
    centres, _, _, iters = np_lloyd(points, init, 300, 1e-2)
    assert int(got.num_iters) == iters
    np.testing.assert_allclose(got.centres, centres, rtol=1e-4, atol=1e-4)


def test_empty_cluster_moves_to_farthest_point():
    points, _ = blobs(5, k=2, per=10, dim=3)
    init = np.stack([points[0], points[10], np.full(3, 1e3, np.float32), np.full(3, -1e3, np.float32)])
    got = clustering.lloyd(points, init, max_iters=1, tol=0.0)
    centres, labels, _, _ = np_lloyd(points, init, 1, 0.0)
    assert np.all(np.isfinite(got.centres))
    np.testing.assert_allclose(got.centres, centres, rtol=1e-5, atol=1e-5)
    # Both far centres were empty and now sit on two distinct data points.
    for j in (2, 3):
        assert np.min(np.abs(points - np.asarray(got.centres[j])).sum(1)) < 1e-6
    assert not np.allclose(got.centres[2], got.centres[3])
    full = clustering.lloyd(points, init, tol=0.0)
    assert len(np.unique(np.asarray(full.assignment))) == 4


def test_kmeans_plusplus_spreads_seeds_and_handles_duplicates():
    points, truth = blobs(6, k=2, per=20, dim=3, spread=100.0)
    for s in range(5):
        seeds = np.asarray(clustering.kmeans_plusplus(points, 2, key=jax.random.key(s)))
        assert truth[seeds[0]] != truth[seeds[1]]  # D² weighting all but forces the other blob
    same = np.ones((6, 4), np.float32)
    result = clustering.kmeans(same, 3, key=jax.random.key(0))
    assert np.all(np.isfinite(result.centres)) and float(result.inertia) == 0.0
    np.testing.assert_allclose(result.centres, np.ones((3, 4)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), n=st.sampled_from([1, 7, 33]), k=st.sampled_from([1, 4]),
       chunk=st.sampled_from([3, 64]))
def test_assign_and_nearest_match_brute_force(seed, n, k, chunk):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 2, 3)).astype(np.float32)
    centres = rng.normal(size=(k, 6)).astype(np.float32)
    d = ((points.reshape(n, 1, -1).astype(np.float64) - centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(clustering.assign(points, centres, chunk_size=chunk), d.argmin(1))
    np.testing.assert_array_equal(clustering.nearest_to_centres(points, centres, chunk_size=chunk), d.argmin(0))


def test_nearest_to_centres_ties_go_to_lower_index():
    points = np.array([[5.0, 5.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    centres = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], np.float32)
    # Points 1 and 3 both sit on centre 0, in different chunks of 2; the lower index wins.
    np.testing.assert_array_equal(clustering.nearest_to_centres(points, centres, chunk_size=2), [1, 2, 2])
    # assign: a point equidistant from two centres goes to the lower centre index.
    np.testing.assert_array_equal(clustering.assign(points[1:2], np.zeros((2, 2))), [0])


def test_bad_inputs_raise():
    points = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="k"):
        clustering.kmeans(points, 5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="k"):
        clustering.kmeans(points, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="points"):
        clustering.kmeans(np.zeros(4), 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="points"):
        clustering.assign(np.full((2, 3), np.nan), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="centres"):
        clustering.nearest_to_centres(points, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="init_centres"):
        clustering.lloyd(points, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="tol"):
        clustering.lloyd(points, np.zeros((2, 3)), tol=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        clustering.assign(points, np.zeros((2, 3)), chunk_size=0)
