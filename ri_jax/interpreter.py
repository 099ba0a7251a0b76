"""The RI flow in one object (§3–5) over the pure functions of this package.

Once per reference set: feature maps ψ of the references (in batches), their
predicted classes, the sample Q of boundaries (Eq. 2) and the packed sides of
every reference. Per input x: its side bits and class give the packed match
matrix, Algorithm 1 picks P(x), and P(x) gives the covered references ranked by
Eq. 6, the channel weights α (Eq. 5) and the heat maps of x and of its most
similar covered references, drawn with the same α.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ri_jax.boundaries import (DEFAULT_NUM_BOUNDARIES, Boundaries, sample_boundaries,
                               sample_indices, sides, sides_packed)
from ri_jax.heatmaps import polytope_heatmap, ri_channel_weights
from ri_jax.ranking import rank_covered, semantic_distance
from ri_jax.regions import DecisionRegions
from ri_jax.solver import (GreedyResult, match_words, pack_bits, popcount, solve_batch,
                           solve_greedy_packed, unpack_bits)

Array = jax.Array


class ReferenceSet(NamedTuple):
    """Everything computed once from the references.

    Attributes:
      feats: [N, h, w, c] reference feature maps ψ.
      preds: int32[N] predicted classes.
      boundary_refs: int32[Q], the references whose boundaries form Q.
      boundaries: ``Boundaries(w [Q, h, w, c], b [Q])``.
      side_words: uint32[Q, ⌈N/32⌉], packed sides of the references.
    """

    feats: Array
    preds: Array
    boundary_refs: Array
    boundaries: Boundaries
    side_words: Array


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
      tau: int32 τ(x).
      reached: bool, at most δ references of other classes are covered.
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
    """

    predicted_class: Array
    selected: Array
    order: Array
    num_selected: Array
    empty: Array
    delta: Array
    tau: Array
    reached: Array
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


def _explain(refs: ReferenceSet, psi_x: Array, predicted_class: Array, result: GreedyResult, *,
            top_k: int, image_size: int) -> Interpretation:
    """Turns Algorithm 1's result for one input into an ``Interpretation`` (§5).

    Args:
      refs: the ``ReferenceSet``.
      psi_x: [h, w, c] feature map of x.
      predicted_class: int32 Class(x).
      result: ``GreedyResult`` of x (unbatched).
      top_k: number of similar references to return, 1 ≤ top_k ≤ N.
      image_size: side S of the heat maps.

    Returns:
      ``Interpretation``.
    """
    n = refs.feats.shape[0]
    covered = unpack_bits(result.covered, n)
    distances = semantic_distance(refs.boundaries.w, result.selected, psi_x, refs.feats)
    ranking = rank_covered(distances, covered)
    ranked_distances = distances[ranking.order]
    present = jnp.arange(top_k) < ranking.count
    top = ranking.order[:top_k]
    alphas = ri_channel_weights(refs.boundaries.w, refs.boundaries.b, psi_x)
    draw = jax.vmap(polytope_heatmap, in_axes=(None, None, 0, None))
    similar_maps = draw(alphas, result.selected, refs.feats[top], image_size)
    return Interpretation(
        predicted_class=jnp.asarray(predicted_class, jnp.int32),
        selected=result.selected, order=result.order, num_selected=result.num_selected,
        empty=result.num_selected == 0, delta=result.delta, tau=result.tau,
        reached=result.reached, covered=covered,
        num_covered=result.num_covered_positive + result.num_covered_negative,
        num_covered_other=result.num_covered_negative,
        ranked=ranking.order, ranked_distances=ranked_distances,
        similar=jnp.where(present, top, -1),
        similar_distances=jnp.where(present, ranked_distances[:top_k], jnp.inf),
        alphas=alphas,
        heatmap=polytope_heatmap(alphas, result.selected, psi_x, image_size),
        similar_heatmaps=jnp.where(present[:, None, None], similar_maps, 0.0))


