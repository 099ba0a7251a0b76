"""Every interpretation method in one shape, so the experiments treat them alike (§6.1, §6.4).

A method gives *interpretations at input images* and draws them as *heat maps on
target images*:

1. ``Interpretations(alphas [V, Q, c], selected bool[V, Q])``, one per input image x_v.
   RI keeps the channel weights of all |Q| sampled boundaries oriented towards x_v
   and the boundaries of P(x_v) (Eq. 5); a CAM method keeps its one weight vector
   as Q = 1, always selected.
2. ``interpretation_heatmaps(interps, which, ψ)`` draws interpretation ``which[b]``
   on target b with ``heatmaps.polytope_heatmap``: the mean of the selected rows'
   min–max normalised CAMs, which for Q = 1 is exactly ``heatmaps.cam``. Reusing an
   interpretation on a new image is therefore the same operation for every method
   (the paper's extension of the CAMs, §6.1). An empty RI polytope draws all zeros.

The class a CAM explains at x is the model's prediction Class(x), as for RI.

Controls (``CONTROLS``; not the paper's methods, they make the numbers readable):
  * ``"Random"``: i.i.d. uniform heat-map values, i.e. a uniformly random 20 % of
    the pixels (ties have probability zero);
  * ``"Grad-CAM (own weights)"``: Grad-CAM computed at each target itself, no reuse.

``evaluate_heatmaps`` keeps each map's top 20 % pixels and reports AD / AI (Eqs. 7–8)
in percent with ``ri_jax.metrics``, with per-image scores and how ties at the cut
were broken (``TIE_RULE``); given the cached logits of the unmasked images, only the
masked ones go through the model. Baselines find similar images by Euclidean distance in
Ω (``euclidean_neighbours``, ``nearest_centre``); RI routes a target to the
polytope that covers it (``route_ri``).

ACE (``ace_interpretations``, ``ace_masks``) explains with image segments, not
channel weights: its interpretations are concept sets discovered on a set of
images, reused on a target by segmenting it and keeping the segments of
significant concepts until more than 20 % of the pixels are kept (§6.2), and it is
scored with ``evaluate_masks``.

Long inputs are processed in fixed-size chunks (the last one zero-padded), so each
jitted function compiles once per chunk shape.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ri_jax.baselines.ace import ACECache, ACEConfig, ACEResult, discover_concepts, explain_batch
from ri_jax.baselines.gradcam import gradcam_weights_batch
from ri_jax.baselines.gradcam_pp import gradcam_pp_weights_batch
from ri_jax.baselines.scorecam import scorecam_weights_batch
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES, sides
from ri_jax.clustering import assign, kmeans, nearest_to_centres
from ri_jax.heatmaps import polytope_heatmap
from ri_jax.interpreter import Interpretation, RepresentativeInterpreter
from ri_jax.metrics import (KEEP_FRACTION, cut_ties, mask_image, masked_scores_from_masks,
                            num_kept, top_fraction_mask)
from ri_jax.models.vgg import ModelFns
from ri_jax.regions import DecisionRegions, predict

Array = jax.Array
Params = Any

METHODS = ("RI", "Grad-CAM", "Grad-CAM++", "Score-CAM")
CAM_METHODS = ("Grad-CAM", "Grad-CAM++", "Score-CAM")
CONTROLS = ("Random", "Grad-CAM (own weights)")
ACE = "ACE"  # segment-based; see ace_interpretations
TIE_RULE = ("exactly round(20% of pixels) are kept; among pixels tied at the cut, those first in "
            "a fixed pseudo-random pixel order are kept, spread evenly over the image "
            "(ri_jax.metrics.tie_priority)")


class Interpretations(NamedTuple):
    """V reusable interpretations, one per input image.

    Attributes:
      alphas: float32[V, Q, c] channel weights (CAM methods: Q = 1).
      selected: bool[V, Q] rows drawn (RI: the boundaries of P(x_v); CAMs: all True).
    """

    alphas: np.ndarray
    selected: np.ndarray


class RIInterpretations(NamedTuple):
    """RI at V input images.

    Attributes:
      interpretations: ``Interpretations`` with Q = |Q|.
      details: the interpreter's ``Interpretation`` batch (τ, |P(x)|, coverage, …), [V, …].
      regions: ``DecisionRegions`` of the V polytopes (appendix D).
    """

    interpretations: Interpretations
    details: Interpretation
    regions: DecisionRegions


class KMeansInputs(NamedTuple):
    """The input images of V interpretations (§6.4).

    Attributes:
      centres: float32[V, D] k-means centres in Ω (flattened ψ).
      inputs: int32[V] the reference nearest each centre (interpretation v's input image).
      assignment: int32[N] each reference's cluster.
    """

    centres: np.ndarray
    inputs: np.ndarray
    assignment: np.ndarray


class ProtocolKeys(NamedTuple):
    """The PRNG keys of one experiment run, split the same way by every script.

    Attributes:
      kmeans: k-means++ seeding of the |V| clusters.
      boundaries: RI's sample Q.
      random: the "Random" control.
      ace: ACE's discovery.
    """

    kmeans: Array
    boundaries: Array
    random: Array
    ace: Array


def protocol_keys(seed: int) -> ProtocolKeys:
    """Keys of run ``seed``: Table 1, Table 2 and Figures 5–6 with one seed share clusters and Q."""
    return ProtocolKeys(*jax.random.split(jax.random.key(seed), 4))


class Routing(NamedTuple):
    """Which interpretation each target image uses.

    Attributes:
      which: int32[B] interpretation index.
      covered: bool[B] covered by at least one polytope (False for nearest-centre routing).
      fallback: bool[B] routed to its nearest centre's interpretation because no polytope
        covers it (all True for nearest-centre routing).
    """

    which: np.ndarray
    covered: np.ndarray
    fallback: np.ndarray


class Evaluation(NamedTuple):
    """AD / AI of heat maps (or pixel masks) on their target images.

    Attributes:
      ad: Average Drop (Eq. 7), percent.
      ai: Average Increase (Eq. 8), percent.
      drop: float32[B] per-image max(0, Y − Y′)/Y (0 where Y = 0); ``ad = 100·mean(drop)``.
      increase: bool[B] per-image Y < Y′; ``ai = 100·mean(increase)``.
      y: float32[B] Y_c on the unmasked image (c = the model's prediction there).
      y_masked: float32[B] Y_c on the masked image.
      classes: int32[B] c.
      tied_images: images whose 20 % cut fell among tied values (−1 for masks).
      tied_pixels: tied pixels dropped by the tie rule, summed over images (−1 for masks).
      flat_maps: constant heat maps (every pixel tied; e.g. empty polytopes) (−1 for masks).
    """

    ad: float
    ai: float
    drop: np.ndarray
    increase: np.ndarray
    y: np.ndarray
    y_masked: np.ndarray
    classes: np.ndarray
    tied_images: int
    tied_pixels: int
    flat_maps: int


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ValueError(f"method: unknown method {method!r}; choose one of {list(allowed)}")


def _check_batch(x, name: str, ndim: int, n: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty array with {ndim} axes, got shape {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries along the first axis, got {x.shape[0]}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return int(value)


def map_chunks(fn: Callable[..., Any], arrays: tuple, chunk_size: int, *, progress: bool = False,
               desc: str | None = None) -> Any:
    """Applies ``fn`` to fixed-size chunks of arrays sharing a leading axis and concatenates.

    The last chunk is zero-padded so a jitted ``fn`` compiles once; padded rows are cut off.

    Args:
      fn: ``fn(*chunks) -> pytree of arrays`` with the chunk axis first.
      arrays: arrays [N, ...] with the same N ≥ 1.
      chunk_size: rows per call.
      progress: show a tqdm bar over chunks.
      desc: bar label.

    Returns:
      The pytree of ``fn``'s outputs concatenated along axis 0 (NumPy), first N rows.
    """
    chunk_size = _check_positive(chunk_size, "chunk_size")
    n = len(arrays[0])
    size = min(chunk_size, n)
    pad = -n % size
    padded = [np.pad(np.asarray(a), [(0, pad)] + [(0, 0)] * (np.ndim(a) - 1)) for a in arrays]
    starts = range(0, n + pad, size)
    outs = [jax.device_get(fn(*(a[s:s + size] for a in padded)))
            for s in tqdm(starts, desc=desc, disable=not progress, leave=False)]
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *outs)


@functools.partial(jax.jit, static_argnames=("fns", "method", "channel_chunk"))
def _cam_weights_chunk(fns: ModelFns, method: str, params: Params, raw: Array, psi: Array,
                       classes: Array, channel_chunk: int) -> Array:
    head = functools.partial(fns.head, params)
    if method == "Grad-CAM":
        return gradcam_weights_batch(head, psi, classes)
    if method == "Grad-CAM++":
        return gradcam_pp_weights_batch(head, psi, classes)
    forward = functools.partial(fns.apply, params)
    return scorecam_weights_batch(forward, fns.normalize, raw, psi, classes,
                                  chunk_size=channel_chunk)


def cam_weights(method: str, fns: ModelFns, params: Params, raw: np.ndarray, psi: np.ndarray,
                classes: np.ndarray, *, chunk_size: int = 16, channel_chunk: int = 32,
                progress: bool = False) -> np.ndarray:
    """Channel weights of a CAM method at input images.

    Args:
      method: one of ``CAM_METHODS``.
      fns, params: the model.
      raw: float32[V, S, S, 3] raw input images in [0, 1] (only Score-CAM reads them).
      psi: float32[V, h, w, c] their feature maps ψ.
      classes: int[V] class to explain at each input (its predicted class).
      chunk_size: inputs per jitted call.
      channel_chunk: Score-CAM's masked images per forward pass.
      progress: show a progress bar.

    Returns:
      float32[V, c].
    """
    _check_method(method, CAM_METHODS)
    psi = _check_batch(psi, "psi", 4)
    raw = _check_batch(raw, "raw", 4, len(psi))
    classes = _check_batch(classes, "classes", 1, len(psi)).astype(np.int32)
    num_classes = jax.eval_shape(fns.head, params, jax.ShapeDtypeStruct((1, *psi.shape[1:]),
                                                                        psi.dtype)).shape[-1]
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"classes: values must lie in [0, {num_classes})")
    fn = functools.partial(_cam_weights_chunk, fns, method, params,
                           channel_chunk=_check_positive(channel_chunk, "channel_chunk"))
    return map_chunks(fn, (raw, psi, classes), chunk_size, progress=progress,
                      desc=f"{method} weights")


def cam_interpretations(method: str, fns: ModelFns, params: Params, raw: np.ndarray,
                        psi: np.ndarray, classes: np.ndarray, **kwargs) -> Interpretations:
    """A CAM method's interpretations at V input images (Q = 1, always selected).

    Args:
      method, fns, params, raw, psi, classes: as in ``cam_weights``.
      **kwargs: passed to ``cam_weights`` (``chunk_size``, ``channel_chunk``, ``progress``).

    Returns:
      ``Interpretations`` with alphas [V, 1, c].
    """
    alphas = cam_weights(method, fns, params, raw, psi, classes, **kwargs)
    return Interpretations(alphas=alphas[:, None, :], selected=np.ones((len(alphas), 1), bool))


def make_interpreter(fns: ModelFns, params: Params, ref_psi: np.ndarray, *, key: Array,
                     num_boundaries: int = DEFAULT_NUM_BOUNDARIES, batch_size: int = 64,
                     progress: bool = False) -> RepresentativeInterpreter:
    """RI over references given by their (cached) feature maps.

    Args:
      fns, params: the model.
      ref_psi: float32[N, h, w, c] reference feature maps.
      key: PRNG key drawing the sample Q.
      num_boundaries: |Q| (capped at N with a warning).
      batch_size: images per forward pass inside the interpreter.
      progress: show the interpreter's progress bars.

    Returns:
      ``RepresentativeInterpreter`` with ``is_features=True``.
    """
    return RepresentativeInterpreter(functools.partial(fns.features, params),
                                     functools.partial(fns.head, params), ref_psi, key=key,
                                     num_boundaries=num_boundaries, batch_size=batch_size,
                                     is_features=True, piecewise_linear=True, progress=progress)


def ri_interpretations(interpreter: RepresentativeInterpreter, fns: ModelFns, raw: np.ndarray, *,
                       top_k: int = 1, chunk_size: int = 32,
                       progress: bool = False) -> RIInterpretations:
    """RI's interpretations at V input images, in chunks of ``interpret_batch``.

    Args:
      interpreter: from ``make_interpreter``.
      fns: the model (for ``normalize``).
      raw: float32[V, S, S, 3] raw input images in [0, 1].
      top_k: similar references kept per input in ``details``.
      chunk_size: inputs per ``interpret_batch`` call (bounds its [chunk, Q, S, S] maps).
      progress: show a progress bar.

    Returns:
      ``RIInterpretations``; ``regions`` use the same ψ(x_v) the solver saw, so a polytope
      always covers its own input.
    """
    raw = _check_batch(raw, "raw", 4)
    top_k = _check_positive(top_k, "top_k")

    def one_chunk(chunk):
        xs = fns.normalize(jnp.asarray(chunk))
        # interpreter.features is deterministic, so these are the ψ interpret_batch solves on.
        return interpreter.interpret_batch(xs, top_k=top_k), interpreter.features(xs)

    details, feats = map_chunks(one_chunk, (raw,), chunk_size, progress=progress,
                                desc="RI interpretations")
    bounds = interpreter.reference_set.boundaries
    regions = DecisionRegions(w=bounds.w, b=bounds.b, selected=jnp.asarray(details.selected),
                              signs=sides(bounds, feats).T,
                              label=jnp.asarray(details.predicted_class),
                              num_covered_refs=jnp.asarray(details.num_covered))
    interps = Interpretations(alphas=details.alphas, selected=details.selected)
    return RIInterpretations(interpretations=interps, details=details, regions=regions)


@functools.partial(jax.jit, static_argnames=("image_size",))
def _draw(alphas: Array, selected: Array, psi: Array, image_size: int) -> Array:
    return jax.vmap(polytope_heatmap, in_axes=(0, 0, 0, None))(alphas, selected, psi, image_size)


def interpretation_heatmaps(interps: Interpretations, which: np.ndarray, psi: np.ndarray,
                            image_size: int, *, chunk_size: int = 32,
                            progress: bool = False) -> np.ndarray:
    """Draws interpretation ``which[b]`` on target b (reuse, §5.1 / §6.1).

    Args:
      interps: V interpretations.
      which: int[B] interpretation index of each target, in [0, V).
      psi: float32[B, h, w, c] target feature maps.
      image_size: side S of the maps.
      chunk_size: targets per jitted call (memory ~ chunk · Q · S² floats).
      progress: show a progress bar.

    Returns:
      float32[B, S, S] maps in [0, 1].
    """
    alphas = _check_batch(interps.alphas, "interps.alphas", 3)
    selected = _check_batch(interps.selected, "interps.selected", 2, len(alphas))
    if selected.shape[1] != alphas.shape[1] or selected.dtype != bool:
        raise ValueError(f"interps.selected: expected bool{alphas.shape[:2]}, got "
                         f"{selected.dtype}{selected.shape}")
    psi = _check_batch(psi, "psi", 4)
    if psi.shape[-1] != alphas.shape[-1]:
        raise ValueError(f"psi: {psi.shape[-1]} channels but the interpretations weigh "
                         f"{alphas.shape[-1]}")
    which = _check_batch(which, "which", 1, len(psi))
    if not np.issubdtype(which.dtype, np.integer) or which.min() < 0 or which.max() >= len(alphas):
        raise ValueError(f"which: expected integer indices in [0, {len(alphas)})")
    image_size = _check_positive(image_size, "image_size")
    draw = functools.partial(_draw, image_size=image_size)
    # Gather per chunk so at most chunk_size copies of an interpretation exist at once.
    return map_chunks(lambda w, p: draw(alphas[w], selected[w], p), (which, psi), chunk_size,
                      progress=progress, desc="heat maps")


def random_heatmaps(n: int, image_size: int, *, key: Array) -> np.ndarray:
    """The "Random" control: i.i.d. uniform maps, so the kept 20 % is a uniform random subset.

    Args:
      n: number of maps.
      image_size: side S.
      key: PRNG key.

    Returns:
      float32[n, S, S] in [0, 1).
    """
    n = _check_positive(n, "n")
    image_size = _check_positive(image_size, "image_size")
    return np.asarray(jax.random.uniform(key, (n, image_size, image_size)))


def control_heatmaps(control: str, fns: ModelFns, params: Params, raw: np.ndarray,
                     psi: np.ndarray, classes: np.ndarray, *, key: Array | None = None,
                     chunk_size: int = 32) -> np.ndarray:
    """Heat maps of a control on target images.

    Args:
      control: one of ``CONTROLS``.
      fns, params: the model.
      raw: float32[B, S, S, 3] raw target images.
      psi: float32[B, h, w, c] their feature maps.
      classes: int[B] the model's prediction on each target.
      key: PRNG key, required by "Random".
      chunk_size: targets per jitted call.

    Returns:
      float32[B, S, S].
    """
    _check_method(control, CONTROLS)
    raw = _check_batch(raw, "raw", 4)
    if control == "Random":
        if key is None:
            raise ValueError('key: the "Random" control needs a PRNG key')
        return random_heatmaps(len(raw), raw.shape[1], key=key)
    own = cam_interpretations("Grad-CAM", fns, params, raw, psi, classes, chunk_size=chunk_size)
    return interpretation_heatmaps(own, np.arange(len(raw)), psi, raw.shape[1],
                                   chunk_size=chunk_size)


def kmeans_inputs(ref_psi: np.ndarray, num_interpretations: int, *, key: Array) -> KMeansInputs:
    """k-means on the references in Ω and the reference nearest each centre (§6.4).

    Args:
      ref_psi: float32[N, h, w, c] reference feature maps.
      num_interpretations: |V| ≤ N.
      key: PRNG key of the k-means++ seeding.

    Returns:
      ``KMeansInputs``. Two centres may share their nearest reference; both keep it.
    """
    ref_psi = _check_batch(ref_psi, "ref_psi", np.ndim(ref_psi))
    v = _check_positive(num_interpretations, "num_interpretations")
    if v > len(ref_psi):
        raise ValueError(f"num_interpretations: {v} clusters need at least {v} references, "
                         f"got {len(ref_psi)}")
    result = kmeans(ref_psi, v, key=key)
    return KMeansInputs(centres=np.asarray(result.centres),
                        inputs=np.asarray(nearest_to_centres(ref_psi, result.centres), np.int32),
                        assignment=np.asarray(result.assignment, np.int32))


def nearest_centre(psi: np.ndarray, centres: np.ndarray) -> Routing:
    """The baselines' routing: each target uses its nearest k-means centre's interpretation (§6.4).

    Args:
      psi: float32[B, h, w, c] target feature maps.
      centres: float32[V, D] centres in Ω (flattened ψ); interpretation v belongs to centre v.

    Returns:
      ``Routing`` with ``fallback`` all True (nothing is covered: there are no polytopes).
    """
    which = np.asarray(assign(psi, centres), np.int32)
    return Routing(which=which, covered=np.zeros(len(which), bool),
                   fallback=np.ones(len(which), bool))


def route_ri(regions: DecisionRegions, psi: np.ndarray, centres: np.ndarray) -> Routing:
    """RI's routing (§6.4): the covering polytope, else the nearest centre's.

    A target covered by several polytopes uses the one covering the most references
    (ties: lower index; ``regions.predict``).

    Args:
      regions: the V polytopes; polytope v belongs to centre v.
      psi: float32[B, h, w, c] target feature maps.
      centres: float32[V, D] k-means centres in Ω.

    Returns:
      ``Routing``.
    """
    chosen = np.asarray(predict(regions, psi).chosen_region, np.int32)
    nearest = nearest_centre(psi, centres).which
    covered = chosen >= 0
    return Routing(which=np.where(covered, chosen, nearest).astype(np.int32), covered=covered,
                   fallback=~covered)


@functools.partial(jax.jit, static_argnames=("k",))
def _neighbours_chunk(queries: Array, points: Array, k: int) -> Array:
    cross = jnp.dot(queries, points.T, precision=jax.lax.Precision.HIGHEST)
    d = (jnp.sum(queries ** 2, axis=1)[:, None] - 2.0 * cross
         + jnp.sum(points ** 2, axis=1)[None])
    # top_k of −d puts the lower point index first among equal distances.
    return jax.lax.top_k(-jnp.maximum(d, 0.0), k)[1].astype(jnp.int32)


def euclidean_neighbours(queries: np.ndarray, points: np.ndarray, k: int, *,
                         chunk_size: int = 256) -> np.ndarray:
    """The baselines' similar images: the k nearest points in Ω by Euclidean distance (§6.1).

    Args:
      queries: float32[M, ...] query feature maps (flattened).
      points: float32[N, ...] candidate feature maps, same flattened size.
      k: neighbours per query, 1 ≤ k ≤ N.
      chunk_size: queries per distance block ([chunk, N] floats at a time).

    Returns:
      int32[M, k], nearest first; ties go to the lower point index. A query that is
      itself among ``points`` comes first (distance 0), as K = 1 in Figure 4 requires,
      unless an exact duplicate with a lower index exists.
    """
    q = _check_batch(queries, "queries", np.ndim(queries)).reshape(len(queries), -1)
    p = _check_batch(points, "points", np.ndim(points)).reshape(len(points), -1)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"queries: flattened size {q.shape[1:]} does not match points' {p.shape[1:]}")
    k = _check_positive(k, "k")
    if k > len(p):
        raise ValueError(f"k: {k} neighbours requested from {len(p)} points")
    pj = jnp.asarray(p, jnp.float32)
    return map_chunks(lambda c: _neighbours_chunk(c, pj, k), (q.astype(np.float32),), chunk_size)


@functools.partial(jax.jit, static_argnums=0)
def _forward(fns: ModelFns, params: Params, images: Array) -> Array:
    return fns.apply(params, images)


@functools.partial(jax.jit, static_argnums=0)
def _masked_probs(fns: ModelFns, params: Params, raw: Array, masks: Array) -> Array:
    masked = jax.vmap(mask_image)(raw, masks)
    return jax.nn.softmax(fns.apply(params, fns.normalize(masked)), axis=-1)


def masked_probabilities(fns: ModelFns, params: Params, raw: np.ndarray, masks: np.ndarray, *,
                         batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities of images keeping only the pixels in ``masks`` (the rest black).

    Args:
      fns, params: the model.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      masks: bool[B, S, S] pixels kept (e.g. ``ace_masks``).
      batch_size: images per forward chunk.

    Returns:
      float32[B, C].
    """
    raw = _check_batch(raw, "raw", 4)
    masks = _check_batch(masks, "masks", 3, len(raw))
    return map_chunks(functools.partial(_masked_probs, fns, params),
                      (raw, masks.astype(bool)), _check_positive(batch_size, "batch_size"))


def evaluate_masks(fns: ModelFns, params: Params, raw: np.ndarray, masks: np.ndarray, *,
                   logits: np.ndarray | None = None, batch_size: int = 64) -> Evaluation:
    """AD / AI when only the pixels in ``masks`` are kept (e.g. ACE's segments).

    Args:
      fns, params: the model.
      raw: float32[B, S, S, 3] raw target images in [0, 1].
      masks: bool[B, S, S] pixels kept; the rest is painted black (0 in raw space).
      logits: optional float32[B, C] the model's logits on the unmasked targets (e.g. the
        cached ``Features.logits``): then only the masked images go through the model.
        Without them ``metrics.masked_scores_from_masks`` forwards both.
      batch_size: images per forward chunk.

    Returns:
      ``Evaluation`` with the tie fields set to −1.
    """
    raw = _check_batch(raw, "raw", 4)
    masks = _check_batch(masks, "masks", 3, len(raw))
    batch_size = _check_positive(batch_size, "batch_size")
    if logits is None:
        scores = masked_scores_from_masks(functools.partial(_forward, fns, params),
                                          fns.normalize, jnp.asarray(raw),
                                          jnp.asarray(masks, bool), batch_size=batch_size)
        y, y_masked = np.asarray(scores.y_orig), np.asarray(scores.y_masked)
        classes = np.asarray(scores.classes)
    else:
        logits = _check_batch(logits, "logits", 2, len(raw))
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
        classes = probs.argmax(axis=1).astype(np.int32)
        masked = masked_probabilities(fns, params, raw, masks, batch_size=batch_size)
        rows = np.arange(len(raw))
        y, y_masked = probs[rows, classes], masked[rows, classes]
    # Eq. 7 per image; an image with Y = 0 contributes 0, as in metrics.average_drop.
    drop = np.where(y > 0, np.maximum(y - y_masked, 0.0) / np.where(y > 0, y, 1.0), 0.0)
    increase = y < y_masked
    return Evaluation(ad=float(100.0 * drop.mean()), ai=float(100.0 * increase.mean()),
                      drop=drop.astype(np.float32), increase=increase, y=y, y_masked=y_masked,
                      classes=classes, tied_images=-1, tied_pixels=-1, flat_maps=-1)


@functools.partial(jax.jit, static_argnames=("fraction",))
def _masks_and_ties(heatmaps: Array, fraction: float) -> tuple[Array, Array, Array]:
    masks = jax.vmap(lambda m: top_fraction_mask(m, fraction))(heatmaps)
    ties = jax.vmap(lambda m: cut_ties(m, fraction))(heatmaps)
    flat = jnp.min(heatmaps, axis=(1, 2)) == jnp.max(heatmaps, axis=(1, 2))
    return masks, ties, flat


def evaluate_heatmaps(fns: ModelFns, params: Params, raw: np.ndarray, heatmaps: np.ndarray, *,
                      logits: np.ndarray | None = None, fraction: float = KEEP_FRACTION,
                      batch_size: int = 64) -> Evaluation:
    """AD / AI of heat maps: keep each map's top ``fraction`` of pixels (§6.2).

    Args:
      fns, params: the model.
      raw: float32[B, S, S, 3] raw target images in [0, 1].
      heatmaps: float32[B, S, S] heat maps drawn on those images.
      logits: optional cached logits on the unmasked targets (see ``evaluate_masks``).
      fraction: share of pixels kept (0.2 in the paper).
      batch_size: maps per jitted mask call and images per forward chunk.

    Returns:
      ``Evaluation`` including the tie report (``TIE_RULE``).
    """
    raw = _check_batch(raw, "raw", 4)
    heatmaps = _check_batch(heatmaps, "heatmaps", 3, len(raw))
    if heatmaps.shape[1:] != raw.shape[1:3]:
        raise ValueError(f"heatmaps: maps of shape {heatmaps.shape[1:]} do not match images "
                         f"{raw.shape[1:3]}")
    num_kept(heatmaps[0].size, fraction)  # validates fraction
    masks, ties, flat = map_chunks(functools.partial(_masks_and_ties, fraction=float(fraction)),
                                   (heatmaps.astype(np.float32),), batch_size)
    ev = evaluate_masks(fns, params, raw, masks, logits=logits, batch_size=batch_size)
    return ev._replace(tied_images=int(np.sum(ties > 0)), tied_pixels=int(np.sum(ties)),
                       flat_maps=int(np.sum(flat)))


def distinct_polytopes(regions: DecisionRegions) -> int:
    """Number of different polytopes among the V: same selected boundaries and same sides on them.

    Args:
      regions: ``DecisionRegions``.

    Returns:
      int in [1, V].
    """
    selected = np.asarray(regions.selected, bool)
    sides_on_selected = selected & np.asarray(regions.signs, bool)
    keys = np.concatenate([selected, sides_on_selected], axis=1)
    return int(len(np.unique(keys, axis=0)))


def ri_summary(ri: RIInterpretations) -> dict:
    """What RI's V interpretations were, for the results files.

    Args:
      ri: from ``ri_interpretations``.

    Returns:
      dict: ``interpretations`` V, ``distinct_polytopes``, ``empty_polytopes`` and
      ``not_reached`` counts, and {mean, min, max} of ``boundaries_per_polytope``,
      ``references_covered``, ``other_class_covered`` and ``tau``.
    """
    d = ri.details

    def stats(values) -> dict:
        v = np.asarray(values, np.float64)
        return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}

    return {"interpretations": int(len(d.selected)),
            "distinct_polytopes": distinct_polytopes(ri.regions),
            "empty_polytopes": int(np.sum(d.empty)),
            "not_reached": int(np.sum(~np.asarray(d.reached))),
            "boundaries_per_polytope": stats(d.num_selected),
            "references_covered": stats(d.num_covered),
            "other_class_covered": stats(d.num_covered_other),
            "tau": stats(d.tau)}


class ACEMasks(NamedTuple):
    """ACE's kept pixels on target images.

    Attributes:
      masks: bool[B, S, S] pixels kept.
      reached: bool[B] more than ``fraction`` of the pixels kept (False: ACE's significant
        segments on that image cover less, and all of them are kept — possibly none).
      num_segments: int32[B] segments of significant concepts found on each target.
    """

    masks: np.ndarray
    reached: np.ndarray
    num_segments: np.ndarray


def ace_interpretations(fns: ModelFns, params: Params, discovery_sets: Sequence[np.ndarray],
                        classes: Sequence[int], config: ACEConfig = ACEConfig(), *, key: Array,
                        cache: ACECache, random_images: np.ndarray | None = None,
                        progress: bool = False) -> list[ACEResult]:
    """ACE's V interpretations, one per discovery set of raw images (§6.4).

    Args:
      fns, params: the model.
      discovery_sets: V raw image arrays [N_v, S, S, 3] in [0, 1].
      classes: V classes to explain (e.g. the prediction on each set's input image).
      config: ACE settings.
      key: PRNG key, split over the sets.
      cache: one ``ACECache`` per model, shared with ``ace_masks``.
      random_images: optional raw images [R, S, S, 3] whose patches form TCAV's random
        counterparts for every set (default: each set's own patches).
      progress: show ACE's progress bars.

    Returns:
      V ``ACEResult``s (a set may yield no significant concept).
    """
    if len(discovery_sets) == 0 or len(discovery_sets) != len(classes):
        raise ValueError(f"discovery_sets: need one non-empty list with one class per set, got "
                         f"{len(discovery_sets)} sets and {len(classes)} classes")
    keys = jax.random.split(key, len(discovery_sets))
    return [discover_concepts(fns.features, fns.head, params, images, int(c), config, key=k,
                              normalize_fn=fns.normalize, random_images=random_images,
                              cache=cache, progress=progress)
            for images, c, k in zip(discovery_sets, classes, keys)]


def ace_masks(results: Sequence[ACEResult], which: np.ndarray, raw: np.ndarray, fns: ModelFns,
              params: Params, *, cache: ACECache, fraction: float = KEEP_FRACTION) -> ACEMasks:
    """Reuses ACE interpretation ``which[b]`` on target b (§6.1) and keeps its pixels (§6.2).

    Args:
      results: V ``ACEResult``s.
      which: int[B] interpretation of each target, in [0, V).
      raw: float32[B, S, S, 3] raw targets in [0, 1].
      fns, params: the model.
      cache: the ``ACECache`` used to discover ``results``.
      fraction: pixel share the kept segments must exceed.

    Returns:
      ``ACEMasks``.
    """
    raw = _check_batch(raw, "raw", 4)
    which = _check_batch(which, "which", 1, len(raw))
    if not np.issubdtype(which.dtype, np.integer) or which.min() < 0 or which.max() >= len(results):
        raise ValueError(f"which: expected integer indices in [0, {len(results)})")
    masks = np.zeros(raw.shape[:3], bool)
    reached = np.zeros(len(raw), bool)
    count = np.zeros(len(raw), np.int32)
    # One batched explain call per interpretation; ACE segments every target once (cached).
    for v in np.unique(which):
        idx = np.flatnonzero(which == v)
        for i, e in zip(idx, explain_batch(results[v], fns.features, params, raw[idx],
                                           normalize_fn=fns.normalize, cache=cache,
                                           fraction=fraction)):
            masks[i], reached[i], count[i] = e.keep, e.reached, len(e.segments)
    return ACEMasks(masks=masks, reached=reached, num_segments=count)


def ace_summary(results: Sequence[ACEResult], found: ACEMasks) -> dict:
    """What ACE's V interpretations were, for the results files.

    Args:
      results: V ``ACEResult``s.
      found: ``ace_masks`` on the evaluated targets.

    Returns:
      dict: ``interpretations`` V, ``without_significant_concept`` (sets that found none),
      {mean, min, max} of ``significant_concepts``, and on the targets ``empty_masks`` (no
      segment kept: a black image) and ``below_fraction`` (kept share not above it).
    """
    sig = np.array([int(np.sum(r.significant)) for r in results], np.float64)
    return {"interpretations": len(results),
            "without_significant_concept": int(np.sum(sig == 0)),
            "significant_concepts": {"mean": float(sig.mean()), "min": float(sig.min()),
                                     "max": float(sig.max())},
            "empty_masks": int(np.sum(~found.masks.any(axis=(1, 2)))),
            "below_fraction": int(np.sum(~found.reached))}
