"""Algorithm 1 (ri_jax.solver) against a plain NumPy/Fraction implementation of the same rule."""

import functools
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ri_jax import solver as solver_module
from ri_jax.solver import (GreedyResult, _better, _mul_wide, class_blocks, class_sets,
                           _loosen_batch, match_words, positive_words, _solve_batch, _solve_classes,
                           _solve_greedy, _solve_greedy_packed, _solve_lanes, to_blocks)
from ri_jax.bits import num_words, pack_bits, popcount, unpack_bits

SHAPES = [(1, 5), (4, 33), (6, 64), (7, 70)]


def greedy_reference(match, positive, delta):
    """Algorithm 1 written out with Python loops and exact fractions."""
    q, n = match.shape
    negative = ~positive
    tau = int(np.sum(negative & match.all(axis=0)))
    bound = tau if delta is None else int(delta)
    covered = np.ones(n, bool)
    selected = np.zeros(q, bool)
    order = []
    while np.sum(covered & negative) > bound:
        best = None
        for h in range(q):
            if selected[h]:
                continue
            removed = covered & ~match[h]
            nom, den = int(np.sum(removed & positive)), int(np.sum(removed & negative))
            if den == 0:
                continue
            rank = (Fraction(nom, den), -den, h)
            if best is None or rank < best:
                best = rank
        if best is None:
            break
        h = best[2]
        selected[h] = True
        order.append(h)
        covered &= match[h]
    return dict(selected=selected, order=np.array(order + [-1] * (q - len(order))),
                covered=covered, num_selected=len(order), tau=tau, delta=bound,
                num_covered_positive=int(np.sum(covered & positive)),
                num_covered_negative=int(np.sum(covered & negative)),
                reached=bool(np.sum(covered & negative) <= bound))


def random_instance(rng, q, n, patterns):
    """Few distinct columns and a few classes, so ties in Eq. 4 are frequent."""
    columns = rng.random((q, patterns)) < rng.uniform(0.3, 0.9)
    match = columns[:, rng.integers(0, patterns, n)]
    positive = rng.random(n) < rng.uniform(0.1, 0.9)
    return match, positive


def assert_matches_reference(result: GreedyResult, ref, n):
    np.testing.assert_array_equal(np.asarray(result.selected), ref["selected"])
    np.testing.assert_array_equal(np.asarray(result.order), ref["order"])
    np.testing.assert_array_equal(np.asarray(unpack_bits(result.covered, n)), ref["covered"])
    for name in ("num_selected", "tau", "delta", "num_covered_positive", "num_covered_negative",
                 "reached"):
        assert int(getattr(result, name)) == ref[name], name


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES),
       patterns=st.integers(1, 5), delta=st.one_of(st.none(), st.integers(0, 12)))
def test_matches_reference(seed, shape, patterns, delta):
    rng = np.random.default_rng(seed)
    match, positive = random_instance(rng, *shape, patterns)
    result = _solve_greedy(jnp.asarray(match), jnp.asarray(positive), delta)
    ref = greedy_reference(match, positive, delta)
    assert_matches_reference(result, ref, shape[1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES),
       patterns=st.integers(1, 6), delta=st.one_of(st.none(), st.integers(0, 8)))
def test_invariants(seed, shape, patterns, delta):
    rng = np.random.default_rng(seed)
    q, n = shape
    match, positive = random_instance(rng, q, n, patterns)
    x = rng.integers(0, n)
    match[:, x] = True  # x is a reference: it lies on its own side of every boundary
    positive[x] = True
    r = _solve_greedy(jnp.asarray(match), jnp.asarray(positive), delta)
    covered = np.asarray(unpack_bits(r.covered, n))
    assert covered[x], "x must be covered by its own polytope"
    order = np.asarray(r.order)
    k = int(r.num_selected)
    assert np.all(order[k:] == -1) and len(set(order[:k])) == k
    np.testing.assert_array_equal(np.asarray(r.selected), np.isin(np.arange(q), order[:k]))
    # Covered sets shrink strictly in D(x) along the order (each pick has den > 0).
    prefix = np.ones(n, bool)
    for h in order[:k]:
        nxt = prefix & match[h]
        assert np.sum(nxt & ~positive) < np.sum(prefix & ~positive)
        assert np.all(nxt <= prefix)
        prefix = nxt
    np.testing.assert_array_equal(prefix, covered)
    tau = int(np.sum(~positive & match.all(axis=0)))
    bound = tau if delta is None else delta
    assert int(r.tau) == tau and int(r.delta) == bound
    # τ(x) is always reachable (select everything), so the bound holds whenever delta >= τ;
    # below τ the loop may run out of candidates and stop above the bound.
    if bound >= tau:
        assert bool(r.reached) and int(r.num_covered_negative) <= bound
    else:
        assert int(r.num_covered_negative) >= tau
    assert bool(r.reached) == (int(r.num_covered_negative) <= bound)


