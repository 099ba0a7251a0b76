"""Faithfulness measures that do not rest on one fill: deletion / insertion curves, ROAD, AD / AI
at several keep fractions.

AD / AI (``ri_jax.metrics``) keep one share of the pixels and paint the rest with a flat
fill, which the model reads as evidence of its own (``metrics.fill_prior``). The measures
here are the field's answers to that:

* **Deletion and insertion curves** (Petsiuk et al., RISE, BMVC 2018). The probability of
  the class c the model predicts on the intact image as the map's pixels are removed
  (deletion) or revealed (insertion), most important first, in steps of ``step`` of the
  pixels (default 5 %, 21 points from 0 to 100 %). Deletion replaces removed pixels by
  the normalisation's mean colour (0 after normalisation, RISE's zero substrate);
  insertion starts from the image under the strong blur of ``metrics`` ("blur", RISE's
  substrate) and, separately, from the mean colour. ``auc`` is the trapezoidal area
  under a curve over the fraction axis [0, 1]: deletion lower is better, insertion
  higher is better.
* **ROAD** (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML 2022), as pytorch-grad-cam 1.5.7 computes it (``pytorch_grad_cam/metrics/
  road.py``). At percentile p, most-relevant-first (MoRF) removes the pixels at or above
  the map's p-th percentile, least-relevant-first (LeRF) those at or below its (100 − p)-th
  (the peer thresholds ``1 − map``); removed pixels are *imputed* by noisy linear
  imputation — each removed pixel the weighted mean of its 8 neighbours (1/6 for edge,
  1/12 for corner neighbours), a sparse linear system over the removed pixels, plus
  ``noise`` · N(0, 1) — on the normalised image. The score is p_c(imputed) − p_c(intact);
  ``ROADCombined`` = (mean LeRF − mean MoRF) / 2 over the percentiles (higher is better).
* **AD / AI at several keep fractions** (``KEEP_FRACTIONS``), the paper's metric with the
  cut moved.

Which pixels go first: ``pixel_ranks`` orders each map exactly as ``metrics.kept_pixels``
does (highest first, NaN last, ties in ``metrics.tie_priority`` order), so the top k of a
curve step are the k pixels AD / AI would keep, and every step removes exactly
``metrics.num_kept(S², f)`` pixels. ROAD's ``rule="exact"`` removes the same counted pixels;
``rule="percentile"`` is pytorch-grad-cam's threshold (strict ``map < np.percentile``, so
every pixel tied at the threshold is removed), which the peer check uses.

The imputation is solved in JAX, not with SciPy, by conjugate gradients on the masked
9-point Laplacian (``impute``): the system is symmetric positive definite wherever a
removed region touches a kept pixel, the matrix is a fixed 3 × 3 stencil (no sparse
matrix is built), and every image, percentile and order is solved in one batched,
compiled program next to the forward passes, with no host round trip per image. The
peer builds a SciPy sparse matrix per image and factorises it (``spsolve``, float64);
CG comes within ~5e-6 of that solution on the normalised pixels at 96 px in a few
hundred stencil passes, because the stencil is applied as differences x_i − x_j, which
are exact on smooth fields (s_i x_i − Σ w_ij x_j would cancel, leaving ~3e-4). A removed
region with no kept pixel in reach has no defined imputation (the peer's matrix is
singular there and SciPy returns NaN); CG leaves it at 0, the mean colour. On 2 CPU cores
CG costs what SciPy does (15 vs 14 ms per imputation at 96 px,
``benchmarks/results/faithfulness.json``): JAX is chosen for keeping the solve inside the
batched, compiled program (no per-image host loop, and on an accelerator it runs beside
the forward passes), not for raw CPU speed.

Everything takes ``predict(normalised images [n, S, S, C]) -> logits [n, K]`` and
``normalize(raw [..., S, S, 3]) -> [..., S, S, C]``, which must act pixel by pixel (as
every ``ri_jax.Model``'s does), so any model fits; images are raw RGB in [0, 1]. Pass
the same ``predict`` object to every call: programs are compiled once per (``predict``,
shape) and reused.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.metrics import Fill, _sort_keys, fill_image, make_fill, num_kept, tie_priority

Array = jax.Array
PredictFn = Callable[[Array], Array]
NormalizeFn = Callable[[Array], Array]

CURVE_STEP = 0.05  # at most 5 % of the pixels per step: 21 points from 0 to 100 %
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's default
KEEP_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
ROAD_NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default, in normalised units
ROAD_RULES = ("exact", "percentile")
# pytorch-grad-cam's neighbour weights: ((row offset, column offset), weight).
ROAD_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                   ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
CG_TOL = 1e-7  # relative residual: ~5e-6 from the exact (float64) pixels at 96 px


class Curves(NamedTuple):
    """Deletion and insertion curves, one row per image.

    Attributes:
      fractions: float32[T + 1] share of pixels removed (deletion) or revealed (insertion).
      deletion: float32[B, T + 1] p_c with the top share replaced by the mean colour.
      insertion_blur: float32[B, T + 1] p_c with only the top share shown over the blurred image.
      insertion_mean: float32[B, T + 1] p_c with only the top share shown over the mean colour.
      classes: int32[B] c, the class predicted on each intact image.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion_blur: np.ndarray
    insertion_mean: np.ndarray
    classes: np.ndarray


