"""Eq. 6 ranking (ri_jax.ranking) by hand and against NumPy loops."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.heatmaps import cam, polytope_heatmap, ri_channel_weights
from ri_jax.ranking import rank_covered, semantic_distance, unit_normals

R2 = np.sqrt(2.0)

# Two boundaries on feature maps of shape (1, 2, 2) (h=1, w=2, c=2):
#   h0: ψ[0,0,0] + ψ[0,1,0] − 1 = 0            (‖W0‖ = √2)
#   h1: −2ψ[0,0,1] − 2ψ[0,1,1] + 1 = 0         (‖W1‖ = 2√2)
W = jnp.asarray([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, -2.0], [0.0, -2.0]]]])
B = jnp.asarray([-1.0, 1.0])
PSI_X = jnp.asarray([[[1.0, 1.0], [2.0, 0.0]]])  # h0: 3 − 1 > 0, h1: −2 + 1 < 0
PSI_A = jnp.asarray([[[0.0, 0.0], [1.0, 0.0]]])
PSI_B = jnp.asarray([[[2.0, 1.0], [2.0, 1.0]]])
REFS = jnp.stack([PSI_A, PSI_B, PSI_X])


def test_hand_built_distances_and_ranking():
    # Projections on the unit normals: x (3/√2, −1/√2), a (1/√2, 0), b (4/√2, −2/√2).
    d = semantic_distance(W, jnp.asarray([True, True]), PSI_X, REFS)
    np.testing.assert_allclose(d, [3 / R2, 2 / R2, 0.0], rtol=1e-6)
    d0 = semantic_distance(W, jnp.asarray([True, False]), PSI_X, REFS)
    np.testing.assert_allclose(d0, [2 / R2, 1 / R2, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(semantic_distance(W, jnp.asarray([False, False]), PSI_X, REFS),
                                  0.0)
    ranking = rank_covered(d, jnp.asarray([True, True, False]))
    assert list(np.asarray(ranking.order)) == [1, 0, 2] and int(ranking.count) == 2


def test_hand_built_heatmaps_reuse_the_weights_of_x():
    alphas = ri_channel_weights(W, B, PSI_X)
    # h0 keeps its orientation (mean W = [1, 0]); h1 is flipped towards x: −[0, −2] = [0, 2].
    np.testing.assert_allclose(alphas, [[1.0, 0.0], [0.0, 2.0]])
    selected = jnp.asarray([True, True])
    on_a = polytope_heatmap(alphas, selected, PSI_A, 4)
    # On a, h1's channel is zero everywhere: its map is all zeros (not NaN) and halves h0's.
    np.testing.assert_array_equal(cam(alphas[1], PSI_A, 4), 0.0)
    np.testing.assert_allclose(on_a, cam(alphas[0], PSI_A, 4) / 2, atol=1e-7)
    assert np.all(np.isfinite(on_a))
    # The map on another image uses x's α, not that image's own weights.
    on_b = polytope_heatmap(alphas, selected, PSI_B, 4)
    np.testing.assert_allclose(on_b, (cam(alphas[0], PSI_B, 4) + cam(alphas[1], PSI_B, 4)) / 2)


def numpy_distance(w, selected, psi_x, psis):
    out = np.zeros(len(psis))
    for i, p in enumerate(psis):
        for h in range(len(w)):
            norm = np.linalg.norm(w[h])
            if selected[h] and norm > 0:
                out[i] += abs(np.sum(w[h] * psi_x) / norm - np.sum(w[h] * p) / norm)
    return out


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_distance_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(5, 2, 2, 3))
    w[rng.random(5) < 0.2] = 0.0  # degenerate boundaries add nothing
    selected = rng.random(5) < 0.6
    psi_x = rng.normal(size=(2, 2, 3))
    psis = rng.normal(size=(7, 2, 2, 3))
    got = semantic_distance(jnp.asarray(w, jnp.float32), jnp.asarray(selected),
                            jnp.asarray(psi_x, jnp.float32), jnp.asarray(psis, jnp.float32))
    np.testing.assert_allclose(got, numpy_distance(w, selected, psi_x, psis), rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(unit_normals(jnp.asarray(w, jnp.float32))))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_rank_covered_matches_sorted(seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 4, 20).astype(np.float32)  # many ties
    covered = rng.random(20) < 0.5
    ranking = rank_covered(jnp.asarray(distances), jnp.asarray(covered))
    expected = sorted(range(20), key=lambda i: (not covered[i], distances[i], i))
    np.testing.assert_array_equal(ranking.order, expected)
    assert int(ranking.count) == covered.sum()


def test_bad_inputs():
    sel = jnp.asarray([True, True])
    with pytest.raises(ValueError, match="selected"):
        semantic_distance(W, jnp.asarray([1, 1]), PSI_X, REFS)
    with pytest.raises(ValueError, match="psi_x"):
        semantic_distance(W, sel, PSI_X[0], REFS)
    with pytest.raises(ValueError, match="psis"):
        semantic_distance(W, sel, PSI_X, REFS[:, 0])
    with pytest.raises(ValueError, match="w"):
        semantic_distance(jnp.ones(3), sel, PSI_X, REFS)
    with pytest.raises(ValueError, match="covered"):
        rank_covered(jnp.zeros(3), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="distances"):
        rank_covered(jnp.zeros((3, 1)), jnp.ones(3, bool))