def test_empty_polytope_when_delta_already_met():
    match = jnp.asarray(np.random.default_rng(0).random((5, 40)) < 0.5)
    positive = jnp.arange(40) < 30
    r = _solve_greedy(match, positive, 10)  # 10 negatives in total
    assert int(r.num_selected) == 0 and not np.any(np.asarray(r.selected))
    assert np.all(np.asarray(r.order) == -1)
    assert np.all(np.asarray(unpack_bits(r.covered, 40)))
    assert int(r.num_covered_positive) == 30 and int(r.num_covered_negative) == 10


def test_single_class_gives_empty_polytope_and_zero_tau():
    match = jnp.asarray(np.random.default_rng(1).random((4, 37)) < 0.5)
    r = _solve_greedy(match, jnp.ones(37, bool))
    assert int(r.tau) == 0 and int(r.delta) == 0 and int(r.num_selected) == 0
    assert int(r.num_covered_positive) == 37 and bool(r.reached)


def test_stops_when_no_candidate_left():
    # Both negatives lie on x's side of every boundary: τ = 2 and nothing can remove them.
    match = jnp.asarray([[True, True, False, True], [True, True, True, False]])
    positive = jnp.asarray([False, False, True, True])
    r = _solve_greedy(match, positive, 0)
    assert int(r.num_selected) == 0 and not bool(r.reached)
    assert int(r.num_covered_negative) == 2 and int(r.tau) == 2


def test_tie_breaks_by_larger_denominator_then_lower_index():
    # Boundary 0 removes 1 positive and 1 negative, boundary 1 removes 2 and 2 (same ratio,
    # larger den), boundary 2 is a copy of boundary 1 (same key, higher index).
    positive = np.array([True, True, False, False, True])
    match = np.array([[False, True, False, True, True],
                      [False, False, False, False, True],
                      [False, False, False, False, True]])
    match[:, 4] = True
    r = _solve_greedy(jnp.asarray(match), jnp.asarray(positive), 0)
    assert list(np.asarray(r.order)) == [1, -1, -1]


def test_jit_vmap_and_no_retrace():
    rng = np.random.default_rng(3)
    q, n, b = 5, 45, 6
    cases = [random_instance(rng, q, n, 4) for _ in range(b)]
    match = jnp.asarray(np.stack([c[0] for c in cases]))
    positive = jnp.asarray(np.stack([c[1] for c in cases]))
    deltas = jnp.asarray(rng.integers(0, 5, b), jnp.int32)

    traced = jax.jit(chex.assert_max_traces(_solve_greedy, n=1))
    singles = [traced(match[i], positive[i], deltas[i]) for i in range(b)]
    batched = jax.vmap(_solve_greedy)(match, positive, deltas)
    batched_tau = jax.vmap(_solve_greedy, in_axes=(0, 0, None))(match, positive, None)
    for i in range(b):
        chex.assert_trees_all_equal(singles[i], jax.tree.map(lambda a: a[i], batched))
        ref = greedy_reference(np.asarray(match[i]), np.asarray(positive[i]), None)
        assert_matches_reference(jax.tree.map(lambda a: a[i], batched_tau), ref, n)


def test_packed_and_bool_paths_agree():
    rng = np.random.default_rng(4)
    for n in (3, 32, 50):
        match, positive = random_instance(rng, 6, n, 3)
        garbage = np.uint32(0xFFFFFFFF) << np.uint32(n % 32) if n % 32 else np.uint32(0)
        mw = np.array(pack_bits(jnp.asarray(match)))
        pw = np.array(pack_bits(jnp.asarray(positive)))
        mw[:, -1] |= garbage  # bits past num_refs must be ignored
        pw[-1] |= garbage
        packed = _solve_greedy_packed(jnp.asarray(mw), jnp.asarray(pw), None, num_refs=n)
        chex.assert_trees_all_equal(packed, _solve_greedy(jnp.asarray(match), jnp.asarray(positive)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), use_delta=st.booleans())
