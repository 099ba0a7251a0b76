"""ri_jax.protocols.methods (CAM weights, RI, heat maps) against slow per-image loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.protocols import ace_adapter, methods
from ri_jax.baselines import gradcam_pp_weights, gradcam_weights, scorecam_weights
from ri_jax.boundaries import side_bits
from ri_jax.heatmaps import cam, ri_channel_weights
from ri_jax.regions import covers
from conftest import as_model

S = 32
FEW = settings(max_examples=40, deadline=None)


# ---- CAM weights ------------------------------------------------------------------------------

def test_cam_weights_match_per_image_calls(protocol_model):
    fns, params, raw, psi, classes = protocol_model
    head = lambda p: fns.head(params, p)
    forward = lambda x: fns.apply(params, x)
    slow = {
        "Grad-CAM": lambda i: gradcam_weights(head, psi[i], int(classes[i])),
        "Grad-CAM++": lambda i: gradcam_pp_weights(head, psi[i], int(classes[i])),
        "Score-CAM": lambda i: scorecam_weights(forward, fns.normalize, raw[i], psi[i],
                                                int(classes[i])),
    }
    idx = np.arange(5)
    for method in methods.method_names("cam"):
        got = methods.cam_interpretations(method, as_model(fns, params), raw[idx], psi[idx], classes[idx],
                                     chunk_size=2, channel_chunk=8)
        assert got.alphas.shape == (5, 1, psi.shape[-1]) and got.selected.all()
        want = np.stack([slow[method](i) for i in idx])
        np.testing.assert_allclose(got.alphas[:, 0], want, rtol=1e-4, atol=1e-6, err_msg=method)


def test_cam_weights_reject_bad_input(protocol_model):
    fns, params, raw, psi, classes = protocol_model
    with pytest.raises(ValueError, match="method"):
        methods.cam_weights("LIME", as_model(fns, params), raw[:2], psi[:2], classes[:2])
    with pytest.raises(ValueError, match="classes"):
        methods.cam_weights("Grad-CAM", as_model(fns, params), raw[:2], psi[:2], np.array([0, 2]))
    with pytest.raises(ValueError, match="raw"):
        methods.cam_weights("Grad-CAM", as_model(fns, params), raw[:3], psi[:2], classes[:2])
    bad = psi[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="psi"):
        methods.cam_weights("Grad-CAM", as_model(fns, params), raw[:2], bad, classes[:2])


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
    interps = methods.Interpretations(rng.normal(size=(v, q, 6)).astype(np.float32),
                                 rng.random((v, q)) < 0.5)
    which = rng.integers(0, v, size=b)
    psi = rng.random((b, 2, 2, 6)).astype(np.float32)
    got = methods.interpretation_heatmaps(interps, which, psi, S, chunk_size=chunk)
    want = np.stack([slow_heatmap(interps.alphas[w], interps.selected[w], p)
                     for w, p in zip(which, psi)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_row_interpretation_is_plain_cam(protocol_model):
    fns, params, raw, psi, classes = protocol_model
    own = methods.control_heatmaps("Grad-CAM (own weights)", as_model(fns, params), raw[:4], psi[:4], classes[:4],
                              key=jax.random.key(0))
    for i in range(4):
        alpha = gradcam_weights(lambda p: fns.head(params, p), psi[i], int(classes[i]))
        np.testing.assert_allclose(own[i], cam(alpha, psi[i], S), atol=1e-5)


def test_centre_square_control_keeps_the_same_centred_pixels_everywhere(protocol_model):
    from ri_jax.metrics import centre_square_mask, num_kept, top_fraction_mask

    fns, params, raw, psi, classes = protocol_model
    maps = methods.control_heatmaps("Centre square", as_model(fns, params), raw[:3], psi[:3], classes[:3])
    assert maps.shape == (3, S, S) and np.all(maps == maps[0])
    kept = np.asarray(top_fraction_mask(maps[0]))
    np.testing.assert_array_equal(kept, centre_square_mask(S))
    assert kept.sum() == num_kept(S * S) and kept[S // 2 - 6:S // 2 + 6, S // 2 - 6:S // 2 + 6].all()


def test_interpretation_heatmaps_reject_bad_input():
    interps = methods.Interpretations(np.ones((2, 1, 3), np.float32), np.ones((2, 1), bool))
    psi = np.ones((2, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="which"):
        methods.interpretation_heatmaps(interps, np.array([0, 2]), psi, S)
    with pytest.raises(ValueError, match="psi"):
        methods.interpretation_heatmaps(interps, np.array([0, 1]), np.ones((2, 2, 2, 4)), S)
    with pytest.raises(ValueError, match="selected"):
        methods.interpretation_heatmaps(methods.Interpretations(interps.alphas, np.ones((2, 1))),
                                   np.array([0, 1]), psi, S)


def test_random_control_is_seeded_and_uniform():
    random = lambda n, seed: methods.control_heatmaps(
        "Random", None, np.zeros((n, S, S, 3), np.float32), None, None, key=jax.random.key(seed))
    a = random(50, 1)
    assert a.shape == (50, S, S) and a.min() >= 0 and a.max() < 1
    np.testing.assert_array_equal(a, random(50, 1))
    assert not np.array_equal(a, random(50, 2))
    assert abs(a.mean() - 0.5) < 0.01
    with pytest.raises(ValueError, match="raw"):
        random(0, 0)
    with pytest.raises(ValueError, match="key"):
        methods.control_heatmaps("Random", None, np.zeros((2, S, S, 3)), None, None)


# ---- RI ---------------------------------------------------------------------------------------

def test_ri_interpretations_are_the_interpreters(protocol_model, protocol_ri):
    fns, params, raw, psi, classes = protocol_model
    interpreter, res = protocol_ri
    bounds = interpreter.reference_set.boundaries
    assert res.interpretations.alphas.shape == (5, 8, psi.shape[-1])
    np.testing.assert_array_equal(res.interpretations.selected, res.details.selected)
    np.testing.assert_array_equal(res.details.predicted_class, classes[:5])
    for v in range(5):
        np.testing.assert_allclose(res.interpretations.alphas[v],
                                   ri_channel_weights(bounds.w, bounds.b, psi[v]), atol=1e-5)
    # Each polytope covers its own input, and its sides are the input's sides.
    assert np.all(np.diag(np.asarray(covers(res.regions, psi[:5]))))
    np.testing.assert_array_equal(res.regions.signs, np.asarray(side_bits(bounds, psi[:5], packed=False)).T)
    drawn = methods.interpretation_heatmaps(res.interpretations, np.arange(5), psi[:5], S)
    np.testing.assert_allclose(drawn, res.details.heatmap, atol=1e-5)


def test_ri_summary_counts(protocol_ri):
    _, res = protocol_ri
    s = methods.ri_summary(res)
    d = res.details
    assert s["interpretations"] == 5
    assert 1 <= s["distinct_polytopes"] <= 5
    assert s["empty_polytopes"] == int(np.sum(d.num_selected == 0))
    assert s["boundaries_per_polytope"]["max"] == float(np.max(d.num_selected))
    assert s["references_covered"]["min"] == float(np.min(d.num_covered)) >= 1
    assert s["tau"]["mean"] == pytest.approx(float(np.mean(d.diagnostics.tau)))


def test_the_registry_holds_every_method_and_control_in_table_order():
    assert methods.method_names() == ("RI", "Grad-CAM", "Grad-CAM++", "Score-CAM", "ACE", "Random",
                                      "Grad-CAM (own weights)", "Centre square")
    assert methods.method_names("control", "ri") == ("RI", "Random", "Grad-CAM (own weights)",
                                                     "Centre square")
    assert methods.method(methods.RI).function is methods.ri_at_inputs
    assert methods.method(methods.ACE).function is ace_adapter.ace_interpretations
    assert [methods.method(n).random for n in methods.method_names("control")] == [True, False, False]
    with pytest.raises(ValueError, match="kinds"):
        methods.method_names("baseline")
    with pytest.raises(ValueError, match="unknown method"):
        methods.method("Toy")


@pytest.fixture
def registered():
    """Registers entries for one test and removes them after it."""
    names = []
    yield names
    for name in names:
        methods._REGISTRY.pop(name)


def _table1(protocol_model, **config):
    from ri_jax.featurize import Features
    from ri_jax.protocols.table1 import Table1Config, run_table1

    fns, params, raw, psi, classes = protocol_model
    model = as_model(fns, params)
    feats = Features(psi, np.asarray(model.head(psi)), classes, np.arange(len(psi)))
    return run_table1(model, feats, feats, lambda i: raw[i], raw, num_classes=2, seeds=[0],
                      config=Table1Config(per_class=2, ri=methods.RIOptions(num_boundaries=4),
                                          **config))


def test_a_registered_cam_method_runs_through_table1(protocol_model, registered):
    """Adding a CAM method is one function and one ``register_cam_method`` call."""

    def toy_weights(model, raw, psi, classes, *, channel_chunk):
        return jnp.ones(psi.shape[:1] + psi.shape[-1:], jnp.float32)  # every channel alike

    fns, params, raw, psi, classes = protocol_model
    methods.register_cam_method("Toy-CAM", toy_weights)
    registered.append("Toy-CAM")
    assert methods.method_names("ri", "cam")[-1] == "Toy-CAM"
    alphas = methods.cam_weights("Toy-CAM", as_model(fns, params), raw[:3], psi[:3], classes[:3])
    np.testing.assert_array_equal(alphas, np.ones((3, psi.shape[-1])))
    result = _table1(protocol_model, inverse=False)
    assert "Toy-CAM" in result.runs[0] and "Toy-CAM" in result.to_json()["methods"]
    with pytest.raises(ValueError, match="taken"):
        methods.register_cam_method("RI", toy_weights)


def test_a_registered_control_is_a_table1_row(protocol_model, registered):
    """Adding a control is one function and one ``register_control`` call."""

    def corner(model, raw, psi, classes, *, key):  # the top-left corner first
        ramp = -np.add.outer(np.arange(raw.shape[1]), np.arange(raw.shape[1]))
        return np.broadcast_to(ramp, raw.shape[:3]).astype(np.float32)

    methods.register_control("Toy corner", corner)
    registered.append("Toy corner")
    saved = _table1(protocol_model).to_json()
    assert list(saved["controls"]) == ["Random", "Grad-CAM (own weights)", "Centre square",
                                       "Toy corner"]
    assert "Toy corner" not in saved["methods"] and "inverse" in saved["controls"]["Toy corner"]
    with pytest.raises(ValueError, match="taken"):
        methods.register_control("Grad-CAM", corner)
