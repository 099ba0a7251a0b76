"""Eq. 2 boundaries and sides (ri_jax.boundaries) against finite differences and NumPy."""

import contextlib
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ri_jax.boundaries import (SEARCH_STEP, SEARCH_TOLERANCE, Boundaries, delta_g, draw_pools,
                               pool_boundaries, pool_keys, sample_boundaries, sample_indices, side_bits,
                               _sides_packed)
from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.bits import pack_bits

FEAT = (2, 2, 3)


def mlp_params(seed, classes=3, hidden=16):
    rng = np.random.default_rng(seed)
    d = int(np.prod(FEAT))
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
    return (normal(d, hidden) / np.sqrt(d), normal(hidden), normal(hidden, classes) / np.sqrt(hidden),
            normal(classes))


def relu_head(params, t):
    w1, b1, w2, b2 = params
    return jax.nn.relu(t.reshape(t.shape[0], -1) @ w1 + b1) @ w2 + b2


def tanh_head(params, t):
    w1, b1, w2, b2 = params
    return jnp.tanh(t.reshape(t.shape[0], -1) @ w1 + b1) @ w2 + b2


def numpy_head(params, t):
    """The ReLU head in float64 NumPy, for one flat feature map (the slow obvious version)."""
    w1, b1, w2, b2 = (np.asarray(p, np.float64) for p in params)
    pre = t @ w1 + b1
    return pre, np.maximum(pre, 0) @ w2 + b2


def numpy_delta_g(params, t):
    _, logits = numpy_head(params, t)
    top = np.sort(logits)[::-1]
    return top[0] - top[1]


def same_piece(params, t, s):
    """Whether t and s share the ReLU pattern and the ordered top-2 classes (one linear piece)."""
    (pre_t, lt), (pre_s, ls) = numpy_head(params, t), numpy_head(params, s)
    return (np.array_equal(pre_t > 0, pre_s > 0)
            and np.array_equal(np.argsort(-lt)[:2], np.argsort(-ls)[:2]))


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eq2_is_the_linear_piece_of_delta_g(seed):
    params = mlp_params(seed)
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(64,) + FEAT).astype(np.float32)
    with no_warnings():
        w, b = sample_boundaries(functools.partial(relu_head, params), jnp.asarray(feats))
    w = np.asarray(w, np.float64).reshape(64, -1)
    b = np.asarray(b, np.float64)
    checked = 0
    for i, t in enumerate(feats.reshape(64, -1).astype(np.float64)):
        v = rng.normal(size=t.shape)
        # Central finite differences (float64) of ΔG equal ⟨W, e⟩ along every axis e.
        h = 1e-6
        fd = [(numpy_delta_g(params, t + h * e) - numpy_delta_g(params, t - h * e)) / (2 * h)
              for e in np.eye(t.size)]
        np.testing.assert_allclose(fd, w[i], rtol=1e-3, atol=1e-4)
        # Within the linear piece around t, ΔG is exactly the affine function ⟨W, ·⟩ + b.
        eps = 1e-2
        for s in (t, t + eps * v, t - eps * v):
            if same_piece(params, t, s):
                np.testing.assert_allclose(w[i] @ s + b[i], numpy_delta_g(params, s),
                                           rtol=1e-4, atol=1e-4)
                checked += 1
    assert checked > 64  # most small steps stay in the piece, so the check is not vacuous