explain = jax.jit(_explain, static_argnames=("top_k", "image_size"))


# Floats of per-boundary heat maps held at once by ``_explain_batch`` (256 MiB).
_EXPLAIN_CHUNK_FLOATS = 1 << 26


@functools.partial(jax.jit, static_argnames=("top_k", "image_size"))
def _explain_batch(refs: ReferenceSet, feats: Array, preds: Array, result: GreedyResult, *,
                   top_k: int, image_size: int) -> Interpretation:
    def one(args):
        return _explain(refs, *args, top_k=top_k, image_size=image_size)

    # polytope_heatmap draws all Q boundary maps at full size, (1 + top_k)·Q·S² floats per
    # input: vmapped chunks bound that memory for large batches and images.
    per_input = (1 + top_k) * refs.boundaries.w.shape[0] * image_size ** 2
    chunk = max(1, min(feats.shape[0], _EXPLAIN_CHUNK_FLOATS // per_input))
    return jax.lax.map(one, (feats, preds, result), batch_size=chunk)


def _check_array(value, name: str, ndim: int) -> Array:
    value = jnp.asarray(value)
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} axes, got shape {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating array, got dtype {value.dtype}")
    if value.shape[0] == 0:
        raise ValueError(f"{name}: is empty")
    if not bool(jnp.all(jnp.isfinite(value))):
        raise ValueError(f"{name}: contains NaN or inf")
    return value


class RepresentativeInterpreter:
    """Representative interpretations of one CNN over one reference set.

    Args:
      features_fn: ψ, ``features_fn(images [B, S, S, 3]) -> [B, h, w, c]`` (normalised images).
      head_fn: G, ``head_fn(ψ [B, h, w, c]) -> logits [B, C]``, piecewise linear.
      references: normalised images [N, S, S, 3], or feature maps [N, h, w, c] when
        ``is_features``.
      key: PRNG key drawing the references whose boundaries form Q.
      num_boundaries: |Q| (capped at N with a warning).
      batch_size: images per call of ``features_fn``/``head_fn``.
      is_features: whether ``references`` are already feature maps.
      piecewise_linear: passed to ``boundaries.sample_boundaries`` (None checks the head).
      progress: show a tqdm bar while computing reference features.
    """

    def __init__(self, features_fn: Callable[[Array], Array], head_fn: Callable[[Array], Array],
                 references: Array, *, key: Array, num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
                 batch_size: int = 64, is_features: bool = False,
                 piecewise_linear: bool | None = None, progress: bool = True):
        if not callable(features_fn):
            raise ValueError("features_fn: must be callable")
        if not callable(head_fn):
            raise ValueError("head_fn: must be callable")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._features_fn = jax.jit(features_fn)
        self._head_fn = jax.jit(head_fn)
        references = _check_array(references, "references", 4)
        self.image_shape = None if is_features else references.shape[1:]
        if is_features:
            feats = references
        else:
            feats = self._in_batches(self._features_fn, references, "reference features",
                                     progress)
        if feats.ndim != 4:
            raise ValueError(f"features_fn: expected feature maps [B, h, w, c], got {feats.shape}")
        preds = self.predict_classes(feats)
        chosen = sample_indices(feats.shape[0], num_boundaries, key=key)
        bounds = sample_boundaries(head_fn, feats[chosen], piecewise_linear=piecewise_linear)
        self.reference_set = ReferenceSet(feats=feats, preds=preds, boundary_refs=chosen,
                                          boundaries=bounds,
                                          side_words=sides_packed(bounds, feats))

    @property
    def num_refs(self) -> int:
        return self.reference_set.feats.shape[0]

    def _in_batches(self, fn, inputs: Array, desc: str | None = None,
                    progress: bool = False) -> Array:
        """Applies ``fn`` in batches; the last batch is padded so one compiled shape serves all."""
        n = inputs.shape[0]
        size = min(self.batch_size, n)
        starts = range(0, n, size)
        outputs = []
        for i in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            batch = inputs[i:i + size]
            if batch.shape[0] < size:
                batch = jnp.pad(batch, [(0, size - batch.shape[0])] + [(0, 0)] * (batch.ndim - 1))
            outputs.append(fn(batch))
        return jnp.concatenate(outputs)[:n]

    def features(self, images: Array) -> Array:
        """ψ of normalised images [B, S, S, 3] → [B, h, w, c], in batches."""
        return self._features(self._check_images(images, "images"), "images")

    def _features(self, images: Array, name: str) -> Array:
        feats = self._in_batches(self._features_fn, images)
        if feats.shape[1:] != self.reference_set.feats.shape[1:]:
            raise ValueError(f"{name}: feature maps of shape {feats.shape[1:]} do not match the "
                             f"references' {self.reference_set.feats.shape[1:]}")
        return feats

    def predict_classes(self, feats: Array) -> Array:
        """Class(x) = argmax G(ψ) for feature maps [B, h, w, c] → int32[B]."""
        logits = self._in_batches(self._head_fn, jnp.asarray(feats))
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"head_fn: expected logits [B, C >= 2], got shape {logits.shape}")
        return jnp.argmax(logits, axis=1).astype(jnp.int32)

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

    def _positives(self, preds: Array) -> Array:
        return pack_bits(self.reference_set.preds[None, :] == preds[:, None])

    def interpret(self, x: Array, *, top_k: int = 5) -> Interpretation:
        """Interprets one normalised image x [S, S, 3] (unbatched solve).

        Returns:
          ``Interpretation`` for x.
        """
        x = jnp.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x: expected one image [S, S, 3], got shape {x.shape}")
        top_k = self._check_top_k(top_k)
        refs = self.reference_set
        feats = self._features(self._check_images(x[None], "x"), "x")
        pred = self.predict_classes(feats)
        x_side = sides(refs.boundaries, feats)[:, 0]
        result = solve_greedy_packed(match_words(refs.side_words, x_side, self.num_refs),
                                     self._positives(pred)[0], None, num_refs=self.num_refs)
        return explain(refs, feats[0], pred[0], result, top_k=top_k, image_size=x.shape[0])

    def _solve_features(self, feats: Array, preds: Array) -> tuple[GreedyResult, Array]:
        x_sides = sides(self.reference_set.boundaries, feats).T
        result = solve_batch(self.reference_set.side_words, self.num_refs, x_sides,
                             self._positives(preds))
        return result, x_sides

    def interpret_batch(self, xs: Array, *, top_k: int = 5) -> Interpretation:
        """Interprets normalised images xs [B, S, S, 3] with one vmapped solve.

        Returns:
          ``Interpretation`` with a leading batch axis B on every field.
        """
        xs = self._check_images(xs, "xs")
        top_k = self._check_top_k(top_k)
        feats = self._features(xs, "xs")
        preds = self.predict_classes(feats)
        result, _ = self._solve_features(feats, preds)
        return _explain_batch(self.reference_set, feats, preds, result, top_k=top_k,
                              image_size=xs.shape[1])

    def regions_for(self, feats: Array) -> DecisionRegions:
        """Decision regions (appendix D) of inputs given by their feature maps.

        Args:
          feats: [V, h, w, c] feature maps of the V inputs (e.g. references nearest the
            k-means centres).

        Returns:
          ``DecisionRegions`` over this interpreter's boundaries.
        """
        feats = _check_array(feats, "feats", 4)
        if feats.shape[1:] != self.reference_set.feats.shape[1:]:
            raise ValueError(f"feats: expected feature maps of shape "
                             f"{self.reference_set.feats.shape[1:]}, got {feats.shape[1:]}")
        preds = self.predict_classes(feats)
        result, x_sides = self._solve_features(feats, preds)
        bounds = self.reference_set.boundaries
        return DecisionRegions(w=bounds.w, b=bounds.b, selected=result.selected,
                               signs=x_sides, label=preds,
                               num_covered_refs=popcount(result.covered))
