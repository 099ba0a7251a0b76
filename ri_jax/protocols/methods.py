"""The method registry, and the channel-weight methods in one shape (§6.1, §6.4).

The registry: RI, every CAM method, ACE and every control is one ``Method`` entry (name,
kind, one function); the protocols, the scripts' help and so the reports take their rows
from ``method_names(*kinds)``, in table order (RI, the CAMs, ACE, the controls). A new CAM
method is one ``weights`` function and one ``register_cam_method`` call; a new control one
``heatmaps`` function and one ``register_control`` call.

A channel-weight method (RI, a CAM) gives *interpretations at input images* and draws them
as *heat maps on target images*:

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

RI's interpretations are built in one place, ``ri_at_inputs``, from an ``RIOptions``;
every protocol calls it.

Controls (not the paper's methods, they make the numbers readable), drawn with
``control_heatmaps``:
  * ``"Random"``: i.i.d. uniform heat-map values, i.e. a uniformly random 20 % of
    the pixels (ties have probability zero);
  * ``"Grad-CAM (own weights)"``: Grad-CAM computed at each target itself, no reuse;
  * ``"Centre square"``: the same centred square on every image
    (``metrics.centre_square_heatmap``: the largest centred square within 20 % of the
    pixels, topped up to exactly 20 % from the next square ring by the tie order), a
    positional prior that uses neither the model nor the image.

ACE explains with image segments instead (``protocols.ace_adapter``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.baselines.gradcam import gradcam_weights_batch
from ri_jax.baselines.gradcam_pp import gradcam_pp_weights_batch
from ri_jax.baselines.scorecam import scorecam_weights_batch
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES, pool_keys
from ri_jax.heatmaps import polytope_heatmap
from ri_jax.interpreter import Interpretation, RepresentativeInterpreter
from ri_jax.metrics import centre_square_heatmap
from ri_jax.model import Model
from ri_jax.protocols.ace_adapter import ace_interpretations
from ri_jax.protocols.statistics import mean_min_max
from ri_jax.protocols.batching import check_batch, check_choice, check_positive, map_chunks
from ri_jax.ranking import unit_normals
from ri_jax.regions import DecisionRegions
from ri_jax.variants import RIVariant, ri_variant

Array = jax.Array

# The kinds of entry, in table order; each fixes the calling convention of ``Method.function``.
KINDS = ("ri", "cam", "ace", "control")
RI = "RI"
ACE = "ACE"
# Suffix naming a method computed at each target itself, no reuse: the "Grad-CAM (own weights)"
# control, and Table 1's own-input faithfulness controls.
OWN_WEIGHTS = " (own weights)"


class Method(NamedTuple):
    """One entry of the method registry.

    Attributes:
      name: its name in results, tables and figures, e.g. ``"Grad-CAM"``.
      kind: one of ``KINDS``, which fixes ``function``'s calling convention:
        ``"ri"``: ``ri_at_inputs(model, ref_psi, raw_inputs, options, *, key, top_k,
        progress) -> RIInterpretations``;
        ``"cam"``: ``weights(model, raw [B, S, S, 3], psi [B, h, w, c], classes int[B], *,
        channel_chunk) -> float32[B, c]``, the channel weights at each input for its class,
        jittable (it runs inside ``jax.jit`` with ``model`` static);
        ``"ace"``: ``ace_adapter.ace_interpretations(model, discovery_sets, classes, config,
        *, key, cache, random_images, progress) -> list[ACEResult]``;
        ``"control"``: ``heatmaps(model, raw [B, S, S, 3], psi [B, h, w, c], classes int[B],
        *, key) -> float32[B, S, S]``, heat maps on the targets themselves (no reuse).
      function: the entry's one function.
      random: (controls) its maps are a random draw from ``key``: drawn anew in every run and
        scored without an inverse (the inverse of a random draw is another one).
    """

    name: str
    kind: str
    function: Callable[..., Any]
    random: bool = False


_REGISTRY: dict[str, Method] = {}


def _register(entry: Method) -> None:
    """Adds ``entry``, or replaces the entry of its name when that has the same kind."""
    if not isinstance(entry.name, str) or not entry.name:
        raise ValueError(f"name: expected a non-empty string, got {entry.name!r}")
    taken = _REGISTRY.get(entry.name)
    if taken is not None and taken.kind != entry.kind:
        raise ValueError(f"name: {entry.name!r} is taken by the {taken.kind} entry")
    if not callable(entry.function):
        raise ValueError(f"{entry.name}: expected a callable, got {entry.function!r}")
    _REGISTRY[entry.name] = entry


def register_cam_method(name: str, weights: Callable[..., Array]) -> None:
    """Adds a CAM method to every protocol, table, figure and report.

    Args:
      name: the method's name in results, e.g. ``"Grad-CAM"`` (not taken by another kind).
      weights: ``weights(model, raw [B, S, S, 3], psi [B, h, w, c], classes int[B], *,
        channel_chunk) -> float32[B, c]``, the channel weights at each input for its class;
        jittable (it runs inside ``jax.jit`` with ``model`` static).
    """
    _register(Method(name, "cam", weights))


def register_control(name: str, heatmaps: Callable[..., np.ndarray], *,
                     random: bool = False) -> None:
    """Adds a control to Table 1, Figure 4 and the reports.

    Args:
      name: the control's name in results, e.g. ``"Random"`` (not taken by another kind).
      heatmaps: ``heatmaps(model, raw [B, S, S, 3], psi [B, h, w, c], classes int[B], *,
        key) -> float32[B, S, S]``, its heat maps on the targets (``classes``: the model's
        prediction on each).
      random: the maps are a random draw from ``key`` (drawn anew in every run, no inverse);
        otherwise they ignore ``key`` and a protocol may compute them once.
    """
    _register(Method(name, "control", heatmaps, bool(random)))


def method(name: str) -> Method:
    """The registry's entry ``name`` (``ValueError`` naming the choices when unknown)."""
    check_choice(name, tuple(_REGISTRY))
    return _REGISTRY[name]