class RoadScores(NamedTuple):
    """ROAD scores p_c(imputed) − p_c(intact) per image and percentile.

    Attributes:
      percentiles: the percentiles p.
      morf: float32[B, P] most relevant first (pixels at or above the p-th percentile removed).
      lerf: float32[B, P] least relevant first (pixels at or below the (100 − p)-th removed).
      combined: float32[B] (mean over p of lerf − mean over p of morf) / 2, as ``ROADCombined``.
      classes: int32[B] c.
    """

    percentiles: tuple
    morf: np.ndarray
    lerf: np.ndarray
    combined: np.ndarray
    classes: np.ndarray


class KeepScores(NamedTuple):
    """Y_c before and after keeping each fraction of the pixels (the rest filled).

    Attributes:
      fractions: the keep fractions.
      y: float32[B] p_c on the intact images.
      y_masked: float32[B, F] p_c keeping each fraction.
      classes: int32[B] c.
    """

    fractions: tuple
    y: np.ndarray
    y_masked: np.ndarray
    classes: np.ndarray


# ------------------------------------------------------------------ pixel order


def pixel_ranks(heatmap: Array) -> Array:
    """Each pixel's place in the keep order of ``metrics.kept_pixels`` (0 = kept first).

    ``pixel_ranks(m) < k`` is ``kept_pixels(m, f)``'s mask for k = ``num_kept(S², f)``:
    highest values first, NaN last, −0 tied with 0, ties in ``tie_priority`` order.

    Args:
      heatmap: [S, S] importance map.

    Returns:
      int32[S, S], a permutation of 0 … S² − 1.
    """
    if jnp.ndim(heatmap) != 2:
        raise ValueError(f"heatmap: expected one map [S, S], got shape {jnp.shape(heatmap)}")
    n = heatmap.size
    keys = _sort_keys(jnp.asarray(heatmap).reshape(-1))
    place = np.argsort(tie_priority(n)).astype(np.int32)  # pixel -> place in the tie order
    order = jnp.lexsort((jnp.asarray(place), ~keys))  # primary: value descending
    return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32)).reshape(heatmap.shape)