def test_vmapped_boundaries_equal_per_sample_gradients():
    params = mlp_params(1)
    head = functools.partial(relu_head, params)
    feats = np.random.default_rng(3).standard_normal((9,) + FEAT, dtype=np.float32)
    w, b = sample_boundaries(head, feats)
    assert w.shape == feats.shape and b.shape == (9,)
    for i in range(9):
        f = lambda t: delta_g(head(t[None])[0])  # noqa: E731
        np.testing.assert_allclose(w[i], jax.grad(f)(feats[i]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b[i], f(feats[i]) - jnp.vdot(w[i], feats[i]), atol=1e-5)


def test_delta_g_tie_subgradient_is_deterministic():
    logits = jnp.asarray([0.5, 2.0, 2.0, 2.0])
    assert float(delta_g(logits)) == 0.0
    np.testing.assert_array_equal(jax.grad(delta_g)(logits), [0.0, 1.0, -1.0, 0.0])


def test_tied_top_logits_give_finite_boundaries():
    w1, b1, w2, b2 = mlp_params(2)
    # Classes 0 and 1 share their weights, so their logits always tie.
    w2[:, 1] = w2[:, 0]
    b2[1], b2[2] = b2[0], -100.0
    head = functools.partial(relu_head, (w1, b1, w2, b2))
    feats = np.random.default_rng(4).standard_normal((6,) + FEAT, dtype=np.float32)
    w, b = sample_boundaries(head, feats)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    # ΔG = G_0 − G_1 ≡ 0 there: the subgradient is ∇G_0 − ∇G_1 = 0.
    np.testing.assert_array_equal(w, 0.0)
    np.testing.assert_array_equal(b, 0.0)


def test_smooth_head_warns_and_declaration_is_respected():
    params = mlp_params(5)
    feats = np.random.default_rng(5).standard_normal((4,) + FEAT, dtype=np.float32)
    with pytest.warns(UserWarning, match="not piecewise linear"):
        w, b = sample_boundaries(functools.partial(tanh_head, params), feats)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    with pytest.warns(UserWarning, match="not piecewise linear"):
        sample_boundaries(functools.partial(relu_head, params), feats, piecewise_linear=False)
    with no_warnings():
        declared = sample_boundaries(functools.partial(tanh_head, params), feats,
                                     piecewise_linear=True)
    np.testing.assert_allclose(declared.w, w, rtol=1e-6)


def test_vgg_head_is_detected_piecewise_linear():
    config = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
    fns = make_vgg(config)
    # He-normal weights built from the parameter shapes (much faster than an eager fns.init).
    shapes, tree = jax.tree.flatten(jax.eval_shape(fns.init, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(tree, [
        rng.normal(size=s.shape).astype(np.float32) * np.sqrt(2 / np.prod(s.shape[:-1]))
        if len(s.shape) > 1 else rng.normal(size=s.shape).astype(np.float32) for s in shapes])
    feats = np.maximum(np.random.default_rng(1).standard_normal((3,) + config.feature_shape,
                                                                dtype=np.float32), 0)
    with no_warnings():
        w, b = sample_boundaries(functools.partial(fns.head, params), feats)
    assert w.shape == feats.shape and np.all(np.isfinite(b))


def test_sample_indices():
    idx = np.asarray(sample_indices(30, 10, key=jax.random.key(0)))
    assert idx.dtype == np.int32 and len(set(idx)) == 10 and idx.min() >= 0 and idx.max() < 30
    np.testing.assert_array_equal(idx, sample_indices(30, 10, key=jax.random.key(0)))
    assert not np.array_equal(idx, sample_indices(30, 10, key=jax.random.key(1)))
    with pytest.warns(UserWarning, match="num_boundaries"):
        capped = np.asarray(sample_indices(7, 50, key=jax.random.key(0)))
    assert sorted(capped) == list(range(7))
    with pytest.raises(ValueError, match="num_boundaries"):
        sample_indices(7, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_refs"):
        sample_indices(0, 3, key=jax.random.key(0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 31, 70]),
       chunk=st.sampled_from([1, 32, 1024]))
def test_sides_match_numpy(seed, n, chunk):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(5,) + FEAT).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    feats = rng.normal(size=(n,) + FEAT).astype(np.float32)
    values = np.einsum("qijk,nijk->qn", w.astype(np.float64), feats.astype(np.float64)) + b[:, None]
    got = np.asarray(side_bits(Boundaries(jnp.asarray(w), jnp.asarray(b)), jnp.asarray(feats),
                               packed=False, chunk_size=chunk))
    assert got.shape == (5, n) and got.dtype == bool
    clear = np.abs(values) > 1e-4  # float32 rounding may flip values this close to 0
    np.testing.assert_array_equal(got[clear], (values > 0)[clear])
    packed = _sides_packed(Boundaries(jnp.asarray(w), jnp.asarray(b)), jnp.asarray(feats),
                          chunk_size=chunk)
    np.testing.assert_array_equal(packed, pack_bits(jnp.asarray(got)))
    # Chunks of feature maps give exactly the one-chunk answer, the padded last one too.
    one = Boundaries(jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_array_equal(got, side_bits(one, jnp.asarray(feats), packed=False,
                                                 chunk_size=1024))
    np.testing.assert_array_equal(packed, _sides_packed(one, jnp.asarray(feats), chunk_size=1024))


def test_bad_inputs():
    params = mlp_params(0)
    head = functools.partial(relu_head, params)
    feats = jnp.ones((2,) + FEAT)
    with pytest.raises(ValueError, match="feats"):
        sample_boundaries(head, jnp.ones(3))
    with pytest.raises(ValueError, match="feats"):
        sample_boundaries(head, jnp.ones((2,) + FEAT, jnp.int32))
    with pytest.raises(ValueError, match="feats"):
        sample_boundaries(head, feats.at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="head_fn"):
        sample_boundaries(lambda t: head(t)[:, 0], feats)
    with pytest.raises(ValueError, match="head_fn"):
        sample_boundaries(lambda t: head(t)[:, :1], feats)
    with pytest.raises(ValueError, match="head_fn"):
        sample_boundaries(head, jnp.ones((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="piecewise_linear"):
        sample_boundaries(head, feats, piecewise_linear="yes")
    bounds = Boundaries(jnp.ones((3,) + FEAT), jnp.zeros(3))
    with pytest.raises(ValueError, match="feats"):
        side_bits(bounds, jnp.ones((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="boundaries"):
        side_bits(Boundaries(jnp.ones((3,) + FEAT), jnp.zeros(4)), feats)
    with pytest.raises(ValueError, match="chunk_size"):
        side_bits(bounds, feats, chunk_size=0)


# --- The authors' search for boundary points (per-input pools) -------------------------

FEAT = (2, 2, 3)


def random_mlp(rng, num_classes, hidden=8, tie=False):
    """A random piecewise-linear head (ReLU MLP) in JAX and the same one in NumPy (float64)."""
    d = int(np.prod(FEAT))
    w1 = rng.normal(size=(d, hidden)).astype(np.float32)
    b1 = rng.normal(size=hidden).astype(np.float32) * 0.5
    w2 = rng.normal(size=(hidden, num_classes)).astype(np.float32)
    b2 = rng.normal(size=num_classes).astype(np.float32) * 0.5
    if tie:  # classes 0 and 1 always tie: ΔG = 0 whenever they are on top
        w2[:, 1], b2[1] = w2[:, 0], b2[0]

    def head(t):
        h = jax.nn.relu(jnp.dot(t.reshape(t.shape[0], -1), w1, precision="highest") + b1)
        return jnp.dot(h, w2, precision="highest") + b2

    def head_np(t):
        h = np.maximum(t.reshape(-1).astype(np.float64) @ w1 + b1, 0)
        return h @ w2 + b2

    return head, head_np


def search_reference(head_np, pos, neg, c, max_steps, tol):
    """The authors' loop written out in NumPy; also the smallest |top1 − top2| it decided on."""
    pos, neg = pos.astype(np.float32), neg.astype(np.float32)
    margin = np.inf
    for step in range(1, max_steps + 1):
        t = (np.float32(SEARCH_STEP) * pos + np.float32(1 - SEARCH_STEP) * neg).astype(np.float32)
        logits = head_np(t)
        order = np.argsort(-logits, kind="stable")
        gap = logits[order[0]] - logits[order[1]]
        margin = min(margin, gap, abs(gap * gap - tol))
        if order[0] == c:
            pos = t
            if gap * gap < tol:
                return pos, step, True, margin
        else:
            neg = t
    return pos, max_steps, False, margin


def top_two_np(head_np, t):
    logits = head_np(t)
    order = np.argsort(-logits, kind="stable")
    return order[0], logits[order[0]] - logits[order[1]]


@functools.lru_cache(maxsize=None)
def shared_mlp(num_classes):
    """One ``random_mlp`` per class count: the search compiles once per (head, max_steps)."""
    return random_mlp(np.random.default_rng(100 + num_classes), num_classes)


# Each example draws new inputs and references for one of three heads.
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_classes=st.integers(2, 4),
       max_steps=st.sampled_from([1, 3, 400]))
def test_boundary_search_matches_numpy_loop(seed, num_classes, max_steps):
    rng = np.random.default_rng(seed)
    head, head_np = shared_mlp(num_classes)
    x = rng.normal(size=(3,) + FEAT).astype(np.float32) * 2
    r = rng.normal(size=(3, 5) + FEAT).astype(np.float32) * 2
    c = np.array([top_two_np(head_np, xi)[0] for xi in x])
    # Keep only pairs whose reference is of another class (a pool is drawn from D(x)).
    other = np.array([[top_two_np(head_np, rj)[0] != ci for rj in ri] for ri, ci in zip(r, c)])
    assume(other.any())
    bounds, found = pool_boundaries(head, x, c, r, max_steps=max_steps)
    assert bounds.w.shape == (3, 5) + FEAT and bounds.b.shape == (3, 5)
    assert np.all(np.isfinite(bounds.w)) and np.all(np.isfinite(bounds.b))
    for i in range(3):
        for j in range(5):
            if not other[i, j]:
                continue
            point, steps, converged, margin = search_reference(head_np, x[i], r[i, j], c[i],
                                                               max_steps, SEARCH_TOLERANCE)
            top, gap = top_two_np(head_np, np.asarray(found.point[i, j]))
            assert top == c[i]  # every returned point keeps x's class
            if bool(found.converged[i, j]):
                assert abs(gap) <= 0.004
            if margin < 1e-4:  # a decision within float rounding of the threshold
                continue
            assert int(found.steps[i, j]) == steps and bool(found.converged[i, j]) == converged
            np.testing.assert_allclose(found.point[i, j], point, rtol=1e-4, atol=1e-4)


def test_boundary_search_gives_eq2_at_the_point():
    rng = np.random.default_rng(3)
    head, head_np = random_mlp(rng, 3)
    x = rng.normal(size=(4,) + FEAT).astype(np.float32) * 2
    c = np.array([top_two_np(head_np, xi)[0] for xi in x])
    r = np.stack([rng.normal(size=(6,) + FEAT).astype(np.float32) * 2 for _ in range(4)])
    bounds, found = pool_boundaries(head, x, c, r)
    eq2 = sample_boundaries(head, found.point.reshape((-1,) + FEAT), piecewise_linear=True)
    np.testing.assert_allclose(bounds.w.reshape(eq2.w.shape), eq2.w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bounds.b.reshape(-1), eq2.b, rtol=1e-5, atol=1e-5)


def test_boundary_search_cap_and_ties():
    rng = np.random.default_rng(5)
    head, head_np = random_mlp(rng, 3, tie=True)
    # Find an x of class 0: with classes 0 and 1 tied, its ΔG is 0 wherever they lead, so
    # the first step that keeps class 0 converges; W = ∇(G_0 − G_1) = 0 there, and b = 0.
    xs = rng.normal(size=(200,) + FEAT).astype(np.float32) * 2
    classes = np.array([top_two_np(head_np, t)[0] for t in xs])
    x, r = xs[classes == 0][:1], xs[classes == 2][None, :2]
    bounds, found = pool_boundaries(head, x, np.array([0]), r)
    assert np.all(np.isfinite(bounds.w)) and np.all(np.isfinite(bounds.b))
    for j in range(2):
        if bool(found.converged[0, j]):
            assert np.allclose(bounds.w[0, j], 0) and abs(float(bounds.b[0, j])) < 1e-5
    # A cap of one step cannot converge on a generic head: flagged, class kept.
    head2, head2_np = random_mlp(np.random.default_rng(6), 2)
    xs = rng.normal(size=(100,) + FEAT).astype(np.float32) * 3
    cls = np.array([top_two_np(head2_np, t)[0] for t in xs])
    x, r = xs[cls == 0][:1], xs[cls == 1][None, :4]
    _, found = pool_boundaries(head2, x, np.array([0]), r, max_steps=1)
    assert np.all(np.asarray(found.steps) == 1)
    for j in range(4):
        top, gap = top_two_np(head2_np, np.asarray(found.point[0, j]))
        assert top == 0
        assert bool(found.converged[0, j]) == (gap * gap < SEARCH_TOLERANCE)


@pytest.mark.parametrize("bad, match", [
    (dict(max_steps=0), "max_steps"), (dict(tol=0.0), "tol"),
    (dict(classes=np.array([0])), "classes"), (dict(pool_feats=np.zeros((2, 3, 4))), "pool_feats")])
def test_pool_boundaries_rejects_bad_arguments(bad, match):
    head, _ = random_mlp(np.random.default_rng(0), 2)
    args = dict(psi_x=np.ones((2,) + FEAT, np.float32), classes=np.array([0, 1]),
                pool_feats=np.ones((2, 3) + FEAT, np.float32))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        pool_boundaries(head, args.pop("psi_x"), args.pop("classes"), args.pop("pool_feats"),
                        **args)


# N and |Q| from short lists (one compilation per pair): pools larger and smaller than D(x).
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 5, 13, 40]),
       pool=st.sampled_from([1, 4, 12]))
def test_draw_pools_without_replacement_from_other_classes(seed, n, pool):
    rng = np.random.default_rng(seed)
    preds = rng.integers(0, 3, n).astype(np.int32)
    classes = rng.integers(0, 3, 4).astype(np.int32)
    keys = jax.random.split(jax.random.key(seed % 1000), 4)
    idx, count = draw_pools(preds, classes, pool, keys=keys)
    assert idx.shape == (4, pool)
    for i in range(4):
        others = np.flatnonzero(preds != classes[i])
        assert int(count[i]) == len(others)
        if len(others) == 0:
            continue
        drawn = np.asarray(idx[i])
        assert set(drawn) <= set(others)
        # Without replacement: distinct until D(x) is exhausted, then a repeat of the draw.
        k = min(pool, len(others))
        assert len(set(drawn[:k])) == k
        np.testing.assert_array_equal(drawn, drawn[np.arange(pool) % len(others)])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 31, 32, 33, 64, 70]))