def test_solve_batch_matches_per_input(seed, use_delta):
    rng = np.random.default_rng(seed)
    q, n, b = 6, 70, 5
    side = rng.random((q, n)) < 0.5
    x_sides = rng.random((b, q)) < 0.5
    ref_class = rng.integers(0, 3, n)
    x_class = rng.integers(0, 3, b)
    positive = ref_class[None, :] == x_class[:, None]
    delta = jnp.asarray(rng.integers(0, 6, b), jnp.int32) if use_delta else None
    r = _solve_batch(pack_bits(jnp.asarray(side)), n, jnp.asarray(x_sides),
                    pack_bits(jnp.asarray(positive)), delta)
    for i in range(b):
        match = side == x_sides[i][:, None]
        ref = greedy_reference(match, positive[i], None if delta is None else int(delta[i]))
        assert_matches_reference(jax.tree.map(lambda a: a[i], r), ref, n)


@functools.partial(jax.jit, static_argnames="lanes")
def lanes_solve(side_words, num_refs, x_sides, positive_words, delta, *, lanes):
    positive, negative = jax.vmap(class_sets, (0, None))(positive_words, num_refs)
    return _solve_lanes(side_words, x_sides, positive, negative, delta, lanes=lanes)


# Fewer, more and as many lanes as inputs; tie-heavy instances; one shape per batch size.
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.sampled_from([1, 9]),
       lanes=st.sampled_from([1, 2, 4, 64]), patterns=st.integers(1, 12),
       use_delta=st.booleans())
def test_refilled_lanes_match_reference(seed, b, lanes, patterns, use_delta):
    rng = np.random.default_rng(seed)
    q, n = 7, 70
    columns = rng.random((q, patterns)) < rng.uniform(0.3, 0.9)
    side = columns[:, rng.integers(0, patterns, n)]
    x_sides = rng.random((b, q)) < 0.5
    ref_class = rng.integers(0, 3, n)
    positive = ref_class[None, :] == rng.integers(0, 3, b)[:, None]
    delta = jnp.asarray(rng.integers(0, 6, b), jnp.int32) if use_delta else None
    # _solve_lanes caps the lanes at B; capping here too keeps one compilation per program.
    r = lanes_solve(pack_bits(jnp.asarray(side)), n, jnp.asarray(x_sides),
                    pack_bits(jnp.asarray(positive)), delta, lanes=min(lanes, b))
    for i in range(b):
        match = side == x_sides[i][:, None]
        ref = greedy_reference(match, positive[i], None if delta is None else int(delta[i]))
        assert_matches_reference(jax.tree.map(lambda a: a[i], r), ref, n)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 2**16 - 1), min_size=4, max_size=4),
       wide=st.lists(st.integers(0, 2**31 - 1), min_size=4, max_size=4),
       idx=st.lists(st.integers(0, 63), min_size=2, max_size=2))
def test_narrow_and_wide_comparisons_follow_the_exact_rule(counts, wide, idx):
    def exact(na, da, nb, db):
        if db == 0 or da == 0:  # den 0 never reaches the rule; compare the products only
            return (na * db, -da, idx[0]) < (nb * da, -db, idx[1])
        return (Fraction(na, da), -da, idx[0]) < (Fraction(nb, db), -db, idx[1])

    for (na, da, nb, db), narrow in ((counts, True), (counts, False), (wide, False)):
        a = (jnp.bool_(True), jnp.int32(na), jnp.int32(da), jnp.int32(idx[0]))
        b = (jnp.bool_(True), jnp.int32(nb), jnp.int32(db), jnp.int32(idx[1]))
        assert bool(_better(a, b, narrow)) == exact(na, da, nb, db), (na, da, nb, db, narrow)


def test_positive_words_are_the_packed_class_comparison():
    rng = np.random.default_rng(11)
    ref_preds, x_preds = rng.integers(0, 4, 75), rng.integers(0, 4, 9)
    np.testing.assert_array_equal(
        positive_words(ref_preds, x_preds, num_classes=4),
        pack_bits(jnp.asarray(ref_preds[None, :] == x_preds[:, None])))


def test_match_words_is_xnor_with_zero_padding():
    rng = np.random.default_rng(5)
    side = rng.random((3, 40)) < 0.5
    x_side = np.array([True, False, True])
    words = match_words(pack_bits(jnp.asarray(side)), jnp.asarray(x_side), 40)
    np.testing.assert_array_equal(np.asarray(unpack_bits(words, 64)),
                                  np.pad(side == x_side[:, None], ((0, 0), (0, 24))))


