"""Sets of references as packed bits: uint32 words, little-endian within a word.

Bit j of word k is reference 32·k + j; padding bits past the last reference are always
zero. Algorithm 1 (``ri_jax.solver``) and the side matrices (``ri_jax.boundaries``) keep
every set of references in this form, so a greedy step is a few popcounts per word.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

WORD_BITS = 32
_BIT_WEIGHTS = np.left_shift(np.uint32(1), np.arange(WORD_BITS, dtype=np.uint32))


def num_words(num_refs: int) -> int:
    """Number of uint32 words that hold ``num_refs`` bits."""
    return -(-int(num_refs) // WORD_BITS)


def pack_bits(bits: Array) -> Array:
    """Packs booleans along the last axis into uint32 words.

    Args:
      bits: bool[..., N].

    Returns:
      uint32[..., ⌈N/32⌉]: bit j of word k is ``bits[..., 32k + j]``; padding bits are zero.
    """
    bits = bits if hasattr(bits, "dtype") else np.asarray(bits)
    if bits.dtype != jnp.bool_:
        raise ValueError(f"bits: expected a bool array, got dtype {bits.dtype}")
    if bits.ndim < 1:
        raise ValueError("bits: expected at least one axis (the bits to pack)")
    return _pack_bits(bits)


@jax.jit
def _pack_bits(bits: Array) -> Array:
    # Jitted so that an eager call compiles one program per shape, not one per step.
    n = bits.shape[-1]
    words = num_words(n)
    pad = [(0, 0)] * (bits.ndim - 1) + [(0, words * WORD_BITS - n)]
    grouped = jnp.pad(bits, pad).reshape(bits.shape[:-1] + (words, WORD_BITS))
    # Distinct powers of two: the sum is the bitwise OR and cannot overflow.
    return jnp.sum(jnp.where(grouped, _BIT_WEIGHTS, np.uint32(0)), axis=-1, dtype=jnp.uint32)


def unpack_bits(words: Array, num_bits: int) -> Array:
    """Inverse of ``pack_bits``.

    Args:
      words: uint32[..., W].
      num_bits: N ≤ 32·W, the number of meaningful bits.

    Returns:
      bool[..., N].
    """
    words = words if hasattr(words, "dtype") else np.asarray(words)
    if words.dtype != jnp.uint32:
        raise ValueError(f"words: expected uint32 words, got dtype {words.dtype}")
    if words.ndim < 1:
        raise ValueError("words: expected at least one axis (the words)")
    if not 0 <= num_bits <= words.shape[-1] * WORD_BITS:
        raise ValueError(f"num_bits: {num_bits} does not fit in {words.shape[-1]} words")
    return _unpack_bits(words, int(num_bits))


@functools.partial(jax.jit, static_argnums=1)
def _unpack_bits(words: Array, num_bits: int) -> Array:
    bits = (words[..., None] & _BIT_WEIGHTS) != 0
    return bits.reshape(words.shape[:-1] + (-1,))[..., :num_bits]


def valid_words(num_refs, num_word: int) -> Array:
    """uint32[num_word] with the first ``num_refs`` bits set (``num_refs`` may be traced)."""
    index = jnp.arange(num_word * WORD_BITS).reshape(num_word, WORD_BITS)
    return jnp.sum(jnp.where(index < num_refs, _BIT_WEIGHTS, np.uint32(0)), axis=-1,
                   dtype=jnp.uint32)


def popcount(words: Array) -> Array:
    """Number of set bits along the last axis, int32[...]."""
    # Summing in uint32 keeps XLA's CPU loop vectorised (~5× faster than summing int32 casts).
    return jnp.sum(lax.population_count(words), axis=-1, dtype=jnp.uint32).astype(jnp.int32)