def method_names(*kinds: str) -> tuple[str, ...]:
    """The registered names of ``kinds`` (every kind when none are given), in table order.

    Args:
      kinds: some of ``KINDS``, e.g. ``method_names("ri", "cam")`` for the methods that give
        channel weights, ``method_names("control")`` for the controls.

    Returns:
      Names ordered by kind as in ``KINDS``, then by registration.
    """
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"kinds: unknown {unknown}; choose from {list(KINDS)}")
    return tuple(m.name for kind in KINDS if not kinds or kind in kinds
                 for m in _REGISTRY.values() if m.kind == kind)


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


@dataclasses.dataclass(frozen=True)
class RIOptions:
    """How RI's interpretations are built (the one place RI settings enter a protocol).

    Attributes:
      num_boundaries: |Q|, boundaries sampled from the references (capped at N), or the
        size of each input's pool in the authors' variant.
      batch_size: images per forward pass inside the interpreter.
      chunk_size: inputs per ``interpret_batch`` call.
      variant: ``ri_jax.variants.RIVariant``: the authors' code (default, a pool per input)
        or the paper's text.
    """

    num_boundaries: int = DEFAULT_NUM_BOUNDARIES
    batch_size: int = 64
    chunk_size: int = 32
    variant: RIVariant = ri_variant()


@functools.partial(jax.jit, static_argnames=("model", "weights", "channel_chunk"))
def _cam_weights_chunk(model: Model, weights: Callable[..., Array], raw: Array, psi: Array,
                       classes: Array, channel_chunk: int | None) -> Array:
    return weights(model, raw, psi, classes, channel_chunk=channel_chunk)


def cam_weights(method: str, model: Model, raw: np.ndarray, psi: np.ndarray,
                classes: np.ndarray, *, chunk_size: int = 16, channel_chunk: int | None = None,
                progress: bool = False) -> np.ndarray:
    """Channel weights of a CAM method at input images.

    Args:
      method: a registered CAM method (``method_names("cam")``).
      model: the ``ri_jax.model.Model``.
      raw: float32[V, S, S, 3] raw input images in [0, 1] (only Score-CAM reads them).
      psi: float32[V, h, w, c] their feature maps ψ.
      classes: int[V] class to explain at each input (its predicted class).
      chunk_size: inputs per jitted call.
      channel_chunk: Score-CAM's masked images per forward pass (None: as many as
        ``baselines.scorecam_chunk_size`` fits).
      progress: show a progress bar.

    Returns:
      float32[V, c].
    """
    check_choice(method, method_names("cam"))
    psi = check_batch(psi, "psi", 4)
    raw = check_batch(raw, "raw", 4, len(psi))
    classes = check_batch(classes, "classes", 1, len(psi)).astype(np.int32)
    num_classes = jax.eval_shape(model.head, jax.ShapeDtypeStruct((1, *psi.shape[1:]),
                                                                        psi.dtype)).shape[-1]
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"classes: values must lie in [0, {num_classes})")
    fn = functools.partial(_cam_weights_chunk, model, _REGISTRY[method].function,
                           channel_chunk=None if channel_chunk is None
                           else check_positive(channel_chunk, "channel_chunk"))
    return map_chunks(fn, (raw, psi, classes), chunk_size, progress=progress,
                      desc=f"{method} weights")


