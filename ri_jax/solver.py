"""Algorithm 1: the greedy SCSC solver over bit-packed coverage (§4.1–4.2).

For one input x and the sampled boundaries Q, a reference n "matches" boundary h
when it lies on x's side of h. Selecting a set P(x) ⊆ Q covers the references
that match every selected boundary. Starting from P(x) = ∅ (everything
covered), the greedy loop adds the boundary h minimising Eq. 4

    nom(h) / den(h) = |covered same-class refs h removes| / |covered D(x) refs h removes|

until at most ``delta`` references of D(x) (the other classes) stay covered.

The paper's text (§4.2) runs this with δ = τ(x) over one shared sample Q. The
authors' public code (``SubmodularMinerAG.mineInvariant`` in the ``dnn_invariant``
family) differs in four ways, all available through ``solve``, the module's one entry
point (the kernels below it are private, each tested against a slow loop of its rule):

* δ = 0 instead of τ(x) (``solve``'s ``delta``);
* a per-input pool of boundaries, so each input brings its own side words
  (``solve`` with ``side_words`` [B, Q, W]);
* when δ cannot be reached, their greedy does not stop where ours does (no boundary
  removes another D(x) reference): it keeps adding, in index order, each boundary that
  removes nothing, then re-picks selected ones, until 111 picks (their ``steps > 110``);
  ``solve(keep_adding=True)`` appends those extras to ``_greedy``'s answer;
* the **loosen step** after the greedy (``solve(loosen=True)``): "visit the
  selected boundaries in index order; drop boundary j if removing it from the current
  P (after earlier drops) leaves both the count of covered same-class references and
  the count of covered D(x) references unchanged". It runs over the extras too and
  does not simply drop them again: where an extra removes what a greedy boundary of
  lower index removes, that greedy boundary is visited first and dropped, and the
  extra is kept in its place.

Their float ratio (nom + 1e-5) / (den + 1e-10) orders candidates with den > 0 exactly
as the integer rule here (for fewer than 10^5 references), ties included.

Sets of references are stored as bit sets (``ri_jax.bits``). The inner loop works on
Q × ⌈N/32⌉ words with ``lax.population_count``. A batch shares the references'
packed side matrix [Q, W]; each input adds only its side bits [Q] and class
bits [W], so 1,000 inputs × |Q| = 50 × |R| = 5,000 need well under 10 MiB.

A batch against one shared sample runs on ``_solve_lanes``: a few dozen inputs in flight,
each lane taking the next input as soon as its own stops, so no input waits for a
slower one (a vmapped while loop runs every input for as many steps as the slowest).
With at most 65,535 references the exact ratio comparison fits in uint32 products.

When Class(x) is "the references predicted as x's class", ``_solve_classes`` first
regroups the references so every class starts on a fresh word (``class_blocks``): a word
then holds only Class(x) or only D(x) references, and one popcount per word gives both
counts of Eq. 4 instead of two. Its answers are ``_solve_batch``'s, ``covered`` included.
``solve(mesh=...)`` splits the inputs over a mesh's devices (``shard_map``), bit for bit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from ri_jax.bits import WORD_BITS, num_words, pack_bits, popcount, unpack_bits, valid_words
from ri_jax.buckets import bucket_size, first_rows, zero_pad
from ri_jax.sharding import batch_spec, replicate, shard_batch, to_host

Array = jax.Array

_ALL_ONES = np.uint32(0xFFFFFFFF)


@functools.partial(jax.jit, static_argnames="num_classes")
def positive_words(ref_preds: Array, x_preds: Array, *, num_classes: int) -> Array:
    """Packed Class(x) references of each input, packed once per class and gathered.

    Args:
      ref_preds: int[N] predicted classes of the references.
      x_preds: int[B] predicted classes of the inputs, each in [0, num_classes).
      num_classes: more than every class id (static).

    Returns:
      uint32[B, ⌈N/32⌉]: row b is ``pack_bits(ref_preds == x_preds[b])``.
    """
    per_class = pack_bits(jnp.asarray(ref_preds)[None, :]
                          == jnp.arange(num_classes, dtype=jnp.asarray(ref_preds).dtype)[:, None])
    return per_class[jnp.asarray(x_preds)]


class ClassBlocks(NamedTuple):
    """References regrouped by class, every class starting on a fresh word.

    In this layout each word holds references of one class only, so one popcount per
    word gives both of Algorithm 1's counts (``_solve_classes``).

    Attributes:
      slot: int32[N], bit position of reference n (stable within a class); padding
        references (n ≥ ``num_refs``) get a position past the last word, so they are in
        no word.
      word_class: int32[W'], the class of each word's references; -1 for padding words.
      valid: uint32[W'], the bits that hold a reference.
      num_refs: int32 scalar, the references that are not padding.
    """

    slot: Array
    word_class: Array
    valid: Array
    num_refs: Array


def class_blocks(ref_classes: Array, *, num_classes: int, num_refs=None) -> ClassBlocks:
    """The class-blocked layout of N references (jittable; W' = ⌈N/32⌉ + num_classes).

    Args:
      ref_classes: int[N] predicted classes, each in [0, num_classes) (padding: any).
      num_classes: more than every class id (static).
      num_refs: the first ``num_refs`` references are real, the rest padding that no
        block holds (may be traced; default N). Padding lets one compiled solver serve
        every N with the same word count.

    Returns:
      ``ClassBlocks``.
    """
    ref_classes = jnp.asarray(ref_classes).astype(jnp.int32)
    n = ref_classes.shape[0]
    num_refs = jnp.asarray(n if num_refs is None else num_refs, jnp.int32)
    real = jnp.arange(n, dtype=jnp.int32) < num_refs
    # Padding takes the class id past the last, so it sorts after every real reference
    # and the scatters below drop it.
    ref_classes = jnp.where(real, ref_classes, num_classes)
    count = jnp.zeros((num_classes,), jnp.int32).at[ref_classes].add(1, mode="drop")
    words_per_class = (count + WORD_BITS - 1) // WORD_BITS
    word_end = jnp.cumsum(words_per_class)
    order = jnp.argsort(ref_classes, stable=True)
    by_class = jnp.minimum(ref_classes[order], num_classes - 1)
    rank = jnp.arange(n, dtype=jnp.int32) - (jnp.cumsum(count) - count)[by_class]
    width = num_words(n) + num_classes  # each class wastes less than one word
    slot = jnp.zeros((n,), jnp.int32).at[order].set(
        WORD_BITS * (word_end - words_per_class)[by_class] + rank)
    slot = jnp.where(real, slot, width * WORD_BITS)
    word_class = jnp.searchsorted(word_end, jnp.arange(width, dtype=jnp.int32), side="right")
    word_class = jnp.where(word_class < num_classes, word_class, -1).astype(jnp.int32)
    valid = pack_bits(jnp.zeros((width * WORD_BITS,), jnp.bool_).at[slot].set(True,
                                                                             mode="drop"))
    return ClassBlocks(slot=slot, word_class=word_class, valid=valid, num_refs=num_refs)


def to_blocks(words: Array, blocks: ClassBlocks) -> Array:
    """uint32[..., ⌈N/32⌉] words in reference order → uint32[..., W'] in ``blocks``' layout."""
    bits = unpack_bits(words, blocks.slot.shape[0])
    width = blocks.word_class.shape[0] * WORD_BITS
    moved = jnp.zeros(bits.shape[:-1] + (width,), jnp.bool_).at[..., blocks.slot].set(
        bits, mode="drop")
    return pack_bits(moved)


class GreedyResult(NamedTuple):
    """The polytope P(x) chosen by Algorithm 1 (add a leading batch axis under vmap).

    Attributes:
      selected: bool[Q], boundaries in P(x).
      order: int32[Q], selected boundaries in selection order, then -1.
      num_selected: int32 |P(x)|; 0 is the empty polytope (everything covered).
      covered: uint32[W], packed references covered by P(x) (``unpack_bits(covered, N)``).
      num_covered_positive: int32, covered references of Class(x).
      num_covered_negative: int32, covered references of D(x).
      delta: int32, the bound used (τ(x) when none was given).
      tau: int32 τ(x), the D(x) references on x's side of every boundary in Q.
      reached: bool, ``num_covered_negative <= delta``. False only when the loop ran out
        of candidates first, which happens when delta < τ(x).
    """

    selected: Array
    order: Array
    num_selected: Array
    covered: Array
    num_covered_positive: Array
    num_covered_negative: Array
    delta: Array
    tau: Array
    reached: Array


def _mul_wide(a: Array, b: Array) -> tuple[Array, Array]:
    """Exact 64-bit product of uint32 arrays as (high, low) uint32 words (no x64 needed)."""
    mask = np.uint32(0xFFFF)
    a_lo, a_hi = a & mask, a >> 16
    b_lo, b_hi = b & mask, b >> 16
    ll, lh, hl, hh = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (ll >> 16) + (lh & mask) + (hl & mask)  # < 3·2^16, no overflow
    low = (ll & mask) | (mid << 16)
    high = hh + (lh >> 16) + (hl >> 16) + (mid >> 16)
    return high, low


def _better(a, b, narrow: bool = False):
    """Whether candidate a = (valid, nom, den, index) beats b under Algorithm 1's rule.

    Smaller nom/den wins, compared exactly as nom_a·den_b < nom_b·den_a; then the
    larger den; then the lower index. Invalid candidates always lose. ``narrow`` (static)
    says every count is below 2^16, so the products fit in one uint32.
    """
    valid_a, nom_a, den_a, idx_a = a
    valid_b, nom_b, den_b, idx_b = b
    if narrow:
        lhs = nom_a.astype(jnp.uint32) * den_b.astype(jnp.uint32)
        rhs = nom_b.astype(jnp.uint32) * den_a.astype(jnp.uint32)
        less, equal = lhs < rhs, lhs == rhs
    else:
        lhs_hi, lhs_lo = _mul_wide(nom_a.astype(jnp.uint32), den_b.astype(jnp.uint32))
        rhs_hi, rhs_lo = _mul_wide(nom_b.astype(jnp.uint32), den_a.astype(jnp.uint32))
        less = (lhs_hi < rhs_hi) | ((lhs_hi == rhs_hi) & (lhs_lo < rhs_lo))
        equal = (lhs_hi == rhs_hi) & (lhs_lo == rhs_lo)
    wins = less | (equal & ((den_a > den_b) | ((den_a == den_b) & (idx_a < idx_b))))
    return ~valid_b | (valid_a & wins)


def _best_candidate(candidate: Array, nom: Array, den: Array, narrow: bool = False) -> Array:
    """Index of the best candidate boundary by a pairwise tournament (log2 Q levels).

    ``narrow``: every count is below 2^16 (at most 65,535 references; see ``_better``).
    """
    q = candidate.shape[0]
    size = 1 << max(q - 1, 0).bit_length()
    pad = size - q
    state = (jnp.pad(candidate, (0, pad)), jnp.pad(nom, (0, pad)), jnp.pad(den, (0, pad)),
             jnp.arange(size, dtype=jnp.int32))
    while size > 1:  # unrolled over the log2(Q) levels of the tree, not over boundaries
        size //= 2
        left = tuple(x[:size] for x in state)
        right = tuple(x[size:] for x in state)
        keep_left = _better(left, right, narrow)
        state = tuple(jnp.where(keep_left, l, r) for l, r in zip(left, right))
    return state[3][0]


def _narrow(num_words_: int) -> bool:
    """Whether W words hold few enough references (< 2^16) for ``_better``'s narrow path."""
    return num_words_ * WORD_BITS < 1 << 16


def _flip_words(x_side: Array) -> Array:
    """uint32[Q, 1]: all ones where x is on the positive side of h, zeros elsewhere."""
    return jnp.where(x_side, np.uint32(0xFFFFFFFF), np.uint32(0))[:, None]


# Words per partial sum: 32 · 2047 < 2^16, so one uint32 holds two sums.
_HALF_WORDS = 2047


def _split_sums(both: Array) -> tuple[Array, Array]:
    """Sums of the low and the high 16 bits of ``both`` [W, Q] over the words, int32[Q] each.

    Each element carries two popcounts (≤ 32 each) in its halves; partial sums over
    ``_HALF_WORDS`` words cannot carry from the low half into the high one.
    """
    w = both.shape[0]
    chunk = min(w, _HALF_WORDS)
    both = jnp.pad(both, ((0, -w % chunk), (0, 0))).reshape(-1, chunk, both.shape[1])
    sums = jnp.sum(both, axis=1, dtype=jnp.uint32)  # [chunks, Q]
    low = (sums & np.uint32(0xFFFF)).astype(jnp.int32)
    high = (sums >> np.uint32(16)).astype(jnp.int32)
    return jnp.sum(low, axis=0), jnp.sum(high, axis=0)


def _removal_counts_by_word(side_by_word: Array, flip: Array, pos: Array, neg: Array
                            ) -> tuple[Array, Array]:
    """Per boundary, how many references of ``pos`` and of ``neg`` leave x's side.

    Both popcounts go into one uint32 (low and high 16 bits), so XLA makes one pass and
    one reduction over the words instead of two (~1.6× faster on CPU). The side matrix
    is transposed (words major, boundaries minor): summing over the major axis lets
    XLA:CPU vectorise across boundaries (about 20 % faster than row sums along the words).

    Args:
      side_by_word: uint32[W, Q]; flip: uint32[Q]; pos, neg: uint32[W].

    Returns:
      (int32[Q], int32[Q]).
    """
    leaving = side_by_word ^ flip[None, :]
    both = (lax.population_count(leaving & pos[:, None])
            + (lax.population_count(leaving & neg[:, None]) << np.uint32(16)))
    return _split_sums(both)


def _removal_counts_pure(side_by_word: Array, flip: Array, covered: Array, neg: Array
                         ) -> tuple[Array, Array]:
    """``_removal_counts_by_word`` when no word mixes Class(x) and D(x) references.

    Then one popcount per word is either count, and the word's class says which half of
    the sum it goes to: half the popcounts of the mixed layout (``ClassBlocks``).

    Args:
      side_by_word: uint32[W, Q]; flip: uint32[Q]; covered: uint32[W], covered references
        (within Class(x) ∪ D(x)); neg: uint32[W], D(x).

    Returns:
      (int32[Q], int32[Q]).
    """
    shift = jnp.where(neg != 0, np.uint32(16), np.uint32(0))[:, None]
    both = lax.population_count((side_by_word ^ flip[None, :]) & covered[:, None]) << shift
    return _split_sums(both)


def _greedy(side_words: Array, x_side: Array, positive: Array, negative: Array,
            delta: Array | None) -> GreedyResult:
    """Algorithm 1 for one input on packed sets.

    A reference leaves the polytope when h is added iff its side of h differs from x's,
    i.e. its bit in ``side_words[h] ^ flip[h]`` is set. That XOR is recomputed inside each
    popcount rather than stored, so a vmapped batch shares one [Q, W] side matrix and the
    loop stays compute-bound instead of streaming a [B, Q, W] match tensor.

    Args:
      side_words: uint32[Q, W], packed sides of the references (any padding).
      x_side: bool[Q], x's side of each boundary.
      positive: uint32[W], Class(x) references (padding zero).
      negative: uint32[W], D(x) references (disjoint from ``positive``; padding zero).
      delta: int32 scalar bound, or None for τ(x).
    """
    q = side_words.shape[0]
    flip = _flip_words(x_side)
    ever_removed = lax.reduce((side_words ^ flip) & negative, np.uint32(0), lax.bitwise_or, (0,))
    tau = popcount(negative & ~ever_removed)
    delta = tau if delta is None else jnp.asarray(delta, jnp.int32)
    side_by_word = side_words.T

    def counts(covered):
        return _removal_counts_by_word(side_by_word, flip[:, 0], covered & positive,
                                       covered & negative)

    def cond(state):
        _, selected, _, _, _, den, neg_count = state
        return (neg_count > delta) & jnp.any(~selected & (den > 0))

    def body(state):
        covered, selected, order, step, nom, den, _ = state
        h = _best_candidate(~selected & (den > 0), nom, den, _narrow(side_words.shape[1]))
        covered = covered & ~(side_words[h] ^ flip[h])
        nom, den = counts(covered)
        return (covered, selected.at[h].set(True), order.at[step].set(h), step + 1, nom, den,
                popcount(covered & negative))

    covered0 = positive | negative
    nom0, den0 = counts(covered0)
    init = (covered0, jnp.zeros((q,), jnp.bool_), jnp.full((q,), -1, jnp.int32),
            jnp.asarray(0, jnp.int32), nom0, den0, popcount(negative))
    covered, selected, order, step, _, _, neg_count = lax.while_loop(cond, body, init)
    return GreedyResult(selected=selected, order=order, num_selected=step, covered=covered,
                        num_covered_positive=popcount(covered & positive),
                        num_covered_negative=neg_count, delta=delta, tau=tau,
                        reached=neg_count <= delta)


def _check_delta(delta) -> None:
    if delta is None:
        return
    d = jnp.asarray(delta)
    if d.ndim != 0 or not jnp.issubdtype(d.dtype, jnp.integer):
        raise ValueError(f"delta: expected an integer scalar or None, got {d.dtype}{d.shape}")
    if not isinstance(delta, jax.core.Tracer) and int(d) < 0:
        raise ValueError(f"delta: must be >= 0, got {int(d)}")


def class_sets(positive_words: Array, num_refs) -> tuple[Array, Array]:
    """Class(x) and D(x) bit sets of one input: uint32[W] each, padding bits zero.

    Args:
      positive_words: uint32[W], packed references predicted as Class(x).
      num_refs: N (may be traced).
    """
    valid = valid_words(num_refs, positive_words.shape[-1])
    return positive_words & valid, ~positive_words & valid


@jax.jit
def _solve_packed(match_words, positive_words, delta, num_refs):
    # match = side XNOR x's side; with x on the positive side of every row, side = match.
    positive, negative = class_sets(positive_words, num_refs)
    x_side = jnp.ones(match_words.shape[:1], jnp.bool_)
    return _greedy(match_words, x_side, positive, negative, delta)


def _solve_greedy_packed(match_words: Array, positive_words: Array, delta=None, *,
                        num_refs) -> GreedyResult:
    """Algorithm 1 on packed sets (jittable; vmap over all array arguments for a batch).

    Args:
      match_words: uint32[Q, W], packed ``match`` (bit n of row h: reference n is on x's
        side of boundary h).
      positive_words: uint32[W], packed references predicted as Class(x).
      delta: int scalar ≥ 0, or None for τ(x).
      num_refs: N ≤ 32·W, the number of references; bits past it are ignored (may be traced).

    Returns:
      ``GreedyResult``.
    """
    match_words = jnp.asarray(match_words)
    positive_words = jnp.asarray(positive_words)
    if match_words.dtype != jnp.uint32 or match_words.ndim != 2:
        raise ValueError(f"match_words: expected uint32[Q, W], got "
                         f"{match_words.dtype}{match_words.shape}")
    if match_words.shape[0] == 0:
        raise ValueError("match_words: need at least one boundary (Q >= 1)")
    if match_words.shape[1] == 0:  # no word to pack a reference into: nothing to cover
        raise ValueError("match_words: need at least one reference (W >= 1 words)")
    if positive_words.dtype != jnp.uint32 or positive_words.shape != match_words.shape[1:]:
        raise ValueError(f"positive_words: expected uint32{match_words.shape[1:]}, got "
                         f"{positive_words.dtype}{positive_words.shape}")
    if not isinstance(num_refs, jax.core.Tracer) and not (
            0 <= int(num_refs) <= match_words.shape[1] * WORD_BITS):
        raise ValueError(f"num_refs: {num_refs} does not fit in {match_words.shape[1]} words")
    _check_delta(delta)
    return _solve_packed(match_words, positive_words, delta, num_refs)


def _solve_greedy(match: Array, positive: Array, delta=None) -> GreedyResult:
    """Algorithm 1 on boolean matrices: packs them and runs ``_solve_greedy_packed``.

    Args:
      match: bool[Q, N], True where reference n lies on x's side of boundary h.
      positive: bool[N], True where reference n is predicted as Class(x) (the rest is D(x)).
      delta: int scalar ≥ 0, or None for τ(x).

    Returns:
      ``GreedyResult`` (``covered`` packed; ``unpack_bits(result.covered, N)`` for bools).

    Raises:
      ValueError: bad shapes or dtypes, no boundary (Q = 0) or no reference (N = 0).
    """
    match = jnp.asarray(match)
    positive = jnp.asarray(positive)
    if match.dtype != jnp.bool_ or match.ndim != 2:
        raise ValueError(f"match: expected bool[Q, N], got {match.dtype}{match.shape}")
    if match.shape[1] == 0:
        raise ValueError(f"match: need at least one reference (N >= 1), got bool{match.shape}")
    if positive.dtype != jnp.bool_ or positive.shape != match.shape[1:]:
        raise ValueError(f"positive: expected bool{match.shape[1:]}, got "
                         f"{positive.dtype}{positive.shape}")
    return _solve_greedy_packed(pack_bits(match), pack_bits(positive), delta,
                               num_refs=match.shape[1])


def match_words(side_words: Array, x_side: Array, num_refs) -> Array:
    """Packed match matrix of one input: XNOR of the reference sides with x's side bits.

    Args:
      side_words: uint32[Q, W], packed sides of the references (``boundaries.side_bits``).
      x_side: bool[Q], x's side of each boundary.
      num_refs: N, the number of references (padding bits are cleared).

    Returns:
      uint32[Q, W].
    """
    return ~(side_words ^ _flip_words(x_side)) & valid_words(num_refs, side_words.shape[-1])


_CHUNK_WORDS = 1 << 20

# Inputs in flight at once in ``_solve_lanes`` (``default_lanes`` caps them by the words of
# their [lanes, Q, W] temporaries). With lanes refilled as inputs finish, more lanes cost no
# lockstep waste; 64 amortises XLA:CPU's per-operation cost over enough work
# (``python -m benchmarks.bench_solver`` sweeps it).
DEFAULT_LANES = 64


def _tau(side_words: Array, flips: Array, negative: Array, lanes: int) -> Array:
    """τ of each input: D(x) references on x's side of every boundary, int32[B]."""
    def one(args):
        flip, neg = args
        ever_removed = lax.reduce((side_words ^ flip[:, None]) & neg, np.uint32(0),
                                  lax.bitwise_or, (0,))
        return popcount(neg & ~ever_removed)

    return lax.map(one, (flips, negative), batch_size=lanes)


def _solve_lanes(side_words: Array, x_sides: Array, positive: Array, negative: Array,
                delta: Array | None, *, lanes: int = DEFAULT_LANES,
                pure_words: bool = False,
                first_counts: tuple[Array, Array] | None = None,
                num_inputs=None) -> GreedyResult:
    """Algorithm 1 for a batch sharing one side matrix, on lanes refilled as inputs finish.

    A vmapped while loop runs every input of a group for as many steps as the group's
    slowest input needs. Here ``lanes`` inputs are in flight; at every iteration each
    lane either takes one greedy step or, once its input has stopped, writes the answer
    and starts the next input. Every input follows exactly ``_greedy``'s steps, so the
    answers are identical; the iterations are about Σ (steps + 1) / lanes plus one tail,
    or Σ steps / lanes when ``first_counts`` lets a new input take its first step at once.

    Args:
      side_words: uint32[Q, W].
      x_sides: bool[B, Q].
      positive, negative: uint32[B, W] disjoint class sets (padding zero).
      delta: int32[B], or None for each input's τ.
      lanes: inputs in flight (static; capped at B).
      pure_words: (static) no word holds both a Class(x) and a D(x) reference of any
        input (the ``ClassBlocks`` layout), so one popcount per word gives both counts.
      first_counts: (nom, den) int32[B, Q], each input's counts with everything covered
        (``_removal_counts_by_word`` of its Class(x) and D(x)), when they come cheaper
        than a pass over its words; None counts them in the loop.
      num_inputs: the first ``num_inputs`` rows are inputs, the rest padding that no lane
        takes (their rows of the answer keep their initial values; may be traced; default
        B). Padding lets one compiled solver serve every batch size up to B.

    Returns:
      ``GreedyResult`` with a leading batch axis B.
    """
    q, w = side_words.shape
    b = x_sides.shape[0]  # also the out-of-range row the scatters drop
    lanes = max(1, min(int(lanes), b))
    live_rows = b if num_inputs is None else jnp.asarray(num_inputs, jnp.int32)
    flips = jnp.where(x_sides, _ALL_ONES, np.uint32(0))  # [B, Q]
    tau = _tau(side_words, flips, negative, lanes)
    delta = tau if delta is None else delta.astype(jnp.int32)
    lane_ids = jnp.arange(lanes, dtype=jnp.int32)

    side_by_word = side_words.T

    def counts(covered, flip, pos, neg):
        if pure_words:
            return _removal_counts_pure(side_by_word, flip, covered, neg)
        return _removal_counts_by_word(side_by_word, flip, covered & pos, covered & neg)

    def refill(state):
        """Lanes whose input stopped write their answer and take the next input."""
        (idx, covered, selected, order, step, nom, den, neg_count, nxt, out) = state
        live = idx < live_rows
        d = delta[jnp.minimum(idx, b - 1)]
        running = live & (neg_count > d) & jnp.any(~selected & (den > 0), axis=1)
        done = jnp.where(live & ~running, idx, b)  # b: dropped by the scatters
        pos_l = positive[jnp.minimum(idx, b - 1)]
        out = {"selected": out["selected"].at[done].set(selected, mode="drop"),
               "order": out["order"].at[done].set(order, mode="drop"),
               "num_selected": out["num_selected"].at[done].set(step, mode="drop"),
               "covered": out["covered"].at[done].set(covered, mode="drop"),
               "num_covered_positive": out["num_covered_positive"].at[done].set(
                   popcount(covered & pos_l), mode="drop"),
               "num_covered_negative": out["num_covered_negative"].at[done].set(
                   neg_count, mode="drop")}
        free = ~running
        new = nxt + jnp.cumsum(free.astype(jnp.int32)) - 1
        idx = jnp.where(free, jnp.where(new < live_rows, new, b), idx)
        nxt = jnp.minimum(nxt + jnp.sum(free, dtype=jnp.int32), live_rows)
        return idx, free, (covered, selected, order, step, nom, den, neg_count, nxt, out)

    def cond(state):
        idx, nxt = state[0], state[8]
        return jnp.any(idx < live_rows) | (nxt < live_rows)

    def body(state):
        idx, free, (covered, selected, order, step, nom, den, _, nxt, out) = refill(state)
        safe = jnp.minimum(idx, b - 1)
        flip, pos, neg = flips[safe], positive[safe], negative[safe]
        fresh = free[:, None]
        covered = jnp.where(fresh, pos | neg, covered)
        selected = jnp.where(fresh, False, selected)
        order = jnp.where(fresh, -1, order)
        step = jnp.where(free, 0, step)
        if first_counts is None:  # a new input spends this iteration on its counts
            go = ~free
        else:  # a new input starts from its given counts and steps now, if it runs at all
            nom = jnp.where(fresh, first_counts[0][safe], nom)
            den = jnp.where(fresh, first_counts[1][safe], den)
            go = ~free | ((idx < live_rows) & (popcount(neg) > delta[safe])
                          & jnp.any(den > 0, axis=1))
        h = jax.vmap(_best_candidate, (0, 0, 0, None))(~selected & (den > 0), nom, den,
                                                      _narrow(w))
        removed = side_words[h] ^ flip[lane_ids, h][:, None]
        covered = jnp.where(go[:, None], covered & ~removed, covered)
        selected = jnp.where(go[:, None], selected.at[lane_ids, h].set(True), selected)
        # A running lane has an unselected candidate left, so step < Q.
        order = jnp.where(go[:, None], order.at[lane_ids, jnp.minimum(step, q - 1)].set(h),
                          order)
        step = jnp.where(go, step + 1, step)
        nom, den = jax.vmap(counts)(covered, flip, pos, neg)
        return (idx, covered, selected, order, step, nom, den, popcount(covered & neg), nxt,
                out)

    out = {"selected": jnp.zeros((b, q), jnp.bool_), "order": jnp.full((b, q), -1, jnp.int32),
           "num_selected": jnp.zeros((b,), jnp.int32), "covered": jnp.zeros((b, w), jnp.uint32),
           "num_covered_positive": jnp.zeros((b,), jnp.int32),
           "num_covered_negative": jnp.zeros((b,), jnp.int32)}
    init = (jnp.full((lanes,), b, jnp.int32), jnp.zeros((lanes, w), jnp.uint32),
            jnp.zeros((lanes, q), jnp.bool_), jnp.full((lanes, q), -1, jnp.int32),
            jnp.zeros((lanes,), jnp.int32), jnp.zeros((lanes, q), jnp.int32),
            jnp.zeros((lanes, q), jnp.int32), jnp.zeros((lanes,), jnp.int32),
            jnp.asarray(0, jnp.int32), out)
    out = lax.while_loop(cond, body, init)[9]
    return GreedyResult(delta=delta, tau=tau, reached=out["num_covered_negative"] <= delta,
                        **out)


def default_lanes(num_boundaries: int, num_word: int) -> int:
    """``DEFAULT_LANES``, fewer where their [lanes, Q, W] temporaries pass ``_CHUNK_WORDS``
    words: XLA:CPU allocates temporaries per call, and past glibc's 32 MiB mmap threshold
    every call pays fresh page faults (measured 5-10× slower)."""
    return max(1, min(DEFAULT_LANES, _CHUNK_WORDS // (num_boundaries * num_word)))


@jax.jit
def _solve_batch_jit(side_words, num_refs, x_sides, positive_words, delta):
    positive, negative = jax.vmap(class_sets, (0, None))(positive_words, num_refs)
    return _solve_lanes(side_words, x_sides, positive, negative, delta,
                       lanes=default_lanes(*side_words.shape))


def _first_counts(blocked: Array, blocks: ClassBlocks, x_sides: Array, x_classes: Array
                  ) -> tuple[Array, Array]:
    """Algorithm 1's counts before any step, from per-class sums: int32[B, Q] twice.

    With everything covered, a boundary removes the references of a class on the side x
    is not on; per class that is its size minus (or just) its references on the positive
    side, summed once over its words for the whole batch.
    """
    num_classes = blocks.word_class.shape[0] - num_words(blocks.slot.shape[0])
    segment = jnp.where(blocks.word_class < 0, num_classes, blocks.word_class)
    on_positive = jax.ops.segment_sum(lax.population_count(blocked).T.astype(jnp.int32),
                                      segment, num_segments=num_classes + 1)[:num_classes]
    size = jax.ops.segment_sum(lax.population_count(blocks.valid).astype(jnp.int32),
                               segment, num_segments=num_classes + 1)[:num_classes]
    own_positive = on_positive[x_classes]  # [B, Q]
    other_positive = jnp.sum(on_positive, axis=0)[None, :] - own_positive
    own_size = size[x_classes][:, None]
    other_size = jnp.sum(size) - own_size
    nom = jnp.where(x_sides, own_size - own_positive, own_positive)
    den = jnp.where(x_sides, other_size - other_positive, other_positive)
    return nom, den


def _solve_blocks(side_words: Array, blocked: Array, blocks: ClassBlocks, x_sides: Array,
                 x_classes: Array, delta: Array | None, *, lanes: int,
                 num_inputs=None) -> GreedyResult:
    """``_solve_classes`` as a traceable function, once the layout is made (no checks).

    Args:
      side_words: uint32[Q, ⌈N/32⌉], the sides in reference order.
      blocked: ``to_blocks(side_words, blocks)``, uint32[Q, W'].
      blocks: ``class_blocks`` of the references' classes.
      x_sides: bool[B, Q].
      x_classes: int32[B].
      delta: int32[B], or None for each input's τ.
      lanes: inputs in flight (``_solve_lanes``).
      num_inputs: rows past it are padding (``_solve_lanes``; default B).

    Returns:
      ``GreedyResult`` with a leading batch axis B, ``covered`` in reference order.
    """
    own = blocks.word_class[None, :] == x_classes[:, None]  # [B, W']
    positive = jnp.where(own, blocks.valid, np.uint32(0))
    negative = jnp.where(own, np.uint32(0), blocks.valid)
    result = _solve_lanes(blocked, x_sides, positive, negative, delta, lanes=lanes,
                         pure_words=True,
                         first_counts=_first_counts(blocked, blocks, x_sides, x_classes),
                         num_inputs=num_inputs)
    # P(x)'s covered set again in reference order: cheaper than moving every bit back.
    valid = valid_words(blocks.num_refs, side_words.shape[1])

    def covered(args):
        x_side, selected = args
        removed = (side_words ^ _flip_words(x_side)) & _flip_words(selected)
        return valid & ~lax.reduce(removed, np.uint32(0), lax.bitwise_or, (0,))

    return result._replace(covered=lax.map(covered, (x_sides, result.selected),
                                           batch_size=lanes))


@functools.partial(jax.jit, static_argnames="num_classes")
def _solve_classes_jit(side_words, x_sides, ref_classes, x_classes, delta, num_refs, num_inputs,
                   num_classes):
    blocks = class_blocks(ref_classes, num_classes=num_classes, num_refs=num_refs)
    blocked = to_blocks(side_words, blocks)
    return _solve_blocks(side_words, blocked, blocks, x_sides, x_classes, delta,
                        lanes=default_lanes(*blocked.shape), num_inputs=num_inputs)


@functools.partial(jax.jit, static_argnames=("rows", "refs"))
def _padded_class_problem(x_sides, ref_classes, x_classes, delta, *, rows: int, refs: int):
    return (zero_pad(x_sides, rows), zero_pad(ref_classes.astype(jnp.int32), refs),
            zero_pad(x_classes.astype(jnp.int32), rows),
            None if delta is None else zero_pad(delta, rows))


def check_class_args(side_words, x_sides, ref_classes, x_classes, num_classes: int) -> int:
    """Validates ``_solve_classes``'s arrays (NumPy or JAX); returns N."""
    n = ref_classes.shape[0] if ref_classes.ndim == 1 else -1
    if n < 1 or not np.issubdtype(ref_classes.dtype, np.integer):
        raise ValueError(f"ref_classes: expected int[N >= 1], got "
                         f"{ref_classes.dtype}{ref_classes.shape}")
    if side_words.ndim != 2 or side_words.shape[1] != num_words(n):
        raise ValueError(f"side_words: expected uint32[Q, {num_words(n)}] for {n} references, "
                         f"got {side_words.dtype}{side_words.shape}")
    b = x_sides.shape[0] if x_sides.ndim == 2 else 0
    if x_classes.shape != (b,) or not np.issubdtype(x_classes.dtype, np.integer):
        raise ValueError(f"x_classes: expected int[{b}] (one per row of x_sides), got "
                         f"{x_classes.dtype}{x_classes.shape}")
    check_batch_args(side_words, n, x_sides, jax.ShapeDtypeStruct((b, side_words.shape[1]),
                                                                 jnp.uint32))
    for name, classes in (("ref_classes", ref_classes), ("x_classes", x_classes)):
        if not isinstance(classes, jax.core.Tracer) and (
                int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(f"{name}: every class must be in [0, {num_classes}) (num_classes)")
    return n


def _solve_classes(side_words: Array, x_sides: Array, ref_classes: Array, x_classes: Array,
                  delta: Array | None = None, *, num_classes: int,
                  check: bool = True) -> GreedyResult:
    """``_solve_batch`` where Class(x) is "the references predicted as x's class".

    The same answers as ``_solve_batch(side_words, N, x_sides, positive_words(ref_classes,
    x_classes, num_classes=num_classes), delta)``, faster: inside, the references are
    regrouped by class (``class_blocks``) so each greedy step makes one popcount per word
    instead of two; ``covered`` is then rebuilt in reference order from P(x). The solver
    is compiled per (Q, ⌈N/32⌉, ``buckets.bucket_size(B)``, C), not per N and B.

    Args:
      side_words: uint32[Q, ⌈N/32⌉], packed sides of the N references (one shared sample).
      x_sides: bool[B, Q], each input's side of each boundary.
      ref_classes: int[N], the references' predicted classes.
      x_classes: int[B], the inputs' predicted classes.
      delta: int32[B] (each input its own bound ≥ 0), or None for each input's τ.
      num_classes: more than every class id (static).
      check: validate the arrays first (shapes, dtypes, class ids, delta), which reads
        the class ids on the host. False skips that, for callers whose arrays are valid
        by construction; invalid ones then give undefined answers.

    Returns:
      ``GreedyResult`` with a leading batch axis B on every field.
    """
    side_words, x_sides, ref_classes, x_classes = (
        a if isinstance(a, jax.Array) else np.asarray(a)  # host arrays stay on the host
        for a in (side_words, x_sides, ref_classes, x_classes))
    if check:
        check_class_args(side_words, x_sides, ref_classes, x_classes, num_classes)
        delta = _check_delta_batch(delta, x_sides.shape[0] if x_sides.ndim == 2 else 0)
    # One compiled solver per (Q, word count, bucket_size(B), C): the references are padded
    # to the words' 32·W bits and the inputs to the bucket, both marked as padding inside.
    n, b = ref_classes.shape[0], x_sides.shape[0]
    rows, refs = bucket_size(b) if b else 0, side_words.shape[1] * WORD_BITS
    if (rows, refs) != (b, n):
        x_sides, ref_classes, x_classes, delta = _padded_class_problem(
            x_sides, ref_classes, x_classes, delta, rows=rows, refs=refs)
    result = _solve_classes_jit(jnp.asarray(side_words), jnp.asarray(x_sides),
                            jnp.asarray(ref_classes), jnp.asarray(x_classes), delta,
                            np.int32(n), np.int32(b), num_classes)
    return result if rows == b else first_rows(result, rows=b)


def check_batch_args(side_words, num_refs, x_sides, positive_words) -> tuple[int, int, int]:
    """Validates ``_solve_batch``'s arrays (NumPy or JAX); returns (Q, W, B)."""
    if side_words.dtype != np.uint32 or side_words.ndim != 2 or side_words.shape[0] == 0:
        raise ValueError(f"side_words: expected uint32[Q >= 1, W], got "
                         f"{side_words.dtype}{side_words.shape}")
    q, w = side_words.shape
    if not 0 <= int(num_refs) <= w * WORD_BITS:
        raise ValueError(f"num_refs: {num_refs} does not fit in {w} words")
    if x_sides.dtype != np.bool_ or x_sides.ndim != 2 or x_sides.shape[1] != q:
        raise ValueError(f"x_sides: expected bool[B, {q}], got {x_sides.dtype}{x_sides.shape}")
    b = x_sides.shape[0]
    if b == 0:
        raise ValueError("x_sides: empty batch")
    if positive_words.dtype != np.uint32 or positive_words.shape != (b, w):
        raise ValueError(f"positive_words: expected uint32[{b}, {w}], got "
                         f"{positive_words.dtype}{positive_words.shape}")
    return q, w, b


@jax.jit
def _solve_batch_per_input(side_words, num_refs, x_sides, positive_words, delta):
    def one(args):
        words, x_side, positive_words, d = args
        positive, negative = class_sets(positive_words, num_refs)
        return _greedy(words, x_side, positive, negative, d)

    q, w = side_words.shape[1:]
    chunk = max(1, min(x_sides.shape[0], _CHUNK_WORDS // (q * w)))
    return lax.map(one, (side_words, x_sides, positive_words, delta), batch_size=chunk)


def _check_delta_batch(delta, b: int):
    if delta is None:
        return None
    delta = jnp.asarray(delta)
    if delta.shape != (b,) or not jnp.issubdtype(delta.dtype, jnp.integer):
        raise ValueError(f"delta: expected int[{b}] or None, got {delta.dtype}{delta.shape}")
    if bool(jnp.any(delta < 0)):
        raise ValueError("delta: every bound must be >= 0")
    return delta.astype(jnp.int32)


def _solve_batch(side_words: Array, num_refs: int, x_sides: Array, positive_words: Array,
                delta: Array | None = None) -> GreedyResult:
    """Algorithm 1 for a batch of inputs against one reference set, in one jitted call.

    Inside, the per-input solver is vmapped over chunks of inputs that run one after another
    (``lax.map``), which bounds the temporaries; there is no Python loop over inputs.

    Args:
      side_words: uint32[Q, W], packed sides of the N references against one shared sample
        Q (the paper's variant), or uint32[B, Q, W], each input's own boundaries (the
        authors' per-input pools; ``boundaries.side_bits``).
      num_refs: N.
      x_sides: bool[B, Q], each input's side of each (of its) boundaries.
      positive_words: uint32[B, W], packed references predicted as each input's class.
      delta: int32[B] (each input its own bound ≥ 0), or None for each input's τ.

    Returns:
      ``GreedyResult`` with a leading batch axis B on every field.
    """
    side_words = jnp.asarray(side_words)
    x_sides = jnp.asarray(x_sides)
    positive_words = jnp.asarray(positive_words)
    if side_words.ndim == 3:
        b = check_batch_args(side_words[0], num_refs, x_sides, positive_words)[2]
        if side_words.shape[0] != b:
            raise ValueError(f"side_words: expected uint32[{b}, Q, W] (one pool per input), "
                             f"got {side_words.dtype}{side_words.shape}")
        return _solve_batch_per_input(side_words, jnp.asarray(num_refs, jnp.int32), x_sides,
                                      positive_words, _check_delta_batch(delta, b))
    q, w, b = check_batch_args(side_words, num_refs, x_sides, positive_words)
    return _solve_batch_jit(side_words, jnp.asarray(num_refs, jnp.int32), x_sides,
                        positive_words, _check_delta_batch(delta, b))


# The authors' greedy loop (``_mineInvariantCore``) counts ``steps += 1`` before each pick and
# breaks once ``steps > 110``: at most 111 picks, re-picks of a selected boundary included.
AUTHORS_MAX_STEPS = 111


def _keep_adding(side_words: Array, x_side: Array, positive: Array, negative: Array,
                 result: GreedyResult, *, max_steps: int) -> GreedyResult:
    """The authors' rule once Algorithm 1 can remove no more D(x) references (one input).

    Their loop picks the argmin of (nom + 1e-5) / (den + 1e-10), selected boundaries scoring
    1e10, until at most δ D(x) references stay covered or ``max_steps`` picks. While some
    unselected boundary removes a D(x) reference (den > 0) that is ``_greedy``'s pick. After
    that, a boundary that removes nothing scores 1e5 and wins, lowest index first, and
    adding it changes no count; once none is left, every unselected boundary removes a
    Class(x) reference (≥ 1.00001e10), so the lowest selected index is re-picked (1e10),
    which changes nothing, until the cap. So: cut ``_greedy``'s picks at ``max_steps``; if
    δ is still not reached, append the boundaries that remove no covered reference, in index
    order, until ``max_steps`` boundaries are selected. When the greedy picked nothing and
    every boundary removes a Class(x) reference, there is nothing to re-pick: their first
    pick is then the boundary removing the fewest, and the extras follow it.

    Args:
      side_words, x_side, positive, negative: as in ``_greedy``.
      result: ``_greedy``'s answer for this input (unbatched).
      max_steps: the picks the authors allow (static).

    Returns:
      ``GreedyResult``: extras appended to ``selected``/``order``/``num_selected``; the
      covered set and counts are those of the (possibly cut) greedy selection.
    """
    q = side_words.shape[0]
    slot = jnp.arange(q, dtype=jnp.int32)
    steps = jnp.minimum(result.num_selected, max_steps)
    order = jnp.where(slot < steps, result.order, -1)
    # -1 would wrap to the last boundary, so unused slots scatter past the end instead.
    selected = jnp.zeros((q,), jnp.bool_).at[jnp.where(order >= 0, order, q)].set(
        True, mode="drop")
    leaving = side_words ^ _flip_words(x_side)  # [Q, W]: references h removes
    removed = lax.reduce(jnp.where(selected[:, None], leaving, np.uint32(0)), np.uint32(0),
                         lax.bitwise_or, (0,))
    covered = (positive | negative) & ~removed
    num_negative = popcount(covered & negative)
    nothing = ~selected & ~jnp.any((leaving & covered) != 0, axis=1)
    # Stuck on the empty polytope (no boundary removes a D(x) reference) with no boundary
    # that removes nothing: their ratios are all (nom + 1e-5) / 1e-10 and nothing is selected
    # to re-pick, so they pick the boundary removing the fewest covered Class(x) references
    # (lowest index first). After it, boundaries that now remove nothing follow as usual.
    first = ((steps == 0) & (num_negative > result.delta) & ~jnp.any(nothing)
             & (max_steps >= 1))
    nom = popcount(leaving & covered[None, :])  # [Q]; no D(x) reference leaves here
    j = jnp.argmin(nom).astype(jnp.int32)
    selected = selected.at[j].set(selected[j] | first)
    order = order.at[0].set(jnp.where(first, j, order[0]))
    covered = jnp.where(first, covered & ~leaving[j], covered)
    steps = steps + first.astype(jnp.int32)
    nothing = ~selected & ~jnp.any((leaving & covered) != 0, axis=1)
    room = jnp.where(num_negative > result.delta, max_steps - steps, 0)
    rank = jnp.cumsum(nothing, dtype=jnp.int32)
    extra = nothing & (rank <= room)
    order = order.at[jnp.where(extra, steps + rank - 1, q)].set(slot, mode="drop")
    return result._replace(selected=selected | extra, order=order,
                           num_selected=steps + jnp.sum(extra, dtype=jnp.int32),
                           covered=covered, num_covered_positive=popcount(covered & positive),
                           num_covered_negative=num_negative,
                           reached=num_negative <= result.delta)


def _map_inputs(fn, side_words, num_refs, x_sides, positive_words, per_row):
    """``fn(words, x_side, positive, negative, row)`` over a batch, in chunks of inputs.

    Args:
      fn: one input's step on packed sets (arguments as in ``_greedy``, then its row of
        ``per_row``).
      side_words: uint32[Q, W] shared by every input, or uint32[B, Q, W] one pool each.
      num_refs: N.
      x_sides: bool[B, Q]; positive_words: uint32[B, W].
      per_row: a pytree with a leading batch axis B.

    Returns:
      ``fn``'s answers with a leading batch axis B.
    """
    per_input = side_words.ndim == 3

    def one(args):
        if per_input:
            words, x_side, positive_words, row = args
        else:
            (x_side, positive_words, row), words = args, side_words
        positive, negative = class_sets(positive_words, num_refs)
        return fn(words, x_side, positive, negative, row)

    rows = (x_sides, positive_words, per_row)
    q, w = side_words.shape[-2:]
    chunk = max(1, min(x_sides.shape[0], _CHUNK_WORDS // (q * w)))
    return lax.map(one, (side_words,) + rows if per_input else rows, batch_size=chunk)


def _check_shared_or_own(side_words, num_refs, x_sides, positive_words) -> tuple[int, int]:
    """``check_batch_args`` for a shared [Q, W] or per-input [B, Q, W] side matrix: (Q, B)."""
    q, _, b = check_batch_args(side_words if side_words.ndim == 2 else side_words[0],
                               num_refs, x_sides, positive_words)
    if side_words.ndim == 3 and side_words.shape[0] != b:
        raise ValueError(f"side_words: expected uint32[{b}, Q, W], got {side_words.shape}")
    return q, b


@functools.partial(jax.jit, static_argnames="max_steps")
def _keep_adding_batch_jit(side_words, num_refs, x_sides, positive_words, result, max_steps):
    return _map_inputs(functools.partial(_keep_adding, max_steps=max_steps), side_words,
                       num_refs, x_sides, positive_words, result)


def _keep_adding_batch(side_words: Array, num_refs: int, x_sides: Array, positive_words: Array,
                      result: GreedyResult, *, max_steps: int = AUTHORS_MAX_STEPS
                      ) -> GreedyResult:
    """The authors' greedy from Algorithm 1's answer, for a batch, in one jitted call.

    Where ``_solve_batch`` stops (no boundary removes another D(x) reference) while δ is
    not reached, the authors' code keeps adding the boundaries that remove nothing, in
    index order, then re-picks selected ones, until ``max_steps`` picks (``_keep_adding``);
    its loosen step (``_loosen_batch``) then runs over that larger set, so it may keep one
    of those extras instead of a boundary the greedy chose. The authors' loop also stops
    after ``max_steps`` picks while δ is reachable, which binds only when |Q| > max_steps.

    Args:
      side_words: uint32[Q, W] or uint32[B, Q, W], as in ``_solve_batch``.
      num_refs: N.
      x_sides: bool[B, Q].
      positive_words: uint32[B, W].
      result: ``GreedyResult`` of ``_solve_batch`` or ``_solve_classes`` (batch axis B).
      max_steps: the authors' cap on picks (111: their ``steps > 110`` after ``steps += 1``).

    Returns:
      ``GreedyResult`` with the extras appended to ``selected``, ``order`` and
      ``num_selected``; ``covered``, its counts and ``reached`` are unchanged unless the
      cap cut the greedy short.
    """
    side_words = jnp.asarray(side_words)
    x_sides = jnp.asarray(x_sides)
    positive_words = jnp.asarray(positive_words)
    _check_shared_or_own(side_words, num_refs, x_sides, positive_words)
    if int(max_steps) < 1:
        raise ValueError(f"max_steps: must be >= 1, got {max_steps}")
    return _keep_adding_batch_jit(side_words, jnp.asarray(num_refs, jnp.int32), x_sides,
                              positive_words, jax.tree.map(jnp.asarray, result),
                              int(max_steps))


class LoosenResult(NamedTuple):
    """P(x) after the loosen step (add a leading batch axis under vmap).

    Attributes:
      selected: bool[Q], the boundaries kept.
      num_selected: int32, how many were kept.
      num_dropped: int32, how many the step dropped.
    """

    selected: Array
    num_selected: Array
    num_dropped: Array


def _loosen(side_words: Array, x_side: Array, positive: Array, negative: Array,
            selected: Array) -> LoosenResult:
    """The loosen step for one input on packed sets (arguments as in ``_greedy``).

    Dropping a boundary can only grow the covered set, so "both counts unchanged" means
    "the covered set unchanged": the counts are compared with those of the greedy's P.
    """
    match = ~(side_words ^ _flip_words(x_side))  # [Q, W]

    def covered_by(sel):
        rows = jnp.where(sel[:, None], match, _ALL_ONES)
        return lax.reduce(rows, _ALL_ONES, lax.bitwise_and, (0,)) & (positive | negative)

    def counts(sel):
        covered = covered_by(sel)
        return popcount(covered & positive), popcount(covered & negative)

    target = counts(selected)

    def visit(j, sel):
        trial = sel.at[j].set(False)
        pos, neg = counts(trial)
        drop = sel[j] & (pos == target[0]) & (neg == target[1])
        return jnp.where(drop, trial, sel)

    kept = lax.fori_loop(0, selected.shape[0], visit, selected)
    num_kept = jnp.sum(kept, dtype=jnp.int32)
    return LoosenResult(selected=kept, num_selected=num_kept,
                        num_dropped=jnp.sum(selected, dtype=jnp.int32) - num_kept)


@jax.jit
def _loosen_batch_jit(side_words, num_refs, x_sides, positive_words, selected):
    return _map_inputs(_loosen, side_words, num_refs, x_sides, positive_words, selected)


def _loosen_batch(side_words: Array, num_refs: int, x_sides: Array, positive_words: Array,
                 selected: Array) -> LoosenResult:
    """The authors' loosen step after Algorithm 1, for a batch, in one jitted call.

    Visits the selected boundaries in index order and drops boundary j when removing it
    from the current selection leaves both the covered Class(x) count and the covered
    D(x) count unchanged. The covered set, and so every count, is unchanged by the step.

    Args:
      side_words: uint32[Q, W] or uint32[B, Q, W], as in ``_solve_batch``.
      num_refs: N.
      x_sides: bool[B, Q].
      positive_words: uint32[B, W].
      selected: bool[B, Q], the greedy's P(x) (``GreedyResult.selected``).

    Returns:
      ``LoosenResult`` with a leading batch axis B.
    """
    side_words = jnp.asarray(side_words)
    x_sides = jnp.asarray(x_sides)
    positive_words = jnp.asarray(positive_words)
    selected = jnp.asarray(selected)
    q, b = _check_shared_or_own(side_words, num_refs, x_sides, positive_words)
    if selected.dtype != jnp.bool_ or selected.shape != (b, q):
        raise ValueError(f"selected: expected bool[{b}, {q}], got {selected.dtype}{selected.shape}")
    return _loosen_batch_jit(side_words, jnp.asarray(num_refs, jnp.int32), x_sides,
                         positive_words, selected)


def _default_device_lanes(mesh: Mesh) -> int | None:
    """Inputs in flight per device: ``DEFAULT_LANES`` on CPUs, the whole share on
    accelerators.

    On a CPU a few dozen lanes, each refilled with the next input as soon as its own
    stops (``_solve_lanes``), keep their words in cache and amortise XLA's
    per-operation cost (lane sweep in benchmarks/RESULTS.md). GPUs and TPUs want the
    whole batch in parallel.
    """
    return DEFAULT_LANES if all(d.platform == "cpu" for d in mesh.devices.flat) else None


def _local_solve_batch(side_words: Array, num_refs, x_sides: Array, positive_words: Array,
                      delta: Array | None = None, *, lanes: int | None = None
                      ) -> GreedyResult:
    """``_solve_batch`` as a traceable function (no host-side checks).

    Args:
      side_words: uint32[Q, W] packed sides of the references.
      num_refs: N (may be traced).
      x_sides: bool[B, Q].
      positive_words: uint32[B, W].
      delta: int32[B] or None for each input's τ.
      lanes: inputs in flight (``_solve_lanes``'s lanes); None puts the whole
        batch in flight at once.

    Returns:
      ``GreedyResult`` with a leading batch axis B.
    """
    positive, negative = jax.vmap(class_sets, (0, None))(positive_words, num_refs)
    in_flight = x_sides.shape[0] if lanes is None else int(lanes)
    return _solve_lanes(side_words, x_sides, positive, negative, delta, lanes=in_flight)


@functools.partial(jax.jit, static_argnames=("mesh", "lanes"))
def _sharded_solve_batch_jit(side_words, num_refs, x_sides, positive_words, delta,
                             mesh: Mesh, lanes: int | None) -> GreedyResult:
    spec = batch_spec(mesh)
    local = functools.partial(_local_solve_batch, lanes=lanes)
    args = (side_words, num_refs, x_sides, positive_words, delta)
    specs = (P(), P(), spec, spec, None if delta is None else spec)
    # Each device runs its own while loops to completion: no cross-device sync per step.
    # check_vma=False: the solver's loop carries start as constants (not marked as varying
    # over the mesh axis); every value is per-device anyway.
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec,
                         check_vma=False)(*args)


def _sharded_solve_batch(side_words, num_refs: int, x_sides, positive_words, delta=None, *,
                        mesh: Mesh, lanes: int | None | str = "auto") -> GreedyResult:
    """``_solve_batch`` with the inputs split over the devices.

    The batch is padded to a multiple of the device count; padded inputs are solved
    and dropped.

    Args:
      side_words: uint32[Q, W] packed sides of the N references (replicated).
      num_refs: N.
      x_sides: bool[B, Q], each input's side of each boundary.
      positive_words: uint32[B, W], packed references predicted as each input's class.
      delta: int[B] bounds ≥ 0, or None for each input's τ.
      mesh: the device mesh.
      lanes: inputs each device solves together (see ``_local_solve_batch``);
        "auto" is ``_default_device_lanes(mesh)``, capped on CPUs by ``default_lanes``.

    Returns:
      ``GreedyResult`` of host arrays with a leading batch axis B.
    """
    side_words = np.asarray(side_words)
    x_sides = np.asarray(x_sides)
    positive_words = np.asarray(positive_words)
    q, w, b = check_batch_args(side_words, num_refs, x_sides, positive_words)
    delta = _shard_delta(delta, b, mesh)
    lanes = _resolve_lanes(lanes, mesh, q, w)
    result = _sharded_solve_batch_jit(
        replicate(side_words, mesh), replicate(np.int32(num_refs), mesh),
        shard_batch(x_sides, mesh), shard_batch(positive_words, mesh), delta, mesh, lanes=lanes)
    return GreedyResult(*(to_host(field)[:b] for field in result))


def _shard_delta(delta, b: int, mesh: Mesh):
    """Checks the bounds δ (int[B] ≥ 0 or None) and splits them over the devices."""
    if delta is None:
        return None
    delta = np.asarray(delta)
    if delta.shape != (b,) or not np.issubdtype(delta.dtype, np.integer):
        raise ValueError(f"delta: expected int[{b}] or None, got {delta.dtype}{delta.shape}")
    if np.any(delta < 0):
        raise ValueError("delta: every bound must be >= 0")
    return shard_batch(delta.astype(np.int32), mesh)


def _resolve_lanes(lanes, mesh: Mesh, q: int, w: int) -> int | None:
    """``lanes`` resolved: "auto" is ``_default_device_lanes``, capped by ``default_lanes``."""
    if lanes == "auto":
        lanes = _default_device_lanes(mesh)
        return None if lanes is None else min(lanes, default_lanes(q, w))
    if lanes is not None and (not isinstance(lanes, (int, np.integer)) or lanes < 1):
        raise ValueError(f"lanes: expected a positive int, None or 'auto', got {lanes!r}")
    return lanes


@functools.partial(jax.jit, static_argnames=("num_classes", "mesh", "lanes"))
def _sharded_solve_classes_jit(side_words, x_sides, ref_classes, x_classes, delta,
                               num_classes: int, mesh: Mesh, lanes: int | None) -> GreedyResult:
    blocks = class_blocks(ref_classes, num_classes=num_classes)
    blocked = to_blocks(side_words, blocks)
    spec = batch_spec(mesh)

    def local(side_words, blocked, blocks, x_sides, x_classes, delta):
        in_flight = x_sides.shape[0] if lanes is None else lanes
        return _solve_blocks(side_words, blocked, blocks, x_sides, x_classes, delta,
                            lanes=in_flight)

    specs = (P(), P(), P(), spec, spec, None if delta is None else spec)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(
        side_words, blocked, blocks, x_sides, x_classes, delta)


def _sharded_solve_classes(side_words, x_sides, ref_classes, x_classes, delta=None, *,
                          num_classes: int, mesh: Mesh, lanes: int | None | str = "auto",
                          check: bool = True) -> GreedyResult:
    """``_solve_classes`` with the inputs split over the devices.

    The class-blocked layout is made once and replicated; each device solves its share of
    the inputs (padded to a multiple of the device count, padding dropped).

    Args:
      side_words: uint32[Q, ⌈N/32⌉] packed sides of the N references (replicated).
      x_sides: bool[B, Q], each input's side of each boundary.
      ref_classes: int[N], the references' predicted classes.
      x_classes: int[B], the inputs' predicted classes.
      delta: int[B] bounds ≥ 0, or None for each input's τ.
      num_classes: more than every class id.
      mesh: the device mesh.
      lanes: inputs in flight per device, as in ``_sharded_solve_batch``.
      check: validate the arrays first, as ``solver._solve_classes`` does (the bounds δ
        are always checked). False skips it for arrays valid by construction.

    Returns:
      ``GreedyResult`` of host arrays with a leading batch axis B.
    """
    side_words = np.asarray(side_words)
    x_sides = np.asarray(x_sides)
    ref_classes = np.asarray(ref_classes)
    x_classes = np.asarray(x_classes)
    if check:
        check_class_args(side_words, x_sides, ref_classes, x_classes, num_classes)
    b = x_sides.shape[0]
    delta = _shard_delta(delta, b, mesh)
    q, w = side_words.shape
    lanes = _resolve_lanes(lanes, mesh, q, w + num_classes)
    result = _sharded_solve_classes_jit(
        replicate(side_words, mesh), shard_batch(x_sides, mesh),
        replicate(ref_classes.astype(np.int32), mesh), shard_batch(x_classes.astype(np.int32), mesh),
        delta, num_classes, mesh, lanes)
    return GreedyResult(*(to_host(field)[:b] for field in result))

@functools.partial(jax.jit, static_argnames="mesh")
def _sharded_solve_per_input_jit(side_words, num_refs, x_sides, positive_words, delta, mesh):
    spec = batch_spec(mesh)
    specs = (spec, P(), spec, spec, None if delta is None else spec)
    return jax.shard_map(_solve_batch_per_input, mesh=mesh, in_specs=specs, out_specs=spec,
                         check_vma=False)(side_words, num_refs, x_sides, positive_words, delta)


def _sharded_solve_per_input(side_words, num_refs: int, x_sides, positive_words, delta=None, *,
                             mesh: Mesh) -> GreedyResult:
    """``_solve_batch`` on per-input side words [B, Q, W], the inputs split over ``mesh``'s
    devices (padded to a multiple of the device count, padding dropped); host arrays."""
    b = x_sides.shape[0]
    delta = _shard_delta(delta, b, mesh)
    result = _sharded_solve_per_input_jit(
        shard_batch(np.asarray(side_words), mesh), replicate(np.int32(num_refs), mesh),
        shard_batch(np.asarray(x_sides), mesh), shard_batch(np.asarray(positive_words), mesh),
        delta, mesh)
    return GreedyResult(*(to_host(field)[:b] for field in result))


def _compact_order(order: Array, kept: Array) -> Array:
    """Selection order [B, Q] without the dropped boundaries, −1 padded (order preserved)."""
    keep = (order >= 0) & jnp.take_along_axis(kept, jnp.maximum(order, 0), axis=1)
    position = jnp.argsort(~keep, axis=1, stable=True)
    return jnp.where(jnp.take_along_axis(keep, position, axis=1),
                     jnp.take_along_axis(order, position, axis=1), -1)


def solve(side_words: Array, x_sides: Array, *, ref_classes: Array, x_classes: Array,
          num_classes: int, delta: Array | None = None, keep_adding: bool = False,
          loosen: bool = False, mesh: Mesh | None = None,
          check: bool = True) -> tuple[GreedyResult, Array]:
    """Algorithm 1 for a batch of inputs, with the authors' extras and loosen step if asked.

    The one solve function: Class(x) is "the references predicted as x's class" and D(x)
    the rest. Against one shared sample the references are regrouped by class first
    (``_solve_classes``: one popcount per word); with a pool per input each input brings
    its own side words. ``mesh`` splits the inputs over its devices; the answers are the
    same bit for bit.

    Args:
      side_words: uint32[Q, ⌈N/32⌉] packed sides of the N references against one shared
        sample, or uint32[B, Q, ⌈N/32⌉] against each input's own pool
        (``boundaries.side_bits``).
      x_sides: bool[B, Q], each input's side of each (of its) boundaries.
      ref_classes: int[N], the references' predicted classes.
      x_classes: int[B], the inputs' predicted classes.
      num_classes: more than every class id (static).
      delta: int[B] bounds ≥ 0 on the covered D(x) references, or None for each τ(x).
      keep_adding: where δ cannot be reached, keep adding as the authors' greedy does
        (``_keep_adding``: the boundaries that remove nothing, in index order, up to 111
        picks).
      loosen: the authors' loosen step after the greedy (``_loosen``).
      mesh: a ``jax.sharding.Mesh`` to split the inputs over (None: the default device).
      check: validate the arrays (shapes, dtypes, class ids) first; False is for callers
        whose arrays are valid by construction.

    Returns:
      (``GreedyResult`` with a leading batch axis B, after the extras and the loosen
      step; int32[B] |P(x)| before the loosen step, extras included).
    """
    num_refs = int(np.shape(ref_classes)[0])
    per_input = np.ndim(side_words) == 3
    if check:
        shared = side_words[0] if per_input else side_words
        check_class_args(shared, x_sides, ref_classes, x_classes, num_classes)
        delta = _check_delta_batch(delta, np.shape(x_sides)[0])
    positives = (positive_words(ref_classes, x_classes, num_classes=num_classes)
                 if per_input or keep_adding or loosen else None)
    if per_input:
        result = (_solve_batch(side_words, num_refs, x_sides, positives, delta) if mesh is None
                  else _sharded_solve_per_input(side_words, num_refs, x_sides, positives, delta,
                                                mesh=mesh))
    elif mesh is None:
        result = _solve_classes(side_words, x_sides, ref_classes, x_classes, delta,
                                num_classes=num_classes, check=False)
    else:
        result = _sharded_solve_classes(side_words, x_sides, ref_classes, x_classes, delta,
                                        num_classes=num_classes, mesh=mesh, check=False)
    result = jax.tree.map(jnp.asarray, result)
    if keep_adding:
        result = _keep_adding_batch(side_words, num_refs, x_sides, positives, result)
    greedy = result.num_selected
    if loosen:
        kept = _loosen_batch(side_words, num_refs, x_sides, positives, result.selected)
        result = result._replace(selected=kept.selected, num_selected=kept.num_selected,
                                 order=_compact_order(result.order, kept.selected))
    return result, greedy