def curve_fractions(step: float = CURVE_STEP) -> np.ndarray:
    """float32[T + 1] the fractions 0, 1/T, …, 1 with T = ceil(1 / step), so no step exceeds ``step``."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ValueError(f"step: must be a share of the pixels in (0, 1], got {step!r}")
    steps = math.ceil(1 / step - 1e-9)
    return (np.arange(steps + 1) / steps).astype(np.float32)


def auc(curve: Array, fractions: Array) -> np.ndarray:
    """Trapezoidal area under curves over the fraction axis.

    Args:
      curve: float[..., T + 1] values at ``fractions``.
      fractions: float[T + 1] increasing, from 0 to 1.

    Returns:
      float[...] the areas (in [0, 1] for probabilities).
    """
    curve, fractions = np.asarray(curve, np.float64), np.asarray(fractions, np.float64)
    widths = np.diff(fractions)
    return np.sum(widths * (curve[..., 1:] + curve[..., :-1]) / 2, axis=-1)


# ------------------------------------------------------------------ shared steps


def _check(raw: Array, heatmaps: Array, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    raw, heatmaps = np.asarray(raw, np.float32), np.asarray(heatmaps, np.float32)
    if raw.ndim != 4 or raw.shape[-1] != 3 or raw.shape[0] == 0:
        raise ValueError(f"raw: expected a non-empty batch [B, S, S, 3], got shape {raw.shape}")
    if heatmaps.shape != raw.shape[:3]:
        raise ValueError(f"heatmaps: expected shape {raw.shape[:3]}, got {heatmaps.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    return raw, heatmaps


def _class_probability(predict: PredictFn, images: Array, classes: Array) -> Array:
    """float32[b] softmax probability of ``classes`` [b] on normalised ``images``."""
    probs = jax.nn.softmax(predict(images).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0]


def _chunks(fn: Callable, arrays: tuple, batch_size: int):
    """``fn`` on fixed-size chunks of ``arrays`` (last one padded by repeating row 0), concatenated.

    Repeating a real row rather than zeros keeps padded maps and images ordinary, so the
    padding never slows a while-loop (CG) or produces NaN; padded rows are cut off.
    """
    n = len(arrays[0])
    size = min(batch_size, n)
    pad = -n % size
    padded = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) if pad else a for a in arrays]
    outs = [jax.device_get(fn(*(a[s:s + size] for a in padded))) for s in range(0, n + pad, size)]
    # Outputs have the image axis last ([b] or [variants, b]).
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=-1)[..., :n], *outs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _intact(predict: PredictFn, normalize: NormalizeFn, raw: Array) -> tuple[Array, Array]:
    probs = jax.nn.softmax(predict(normalize(raw)).astype(jnp.float32), axis=-1)
    classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0], classes


def _classes(predict, normalize, raw, classes, batch_size) -> np.ndarray:
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape != raw.shape[:1] or not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"classes: expected int[{len(raw)}], got {classes.dtype}{list(classes.shape)}")
        return classes.astype(np.int32)
    y, c = _chunks(lambda r: _intact(predict, normalize, r), (raw,), batch_size)
    return c


# ------------------------------------------------------------------ deletion / insertion


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _curves_chunk(predict, normalize, counts: tuple, raw, heatmaps, classes, blur: Fill):
    ranks = jax.vmap(pixel_ranks)(heatmaps)
    x = normalize(raw)
    blurred = normalize(jax.vmap(fill_image, in_axes=(0, None))(raw, blur))
    zero = jnp.zeros_like(x)  # the mean colour, after normalisation
    steps = len(counts)
    counts = jnp.asarray(counts, jnp.int32)

    def variant(v):  # v = kind · (T + 1) + t: one forward pass of the b images
        kind, t = v // steps, v % steps
        top = (ranks < counts[t])[..., None]
        deleted = jnp.where(top, zero, x)
        inserted = jnp.where(top, x, jnp.where(kind == 1, blurred, zero))
        return _class_probability(predict, jnp.where(kind == 0, deleted, inserted), classes)

    return jax.lax.map(variant, jnp.arange(3 * steps))  # [3 (T + 1), b]


def deletion_insertion(predict: PredictFn, normalize: NormalizeFn, raw: Array, heatmaps: Array, *,
                       classes: Array | None = None, step: float = CURVE_STEP,
                       blur_sigma: float | None = None, batch_size: int = 32) -> Curves:
    """Deletion and insertion curves of heat maps on their images (RISE).

    Step t removes (deletion) or reveals (insertion) the top ``num_kept(S², t / T)`` pixels
    of ``pixel_ranks``; a forward pass sees ``batch_size`` images, and one compiled program
    runs all 3 (T + 1) passes of a chunk (``lax.map``).

    Args:
      predict: ``predict(normalised [n, S, S, C]) -> logits [n, K]``.
      normalize: raw [..., S, S, 3] -> normalised, pixel by pixel.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      heatmaps: float32[B, S, S] maps on those images.
      classes: optional int[B] class scored per image (default: predicted on the intact image).
      step: largest share of pixels per step.
      blur_sigma: σ in pixels of the insertion substrate (default ``metrics.BLUR_SIGMA_FRACTION`` · S).
      batch_size: images per chunk.

    Returns:
      ``Curves``.
    """
    raw, heatmaps = _check(raw, heatmaps, batch_size)
    fractions = curve_fractions(step)
    n = heatmaps[0].size
    counts = tuple(num_kept(n, float(f)) for f in fractions)
    classes = _classes(predict, normalize, raw, classes, batch_size)
    blur = make_fill("blur", normalize, raw.shape[1], sigma=blur_sigma)
    out = _chunks(lambda r, h, c: _curves_chunk(predict, normalize, counts, r, h, c, blur),
                  (raw, heatmaps, classes), batch_size)
    deletion, ins_blur, ins_mean = np.split(out.T, 3, axis=1)
    return Curves(fractions=fractions, deletion=deletion, insertion_blur=ins_blur,
                  insertion_mean=ins_mean, classes=classes)


# ------------------------------------------------------------------ AD / AI at several fractions


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _keep_chunk(predict, normalize, counts: tuple, raw, heatmaps, classes, fill: Fill):
    ranks = jax.vmap(pixel_ranks)(heatmaps)
    painted = jax.vmap(fill_image, in_axes=(0, None))(raw, fill)
    counts = jnp.asarray(counts, jnp.int32)

    def keep(k):
        masked = jnp.where((ranks < k)[..., None], raw, painted)
        return _class_probability(predict, normalize(masked), classes)

    return jax.lax.map(keep, counts)  # [F, b]


def keep_fraction_scores(predict: PredictFn, normalize: NormalizeFn, raw: Array, heatmaps: Array, *,
                         fractions: Sequence[float] = KEEP_FRACTIONS, fill: str = "black",
                         blur_sigma: float | None = None, classes: Array | None = None,
                         batch_size: int = 32) -> KeepScores:
    """Y_c before and after keeping each map's top ``fractions`` of pixels (AD / AI's masking).

    The kept pixels are ``metrics.kept_pixels``' (``pixel_ranks`` < k); the rest get ``fill``
    (``metrics.make_fill``). ``metrics.average_drop`` / ``average_increase`` of ``y`` and a
    column of ``y_masked`` give AD / AI at that fraction.

    Args:
      predict, normalize: the model, as in ``deletion_insertion``.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      heatmaps: float32[B, S, S] maps.
      fractions: keep fractions in [0, 1].
      fill: one of ``metrics.FILLS``.
      blur_sigma: σ of the "blur" fill.
      classes: optional int[B] class scored (default: predicted on the intact image).
      batch_size: images per chunk.

    Returns:
      ``KeepScores``.
    """
    raw, heatmaps = _check(raw, heatmaps, batch_size)
    fractions = tuple(float(f) for f in fractions)
    counts = tuple(num_kept(heatmaps[0].size, f) for f in fractions)
    y, predicted = _chunks(lambda r: _intact(predict, normalize, r), (raw,), batch_size)
    classes = predicted if classes is None else _classes(predict, normalize, raw, classes, batch_size)
    if not np.array_equal(classes, predicted):  # Y_c of a class other than the prediction
        y = _chunks(lambda r, c: _class_probability(predict, normalize(jnp.asarray(r)), c),
                    (raw, classes), batch_size)
    painter = make_fill(fill, normalize, raw.shape[1], sigma=blur_sigma)
    masked = _chunks(lambda r, h, c: _keep_chunk(predict, normalize, counts, r, h, c, painter),
                     (raw, heatmaps, classes), batch_size)
    return KeepScores(fractions=fractions, y=y, y_masked=masked.T, classes=classes)


def drop_increase(y: np.ndarray, y_masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image and fraction: AD's term max(0, Y − Y′)/Y (0 where Y = 0) and AI's Y < Y′.

    Args:
      y: float[B].
      y_masked: float[B, F].

    Returns:
      ``(float[B, F], bool[B, F])``.
    """
    y = np.asarray(y, np.float64)[:, None]
    y_masked = np.asarray(y_masked, np.float64)
    drop = np.where(y > 0, np.maximum(y - y_masked, 0.0) / np.where(y > 0, y, 1.0), 0.0)
    return drop, y < y_masked


