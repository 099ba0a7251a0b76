"""ri_jax.explainers against slow, obvious per-image loops on a tiny VGG."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax import explainers as ex
from ri_jax.baselines import gradcam_pp_weights, gradcam_weights, scorecam_weights
from ri_jax.boundaries import sides
from ri_jax.heatmaps import cam, ri_channel_weights
from ri_jax.regions import DecisionRegions, covers

S = 32
FEW = settings(max_examples=40, deadline=None)


def balanced(fns, params, raw):
    """Shifts the last bias so the tiny random model predicts both classes on ``raw``."""
    logits = np.asarray(fns.apply(params, fns.normalize(raw)))
    shift = np.median(logits[:, 0] - logits[:, 1])
    p = jax.tree.map(lambda a: a, params)
    p["params"]["fc_2"]["bias"] = params["params"]["fc_2"]["bias"].at[1].add(shift)
    return p


@pytest.fixture(scope="module")
def model(tiny_model):
    fns, params = tiny_model
    rng = np.random.default_rng(0)
    raw = (rng.random((24, S, S, 3)) * rng.random((24, 1, 1, 3))).astype(np.float32)
    params = balanced(fns, params, raw)
    psi = np.asarray(fns.features(params, fns.normalize(raw)))
    classes = np.asarray(fns.head(params, psi)).argmax(-1).astype(np.int32)
    assert 0 < classes.mean() < 1  # both classes present, so RI has work to do
    return fns, params, raw, psi, classes


@pytest.fixture(scope="module")
def ri(model):
    fns, params, raw, psi, _ = model
    interpreter = ex.make_interpreter(fns, params, psi, key=jax.random.key(3), num_boundaries=8)
    return interpreter, ex.ri_interpretations(interpreter, fns, raw[:5], chunk_size=2)


# ---- map_chunks -------------------------------------------------------------------------------

@FEW
@given(n=st.integers(1, 23), chunk=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_map_chunks_equals_one_call(n, chunk, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)), rng.integers(0, 9, size=n)
    got = ex.map_chunks(lambda x, y: (x * 2, y + 1), (a, b), chunk)
    np.testing.assert_array_equal(got[0], a * 2)
    np.testing.assert_array_equal(got[1], b + 1)


def test_map_chunks_compiles_once_per_chunk_shape():
    f = jax.jit(chex.assert_max_traces(lambda x: x + 1, n=1))
    np.testing.assert_array_equal(ex.map_chunks(f, (np.arange(10.0),), 4), np.arange(10.0) + 1)


# ---- CAM weights ------------------------------------------------------------------------------

def test_cam_weights_match_per_image_calls(model):
    fns, params, raw, psi, classes = model
    head = lambda p: fns.head(params, p)
    forward = lambda x: fns.apply(params, x)
    slow = {
        "Grad-CAM": lambda i: gradcam_weights(head, psi[i], int(classes[i])),
        "Grad-CAM++": lambda i: gradcam_pp_weights(head, psi[i], int(classes[i])),
        "Score-CAM": lambda i: scorecam_weights(forward, fns.normalize, raw[i], psi[i],
                                                int(classes[i])),
    }
    idx = np.arange(5)
    for method in ex.CAM_METHODS:
        got = ex.cam_interpretations(method, fns, params, raw[idx], psi[idx], classes[idx],
                                     chunk_size=2, channel_chunk=8)
        assert got.alphas.shape == (5, 1, psi.shape[-1]) and got.selected.all()
        want = np.stack([slow[method](i) for i in idx])
        np.testing.assert_allclose(got.alphas[:, 0], want, rtol=1e-4, atol=1e-6, err_msg=method)


def test_cam_weights_reject_bad_input(model):
    fns, params, raw, psi, classes = model
    with pytest.raises(ValueError, match="method"):
        ex.cam_weights("LIME", fns, params, raw[:2], psi[:2], classes[:2])
    with pytest.raises(ValueError, match="classes"):
        ex.cam_weights("Grad-CAM", fns, params, raw[:2], psi[:2], np.array([0, 2]))
    with pytest.raises(ValueError, match="raw"):
        ex.cam_weights("Grad-CAM", fns, params, raw[:3], psi[:2], classes[:2])
    bad = psi[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="psi"):
        ex.cam_weights("Grad-CAM", fns, params, raw[:2], bad, classes[:2])


# ---- heat maps ----------------------------------------------------------------------------------

def slow_heatmap(alphas, selected, psi):
    maps = [np.asarray(cam(jnp.asarray(a), jnp.asarray(psi), S)) for a, s in zip(alphas, selected)
            if s]
    return np.mean(maps, axis=0) if maps else np.zeros((S, S), np.float32)


@FEW
@given(seed=st.integers(0, 2**16), chunk=st.sampled_from([1, 3, 8]))
def test_interpretation_heatmaps_match_loop(seed, chunk):
    rng = np.random.default_rng(seed)
    v, q, b = 3, 4, 5
    interps = ex.Interpretations(rng.normal(size=(v, q, 6)).astype(np.float32),
                                 rng.random((v, q)) < 0.5)
    which = rng.integers(0, v, size=b)
    psi = rng.random((b, 2, 2, 6)).astype(np.float32)
    got = ex.interpretation_heatmaps(interps, which, psi, S, chunk_size=chunk)
    want = np.stack([slow_heatmap(interps.alphas[w], interps.selected[w], p)
                     for w, p in zip(which, psi)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_row_interpretation_is_plain_cam(model):
    fns, params, raw, psi, classes = model
    own = ex.control_heatmaps("Grad-CAM (own weights)", fns, params, raw[:4], psi[:4], classes[:4],
                              key=jax.random.key(0))
    for i in range(4):
        alpha = gradcam_weights(lambda p: fns.head(params, p), psi[i], int(classes[i]))
        np.testing.assert_allclose(own[i], cam(alpha, psi[i], S), atol=1e-5)


def test_interpretation_heatmaps_reject_bad_input():
    interps = ex.Interpretations(np.ones((2, 1, 3), np.float32), np.ones((2, 1), bool))
    psi = np.ones((2, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="which"):
        ex.interpretation_heatmaps(interps, np.array([0, 2]), psi, S)
    with pytest.raises(ValueError, match="psi"):
        ex.interpretation_heatmaps(interps, np.array([0, 1]), np.ones((2, 2, 2, 4)), S)
    with pytest.raises(ValueError, match="selected"):
        ex.interpretation_heatmaps(ex.Interpretations(interps.alphas, np.ones((2, 1))),
                                   np.array([0, 1]), psi, S)


def test_random_heatmaps_are_seeded_and_uniform():
    a = ex.random_heatmaps(50, S, key=jax.random.key(1))
    assert a.shape == (50, S, S) and a.min() >= 0 and a.max() < 1
    np.testing.assert_array_equal(a, ex.random_heatmaps(50, S, key=jax.random.key(1)))
    assert not np.array_equal(a, ex.random_heatmaps(50, S, key=jax.random.key(2)))
    assert abs(a.mean() - 0.5) < 0.01
    with pytest.raises(ValueError, match="n"):
        ex.random_heatmaps(0, S, key=jax.random.key(0))


# ---- evaluation ---------------------------------------------------------------------------------

def slow_evaluation(fns, params, raw, maps, fraction=0.2):
    ad, ai, tied_images, tied_pixels, flat = [], [], 0, 0, 0
    k = int(np.floor(fraction * S * S + 0.5))
    for image, m in zip(raw, maps):
        flat_m = m.reshape(-1)
        order = sorted(range(flat_m.size), key=lambda j: (-flat_m[j], (j * 2654435761) % 2**32))
        keep = np.zeros(flat_m.size, bool)
        keep[order[:k]] = True
        masked = np.where(keep.reshape(S, S)[..., None], image, 0.0)
        p = np.asarray(jax.nn.softmax(fns.apply(params, fns.normalize(np.stack([image, masked])))))
        c = p[0].argmax()
        y, y2 = p[0, c], p[1, c]
        ad.append(max(0.0, y - y2) / y)
        ai.append(y < y2)
        dropped = int(np.sum((flat_m == flat_m[order[k - 1]]) & ~keep))
        tied_images += dropped > 0
        tied_pixels += dropped
        flat += flat_m.min() == flat_m.max()
    return 100 * np.mean(ad), 100 * np.mean(ai), tied_images, tied_pixels, flat


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), levels=st.sampled_from([3, 50, 0]))
def test_evaluate_heatmaps_matches_loop(model, seed, levels):
    fns, params, raw, _, _ = model
    rng = np.random.default_rng(seed)
    maps = rng.random((6, S, S)).astype(np.float32)
    if levels:  # coarse values create ties at the cut
        maps = np.floor(maps * levels) / levels
    maps[0] = 0.0  # a flat map, like an empty polytope's
    got = ex.evaluate_heatmaps(fns, params, raw[:6], maps, batch_size=4)
    ad, ai, tied_images, tied_pixels, flat = slow_evaluation(fns, params, raw[:6], maps)
    assert got.ad == pytest.approx(ad, abs=1e-3) and got.ai == pytest.approx(ai)
    assert (got.tied_images, got.tied_pixels, got.flat_maps) == (tied_images, tied_pixels, flat)
    np.testing.assert_allclose(100 * got.drop.mean(), got.ad, rtol=1e-5)
    assert got.drop.shape == got.increase.shape == got.y.shape == (6,)


def test_evaluate_masks_keeps_everything_means_no_change(model):
    fns, params, raw, _, _ = model
    got = ex.evaluate_masks(fns, params, raw[:5], np.ones((5, S, S), bool))
    np.testing.assert_allclose(got.y, got.y_masked, rtol=1e-6)
    assert got.ad == pytest.approx(0.0, abs=1e-4) and got.ai == 0.0 and got.tied_images == -1


def test_evaluate_rejects_bad_input(model):
    fns, params, raw, _, _ = model
    maps = np.random.default_rng(0).random((2, S, S)).astype(np.float32)
    with pytest.raises(ValueError, match="fraction"):
        ex.evaluate_heatmaps(fns, params, raw[:2], maps, fraction=1.5)
    with pytest.raises(ValueError, match="heatmaps"):
        ex.evaluate_heatmaps(fns, params, raw[:2], maps[:, :16, :16])
    maps[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="heatmaps"):
        ex.evaluate_heatmaps(fns, params, raw[:2], maps)


# ---- neighbours and routing ----------------------------------------------------------------------

@FEW
@given(seed=st.integers(0, 2**16), k=st.integers(1, 12), chunk=st.sampled_from([1, 5, 64]))
def test_euclidean_neighbours_match_stable_sort(seed, k, chunk):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, size=(12, 2, 2, 1)).astype(np.float32)  # small integers: exact ties
    queries = np.concatenate([points[:3], rng.integers(0, 3, size=(2, 2, 2, 1))]).astype(np.float32)
    got = ex.euclidean_neighbours(queries, points, k, chunk_size=chunk)
    for q, row in zip(queries, got):
        d = ((points.reshape(12, -1) - q.reshape(-1)) ** 2).sum(1)
        np.testing.assert_array_equal(row, np.argsort(d, kind="stable")[:k])


def test_euclidean_neighbours_reject_bad_k():
    with pytest.raises(ValueError, match="k"):
        ex.euclidean_neighbours(np.ones((2, 3)), np.ones((2, 3)), 3)


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
    got = ex.route_ri(regions, psi, centres)
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
        assert ex.nearest_centre(psi[n:n + 1], centres).which[0] == nearest


@FEW
@given(seed=st.integers(0, 2**16))
def test_distinct_polytopes_matches_set(seed):
    rng = np.random.default_rng(seed)
    regions = random_regions(rng, v=6, q=3)
    want = {tuple((s & g)[s].tolist()) + tuple(s.tolist())
            for s, g in zip(np.asarray(regions.selected), np.asarray(regions.signs))}
    assert ex.distinct_polytopes(regions) == len(want)


# ---- RI ---------------------------------------------------------------------------------------

def test_ri_interpretations_are_the_interpreters(model, ri):
    fns, params, raw, psi, classes = model
    interpreter, res = ri
    bounds = interpreter.reference_set.boundaries
    assert res.interpretations.alphas.shape == (5, 8, psi.shape[-1])
    np.testing.assert_array_equal(res.interpretations.selected, res.details.selected)
    np.testing.assert_array_equal(res.details.predicted_class, classes[:5])
    for v in range(5):
        np.testing.assert_allclose(res.interpretations.alphas[v],
                                   ri_channel_weights(bounds.w, bounds.b, psi[v]), atol=1e-5)
    # Each polytope covers its own input, and its sides are the input's sides.
    assert np.all(np.diag(np.asarray(covers(res.regions, psi[:5]))))
    np.testing.assert_array_equal(res.regions.signs, np.asarray(sides(bounds, psi[:5])).T)
    drawn = ex.interpretation_heatmaps(res.interpretations, np.arange(5), psi[:5], S)
    np.testing.assert_allclose(drawn, res.details.heatmap, atol=1e-5)


def test_ri_summary_counts(ri):
    _, res = ri
    s = ex.ri_summary(res)
    d = res.details
    assert s["interpretations"] == 5
    assert 1 <= s["distinct_polytopes"] <= 5
    assert s["empty_polytopes"] == int(np.sum(d.num_selected == 0))
    assert s["boundaries_per_polytope"]["max"] == float(np.max(d.num_selected))
    assert s["references_covered"]["min"] == float(np.min(d.num_covered)) >= 1
    assert s["tau"]["mean"] == pytest.approx(float(np.mean(d.tau)))


def test_cached_logits_give_the_same_evaluation(model):
    fns, params, raw, psi, _ = model
    maps = np.random.default_rng(1).random((7, S, S)).astype(np.float32)
    logits = np.asarray(fns.head(params, psi[:7]))
    fast = ex.evaluate_heatmaps(fns, params, raw[:7], maps, logits=logits, batch_size=3)
    slow = ex.evaluate_heatmaps(fns, params, raw[:7], maps, batch_size=3)
    np.testing.assert_allclose(fast.y, slow.y, rtol=1e-5)
    np.testing.assert_allclose(fast.y_masked, slow.y_masked, rtol=1e-5)
    np.testing.assert_array_equal(fast.classes, slow.classes)
    assert fast.ad == pytest.approx(slow.ad, rel=1e-4) and fast.ai == slow.ai
    with pytest.raises(ValueError, match="logits"):
        ex.evaluate_heatmaps(fns, params, raw[:7], maps, logits=logits[:6])


# ---- k-means inputs and protocol keys ------------------------------------------------------------

def test_kmeans_inputs_are_the_references_nearest_the_centres(model):
    psi = model[3]
    got = ex.kmeans_inputs(psi, 4, key=jax.random.key(2))
    flat = psi.reshape(len(psi), -1).astype(np.float64)
    d = ((flat[:, None, :] - got.centres[None].astype(np.float64)) ** 2).sum(-1)  # [N, V]
    np.testing.assert_array_equal(got.inputs, d.argmin(0))
    np.testing.assert_array_equal(got.assignment, d.argmin(1))
    again = ex.kmeans_inputs(psi, 4, key=jax.random.key(2))
    np.testing.assert_array_equal(got.centres, again.centres)
    with pytest.raises(ValueError, match="num_interpretations"):
        ex.kmeans_inputs(psi, len(psi) + 1, key=jax.random.key(2))


def test_protocol_keys_are_distinct_and_seeded():
    a, b = ex.protocol_keys(0), ex.protocol_keys(1)
    data = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in a + b]
    assert len(set(data)) == 8
    assert all(np.array_equal(jax.random.key_data(x), jax.random.key_data(y))
               for x, y in zip(a, ex.protocol_keys(0)))


# ---- ACE ------------------------------------------------------------------------------------------

def test_ace_masks_match_per_image_explanations(model):
    from ri_jax.baselines.ace import ACECache, ACEConfig, explain

    fns, params, raw, _, classes = model
    config = ACEConfig(n_segments=(6,), num_concepts=3, min_members=1, max_members=4,
                       num_random=4, repeats=2, kmeans_restarts=1, kmeans_iters=5)
    cache = ACECache()
    results = ex.ace_interpretations(fns, params, [raw[:4], raw[4:8]], classes[[0, 4]], config,
                                     key=jax.random.key(0), cache=cache, random_images=raw[8:12])
    which = np.array([1, 0, 1, 1, 0])
    found = ex.ace_masks(results, which, raw[12:17], fns, params, cache=cache)
    for b, v in enumerate(which):
        e = explain(results[v], fns.features, params, raw[12 + b], normalize_fn=fns.normalize,
                    cache=cache)
        np.testing.assert_array_equal(found.masks[b], e.keep)
        assert found.reached[b] == e.reached and found.num_segments[b] == len(e.segments)
    summary = ex.ace_summary(results, found)
    assert summary["interpretations"] == 2
    assert summary["empty_masks"] == int(np.sum(~found.masks.any(axis=(1, 2))))
    with pytest.raises(ValueError, match="which"):
        ex.ace_masks(results, np.array([0, 2, 0, 0, 0]), raw[12:17], fns, params, cache=cache)
    with pytest.raises(ValueError, match="discovery_sets"):
        ex.ace_interpretations(fns, params, [raw[:4]], classes[:2], config,
                               key=jax.random.key(0), cache=cache)
