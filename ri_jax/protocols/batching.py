"""Fixed-size chunking and argument checks shared by the §6 protocol modules.

Long inputs are processed in fixed-size chunks (the last one zero-padded), so each
jitted function compiles once per chunk shape.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm


def check_batch(x, name: str, ndim: int, n: int | None = None) -> np.ndarray:
    """``x`` as a NumPy array, or a ``ValueError`` naming ``name``.

    Args:
      x: array-like.
      name: argument name used in the error.
      ndim: required number of axes.
      n: required length of the first axis (None: any non-zero length).

    Returns:
      ``np.asarray(x)``, non-empty, finite where floating.
    """
    x = np.asarray(x)
    if x.ndim != ndim or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty array with {ndim} axes, got shape {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries along the first axis, got {x.shape[0]}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def check_positive(value, name: str) -> int:
    """``value`` as an int ≥ 1, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return int(value)


def check_choice(value: str, allowed: tuple[str, ...], name: str = "method") -> None:
    """``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}: unknown method {value!r}; choose one of {list(allowed)}")


def map_chunks(fn: Callable[..., Any], arrays: tuple, chunk_size: int, *, progress: bool = False,
               desc: str | None = None) -> Any:
    """Applies ``fn`` to fixed-size chunks of arrays sharing a leading axis and concatenates.

    The last chunk is zero-padded so a jitted ``fn`` compiles once; padded rows are cut off.

    Args:
      fn: ``fn(*chunks) -> pytree of arrays`` with the chunk axis first.
      arrays: arrays [N, ...] with the same N ≥ 1.
      chunk_size: rows per call.
      progress: show a tqdm bar over chunks.
      desc: bar label.

    Returns:
      The pytree of ``fn``'s outputs concatenated along axis 0 (NumPy), first N rows.
    """
    chunk_size = check_positive(chunk_size, "chunk_size")
    n = len(arrays[0])
    size = min(chunk_size, n)
    pad = -n % size
    padded = [np.pad(np.asarray(a), [(0, pad)] + [(0, 0)] * (np.ndim(a) - 1)) for a in arrays]
    starts = range(0, n + pad, size)
    outs = [jax.device_get(fn(*(a[s:s + size] for a in padded)))
            for s in tqdm(starts, desc=desc, disable=not progress, leave=False)]
    return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *outs)
