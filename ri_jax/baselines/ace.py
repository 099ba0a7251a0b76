"""ACE — Automatic Concept-based Explanations (Ghorbani et al., NeurIPS 2019) as the RI paper uses it.

ACE explains a class with a *set* of images (§6.1, §6.4, App. C):

1. every image is cut into multi-resolution superpixels (``ace_segments``); each
   segment becomes a patch (grey outside, bounding box resized to the input size);
2. patches go through ψ; for clustering a patch is its **spatial mean of ψ**
   ([c], ACE's ``channel_mean=True``), for CAVs and TCAV it is **ψ flattened**
   ([h·w·c], as in ACE/TCAV);
3. k-means over the mean activations; ACE's filters keep a cluster as a concept
   when it has more than ``min_members`` patches drawn from enough distinct
   images, and keep its ``max_members`` members nearest the centre;
4. each concept gets ``repeats`` CAVs, one against each of ``repeats`` random patch
   sets; its TCAV score against a set is the fraction of the set's images whose
   class-logit derivative along the CAV is positive. A Welch t-test of the
   concept's scores against the scores of a random set's CAVs (random set 0 vs
   the others) keeps the significant concepts, ranked by mean score;
5. to explain any image (an input or a new one, §6.1) it is segmented the same
   way, every segment goes to its nearest concept centre, segments farther from
   that centre than the concept's farthest kept member are outliers, and the
   segments of significant concepts, most important concept first (nearest the
   centre first within a concept), form the explanation. ``ace_keep_mask`` then
   keeps segments in that order until *more than* 20 % of the pixels are kept (§6.2).

Choices where ACE's paper and code leave room, or where we differ from its code:
  * CAVs are ridge classifiers (targets ±1, unpenalised intercept, penalty
    ``ridge`` × mean squared norm of the centred activations) solved in closed
    form in the dual; TCAV's default is an SGD/logistic linear model. Classes are
    balanced as in TCAV: both sides use their first min(#concept, #random) rows.
  * The random counterparts are sets of ``num_random`` patches drawn from the
    segments of ``random_images`` (or, if none are given, from the discovery
    patches themselves), not whole random ImageNet images.
  * TCAV scores are computed on the discovery images themselves; the class is
    ``class_idx``.
  * The t-test is Welch's (unequal variances), two-sided, significance
    ``p < p_value`` (default 0.05, as the ACE paper; its code uses a paired test
    and 0.01). Two constant samples give p = 1 when equal and p = 0 otherwise.
  * Concepts that are not significant still take part in assigning segments
    (so a segment is not forced onto a significant concept it is far from), but
    never appear in explanations.
  * k-means is ``ri_jax.clustering.kmeans`` (k-means++ seeding, as sklearn's in
    ACE), best inertia of ``kmeans_restarts`` seeds.

Cost: segmentations and per-patch mean activations are cached per image in an
``ACECache`` (pass one cache per model to reuse work across discovery sets and
explanations); forward passes and gradients run jitted in fixed-size chunks.
Pass the model's functions themselves (e.g. ``fns.features``), not fresh lambdas,
so the jitted steps compile once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ri_jax.baselines.ace_segments import ACE_FILL, make_patch, segment_image
from ri_jax.clustering import kmeans
from ri_jax.model import Model

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ACEConfig:
    """ACE settings; lower the resolutions, concepts and repeats to make it cheaper.

    Attributes:
      n_segments: SLIC segment counts, coarse first (ACE: 15, 50, 80).
      compactness: SLIC compactness (ACE: 20).
      sigma: SLIC pre-smoothing (ACE: 1).
      jaccard: segments overlapping an earlier kept one with Jaccard similarity above this are dropped.
      min_area: segments covering at most this fraction of the image are dropped (ACE: 0.001).
      fill: grey outside a segment in a patch, raw [0, 1] space (ACE: 117/255).
      num_concepts: k of k-means (ACE: 25); lowered to the number of patches if larger.
      kmeans_iters: most Lloyd iterations per restart.
      kmeans_restarts: k-means++ seeds; the lowest inertia wins.
      max_members: members kept per concept, nearest the centre first (ACE ``max_imgs``: 40).
      min_members: a cluster needs more than this many patches (ACE ``min_imgs``: 20 in the
        class, 40 in its script).
      num_random: patches per random counterpart set (ACE: 40 random images per set).
      repeats: random counterparts per concept, i.e. TCAV scores per concept (ACE script: 20).
      ridge: relative ridge penalty of the CAV classifier.
      p_value: significance level of the two-sided t-test.
      batch_size: patches per forward pass.
    """

    n_segments: tuple[int, ...] = (15, 50, 80)
    compactness: float = 20.0
    sigma: float = 1.0
    jaccard: float = 0.5
    min_area: float = 0.001
    fill: float = ACE_FILL
    num_concepts: int = 25
    kmeans_iters: int = 300
    kmeans_restarts: int = 3
    max_members: int = 40
    min_members: int = 20
    num_random: int = 40
    repeats: int = 20
    ridge: float = 0.01
    p_value: float = 0.05
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "n_segments", tuple(int(n) for n in self.n_segments))
        if not self.n_segments or min(self.n_segments) < 1:
            raise ValueError(f"n_segments: need at least one positive segment count, "
                             f"got {self.n_segments}")
        checks = [
            ("compactness", self.compactness > 0, "must be positive"),
            ("sigma", self.sigma >= 0, "must be non-negative"),
            ("jaccard", 0 <= self.jaccard <= 1, "must lie in [0, 1]"),
            ("min_area", 0 <= self.min_area < 1, "must lie in [0, 1)"),
            ("fill", 0 <= self.fill <= 1, "must lie in [0, 1]"),
            ("num_concepts", self.num_concepts >= 1, "must be at least 1"),
            ("kmeans_iters", self.kmeans_iters >= 1, "must be at least 1"),
            ("kmeans_restarts", self.kmeans_restarts >= 1, "must be at least 1"),
            ("max_members", self.max_members >= 2, "must be at least 2"),
            ("min_members", self.min_members >= 0, "must be non-negative"),
            ("num_random", self.num_random >= 2, "must be at least 2"),
            ("repeats", self.repeats >= 2, "must be at least 2 for the t-test"),
            ("ridge", self.ridge > 0, "must be positive"),
            ("p_value", 0 < self.p_value < 1, "must lie in (0, 1)"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name}: {why}, got {getattr(self, name)!r}")

    def segment_settings(self) -> tuple:
        """The settings a segmentation depends on (part of the cache key)."""
        return (self.n_segments, self.compactness, self.sigma, self.jaccard, self.min_area)


class ACECache:
    """Segments and per-patch mean activations of images, keyed by image content.

    Segmentation is the slowest host step and the same reference image appears in
    many ACE runs (§6.4 and App. C build one discovery set per cluster / per
    input), so keep one cache per model and pass it everywhere. Mean activations
    depend on the model: never share a cache between different parameters.
    """

    def __init__(self):
        self.segments: dict[tuple, np.ndarray] = {}
        self.means: dict[tuple, np.ndarray] = {}

    @staticmethod
    def key(raw_image: np.ndarray, config: ACEConfig) -> tuple:
        """Cache key of one raw image [S, S, 3] under ``config``'s segmentation settings."""
        digest = hashlib.sha1(np.ascontiguousarray(raw_image, np.float32).tobytes()).hexdigest()
        return (digest, raw_image.shape, config.segment_settings())

    def segment(self, raw_image: np.ndarray, config: ACEConfig) -> np.ndarray:
        """bool[M, S, S] ACE segments of one raw image, computed once per image and settings."""
        key = self.key(raw_image, config)
        if key not in self.segments:
            self.segments[key] = segment_image(
                raw_image, config.n_segments, compactness=config.compactness, sigma=config.sigma,
                threshold=config.jaccard, min_area=config.min_area)
        return self.segments[key]