# ------------------------------------------------------------------ ROAD


def _neighbour_sum(x: Array, *, minus: Array | None = None, valid: Array | None = None) -> Array:
    """Σ over the 8 neighbours j of pixel i of w · x_j for x [S, S, ...], 0 beyond the border;
    with ``minus`` and ``valid`` (ones [S, S, 1]), Σ_j w · (x_i − minus_j) over in-image j."""
    s0, s1 = x.shape[:2]
    pad = lambda a: jnp.pad(a, ((1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 2))
    at = lambda a, d0, d1: pad(a)[1 + d0:1 + d0 + s0, 1 + d1:1 + d1 + s1]
    if minus is None:
        return sum(w * at(x, d0, d1) for (d0, d1), w in ROAD_NEIGHBOURS)
    return sum(w * at(valid, d0, d1) * (x - at(minus, d0, d1)) for (d0, d1), w in ROAD_NEIGHBOURS)


def impute(image: Array, removed: Array, *, max_iterations: int | None = None) -> Array:
    """Linear imputation of ROAD (pytorch-grad-cam's ``NoisyLinearImputer`` without the noise).

    Every removed pixel i becomes the weighted mean of its in-image neighbours j,
    s_i x_i − Σ_j w_ij x_j = 0 with s_i = Σ_j w_ij, kept neighbours fixed at ``image``.
    Over the removed pixels this is (S − W) x = W_kept · image, symmetric and positive
    definite where each removed region touches a kept pixel; conjugate gradients solve
    it with the stencil applied matrix-free.

    Args:
      image: float[S, S, C] (normalised: the peer imputes the model's input).
      removed: bool[S, S] pixels to impute.
      max_iterations: CG cap (default 10 · S).

    Returns:
      float[S, S, C]: ``image`` on kept pixels, the imputation on removed ones (0 on a
      removed region with no kept pixel in reach).
    """
    u = removed.astype(image.dtype)[..., None]
    rhs = u * _neighbour_sum((1 - u) * image)
    inside = jnp.ones(image.shape[:2] + (1,), image.dtype)

    def operator(x):
        # Σ_j w_ij (x_i − u_j x_j) over in-image neighbours, as differences: on the smooth
        # fields CG works with, x_i − x_j is exact in float32, where s_i x_i − Σ_j w_ij x_j
        # would cancel and lose the digits the solution's low modes need.
        ux = u * x
        return u * _neighbour_sum(x, minus=ux, valid=inside)
    cap = 10 * image.shape[0] if max_iterations is None else max_iterations
    x, _ = jax.scipy.sparse.linalg.cg(operator, rhs, x0=jnp.zeros_like(image), tol=CG_TOL,
                                      maxiter=cap)
    return jnp.where(u > 0, x, image)


def road_removed(heatmap: Array, percentile: float, *, least_relevant: bool,
                 rule: str = "exact") -> Array:
    """bool[S, S] the pixels ROAD removes at one percentile.

    Args:
      heatmap: [S, S] map.
      percentile: p in [0, 100].
      least_relevant: LeRF (remove the least relevant) instead of MoRF.
      rule: ``"exact"``: remove exactly ``num_kept(S², 1 − p/100)`` pixels, the top of
        ``pixel_ranks`` (MoRF) or its bottom (LeRF), ties by the project's tie rule;
        ``"percentile"``: pytorch-grad-cam's, keep ``m < np.percentile(m, p)`` with m the map
        (MoRF) or 1 − map (LeRF), so every pixel tied at the threshold is removed.

    Returns:
      bool[S, S].
    """
    if rule == "percentile":
        m = 1.0 - heatmap if least_relevant else heatmap
        return ~(m < jnp.percentile(m, percentile))
    if rule != "exact":
        raise ValueError(f"rule: unknown ROAD rule {rule!r}; choose one of {list(ROAD_RULES)}")
    n = heatmap.size
    count = num_kept(n, 1.0 - percentile / 100.0)
    ranks = pixel_ranks(heatmap)
    return ranks >= n - count if least_relevant else ranks < count


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _road_chunk(predict, normalize, percentiles: tuple, rule: str, noise: float, raw, heatmaps,
                classes, keys):
    x = normalize(raw)
    y = _class_probability(predict, x, classes)
    removed = jnp.stack([jax.vmap(lambda m: road_removed(m, p, least_relevant=lerf, rule=rule))(
        heatmaps) for lerf in (False, True) for p in percentiles])  # [2P, b, S, S]

    def score(args):  # one (order, percentile): impute and forward the b images
        i, gone = args
        filled = jax.vmap(impute)(x, gone)
        # Noise per image from its own key, so it does not depend on the chunking.
        jitter = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), x.shape[1:],
                                                      x.dtype))(keys)
        filled = jnp.where(gone[..., None], filled + noise * jitter, filled)
        return _class_probability(predict, filled, classes) - y

    return jax.lax.map(score, (jnp.arange(len(removed)), removed))  # [2P, b]