def cam_interpretations(method: str, model: Model, raw: np.ndarray,
                        psi: np.ndarray, classes: np.ndarray, **kwargs) -> Interpretations:
    """A CAM method's interpretations at V input images (Q = 1, always selected).

    Args:
      method, model, raw, psi, classes: as in ``cam_weights``.
      **kwargs: passed to ``cam_weights`` (``chunk_size``, ``channel_chunk``, ``progress``).

    Returns:
      ``Interpretations`` with alphas [V, 1, c].
    """
    alphas = cam_weights(method, model, raw, psi, classes, **kwargs)
    return Interpretations(alphas=alphas[:, None, :], selected=np.ones((len(alphas), 1), bool))


def make_interpreter(model: Model, ref_psi: np.ndarray, *, key: Array,
                     num_boundaries: int = DEFAULT_NUM_BOUNDARIES, batch_size: int = 64,
                     progress: bool = False,
                     variant: RIVariant = ri_variant()) -> RepresentativeInterpreter:
    """RI over references given by their (cached) feature maps.

    Args:
      model: the ``ri_jax.model.Model``.
      ref_psi: float32[N, h, w, c] reference feature maps.
      key: PRNG key drawing the sample Q.
      num_boundaries: |Q| (capped at N with a warning).
      batch_size: images per forward pass inside the interpreter.
      progress: show the interpreter's progress bars.
      variant: the RI variant.

    Returns:
      ``RepresentativeInterpreter`` with ``is_features=True``.
    """
    store = None
    if jax.process_count() > 1:  # the multi-process module only where there are processes
        from ri_jax.distributed import ShardedStore
        store = ShardedStore.builder()
    return RepresentativeInterpreter(model.features, model.head, ref_psi, key=key,
                                     num_boundaries=num_boundaries, batch_size=batch_size,
                                     is_features=True, piecewise_linear=True,
                                     progress=progress, variant=variant, store=store)


def ri_interpretations(interpreter: RepresentativeInterpreter, model: Model, raw: np.ndarray, *,
                       top_k: int = 1, chunk_size: int = 32, progress: bool = False,
                       pool_key: Array | None = None) -> RIInterpretations:
    """RI's interpretations at V input images, in chunks of ``interpret_batch``.

    Args:
      interpreter: from ``make_interpreter``.
      model: the ``ri_jax.model.Model`` (for ``normalize``).
      raw: float32[V, S, S, 3] raw input images in [0, 1].
      top_k: similar references kept per input in ``details``.
      chunk_size: inputs per ``interpret_batch`` call (bounds its [chunk, Q, S, S] maps).
      progress: show a progress bar.
      pool_key: PRNG key of the per-input pools (authors' variant; default ``key(0)``).

    Returns:
      ``RIInterpretations``; ``regions`` use the same ψ(x_v) the solver saw, so a polytope
      always covers its own input.
    """
    pool_key = jax.random.key(0) if pool_key is None else pool_key
    raw = check_batch(raw, "raw", 4)
    top_k = check_positive(top_k, "top_k")
    # Input v's pool (authors' variant) is drawn with fold_in(pool_key, v): independent of
    # how the inputs are chunked.
    pool_key_data = jax.random.key_data(pool_keys(pool_key, np.arange(len(raw))))

    def one_chunk(chunk, key_data):
        xs = model.normalize(jnp.asarray(chunk))
        keys = jax.random.wrap_key_data(jnp.asarray(key_data))
        return interpreter.interpret_batch(xs, top_k=top_k, keys=keys)

    details = map_chunks(one_chunk, (raw, np.asarray(pool_key_data)), chunk_size,
                         progress=progress, desc="RI interpretations")
    # The regions use the same ψ(x_v) and sides the solver saw, so a polytope always
    # covers its own input.
    regions = interpreter.regions_from(details)
    interps = Interpretations(alphas=details.alphas, selected=details.selected)
    return RIInterpretations(interpretations=interps, details=details, regions=regions)