# ---------------------------------------------------------------- model steps (jitted, chunked)

@functools.partial(jax.jit, static_argnames=("model", "flatten"))
def _patch_features(model, images, masks, fill, flatten):
    patches = jax.vmap(lambda x, m: make_patch(x, m, fill=fill))(images, masks)
    psi = model.features(model.normalize(patches))
    return psi.reshape(psi.shape[0], -1) if flatten else jnp.mean(psi, axis=(1, 2))


def class_gradient(head_fn: Callable, psi: Array, class_idx) -> Array:
    """Gradient of one class logit with respect to ψ (TCAV's directional-derivative basis).

    Args:
      head_fn: G, ``head_fn(ψ[B, h, w, c]) -> logits[B, C]``.
      psi: [h, w, c] feature map of one image.
      class_idx: the class whose logit is differentiated.

    Returns:
      [h, w, c] ∂G_class/∂ψ.
    """
    return jax.grad(lambda p: head_fn(p[None])[0, class_idx])(psi)


@functools.partial(jax.jit, static_argnames=("model",))
def _image_gradients(model, images, class_idx):
    psi = model.features(model.normalize(images))
    grads = jax.vmap(lambda p: class_gradient(model.head, p, class_idx))(psi)
    return grads.reshape(grads.shape[0], -1)


