"""CAM baselines against direct loop implementations on a tiny VGG."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ri_jax import baselines
from ri_jax.heatmaps import upsample
from ri_jax.models import ModelConfig, make_vgg

SIZE = 32
CFG = ModelConfig(arch="vgg11", width=1 / 16, image_size=SIZE, num_classes=2)
FNS = make_vgg(CFG)


def random_params(seed):
    """He-normal weights and small random biases of the right shapes (cheaper than compiling ``init``)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "bias":
            return jnp.asarray(0.05 * rng.normal(size=leaf.shape), jnp.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(FNS.init, jax.random.key(0)))


@pytest.fixture(scope="module")
def model():
    params = random_params(0)
    raw = np.random.default_rng(1).random((3, SIZE, SIZE, 3), dtype=np.float32)
    psi = jax.jit(FNS.features)(params, FNS.normalize(raw))
    head = jax.jit(FNS.head)
    apply = jax.jit(FNS.apply)
    return params, raw, psi, (lambda q: head(params, q)), (lambda x: apply(params, x))


def np_head(params, psi):
    """The tiny model's G in float64 NumPy: 2×2 max-pool, channels-last flatten, three FC layers."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()} for k, layer in params["params"].items()}
    h, w, c = psi.shape
    x = np.asarray(psi, np.float64).reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3)).reshape(-1)
    x = np.maximum(x @ p["fc_0"]["kernel"] + p["fc_0"]["bias"], 0)
    x = np.maximum(x @ p["fc_1"]["kernel"] + p["fc_1"]["bias"], 0)
    return x @ p["fc_2"]["kernel"] + p["fc_2"]["bias"]


def np_gradcam(grads):
    h, w, c = grads.shape
    alpha = np.zeros(c)
    for k in range(c):
        for i in range(h):
            for j in range(w):
                alpha[k] += grads[i, j, k] / (h * w)
    return alpha


def np_gradcam_pp(grads, psi):
    h, w, c = grads.shape
    alpha = np.zeros(c)
    for k in range(c):
        total = sum(psi[i, j, k] for i in range(h) for j in range(w))
        for i in range(h):
            for j in range(w):
                g = grads[i, j, k]
                denom = 2 * g ** 2 + total * g ** 3
                a = g ** 2 / denom if denom != 0 else 0.0
                alpha[k] += a * max(g, 0.0)
    return alpha


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def np_minmax(m):
    m = np.asarray(m, np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def np_align_corners(m, size):
    """Bilinear upsampling with corner samples aligned (torch ``align_corners=True``), pixel by pixel."""
    m = np.asarray(m, np.float64)
    h, w = m.shape
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            sy = y * (h - 1) / (size - 1) if size > 1 else 0.0
            sx = x * (w - 1) / (size - 1) if size > 1 else 0.0
            y0, x0 = min(int(sy), max(h - 2, 0)), min(int(sx), max(w - 2, 0))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * m[y0, x0] + (1 - fy) * fx * m[y0, x1]
                         + fy * (1 - fx) * m[y1, x0] + fy * fx * m[y1, x1])
    return out


def np_scorecam(forward, raw, psi, class_idx, score="probability", masked_input="raw",
                mask_upsampling="half_pixel"):
    scores = []
    for k in range(psi.shape[-1]):
        up = (upsample(psi[:, :, k], SIZE) if mask_upsampling == "half_pixel"
              else np_align_corners(psi[:, :, k], SIZE))
        mask = np_minmax(up)
        if masked_input == "raw":
            inputs = FNS.normalize(jnp.asarray(np.asarray(raw) * mask[..., None], jnp.float32))
        else:
            inputs = jnp.asarray(np.asarray(FNS.normalize(raw)) * mask[..., None], jnp.float32)
        logits = forward(inputs[None])[0]
        scores.append(np_softmax(logits)[class_idx] if score == "probability" else float(logits[class_idx]))
    return np.asarray(scores), np_softmax(scores)


def np_heatmap(alpha, psi):
    raw = np.maximum(np.einsum("hwc,c->hw", np.asarray(psi, np.float64), np.asarray(alpha, np.float64)), 0)
    return np_minmax(upsample(jnp.asarray(raw, jnp.float32), SIZE))


def test_model_is_non_trivial(model):
    params, raw, psi, head, _ = model
    logits = head(psi)
    assert np.ptp(np.asarray(logits[:, 0])) > 1e-3
    grads = baselines.class_score_grad(head, psi[0], 0)
    assert np.count_nonzero(np.asarray(grads)) > 10


def test_grad_matches_finite_differences(model):
    params, _, psi, head, _ = model
    # Distinct positive values: no max-pool ties, so the float64 central difference is exact up to rounding.
    psi_x = np.random.default_rng(7).uniform(0.5, 2.0, psi.shape[1:]).astype(np.float32)
    for c in range(2):
        grads = np.asarray(baselines.class_score_grad(head, psi_x, c))
        base = np.asarray(psi_x, np.float64)
        fd = np.zeros_like(base)
        eps = 1e-5
        for idx in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[idx] += eps
            down[idx] -= eps
            fd[idx] = (np_head(params, up)[c] - np_head(params, down)[c]) / (2 * eps)
        np.testing.assert_allclose(grads, fd, atol=1e-5 * np.abs(fd).max() + 1e-6)


@pytest.mark.parametrize("image", [0, 1, 2])
@pytest.mark.parametrize("c", [0, 1])
def test_weights_match_loops(model, image, c):
    _, _, psi, head, _ = model
    grads = np.asarray(jax.jacrev(lambda q: head(q[None])[0])(psi[image])[c], np.float64)
    alpha = baselines.gradcam_weights(head, psi[image], c)
    np.testing.assert_allclose(alpha, np_gradcam(grads), rtol=1e-5, atol=1e-7)
    alpha_pp = baselines.gradcam_pp_weights(head, psi[image], c)
    assert np.count_nonzero(np.asarray(alpha_pp)) > 0
    np.testing.assert_allclose(alpha_pp, np_gradcam_pp(grads, np.asarray(psi[image], np.float64)),
                               rtol=1e-5, atol=1e-7)


# Values from small sets so that zero gradients and zero Grad-CAM++ denominators (2 + ΣA·g = 0) occur.
_grads = hnp.arrays(np.float32, (2, 2, 3), elements=st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]))
_psis = hnp.arrays(np.float32, (2, 2, 3), elements=st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]))


@settings(max_examples=60, deadline=None)
@given(weights=_grads, psi=_psis)
def test_weight_formulas_on_linear_heads(weights, psi):
    # A linear class score has gradient exactly `weights`, so the formulas are checked on arbitrary gradients.
    def head(q):
        return jnp.stack([jnp.einsum("bhwc,hwc->b", q, weights), jnp.zeros(q.shape[0])], axis=1)

    np.testing.assert_allclose(baselines.gradcam_weights(head, psi, 0), np_gradcam(weights.astype(np.float64)),
                               rtol=1e-6, atol=1e-7)
    alpha_pp = baselines.gradcam_pp_weights(head, psi, 0)
    assert np.all(np.isfinite(alpha_pp))
    # atol 1e-6: where a weight cancels to 0, float32 keeps an ulp or two of its O(1) terms
    # (1.2e-7 seen against float64's exact 0).
    np.testing.assert_allclose(alpha_pp, np_gradcam_pp(weights.astype(np.float64), psi.astype(np.float64)),
                               rtol=1e-6, atol=1e-6)


def test_grad_batches_match_single(model):
    _, _, psi, head, _ = model
    classes = jnp.array([0, 1, 1])
    for single, batch in [(baselines.gradcam_weights, baselines.gradcam_weights_batch),
                          (baselines.gradcam_pp_weights, baselines.gradcam_pp_weights_batch)]:
        got = batch(head, psi, classes)
        chex.assert_shape(got, (3, psi.shape[-1]))
        for i in range(3):
            np.testing.assert_allclose(got[i], single(head, psi[i], int(classes[i])), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [5, 32, 100, None])
def test_scorecam_matches_channel_loop(model, chunk_size):
    params, raw, psi, _, forward = model
    scores_ref, alpha_ref = np_scorecam(forward, raw[0], psi[0], 1)
    assert np.ptp(scores_ref) > 1e-4  # the masks change the score, so the weights are informative
    scores = baselines.scorecam_scores(forward, FNS.normalize, raw[0], psi[0], 1, chunk_size=chunk_size)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-4, atol=1e-6)
    alpha = baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], 1, chunk_size=chunk_size)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("options", [{"score": "logit"}, {"masked_input": "normalised"},
                                     {"mask_upsampling": "align_corners"},
                                     {"score": "logit", "masked_input": "normalised",
                                      "mask_upsampling": "align_corners"}])
def test_scorecam_options_match_channel_loop(model, options):
    params, raw, psi, _, forward = model
    scores_ref, alpha_ref = np_scorecam(forward, raw[0], psi[0], 1, **options)
    scores = baselines.scorecam_scores(forward, FNS.normalize, raw[0], psi[0], 1, chunk_size=16, **options)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-4, atol=1e-6)
    alpha = baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], 1, chunk_size=16, **options)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-4, atol=1e-7)
    default = baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], 1, chunk_size=16)
    assert not np.allclose(alpha, default, rtol=1e-3, atol=1e-6)  # each option changes the weights
    batch = baselines.scorecam_weights_batch(forward, FNS.normalize, raw[:2], psi[:2], jnp.array([1, 0]),
                                             chunk_size=16, **options)
    np.testing.assert_allclose(batch[0], alpha, rtol=1e-5, atol=1e-8)


@given(channels=st.integers(1, 4096), size=st.integers(1, 4096))
def test_default_scorecam_chunks_fit_the_budget_in_the_fewest_even_passes(channels, size):
    chunk = baselines.scorecam_chunk_size(channels, size)
    budget = baselines.scorecam.MASKED_PIXELS_PER_PASS
    passes = -(-channels // chunk)
    assert 1 <= chunk <= channels
    assert chunk * size**2 <= budget or chunk == 1  # one image per pass when one is too big
    cap = max(1, budget // size**2)
    assert passes == -(-channels // cap)  # no more passes than the budget needs
    assert passes * chunk - channels < passes  # padding: less than one channel per pass


def test_default_scorecam_chunks_of_the_embedded_and_the_paper_models():
    assert baselines.scorecam_chunk_size(64, 96) == 64  # the embedded model: one pass
    assert baselines.scorecam_chunk_size(512, 224) == 40  # VGG-19 at 224 px: 13 passes of 40


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), size=st.integers(1, 13), seed=st.integers(0, 2**16))
def test_align_corners_mask_matches_pixel_loop(h, w, size, seed):
    channel = np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32)
    got = baselines.scorecam_mask(jnp.asarray(channel), size, mask_upsampling="align_corners")
    np.testing.assert_allclose(got, np_minmax(np_align_corners(channel, size)), atol=1e-5)


def test_scorecam_jit_and_batch(model):
    params, raw, psi, _, forward = model

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batch_weights(params, raw, psi, classes):
        return baselines.scorecam_weights_batch(lambda x: FNS.apply(params, x), FNS.normalize, raw, psi,
                                                classes, chunk_size=8)

    classes = jnp.array([1, 0, 1])
    got = batch_weights(params, raw, psi, classes)
    chex.assert_shape(got, (3, psi.shape[-1]))
    for i in range(3):
        _, ref = np_scorecam(forward, raw[i], psi[i], int(classes[i]))
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-7)
    batch_weights(params, raw[::-1], psi[::-1], classes)  # same shapes: no retrace


def test_scorecam_constant_channels_give_black_masks(model):
    _, raw, psi, _, forward = model
    psi_x = np.array(psi[0])
    psi_x[:, :, 0] = 0.0
    psi_x[:, :, 1] = 3.0
    assert not np.any(baselines.scorecam_mask(jnp.asarray(psi_x[:, :, 1]), SIZE))
    scores = baselines.scorecam_scores(forward, FNS.normalize, raw[0], jnp.asarray(psi_x), 0, chunk_size=7)
    alpha = baselines.scorecam_weights(forward, FNS.normalize, raw[0], jnp.asarray(psi_x), 0, chunk_size=7)
    assert np.all(np.isfinite(scores)) and np.all(np.isfinite(alpha))
    black = np_softmax(forward(FNS.normalize(jnp.zeros((1, SIZE, SIZE, 3))))[0])[0]
    np.testing.assert_allclose(scores[:2], [black, black], rtol=1e-5)
    np.testing.assert_allclose(np.sum(alpha), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "scorecam"])
def test_weights_from_a_reused_on_b(model, method):
    _, raw, psi, head, forward = model

    def weights(i):
        if method == "scorecam":
            return baselines.scorecam_weights(forward, FNS.normalize, raw[i], psi[i], 0)
        fn = baselines.gradcam_weights if method == "gradcam" else baselines.gradcam_pp_weights
        return fn(head, psi[i], 0)

    alpha_a, alpha_b = weights(0), weights(1)
    on_b = baselines.heatmap(alpha_a, psi[1], SIZE)
    chex.assert_shape(on_b, (SIZE, SIZE))
    np.testing.assert_allclose(on_b, np_heatmap(alpha_a, psi[1]), atol=1e-5)
    # Reuse is not a no-op: B's own weights draw another map.
    assert not np.allclose(on_b, baselines.heatmap(alpha_b, psi[1], SIZE), atol=1e-3)
    many = jax.vmap(baselines.heatmap, in_axes=(None, 0, None))(alpha_a, psi, SIZE)
    np.testing.assert_allclose(many[1], on_b, atol=1e-5)


def test_bad_inputs_raise(model):
    _, raw, psi, head, forward = model
    with pytest.raises(ValueError, match="psi"):
        baselines.gradcam_weights(head, psi, 0)
    with pytest.raises(ValueError, match="class_idx"):
        baselines.gradcam_pp_weights(head, psi[0], 2)
    with pytest.raises(ValueError, match="class_idx"):
        baselines.gradcam_weights(head, psi[0], 0.5)
    with pytest.raises(ValueError, match="class_idx"):
        baselines.gradcam_weights_batch(head, psi, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="psis"):
        baselines.gradcam_weights_batch(head, psi[0], jnp.array([0, 1]))
    with pytest.raises(ValueError, match="chunk_size"):
        baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], 0, chunk_size=0)
    with pytest.raises(ValueError, match="raw_image"):
        baselines.scorecam_weights(forward, FNS.normalize, raw[0, :, :, :2], psi[0], 0)
    with pytest.raises(ValueError, match="class_idx"):
        baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], -1)
    with pytest.raises(ValueError, match="psis"):
        baselines.scorecam_weights_batch(forward, FNS.normalize, raw, psi[:2], jnp.array([0, 1, 0]))
    for option in ("score", "masked_input", "mask_upsampling"):
        with pytest.raises(ValueError, match=option):
            baselines.scorecam_weights(forward, FNS.normalize, raw[0], psi[0], 0, **{option: "other"})
        with pytest.raises(ValueError, match=option):
            baselines.scorecam_weights_batch(forward, FNS.normalize, raw, psi, jnp.array([0, 1, 0]),
                                             **{option: "other"})