@settings(max_examples=60, deadline=None)
@given(n=st.sampled_from([0, 1, 31, 32, 33, 63, 70]), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(n, seed):
    bits = np.random.default_rng(seed).random((2, n)) < 0.5
    words = pack_bits(jnp.asarray(bits))
    assert words.dtype == jnp.uint32 and words.shape == (2, num_words(n))
    np.testing.assert_array_equal(np.asarray(unpack_bits(words, n)), bits)
    np.testing.assert_array_equal(np.asarray(unpack_bits(words, 32 * num_words(n)))[:, n:], False)
    np.testing.assert_array_equal(np.asarray(popcount(words)), bits.sum(axis=1))
    # Little-endian: reference 32k + j is bit j of word k.
    expected = [sum(int(b) << j for j, b in enumerate(row[k * 32:(k + 1) * 32]))
                for row in bits for k in range(num_words(n))]
    np.testing.assert_array_equal(np.asarray(words).reshape(-1), expected)


@settings(max_examples=100, deadline=None)
@given(a=st.integers(0, 2**32 - 1), b=st.integers(0, 2**32 - 1))
def test_wide_multiplication_is_exact(a, b):
    high, low = _mul_wide(jnp.uint32(a), jnp.uint32(b))
    assert (int(high) << 32) | int(low) == a * b


def test_bad_inputs():
    match = jnp.ones((3, 10), bool)
    positive = jnp.ones(10, bool)
    with pytest.raises(ValueError, match="match"):
        _solve_greedy(jnp.ones((3, 10), jnp.int32), positive)
    with pytest.raises(ValueError, match="match"):
        _solve_greedy(jnp.ones(10, bool), positive)
    with pytest.raises(ValueError, match="positive"):
        _solve_greedy(match, jnp.ones(11, bool))
    with pytest.raises(ValueError, match="delta"):
        _solve_greedy(match, positive, -1)
    with pytest.raises(ValueError, match="delta"):
        _solve_greedy(match, positive, 1.5)
    with pytest.raises(ValueError, match="num_refs"):
        _solve_greedy_packed(pack_bits(match), pack_bits(positive), num_refs=33)
    with pytest.raises(ValueError, match="match_words"):
        _solve_greedy_packed(jnp.zeros((0, 1), jnp.uint32), jnp.zeros(1, jnp.uint32), num_refs=1)
    with pytest.raises(ValueError, match="x_sides"):
        _solve_batch(pack_bits(match), 10, jnp.ones((2, 4), bool), jnp.zeros((2, 1), jnp.uint32))
    with pytest.raises(ValueError, match="delta"):
        _solve_batch(pack_bits(match), 10, jnp.ones((2, 3), bool), jnp.zeros((2, 1), jnp.uint32),
                    jnp.asarray([0, -1]))
    with pytest.raises(ValueError, match="bits"):
        pack_bits(jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="num_bits"):
        unpack_bits(jnp.zeros(1, jnp.uint32), 33)


def test_solve_batch_in_chunks(monkeypatch):
    # Chunks of 3 inputs (and a remainder of 2) must give the same answers as one by one.
    q, n, b = 5, 40, 8
    monkeypatch.setattr(solver_module, "_CHUNK_WORDS", 3 * q * num_words(n))
    rng = np.random.default_rng(7)
    side = rng.random((q, n)) < 0.5
    x_sides = rng.random((b, q)) < 0.5
    positive = rng.random((b, n)) < 0.5
    r = _solve_batch(pack_bits(jnp.asarray(side)), n, jnp.asarray(x_sides),
                    pack_bits(jnp.asarray(positive)))
    for i in range(b):
        ref = greedy_reference(side == x_sides[i][:, None], positive[i], None)
        assert_matches_reference(jax.tree.map(lambda a: a[i], r), ref, n)


# Class ids from 1 to 4 classes (some absent), N across word edges, with given bounds or
# each input's τ; each (N, C, bounds) triple is one compilation, so six cover every N,
# every C and both kinds of bound. Nine inputs and N off a word edge run the padded
# problem (10 rows, 32·W references); N = 64 with 8 inputs the unpadded one.
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       case=st.sampled_from([(64, 1, False), (1, 3, True), (31, 2, False), (33, 4, True),
                             (70, 1, True), (70, 3, False)]),
       patterns=st.integers(1, 12))