def _chunked(fn: Callable, n: int, gather: Callable[[np.ndarray], tuple], batch_size: int,
             desc: str, progress: bool) -> np.ndarray:
    """Runs ``fn(*gather(indices))`` over 0..n-1 in fixed-size chunks (the last one zero-padded)."""
    outs = []
    for start in tqdm(range(0, max(n, 1), batch_size), desc=desc, disable=not progress, leave=False):
        idx = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(idx)
        args = [np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) for a in gather(idx)]
        outs.append(np.asarray(fn(*args))[:len(idx)])
    return np.concatenate(outs)


def _patch_activations(model, images: np.ndarray,
                       segments: Sequence[np.ndarray], pairs: np.ndarray, config: ACEConfig, *,
                       flatten: bool, desc: str, progress: bool) -> np.ndarray:
    """Activations of the patches ``pairs[i] = (image index, segment index)``: [P, c] or [P, h·w·c]."""
    def gather(idx):
        chosen = pairs[idx]
        masks = np.zeros((len(chosen),) + images.shape[1:3], bool)
        for row, (i, j) in enumerate(chosen):
            masks[row] = segments[i][j]
        return images[chosen[:, 0]], masks

    fn = functools.partial(_patch_features, model, fill=config.fill, flatten=flatten)
    return _chunked(fn, len(pairs), gather, config.batch_size, desc, progress)


def _segments_and_means(model, images: np.ndarray, config: ACEConfig,
                        cache: ACECache, progress: bool, what: str):
    """Segments of every image and the spatial-mean activation of each of their patches (cached)."""
    segments = [cache.segment(img, config)
                for img in tqdm(images, desc=f"ACE: segmenting {what}", disable=not progress,
                                leave=False)]
    keys = [cache.key(img, config) + (config.fill,) for img in images]
    todo = [i for i, k in enumerate(keys) if k not in cache.means]
    pairs = np.array([(i, j) for i in todo for j in range(len(segments[i]))], np.int64).reshape(-1, 2)
    if len(pairs):
        means = _patch_activations(model, images, segments, pairs, config,
                                   flatten=False, desc=f"ACE: patches of {what}", progress=progress)
        for i in todo:
            cache.means[keys[i]] = means[pairs[:, 0] == i]
    return segments, [cache.means[k] for k in keys]


# ---------------------------------------------------------------- concept filtering

class ConceptSelection(NamedTuple):
    """Clusters that ACE keeps as concepts.

    Attributes:
      clusters: int[K] kept cluster ids, ascending.
      members: int[K, max_members] indices of each concept's kept members, nearest the centre
        first; -1 pads concepts with fewer members.
    """

    clusters: np.ndarray
    members: np.ndarray


