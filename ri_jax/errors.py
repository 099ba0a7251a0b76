"""The library's expected-error types: bad input the user can fix, and faults worth a message.

Convention (the one validation layer): a function that rejects an argument, a file or a
setting raises ``RIInputError`` (or, in older modules, a plain ``ValueError`` raised by
ri_jax itself) whose message starts with the argument, option or file and says why,
e.g. ``"runs/a/config.json: model.std: must be > 0, got [0.0, 0.0, 0.0]"``.
``ri_jax.cli.run_script`` turns these into ``script.py: error: <message>`` (exit 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class RIError(Exception):
    """Base of the expected errors: the message alone tells the user what to fix."""


class RIInputError(RIError, ValueError):
    """An argument, file or setting is unusable; the message names it and the reason."""


class CheckpointError(RIInputError):
    """A checkpoint or training-state file is missing, malformed or does not fit its model."""


class TrainingDivergedError(RIError, RuntimeError):
    """Training produced a non-finite loss; the message names the epoch and what was kept."""


@jax.jit
def _all_finite(arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def _on_host(a) -> bool:
    """Whether NumPy can read ``a`` without a transfer: a NumPy array, or a JAX array on CPU."""
    return isinstance(a, np.ndarray) or (
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
        and a.is_fully_addressable and all(d.platform == "cpu" for d in a.devices()))


def all_finite(*arrays) -> bool:
    """Whether every element of every array is finite (the "contains NaN or inf" check).

    Arrays in host memory (NumPy, or JAX arrays on the CPU) are checked by NumPy, which
    compiles nothing; others where they live, by one compiled reduction per set of
    shapes (instead of one eager op per step of the check).
    """
    if all(_on_host(a) for a in arrays):
        return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)
    return bool(_all_finite(arrays))
