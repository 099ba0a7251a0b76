"""Reference sets streamed as projections: memory O(N·Q) instead of O(N·h·w·c).

From a reference r, the paper's RI needs its class, its side of every boundary in Q
(the packed side matrix) and, for Eq. 6, its Q projections ⟨W_h/‖W_h‖, ψ(r)⟩. None
of these needs ψ(r) once computed, so ``stream_references`` reads the images in
batches, computes ψ, and keeps only the predicted classes, packed sides and
projections (an [N, Q] float matrix): 1,000,000 references with |Q| = 50 take
200 MB of projections and 6 MB of side bits instead of 400 GB of VGG-19 feature maps.

Heat maps need ψ only for the few references that are shown; ``StreamingInterpreter``
recomputes those from the images (or takes them from ``feats`` when
``keep_features=True`` kept ψ in memory, for sets where it fits).

Every value is computed with the shapes of the in-memory ``RepresentativeInterpreter``:
ψ and classes in the same batches, the sample's ψ from those batches, the sides in
the same matmul chunks. So the boundaries, sides, selections, covered sets and
rankings are identical (``tests/test_streaming.py``); Eq. 6 projections come from
chunked products instead of one [N, D]·[D, Q] product, so distances agree to float
rounding (identical in the tests, not guaranteed by XLA for every shape).

In a multi-process run (``ri_jax.distributed``) each process streams its share of
whole chunks and the [N, Q] projections, classes and side words are gathered.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ri_jax.boundaries import (DEFAULT_NUM_BOUNDARIES, Boundaries, draw_pools, pool_boundaries,
                               sample_boundaries, sample_indices, sides_packed_per_input)
from ri_jax.buckets import bucket_size, first_rows, pad_rows, repeat_last_row
from ri_jax.distributed import (chunk_sides_packed, from_main_process, gather_shares,
                                is_main_process, share_range, side_chunk_size)
from ri_jax.heatmaps import polytope_heatmap, ri_channel_weights
from ri_jax.interpreter import (_POOL_CHUNK_FLOATS, Interpretation, ReferenceSet,
                                RepresentativeInterpreter, _diagnostics, interpretation_from)
from ri_jax.ranking import (distance_from_projections, pool_distances, projection, projections,
                            unit_normals)
from ri_jax.solver import WORD_BITS, GreedyResult, num_words, unpack_bits, valid_words
from ri_jax.variants import DEFAULT_VARIANT, RIVariant, ri_variant

Array = jax.Array


class StreamedReferences(NamedTuple):
    """What RI keeps of a streamed reference set.

    Attributes:
      preds: int32[N] predicted classes.
      boundary_refs: int32[Q] references whose boundaries form Q.
      boundaries: ``Boundaries(w [Q, h, w, c], b [Q])``.
      normals: float32[Q, h·w·c] unit normals W_h/‖W_h‖.
      side_words: uint32[Q, ⌈N/32⌉] packed sides.
      projections: float32[N, Q], ⟨n_h, ψ(r)⟩ (Eq. 6 needs nothing else from r).
      feats: [N, h, w, c] ψ when kept (``keep_features=True``), else None.
    """

    preds: Array
    boundary_refs: Array
    boundaries: Boundaries
    normals: Array
    side_words: Array
    projections: Array
    feats: Array | None


def stream_references(features_fn: Callable[[Array], Array], head_fn: Callable[[Array], Array],
                      load_images: Callable[[np.ndarray], np.ndarray], num_refs: int, *,
                      key: Array, num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
                      batch_size: int = 64, piecewise_linear: bool | None = None,
                      keep_features: bool = False, progress: bool = True) -> StreamedReferences:
    """Streams images → ψ in batches → classes, packed sides and projections.

    Two passes over the images: one over the (at most |Q|) batches holding the sample Q,
    for Eq. 2, then one over every batch. Peak memory is the outputs plus one side chunk
    of ψ (1,024 maps).

    Args:
      features_fn: ψ of normalised images [B, S, S, 3] → [B, h, w, c] (jitted here).
      head_fn: G, ψ → logits [B, C], piecewise linear.
      load_images: normalised images of int64 reference indices [k] → [k, S, S, 3]
        (e.g. ``lambda i: fns.normalize(image_set.raw(i))``, or a generator of synthetic
        images); called with runs of consecutive indices.
      num_refs: N.
      key: PRNG key drawing Q (the same draw as ``RepresentativeInterpreter``).
      num_boundaries: |Q| (capped at N with a warning).
      batch_size: images per ``features_fn`` call.
      piecewise_linear: as in ``boundaries.sample_boundaries``.
      keep_features: also keep every ψ (only where N·h·w·c floats fit in memory).
      progress: show a progress bar.

    Returns:
      ``StreamedReferences``, identical on every process of a multi-process run.
    """
    if not callable(features_fn) or not callable(head_fn) or not callable(load_images):
        raise ValueError("features_fn, head_fn, load_images: must be callable")
    n = int(num_refs)
    if n < 1:
        raise ValueError(f"num_refs: need at least one reference, got {num_refs}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    features_fn, head_jit = jax.jit(features_fn), jax.jit(head_fn)
    size = min(int(batch_size), n)

    def batch_features(first: int) -> np.ndarray:
        """ψ of references [first, first + size) ∩ [0, N), computed as a padded batch."""
        idx = np.arange(first, min(first + size, n), dtype=np.int64)
        images = np.asarray(load_images(idx))
        if images.ndim != 4 or images.shape[0] != len(idx):
            raise ValueError(f"load_images: expected [{len(idx)}, S, S, 3] for {len(idx)} "
                             f"indices, got shape {images.shape}")
        if not np.all(np.isfinite(images)):
            raise ValueError(f"load_images: references {first}..{idx[-1]} contain NaN or inf")
        return np.asarray(features_fn(pad_rows(images, size)))[:len(idx)]

    chosen = np.asarray(sample_indices(n, num_boundaries, key=key))
    sample = {}
    for first in np.unique(chosen // size) * size:
        psi = batch_features(int(first))
        sample.update({int(first) + j: psi[j] for j in range(len(psi))})
    bounds = from_main_process(sample_boundaries(
        head_fn, jnp.asarray(np.stack([sample[int(i)] for i in chosen])),
        piecewise_linear=piecewise_linear))
    normals = unit_normals(bounds.w)
    project = jax.jit(projections)

    chunk = side_chunk_size(n)
    granule = math.lcm(size, chunk)  # shares hold whole batches and whole side chunks
    start, stop = share_range(n, granule)
    q = bounds.w.shape[0]
    feat_shape = bounds.w.shape[1:]
    # Outputs are filled in place, so the peak holds them once (not a list plus its concat).
    local_preds = np.empty(stop - start, np.int32)
    local_proj = np.empty((stop - start, q), np.float32)
    local_words = np.empty((q, num_words(stop - start)), np.uint32)
    kept = np.empty((stop - start,) + feat_shape, np.float32) if keep_features else None
    buffer, done = [], [0]  # maps waiting for a whole side chunk; rows flushed so far

    def flush(rows: int):
        """Sides and projections of the first ``rows`` buffered maps (one side chunk)."""
        held = np.concatenate(buffer)
        feats, rest = held[:rows], held[rows:]
        row = done[0]  # a multiple of ``chunk``, so of 32: side words start on a word
        words = chunk_sides_packed(bounds, feats, chunk)
        local_words[:, row // WORD_BITS:row // WORD_BITS + words.shape[1]] = words
        local_proj[row:row + rows] = np.asarray(project(normals, jnp.asarray(feats)))
        if keep_features:
            kept[row:row + rows] = feats
        done[0] += rows
        buffer[:] = [rest] if len(rest) else []

    for first in tqdm(range(start, stop, size), desc="streamed references", unit="batch",
                      disable=not (progress and is_main_process())):
        psi = batch_features(first)
        local_preds[first - start:first - start + len(psi)] = np.argmax(
            np.asarray(head_jit(pad_rows(psi, size)))[:len(psi)], axis=1)
        buffer.append(psi)
        while sum(len(b) for b in buffer) >= chunk:  # side chunks fall where sides() puts them
            flush(chunk)
    if buffer:
        flush(sum(len(b) for b in buffer))
    side_words = gather_shares(local_words.T, num_words(n), granule // WORD_BITS).T
    feats = jnp.asarray(gather_shares(kept, n, granule)) if keep_features else None
    return StreamedReferences(
        preds=jnp.asarray(gather_shares(local_preds, n, granule), jnp.int32),
        boundary_refs=jnp.asarray(chosen, jnp.int32), boundaries=bounds, normals=normals,
        side_words=jnp.asarray(side_words),
        projections=jnp.asarray(gather_shares(local_proj, n, granule)), feats=feats)


def _chunk_sides(bounds: Boundaries, psi: Array, chunk: int) -> tuple[Array, Array]:
    """Per-input sides and products of one side chunk of references, with the matmul shape
    of the in-memory call (the piece zero-padded to ``chunk``), so the same bits.

    Args:
      bounds: ``Boundaries(w [B, Q, ...], b [B, Q])``.
      psi: [m ≤ chunk, h, w, c], references [start, start + m) with ``start`` a multiple
        of ``chunk`` (itself a multiple of 32).
      chunk: ``distributed.side_chunk_size(N)``.

    Returns:
      (uint32[B, Q, ⌈m/32⌉] padding bits zero, float32[B, Q, m]).
    """
    m = psi.shape[0]
    padded = jnp.pad(psi, [(0, chunk - m)] + [(0, 0)] * (psi.ndim - 1))
    words, dots = sides_packed_per_input(bounds, padded, chunk_size=chunk, dots=True)
    return words[..., :num_words(m)] & valid_words(m, num_words(m)), dots[..., :m]


# Floats of per-boundary heat maps held at once while explaining a batch (256 MiB).
_EXPLAIN_CHUNK_FLOATS = 1 << 26


def _explain_streamed(bounds: Boundaries, psi_x: Array, predicted_class: Array,
                      result: GreedyResult, distances: Array, *, top_k: int,
                      image_size: int) -> Interpretation:
    """An ``Interpretation`` of one input from its Eq. 6 distances; similar heat maps left zero."""
    covered = unpack_bits(result.covered, distances.shape[0])
    alphas = ri_channel_weights(bounds.w, bounds.b, psi_x)
    return interpretation_from(predicted_class, result, covered, distances, alphas, psi_x,
                               top_k=top_k, image_size=image_size)


@functools.partial(jax.jit, static_argnames=("top_k", "image_size"))
def _explain_streamed_batch(refs: StreamedReferences, bounds: Boundaries, feats: Array,
                            preds: Array, result: GreedyResult, distances: Array | None, *,
                            top_k: int, image_size: int) -> Interpretation:
    """``_explain_streamed`` for a batch: the shared sample's ``bounds`` [Q, ...] with
    distances from ``refs.projections`` (``distances`` None), or per-input pools' bounds
    [B, Q, ...] with their distances float32[B, N]."""
    per_input = distances is not None

    def one(args):
        if per_input:
            own, psi_x, c, res, d = args
        else:
            (psi_x, c, res), own = args, bounds
            d = distance_from_projections(res.selected, projection(refs.normals, psi_x),
                                          refs.projections)
        return _explain_streamed(own, psi_x, c, res, d, top_k=top_k, image_size=image_size)

    # Each input draws its Q boundary maps at full size: chunks bound that memory.
    chunk = max(1, min(feats.shape[0],
                       _EXPLAIN_CHUNK_FLOATS // (bounds.w.shape[-4] * image_size ** 2)))
    args = (bounds, feats, preds, result, distances) if per_input else (feats, preds, result)
    return jax.lax.map(one, args, batch_size=chunk)


@functools.partial(jax.jit, static_argnames=("image_size",))
def _draw_similar(alphas: Array, selected: Array, psis: Array, present: Array, *,
                  image_size: int) -> Array:
    """[B, top_k, S, S] heat maps of P(x) drawn on the similar references' ψ [B, top_k, ...]."""
    draw = jax.vmap(jax.vmap(polytope_heatmap, in_axes=(None, None, 0, None)),
                    in_axes=(0, 0, 0, None))
    return jnp.where(present[..., None, None], draw(alphas, selected, psis, image_size), 0.0)