def select_concepts(assignment: np.ndarray, distance: np.ndarray, image_of_patch: np.ndarray,
                    num_images: int, *, num_clusters: int, max_members: int,
                    min_members: int) -> ConceptSelection:
    """ACE's rules for turning clusters into concepts (``ConceptDiscovery.discover_concepts``).

    With L the cluster size, U the number of distinct images its patches come from
    and N the number of discovery images, a cluster is kept when L > min_members and
    any of: U > L/2 (highly common); U > L/4 and U > N/4 (mildly common and
    populated); U > L/10 and U > N/2 (highly populated). A kept concept retains
    its ``max_members`` patches nearest the centre.

    Args:
      assignment: int[P] cluster of every patch.
      distance: float[P] distance of every patch to its cluster centre.
      image_of_patch: int[P] discovery image each patch comes from.
      num_images: N.
      num_clusters: number of clusters k.
      max_members: members kept per concept.
      min_members: a cluster needs more than this many patches.

    Returns:
      ConceptSelection.
    """
    assignment = np.asarray(assignment, np.int64)
    distance = np.asarray(distance, np.float64)
    image_of_patch = np.asarray(image_of_patch, np.int64)
    if (not assignment.shape == distance.shape == image_of_patch.shape or assignment.ndim != 1
            or assignment.size == 0):
        raise ValueError(f"assignment, distance, image_of_patch: need equal non-empty [P] shapes, "
                         f"got {assignment.shape}, {distance.shape}, {image_of_patch.shape}")
    sizes = np.bincount(assignment, minlength=num_clusters)
    pairs = np.unique(assignment * num_images + image_of_patch)
    distinct = np.bincount(pairs // num_images, minlength=num_clusters)
    highly_common = distinct > 0.5 * sizes
    mildly = (distinct > 0.25 * sizes) & (distinct > 0.25 * num_images)
    populated = (distinct > 0.1 * sizes) & (distinct > 0.5 * num_images)
    clusters = np.flatnonzero((sizes > min_members) & (highly_common | mildly | populated))

    order = np.lexsort((distance, assignment))  # by cluster, then nearest first (stable)
    starts = np.searchsorted(assignment[order], clusters)
    slot = np.arange(max_members)
    valid = slot[None] < np.minimum(sizes[clusters], max_members)[:, None]
    take = np.minimum(starts[:, None] + slot[None], len(order) - 1)
    members = np.where(valid, order[take], -1)
    return ConceptSelection(clusters, members.reshape(len(clusters), max_members))


# ---------------------------------------------------------------- CAV and TCAV

@jax.jit
def cav(concept_acts: Array, random_acts: Array, *, ridge: float = 0.01,
        concept_valid: Array | None = None, random_valid: Array | None = None) -> Array:
    """Concept activation vector: unit normal of a ridge classifier, concept (+1) vs random (−1).

    Solved in the dual, w = X̃ᵀ(X̃X̃ᵀ + λI)⁻¹ỹ with X̃, ỹ centred over the valid rows
    (an unpenalised intercept) and λ = ridge · mean ‖x̃‖². Invalid rows are zeroed
    and drop out exactly. Identical activations give a zero vector (never NaN).

    Args:
      concept_acts: [m, ...] activations of the concept's patches (flattened internally).
      random_acts: [n, ...] activations of a random counterpart set.
      ridge: relative ridge penalty (> 0).
      concept_valid: optional bool[m]; rows to use.
      random_valid: optional bool[n]; rows to use.

    Returns:
      [D] unit vector pointing from the random set towards the concept.
    """
    m, n = concept_acts.shape[0], random_acts.shape[0]
    x = jnp.concatenate([concept_acts.reshape(m, -1), random_acts.reshape(n, -1)]).astype(jnp.float32)
    y = jnp.concatenate([jnp.ones(m), -jnp.ones(n)])
    cv = jnp.ones(m, bool) if concept_valid is None else concept_valid
    rv = jnp.ones(n, bool) if random_valid is None else random_valid
    valid = jnp.concatenate([cv, rv]).astype(jnp.float32)
    count = jnp.maximum(valid.sum(), 1.0)
    xc = (x - (valid @ x) / count) * valid[:, None]
    yc = (y - (valid @ y) / count) * valid
    gram = xc @ xc.T
    lam = ridge * jnp.maximum(jnp.trace(gram) / count, 1e-30)
    alpha = jnp.linalg.solve(gram + lam * jnp.eye(m + n), yc)
    w = xc.T @ alpha
    norm = jnp.linalg.norm(w)
    return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), 0.0)


@jax.jit
def tcav_score(gradients: Array, direction: Array) -> Array:
    """TCAV score: fraction of images whose class-logit derivative along the CAV is positive.

    Args:
      gradients: [N, D] class-logit gradients w.r.t. flattened ψ, one row per image.
      direction: [D] CAV.

    Returns:
      [] score in [0, 1] (a derivative of exactly 0 is not positive).
    """
    return jnp.mean((gradients @ direction > 0).astype(jnp.float32))


def _scores_vs_randoms(acts, count, randoms, gradients, ridge):
    """TCAV scores of one concept ([m, D], ``count`` valid rows first) against each random set → [R]."""
    use = jnp.minimum(count, randoms.shape[1])  # balance classes as TCAV does
    cv = jnp.arange(acts.shape[0]) < use
    rv = jnp.arange(randoms.shape[1]) < use
    return jax.lax.map(lambda r: tcav_score(gradients, cav(acts, r, ridge=ridge, concept_valid=cv,
                                                           random_valid=rv)), randoms)