def road(predict: PredictFn, normalize: NormalizeFn, raw: Array, heatmaps: Array, *,
         percentiles: Sequence[float] = ROAD_PERCENTILES, rule: str = "exact",
         noise: float = ROAD_NOISE, key: Array | None = None, classes: Array | None = None,
         batch_size: int = 32) -> RoadScores:
    """ROAD MoRF / LeRF at each percentile and the combined score, batched.

    With ``rule="percentile"`` and ``noise=0`` this equals pytorch-grad-cam 1.5.7's
    ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst`` (``return_diff=True``) and
    ``ROADCombined`` with a ``ClassifierOutputSoftmaxTarget`` of ``classes``
    (``benchmarks/peer_road.py``); with noise, equal in distribution.

    Args:
      predict, normalize: the model, as in ``deletion_insertion``.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      heatmaps: float32[B, S, S] maps.
      percentiles: the percentiles p.
      rule: which pixels a percentile removes (``road_removed``).
      noise: std of the Gaussian noise added to imputed pixels (normalised units).
      key: PRNG key of the noise (default ``PRNGKey(0)``), split into one key per image.
      classes: optional int[B] class scored (default: predicted on the intact image).
      batch_size: images per chunk.

    Returns:
      ``RoadScores``.
    """
    raw, heatmaps = _check(raw, heatmaps, batch_size)
    if rule not in ROAD_RULES:
        raise ValueError(f"rule: unknown ROAD rule {rule!r}; choose one of {list(ROAD_RULES)}")
    percentiles = tuple(float(p) for p in percentiles)
    if not percentiles or not all(0 <= p <= 100 for p in percentiles):
        raise ValueError(f"percentiles: need values in [0, 100], got {percentiles}")
    classes = _classes(predict, normalize, raw, classes, batch_size)
    keys = jax.random.split(jax.random.PRNGKey(0) if key is None else key, len(raw))
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):  # typed keys: their raw words
        keys = jax.random.key_data(keys)
    keys = np.asarray(keys)
    out = _chunks(lambda r, h, c, k: _road_chunk(predict, normalize, percentiles, rule,
                                                 float(noise), r, h, c, k),
                  (raw, heatmaps, classes, keys), batch_size)
    morf, lerf = out[:len(percentiles)].T, out[len(percentiles):].T
    combined = (lerf.mean(axis=1) - morf.mean(axis=1)) / 2
    return RoadScores(percentiles=percentiles, morf=morf, lerf=lerf, combined=combined,
                      classes=classes)