def test_side_bits_per_input_match_each_pool(seed, n):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, 4) + FEAT).astype(np.float32)
    b = rng.normal(size=(3, 4)).astype(np.float32)
    feats = rng.normal(size=(n,) + FEAT).astype(np.float32)
    words = side_bits(Boundaries(w, b), feats, chunk_size=32)
    for i in range(3):
        expected = pack_bits(side_bits(Boundaries(w[i], b[i]), feats, packed=False))
        np.testing.assert_array_equal(words[i], expected)


def test_pool_keys_fold_in_each_id():
    key = jax.random.key(7)
    ids = np.array([0, 5, 2, 5], np.int32)
    want = [jax.random.key_data(jax.random.fold_in(key, int(i))) for i in ids]
    np.testing.assert_array_equal(jax.random.key_data(pool_keys(key, ids)), np.stack(want))


@pytest.mark.parametrize("max_steps", [3, 400])
def test_refilled_lanes_are_the_vmapped_search_bit_for_bit(max_steps):
    # 15 searches on 4 lanes: most lanes are refilled several times, some mid-way through
    # another lane's search; every point, step count and flag is the plain search's.
    from ri_jax.boundaries import search_boundary_point, search_lanes
    rng = np.random.default_rng(7)
    head, _ = shared_mlp(3)
    x = rng.normal(size=(3,) + FEAT).astype(np.float32) * 2
    r = rng.normal(size=(3, 5) + FEAT).astype(np.float32) * 2
    c = np.asarray(jnp.argmax(head(x), axis=1), np.int32)
    search = functools.partial(search_boundary_point, head, max_steps=max_steps)
    want = jax.vmap(jax.vmap(search, in_axes=(None, 0, None)))(x, r, c)
    got = search_lanes(head, x, c, r, max_steps=max_steps, tol=SEARCH_TOLERANCE, lanes=4)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    if max_steps > 3:  # searches of unequal length (with 3, every one runs to the cap)
        assert len(set(np.asarray(got.steps).ravel().tolist())) > 1