class StreamingInterpreter(RepresentativeInterpreter):
    """``RepresentativeInterpreter`` over a streamed reference set (``stream_references``).

    Same answers as the in-memory class (see the module docstring). With the shared sample
    ψ of a reference is recomputed from ``load_images`` only when its heat map is drawn,
    unless ``keep_features`` kept them all. With per-input pools (the authors' variant, the
    default) each chunk of inputs also reads its pool references' ψ by index and makes two
    passes over all N references (``_pool_chunk``): O(N·Q) memory per input, and time
    linear in N. The streamed set's own sample Q is then unused but for its classes.

    Args:
      features_fn, head_fn, key, num_boundaries, batch_size, piecewise_linear, progress,
        variant: as in ``RepresentativeInterpreter``.
      load_images: normalised reference images of int64 indices [k] → [k, S, S, 3].
      num_refs: N.
      keep_features: keep every ψ in memory (``StreamedReferences.feats``).
    """

    def __init__(self, features_fn: Callable[[Array], Array], head_fn: Callable[[Array], Array],
                 load_images: Callable[[np.ndarray], np.ndarray], num_refs: int, *,
                 key: Array, num_boundaries: int = DEFAULT_NUM_BOUNDARIES, batch_size: int = 64,
                 piecewise_linear: bool | None = None, keep_features: bool = False,
                 progress: bool = True, variant: str | RIVariant = DEFAULT_VARIANT):
        self._setup(features_fn, head_fn, key=key, batch_size=batch_size, variant=variant)
        self._load_images = load_images
        self.streamed = stream_references(
            features_fn, head_fn, load_images, num_refs, key=key, num_boundaries=num_boundaries,
            batch_size=batch_size, piecewise_linear=piecewise_linear,
            keep_features=keep_features, progress=progress)
        s = self.streamed
        first = np.asarray(load_images(np.zeros(1, np.int64)))
        self.image_shape = first.shape[1:]
        # The parent's methods read only the shape of ``feats``: a placeholder stands in.
        feats = s.feats if s.feats is not None else jax.ShapeDtypeStruct(
            (int(num_refs),) + tuple(s.boundaries.w.shape[1:]), jnp.float32)
        self.reference_set = ReferenceSet(feats=feats, preds=s.preds,
                                          boundary_refs=s.boundary_refs, boundaries=s.boundaries,
                                          side_words=s.side_words)
        self.num_boundaries = int(s.boundary_refs.shape[0])

    def _pool_chunk_size(self, b: int) -> int:
        """Inputs per chunk of per-input pools: their side words (Q·⌈N/32⌉ each) and normals
        ≤ 256 MiB; every chunk reads all N ψ twice (``_reference_passes``)."""
        q, n = self.num_boundaries, self.num_refs
        per_input = q * (num_words(n) + int(np.prod(self.reference_set.feats.shape[1:])))
        return max(1, min(b, _POOL_CHUNK_FLOATS // per_input))

    def _reference_passes(self, fn, chunk: int):
        """``fn(start, ψ [≤ chunk, h, w, c])`` over the references in side chunks of ``chunk``:
        kept ψ, or ψ recomputed from the images in batches of ``batch_size``."""
        n = self.num_refs
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            if self.streamed.feats is not None:
                psi = self.streamed.feats[start:stop]
            else:
                size = self.batch_size
                psi = jnp.concatenate([
                    self._features_fn(pad_rows(np.asarray(self._load_images(
                        np.arange(i, min(i + size, stop), dtype=np.int64))), size))[
                        :min(size, stop - i)] for i in range(start, stop, size)])
            fn(start, psi)

    def _pool_chunk(self, feats, preds, keys, zero_delta: bool, chunk: int):
        """The parent's chunk of per-input pools without ψ of every reference in memory.

        The pool references' ψ are read (kept) or recomputed by index; the references' sides
        against the chunk's B·Q boundaries take one pass over all N ψ, the Eq. 6 distances
        on the selected boundaries a second one. Memory: the chunk's side words
        [B, Q, ⌈N/32⌉] and distances [B, N], O(N·Q) per input; time: two passes over the
        references per chunk (N forward passes each, unless ``keep_features``) and the
        Q·N·D multiply-adds per input of each pass.
        """
        q = self.num_boundaries
        if feats.shape[0] != chunk:  # one compiled shape for every chunk
            feats, preds, keys = repeat_last_row((feats, preds, keys), size=chunk)
        pools, _ = draw_pools(self.reference_set.preds, preds, q, keys=keys)
        pool_feats = self.reference_features(np.asarray(pools).ravel())
        bounds, found = pool_boundaries(self._raw_head_fn, feats, preds,
                                        pool_feats.reshape((chunk, q) + feats.shape[1:]),
                                        max_steps=self.variant.max_search_steps,
                                        tol=self.variant.search_tol)
        side_chunk = side_chunk_size(self.num_refs)
        words = []
        self._reference_passes(
            lambda start, psi: words.append(_chunk_sides(bounds, psi, side_chunk)[0]), side_chunk)
        words = jnp.concatenate(words, axis=-1)
        dots_x = jnp.einsum("bqhwc,bhwc->bq", bounds.w, feats,
                            precision=jax.lax.Precision.HIGHEST)
        x_sides = (dots_x + bounds.b) > 0
        delta = jnp.zeros((chunk,), jnp.int32) if zero_delta else None
        result, greedy = self._solve(words, x_sides, preds, delta)
        distances = []
        self._reference_passes(
            lambda start, psi: distances.append(pool_distances(
                result.selected, dots_x, _chunk_sides(bounds, psi, side_chunk)[1], bounds.w)),
            side_chunk)
        return bounds, result, _diagnostics(
            x_side=x_sides, pool=pools, num_selected_greedy=greedy,
            search_steps=found.steps, search_converged=found.converged,
            pool_w=bounds.w, pool_b=bounds.b), jnp.concatenate(distances, axis=-1)

    def reference_features(self, indices) -> Array:
        """ψ of references by index [k] → [k, h, w, c]: kept, or recomputed from the images."""
        idx = np.asarray(indices, np.int64)
        if self.streamed.feats is not None:
            return jnp.asarray(self.streamed.feats)[idx]
        return self._in_batches(self._features_fn, np.asarray(self._load_images(idx)))

    def interpret_batch(self, xs: Array, *, top_k: int = 5, keys: Array | None = None,
                        progress: bool = False) -> Interpretation:
        """Interprets normalised images xs [B, S, S, 3] (see ``RepresentativeInterpreter``).

        ``keys`` and ``progress`` concern per-input pools, which a streamed set does not
        support; they are accepted so that ``interpret`` and callers of the parent work.

        Returns:
          ``Interpretation`` with a leading batch axis B on every field.
        """
        xs = self._check_images(xs, "xs")
        top_k = self._check_top_k(top_k)
        feats = self._features(xs, "xs")
        b, rows = feats.shape[0], bucket_size(feats.shape[0])
        if rows != b:  # as the parent's interpret_features: one compilation per bucket
            feats = repeat_last_row(feats, size=rows)
        preds = self.predict_classes(feats)
        bounds, result, diag, distances = self._solve_features(feats, preds, keys=keys,
                                                               progress=progress)
        out = _explain_streamed_batch(self.streamed, bounds, feats, preds, result, distances,
                                      top_k=top_k, image_size=xs.shape[1])
        out = out._replace(**{k: v for k, v in diag._asdict().items() if v is not None})
        similar = np.asarray(out.similar)
        present = similar >= 0
        shown = np.unique(similar[present])
        if shown.size:
            psi = self.reference_features(shown)
            where = np.searchsorted(shown, np.where(present, similar, shown[0]))
            out = out._replace(similar_heatmaps=_draw_similar(
                out.alphas, out.selected, psi[where], jnp.asarray(present),
                image_size=xs.shape[1]))
        return out if rows == b else first_rows(out, rows=b)
