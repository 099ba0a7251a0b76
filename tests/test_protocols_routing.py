"""ri_jax.protocols.routing (neighbours, routing, k-means inputs, keys) against loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.protocols import methods, routing
from ri_jax.regions import DecisionRegions

S = 32
FEW = settings(max_examples=40, deadline=None)


# ---- neighbours and routing ----------------------------------------------------------------------

@FEW
@given(seed=st.integers(0, 2**16), k=st.integers(1, 12), chunk=st.sampled_from([1, 5, 64]))
def test_euclidean_neighbours_match_stable_sort(seed, k, chunk):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, size=(12, 2, 2, 1)).astype(np.float32)  # small integers: exact ties
    queries = np.concatenate([points[:3], rng.integers(0, 3, size=(2, 2, 2, 1))]).astype(np.float32)
    got = routing.euclidean_neighbours(queries, points, k, chunk_size=chunk)
    for q, row in zip(queries, got):
        d = ((points.reshape(12, -1) - q.reshape(-1)) ** 2).sum(1)
        np.testing.assert_array_equal(row, np.argsort(d, kind="stable")[:k])


def test_euclidean_neighbours_reject_bad_k():
    with pytest.raises(ValueError, match="k"):
        routing.euclidean_neighbours(np.ones((2, 3)), np.ones((2, 3)), 3)


def random_regions(rng, v=4, q=5, d=6):
    return DecisionRegions(
        w=jnp.asarray(rng.normal(size=(q, 1, 1, d)), jnp.float32),
        b=jnp.asarray(rng.normal(size=q), jnp.float32),
        selected=jnp.asarray(rng.random((v, q)) < 0.4), signs=jnp.asarray(rng.random((v, q)) < 0.5),
        label=jnp.asarray(rng.integers(0, 2, size=v), jnp.int32),
        num_covered_refs=jnp.asarray(rng.integers(0, 3, size=v), jnp.int32))


@FEW
@given(seed=st.integers(0, 2**16))
def test_route_ri_matches_loop(seed):
    rng = np.random.default_rng(seed)
    regions = random_regions(rng)
    psi = rng.normal(size=(9, 1, 1, 6)).astype(np.float32)
    centres = rng.normal(size=(4, 6)).astype(np.float32)
    got = routing.route_ri(regions, psi, centres)
    w, b = np.asarray(regions.w).reshape(5, -1), np.asarray(regions.b)
    for n, p in enumerate(psi.reshape(9, -1)):
        side = w @ p + b > 0
        cover = [bool(np.all(side[s] == g[s])) for s, g in
                 zip(np.asarray(regions.selected), np.asarray(regions.signs))]
        nearest = int(np.argmin(((centres - p) ** 2).sum(1)))
        if any(cover):
            best = max((int(regions.num_covered_refs[i]), -i) for i in range(4) if cover[i])
            want = -best[1]
        else:
            want = nearest
        assert got.which[n] == want and got.covered[n] == any(cover)
        assert got.fallback[n] == (not any(cover))
        assert routing.nearest_centre(psi[n:n + 1], centres).which[0] == nearest


@FEW
@given(seed=st.integers(0, 2**16))
def test_distinct_polytopes_matches_set(seed):
    rng = np.random.default_rng(seed)
    regions = random_regions(rng, v=6, q=3)
    want = {tuple((s & g)[s].tolist()) + tuple(s.tolist())
            for s, g in zip(np.asarray(regions.selected), np.asarray(regions.signs))}
    assert methods.distinct_polytopes(regions) == len(want)


# ---- k-means inputs and protocol keys ------------------------------------------------------------

def test_kmeans_inputs_are_the_references_nearest_the_centres(protocol_model):
    psi = protocol_model[3]
    got = routing.kmeans_inputs(psi, 4, key=jax.random.key(2))
    flat = psi.reshape(len(psi), -1).astype(np.float64)
    d = ((flat[:, None, :] - got.centres[None].astype(np.float64)) ** 2).sum(-1)  # [N, V]
    np.testing.assert_array_equal(got.inputs, d.argmin(0))
    np.testing.assert_array_equal(got.assignment, d.argmin(1))
    again = routing.kmeans_inputs(psi, 4, key=jax.random.key(2))
    np.testing.assert_array_equal(got.centres, again.centres)
    with pytest.raises(ValueError, match="num_interpretations"):
        routing.kmeans_inputs(psi, len(psi) + 1, key=jax.random.key(2))


def test_protocol_keys_are_distinct_and_seeded():
    a, b = routing.protocol_keys(0), routing.protocol_keys(1)
    data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in a + b]
    assert len(set(data)) == 8
    assert all(np.array_equal(jax.random.key_data(x), jax.random.key_data(y))
               for x, y in zip(a, routing.protocol_keys(0)))


def slow_input_first(inputs, candidates, valid, k):
    lists, used = np.zeros((len(inputs), k), int), np.zeros((len(inputs), k), bool)
    for v, x in enumerate(inputs):
        row = [x] + [c for c, ok in zip(candidates[v], valid[v]) if ok and c != x]
        row = row[:k]
        lists[v, :len(row)] = row
        used[v, :len(row)] = True
    return lists, used


@settings(max_examples=80, deadline=None)
@given(v=st.integers(1, 5), n=st.integers(1, 12), k=st.integers(1, 14), seed=st.integers(0, 2**31 - 1))
def test_input_first_matches_loop(v, n, k, seed):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, n, v)
    m = int(rng.integers(1, n + 1))
    candidates = np.stack([rng.permutation(n)[:m] for _ in range(v)])
    valid = rng.random((v, m)) < 0.7
    lists, used = routing.input_first(inputs, candidates, valid, k)
    want_lists, want_used = slow_input_first(inputs, candidates, valid, k)
    assert lists.shape == used.shape == (v, k)
    np.testing.assert_array_equal(used, want_used)
    np.testing.assert_array_equal(np.where(used, lists, -1), np.where(want_used, want_lists, -1))
