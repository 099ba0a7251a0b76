"""Reference sets streamed as projections: memory O(N·Q) instead of O(N·h·w·c).

From a reference r, the paper's RI needs its class, its side of every boundary in Q
(the packed side matrix) and, for Eq. 6, its Q projections ⟨W_h/‖W_h‖, ψ(r)⟩. None
of these needs ψ(r) once computed, so ``stream_references`` reads the images in
batches, computes ψ, and keeps only the predicted classes, packed sides and
projections (an [N, Q] float matrix): 1,000,000 references with |Q| = 50 take
200 MB of projections and 6 MB of side bits instead of 400 GB of VGG-19 feature maps.

Heat maps need ψ only for the few references that are shown; ``StreamedStore``
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

from ri_jax.boundaries import (DEFAULT_NUM_BOUNDARIES, Boundaries, sample_boundaries,
                               sample_indices, side_bits)
from ri_jax.buckets import pad_rows
from ri_jax.distributed import (_chunk_side_bits, from_main_process, gather_shares,
                                is_main_process, share_range, side_chunk_size)
from ri_jax.heatmaps import polytope_heatmap, ri_channel_weights
from ri_jax.interpreter import (Diagnostics, Interpretation, ModelFns, ReferenceSet,
                                RepresentativeInterpreter, chunks_in_turn, in_batches,
                                interpretation_from)
from ri_jax.ranking import (distance_from_projections, pool_distances, projection, projections,
                            unit_normals)
from ri_jax.bits import WORD_BITS, num_words, unpack_bits, valid_words
from ri_jax.solver import GreedyResult
from ri_jax.variants import DEFAULT_VARIANT, RIVariant

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
        words = _chunk_side_bits(bounds, feats, chunk)
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
        while sum(len(b) for b in buffer) >= chunk:  # side chunks fall where side_bits puts them
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
    words, dots = side_bits(bounds, padded, chunk_size=chunk, dots=True)
    return words[..., :num_words(m)] & valid_words(m, num_words(m)), dots[..., :m]


# Floats of per-boundary heat maps held at once while explaining a batch (256 MiB).
_EXPLAIN_CHUNK_FLOATS = 1 << 26


def _explain_streamed(bounds: Boundaries, psi_x: Array, predicted_class: Array,
                      result: GreedyResult, diagnostics: Diagnostics, distances: Array, *,
                      top_k: int, image_size: int) -> Interpretation:
    """An ``Interpretation`` of one input from its Eq. 6 distances; similar heat maps left zero."""
    covered = unpack_bits(result.covered, distances.shape[0])
    alphas = ri_channel_weights(bounds.w, bounds.b, psi_x)
    return interpretation_from(predicted_class, result, diagnostics, covered, distances, alphas,
                               psi_x, top_k=top_k, image_size=image_size)


@functools.partial(jax.jit, static_argnames=("top_k", "image_size"))
def _explain_streamed_batch(refs: StreamedReferences, bounds: Boundaries, feats: Array,
                            preds: Array, result: GreedyResult, diagnostics: Diagnostics,
                            distances: Array | None, *, top_k: int,
                            image_size: int) -> Interpretation:
    """``_explain_streamed`` for a batch: the shared sample's ``bounds`` [Q, ...] with
    distances from ``refs.projections`` (``distances`` None), or per-input pools' bounds
    [B, Q, ...] with their distances float32[B, N]; ``diagnostics`` [B, ...]."""
    per_input = distances is not None

    def one(args):
        own, psi_x, c, res, diag, d = args
        if not per_input:
            own = bounds
            d = distance_from_projections(res.selected, projection(refs.normals, psi_x),
                                          refs.projections)
        return _explain_streamed(own, psi_x, c, res, diag, d, top_k=top_k,
                                 image_size=image_size)

    # Each input draws its Q boundary maps at full size: chunks bound that memory.
    chunk = max(1, min(feats.shape[0],
                       _EXPLAIN_CHUNK_FLOATS // (bounds.w.shape[-4] * image_size ** 2)))
    out = jax.lax.map(one, (bounds if per_input else None, feats, preds, result, diagnostics,
                            distances), batch_size=chunk)
    # The pools are already [B, Q, ...]: kept as they are, not copied through the map.
    return out._replace(pool_w=bounds.w, pool_b=bounds.b) if per_input else out


@functools.partial(jax.jit, static_argnames=("image_size",))
def _draw_similar(alphas: Array, selected: Array, psis: Array, present: Array, *,
                  image_size: int) -> Array:
    """[B, top_k, S, S] heat maps of P(x) drawn on the similar references' ψ [B, top_k, ...]."""
    draw = jax.vmap(jax.vmap(polytope_heatmap, in_axes=(None, None, 0, None)),
                    in_axes=(0, 0, 0, None))
    return jnp.where(present[..., None, None], draw(alphas, selected, psis, image_size), 0.0)


