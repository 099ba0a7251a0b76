"""The RI flow end to end (ri_jax.interpreter) on a tiny random VGG."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ri_jax import interpreter as interpreter_module
from ri_jax import solver
from ri_jax.boundaries import side_bits
from ri_jax.heatmaps import polytope_heatmap
from ri_jax.interpreter import Interpretation, RepresentativeInterpreter
from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.ranking import semantic_distance
from ri_jax.regions import DecisionRegions, covers, predict
from ri_jax.bits import unpack_bits
from ri_jax.variants import ri_variant

CONFIG = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
N_REFS, Q, TOP_K = 64, 12, 4
heatmap = jax.jit(jax.vmap(polytope_heatmap, in_axes=(None, None, 0, None)), static_argnums=3)


def tiny_vgg():
    """Random He-normal VGG parameters (much faster than an eager ``fns.init``)."""
    fns = make_vgg(CONFIG)
    shapes, tree = jax.tree.flatten(jax.eval_shape(fns.init, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(tree, [
        rng.normal(size=s.shape).astype(np.float32) * np.sqrt(2 / np.prod(s.shape[:-1]))
        if len(s.shape) > 1 else np.zeros(s.shape, np.float32) for s in shapes])
    return fns, params


@pytest.fixture(scope="module")
def setup():
    fns, params = tiny_vgg()
    raw = np.random.default_rng(1).random((N_REFS + 6, 32, 32, 3), np.float32)
    images = fns.normalize(raw)
    refs, others = images[:N_REFS], images[N_REFS:]
    # Centre the logit gap on the references so both classes are predicted.
    logits = jax.jit(fns.apply)(params, refs)
    gap = np.median(np.asarray(logits[:, 0] - logits[:, 1]))
    params["params"]["fc_2"]["bias"] = np.array([0.0, gap], np.float32)
    interp = RepresentativeInterpreter(functools.partial(fns.features, params),
                                       functools.partial(fns.head, params), refs,
                                       key=jax.random.key(2), num_boundaries=Q, batch_size=16,
                                       progress=False, variant="paper")
    return fns, params, refs, others, interp


def fields(interpretation: Interpretation) -> dict:
    """Every array of an ``Interpretation`` by its path (``.heatmap``, ``.diagnostics.tau``)."""
    return {jax.tree_util.keystr(path): value
            for path, value in jax.tree_util.tree_leaves_with_path(interpretation)}


def check_one(interp, r: Interpretation, psi_x, x_side):
    n = interp.num_refs
    refs = interp.reference_set
    # pool_w / pool_b are None (the shared sample is in reference_set): not leaves.
    for name, value in fields(r).items():
        assert np.all(np.isfinite(value)) or name == ".similar_distances", name
    assert r.selected.shape == (Q,) and r.order.shape == (Q,) and r.covered.shape == (n,)
    assert r.alphas.shape == (Q, CONFIG.feature_shape[-1])
    assert r.heatmap.shape == (32, 32) and r.similar_heatmaps.shape == (TOP_K, 32, 32)
    assert bool(r.empty) == (int(r.num_selected) == 0)
    # Coverage follows the definition: same side as x on every selected boundary.
    ref_sides = np.asarray(unpack_bits(refs.side_words, n))
    sel = np.asarray(r.selected)
    expected = np.all(ref_sides[sel] == np.asarray(x_side)[sel, None], axis=0)
    np.testing.assert_array_equal(r.covered, expected)
    same = np.asarray(refs.preds) == int(r.predicted_class)
    assert int(r.num_covered) == expected.sum()
    assert int(r.num_covered_other) == (expected & ~same).sum()
    assert bool(r.diagnostics.reached) and int(r.delta) == int(r.diagnostics.tau)
    # Ranking: covered first, ascending distance; the top-k are its head.
    k = int(r.num_covered)
    ranked = np.asarray(r.ranked)
    assert np.all(expected[ranked[:k]]) and not np.any(expected[ranked[k:]])
    assert np.all(np.diff(np.asarray(r.ranked_distances)[:k]) >= 0)
    present = min(k, TOP_K)
    np.testing.assert_array_equal(np.asarray(r.similar)[:present], ranked[:present])
    assert np.all(np.asarray(r.similar)[present:] == -1)
    # Heat maps reuse x's α.
    np.testing.assert_allclose(r.heatmap, heatmap(r.alphas, r.selected, psi_x[None], 32)[0],
                               atol=1e-6)
    maps = heatmap(r.alphas, r.selected, refs.feats[np.asarray(r.similar)[:present]], 32)
    np.testing.assert_allclose(r.similar_heatmaps[:present], maps, atol=1e-6)
    np.testing.assert_array_equal(r.similar_heatmaps[present:], 0.0)


def test_interpret_end_to_end(setup):
    fns, params, refs, others, interp = setup
    preds = np.asarray(interp.reference_set.preds)
    assert 0 < preds.sum() < N_REFS, "the fixture should predict both classes"
    for i in (0, 5, 17):
        r = interp.interpret(refs[i], top_k=TOP_K)
        psi_x = interp.reference_set.feats[i]
        x_side = side_bits(interp.reference_set.boundaries, psi_x[None], packed=False)[:, 0]
        check_one(interp, r, psi_x, x_side)
        assert bool(r.covered[i]), "a reference is covered by its own polytope"
        assert int(r.predicted_class) == preds[i]
    r = interp.interpret(others[0], top_k=TOP_K)
    psi = interp.features(others[:1])[0]
    check_one(interp, r, psi, side_bits(interp.reference_set.boundaries, psi[None], packed=False)[:, 0])
    assert int(r.predicted_class) == int(jnp.argmax(fns.apply(params, others[:1])[0]))


def test_interpret_batch_agrees_and_does_not_retrace(setup):
    _, _, refs, others, interp = setup
    xs = jnp.concatenate([refs[:5], others[:3]])
    batch = interp.interpret_batch(xs, top_k=TOP_K)
    assert batch.selected.shape == (8, Q) and batch.heatmap.shape == (8, 32, 32)
    for i in range(8):
        single = interp.interpret(xs[i], top_k=TOP_K)
        for (name, got), want in zip(fields(batch).items(), fields(single).values()):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5, err_msg=name)
    sizes = (solver._solve_classes_jit._cache_size(), interpreter_module._explain_batch._cache_size(),
             interp.fns.features._cache_size())
    interp.interpret_batch(jnp.concatenate([others[3:], refs[10:15]]), top_k=TOP_K)
    # Five inputs run in the bucket of eight (padded with copies, dropped again): their
    # rows of the batch, and no new compilation.
    five = interp.interpret_batch(xs[:5], top_k=TOP_K)
    for (name, got), want in zip(fields(five).items(), fields(batch).values()):
        assert got.shape[0] == 5, name
        np.testing.assert_allclose(got, want[:5], rtol=1e-6, atol=1e-6, err_msg=name)
    assert (solver._solve_classes_jit._cache_size(), interpreter_module._explain_batch._cache_size(),
            interp.fns.features._cache_size()) == sizes


def test_class_count_is_the_heads_so_a_class_no_reference_has_reuses_the_solver():
    # A 3-class linear head on 2 features; no reference predicts class 2, a later batch
    # does. The class count is the head's 3 (not 1 + the largest class seen so far), so
    # both batches run the same compiled solver.
    refs = np.zeros((40, 1, 1, 2), np.float32)
    refs[:, 0, 0, 0] = np.random.default_rng(0).normal(size=40)
    w = jnp.asarray([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    head = lambda psi: psi.reshape(psi.shape[0], -1) @ w + jnp.asarray([0.0, 0.0, -5.0])
    interp = RepresentativeInterpreter(lambda x: x, head, refs, key=jax.random.key(0),
                                       num_boundaries=6, is_features=True, progress=False,
                                       variant="paper")
    assert interp.num_classes == 3
    assert set(np.asarray(interp.reference_set.preds).tolist()) == {0, 1}
    first = interp.interpret_batch(refs[:4], top_k=2)
    size = solver._solve_classes_jit._cache_size()
    new_class = refs[:4].copy()
    new_class[:, 0, 0, 1] = 10.0
    second = interp.interpret_batch(new_class, top_k=2)
    assert np.all(np.asarray(second.predicted_class) == 2)
    assert solver._solve_classes_jit._cache_size() == size
    np.testing.assert_array_equal(first.predicted_class, np.asarray(interp.reference_set.preds)[:4])


def test_regions_for_agree_with_interpretations(setup):
    _, _, refs, _, interp = setup
    feats = interp.reference_set.feats
    regions = interp.regions_for(feats[:8])  # 8 inputs: reuses the batch test's compilations
    batch = interp.interpret_batch(refs[:8], top_k=TOP_K)
    np.testing.assert_array_equal(regions.selected, batch.selected)
    np.testing.assert_array_equal(regions.label, batch.predicted_class)
    np.testing.assert_array_equal(regions.num_covered_refs, batch.num_covered)
    np.testing.assert_array_equal(covers(regions, feats).T, batch.covered)
    # Each input's own polytope covers it, so every input gets a label.
    pred = predict(regions, feats[:8])
    assert np.all(np.asarray(pred.covered_any))
    # Five inputs are solved in the bucket of eight: their rows, the shared boundaries
    # whole, and no new compilation of the solver.
    size = solver._solve_classes_jit._cache_size()
    five = interp.regions_for(feats[:5])
    for name in ("selected", "signs", "label", "num_covered_refs"):
        np.testing.assert_array_equal(getattr(five, name), getattr(regions, name)[:5], name)
    assert five.w.shape == regions.w.shape and five.b.shape == (Q,)
    assert solver._solve_classes_jit._cache_size() == size


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_single_class_references_give_an_explicit_empty_polytope(variant):
    fns, params = tiny_vgg()
    params["params"]["fc_2"]["bias"] = np.array([1e4, 0.0], np.float32)  # always class 0
    # Same shapes as the fixture, so the solver and explain compilations are reused.
    feats = np.maximum(np.random.default_rng(3).normal(
        size=(N_REFS,) + CONFIG.feature_shape), 0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interp = RepresentativeInterpreter(functools.partial(fns.features, params),
                                           functools.partial(fns.head, params), feats,
                                           key=jax.random.key(0), num_boundaries=Q,
                                           is_features=True, progress=False, variant=variant)
        r = interp.interpret(fns.normalize(jnp.full((32, 32, 3), 0.5)), top_k=TOP_K)
    assert bool(r.empty) and int(r.num_selected) == 0 and int(r.diagnostics.tau) == 0
    assert int(r.num_covered) == N_REFS and np.all(np.asarray(r.covered))
    np.testing.assert_array_equal(r.heatmap, 0.0)
    np.testing.assert_array_equal(r.similar_heatmaps, 0.0)
    np.testing.assert_array_equal(r.similar, np.arange(TOP_K))  # all distances 0: index order


def test_bad_inputs(setup):
    _, _, refs, _, interp = setup
    with pytest.raises(ValueError, match="x"):
        interp.interpret(refs[:2])
    with pytest.raises(ValueError, match="x"):
        interp.interpret(jnp.ones((32, 32, 3), jnp.int32))
    with pytest.raises(ValueError, match="x"):
        interp.interpret(refs[0].at[0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="x"):
        interp.interpret(jnp.ones((16, 16, 3)))
    # Non-finite values are caught on the host (NumPy) and on the device (JAX) alike.
    for bad in (np.nan, np.inf, -np.inf):
        images = np.array(refs[:2])
        images[1, 3, 4, 2] = bad
        for as_given in (np.asarray, jnp.asarray):
            with pytest.raises(ValueError, match="xs: contains NaN or inf"):
                interp.interpret_batch(as_given(images))
    with pytest.raises(ValueError, match="top_k"):
        interp.interpret(refs[0], top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        interp.interpret_batch(refs[:2], top_k=N_REFS + 1)
    with pytest.raises(ValueError, match="xs"):
        interp.interpret_batch(refs[0])
    with pytest.raises(ValueError, match="feats"):
        interp.regions_for(jnp.ones((2, 3, 3, 32)))
    feats = interp.reference_set.feats[:2]
    for bad in (jnp.asarray([0, 2]), jnp.asarray([-1, 0]), jnp.asarray([0.0, 1.0]), jnp.asarray([0])):
        with pytest.raises(ValueError, match=r"preds: expected 2 class ids in \[0, 2\)"):
            interp.solve_features(feats, bad)
    with pytest.raises(ValueError, match="references"):
        RepresentativeInterpreter(lambda x: x, lambda t: t, jnp.ones((4, 3)),
                                  key=jax.random.key(0))
    with pytest.raises(ValueError, match="head_fn"):
        RepresentativeInterpreter(lambda x: x, None, refs, key=jax.random.key(0))


@pytest.fixture(scope="module")
def authors(setup):
    fns, params, refs, _, _ = setup
    make = functools.partial(RepresentativeInterpreter, functools.partial(fns.features, params),
                             functools.partial(fns.head, params), refs, key=jax.random.key(4),
                             num_boundaries=Q, batch_size=16, progress=False)
    return make(variant="authors"), make(variant=ri_variant("authors", loosen=False))


def test_authors_variant_pools_on_the_decision_boundary(setup, authors):
    fns, params, refs, others, _ = setup
    interp, unloosened = authors
    xs = jnp.concatenate([refs[:4], others[:2]])
    out = interp.interpret_batch(xs, top_k=TOP_K)
    feats = interp.features(xs)
    preds = np.asarray(interp.predict_classes(feats))
    ref_preds = np.asarray(interp.reference_set.preds)
    for i in range(len(xs)):
        pool = np.asarray(out.diagnostics.pool[i])
        assert np.all(ref_preds[pool] != preds[i])  # drawn from D(x)
        w, b = np.asarray(out.pool_w[i]), np.asarray(out.pool_b[i])
        # Coverage is taken against x's own pool.
        ref_sides = np.einsum("qhwc,nhwc->qn", w, np.asarray(interp.reference_set.feats)) \
            + b[:, None] > 0
        x_side = np.einsum("qhwc,hwc->q", w, np.asarray(feats[i])) + b > 0
        np.testing.assert_array_equal(out.diagnostics.x_side[i], x_side)
        sel = np.asarray(out.selected[i])
        expected = np.all(ref_sides[sel] == x_side[sel, None], axis=0)
        np.testing.assert_array_equal(out.covered[i], expected)
        assert int(out.delta[i]) == 0
        assert int(out.num_selected[i]) <= int(out.diagnostics.num_selected_greedy[i])
        # Eq. 6 taken from the sides' products is Eq. 6 on x's own normals.
        distances = semantic_distance(w, sel, feats[i], interp.reference_set.feats)
        np.testing.assert_allclose(out.ranked_distances[i],
                                   np.asarray(distances)[np.asarray(out.ranked[i])],
                                   rtol=1e-5, atol=1e-5)
    # Points themselves are checked against a NumPy loop in test_boundaries.py.
    assert np.all(np.asarray(out.diagnostics.search_steps) >= 1)
    conv = np.asarray(out.diagnostics.search_converged)
    assert conv.mean() > 0.5


def test_loosen_step_never_changes_coverage(setup, authors):
    _, _, refs, others, _ = setup
    interp, unloosened = authors
    xs = jnp.concatenate([refs[4:8], others[2:4]])
    keys = jax.random.split(jax.random.key(9), len(xs))
    a = interp.interpret_batch(xs, top_k=TOP_K, keys=keys)
    b = unloosened.interpret_batch(xs, top_k=TOP_K, keys=keys)
    np.testing.assert_array_equal(a.diagnostics.pool, b.diagnostics.pool)
    np.testing.assert_array_equal(a.covered, b.covered)
    np.testing.assert_array_equal(a.num_covered, b.num_covered)
    np.testing.assert_array_equal(a.diagnostics.num_selected_greedy, b.num_selected)
    assert np.all(np.asarray(a.selected) <= np.asarray(b.selected))
    # The loosened order is the greedy's order without the dropped boundaries.
    for i in range(len(xs)):
        kept = [h for h in np.asarray(b.order[i]) if h >= 0 and a.selected[i][h]]
        np.testing.assert_array_equal(np.asarray(a.order[i])[:len(kept)], kept)


def test_authors_regions_cover_their_own_inputs(setup, authors):
    _, _, refs, _, _ = setup
    interp, _ = authors
    out = interp.interpret_batch(refs[:6], top_k=TOP_K)
    regions = interp.regions_from(out)
    assert regions.w.shape[:2] == (6, Q)
    feats = interp.reference_set.feats
    np.testing.assert_array_equal(covers(regions, feats).T, out.covered)
    assert np.all(np.asarray(predict(regions, feats[:6]).covered_any))
    # regions_for solves the 6 in the bucket of 8 and cuts the pools back to 6 rows too
    # (compared on the same feature maps, which a forward pass of another batch shape
    # could round differently).
    direct = interp.regions_for(feats[:6])
    same = interp.regions_from(interp.interpret_features(feats[:6], top_k=TOP_K, image_size=32))
    assert direct.w.shape[:2] == (6, Q) and direct.b.shape == (6, Q)
    for name in DecisionRegions._fields:
        np.testing.assert_array_equal(getattr(direct, name), getattr(same, name), name)


def test_variant_presets_and_knobs():
    assert ri_variant("paper").name == "paper" and ri_variant("authors").name == "authors"
    assert ri_variant() == ri_variant("authors") and ri_variant("authors").keep_adding
    assert ri_variant("authors", keep_adding=False).name == "custom"
    with pytest.raises(ValueError, match="keep_adding"):
        ri_variant("paper", keep_adding=1)
    mixed = ri_variant("paper", loosen=True)
    assert mixed.name == "custom" and mixed.to_json()["loosen"] is True
    with pytest.raises(ValueError, match="variant"):
        ri_variant("nope")
    with pytest.raises(ValueError, match="sampling"):
        ri_variant("paper", sampling="everywhere")
    with pytest.raises(ValueError, match="unknown"):
        ri_variant("paper", colour="red")
