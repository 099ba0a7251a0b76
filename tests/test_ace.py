"""ACE baseline: segments, patches, concepts, CAV/TCAV, t-test, the 20 % rule, end to end."""

import functools
import math
import sys

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from ri_jax.baselines import ace, ace_segments
from ri_jax.models.vgg import ModelConfig, make_vgg
from conftest import as_model

SETTINGS = settings(max_examples=60, deadline=None)
make_patch = jax.jit(ace_segments.make_patch)
seeds = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------- segments


def _rect(size, r0, r1, c0, c1):
    m = np.zeros((size, size), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_drop_duplicates_known_jaccard():
    left = _rect(10, 0, 10, 0, 5)  # 50 px
    right = _rect(10, 0, 10, 5, 10)
    wider = _rect(10, 0, 10, 0, 6)  # J(left, wider) = 50/60 > 0.5
    whole = _rect(10, 0, 10, 0, 10)  # J(left, whole) = J(right, whole) = 0.5: not above
    strip = _rect(10, 0, 10, 3, 8)  # J with left and right = 20/80 each
    speck = _rect(10, 0, 1, 0, 1)  # 1 % of the image
    assert np.isclose(ace_segments.jaccard_matrix(left[None], wider[None])[0, 0], 50 / 60)
    kept = ace_segments.drop_duplicates([np.stack([left, right]), np.stack([wider, whole, strip])],
                                        threshold=0.5)
    np.testing.assert_array_equal(kept, np.stack([left, right, whole, strip]))
    # min_area is strict; segments of one resolution never knock each other out
    kept = ace_segments.drop_duplicates([np.stack([speck, left, left])], min_area=0.01)
    np.testing.assert_array_equal(kept, np.stack([left, left]))
    assert ace_segments.drop_duplicates([np.stack([speck])], min_area=0.001).shape == (1, 10, 10)


def _ace_dedupe_loop(levels, threshold, min_area):
    """ACE's ``_return_superpixels`` de-duplication, transcribed."""
    unique = []
    for masks in levels:
        param = []
        for mask in masks.astype(float):
            if np.mean(mask) > min_area:
                if all(np.sum(s * mask) / np.sum((s + mask) > 0) <= threshold for s in unique):
                    param.append(mask)
        unique.extend(param)
    return np.array(unique, bool).reshape(-1, *levels[0].shape[1:])


@SETTINGS
@given(seeds, st.integers(1, 3), st.sampled_from([0.3, 0.5, 0.7]))
def test_drop_duplicates_matches_ace_loop(seed, num_levels, threshold):
    rng = np.random.default_rng(seed)
    levels = []
    for _ in range(num_levels):
        labels = rng.integers(0, rng.integers(1, 7), (8, 8))
        if rng.random() < 0.5:  # blocky label maps overlap strongly across levels
            labels = np.kron(rng.integers(0, 4, (4, 4)), np.ones((2, 2), int))
        ids = np.unique(labels)
        levels.append(labels[None] == ids[:, None, None])
    np.testing.assert_array_equal(
        ace_segments.drop_duplicates(levels, threshold=threshold, min_area=0.02),
        _ace_dedupe_loop(levels, threshold, 0.02))


def test_segment_image_partitions_each_resolution():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3)).astype(np.float32)
    image[:, 16:] = [1.0, 0.0, 0.0]
    levels = ace_segments.superpixel_levels(image, (4, 12))
    for masks in levels:
        assert masks.dtype == bool and masks.shape[1:] == (32, 32)
        np.testing.assert_array_equal(masks.sum(0), 1)  # every pixel in exactly one segment
    assert len(levels[1]) > len(levels[0])
    segs = ace_segments.segment_image(image, (4, 12))
    np.testing.assert_array_equal(segs, ace_segments.drop_duplicates(levels))


def test_missing_scikit_image_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"ACE needs scikit-image: pip install ri_jax\[ace\]"):
        ace_segments.superpixel_levels(np.zeros((8, 8, 3)), (2,))


# ---------------------------------------------------------------- patches