class StreamedStore:
    """A reference store of streamed projections (``stream_references``): ψ is not held.

    The methods of ``interpreter.InMemoryStore``, with the same answers (see the module
    docstring). With the shared sample, ψ of a reference is recomputed from ``load_images``
    only when its heat map is drawn, unless ``keep_features`` kept them all. With per-input
    pools (the authors' variant, the default) each chunk of inputs also reads its pool
    references' ψ by index and makes two passes over all N references (``pool_sides``,
    ``pool_distances``): O(N·Q) memory per input, and time linear in N. The streamed set's
    own sample Q is then unused but for its classes.

    Args:
      fns: the model (``interpreter.ModelFns``).
      streamed: ``StreamedReferences``.
      load_images: normalised reference images of int64 indices [k] → [k, S, S, 3].

    Attributes:
      reference_set: ``ReferenceSet`` of the streamed set (``feats`` None unless kept).
      num_boundaries: |Q|; image_shape: [S, S, 3]; feature_spec: one ψ [h, w, c].
    """

    def __init__(self, fns: ModelFns, streamed: StreamedReferences,
                 load_images: Callable[[np.ndarray], np.ndarray]):
        self.fns = fns
        self.streamed = streamed
        self._load_images = load_images
        self.reference_set = ReferenceSet(feats=streamed.feats, preds=streamed.preds,
                                          boundary_refs=streamed.boundary_refs,
                                          boundaries=streamed.boundaries,
                                          side_words=streamed.side_words)
        self.num_boundaries = int(streamed.boundary_refs.shape[0])
        self.image_shape = np.asarray(load_images(np.zeros(1, np.int64))).shape[1:]
        self.mesh = None  # one device: the solve is not split
        self.feature_spec = jax.ShapeDtypeStruct(tuple(streamed.boundaries.w.shape[1:]),
                                                 jnp.float32)

    @classmethod
    def builder(cls, load_images: Callable[[np.ndarray], np.ndarray], num_refs: int, *,
                keep_features: bool = False):
        """The ``store`` argument of ``RepresentativeInterpreter`` that streams the N
        references ``load_images`` reads (``keep_features``: keep every ψ)."""

        def build(fns: ModelFns, references, *, key, num_boundaries, piecewise_linear,
                  progress, **_) -> StreamedStore:
            streamed = stream_references(
                fns.features, fns.raw_head, load_images, num_refs, key=key,
                num_boundaries=num_boundaries, batch_size=fns.batch_size,
                piecewise_linear=piecewise_linear, keep_features=keep_features,
                progress=progress)
            return cls(fns, streamed, load_images)

        return build

    @property
    def num_refs(self) -> int:
        return int(self.streamed.preds.shape[0])

    def features(self, indices) -> Array:
        """ψ of references by index, any shape [...] → [..., h, w, c]: kept, or recomputed
        from the images."""
        idx = np.asarray(indices, np.int64)
        flat = idx.ravel()
        if self.streamed.feats is not None:
            psi = jnp.asarray(self.streamed.feats)[flat]
        else:
            psi = in_batches(self.fns.features, np.asarray(self._load_images(flat)),
                             self.fns.batch_size)
        return psi.reshape(idx.shape + psi.shape[1:])

    def pool_floats_per_input(self) -> int:
        """Floats one input's pool holds: its side words (Q·⌈N/32⌉) and Q normals; every
        chunk reads all N ψ twice (``_reference_passes``)."""
        return self.num_boundaries * (num_words(self.num_refs)
                                      + int(np.prod(self.feature_spec.shape)))

    def _reference_passes(self, fn, chunk: int):
        """``fn(start, ψ [≤ chunk, h, w, c])`` over the references in side chunks of ``chunk``:
        kept ψ, or ψ recomputed from the images in batches of ``batch_size``."""
        n = self.num_refs
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            if self.streamed.feats is not None:
                psi = self.streamed.feats[start:stop]
            else:
                size = self.fns.batch_size
                psi = jnp.concatenate([
                    self.fns.features(pad_rows(np.asarray(self._load_images(
                        np.arange(i, min(i + size, stop), dtype=np.int64))), size))[
                        :min(size, stop - i)] for i in range(start, stop, size)])
            fn(start, psi)

    def pool_sides(self, bounds: Boundaries) -> tuple[Array, None]:
        """The references' packed sides of per-input boundaries in one pass over all N ψ.

        Args:
          bounds: ``Boundaries(w [B, Q, h, w, c], b [B, Q])``.

        Returns:
          (uint32[B, Q, ⌈N/32⌉], None: the products are not kept, ``pool_distances`` makes
          a second pass).
        """
        side_chunk = side_chunk_size(self.num_refs)
        words = []
        self._reference_passes(
            lambda start, psi: words.append(_chunk_sides(bounds, psi, side_chunk)[0]), side_chunk)
        return jnp.concatenate(words, axis=-1), None

    def pool_distances(self, bounds: Boundaries, selected: Array, dots_x: Array,
                       dots: None) -> Array:
        """Eq. 6 distances float32[B, N] on the selected boundaries [B, Q], in a second pass
        over all N ψ (``dots`` is ``pool_sides``'s None)."""
        side_chunk = side_chunk_size(self.num_refs)
        distances = []
        self._reference_passes(
            lambda start, psi: distances.append(pool_distances(
                selected, dots_x, _chunk_sides(bounds, psi, side_chunk)[1], bounds.w)),
            side_chunk)
        return jnp.concatenate(distances, axis=-1)

    def map_chunks(self, run, b: int, chunk: int, progress: bool):
        """``interpreter.chunks_in_turn``: every chunk of inputs on this process."""
        return chunks_in_turn(run, b, chunk, progress)

    def interpretation(self, bounds: Boundaries, feats: Array, preds: Array,
                       result: GreedyResult, diagnostics: Diagnostics, distances: Array | None,
                       *, top_k: int, image_size: int) -> Interpretation:
        """``Interpretation``s [B, ...] from the solve: Eq. 6 from the projections (shared
        sample) or the pools' distances, then the similar references' heat maps drawn on
        their ψ, recomputed for those shown only."""
        out = _explain_streamed_batch(self.streamed, bounds, feats, preds, result, diagnostics,
                                      distances, top_k=top_k, image_size=image_size)
        similar = np.asarray(out.similar)
        present = similar >= 0
        shown = np.unique(similar[present])
        if not shown.size:
            return out
        psi = self.features(shown)
        where = np.searchsorted(shown, np.where(present, similar, shown[0]))
        return out._replace(similar_heatmaps=_draw_similar(
            out.alphas, out.selected, psi[where], jnp.asarray(present), image_size=image_size))