@jax.jit
def _tcav_table(concept_acts, counts, random_acts, gradients, ridge):
    """[K, R] concept scores and [R] random-vs-random scores (random set 0 against sets 1..R)."""
    concept = jax.lax.map(lambda a: _scores_vs_randoms(a[0], a[1], random_acts[1:], gradients, ridge),
                          (concept_acts, counts))
    random = _scores_vs_randoms(random_acts[0], random_acts.shape[1], random_acts[1:], gradients, ridge)
    return concept, random


# ---------------------------------------------------------------- t-test (no SciPy)

class TTest(NamedTuple):
    """Two-sample t-test: statistic t, degrees of freedom df, two-sided p-value."""

    t: float
    df: float
    p_value: float


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for a, b > 0, x in [0, 1]."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"a, b, x: need a > 0, b > 0, 0 <= x <= 1, got {a}, {b}, {x}")
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) given both x and y = 1 − x, so a caller that knows y exactly (x near 1)
    loses no digits to the rounding of 1 − x."""
    if x == 0.0 or y == 0.0:
        return float(y == 0.0)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    # the continued fraction converges fast on this side of the mean; use symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if not df > 0:
        raise ValueError(f"df: must be positive, got {df}")
    if math.isinf(t):
        return 0.0
    t2 = t * t
    return _betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))


def welch_t_test(a: np.ndarray, b: np.ndarray) -> TTest:
    """Welch's two-sided t-test of equal means (unequal variances).

    Args:
      a: [n] sample, n ≥ 2.
      b: [m] sample, m ≥ 2.

    Returns:
      TTest. When both samples are constant: p = 1 if their means are equal, else 0.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    for name, s in (("a", a), ("b", b)):
        if s.size < 2 or not np.all(np.isfinite(s)):
            raise ValueError(f"{name}: need at least 2 finite values, got {s.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = a.mean() - b.mean()
    if va + vb == 0:
        same = diff == 0
        return TTest(0.0 if same else math.copysign(math.inf, diff), a.size + b.size - 2.0,
                     1.0 if same else 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return TTest(float(t), float(df), t_two_sided_p(t, df))


# ---------------------------------------------------------------- discovery

class ACEResult(NamedTuple):
    """Concepts of one discovery set, ordered by importance (significant first, then mean TCAV).

    Attributes:
      config: the settings used.
      class_idx: the explained class.
      centres: [K, c] k-means centres (spatial-mean ψ) of the concepts.
      radius: [K] distance of each concept's farthest kept member to its centre (outlier radius).
      tcav: [K, R] TCAV scores of each concept against each random counterpart.
      random_tcav: [R] TCAV scores of random set 0 against the same counterparts.
      score: [K] mean TCAV score.
      p_values: [K] Welch two-sided p-values of ``tcav`` vs ``random_tcav``.
      significant: bool[K] p < config.p_value: the concepts used in explanations.
      member_image: int[K, max_members] discovery image of each kept member (-1 pads).
      member_segment: int[K, max_members] its index in that image's ``ACECache.segment`` (-1 pads).
      num_patches: number of patches clustered.
    """

    config: ACEConfig
    class_idx: int
    centres: np.ndarray
    radius: np.ndarray
    tcav: np.ndarray
    random_tcav: np.ndarray
    score: np.ndarray
    p_values: np.ndarray
    significant: np.ndarray
    member_image: np.ndarray
    member_segment: np.ndarray
    num_patches: int


def _check_images(images, name: str) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2] or x.shape[0] == 0:
        raise ValueError(f"{name}: need raw images [N, S, S, 3] with N ≥ 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name}: raw images must be finite and in [0, 1]")
    return x


def _pairs(segments: Sequence[np.ndarray]) -> np.ndarray:
    """int[P, 2] (image index, segment index) of every segment of every image."""
    return np.array([(i, j) for i, s in enumerate(segments) for j in range(len(s))],
                    np.int64).reshape(-1, 2)


def discover_concepts(model: Model, raw_images, class_idx: int, config: ACEConfig = ACEConfig(),
                      *, key: Array, random_images=None, cache: ACECache | None = None,
                      progress: bool = True) -> ACEResult:
    """Runs ACE on one discovery set (steps 1–4 of the module docstring).

    Args:
      model: the ``ri_jax.model.Model`` (ψ, G and its input normalisation).
      raw_images: [N, S, S, 3] discovery images in [0, 1]; also the images TCAV is scored on.
      class_idx: the class to explain (e.g. the prediction on the input image).
      config: ACE settings.
      key: PRNG key (k-means seeding, random sets).
      random_images: optional [R, S, S, 3] raw images whose patches form the random
        counterparts; default: the discovery patches.
      cache: ``ACECache`` to reuse segmentations and mean activations (one per model).
      progress: show tqdm progress bars.

    Returns:
      ACEResult (possibly with K = 0 concepts).
    """
    images = _check_images(raw_images, "raw_images")
    cache = ACECache() if cache is None else cache
    num_classes = model.num_classes
    if not (isinstance(class_idx, (int, np.integer)) and 0 <= class_idx < num_classes):
        raise ValueError(f"class_idx: need an int in [0, {num_classes}), got {class_idx!r}")
    run = dict(model=model, config=config, cache=cache, progress=progress)

    segments, means = _segments_and_means(images=images, what="discovery images", **run)
    pairs = _pairs(segments)
    points = np.concatenate(means)
    if len(points) == 0:
        raise ValueError("raw_images: no segment survived min_area; lower n_segments or min_area")
    k = min(config.num_concepts, len(points))
    km_key, random_key = jax.random.split(key)
    km = min((kmeans(points, k, key=sub, max_iters=config.kmeans_iters)
              for sub in jax.random.split(km_key, config.kmeans_restarts)),
             key=lambda result: float(result.inertia))
    centres_all = np.asarray(km.centres)
    assignment = np.asarray(km.assignment)
    distance = np.linalg.norm(points - centres_all[assignment], axis=1)
    chosen = select_concepts(assignment, distance, pairs[:, 0], len(images), num_clusters=k,
                             max_members=config.max_members, min_members=config.min_members)
    members, valid = chosen.members, chosen.members >= 0
    radius = np.where(valid, distance[np.maximum(members, 0)], 0.0).max(1, initial=0.0)

    if random_images is None:
        r_images, r_segments, r_pairs = images, segments, pairs
    else:
        r_images = _check_images(random_images, "random_images")
        r_segments = [cache.segment(img, config)
                      for img in tqdm(r_images, desc="ACE: segmenting random images",
                                      disable=not progress, leave=False)]
        r_pairs = _pairs(r_segments)
    if len(r_pairs) < config.num_random:
        raise ValueError(f"random_images: {len(r_pairs)} random patches, fewer than "
                         f"num_random={config.num_random}")
    draws = np.stack([np.asarray(jax.random.choice(k_, len(r_pairs), (config.num_random,),
                                                   replace=False))
                      for k_ in jax.random.split(random_key, config.repeats + 1)])

    flat = functools.partial(_patch_activations, model, flatten=True,
                             config=config, progress=progress)
    member_acts = flat(images=images, segments=segments, pairs=pairs[members[valid]],
                       desc="ACE: concept activations")
    random_acts = flat(images=r_images, segments=r_segments, pairs=r_pairs[draws.ravel()],
                       desc="ACE: random activations")
    dim = random_acts.shape[1]
    concept_acts = np.zeros(members.shape + (dim,), np.float32)
    concept_acts[valid] = member_acts
    gradients = _chunked(
        lambda x: _image_gradients(model, x, class_idx),
        len(images), lambda idx: (images[idx],), config.batch_size, "ACE: TCAV gradients", progress)

    tcav, random_tcav = _tcav_table(jnp.asarray(concept_acts), jnp.asarray(valid.sum(1)),
                                    jnp.asarray(random_acts.reshape(config.repeats + 1,
                                                                    config.num_random, dim)),
                                    jnp.asarray(gradients), config.ridge)
    tcav = np.asarray(tcav).reshape(len(members), config.repeats)
    random_tcav = np.asarray(random_tcav)
    p_values = np.array([welch_t_test(s, random_tcav).p_value for s in tcav], np.float64)
    significant = p_values < config.p_value
    score = tcav.mean(1)
    order = np.lexsort((-score, ~significant))
    member_image = np.where(valid, pairs[np.maximum(members, 0), 0], -1)
    member_segment = np.where(valid, pairs[np.maximum(members, 0), 1], -1)
    return ACEResult(
        config=config, class_idx=int(class_idx), centres=centres_all[chosen.clusters][order],
        radius=radius[order], tcav=tcav[order], random_tcav=random_tcav, score=score[order],
        p_values=p_values[order], significant=significant[order],
        member_image=member_image[order], member_segment=member_segment[order],
        num_patches=len(points))


# ---------------------------------------------------------------- explanations

class ConceptExplanation(NamedTuple):
    """ACE's interpretation of one image.

    Attributes:
      segments: bool[M, S, S] segments of significant concepts, most important concept first,
        nearest its centre first within a concept.
      concept: int[M] each segment's concept (index into the ACEResult arrays).
      distance: [M] each segment's distance to that concept's centre.
      keep: bool[S, S] ``ace_keep_mask(segments, fraction)``.
      reached: whether ``keep`` covers more than ``fraction`` of the image; False means all
        important segments together cover at most that much and all of them are kept.
    """

    segments: np.ndarray
    concept: np.ndarray
    distance: np.ndarray
    keep: np.ndarray
    reached: bool


def ace_keep_mask(ordered_segment_masks, *, fraction: float = 0.2) -> np.ndarray:
    """The paper's rule for ACE (§6.2): add segments in order until MORE than ``fraction`` is kept.

    Args:
      ordered_segment_masks: bool[M, S, S] segments, most important first (may overlap).
      fraction: the share of pixels to exceed, in (0, 1).

    Returns:
      bool[S, S] union of the shortest prefix that keeps more than ``fraction`` of the
      pixels; the union of all segments when no prefix does (all False for M = 0).
    """
    masks = np.asarray(ordered_segment_masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"ordered_segment_masks: need bool[M, S, S], got shape {masks.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: must lie in (0, 1), got {fraction}")
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], bool)
    union = np.logical_or.accumulate(masks, axis=0)
    share = union.reshape(len(union), -1).sum(1) / union[0].size
    over = share > fraction
    return union[int(np.argmax(over)) if over.any() else -1]


