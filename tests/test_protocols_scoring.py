"""ri_jax.protocols.scoring (masking, AD / AI) against slow per-image loops."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax import metrics
from ri_jax.protocols import scoring
from ri_jax.models.vgg import IMAGENET_MEAN  # the tiny model's normalisation mean
from conftest import as_model

S = 32
FEW = settings(max_examples=40, deadline=None)


# ---- evaluation ---------------------------------------------------------------------------------

def slow_background(image, fill):
    """What the dropped pixels become, written out: 0, the tiny model's mean, or scipy's blur."""
    if fill == "black":
        return np.zeros_like(image)
    if fill == "mean":
        return np.broadcast_to(np.asarray(IMAGENET_MEAN, np.float32), image.shape)
    from scipy import ndimage
    return ndimage.gaussian_filter(image.astype(np.float64), (0.1 * S, 0.1 * S, 0), mode="reflect",
                                   truncate=4.0)


def slow_evaluation(fns, params, raw, maps, fraction=0.2, fill="black", inverse=False):
    ad, ai, tied_images, tied_pixels, flat = [], [], 0, 0, 0
    k = int(np.floor(fraction * S * S + 0.5))
    for image, m in zip(raw, maps):
        flat_m = m.reshape(-1)
        order = sorted(range(flat_m.size), key=lambda j: (-flat_m[j], (j * 2654435761) % 2**32))
        keep = np.zeros(flat_m.size, bool)
        kept = order[len(order) - k:] if inverse else order[:k]
        keep[kept] = True
        masked = np.where(keep.reshape(S, S)[..., None], image, slow_background(image, fill))
        p = np.asarray(jax.nn.softmax(fns.apply(params, fns.normalize(np.stack([image, masked])))))
        c = p[0].argmax()
        y, y2 = p[0, c], p[1, c]
        ad.append(max(0.0, y - y2) / y)
        ai.append(y < y2)
        dropped = int(np.sum((flat_m == flat_m[kept[0] if inverse else kept[-1]]) & ~keep))
        tied_images += dropped > 0
        tied_pixels += dropped
        flat += flat_m.min() == flat_m.max()
    return 100 * np.mean(ad), 100 * np.mean(ai), tied_images, tied_pixels, flat


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), levels=st.sampled_from([3, 50, 0]))
def test_evaluate_heatmaps_matches_loop(protocol_model, seed, levels):
    fns, params, raw, _, _ = protocol_model
    rng = np.random.default_rng(seed)
    maps = rng.random((6, S, S)).astype(np.float32)
    if levels:  # coarse values create ties at the cut
        maps = np.floor(maps * levels) / levels
    maps[0] = 0.0  # a flat map, like an empty polytope's
    got = scoring.evaluate_heatmaps(as_model(fns, params), raw[:6], maps, batch_size=4)
    ad, ai, tied_images, tied_pixels, flat = slow_evaluation(fns, params, raw[:6], maps)
    assert got.ad == pytest.approx(ad, abs=1e-3) and got.ai == pytest.approx(ai)
    assert (got.tied_images, got.tied_pixels, got.flat_maps) == (tied_images, tied_pixels, flat)
    np.testing.assert_allclose(100 * got.drop.mean(), got.ad, rtol=1e-5)
    assert got.drop.shape == got.increase.shape == got.y.shape == (6,)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), fill=st.sampled_from(["black", "mean", "blur"]),
       inverse=st.booleans())
def test_evaluate_heatmaps_with_fill_and_inverse_matches_loop(protocol_model, seed, fill, inverse):
    fns, params, raw, _, _ = protocol_model
    maps = np.floor(np.random.default_rng(seed).random((5, S, S)) * 4).astype(np.float32) / 4
    masking = scoring.MaskingOptions(fill=fill)
    got = scoring.evaluate_heatmaps(as_model(fns, params), raw[:5], maps, masking=masking, inverse=inverse,
                                    batch_size=4)
    ad, ai, tied_images, tied_pixels, flat = slow_evaluation(fns, params, raw[:5], maps, fill=fill,
                                                             inverse=inverse)
    assert got.ad == pytest.approx(ad, abs=1e-3) and got.ai == pytest.approx(ai)
    assert (got.tied_images, got.tied_pixels, got.flat_maps) == (tied_images, tied_pixels, flat)


def test_per_class_and_fill_prior_reports(protocol_model):
    fns, params, raw, _, classes = protocol_model
    maps = np.random.default_rng(1).random((len(raw), S, S)).astype(np.float32)
    ev = scoring.evaluate_heatmaps(as_model(fns, params), raw, maps, batch_size=8)
    report = ev.per_class(("a", "b"))
    assert [report[c]["count"] for c in "ab"] == [int(np.sum(classes == 0)), int(np.sum(classes == 1))]
    for label, name in enumerate("ab"):
        rows = ev.classes == label
        assert report[name]["AD"] == pytest.approx(100 * ev.drop[rows].mean(), rel=1e-5)
        assert report[name]["AI"] == pytest.approx(100 * ev.increase[rows].mean())
    only_a = scoring.per_class_report(ev._replace(classes=np.zeros_like(ev.classes)), ("a", "b"))
    assert only_a["b"] == {"count": 0, "AD": None, "AI": None}
    black = scoring.fill_prior_report(as_model(fns, params), raw, scoring.MaskingOptions(), ("a", "b"))
    p = np.asarray(jax.nn.softmax(fns.apply(params, fns.normalize(np.zeros((1, S, S, 3))))))[0]
    assert black["probabilities"] == pytest.approx(dict(zip("ab", p)), rel=1e-5)
    assert black["images"] == 1 and black["fill"] == "black" and black["blur_sigma"] is None
    blur = scoring.fill_prior_report(as_model(fns, params), raw, scoring.MaskingOptions(fill="blur"), ("a", "b"),
                                     batch_size=5)
    assert blur["images"] == len(raw) and blur["blur_sigma"] == pytest.approx(0.1 * S)
    assert sum(blur["predicted"].values()) == pytest.approx(1.0)


def test_masking_options_reject_bad_fills():
    with pytest.raises(ValueError, match="fill"):
        scoring.MaskingOptions(fill="grey")
    with pytest.raises(ValueError, match="blur_sigma"):
        scoring.MaskingOptions(fill="blur", blur_sigma=-1.0)


def test_evaluate_masks_keeps_everything_means_no_change(protocol_model):
    fns, params, raw, _, _ = protocol_model
    got = scoring.evaluate_masks(as_model(fns, params), raw[:5], np.ones((5, S, S), bool))
    np.testing.assert_allclose(got.y, got.y_masked, rtol=1e-6)
    assert got.ad == pytest.approx(0.0, abs=1e-4) and got.ai == 0.0 and got.tied_images == -1


def test_evaluate_rejects_bad_input(protocol_model):
    fns, params, raw, _, _ = protocol_model
    maps = np.random.default_rng(0).random((2, S, S)).astype(np.float32)
    with pytest.raises(ValueError, match="fraction"):
        scoring.evaluate_heatmaps(as_model(fns, params), raw[:2], maps,
                                  masking=scoring.MaskingOptions(keep_fraction=1.5))
    with pytest.raises(ValueError, match="heatmaps"):
        scoring.evaluate_heatmaps(as_model(fns, params), raw[:2], maps[:, :16, :16])
    maps[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="heatmaps"):
        scoring.evaluate_heatmaps(as_model(fns, params), raw[:2], maps)


def test_cached_logits_give_the_same_evaluation(protocol_model):
    fns, params, raw, psi, _ = protocol_model
    maps = np.random.default_rng(1).random((7, S, S)).astype(np.float32)
    logits = np.asarray(fns.head(params, psi[:7]))
    fast = scoring.evaluate_heatmaps(as_model(fns, params), raw[:7], maps, logits=logits, batch_size=3)
    slow = scoring.evaluate_heatmaps(as_model(fns, params), raw[:7], maps, batch_size=3)
    np.testing.assert_allclose(fast.y, slow.y, rtol=1e-5)
    np.testing.assert_allclose(fast.y_masked, slow.y_masked, rtol=1e-5)
    np.testing.assert_array_equal(fast.classes, slow.classes)
    assert fast.ad == pytest.approx(slow.ad, rel=1e-4) and fast.ai == slow.ai
    with pytest.raises(ValueError, match="logits"):
        scoring.evaluate_heatmaps(as_model(fns, params), raw[:7], maps, logits=logits[:6])


def test_drop_and_increase_follow_eqs_7_and_8():
    y = np.array([0.8, 0.5, 0.0, 0.4])
    y_masked = np.array([0.2, 0.9, 0.3, 0.4])
    drop, inc = metrics.drop_and_increase(y, y_masked)
    np.testing.assert_allclose(drop, [0.75, 0.0, 0.0, 0.0])
    assert inc.tolist() == [False, True, True, False]


def test_masked_class_scores_match_a_direct_computation(tiny_model):
    fns, params = tiny_model
    rng = np.random.default_rng(5)
    raw = rng.random((5, 32, 32, 3)).astype(np.float32)
    # Coarse values create ties at the 20 % cut; one constant map ties everywhere.
    maps = (rng.integers(0, 6, (5, 32, 32)) / 5.0).astype(np.float32)
    maps[2] = 0.5
    classes = np.array([0, 1, 1, 0, 1])
    y_masked, tied, flat = scoring.masked_class_scores(as_model(fns, params), raw, maps, classes, batch_size=2)
    keep = round(0.2 * 32 * 32)
    for b in range(5):
        flat_map = maps[b].reshape(-1)
        tie_key = (np.arange(flat_map.size, dtype=np.uint64) * 2654435761) % 2**32
        order = np.lexsort((tie_key, -flat_map))  # by value, ties in the fixed pixel order
        mask = np.zeros(flat_map.size, bool)
        mask[order[:keep]] = True
        masked = raw[b] * mask.reshape(32, 32, 1)
        probs = np.asarray(jax.nn.softmax(fns.apply(params, fns.normalize(masked[None]))))[0]
        assert y_masked[b] == pytest.approx(probs[classes[b]], abs=1e-5)
        threshold = flat_map[order[keep - 1]]
        assert tied[b] == np.sum((flat_map == threshold) & ~mask)
        assert flat[b] == (b == 2)
    with pytest.raises(ValueError, match="classes"):
        scoring.masked_class_scores(as_model(fns, params), raw, maps, classes[:2])
