"""Which interpretation serves which image: k-means inputs, routing and similar images (§6.1, §6.4).

RI routes a target to the polytope that covers it (``route_ri``); the baselines use
the nearest k-means centre (``nearest_centre``) and find similar images by Euclidean
distance in Ω (``euclidean_neighbours``). ``protocol_keys`` splits one run's seed the
same way in every protocol.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.clustering import assign, kmeans, nearest_to_centres
from ri_jax.protocols.batching import check_batch, check_positive, map_chunks
from ri_jax.regions import DecisionRegions, predict

Array = jax.Array


class ProtocolKeys(NamedTuple):
    """The PRNG keys of one experiment run, split the same way by every protocol.

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


def kmeans_inputs(ref_psi: np.ndarray, num_interpretations: int, *, key: Array) -> KMeansInputs:
    """k-means on the references in Ω and the reference nearest each centre (§6.4).

    Args:
      ref_psi: float32[N, h, w, c] reference feature maps.
      num_interpretations: |V| ≤ N.
      key: PRNG key of the k-means++ seeding.

    Returns:
      ``KMeansInputs``. Two centres may share their nearest reference; both keep it.
    """
    ref_psi = check_batch(ref_psi, "ref_psi", np.ndim(ref_psi))
    v = check_positive(num_interpretations, "num_interpretations")
    if v > len(ref_psi):
        raise ValueError(f"num_interpretations: {v} clusters need at least {v} references, "
                         f"got {len(ref_psi)}")
    result = kmeans(ref_psi, v, key=key)
    return KMeansInputs(centres=np.asarray(result.centres),
                        inputs=np.asarray(nearest_to_centres(ref_psi, result.centres), np.int32),
                        assignment=np.asarray(result.assignment, np.int32))


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


def routing_report(routing: Routing) -> dict:
    """How many targets a polytope routed, how many fell back, how many interpretations were used."""
    return {"routed_by_polytope": int(routing.covered.sum()),
            "routed_to_nearest_centre": int(routing.fallback.sum()),
            "interpretations_used": int(len(np.unique(routing.which)))}


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
    q = check_batch(queries, "queries", np.ndim(queries)).reshape(len(queries), -1)
    p = check_batch(points, "points", np.ndim(points)).reshape(len(points), -1)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"queries: flattened size {q.shape[1:]} does not match points' {p.shape[1:]}")
    k = check_positive(k, "k")
    if k > len(p):
        raise ValueError(f"k: {k} neighbours requested from {len(p)} points")
    pj = jnp.asarray(p, jnp.float32)
    return map_chunks(lambda c: _neighbours_chunk(c, pj, k), (q.astype(np.float32),), chunk_size)


def input_first(inputs: np.ndarray, candidates: np.ndarray, valid: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each input's similar-image list with the input itself first, then the candidates without it.

    Args:
      inputs: int[V] index of each input among the references.
      candidates: int[V, M] ranked candidate references.
      valid: bool[V, M] which candidates exist (e.g. covered by P(x)).
      k: list length.

    Returns:
      ``(lists int[V, k], used bool[V, k])``; entries past the valid candidates are unused
      (their index is 0).
    """
    keep = valid & (candidates != inputs[:, None])
    # A stable sort on "not kept" moves the kept candidates to the front in rank order.
    order = np.argsort(~keep, axis=1, kind="stable")
    packed = np.take_along_axis(candidates, order, axis=1)[:, :k - 1]
    count = keep.sum(axis=1)
    used_rest = np.arange(packed.shape[1])[None, :] < count[:, None]
    lists = np.concatenate([inputs[:, None], np.where(used_rest, packed, 0)], axis=1)
    used = np.concatenate([np.ones((len(inputs), 1), bool), used_rest], axis=1)
    pad = k - lists.shape[1]  # fewer candidates than k − 1 in total
    return (np.pad(lists, ((0, 0), (0, pad))), np.pad(used, ((0, 0), (0, pad))))