def ri_at_inputs(model: Model, ref_psi: np.ndarray, raw_inputs: np.ndarray,
                 options: RIOptions = RIOptions(), *, key: Array, top_k: int = 1,
                 progress: bool = False) -> RIInterpretations:
    """RI's interpretations at V input images over the references ``ref_psi``.

    The one function every protocol builds RI with: ``make_interpreter`` then
    ``ri_interpretations``, both set by ``options``.

    Args:
      model: the ``ri_jax.model.Model``.
      ref_psi: float32[N, h, w, c] reference feature maps.
      raw_inputs: float32[V, S, S, 3] raw input images in [0, 1].
      options: ``RIOptions``.
      key: PRNG key drawing the sample Q (paper) or, folded with 1, the per-input pools
        (authors).
      top_k: similar references kept per input in ``details``.
      progress: show a progress bar over input chunks.

    Returns:
      ``RIInterpretations``.
    """
    interpreter = make_interpreter(model, ref_psi, key=key,
                                   num_boundaries=options.num_boundaries,
                                   batch_size=options.batch_size, variant=options.variant)
    return ri_interpretations(interpreter, model, raw_inputs, top_k=top_k,
                              chunk_size=options.chunk_size, progress=progress,
                              pool_key=jax.random.fold_in(key, 1))


def distinct_polytopes(regions: DecisionRegions) -> int:
    """Number of different polytopes among the V: same selected boundaries and same sides on them.

    Args:
      regions: ``DecisionRegions``.

    With per-input pools (the authors' variant) the boundaries differ from input to input,
    so two polytopes are the same when their selected boundaries (offsets and normals) and
    sides on them are equal.

    Returns:
      int in [1, V].
    """
    selected = np.asarray(regions.selected, bool)
    sides_on_selected = selected & np.asarray(regions.signs, bool)
    if np.ndim(regions.b) == 1:
        keys = np.concatenate([selected, sides_on_selected], axis=1)
        return int(len(np.unique(keys, axis=0)))
    w = np.asarray(regions.w).reshape(selected.shape + (-1,))
    b = np.asarray(regions.b)
    polytopes = {tuple(sorted((float(b[v, h]), w[v, h].tobytes(), bool(sides_on_selected[v, h]))
                              for h in np.flatnonzero(selected[v])))
                 for v in range(len(selected))}
    return len(polytopes)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [..., D] arrays; 0 where either row is zero."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.where((na > 0) & (nb > 0), np.sum(a * b, -1) / np.maximum(na * nb, 1e-30), 0.0)


def oriented_normals(ri: RIInterpretations) -> np.ndarray:
    """Unit normals of every interpretation's boundaries, pointing to x_v's side, [V, Q, D]."""
    w = np.asarray(ri.regions.w)
    signs = np.where(np.asarray(ri.regions.signs), 1.0, -1.0)
    if np.ndim(ri.regions.b) == 2:  # per-input pools: w [V, Q, *feat]
        flat = np.asarray(jax.vmap(unit_normals)(w))
    else:
        flat = np.asarray(unit_normals(w))[None]
    return flat * signs[:, :, None]


