"""Deletion / insertion curves, ROAD and AD / AI at several fractions against slow, obvious
references: per image, per step, with sorted pixel lists, SciPy's sparse solver and NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ri_jax import faithfulness as F
from ri_jax import metrics

S, B = 6, 4
RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(size=(S * S * 3, 3)).astype(np.float32)
ranks_jit = jax.jit(F.pixel_ranks)
kept_jit = jax.jit(metrics.kept_pixels, static_argnames="fraction")


def predict(x):
    """A linear 3-class model on the normalised pixels: fast to compile, easy to mirror."""
    return x.reshape(x.shape[0], -1) @ WEIGHTS


def normalize(raw):
    return (raw - 0.4) / 0.3


def probs_np(x):
    logits = np.asarray(x, np.float64).reshape(len(x), -1) @ WEIGHTS.astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ref_order(m):
    """Flat pixel indices, most important first: value descending (NaN last), ties by
    (i · 2654435761) mod 2³²."""
    flat = [(-math.inf if math.isnan(v) else v) for v in np.asarray(m, np.float64).reshape(-1)]
    return sorted(range(len(flat)), key=lambda i: (-flat[i], (i * 2654435761) % 2**32))


@pytest.fixture(scope="module")
def data():
    raw = RNG.random((B, S, S, 3)).astype(np.float32)
    maps = RNG.random((B, S, S)).astype(np.float32)
    maps[0] = 0.0  # flat: the tie rule alone orders it
    maps[1, :3] = 0.0  # half tied
    return raw, maps


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, (5, 5), elements=st.sampled_from([0.0, -0.0, 0.5, 1.0, np.nan, -1.0]))
       | hnp.arrays(np.float32, (4, 4), elements=st.floats(-10, 10, width=32)))
def test_pixel_ranks_follow_kept_pixels(m):
    ranks = np.asarray(ranks_jit(m))
    np.testing.assert_array_equal(np.argsort(ranks.reshape(-1)), ref_order(m))
    for fraction in (0.0, 0.2, 0.5, 1.0):
        kept, _ = kept_jit(m, fraction=fraction)
        np.testing.assert_array_equal(ranks < metrics.num_kept(m.size, fraction), np.asarray(kept))


def test_curve_fractions_and_auc():
    f = F.curve_fractions(0.05)
    assert len(f) == 21 and np.max(np.diff(f)) <= 0.05 + 1e-7
    assert np.max(np.diff(F.curve_fractions(0.3))) <= 0.3  # ceil: 4 steps of 25 %
    np.testing.assert_allclose(F.auc(np.array([1.0, 0.0]), np.array([0.0, 1.0])), 0.5)
    np.testing.assert_allclose(F.auc(np.ones((2, 21)), f), [1.0, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="step"):
        F.curve_fractions(0.0)


def test_deletion_insertion_match_reference(data):
    raw, maps = data
    curves = F.deletion_insertion(predict, normalize, raw, maps, step=0.25, batch_size=3)
    blur = np.asarray(jax.vmap(metrics.fill_image, in_axes=(0, None))(
        jnp.asarray(raw), metrics.make_fill("blur", normalize, S)))
    for b in range(B):
        x, xb = normalize(raw[b]), normalize(blur[b])
        c = int(probs_np(x[None])[0].argmax())
        assert curves.classes[b] == c
        order = ref_order(maps[b])
        for t, f in enumerate(curves.fractions):
            top = np.zeros(S * S, bool)
            top[order[:int(math.floor(f * S * S + 0.5))]] = True
            top = top.reshape(S, S, 1)
            for got, image in ((curves.deletion, np.where(top, 0.0, x)),
                               (curves.insertion_blur, np.where(top, x, xb)),
                               (curves.insertion_mean, np.where(top, x, 0.0))):
                np.testing.assert_allclose(got[b, t], probs_np(image[None])[0, c], atol=2e-5)


def test_keep_fraction_scores_match_masked_scores(data):
    raw, maps = data
    got = F.keep_fraction_scores(predict, normalize, raw, maps, fractions=(0.05, 0.5),
                                 fill="blur", batch_size=3)
    for i, fraction in enumerate((0.05, 0.5)):
        ref = metrics.masked_scores(predict, normalize, jnp.asarray(raw), jnp.asarray(maps),
                                    fraction=fraction, fill="blur")
        np.testing.assert_allclose(got.y_masked[:, i], np.asarray(ref.y_masked), atol=1e-6)
        np.testing.assert_allclose(got.y, np.asarray(ref.y_orig), atol=1e-6)
    drop, increase = F.drop_increase(got.y, got.y_masked)
    assert drop.shape == increase.shape == (B, 2)


def ref_impute(image, removed):
    """pytorch-grad-cam's NoisyLinearImputer (noise 0): a SciPy sparse system per image."""
    h, w, c = image.shape
    flat, gone = image.reshape(-1, c).astype(np.float64), removed.reshape(-1)
    idx = np.flatnonzero(gone)
    var = -np.ones(h * w, int)
    var[idx] = np.arange(len(idx))
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(idx), c))
    total = np.zeros(len(idx))
    for (d0, d1), weight in F.ROAD_NEIGHBOURS:
        for e, p in enumerate(idx):
            r, q = divmod(p, w)
            if 0 <= r + d0 < h and 0 <= q + d1 < w:
                n = (r + d0) * w + q + d1
                total[e] += weight
                if gone[n]:
                    rows.append(e), cols.append(var[n]), vals.append(-weight)
                else:
                    rhs[e] += weight * flat[n]
    rows += list(range(len(idx)))
    cols += list(range(len(idx)))
    vals += list(total)
    a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(idx),) * 2)
    out = flat.copy()
    out[idx] = scipy.sparse.linalg.spsolve(a, rhs).reshape(len(idx), c)
    return out.reshape(h, w, c)