def test_solve_classes_matches_reference(seed, case, patterns):
    n, num_classes, use_delta = case
    rng = np.random.default_rng(seed)
    q, b = 7, 8 if n == 64 else 9
    side = random_instance(rng, q, n, patterns)[0]
    x_sides = rng.random((b, q)) < 0.5
    present = rng.integers(1, num_classes + 1)  # classes 0 … present - 1 occur among the refs
    ref_class = rng.integers(0, present, n)
    x_class = rng.integers(0, num_classes, b)
    delta = jnp.asarray(rng.integers(0, 6, b), jnp.int32) if use_delta else None
    r = _solve_classes(pack_bits(jnp.asarray(side)), jnp.asarray(x_sides), ref_class, x_class,
                      delta, num_classes=num_classes)
    for i in range(b):
        match = side == x_sides[i][:, None]
        ref = greedy_reference(match, ref_class == x_class[i],
                               None if delta is None else int(delta[i]))
        assert_matches_reference(jax.tree.map(lambda a: a[i], r), ref, n)


def np_unpack(words, num_bits):
    """``unpack_bits`` in NumPy: bit j of word w is reference 32·w + j."""
    words = np.asarray(words, np.uint32)
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :num_bits].astype(bool)


_class_blocks = jax.jit(class_blocks, static_argnames="num_classes")
_to_blocks = jax.jit(to_blocks)


# N on and across word edges, up to several words per class; one compilation per (N, C),
# so eight pairs cover every N and every C from 1 to 5 (of the 40 combinations). N off a
# word edge is laid out as _solve_classes lays it out: padded to the words' 32·W
# references (any class ids past N, any bits there), the padding in no word.
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       n_and_classes=st.sampled_from([(1, 1), (2, 5), (31, 2), (32, 3), (33, 4), (64, 5),
                                      (65, 1), (200, 3)]))
