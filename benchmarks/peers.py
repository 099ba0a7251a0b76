"""Straightforward baselines ("peers") that the benchmarks measure ri_jax against.

They follow how the authors' published code works, so the speed-ups in
RESULTS.md are against an honest reading of the method rather than a straw man:

* ``greedy_peer``: Algorithm 1 for one input in NumPy, vectorised within the
  input: an index buffer of the still-covered references and the full
  nom/den vectors recomputed over them at every iteration. ``greedy_peer_batch``
  handles inputs one after another in a Python loop, building each input's
  match matrix from the (unpacked) side matrix.
* ``BoundaryPeer``: Eq. 2 with one backward pass per sampled feature map: the
  gradient of ΔG at one feature map, jitted once and called in a Python loop.
* ``sort_keep_mask``: AD / AI's top share of a heat map by a stable sort of the whole
  map by (value, ``tie_priority``), the obvious way to write the rule (and ri-jax's
  own until it selected the value at the cut instead).

Each applies exactly the rules of ``ri_jax.solver``, ``ri_jax.boundaries`` and
``ri_jax.metrics`` (tests/test_peers.py checks it), so the benchmarks can assert
identical results before timing.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.boundaries import Boundaries, delta_g
from ri_jax.metrics import num_kept, tie_priority

_HIGHEST = jax.lax.Precision.HIGHEST


class PeerResult(NamedTuple):
    """Algorithm 1's answer for one input (``greedy_peer_batch`` stacks a batch axis B).

    Attributes:
      order: int32[Q], selected boundaries in selection order, then -1.
      num_selected: int, |P(x)|.
      num_covered_positive: int, covered references of Class(x).
      num_covered_negative: int, covered references of D(x).
      tau: int, τ(x).
    """

    order: np.ndarray
    num_selected: int
    num_covered_positive: int
    num_covered_negative: int
    tau: int


def _best(nom: np.ndarray, den: np.ndarray, index: np.ndarray) -> int:
    """The candidate with the smallest nom/den, exactly; ties → larger den, then lower index.

    Every pair is compared by cross-multiplication in int64 (all den > 0), which is a
    strict total order, so exactly one candidate beats all the others.
    """
    nom, den = nom.astype(np.int64), den.astype(np.int64)
    lhs = nom[:, None] * den[None, :]  # [a, b]: nom_a · den_b
    rhs = nom[None, :] * den[:, None]  # [a, b]: nom_b · den_a
    tie_break = (den[:, None] > den[None, :]) | (
        (den[:, None] == den[None, :]) & (index[:, None] < index[None, :]))
    beats = (lhs < rhs) | ((lhs == rhs) & tie_break)
    np.fill_diagonal(beats, True)
    return int(index[np.flatnonzero(beats.all(axis=1))[0]])


def greedy_peer(match: np.ndarray, positive: np.ndarray, delta: int | None = None) -> PeerResult:
    """Algorithm 1 for one input, the way the authors' NumPy code runs it.

    Args:
      match: bool[Q, N], True where reference n lies on x's side of boundary h.
      positive: bool[N], references predicted as Class(x) (the rest is D(x)).
      delta: bound ≥ 0 on covered D(x) references, or None for τ(x).

    Returns:
      ``PeerResult``.
    """
    match = np.asarray(match)
    positive = np.asarray(positive)
    if match.dtype != np.bool_ or match.ndim != 2 or match.shape[0] == 0:
        raise ValueError(f"match: expected bool[Q >= 1, N], got {match.dtype}{match.shape}")
    if positive.dtype != np.bool_ or positive.shape != match.shape[1:]:
        raise ValueError(f"positive: expected bool{match.shape[1:]}, got "
                         f"{positive.dtype}{positive.shape}")
    negative = ~positive
    tau = int(np.sum(negative & match.all(axis=0)))
    if delta is None:
        delta = tau
    elif int(delta) < 0:
        raise ValueError(f"delta: must be >= 0, got {delta}")
    q = match.shape[0]
    covered = np.arange(match.shape[1])  # index buffer of the still-covered references
    selected = np.zeros(q, bool)
    order: list[int] = []
    while np.count_nonzero(negative[covered]) > delta:
        removed = ~match[:, covered]
        nom = np.count_nonzero(removed & positive[covered], axis=1)
        den = np.count_nonzero(removed & negative[covered], axis=1)
        candidates = np.flatnonzero(~selected & (den > 0))
        if candidates.size == 0:
            break
        h = _best(nom[candidates], den[candidates], candidates)
        selected[h] = True
        order.append(h)
        covered = covered[match[h, covered]]
    padded = np.full(q, -1, np.int32)
    padded[:len(order)] = order
    return PeerResult(order=padded, num_selected=len(order),
                      num_covered_positive=int(np.count_nonzero(positive[covered])),
                      num_covered_negative=int(np.count_nonzero(negative[covered])), tau=tau)


def greedy_peer_batch(sides: np.ndarray, x_sides: np.ndarray, ref_preds: np.ndarray,
                      x_preds: np.ndarray, delta: np.ndarray | None = None) -> PeerResult:
    """``greedy_peer`` for a batch of inputs, one after another in a Python loop.

    Args:
      sides: bool[Q, N], side of every reference for every boundary (unpacked).
      x_sides: bool[B, Q], each input's side of every boundary.
      ref_preds: int[N], predicted class of every reference.
      x_preds: int[B], predicted class of every input.
      delta: int[B] bounds, or None for each input's τ.

    Returns:
      ``PeerResult`` with a leading batch axis B on every field (numpy arrays).
    """
    sides, x_sides = np.asarray(sides), np.asarray(x_sides)
    if sides.dtype != np.bool_ or sides.ndim != 2:
        raise ValueError(f"sides: expected bool[Q, N], got {sides.dtype}{sides.shape}")
    if x_sides.dtype != np.bool_ or x_sides.ndim != 2 or x_sides.shape[1] != sides.shape[0]:
        raise ValueError(f"x_sides: expected bool[B, {sides.shape[0]}], got "
                         f"{x_sides.dtype}{x_sides.shape}")
    ref_preds, x_preds = np.asarray(ref_preds), np.asarray(x_preds)
    if ref_preds.shape != sides.shape[1:]:
        raise ValueError(f"ref_preds: expected shape {sides.shape[1:]}, got {ref_preds.shape}")
    if x_preds.shape != x_sides.shape[:1]:
        raise ValueError(f"x_preds: expected shape {x_sides.shape[:1]}, got {x_preds.shape}")
    if delta is not None and np.shape(delta) != x_preds.shape:
        raise ValueError(f"delta: expected shape {x_preds.shape} or None, got {np.shape(delta)}")
    results = []
    for i in range(x_sides.shape[0]):
        match = sides == x_sides[i][:, None]
        results.append(greedy_peer(match, ref_preds == x_preds[i],
                                   None if delta is None else int(delta[i])))
    return PeerResult(*(np.stack([np.asarray(r[f]) for r in results]).astype(np.int32)
                        for f in range(len(PeerResult._fields))))


class BoundaryPeer:
    """Eq. 2 with one backward pass per sampled feature map, in a Python loop.

    The gradient of ΔG at one feature map is jitted once (at construction, compiled on
    the first call) and then called for each of the Q feature maps in turn, as the
    authors linearise the head with one backward pass per sample.

    Args:
      head_fn: G, logits [B, C] from feature maps [B, *feat_shape].
    """

    def __init__(self, head_fn: Callable[[jax.Array], jax.Array]):
        if not callable(head_fn):
            raise ValueError("head_fn: must be callable")

        def linearise(t):
            value, w = jax.value_and_grad(lambda u: delta_g(head_fn(u[None])[0]))(t)
            return w, value - jnp.vdot(w, t, precision=_HIGHEST)

        self._linearise = jax.jit(linearise)

    def __call__(self, feats: np.ndarray) -> Boundaries:
        """Boundaries at ``feats`` [Q, *feat_shape] → ``Boundaries(w [Q, *feat_shape], b [Q])``."""
        feats = np.asarray(feats)
        if feats.ndim < 2 or feats.shape[0] == 0:
            raise ValueError(f"feats: expected [Q >= 1, *feat_shape], got shape {feats.shape}")
        ws, bs = [], []
        for t in feats:
            w, b = self._linearise(t)
            ws.append(w)
            bs.append(b)
        return Boundaries(w=jnp.stack(ws), b=jnp.stack(bs))


def sort_keep_mask(heatmap: jax.Array, fraction: float, *, inverse: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
    """``ri_jax.metrics.kept_pixels`` by sorting: the map's pixels in a stable descending
    sort of (value, NaN as −inf) over the ``tie_priority`` order, the first k kept (the last
    k for ``inverse``). Traceable; ``fraction`` and ``inverse`` static.

    Returns:
      (bool[S, S] kept pixels, int32 pixels equal to the value at the cut but not kept).
    """
    flat = heatmap.reshape(-1)
    n = flat.size
    k = num_kept(n, fraction)
    flat = jnp.where(jnp.isnan(flat), -jnp.inf, flat)
    priority = jnp.asarray(tie_priority(n), jnp.int32)
    order = priority[jnp.argsort(flat[priority], descending=True, stable=True)]
    kept_idx = order[n - k:] if inverse else order[:k]
    kept = jnp.zeros(n, bool).at[kept_idx].set(True)
    if k in (0, n):
        return kept.reshape(heatmap.shape), jnp.zeros((), jnp.int32)
    threshold = flat[kept_idx[0] if inverse else kept_idx[k - 1]]
    return kept.reshape(heatmap.shape), jnp.sum((flat == threshold) & ~kept, dtype=jnp.int32)