@settings(max_examples=15, deadline=None)
@given(hnp.arrays(bool, (7, 5), elements=st.booleans()), st.integers(0, 2**16))
def test_impute_matches_sparse_solve(removed, seed):
    if removed.all():
        removed[0, 0] = False  # the peer's system is singular without a kept pixel
    image = np.random.default_rng(seed).normal(size=(7, 5, 2)).astype(np.float32)
    got = np.asarray(F.impute(jnp.asarray(image), jnp.asarray(removed)))
    np.testing.assert_allclose(got, ref_impute(image, removed), atol=1e-4)


def test_impute_with_nothing_kept_is_the_mean_colour():
    got = F.impute(jnp.ones((4, 4, 3)), jnp.ones((4, 4), bool))
    np.testing.assert_array_equal(np.asarray(got), 0.0)


@pytest.mark.parametrize("rule", F.ROAD_RULES)
def test_road_matches_reference(data, rule):
    raw, maps = data
    raw, maps = raw[1:], maps[1:]  # a flat map removes everything under "percentile"
    percentiles = (10, 55, 90)
    got = F.road(predict, normalize, raw, maps, percentiles=percentiles, rule=rule, noise=0.0,
                 batch_size=2)
    for b in range(len(raw)):
        x = normalize(raw[b])
        y = probs_np(x[None])[0]
        c = int(y.argmax())
        order = ref_order(maps[b])
        for j, p in enumerate(percentiles):
            for lerf, scores in ((False, got.morf), (True, got.lerf)):
                if rule == "percentile":  # pytorch-grad-cam: keep m < np.percentile(m, p)
                    m = 1 - maps[b] if lerf else maps[b]
                    removed = ~(m < np.percentile(m, p))
                else:
                    count = int(math.floor((1 - p / 100) * S * S + 0.5))
                    removed = np.zeros(S * S, bool)
                    removed[order[S * S - count:] if lerf else order[:count]] = True
                    removed = removed.reshape(S, S)
                after = probs_np(ref_impute(x, removed)[None])[0, c]
                np.testing.assert_allclose(scores[b, j], after - y[c], atol=1e-4)
    np.testing.assert_allclose(got.combined, (got.lerf.mean(1) - got.morf.mean(1)) / 2, atol=1e-7)


def test_road_noise_is_per_image_and_only_on_removed_pixels(data):
    raw, maps = data
    run = lambda bs, noise: F.road(predict, normalize, raw, maps, percentiles=(50,), noise=noise,
                                   key=jax.random.PRNGKey(1), batch_size=bs)
    a, b = run(1, 0.5), run(4, 0.5)
    np.testing.assert_allclose(a.morf, b.morf, atol=1e-6)  # chunking does not change the noise
    assert not np.allclose(a.morf, run(4, 0.0).morf)


def test_curves_figure_draws_every_method_and_checks_lengths(tmp_path):
    from ri_jax.plots import faithfulness_curves_figure

    f = F.curve_fractions(0.25).tolist()
    curve = {"fractions": f, "deletion": [0.9, 0.5, 0.3, 0.2, 0.1],
             "insertion_blur": [0.2, 0.6, 0.8, 0.9, 0.9], "insertion_mean": [0.1] * 5}
    fig = faithfulness_curves_figure({"RI": curve, "Random": curve}, dashed=["Random"],
                                     title="t", path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2]
    assert "RI (0.375)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    with pytest.raises(ValueError, match="expected 5 values"):
        faithfulness_curves_figure({"RI": {**curve, "deletion": [0.1] * 4}})


def test_grey_models_work_in_their_own_input_space(data):
    """A grey model's normalize (luma) gives one channel: curves and ROAD composite and impute
    there, as the model sees it."""
    from ri_jax.model import input_normalizer

    raw, maps = data
    grey = input_normalizer((0.5,), (0.25,), channels=1)
    weights = RNG.normal(size=(S * S, 2)).astype(np.float32)
    predict_grey = lambda x: x.reshape(x.shape[0], -1) @ weights
    curves = F.deletion_insertion(predict_grey, grey, raw, maps, step=0.5, batch_size=4)
    road = F.road(predict_grey, grey, raw, maps, percentiles=(50,), batch_size=4)
    assert curves.deletion.shape == (B, 3) and np.all(np.isfinite(road.combined))
    np.testing.assert_allclose(curves.deletion[:, -1], curves.insertion_mean[:, 0], atol=1e-6)