def ri_diagnostics(ri: RIInterpretations, gradcam_alphas: np.ndarray | None = None) -> dict:
    """How local RI's V interpretations are: search, loosen, coverage and cosine statistics.

    Args:
      ri: from ``ri_interpretations``.
      gradcam_alphas: float32[V, c] Grad-CAM's channel weights at the same inputs, or None.

    Returns:
      dict with ``search_steps`` {mean, max}, ``searches_not_converged`` (count, and the
      fallback used), ``boundaries_before_loosen`` / ``boundaries_after_loosen`` {mean, min,
      max}, ``distinct_covered_sets`` (polytopes told apart by the references they cover,
      which compares polytopes built on different pools), ``cosine_within_polytope``
      (mean pairwise cosine of the oriented unit normals of one polytope's boundaries;
      stats over polytopes with ≥ 2 boundaries), ``cosine_across_interpretations`` (mean
      pairwise cosine between the V polytopes' mean oriented unit normals) and, with
      ``gradcam_alphas``, ``cosine_ri_gradcam`` (cosine between RI's channel weights
      averaged over P(x_v) and Grad-CAM's at x_v).
    """
    d = ri.details
    selected = np.asarray(d.selected, bool)
    normals = oriented_normals(ri)
    within, means = [], []
    for v in range(len(selected)):
        rows = normals[v][selected[v]]
        means.append(rows.mean(axis=0) if len(rows) else np.zeros(normals.shape[-1]))
        if len(rows) >= 2:
            gram = rows @ rows.T
            k = len(rows)
            within.append((gram.sum() - np.trace(gram)) / (k * (k - 1)))
    means = np.asarray(means)
    across = None
    if len(means) >= 2:
        unit = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-30)
        gram = unit @ unit.T
        k = len(unit)
        across = float((gram.sum() - np.trace(gram)) / (k * (k - 1)))
    steps = np.asarray(d.diagnostics.search_steps)
    converged = np.asarray(d.diagnostics.search_converged, bool)
    out = {"search_steps": {"mean": float(steps.mean()), "max": int(steps.max())},
           "searches": int(steps.size) if steps.max() > 0 else 0,
           "searches_not_converged": int(np.sum(~converged)),
           "not_converged_fallback": "the last point of Class(x) found by the search",
           "boundaries_before_loosen": mean_min_max(d.diagnostics.num_selected_greedy),
           "boundaries_after_loosen": mean_min_max(d.num_selected),
           "distinct_covered_sets": int(len(np.unique(np.asarray(d.covered, bool), axis=0))),
           "cosine_within_polytope": mean_min_max(within),
           "cosine_across_interpretations": across}
    if gradcam_alphas is not None:
        alphas = np.asarray(d.alphas)  # [V, Q, c]
        count = np.maximum(selected.sum(axis=1, keepdims=True), 1)
        ri_mean = (alphas * selected[:, :, None]).sum(axis=1) / count
        out["cosine_ri_gradcam"] = mean_min_max(_cosine(ri_mean, np.asarray(gradcam_alphas)))
    return out


