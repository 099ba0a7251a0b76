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


def bucket_size(n: int) -> int:
    """The padded size that stands for ``n`` ≥ 1 rows.

    Powers of two up to 8, then four buckets per doubling (10, 12, 14, 16, 20, 24, …): a
    batch is padded by less than a quarter of its size, and sizes up to 1,024 share 32
    compiled shapes.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected at least one row, got {n}")
    if n <= 8:
        return 1 << (n - 1).bit_length()
    step = 1 << ((n - 1).bit_length() - 3)  # a quarter of the power of two below n
    return -(-n // step) * step


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