def test_class_blocks_put_each_class_in_its_own_words(seed, n_and_classes):
    n, num_classes = n_and_classes
    rng = np.random.default_rng(seed)
    ref_class = rng.integers(0, num_classes, n)
    extra = 32 * num_words(n) - n
    padded_class = np.concatenate([ref_class, rng.integers(0, num_classes, extra)])
    blocks = jax.device_get(_class_blocks(padded_class, num_classes=num_classes,
                                          num_refs=n if extra else None))
    width = num_words(n) + num_classes
    assert blocks.word_class.shape == (width,) and blocks.valid.shape == (width,)
    assert int(blocks.num_refs) == n and np.all(blocks.slot[n:] >= 32 * width)
    slot = blocks.slot[:n]
    assert len(set(slot.tolist())) == n and slot.min() >= 0 and slot.max() < 32 * width
    np.testing.assert_array_equal(blocks.word_class[slot // 32], ref_class)  # pure words
    for c in range(num_classes):  # classes in order, stable within a class
        assert np.all(np.diff(slot[ref_class == c]) > 0)
    valid = np.zeros(32 * width, bool)
    valid[slot] = True
    np.testing.assert_array_equal(np_unpack(blocks.valid, 32 * width), valid)
    bits = rng.random((3, n)) < 0.5
    noisy = np.concatenate([bits, np.ones((3, extra), bool)], axis=1)
    moved = np_unpack(_to_blocks(pack_bits(jnp.asarray(noisy)), blocks), 32 * width)
    np.testing.assert_array_equal(moved[:, slot], bits)
    assert not moved[:, ~valid].any()


def test_solve_classes_rejects_bad_inputs():
    words = np.zeros((2, 1), np.uint32)
    with pytest.raises(ValueError, match="ref_classes"):
        _solve_classes(words, np.zeros((1, 2), bool), np.zeros((0,), np.int32), [0], num_classes=2)
    with pytest.raises(ValueError, match="side_words"):
        _solve_classes(np.zeros((2, 2), np.uint32), np.zeros((1, 2), bool), [0, 1], [0],
                      num_classes=2)
    with pytest.raises(ValueError, match="x_classes"):
        _solve_classes(words, np.zeros((1, 2), bool), [0, 1], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="x_sides"):
        _solve_classes(words, np.zeros((1, 3), bool), [0, 1], [0], num_classes=2)
    with pytest.raises(ValueError, match=r"ref_classes: every class must be in \[0, 2\)"):
        _solve_classes(words, np.zeros((1, 2), bool), [0, 2], [0], num_classes=2)
    with pytest.raises(ValueError, match="x_classes: every class"):
        _solve_classes(words, np.zeros((1, 2), bool), [0, 1], [-1], num_classes=2)
    with pytest.raises(ValueError, match="delta"):
        _solve_classes(words, np.zeros((1, 2), bool), [0, 1], [0], np.array([-1]), num_classes=2)


def test_removal_counts_do_not_carry_between_halves():
    # 4,100 words span three partial sums; all-ones words push each half to 32·2047.
    rng = np.random.default_rng(8)
    w = 4100
    side = np.full((2, w), 0xFFFFFFFF, np.uint32)
    side[1] = rng.integers(0, 2**32, w, dtype=np.uint32)
    pos = np.full(w, 0xFFFFFFFF, np.uint32)
    neg = rng.integers(0, 2**32, w, dtype=np.uint32)
    bits = lambda a: np.unpackbits(a.view(np.uint8)).sum(axis=-1)  # noqa: E731
    nom, den = solver_module._removal_counts_by_word(jnp.asarray(side.T), jnp.zeros(2, jnp.uint32),
                                                     jnp.asarray(pos), jnp.asarray(neg))
    np.testing.assert_array_equal(nom, [bits(side[h] & pos) for h in range(2)])
    np.testing.assert_array_equal(den, [bits(side[h] & neg) for h in range(2)])
    # One popcount per word: words are all D(x) (neg) or not (pos); the same limits.
    pure_neg = np.where(np.arange(w) % 3 == 0, np.uint32(0xFFFFFFFF), np.uint32(0))
    pure = solver_module._removal_counts_pure(
        jnp.asarray(side.T), jnp.zeros(2, jnp.uint32), jnp.full(w, 0xFFFFFFFF, jnp.uint32),
        jnp.asarray(pure_neg))
    np.testing.assert_array_equal(pure[0], [bits(side[h] & ~pure_neg) for h in range(2)])
    np.testing.assert_array_equal(pure[1], [bits(side[h] & pure_neg) for h in range(2)])


# --- The authors' variant: per-input side words, δ = 0 and the loosen step ------------------

def loosen_reference(match, positive, selected):
    """The authors' loosen step (``_lossenInvariant``) written out with Python loops."""
    def counts(sel):
        covered = match[sel].all(axis=0) if sel.any() else np.ones(match.shape[1], bool)
        return int(np.sum(covered & positive)), int(np.sum(covered & ~positive))

    target = counts(selected)
    kept = selected.copy()
    for j in range(len(kept)):
        if kept[j]:
            trial = kept.copy()
            trial[j] = False
            if counts(trial) == target:
                kept = trial
    return kept


def per_input_batch(rng, b, q, n, patterns):
    """B inputs, each with its own [Q, N] sides; x_side random, match = sides XNOR x_side."""
    side = np.stack([random_instance(rng, q, n, patterns)[0] for _ in range(b)])
    x_sides = rng.random((b, q)) < 0.5
    positive = rng.random((b, n)) < rng.uniform(0.1, 0.9)
    match = side == x_sides[:, :, None]
    return side, x_sides, positive, match


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES),
       patterns=st.integers(1, 5), zero_delta=st.booleans())
def test_per_input_side_words_match_reference(seed, shape, patterns, zero_delta):
    rng = np.random.default_rng(seed)
    q, n = shape
    side, x_sides, positive, match = per_input_batch(rng, 3, q, n, patterns)
    delta = np.zeros(3, np.int32) if zero_delta else None
    result = _solve_batch(pack_bits(jnp.asarray(side)), n, jnp.asarray(x_sides),
                         pack_bits(jnp.asarray(positive)), delta)
    for i in range(3):
        ref = greedy_reference(match[i], positive[i], 0 if zero_delta else None)
        assert_matches_reference(jax.tree.map(lambda a: a[i], result), ref, n)
        # δ = 0 below τ(x) is infeasible: the loop runs out of candidates, reached is False.
        if zero_delta and ref["tau"] > 0:
            assert not bool(result.reached[i])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(SHAPES),
       patterns=st.integers(1, 6), per_input=st.booleans(), greedy=st.booleans())