def ri_summary(ri: RIInterpretations, gradcam_alphas: np.ndarray | None = None) -> dict:
    """What RI's V interpretations were, for the results files.

    Args:
      ri: from ``ri_interpretations``.
      gradcam_alphas: float32[V, c] Grad-CAM's weights at the same inputs, for
        ``ri_diagnostics``'s cosine (None leaves it out).

    Returns:
      dict: ``interpretations`` V, ``distinct_polytopes``, ``empty_polytopes`` and
      ``not_reached`` counts, {mean, min, max} of ``boundaries_per_polytope``,
      ``references_covered``, ``other_class_covered`` and ``tau``, and ``diagnostics``
      (``ri_diagnostics``).
    """
    d = ri.details
    return {"interpretations": int(len(d.selected)),
            "distinct_polytopes": distinct_polytopes(ri.regions),
            "empty_polytopes": int(np.sum(d.empty)),
            "not_reached": int(np.sum(~np.asarray(d.diagnostics.reached))),
            "boundaries_per_polytope": mean_min_max(d.num_selected),
            "references_covered": mean_min_max(d.num_covered),
            "other_class_covered": mean_min_max(d.num_covered_other),
            "tau": mean_min_max(d.diagnostics.tau),
            "diagnostics": ri_diagnostics(ri, gradcam_alphas)}


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
      chunk_size: targets per jitted call (memory ~ chunk · (Q·h·w + S²) floats).
      progress: show a progress bar.

    Returns:
      float32[B, S, S] maps in [0, 1].
    """
    alphas = check_batch(interps.alphas, "interps.alphas", 3)
    selected = check_batch(interps.selected, "interps.selected", 2, len(alphas))
    if selected.shape[1] != alphas.shape[1] or selected.dtype != bool:
        raise ValueError(f"interps.selected: expected bool{alphas.shape[:2]}, got "
                         f"{selected.dtype}{selected.shape}")
    psi = check_batch(psi, "psi", 4)
    if psi.shape[-1] != alphas.shape[-1]:
        raise ValueError(f"psi: {psi.shape[-1]} channels but the interpretations weigh "
                         f"{alphas.shape[-1]}")
    which = check_batch(which, "which", 1, len(psi))
    if not np.issubdtype(which.dtype, np.integer) or which.min() < 0 or which.max() >= len(alphas):
        raise ValueError(f"which: expected integer indices in [0, {len(alphas)})")
    image_size = check_positive(image_size, "image_size")
    draw = functools.partial(_draw, image_size=image_size)
    # Gather per chunk so at most chunk_size copies of an interpretation exist at once.
    return map_chunks(lambda w, p: draw(alphas[w], selected[w], p), (which, psi), chunk_size,
                      progress=progress, desc="heat maps")


def random_heatmaps(model: Model, raw: np.ndarray, psi: np.ndarray, classes: np.ndarray, *,
                    key: Array) -> np.ndarray:
    """The "Random" control: i.i.d. uniform maps, so the kept 20 % is a uniform random subset.

    Args:
      model, psi, classes: unused (the control convention, ``Method``).
      raw: float32[B, S, S, 3] raw target images (only their number and size are read).
      key: PRNG key.

    Returns:
      float32[B, S, S] in [0, 1).
    """
    raw = check_batch(raw, "raw", 4)
    return np.asarray(jax.random.uniform(key, raw.shape[:3]))


def own_gradcam_heatmaps(model: Model, raw: np.ndarray, psi: np.ndarray,
                         classes: np.ndarray, *, key: Array | None = None) -> np.ndarray:
    """The "Grad-CAM (own weights)" control: Grad-CAM computed at each target itself.

    Args:
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw target images.
      psi: float32[B, h, w, c] their feature maps.
      classes: int[B] the class explained on each target.
      key: unused (deterministic).

    Returns:
      float32[B, S, S].
    """
    raw = check_batch(raw, "raw", 4)
    own = cam_interpretations("Grad-CAM", model, raw, psi, classes, chunk_size=32)
    return interpretation_heatmaps(own, np.arange(len(raw)), psi, raw.shape[1], chunk_size=32)


def centre_square_heatmaps(model: Model, raw: np.ndarray, psi: np.ndarray,
                           classes: np.ndarray, *, key: Array | None = None) -> np.ndarray:
    """The "Centre square" control: ``metrics.centre_square_heatmap`` on every target.

    Args:
      model, psi, classes, key: unused (it reads neither the model nor the image).
      raw: float32[B, S, S, 3] raw target images (only their number and size are read).

    Returns:
      float32[B, S, S], the same map on every target.
    """
    raw = check_batch(raw, "raw", 4)
    return np.broadcast_to(centre_square_heatmap(raw.shape[1]), raw.shape[:3]).copy()


def control_heatmaps(control: str, model: Model, raw: np.ndarray, psi: np.ndarray,
                     classes: np.ndarray, *, key: Array | None = None) -> np.ndarray:
    """Heat maps of a registered control on target images.

    Args:
      control: one of ``method_names("control")``.
      model: the ``ri_jax.model.Model``.
      raw: float32[B, S, S, 3] raw target images.
      psi: float32[B, h, w, c] their feature maps.
      classes: int[B] the model's prediction on each target.
      key: PRNG key, required by a random control (``Method.random``).

    Returns:
      float32[B, S, S].
    """
    check_choice(control, method_names("control"), "control")
    entry = _REGISTRY[control]
    if entry.random and key is None:
        raise ValueError(f"key: the {control!r} control draws its maps at random and needs a "
                         "PRNG key")
    return entry.function(model, check_batch(raw, "raw", 4), psi, classes, key=key)


# The registry's entries, in table order within each kind.
_register(Method(RI, "ri", ri_at_inputs))
register_cam_method("Grad-CAM", lambda model, raw, psi, classes, *, channel_chunk:
                    gradcam_weights_batch(model.head, psi, classes))
register_cam_method("Grad-CAM++", lambda model, raw, psi, classes, *, channel_chunk:
                    gradcam_pp_weights_batch(model.head, psi, classes))
register_cam_method("Score-CAM", lambda model, raw, psi, classes, *, channel_chunk:
                    scorecam_weights_batch(model.forward, model.normalize, raw, psi, classes,
                                           chunk_size=channel_chunk))
_register(Method(ACE, "ace", ace_interpretations))
register_control("Random", random_heatmaps, random=True)
register_control("Grad-CAM" + OWN_WEIGHTS, own_gradcam_heatmaps)
register_control("Centre square", centre_square_heatmaps)
