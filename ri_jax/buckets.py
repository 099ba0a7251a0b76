"""Shape buckets: batches padded to a few sizes, so one compiled program serves many.

XLA compiles a program per input shape. A notebook that interprets 3, then 5, then 7
images would compile every stage three times; rounded up to ``bucket_size`` it compiles
for 4 and 8 only, and the padding rows are dropped again (``first_rows``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Above this many rows, buckets are multiples of it: padding then costs at most 1/64 of
# a large batch's work instead of up to half of it.
BUCKET_STEP = 64


def bucket_size(n: int) -> int:
    """The padded size that stands for ``n`` rows: the next power of two up to
    ``BUCKET_STEP``, then the next multiple of ``BUCKET_STEP``; ``n`` ≥ 1."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected at least one row, got {n}")
    if n <= BUCKET_STEP:
        return 1 << (n - 1).bit_length()
    return -(-n // BUCKET_STEP) * BUCKET_STEP


def pad_rows(batch, size: int):
    """``batch`` zero-padded to ``size`` rows (NumPy on the host, JAX arrays where they are)."""
    if batch.shape[0] == size:
        return batch
    if isinstance(batch, np.ndarray):
        return np.pad(batch, [(0, size - batch.shape[0])] + [(0, 0)] * (batch.ndim - 1))
    return _pad_rows(batch, size)


def zero_pad(batch: Array, size: int) -> Array:
    """``batch`` zero-padded to ``size`` rows (traceable; ``size`` static)."""
    return jnp.pad(batch, [(0, size - batch.shape[0])] + [(0, 0)] * (batch.ndim - 1))


_pad_rows = jax.jit(zero_pad, static_argnums=1)


@functools.partial(jax.jit, static_argnames="size")
def repeat_last_row(tree, *, size: int):
    """Every array of ``tree`` padded to ``size`` rows with copies of its last row.

    Copies of a real input keep padded rows valid (finite features, a class the head
    predicts, a usable PRNG key), so every stage runs on them unchanged.
    """
    return jax.tree.map(lambda a: jnp.concatenate(
        [a, jnp.repeat(a[-1:], size - a.shape[0], axis=0)]), tree)


@functools.partial(jax.jit, static_argnames="rows")
def first_rows(tree, *, rows: int):
    """Every array of ``tree`` cut to its first ``rows`` rows, in one compiled program."""
    return jax.tree.map(lambda a: a[:rows], tree)
