"""k-means in the feature space Ω (§6.4): pick the input images of the interpretations.

Points are feature maps ψ flattened to vectors ([N, ...] inputs are flattened to
[N, D]). Initialisation is k-means++ (Arthur & Vassilvitskii, 2007: the first
centre uniformly, every next one with probability ∝ squared distance to the
nearest chosen centre, uniformly if all such distances are 0), then Lloyd
iterations in a ``lax.while_loop``.

Stopping rule (as scikit-learn): stop after ``max_iters`` iterations or once the
summed squared movement of the centres is at most ``tol`` × the mean per-dimension
variance of the points.

Empty clusters: a centre that loses all its points is moved onto the point
farthest from its current centre (the j-th empty cluster, in index order, takes the
j-th farthest point; ties go to the lower point index), as scikit-learn does, so
no cluster stays empty and no centre becomes NaN.

Point-to-centre distances are ‖a‖² − 2a·b + ‖b‖² (clipped at 0) at full float32
matmul precision, computed over chunks of ``chunk_size`` points, so only a
[chunk_size, K] block exists at a time (e.g. 5,000 × 2,304 points fit easily).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.errors import all_finite

Array = jax.Array


class KMeansResult(NamedTuple):
    """Result of ``kmeans`` / ``lloyd``.

    Attributes:
      centres: [K, D] cluster centres.
      assignment: int32[N] index of each point's nearest centre (ties: lower centre index).
      inertia: float scalar Σ_n ‖x_n − centres[assignment_n]‖².
      num_iters: int32 scalar Lloyd iterations run.
    """

    centres: Array
    assignment: Array
    inertia: Array
    num_iters: Array


def _as_points(points, name: str = "points") -> Array:
    shape = jnp.shape(points)
    if len(shape) < 2 or shape[0] == 0 or int(np.prod(shape[1:])) == 0:
        raise ValueError(f"{name}: expected a non-empty [N, ...] array of points, got shape {shape}")
    flat = jnp.asarray(points, jnp.float32).reshape(shape[0], -1)
    if not isinstance(flat, jax.core.Tracer) and not all_finite(flat):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return flat


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")


def _check_centres(centres, dim: int) -> Array:
    centres = _as_points(centres, "centres")
    if centres.shape[1] != dim:
        raise ValueError(f"centres: dimension {centres.shape[1]} does not match the points' {dim}")
    return centres


def _sq_dists(x: Array, centres: Array) -> Array:
    """[n, D] × [K, D] → [n, K] squared distances, ‖a‖² − 2a·b + ‖b‖² clipped at 0."""
    cross = jnp.dot(x, centres.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(x * x, axis=1)[:, None] - 2.0 * cross + jnp.sum(centres * centres, axis=1)[None]
    return jnp.maximum(d, 0.0)


def _chunked_min(points: Array, centres: Array, chunk_size: int) -> tuple[Array, Array]:
    """Nearest centre of every point: (int32[N] index, [N] squared distance)."""
    n = points.shape[0]
    chunk = min(chunk_size, n)
    pad = -n % chunk
    blocks = jnp.pad(points, ((0, pad), (0, 0))).reshape(-1, chunk, points.shape[1])

    def block_min(x):
        d = _sq_dists(x, centres)
        return jnp.argmin(d, axis=1).astype(jnp.int32), jnp.min(d, axis=1)

    idx, dist = jax.lax.map(block_min, blocks)
    return idx.reshape(-1)[:n], dist.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _assign(points: Array, centres: Array, chunk_size: int) -> tuple[Array, Array]:
    return _chunked_min(points, centres, chunk_size)


def assign(points, centres, *, chunk_size: int = 1024) -> Array:
    """Index of the nearest centre for every point.

    Args:
      points: [N, ...] points (flattened to [N, D]).
      centres: [K, ...] centres with the same D.
      chunk_size: points per distance block.

    Returns:
      int32[N]; ties go to the lower centre index.
    """
    points = _as_points(points)
    centres = _check_centres(centres, points.shape[1])
    _check_positive_int(chunk_size, "chunk_size")
    return _assign(points, centres, chunk_size)[0]


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _nearest_to_centres(points: Array, centres: Array, chunk_size: int) -> Array:
    n = points.shape[0]
    chunk = min(chunk_size, n)
    pad = -n % chunk
    blocks = jnp.pad(points, ((0, pad), (0, 0))).reshape(-1, chunk, points.shape[1])
    offsets = jnp.arange(blocks.shape[0]) * chunk

    def block_best(args):
        x, offset = args
        valid = offset + jnp.arange(chunk) < n
        d = jnp.where(valid[:, None], _sq_dists(x, centres), jnp.inf)
        return jnp.min(d, axis=0), offset + jnp.argmin(d, axis=0)

    best_d, best_i = jax.lax.map(block_best, (blocks, offsets))  # [num_blocks, K]
    # argmin takes the first block on ties, so the lower point index wins overall.
    block = jnp.argmin(best_d, axis=0)
    return best_i[block, jnp.arange(centres.shape[0])].astype(jnp.int32)


def nearest_to_centres(points, centres, *, chunk_size: int = 1024) -> Array:
    """For every centre, the index of the nearest point (that image becomes the interpretation's input).

    Args:
      points: [N, ...] points (flattened to [N, D]).
      centres: [K, ...] centres with the same D.
      chunk_size: points per distance block.

    Returns:
      int32[K]; ties go to the lower point index.
    """
    points = _as_points(points)
    centres = _check_centres(centres, points.shape[1])
    _check_positive_int(chunk_size, "chunk_size")
    return _nearest_to_centres(points, centres, chunk_size)


@functools.partial(jax.jit, static_argnames=("k",))
def _kmeans_plusplus(points: Array, k: int, key: Array) -> Array:
    n = points.shape[0]
    first_key, key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)

    def sq_dist_to(i):
        # Direct difference: exact zeros for duplicates of chosen centres.
        return jnp.sum((points - points[i]) ** 2, axis=1)

    def body(j, state):
        chosen, min_d = state
        total = jnp.sum(min_d)
        p = jnp.where(total > 0, min_d / jnp.where(total > 0, total, 1.0), 1.0 / n)
        i = jax.random.choice(jax.random.fold_in(key, j), n, p=p)
        return chosen.at[j].set(i), jnp.minimum(min_d, sq_dist_to(i))

    chosen = jnp.zeros(k, jnp.int32).at[0].set(first)
    chosen, _ = jax.lax.fori_loop(1, k, body, (chosen, sq_dist_to(first)))
    return chosen


def kmeans_plusplus(points, k: int, *, key: Array) -> Array:
    """k-means++ seeding.

    Args:
      points: [N, ...] points (flattened to [N, D]).
      k: number of centres, 1 ≤ k ≤ N.
      key: PRNG key.

    Returns:
      int32[k] indices of the points chosen as initial centres.
    """
    points = _as_points(points)
    _check_positive_int(k, "k")
    if k > points.shape[0]:
        raise ValueError(f"k: {k} clusters need at least {k} points, got {points.shape[0]}")
    return _kmeans_plusplus(points, k, key)


@functools.partial(jax.jit, static_argnames=("max_iters", "chunk_size"))
def _lloyd(points: Array, centres: Array, tol: Array, max_iters: int, chunk_size: int) -> KMeansResult:
    k = centres.shape[0]
    threshold = tol * jnp.mean(jnp.var(points, axis=0))

    def cond(state):
        _, it, shift = state
        return (it < max_iters) & (shift > threshold)

    def body(state):
        centres, it, _ = state
        labels, min_d = _chunked_min(points, centres, chunk_size)
        sums = jax.ops.segment_sum(points, labels, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones_like(min_d), labels, num_segments=k)
        empty = counts == 0
        # The j-th empty cluster takes the j-th farthest point (at most k − 1 can be empty).
        _, farthest = jax.lax.top_k(min_d, k)
        rank = jnp.cumsum(empty) - 1
        reseeded = points[farthest[jnp.clip(rank, 0, k - 1)]]
        new = jnp.where(empty[:, None], reseeded, sums / jnp.maximum(counts, 1.0)[:, None])
        return new, it + 1, jnp.sum((new - centres) ** 2)

    centres, num_iters, _ = jax.lax.while_loop(
        cond, body, (centres, jnp.zeros((), jnp.int32), jnp.array(jnp.inf, jnp.float32)))
    labels, min_d = _chunked_min(points, centres, chunk_size)
    return KMeansResult(centres=centres, assignment=labels, inertia=jnp.sum(min_d), num_iters=num_iters)


def lloyd(points, init_centres, *, max_iters: int = 300, tol: float = 1e-4,
          chunk_size: int = 1024) -> KMeansResult:
    """Lloyd iterations from given centres (see the module docstring for stopping and empty clusters).

    Args:
      points: [N, ...] points (flattened to [N, D]).
      init_centres: [K, ...] initial centres, K ≤ N.
      max_iters: most iterations.
      tol: relative tolerance on the summed squared centre movement (≥ 0).
      chunk_size: points per distance block.

    Returns:
      ``KMeansResult``; ``assignment`` and ``inertia`` refer to the returned centres.
    """
    points = _as_points(points)
    centres = _check_centres(init_centres, points.shape[1])
    if centres.shape[0] > points.shape[0]:
        raise ValueError(f"init_centres: {centres.shape[0]} clusters need at least as many points, "
                         f"got {points.shape[0]}")
    _check_positive_int(max_iters, "max_iters")
    _check_positive_int(chunk_size, "chunk_size")
    if not tol >= 0:
        raise ValueError(f"tol: must be non-negative, got {tol!r}")
    return _lloyd(points, centres, jnp.float32(tol), max_iters, chunk_size)


def kmeans(points, k: int, *, key: Array, max_iters: int = 300, tol: float = 1e-4,
           chunk_size: int = 1024) -> KMeansResult:
    """k-means with k-means++ seeding.

    Args:
      points: [N, ...] points, e.g. feature maps [N, h, w, c] (flattened to [N, D]).
      k: number of clusters, 1 ≤ k ≤ N.
      key: PRNG key for the seeding; the same key gives the same result.
      max_iters: most Lloyd iterations.
      tol: relative tolerance on the summed squared centre movement (≥ 0).
      chunk_size: points per distance block.

    Returns:
      ``KMeansResult`` with centres [k, D].
    """
    points = _as_points(points)
    seeds = kmeans_plusplus(points, k, key=key)
    return lloyd(points, points[seeds], max_iters=max_iters, tol=tol, chunk_size=chunk_size)