def explain_batch(result: ACEResult, model: Model, raw_images, *,
                  cache: ACECache | None = None, fraction: float = 0.2,
                  progress: bool = False) -> list[ConceptExplanation]:
    """Explains each image with the concepts of ``result`` (step 5; §6.1's reuse of ACE).

    Args:
      result: output of ``discover_concepts`` (same model).
      model: as for ``discover_concepts``.
      raw_images: [B, S, S, 3] images in [0, 1] (inputs or new images).
      cache: ``ACECache`` of this model.
      fraction: the pixel share ``ace_keep_mask`` must exceed.
      progress: show tqdm progress bars.

    Returns:
      One ConceptExplanation per image; patch forward passes are batched across images.
    """
    images = _check_images(raw_images, "raw_images")
    cache = ACECache() if cache is None else cache
    segments, means = _segments_and_means(model, images, result.config,
                                          cache, progress, "images to explain")
    out = []
    for segs, acts in zip(segments, means):
        if len(result.centres):
            dist = np.linalg.norm(acts[:, None, :] - result.centres[None], axis=-1)
            concept = np.argmin(dist, 1)
            d = dist[np.arange(len(dist)), concept]
            use = (d <= result.radius[concept]) & result.significant[concept]
        else:
            concept, d = np.zeros(len(segs), np.int64), np.zeros(len(segs))
            use = np.zeros(len(segs), bool)
        idx = np.flatnonzero(use)
        idx = idx[np.lexsort((d[idx], concept[idx]))]
        ordered = segs[idx]
        keep = ace_keep_mask(ordered, fraction=fraction)
        out.append(ConceptExplanation(ordered, concept[idx], d[idx], keep, bool(keep.mean() > fraction)))
    return out


def explain_image(result: ACEResult, model: Model, raw_image, *, cache: ACECache | None = None,
                  fraction: float = 0.2) -> ConceptExplanation:
    """``explain_batch`` for one raw image [S, S, 3]."""
    image = np.asarray(raw_image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"raw_image: need one image [S, S, 3], got shape {image.shape}")
    return explain_batch(result, model, image[None], cache=cache, fraction=fraction)[0]
