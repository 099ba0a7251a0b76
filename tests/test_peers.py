"""The benchmark peers apply exactly the rules of ri_jax's solver and boundary sampling."""

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.peers import BoundaryPeer, _best, greedy_peer, greedy_peer_batch, sort_keep_mask
from ri_jax import metrics
from ri_jax.boundaries import sample_boundaries
from ri_jax.models.vgg import VGG, make_vgg
from ri_jax.solver import _solve_batch, _solve_greedy
from ri_jax.bits import pack_bits

# A few fixed shapes so the jitted solver compiles once per shape, not per example.
SHAPES = [(1, 7), (5, 40), (8, 70), (12, 33)]


def random_instance(rng, q, n):
    """Few distinct reference columns, so Eq. 4 ties (equal ratios, equal den) are common."""
    patterns = int(rng.integers(1, 6))
    columns = rng.random((q, patterns)) < rng.uniform(0.2, 0.9)
    match = columns[:, rng.integers(0, patterns, n)]
    positive = rng.random(n) < rng.uniform(0.1, 0.9)
    return match, positive


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1),
       delta=st.one_of(st.none(), st.integers(0, 10)))
def test_greedy_peer_matches_solver(shape, seed, delta):
    match, positive = random_instance(np.random.default_rng(seed), *shape)
    peer = greedy_peer(match, positive, delta)
    ours = _solve_greedy(jnp.asarray(match), jnp.asarray(positive),
                        None if delta is None else jnp.int32(delta))
    np.testing.assert_array_equal(peer.order, np.asarray(ours.order))
    assert peer.num_selected == int(ours.num_selected)
    assert peer.num_covered_positive == int(ours.num_covered_positive)
    assert peer.num_covered_negative == int(ours.num_covered_negative)
    assert peer.tau == int(ours.tau)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), with_delta=st.booleans())
def test_greedy_peer_batch_matches_solve_batch(seed, with_delta):
    rng = np.random.default_rng(seed)
    q, n, b = 6, 45, 5
    sides = rng.random((q, n)) < 0.5
    x_sides = rng.random((b, q)) < 0.5
    ref_preds = rng.integers(0, 3, n).astype(np.int32)
    x_preds = rng.integers(0, 3, b).astype(np.int32)
    delta = rng.integers(0, 4, b).astype(np.int32) if with_delta else None
    peer = greedy_peer_batch(sides, x_sides, ref_preds, x_preds, delta)
    ours = _solve_batch(pack_bits(jnp.asarray(sides)), n, jnp.asarray(x_sides),
                       pack_bits(jnp.asarray(ref_preds[None] == x_preds[:, None])),
                       None if delta is None else jnp.asarray(delta))
    np.testing.assert_array_equal(peer.order, np.asarray(ours.order))
    np.testing.assert_array_equal(peer.num_selected, np.asarray(ours.num_selected))
    np.testing.assert_array_equal(peer.num_covered_negative, np.asarray(ours.num_covered_negative))
    np.testing.assert_array_equal(peer.tau, np.asarray(ours.tau))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 2**20)), min_size=1,
                max_size=12))
def test_best_is_exact_with_tie_rules(pairs):
    nom = np.array([p[0] for p in pairs])
    den = np.array([p[1] for p in pairs])
    index = np.arange(len(pairs)) * 3 + 1  # any increasing boundary ids
    expected = min(range(len(pairs)), key=lambda i: (Fraction(int(nom[i]), int(den[i])),
                                                    -int(den[i]), int(index[i])))
    assert _best(nom, den, index) == index[expected]


def test_best_separates_ratios_that_floats_merge():
    # 1/3 and 2^24 / (3·2^24 + 1) are equal as float32 ratios, not exactly; the second is
    # smaller and must win.
    big = 2**24
    nom = np.array([1, big])
    den = np.array([3, 3 * big + 1])
    assert np.float32(nom[0]) / np.float32(den[0]) == np.float32(nom[1]) / np.float32(den[1])
    assert _best(nom, den, np.array([0, 1])) == 1


def test_greedy_peer_rejects_bad_input():
    with pytest.raises(ValueError, match="match"):
        greedy_peer(np.zeros((2, 3), np.int32), np.zeros(3, bool))
    with pytest.raises(ValueError, match="positive"):
        greedy_peer(np.zeros((2, 3), bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="delta"):
        greedy_peer(np.zeros((2, 3), bool), np.zeros(3, bool), -1)
    with pytest.raises(ValueError, match="x_sides"):
        greedy_peer_batch(np.zeros((2, 3), bool), np.zeros((1, 3), bool), np.zeros(3), np.zeros(1))


def test_boundary_peer_matches_sample_boundaries(tiny_config):
    fns = make_vgg(tiny_config)
    # Only G's parameters: initialising the whole VGG costs far more on 2 cores.
    params = VGG(tiny_config).init(jax.random.key(0), jnp.zeros((1,) + tiny_config.feature_shape),
                                   method=VGG.head)
    head = functools.partial(fns.head, params)
    # ψ is a ReLU output: random non-negative maps of its shape stand in for real ones.
    feats = np.maximum(np.random.default_rng(3).standard_normal((6,) + tiny_config.feature_shape,
                                                                dtype=np.float32), 0)
    peer = BoundaryPeer(head)(np.asarray(feats))
    ours = sample_boundaries(head, feats, piecewise_linear=True)
    np.testing.assert_allclose(np.asarray(peer.w), np.asarray(ours.w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(peer.b), np.asarray(ours.b), rtol=1e-4, atol=1e-5)
    # Not vacuous: the boundaries differ between samples.
    assert not np.allclose(np.asarray(ours.w[0]), np.asarray(ours.w[1]))
    with pytest.raises(ValueError, match="feats"):
        BoundaryPeer(head)(np.zeros((0, 2, 2, 32), np.float32))


@settings(max_examples=60, deadline=None)
@given(side=st.sampled_from([1, 4, 9]), fraction=st.sampled_from([0.2, 0.0, 1.0, 0.5]),
       inverse=st.booleans(), levels=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sort_keep_mask_peer_matches_kept_pixels(side, fraction, inverse, levels, seed):
    # Few levels make ties at the cut; NaN and infinities rank as the rule says. No
    # subnormals: the peer compares floats, which XLA:CPU may flush to zero.
    values = np.array([0.0, -0.0, 1.0, -3.5, np.inf, -np.inf, np.nan, 0.25], np.float32)
    rng = np.random.default_rng(seed)
    heatmap = jnp.asarray(values[rng.integers(0, levels + 2, (side, side))])
    peer = jax.jit(sort_keep_mask, static_argnames=("fraction", "inverse"))(
        heatmap, fraction=fraction, inverse=inverse)
    ours = metrics.kept_pixels(heatmap, fraction, inverse=inverse)
    np.testing.assert_array_equal(peer[0], ours[0])
    assert int(peer[1]) == int(ours[1])