def test_patch_grey_outside_and_box_stretched():
    image = np.zeros((8, 8, 3), np.float32)
    image[:, :4] = [1.0, 0.0, 0.0]
    image[:, 4:] = [0.0, 0.0, 1.0]
    # rows 2..5, columns 2..5; the box's top-left 2×2 corner is outside the segment
    mask = _rect(8, 2, 6, 2, 6) & ~_rect(8, 2, 4, 2, 4)
    patch = np.asarray(make_patch(image, mask))
    grey = ace_segments.ACE_FILL
    np.testing.assert_allclose(patch[:3, :3], grey, atol=1e-6)  # the missing corner, stretched ×2
    assert np.allclose(patch[6:, :3], [1.0, 0.0, 0.0], atol=1e-6)  # red half of the box
    assert np.allclose(patch[6:, 5:], [0.0, 0.0, 1.0], atol=1e-6)  # blue half of the box
    # an empty mask is all grey
    np.testing.assert_allclose(make_patch(image, np.zeros((8, 8), bool)), grey)


def _resize_bilinear(a, size):
    """Bilinear resize with half-pixel centres and edge clamping, one output pixel at a time."""
    h, w = a.shape[:2]
    out = np.zeros((size, size, a.shape[2]))
    for i in range(size):
        y = min(max((i + 0.5) * h / size - 0.5, 0.0), h - 1.0)
        for j in range(size):
            x = min(max((j + 0.5) * w / size - 0.5, 0.0), w - 1.0)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * ((1 - dx) * a[y0, x0] + dx * a[y0, x1])
                         + dy * ((1 - dx) * a[y1, x0] + dx * a[y1, x1]))
    return out


def test_resize_reference_matches_jax_convention():
    a = np.random.default_rng(0).random((3, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(_resize_bilinear(a, 7), jax.image.resize(a, (7, 7, 2), "linear"),
                               atol=1e-6)


@SETTINGS
@given(seeds, st.sampled_from([5, 8, 11]))
def test_patch_equals_crop_then_resize(seed, size):
    rng = np.random.default_rng(seed)
    image = rng.random((size, size, 3)).astype(np.float32)
    mask = rng.random((size, size)) < rng.uniform(0.02, 0.6)
    mask[rng.integers(size), rng.integers(size)] = True
    filled = np.where(mask[..., None], image, 0.3)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = filled[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    got = make_patch(image, mask, fill=0.3)
    np.testing.assert_allclose(got, _resize_bilinear(crop, size), atol=1e-5)


# ---------------------------------------------------------------- concept filtering


def _ace_select_loop(assignment, cost, image_numbers, n_images, k, max_imgs, min_imgs):
    """ACE's ``discover_concepts`` cluster filter, transcribed."""
    clusters, members = [], []
    for i in range(k):
        label_idxs = np.where(assignment == i)[0]
        if len(label_idxs) > min_imgs:
            idxs = label_idxs[np.argsort(cost[label_idxs], kind="stable")[:max_imgs]]
            u = len(set(image_numbers[label_idxs]))
            highly_common = u > 0.5 * len(label_idxs)
            cond2 = u > 0.25 * n_images and u > 0.25 * len(label_idxs)
            cond3 = u > 0.1 * len(label_idxs) and u > 0.5 * n_images
            if highly_common or cond2 or cond3:
                clusters.append(i)
                members.append(np.pad(idxs, (0, max_imgs - len(idxs)), constant_values=-1))
    return np.array(clusters, int), np.array(members, int).reshape(-1, max_imgs)


@SETTINGS
@given(seeds, st.integers(1, 6), st.integers(1, 12), st.integers(2, 10), st.integers(0, 8))
def test_select_concepts_matches_ace_loop(seed, k, n_images, max_members, min_members):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 120))
    assignment = rng.integers(0, k, p)
    cost = rng.random(p)
    images = rng.integers(0, n_images, p)
    sel = ace.select_concepts(assignment, cost, images, n_images, num_clusters=k,
                              max_members=max_members, min_members=min_members)
    clusters, members = _ace_select_loop(assignment, cost, images, n_images, k, max_members,
                                         min_members)
    np.testing.assert_array_equal(sel.clusters, clusters)
    np.testing.assert_array_equal(sel.members, members)


# ---------------------------------------------------------------- CAV and TCAV


def _ridge_primal(c, r, ridge):
    x = np.concatenate([c, r]).astype(np.float64)
    y = np.concatenate([np.ones(len(c)), -np.ones(len(r))])
    xc, yc = x - x.mean(0), y - y.mean()
    lam = ridge * (xc ** 2).sum() / len(x)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ yc)
    return w / np.linalg.norm(w)