def test_loosen_matches_reference_and_keeps_counts(seed, shape, patterns, per_input, greedy):
    rng = np.random.default_rng(seed)
    q, n = shape
    side, x_sides, positive, match = per_input_batch(rng, 3, q, n, patterns)
    if not per_input:  # one shared side matrix
        side = np.broadcast_to(side[:1], side.shape)
        match = side == x_sides[:, :, None]
    words = pack_bits(jnp.asarray(side if per_input else side[0]))
    pos_words = pack_bits(jnp.asarray(positive))
    if greedy:
        selected = np.asarray(_solve_batch(words, n, jnp.asarray(x_sides), pos_words,
                                          np.zeros(3, np.int32)).selected)
    else:  # any selection, e.g. redundant boundaries
        selected = rng.random((3, q)) < 0.6
    out = _loosen_batch(words, n, jnp.asarray(x_sides), pos_words, jnp.asarray(selected))
    for i in range(3):
        expected = loosen_reference(match[i], positive[i], selected[i])
        np.testing.assert_array_equal(np.asarray(out.selected[i]), expected)
        assert int(out.num_selected[i]) == expected.sum()
        assert int(out.num_dropped[i]) == selected[i].sum() - expected.sum()

        def covered(sel):
            return match[i][sel].all(axis=0) if sel.any() else np.ones(n, bool)
        # The step never changes either covered count, hence not the covered set.
        np.testing.assert_array_equal(covered(expected), covered(selected[i]))


def test_loosen_rejects_bad_selection():
    words = pack_bits(jnp.ones((4, 40), bool))
    with pytest.raises(ValueError, match="selected"):
        _loosen_batch(words, 40, jnp.ones((2, 4), bool), jnp.zeros((2, 2), jnp.uint32),
                     jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="side_words"):
        _solve_batch(pack_bits(jnp.ones((3, 4, 40), bool)), 40, jnp.ones((2, 4), bool),
                    jnp.zeros((2, 2), jnp.uint32))


# --- The authors' greedy when δ cannot be reached: extras, their cap, then the loosen step ---

def authors_reference(match, positive, delta):
    """``SubmodularMinerAG.mineInvariant(delta)`` transcribed: their float ratios, argmin,
    1e10 for selected boundaries, the ``steps > 110`` break, then ``_lossenInvariant``.

    Returns:
      (every pick in order, re-picks included; the set before loosening; after it).
    """
    f, g = match[:, positive].T, match[:, ~positive].T  # rows: references; columns: boundaries
    buf_f, buf_g = np.arange(len(f)), np.arange(len(g))
    invariant = np.zeros(match.shape[0], bool)
    picks, steps = [], 0
    while True:
        steps += 1
        ratio = (np.sum(~f[buf_f], axis=0) + 1e-5) / (np.sum(~g[buf_g], axis=0) + 1e-10)
        ratio[invariant] = 1e10
        j = int(np.argmin(ratio))
        invariant[j] = True
        picks.append(j)
        buf_f, buf_g = buf_f[f[buf_f, j]], buf_g[g[buf_g, j]]
        if len(g) - len(buf_g) >= len(g) - delta or steps > 110:
            break
    return picks, invariant.copy(), loosen_reference(match, positive, invariant)


def authors_problems(rng, b, q, n):
    """B problems where δ is often unreachable and boundaries often repeat or remove nothing.

    Rows are drawn from a few patterns (duplicated boundaries), some rows are x's side on
    every reference (they remove nothing), half the problems get a D(x) reference on x's
    side of every boundary (δ = 0 unreachable), and δ is 0 or below |D(x)|.
    """
    x_sides = rng.random((b, q)) < 0.5
    match = np.empty((b, q, n), bool)
    positive = rng.random((b, n)) < rng.uniform(0.2, 0.8, (b, 1))
    positive[:, 0] = False  # |D(x)| ≥ 1, so the authors' loop needs a pick
    for i in range(b):
        patterns = rng.random((int(rng.integers(1, 7)), n)) < rng.uniform(0.5, 0.95)
        match[i] = patterns[rng.integers(0, len(patterns), q)]
        match[i, rng.random(q) < rng.uniform(0, 0.7)] = True
        if rng.random() < 0.5:
            match[i, :, rng.choice(np.flatnonzero(~positive[i]))] = True
    side = match == x_sides[:, :, None]
    others = np.sum(~positive, axis=1)
    delta = np.where(rng.random(b) < 0.6, 0, rng.integers(0, others)).astype(np.int32)
    return side, x_sides, positive, match, delta


