"""The RI flow in one object (§3–5) over the pure functions of this package.

Once per reference set: feature maps ψ of the references (in batches), their
predicted classes, the sample Q of boundaries (Eq. 2) and the packed sides of
every reference. Per input x: its side bits and class give the packed match
matrix, Algorithm 1 picks P(x), and P(x) gives the covered references ranked by
Eq. 6, the channel weights α (Eq. 5) and the heat maps of x and of its most
similar covered references, drawn with the same α.

``variant`` chooses between the paper's flow above and the authors' (``ri_jax.variants``):
with ``sampling="per_input"`` there is no shared Q; each input draws its own pool from
D(x), its boundaries are found on the decision boundary, and the references' sides are
taken against that pool ([B, Q, ⌈N/32⌉] words, built for chunks of inputs).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ri_jax.boundaries import (DEFAULT_NUM_BOUNDARIES, Boundaries, cap_num_boundaries,
                               check_head, draw_pools, is_piecewise_linear, pool_boundaries,
                               pool_keys, sample_boundaries, sample_indices, side_bits,
                               warn_not_piecewise_linear)
from ri_jax.buckets import bucket_size, first_rows, pad_rows, repeat_last_row
from ri_jax.errors import all_finite
from ri_jax.heatmaps import polytope_heatmap, ri_channel_weights
from ri_jax.model import Model
from ri_jax.ranking import pool_distances, rank_covered, semantic_distance
from ri_jax.regions import DecisionRegions
from ri_jax.solver import GreedyResult, solve
from ri_jax.bits import popcount, unpack_bits
from ri_jax.variants import DEFAULT_VARIANT, RIVariant, ri_variant

Array = jax.Array


class ReferenceSet(NamedTuple):
    """Everything computed once from the references.

    Attributes:
      feats: [N, h, w, c] reference feature maps ψ.
      preds: int32[N] predicted classes.
      boundary_refs: int32[Q], the references whose boundaries form Q (None for per-input
        pools, which have no shared Q).
      boundaries: ``Boundaries(w [Q, h, w, c], b [Q])`` (None for per-input pools).
      side_words: uint32[Q, ⌈N/32⌉], packed sides of the references (None for per-input
        pools).
    """

    feats: Array
    preds: Array
    boundary_refs: Array
    boundaries: Boundaries
    side_words: Array


class Diagnostics(NamedTuple):
    """How RI found an input's answer (a batch adds a leading axis B to every field).

    Attributes:
      tau: int32 τ(x).
      reached: bool, at most δ references of other classes are covered.
      x_side: bool[Q], x's side of each boundary of its Q.
      pool: int32[Q], the references whose boundaries form x's Q (the shared sample, or
        x's own pool drawn from D(x)).
      num_selected_greedy: int32 |P(x)| before the loosen step, the authors' extras included
        where δ was not reached (= ``num_selected`` without the step).
      search_steps: int32[Q], steps of each boundary search (0 for the shared sample).
      search_converged: bool[Q], whether each search reached ΔG² < tol (True for the
        shared sample); a search that did not converge used its last point of class c.
    """

    tau: Array
    reached: Array
    x_side: Array
    pool: Array
    num_selected_greedy: Array
    search_steps: Array
    search_converged: Array


def shared_diagnostics(boundary_refs: Array, x_sides: Array, result: GreedyResult,
                       num_selected_greedy: Array) -> Diagnostics:
    """The ``Diagnostics`` of inputs solved against the shared sample (no searches).

    Args:
      boundary_refs: int32[Q] the sample's references.
      x_sides: bool[..., Q] the inputs' sides ([Q] for one input, [B, Q] for a batch).
      result: their ``GreedyResult`` (after the loosen step).
      num_selected_greedy: int32[...] |P(x)| before the loosen step.

    Returns:
      ``Diagnostics`` with the leading axes of ``x_sides``.
    """
    return Diagnostics(tau=result.tau, reached=result.reached, x_side=x_sides,
                       pool=jnp.broadcast_to(boundary_refs, x_sides.shape),
                       num_selected_greedy=num_selected_greedy,
                       search_steps=jnp.zeros(x_sides.shape, jnp.int32),
                       search_converged=jnp.ones(x_sides.shape, bool))


class Interpretation(NamedTuple):
    """RI's answer for one input (``interpret_batch`` adds a leading batch axis B to every field).

    Attributes:
      predicted_class: int32, Class(x).
      selected: bool[Q], boundaries of P(x).
      order: int32[Q], selection order, −1 padded.
      num_selected: int32 |P(x)|.
      empty: bool, P(x) has no boundary (δ was met by the whole sample's space): every
        reference is covered, the distances are 0 and the heat maps are all zeros.
      delta: int32 δ used (τ(x) by default).
      covered: bool[N], references covered by P(x).
      num_covered: int32 |P(x) ∩ R|.
      num_covered_other: int32 |P(x) ∩ D(x)|.
      ranked: int32[N]; ``ranked[:num_covered]`` are the covered references by ascending
        Eq. 6 distance (ties: lower index), the uncovered ones follow.
      ranked_distances: float32[N], Eq. 6 distance of ``ranked[i]`` to x.
      similar: int32[top_k], the top-k covered references, −1 past ``num_covered``.
      similar_distances: float32[top_k], their distances, +inf past ``num_covered``.
      alphas: float32[Q, c], channel weights of every boundary oriented towards x (Eq. 5);
        reuse them on any image with ``heatmaps.polytope_heatmap(alphas, selected, ψ, S)``.
      heatmap: float32[S, S], the heat map of P(x) on x.
      similar_heatmaps: float32[top_k, S, S], the same α drawn on ``similar`` (zeros for −1).
      diagnostics: ``Diagnostics``, how the answer was found (τ(x), x's sides, its pool,
        the searches).
      pool_w: [Q, h, w, c] x's own boundary normals (P(x)'s hyperplanes with ``selected``),
        or None with a shared sample (then they are ``reference_set.boundaries.w``).
      pool_b: [Q] x's own boundary offsets, or None with a shared sample.
    """

    predicted_class: Array
    selected: Array
    order: Array
    num_selected: Array
    empty: Array
    delta: Array
    covered: Array
    num_covered: Array
    num_covered_other: Array
    ranked: Array
    ranked_distances: Array
    similar: Array
    similar_distances: Array
    alphas: Array
    heatmap: Array
    similar_heatmaps: Array
    diagnostics: Diagnostics
    pool_w: Array | None = None
    pool_b: Array | None = None


def _explain_with(ref_feats: Array, bounds: Boundaries, psi_x: Array, predicted_class: Array,
                  result: GreedyResult, diagnostics: Diagnostics,
                  distances: Array | None = None, *, top_k: int,
                  image_size: int) -> Interpretation:
    """Turns Algorithm 1's result for one input into an ``Interpretation`` (§5).

    Args:
      ref_feats: [N, h, w, c] reference feature maps.
      bounds: ``Boundaries(w [Q, h, w, c], b [Q])`` of x's Q.
      psi_x: [h, w, c] feature map of x.
      predicted_class: int32 Class(x).
      result: ``GreedyResult`` of x (unbatched).
      diagnostics: x's ``Diagnostics`` (unbatched).
      distances: float32[N] Eq. 6 distances when already known (per-input pools take them
        from their sides' products), else None to compute them here.
      top_k: number of similar references to return, 1 ≤ top_k ≤ N.
      image_size: side S of the heat maps.

    Returns:
      ``Interpretation``.
    """
    covered = unpack_bits(result.covered, ref_feats.shape[0])
    if distances is None:
        distances = semantic_distance(bounds.w, result.selected, psi_x, ref_feats)
    alphas = ri_channel_weights(bounds.w, bounds.b, psi_x)
    out = interpretation_from(predicted_class, result, diagnostics, covered, distances, alphas,
                              psi_x, top_k=top_k, image_size=image_size)
    draw = jax.vmap(polytope_heatmap, in_axes=(None, None, 0, None))
    similar_maps = draw(alphas, result.selected, ref_feats[out.ranked[:top_k]], image_size)
    return out._replace(similar_heatmaps=jnp.where((out.similar >= 0)[:, None, None],
                                                   similar_maps, 0.0))


def interpretation_from(predicted_class: Array, result: GreedyResult, diagnostics: Diagnostics,
                        covered: Array, distances: Array, alphas: Array, psi_x: Array, *,
                        top_k: int, image_size: int) -> Interpretation:
    """The ``Interpretation`` of one input from its covered set and Eq. 6 distances.

    The similar references' heat maps are left zero (drawing them needs their ψ), and so is
    the pool (``pool_w``/``pool_b`` None): a batch of per-input pools sets it whole.

    Args:
      predicted_class: int32 Class(x).
      result: ``GreedyResult`` of x (unbatched), Q boundaries.
      diagnostics: x's ``Diagnostics`` (unbatched).
      covered: bool[N] references covered by P(x).
      distances: float32[N] Eq. 6 distances to x.
      alphas: float32[Q, c] channel weights oriented towards x (Eq. 5).
      psi_x: [h, w, c] feature map of x.
      top_k: number of similar references to return, 1 ≤ top_k ≤ N.
      image_size: side S of the heat maps.

    Returns:
      ``Interpretation``.
    """
    ranking = rank_covered(distances, covered)
    ranked_distances = distances[ranking.order]
    present = jnp.arange(top_k) < ranking.count
    return Interpretation(
        predicted_class=jnp.asarray(predicted_class, jnp.int32),
        selected=result.selected, order=result.order, num_selected=result.num_selected,
        empty=result.num_selected == 0, delta=result.delta, covered=covered,
        num_covered=result.num_covered_positive + result.num_covered_negative,
        num_covered_other=result.num_covered_negative,
        ranked=ranking.order, ranked_distances=ranked_distances,
        similar=jnp.where(present, ranking.order[:top_k], -1),
        similar_distances=jnp.where(present, ranked_distances[:top_k], jnp.inf),
        alphas=alphas,
        heatmap=polytope_heatmap(alphas, result.selected, psi_x, image_size),
        similar_heatmaps=jnp.zeros((top_k, image_size, image_size), jnp.float32),
        diagnostics=diagnostics, pool_w=None, pool_b=None)


def _explain(refs: ReferenceSet, psi_x: Array, predicted_class: Array, result: GreedyResult, *,
             top_k: int, image_size: int) -> Interpretation:
    """``_explain_with`` over the shared sample of a ``ReferenceSet`` (the paper's variant),
    for a ``result`` without the loosen step."""
    w, b = refs.boundaries
    x_sides = jnp.tensordot(w, psi_x, axes=psi_x.ndim,
                            precision=jax.lax.Precision.HIGHEST) + b > 0
    diagnostics = shared_diagnostics(refs.boundary_refs, x_sides, result, result.num_selected)
    return _explain_with(refs.feats, refs.boundaries, psi_x, predicted_class, result,
                         diagnostics, top_k=top_k, image_size=image_size)


explain = jax.jit(_explain, static_argnames=("top_k", "image_size"))


# Floats of per-boundary heat maps held at once by ``_explain_batch`` (256 MiB).
_EXPLAIN_CHUNK_FLOATS = 1 << 26


@functools.partial(jax.jit, static_argnames=("top_k", "image_size"))
def _explain_batch(ref_feats: Array, bounds: Boundaries, feats: Array, preds: Array,
                   result: GreedyResult, diagnostics: Diagnostics,
                   distances: Array | None = None, *, top_k: int,
                   image_size: int) -> Interpretation:
    """``_explain_with`` for a batch; ``bounds`` shared ([Q, ...]) or per input ([B, Q, ...]);
    ``diagnostics`` [B, ...]; ``distances`` float32[B, N] or None."""
    per_input = bounds.b.ndim == 2

    def one(args):
        own, psi_x, c, res, diag, d = args
        return _explain_with(ref_feats, bounds if own is None else own, psi_x, c, res, diag, d,
                             top_k=top_k, image_size=image_size)

    # polytope_heatmap holds Q low-resolution maps and one full-size map per drawing,
    # (1 + top_k)·(Q·h·w + S²) floats per input: vmapped chunks bound that memory.
    q, h, w = bounds.w.shape[-4:-1]
    per_row = (1 + top_k) * (q * h * w + image_size ** 2)
    chunk = max(1, min(feats.shape[0], _EXPLAIN_CHUNK_FLOATS // per_row))
    out = jax.lax.map(one, (bounds if per_input else None, feats, preds, result, diagnostics,
                            distances), batch_size=chunk)
    # Each input's pool is already a [B, Q, ...] array: kept as it is, not copied row by
    # row through the map's outputs.
    return out._replace(pool_w=bounds.w, pool_b=bounds.b) if per_input else out


# Floats held at once by the per-input pools (256 MiB): each input's boundary normals, and
# its sides' products with every reference (or its side words, for a streamed store).
_POOL_CHUNK_FLOATS = 1 << 26


def _check_array(value, name: str, ndim: int) -> Array:
    if not isinstance(value, jax.Array):  # checked on the host before it moves
        value = np.asarray(value)
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} axes, got shape {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating array, got dtype {value.dtype}")
    if value.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    if not all_finite(value):
        raise ValueError(f"{name}: contains NaN or inf")
    return value


class ModelFns(NamedTuple):
    """The model as the interpreter and its reference stores call it.

    Attributes:
      features: ψ jitted, normalised images [B, S, S, C] → [B, h, w, c].
      head: G jitted, ψ [B, h, w, c] → logits [B, C].
      raw_head: G as given (made hashable): boundary searches and Eq. 2 trace it themselves.
      batch_size: images (or feature maps) per call of ``features``/``head``.
    """

    features: Callable[[Array], Array]
    head: Callable[[Array], Array]
    raw_head: Callable[[Array], Array]
    batch_size: int


def model_fns(features_fn, head_fn, batch_size: int) -> ModelFns:
    """Checks the model functions and batch size, and jits the functions.

    Args:
      features_fn: ψ, images [B, S, S, C] → [B, h, w, c].
      head_fn: G, ψ [B, h, w, c] → logits [B, C].
      batch_size: ≥ 1.

    Returns:
      ``ModelFns``.
    """
    if not callable(features_fn):
        raise ValueError("features_fn: must be callable")
    if not callable(head_fn):
        raise ValueError("head_fn: must be callable")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    raw_head = head_fn
    try:
        hash(head_fn)
    except TypeError:  # jit and the searches key their caches on the function
        raw_head = functools.partial(head_fn)
    return ModelFns(features=jax.jit(features_fn), head=jax.jit(head_fn), raw_head=raw_head,
                    batch_size=int(batch_size))


def in_batches(fn, inputs: Array, batch_size: int, desc: str | None = None,
               progress: bool = False) -> Array:
    """Applies ``fn`` in batches; the last batch is padded so one compiled shape serves all.

    Fewer inputs than ``batch_size`` are padded to their ``bucket_size``, so small batches
    of nearby sizes share a compiled ``fn``. NumPy inputs are sliced and padded on the host,
    so only ``fn`` runs on the device.

    Args:
      fn: [size, ...] → [size, ...].
      inputs: [n, ...].
      batch_size: rows per call.
      desc, progress: the tqdm bar's label, and whether to show it.

    Returns:
      [n, ...] outputs.
    """
    n = inputs.shape[0]
    size = min(batch_size, bucket_size(n))
    outputs = [fn(pad_rows(inputs[i:i + size], size))
               for i in tqdm(range(0, n, size), desc=desc, unit="batch", disable=not progress)]
    out = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs)
    return out if out.shape[0] == n else first_rows(out, rows=n)


def predict_classes(fns: ModelFns, feats: Array) -> Array:
    """Class(x) = argmax G(ψ) for feature maps [B, h, w, c] → int32[B]."""
    logits = in_batches(fns.head, feats, fns.batch_size)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"head_fn: expected logits [B, C >= 2], got shape {logits.shape}")
    return jnp.argmax(logits, axis=1).astype(jnp.int32)


def chunks_in_turn(run: Callable[[int], tuple], b: int, chunk: int, progress: bool) -> tuple:
    """``run(first)`` for every chunk of B inputs, one after the other, rows concatenated.

    Args:
      run: the pytree of one chunk [chunk, ...] from the index of its first input.
      b: inputs; chunk: inputs per chunk; progress: show a bar over the chunks.

    Returns:
      The pytree with B rows.
    """
    parts = [run(i) for i in tqdm(range(0, b, chunk), desc="boundary pools", unit="chunk",
                                  disable=not progress)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:b], *parts)


def batched_reference_features(fns: ModelFns, images: Array, progress: bool) -> Array:
    """ψ of the reference images [N, S, S, 3] → [N, h, w, c], in batches on this process."""
    return in_batches(fns.features, images, fns.batch_size, "reference features", progress)


def shared_sample(fns: ModelFns, feats: Array, preds: Array, *, key: Array,
                  num_boundaries: int, piecewise_linear: bool | None) -> ReferenceSet:
    """The shared sample Q, its Eq. 2 boundaries and the packed sides, on this process.

    Args:
      fns: the model.
      feats: [N, h, w, c] reference feature maps.
      preds: int32[N] their classes.
      key, num_boundaries, piecewise_linear: as in ``RepresentativeInterpreter``.

    Returns:
      ``ReferenceSet`` with Q ≤ ``num_boundaries`` boundaries.
    """
    chosen = sample_indices(feats.shape[0], num_boundaries, key=key)
    bounds = sample_boundaries(fns.raw_head, feats[chosen], piecewise_linear=piecewise_linear)
    return ReferenceSet(feats=feats, preds=preds, boundary_refs=chosen, boundaries=bounds,
                        side_words=side_bits(bounds, feats))


def reference_set_from(fns: ModelFns, references: Array, *, key: Array, num_boundaries: int,
                       shared: bool, is_features: bool, piecewise_linear: bool | None,
                       progress: bool, reference_features=batched_reference_features,
                       sample=shared_sample) -> tuple[ReferenceSet, int]:
    """The references' ψ, classes and (for the shared sample) Q, with the checks of each.

    Args:
      fns: the model.
      references: images [N, S, S, C], or feature maps [N, h, w, c] when ``is_features``.
      key, num_boundaries, is_features, piecewise_linear, progress: as in
        ``RepresentativeInterpreter``.
      shared: build the shared sample Q (else per-input pools: Q is only checked).
      reference_features: ``(fns, images, progress) -> ψ`` (a sharded store splits it
        between processes).
      sample: ``shared_sample``'s signature (a sharded store splits the sides).

    Returns:
      (``ReferenceSet``, |Q|).
    """
    feats = jnp.asarray(references) if is_features else reference_features(fns, references,
                                                                           progress)
    if feats.ndim != 4:
        raise ValueError(f"features_fn: expected feature maps [B, h, w, c], got {feats.shape}")
    check_head(fns.raw_head, feats)  # a clear error before the first batched call
    preds = predict_classes(fns, feats)
    if int(num_boundaries) < 1:
        raise ValueError(f"num_boundaries: must be >= 1, got {num_boundaries}")
    if not shared:
        # What the shared sample checks: |Q| capped at N with a warning, and a warning for
        # a head that is not piecewise linear.
        if piecewise_linear is False or (piecewise_linear is None
                                         and not is_piecewise_linear(fns.raw_head, feats)):
            warn_not_piecewise_linear(stacklevel=4)
        return (ReferenceSet(feats=feats, preds=preds, boundary_refs=None, boundaries=None,
                             side_words=None), cap_num_boundaries(num_boundaries, feats.shape[0]))
    refs = sample(fns, feats, preds, key=key, num_boundaries=num_boundaries,
                  piecewise_linear=piecewise_linear)
    return refs, int(refs.boundary_refs.shape[0])


class InMemoryStore:
    """A reference store holding every reference's ψ on this process (the default).

    Every reference store offers what this one does (duck-typed, no common base):
    ``reference_set``, ``num_boundaries``, ``image_shape``, ``feature_spec``, ``mesh`` (the
    devices the shared sample's solve is split over, or None), and the methods
    ``features``, ``pool_floats_per_input``, ``pool_sides``,
    ``pool_distances``, ``map_chunks`` and ``interpretation``.

    Args:
      reference_set: ``ReferenceSet`` (``feats`` [N, h, w, c] held).
      num_boundaries: |Q| of the shared sample or of each per-input pool.
      image_shape: [S, S, C] of the reference images, None when built from feature maps.

    Attributes:
      feature_spec: ``ShapeDtypeStruct`` of one ψ [h, w, c].
    """

    def __init__(self, reference_set: ReferenceSet, num_boundaries: int,
                 image_shape: tuple | None):
        self.reference_set = reference_set
        self.num_boundaries = num_boundaries
        self.image_shape = image_shape
        self.mesh = None  # one device: the solve is not split
        feats = reference_set.feats
        self.feature_spec = jax.ShapeDtypeStruct(feats.shape[1:], feats.dtype)

    @classmethod
    def build(cls, fns: ModelFns, references: Array, **options) -> InMemoryStore:
        """The store of ``references`` (images, or ψ with ``is_features``).

        Args:
          fns: the model.
          references: [N, S, S, C] images or [N, h, w, c] feature maps.
          **options: ``reference_set_from``'s keywords.
        """
        references = _check_array(references, "references", 4)
        image_shape = None if options["is_features"] else references.shape[1:]
        return cls(*reference_set_from(fns, references, **options), image_shape)

    def features(self, indices: Array) -> Array:
        """ψ of references by index, any shape [...] → [..., h, w, c]."""
        return self.reference_set.feats[indices]

    def pool_floats_per_input(self) -> int:
        """Floats one input's pool holds: its Q normals and its Q·N products."""
        n = self.reference_set.preds.shape[0]
        return self.num_boundaries * (int(np.prod(self.feature_spec.shape)) + n)

    def pool_sides(self, bounds: Boundaries) -> tuple[Array, Array]:
        """The references' packed sides of per-input boundaries, and the products kept.

        One [B·Q, D] × [D, N] product gives the sides and, kept, Eq. 6's projections.

        Args:
          bounds: ``Boundaries(w [B, Q, h, w, c], b [B, Q])``.

        Returns:
          (uint32[B, Q, ⌈N/32⌉], float32[B, Q, N] products for ``pool_distances``).
        """
        return side_bits(bounds, self.reference_set.feats, dots=True)

    def pool_distances(self, bounds: Boundaries, selected: Array, dots_x: Array,
                       dots: Array) -> Array:
        """Eq. 6 distances float32[B, N] on each input's selected boundaries [B, Q], from
        x's products ``dots_x`` [B, Q] and the references' ``dots`` from ``pool_sides``."""
        return pool_distances(selected, dots_x, dots, bounds.w)

    def map_chunks(self, run, b: int, chunk: int, progress: bool):
        """``chunks_in_turn``: every chunk of inputs on this process."""
        return chunks_in_turn(run, b, chunk, progress)

    def interpretation(self, bounds: Boundaries, feats: Array, preds: Array,
                       result: GreedyResult, diagnostics: Diagnostics, distances: Array | None,
                       *, top_k: int, image_size: int) -> Interpretation:
        """``Interpretation``s [B, ...] from the solve (``_explain_batch``)."""
        return _explain_batch(self.reference_set.feats, bounds, feats, preds, result,
                              diagnostics, distances, top_k=top_k, image_size=image_size)


class RepresentativeInterpreter:
    """Representative interpretations of one CNN over one reference store.

    Called as ``RepresentativeInterpreter(model, references, ...)`` with a
    ``ri_jax.model.Model``, or as ``RepresentativeInterpreter(features_fn, head_fn,
    references, ...)`` with the two functions alone. Where the references live is the
    store's business (``store``): in memory (default), streamed as projections
    (``ri_jax.streaming.streaming_interpreter``) or shared between processes
    (``ri_jax.distributed.representative_interpreter``); the answers are the same.

    Args:
      features_fn: a ``Model``, or ψ, ``features_fn(images [B, S, S, C]) -> [B, h, w, c]``
        (normalised images).
      head_fn: G, ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``, piecewise linear (not given
        with a ``Model``).
      references: normalised images [N, S, S, C], or feature maps [N, h, w, c] when
        ``is_features`` (None when ``store`` finds its own).
      key: PRNG key: it draws the shared sample Q, or, for per-input pools, the pool of the
        input at position i of a call is drawn with ``fold_in(key, i)`` unless ``keys``
        are given to ``interpret_batch``.
      num_boundaries: |Q| (capped at N with a warning).
      batch_size: images per call of ``features_fn``/``head_fn``.
      is_features: whether ``references`` are already feature maps.
      piecewise_linear: passed to ``boundaries.sample_boundaries`` (None checks the head;
        per-input pools check it once here, and warn alike).
      progress: show a tqdm bar while computing reference features.
      variant: ``"authors"`` (default: a pool per input), ``"paper"`` (one shared Q) or an
        ``RIVariant`` (``ri_jax.variants``).
      store: builds the reference store, ``store(fns, references, key=, num_boundaries=,
        shared=, is_features=, piecewise_linear=, progress=)``; default
        ``InMemoryStore.build``.

    Attributes:
      num_boundaries: |Q| for every variant: the shared sample's size, or each input's
        pool size (``reference_set.boundaries`` is None for per-input pools).
      variant: the ``RIVariant`` in use.
      store: the reference store (``InMemoryStore`` or another with its methods).
      reference_set: the store's ``ReferenceSet`` (``feats`` None where ψ is not held).
    """

    def __init__(self, features_fn: Model | Callable[[Array], Array],
                 head_fn: Callable[[Array], Array] | Array, references: Array | None = None, *,
                 key: Array, num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
                 batch_size: int = 64, is_features: bool = False,
                 piecewise_linear: bool | None = None, progress: bool = True,
                 variant: str | RIVariant = DEFAULT_VARIANT, store=None):
        if isinstance(features_fn, Model):
            if references is not None:
                raise ValueError("references: give RepresentativeInterpreter(model, references), "
                                 "or (features_fn, head_fn, references)")
            model, references = features_fn, head_fn
            features_fn, head_fn = model.features, model.head
        elif references is None and store is None:
            raise ValueError("references: missing; call RepresentativeInterpreter(model, "
                             "references) or (features_fn, head_fn, references)")
        self.fns = model_fns(features_fn, head_fn, batch_size)
        self.variant = ri_variant(variant)
        self._key = key
        build = InMemoryStore.build if store is None else store
        self.store = build(self.fns, references, key=key, num_boundaries=num_boundaries,
                           shared=self.variant.sampling == "shared", is_features=is_features,
                           piecewise_linear=piecewise_linear, progress=progress)
        self.num_boundaries = self.store.num_boundaries

    @property
    def reference_set(self) -> ReferenceSet:
        return self.store.reference_set

    @property
    def image_shape(self) -> tuple | None:
        return self.store.image_shape

    @property
    def batch_size(self) -> int:
        return self.fns.batch_size

    @property
    def num_refs(self) -> int:
        return self.reference_set.preds.shape[0]

    def features(self, images: Array) -> Array:
        """ψ of normalised images [B, S, S, 3] → [B, h, w, c], in batches."""
        return self._features(self._check_images(images, "images"), "images")

    def _features(self, images: Array, name: str) -> Array:
        feats = in_batches(self.fns.features, images, self.batch_size)
        self._check_feature_shape(feats, name)
        return feats

    def _check_feature_shape(self, feats: Array, name: str) -> None:
        want = self.store.feature_spec.shape
        if feats.shape[1:] != want:
            raise ValueError(f"{name}: feature maps of shape {feats.shape[1:]} do not match the "
                             f"references' {want}")

    def predict_classes(self, feats: Array) -> Array:
        """Class(x) = argmax G(ψ) for feature maps [B, h, w, c] → int32[B]."""
        return predict_classes(self.fns, feats)

    def _check_images(self, images, name: str) -> Array:
        images = _check_array(images, name, 4)
        if self.image_shape is not None and images.shape[1:] != self.image_shape:
            raise ValueError(f"{name}: expected images of shape {self.image_shape}, got "
                             f"{images.shape[1:]}")
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"{name}: expected square images, got {images.shape[1:3]}")
        return images

    def _check_top_k(self, top_k) -> int:
        if not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= self.num_refs:
            raise ValueError(f"top_k: must be an integer in [1, {self.num_refs}], got {top_k!r}")
        return int(top_k)

    @functools.cached_property
    def num_classes(self) -> int:
        """C, the head's output size: the solver's static class count.

        Read from the head's shape rather than the batch's classes, so a batch never waits
        on the device for it and the solver compiles once per shape, whichever classes a
        batch happens to predict.
        """
        spec = self.store.feature_spec
        logits = jax.eval_shape(self.fns.raw_head,
                                jax.ShapeDtypeStruct((1, *spec.shape), spec.dtype))
        return int(logits.shape[-1])

    def _keys(self, keys, b: int) -> Array:
        if keys is None:
            return pool_keys(self._key, np.arange(b))
        keys = jnp.asarray(keys)
        if keys.shape[:1] != (b,):
            raise ValueError(f"keys: expected {b} PRNG keys (one per input), got shape {keys.shape}")
        return keys
    def interpret(self, x: Array, *, top_k: int = 5, key: Array | None = None) -> Interpretation:
        """Interprets one normalised image x [S, S, 3].

        Args:
          x: [S, S, 3] normalised image.
          top_k: similar references to return.
          key: PRNG key of x's pool (per-input pools only; default ``fold_in(key, 0)``).

        Returns:
          ``Interpretation`` for x.
        """
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x: expected one image [S, S, 3], got shape {x.shape}")
        self._check_images(x[None], "x")
        keys = None if key is None else jnp.asarray(key)[None]
        batch = self.interpret_batch(x[None], top_k=top_k, keys=keys)
        return jax.tree.map(lambda a: a[0], batch)

    def solve_features(self, feats: Array, preds: Array, *, keys: Array | None = None,
                       progress: bool = False) -> tuple[Boundaries, GreedyResult, Diagnostics]:
        """Boundaries, Algorithm 1 (and the loosen step) for inputs given by feature maps.

        Args:
          feats: [B, h, w, c] inputs' feature maps.
          preds: int32[B], their classes.
          keys: [B] PRNG keys of per-input pools (see the class docstring).
          progress: show a bar over chunks of inputs (per-input pools only).

        Returns:
          (``Boundaries`` shared [Q, ...] or per input [B, Q, ...], ``GreedyResult`` after the
          loosen step, ``Diagnostics`` [B, ...]).
        """
        return self._solve_features(feats, preds, keys=keys, progress=progress)[:3]

    def _solve_features(self, feats: Array, preds: Array, *, keys: Array | None = None,
                        progress: bool = False):
        """``solve_features``, then the Eq. 6 distances float32[B, N] where they came for
        free (per-input pools), else None."""
        b = feats.shape[0]
        host = np.asarray(preds)  # B ids: read on the host, where checking compiles nothing
        if host.shape != (b,) or not np.issubdtype(host.dtype, np.integer) or (
                b and not 0 <= host.min() <= host.max() < self.num_classes):
            raise ValueError(f"preds: expected {b} class ids in [0, {self.num_classes}) (the "
                             f"head's outputs), got {host.dtype}{host.shape}")
        preds = jnp.asarray(preds)
        delta = jnp.zeros((b,), jnp.int32) if self.variant.delta == "zero" else None
        if self.variant.sampling == "shared":
            refs = self.reference_set
            x_sides = side_bits(refs.boundaries, feats, packed=False).T
            result, greedy = self._solve(refs.side_words, x_sides, preds, delta)
            return (refs.boundaries, result,
                    shared_diagnostics(refs.boundary_refs, x_sides, result, greedy), None)
        return self._solve_pools(feats, preds, self._keys(keys, b), delta, progress)

    def _solve(self, side_words, x_sides, preds, delta):
        """``solver.solve`` as the variant asks: Algorithm 1, the authors' extras and the
        loosen step; the shared sample's solve split over the store's ``mesh``."""
        variant = self.variant
        return solve(side_words, x_sides, ref_classes=self.reference_set.preds, x_classes=preds,
                     num_classes=self.num_classes, delta=delta, keep_adding=variant.keep_adding,
                     loosen=variant.loosen, mesh=self.store.mesh if side_words.ndim == 2 else None,
                     check=False)

    def _solve_pools(self, feats, preds, keys, delta, progress):
        """The authors' per-input pools, in chunks of inputs of bounded memory, spread as the
        store spreads them (``map_chunks``).

        Returns:
          ``_solve_features``'s four values, the distances float32[B, N].
        """
        b = feats.shape[0]
        chunk = self._pool_chunk_size(b)
        return self.store.map_chunks(
            lambda i: self._pool_chunk(feats[i:i + chunk], preds[i:i + chunk],
                                       keys[i:i + chunk], delta is not None, chunk),
            b, chunk, progress)

    def _pool_chunk_size(self, b: int) -> int:
        """Inputs per chunk of per-input pools: what they hold (the store says) ≤ 256 MiB."""
        return max(1, min(b, _POOL_CHUNK_FLOATS // self.store.pool_floats_per_input()))

    def _pool_chunk(self, feats, preds, keys, zero_delta: bool, chunk: int):
        """One chunk of per-input pools: draw, search + Eq. 2, sides, solve, Eq. 6.

        Args:
          feats: [≤ chunk, h, w, c]; preds: int32[≤ chunk]; keys: [≤ chunk] PRNG keys; a
            short chunk is padded with copies of its last input (one compiled shape).
          zero_delta: δ = 0 (else τ(x)).
          chunk: the chunk size.

        Returns:
          (``Boundaries`` [chunk, Q, ...], ``GreedyResult``, ``Diagnostics``, float32[chunk, N]
          Eq. 6 distances).
        """
        store = self.store
        q = self.num_boundaries
        if feats.shape[0] != chunk:  # one compiled shape for every chunk
            feats, preds, keys = repeat_last_row((feats, preds, keys), size=chunk)
        # An input whose class is the only one the references have (D(x) empty) searches
        # towards a reference of its own class and meets no decision boundary; with no
        # D(x) reference to remove it gets the empty polytope, as with the shared sample.
        pools, _ = draw_pools(self.reference_set.preds, preds, q, keys=keys)
        bounds, found = pool_boundaries(self.fns.raw_head, feats, preds, store.features(pools),
                                        max_steps=self.variant.max_search_steps,
                                        tol=self.variant.search_tol)
        words, dots = store.pool_sides(bounds)
        dots_x = jnp.einsum("bqhwc,bhwc->bq", bounds.w, feats,
                            precision=jax.lax.Precision.HIGHEST)
        x_sides = (dots_x + bounds.b) > 0
        delta = jnp.zeros((chunk,), jnp.int32) if zero_delta else None
        result, greedy = self._solve(words, x_sides, preds, delta)
        diagnostics = Diagnostics(tau=result.tau, reached=result.reached, x_side=x_sides,
                                  pool=pools, num_selected_greedy=greedy,
                                  search_steps=found.steps, search_converged=found.converged)
        return bounds, result, diagnostics, store.pool_distances(bounds, result.selected,
                                                                 dots_x, dots)

    def interpret_batch(self, xs: Array, *, top_k: int = 5, keys: Array | None = None,
                        progress: bool = False) -> Interpretation:
        """Interprets normalised images xs [B, S, S, 3] with one vmapped solve.

        Args:
          xs: [B, S, S, 3] normalised images.
          top_k: similar references kept per input.
          keys: [B] PRNG keys of the per-input pools (default: ``fold_in(key, i)``).
          progress: show a bar over chunks of inputs (per-input pools only).

        Returns:
          ``Interpretation`` with a leading batch axis B on every field.
        """
        xs = self._check_images(xs, "xs")
        top_k = self._check_top_k(top_k)
        feats = self._features(xs, "xs")
        return self.interpret_features(feats, top_k=top_k, image_size=xs.shape[1], keys=keys,
                                       progress=progress)

    def interpret_features(self, feats: Array, *, top_k: int = 5, image_size: int,
                           keys: Array | None = None, progress: bool = False) -> Interpretation:
        """``interpret_batch`` for inputs given by their feature maps [B, h, w, c].

        Inside, the batch runs padded to ``buckets.bucket_size(B)`` rows (copies of its last
        input, dropped from the answer), so batches of nearby sizes share compiled programs.

        Args:
          feats: [B, h, w, c].
          top_k: similar references kept per input.
          image_size: side S of the heat maps.
          keys: as in ``interpret_batch``.
          progress: as in ``interpret_batch``.

        Returns:
          ``Interpretation`` with a leading batch axis B.
        """
        feats = jnp.asarray(_check_array(feats, "feats", 4))
        top_k = self._check_top_k(top_k)
        b = feats.shape[0]
        keys = None if keys is None else self._keys(keys, b)
        rows = bucket_size(b)
        if rows != b:  # every stage compiled once per bucket; the copies are dropped below
            feats, keys = repeat_last_row((feats, keys), size=rows)
        preds = self.predict_classes(feats)
        bounds, result, diagnostics, distances = self._solve_features(feats, preds, keys=keys,
                                                                      progress=progress)
        out = self.store.interpretation(bounds, feats, preds, result, diagnostics, distances,
                                 top_k=top_k, image_size=int(image_size))
        return out if rows == b else first_rows(out, rows=b)

    def regions_from(self, interps: Interpretation) -> DecisionRegions:
        """Decision regions (appendix D) of interpretations from ``interpret_batch``.

        Args:
          interps: ``Interpretation`` with a batch axis V.

        Returns:
          ``DecisionRegions``: over the shared Q, or over each input's own pool (w [V, Q, ...]).
        """
        if interps.pool_w is None:
            w, b = self.reference_set.boundaries
        else:
            w, b = interps.pool_w, interps.pool_b
        return DecisionRegions(w=w, b=b, selected=interps.selected, signs=interps.diagnostics.x_side,
                               label=interps.predicted_class,
                               num_covered_refs=jnp.asarray(interps.num_covered, jnp.int32))

    def regions_for(self, feats: Array, *, keys: Array | None = None) -> DecisionRegions:
        """Decision regions (appendix D) of inputs given by their feature maps.

        Solved padded to ``buckets.bucket_size(V)`` rows, as in ``interpret_features``.

        Args:
          feats: [V, h, w, c] feature maps of the V inputs (e.g. references nearest the
            k-means centres).
          keys: [V] PRNG keys of per-input pools (see the class docstring).

        Returns:
          ``DecisionRegions`` over this interpreter's boundaries (or each input's pool).
        """
        feats = jnp.asarray(_check_array(feats, "feats", 4))
        self._check_feature_shape(feats, "feats")
        v = feats.shape[0]
        keys = None if keys is None else self._keys(keys, v)
        rows = bucket_size(v)
        if rows != v:  # copies of the last input, dropped again below
            feats, keys = repeat_last_row((feats, keys), size=rows)
        preds = self.predict_classes(feats)
        bounds, result, diag = self.solve_features(feats, preds, keys=keys)
        per_input = dict(selected=result.selected, signs=diag.x_side, label=preds,
                         num_covered_refs=popcount(result.covered))
        if bounds.b.ndim == 2:  # per-input pools are rows too; a shared sample is not
            per_input.update(w=bounds.w, b=bounds.b)
        if rows != v:
            per_input = first_rows(per_input, rows=v)
        return DecisionRegions(**{"w": bounds.w, "b": bounds.b, **per_input})