@SETTINGS
@given(seeds, st.integers(2, 10), st.integers(2, 10), st.sampled_from([1, 4, 16]),
       st.sampled_from([0.01, 0.1, 1.0]))
def test_cav_matches_primal_ridge_and_masked_rows_drop_out(seed, m, n, d, ridge):
    rng = np.random.default_rng(seed)
    c = rng.normal(0.5, 1, (10, d)).astype(np.float32)
    r = rng.normal(-0.5, 1, (10, d)).astype(np.float32)
    c[m:], r[n:] = 1e3, -7.0  # masked rows hold anything; they must not matter
    got = ace.cav(c, r, ridge=ridge, concept_valid=np.arange(10) < m, random_valid=np.arange(10) < n)
    np.testing.assert_allclose(got, _ridge_primal(c[:m], r[:n], ridge), atol=2e-3)


def test_cav_degenerate_is_zero_not_nan():
    same = np.ones((3, 4), np.float32)
    out = np.asarray(ace.cav(same, same))
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    assert float(ace.tcav_score(np.ones((5, 4), np.float32), out)) == 0.0


def _linear_head(params, psi):
    return psi.reshape(psi.shape[0], -1) @ params


@pytest.mark.parametrize("sign,expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_tcav_linear_head_known_answer(sign, expected):
    rng = np.random.default_rng(3)
    shape = (2, 2, 3)
    head = rng.normal(size=(12, 2)).astype(np.float32)
    psis = rng.normal(size=(7,) + shape).astype(np.float32)
    grads = jax.vmap(lambda p: ace.class_gradient(functools.partial(_linear_head, head), p, 1))(psis)
    np.testing.assert_allclose(grads.reshape(7, -1), np.tile(head[:, 1], (7, 1)), atol=1e-6)
    # concept activations lie along ±(class-1 weight) beyond the random ones: separable along it
    v = head[:, 1] / np.linalg.norm(head[:, 1])
    random = rng.normal(size=(20, 12)).astype(np.float32) * 0.1
    concept = rng.normal(size=(20, 12)).astype(np.float32) * 0.1 + sign * 2 * v
    direction = ace.cav(concept, random)
    assert sign * float(direction @ v) > 0.5
    score = ace.tcav_score(grads.reshape(7, -1), direction)
    assert float(score) == expected


def test_tcav_table_matches_loop():
    rng = np.random.default_rng(5)
    k, m, n, r, d = 3, 6, 4, 3, 5
    concept = rng.normal(size=(k, m, d)).astype(np.float32)
    counts = np.array([6, 2, 4])
    randoms = rng.normal(size=(r + 1, n, d)).astype(np.float32)
    grads = rng.normal(size=(9, d)).astype(np.float32)
    table, rnd = ace._tcav_table(concept, counts, randoms, grads, 0.1)
    for i in range(k):
        use = min(counts[i], n)  # balanced: first `use` rows of each side
        for j in range(r):
            want = ace.tcav_score(grads, ace.cav(concept[i, :use], randoms[j + 1, :use], ridge=0.1))
            assert np.isclose(table[i, j], want)
    for j in range(r):
        assert np.isclose(rnd[j], ace.tcav_score(grads, ace.cav(randoms[0], randoms[j + 1],
                                                                ridge=0.1)))


# ---------------------------------------------------------------- t-test


@pytest.mark.parametrize("t,df,p", [
    (2.228139, 10, 0.05), (2.570582, 5, 0.05), (2.845340, 20, 0.01), (1.959964, 1e7, 0.05),
    (12.706205, 1, 0.05), (1.0, 1, 0.5), (0.0, 7, 1.0), (4.302653, 2, 0.05)])
def test_t_p_value_tabulated(t, df, p):
    assert math.isclose(ace.t_two_sided_p(t, df), p, rel_tol=1e-5)
    assert math.isclose(ace.t_two_sided_p(-t, df), p, rel_tol=1e-5)


@SETTINGS
@given(st.floats(-30, 30), st.floats(1.0, 200.0))
@example(5.39021330686136e-08, 1.0)  # tiny |t|: 1 − x must not be taken from a rounded x
def test_t_p_value_closed_forms(t, df):
    p = ace.t_two_sided_p(t, df)
    assert 0.0 <= p <= 1.0
    # exact: df = 1 is Cauchy, df = 2 has p = 1 - |t| / sqrt(2 + t²)
    assert math.isclose(ace.t_two_sided_p(t, 1), 1 - 2 * math.atan(abs(t)) / math.pi, abs_tol=1e-12)
    assert math.isclose(ace.t_two_sided_p(t, 2), 1 - abs(t) / math.sqrt(2 + t * t), abs_tol=1e-12)


@SETTINGS
@given(seeds, st.integers(2, 25), st.integers(2, 25))
def test_welch_matches_scipy(seed, n, m):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 2), n)
    b = rng.normal(rng.uniform(-1, 1), rng.uniform(0.1, 2), m)
    got = ace.welch_t_test(a, b)
    want = stats.ttest_ind(a, b, equal_var=False)
    assert math.isclose(got.t, want.statistic, rel_tol=1e-9)
    assert math.isclose(got.p_value, want.pvalue, rel_tol=1e-7, abs_tol=1e-14)