# Q = 120 > 111 lets the cap bind; 13 boundaries do not. 10 examples × 48 problems.
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
@example(seed=49300)  # stuck on the empty polytope: no boundary removes a D(x) reference
def test_authors_rules_with_extras_cap_and_loosen(seed):
    rng = np.random.default_rng(seed)
    unreachable = 0
    for (q, n), b in (((13, 70), 40), ((120, 40), 8)):
        side, x_sides, positive, match, delta = authors_problems(rng, b, q, n)
        words, pos_words = pack_bits(jnp.asarray(side)), pack_bits(jnp.asarray(positive))
        x = jnp.asarray(x_sides)
        greedy = _solve_batch(words, n, x, pos_words, jnp.asarray(delta))
        ours = solver_module._keep_adding_batch(words, n, x, pos_words, greedy)
        ours, kept = jax.device_get((ours, _loosen_batch(words, n, x, pos_words, ours.selected)))
        for i in range(b):
            picks, before, after = authors_reference(match[i], positive[i], int(delta[i]))
            distinct = list(dict.fromkeys(picks))
            k = int(ours.num_selected[i])
            assert k == len(distinct)
            np.testing.assert_array_equal(ours.order[i, :k], distinct)
            assert np.all(ours.order[i, k:] == -1)
            np.testing.assert_array_equal(ours.selected[i], before)
            np.testing.assert_array_equal(kept.selected[i], after)
            covered = match[i][before].all(axis=0)
            assert int(ours.num_covered_negative[i]) == np.sum(covered & ~positive[i])
            assert int(ours.num_covered_positive[i]) == np.sum(covered & positive[i])
            reached = np.sum(covered & ~positive[i]) <= delta[i]
            assert bool(ours.reached[i]) == reached
            unreachable += not reached
    assert unreachable  # every draw of 48 problems holds some where δ is out of reach


def test_keep_adding_on_a_shared_sample_and_with_delta_reached():
    # Shared [Q, W] sides: the same answer as per-input copies of them.
    rng = np.random.default_rng(3)
    side, x_sides, positive, match, delta = authors_problems(rng, 6, 9, 50)
    side = np.broadcast_to(side[:1], side.shape)
    words, pos_words = pack_bits(jnp.asarray(side)), pack_bits(jnp.asarray(positive))
    x = jnp.asarray(x_sides)
    greedy = _solve_batch(words[0], 50, x, pos_words, jnp.asarray(delta))
    shared = solver_module._keep_adding_batch(words[0], 50, x, pos_words, greedy)
    own = solver_module._keep_adding_batch(words, 50, x, pos_words, greedy)
    for a, b in zip(shared, own):
        np.testing.assert_array_equal(a, b)
    # Where δ was reached nothing is added.
    done = np.asarray(greedy.reached)
    np.testing.assert_array_equal(np.asarray(shared.selected)[done],
                                  np.asarray(greedy.selected)[done])
    with pytest.raises(ValueError, match="max_steps"):
        solver_module._keep_adding_batch(words[0], 50, x, pos_words, greedy, max_steps=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_solve_is_the_authors_rules_on_classes_shared_and_per_input(seed):
    # The public entry point: Class(x) from predicted classes, the authors' extras and loosen
    # step; the same answer from per-input side words and from one shared [Q, W] matrix.
    rng = np.random.default_rng(seed)
    b, q, n = 12, 15, 60
    ref_classes = rng.integers(0, 3, n)
    x_classes = rng.integers(0, 3, b)
    side = rng.random((q, n)) < rng.uniform(0.5, 0.95)
    side[rng.random(q) < 0.3] = True
    x_sides = rng.random((b, q)) < 0.5
    delta = np.where(rng.random(b) < 0.6, 0, rng.integers(0, 5, b)).astype(np.int32)
    words = pack_bits(jnp.asarray(side))
    kwargs = dict(ref_classes=ref_classes, x_classes=x_classes, num_classes=3, delta=delta,
                  keep_adding=True, loosen=True)
    shared, shared_greedy = solver_module.solve(words, x_sides, **kwargs)
    own, own_greedy = solver_module.solve(jnp.broadcast_to(words, (b,) + words.shape), x_sides,
                                          **kwargs)
    for name, a, c in zip(shared._fields, shared, own):
        np.testing.assert_array_equal(a, c, err_msg=name)
    np.testing.assert_array_equal(shared_greedy, own_greedy)
    for i in range(b):
        match = side == x_sides[i][:, None]
        picks, before, after = authors_reference(match, ref_classes == x_classes[i], int(delta[i]))
        assert int(shared_greedy[i]) == len(dict.fromkeys(picks))
        np.testing.assert_array_equal(shared.selected[i], after)
        assert int(shared.num_selected[i]) == int(np.sum(after))