def streaming_interpreter(features_fn: Callable[[Array], Array],
                          head_fn: Callable[[Array], Array],
                          load_images: Callable[[np.ndarray], np.ndarray], num_refs: int, *,
                          key: Array, num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
                          batch_size: int = 64, piecewise_linear: bool | None = None,
                          keep_features: bool = False, progress: bool = True,
                          variant: str | RIVariant = DEFAULT_VARIANT
                          ) -> RepresentativeInterpreter:
    """``RepresentativeInterpreter`` over a streamed reference set (``StreamedStore``).

    Args:
      features_fn, head_fn, key, num_boundaries, batch_size, piecewise_linear, progress,
        variant: as in ``RepresentativeInterpreter``.
      load_images: normalised reference images of int64 indices [k] → [k, S, S, 3].
      num_refs: N.
      keep_features: keep every ψ in memory (``StreamedReferences.feats``).

    Returns:
      ``RepresentativeInterpreter`` whose ``store`` is a ``StreamedStore``.
    """
    return RepresentativeInterpreter(
        features_fn, head_fn, key=key, num_boundaries=num_boundaries, batch_size=batch_size,
        piecewise_linear=piecewise_linear, progress=progress, variant=variant,
        store=StreamedStore.builder(load_images, num_refs, keep_features=keep_features))