def test_welch_constant_samples_and_bad_input():
    assert ace.welch_t_test([1.0, 1.0], [1.0, 1.0, 1.0]).p_value == 1.0
    assert ace.welch_t_test([1.0, 1.0], [0.0, 0.0]).p_value == 0.0
    one_constant = ace.welch_t_test([0.5, 0.5, 0.5], [0.1, 0.2, 0.4])
    t = 0.8 / math.sqrt(0.07)  # (0.8/3) / sqrt(var_b / 3) with var_b = 0.07/3
    assert one_constant.t == pytest.approx(t) and one_constant.df == pytest.approx(2.0)
    assert one_constant.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))
    with pytest.raises(ValueError, match="a:"):
        ace.welch_t_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="b:"):
        ace.welch_t_test([1.0, 2.0], [np.nan, 2.0])


# ---------------------------------------------------------------- the 20 % rule


def test_keep_mask_more_than_fraction_in_order():
    a = _rect(10, 0, 2, 0, 10)  # 20 px: exactly 20 %, not more
    b = _rect(10, 5, 6, 0, 1)  # 1 px
    c = _rect(10, 7, 10, 0, 10)  # 30 px
    np.testing.assert_array_equal(ace.ace_keep_mask(np.stack([a, b, c])), a | b)
    np.testing.assert_array_equal(ace.ace_keep_mask(np.stack([c, a, b])), c)  # order matters
    np.testing.assert_array_equal(ace.ace_keep_mask(np.stack([a, a, b])), a | b)  # overlap counts once
    # never more than 20 %: everything is kept
    np.testing.assert_array_equal(ace.ace_keep_mask(np.stack([a, b]), fraction=0.25), a | b)
    assert not ace.ace_keep_mask(np.zeros((0, 10, 10), bool)).any()
    with pytest.raises(ValueError, match="fraction"):
        ace.ace_keep_mask(np.stack([a]), fraction=1.0)
    with pytest.raises(ValueError, match="ordered_segment_masks"):
        ace.ace_keep_mask(a)


@SETTINGS
@given(seeds, st.integers(0, 8), st.sampled_from([0.1, 0.2, 0.5]))
def test_keep_mask_matches_loop(seed, m, fraction):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, 9, 9)) < rng.uniform(0, 0.3, (m, 1, 1))
    keep = np.zeros((9, 9), bool)
    for mask in masks:
        keep |= mask
        if keep.sum() > fraction * keep.size:
            break
    np.testing.assert_array_equal(ace.ace_keep_mask(masks, fraction=fraction), keep)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("field,value", [
    ("n_segments", ()), ("jaccard", 1.5), ("num_concepts", 0), ("repeats", 1), ("ridge", 0.0),
    ("p_value", 1.0), ("max_members", 1), ("fill", -0.1)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        ace.ACEConfig(**{field: value})


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
    fns = make_vgg(cfg)
    params = fns.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 3)).astype(np.float32) * 0.3
    images[:, 8:20, 8:20] += np.array([0.6, 0.1, 0.5], np.float32)  # a shared bright square
    config = ace.ACEConfig(n_segments=(4, 10), num_concepts=4, max_members=8, min_members=2,
                           num_random=8, repeats=4, batch_size=16)
    cache = ace.ACECache()
    result = ace.discover_concepts(as_model(fns, params), images[:6], 1, config,
                                   key=jax.random.key(1),
                                   random_images=images[6:], cache=cache, progress=False)
    return fns, params, images, config, cache, result


def test_discover_concepts_well_formed(tiny):
    fns, params, images, config, cache, result = tiny
    k = len(result.centres)
    c = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2).feature_shape[-1]
    assert k >= 1 and result.centres.shape == (k, c)
    assert result.tcav.shape == (k, config.repeats) and result.random_tcav.shape == (config.repeats,)
    for name in ("centres", "radius", "tcav", "random_tcav", "score", "p_values"):
        assert np.all(np.isfinite(getattr(result, name))), name
    assert np.all((result.tcav >= 0) & (result.tcav <= 1))
    assert np.all((result.p_values >= 0) & (result.p_values <= 1))
    np.testing.assert_array_equal(result.significant, result.p_values < config.p_value)
    np.testing.assert_allclose(result.score, result.tcav.mean(1))
    # significant concepts first, each group by decreasing score
    sig = result.significant
    assert list(sig) == sorted(sig, reverse=True)
    for group in (result.score[sig], result.score[~sig]):
        assert np.all(np.diff(group) <= 0)
    # members point at real segments of the discovery images, within the concept's radius
    segments = [cache.segment(img, config) for img in images[:6]]
    assert result.num_patches == sum(len(s) for s in segments)
    valid = result.member_image >= 0
    np.testing.assert_array_equal(valid, result.member_segment >= 0)
    assert np.all(valid.sum(1) > 0)
    for i, j in zip(result.member_image[valid], result.member_segment[valid]):
        assert j < len(segments[i])


def test_explain_reuses_concepts(tiny):
    fns, params, images, config, cache, result = tiny
    explanations = ace.explain_batch(result, as_model(fns, params), images,
                                     cache=cache)
    assert len(explanations) == len(images)
    for img, ex in zip(images, explanations):
        segs = cache.segment(img, config)
        m = len(ex.segments)
        assert ex.segments.shape == (m, 32, 32) and ex.concept.shape == (m,)
        assert all(any(np.array_equal(s, t) for t in segs) for s in ex.segments)
        assert np.all(result.significant[ex.concept])
        assert np.all(ex.distance <= result.radius[ex.concept] + 1e-6)
        order = np.lexsort((ex.distance, ex.concept))
        np.testing.assert_array_equal(order, np.arange(m))
        np.testing.assert_array_equal(ex.keep, ace.ace_keep_mask(ex.segments))
        assert ex.reached == (ex.keep.mean() > 0.2)
    one = ace.explain_image(result, as_model(fns, params), images[7])
    np.testing.assert_array_equal(one.keep, explanations[7].keep)  # a fresh cache gives the same answer


def test_discover_concepts_rejects_bad_input(tiny):
    fns, params, images, config, cache, _ = tiny
    run = dict(key=jax.random.key(0), cache=cache, progress=False)
    with pytest.raises(ValueError, match="class_idx"):
        ace.discover_concepts(as_model(fns, params), images[:2], 2, config, **run)
    with pytest.raises(ValueError, match="raw_images"):
        ace.discover_concepts(as_model(fns, params), images[:2] * 2, 0, config, **run)
    with pytest.raises(ValueError, match="raw_images"):
        ace.discover_concepts(as_model(fns, params), images[0], 0, config, **run)
    with pytest.raises(ValueError, match="random_images"):
        ace.discover_concepts(as_model(fns, params), images[:2], 0,
                              ace.ACEConfig(n_segments=(2,), num_random=200, min_members=0,
                                            repeats=2, batch_size=16), **run)


def test_no_concepts_gives_empty_explanations(tiny):
    fns, params, images, config, cache, _ = tiny
    strict = ace.ACEConfig(**{**config.__dict__, "min_members": 10_000})
    result = ace.discover_concepts(as_model(fns, params), images[:6], 1, strict,
                                   key=jax.random.key(1),
                                   random_images=images[6:], cache=cache, progress=False)
    assert result.centres.shape[0] == 0 and result.tcav.shape == (0, strict.repeats)
    ex = ace.explain_image(result, as_model(fns, params), images[0],
                     cache=cache)
    assert ex.segments.shape == (0, 32, 32) and not ex.keep.any() and not ex.reached
