"""Meshes, and feature extraction split over all devices.

The three stages that grow with the data are data-parallel: every image's ψ,
every reference's side bits and every input's Algorithm 1 run are independent.
ψ is split here (``sharded_features``); the side bits and the solve take a ``mesh``
argument of their one public function (``boundaries.side_bits``, ``solver.solve``),
built from the helpers here. Each is split along its batch axis over a ``jax.sharding.Mesh`` of all
devices (``shard_map`` with a ``PartitionSpec`` over every mesh axis) while the
small shared operands (parameters, boundaries, packed sides) are replicated.
Nothing is communicated between devices inside a stage.

The batch is padded to a multiple of the device count (zeros, i.e. black
images, empty side bits, no positives) and the padding is dropped from the
results, so a sharded stage returns exactly what the one-device function
returns. The same code spans hosts after ``jax.distributed.initialize()``:
every process passes the same global host arrays, each places only its own
devices' shards (``jax.make_array_from_callback``) and gets the global results
back (``process_allgather``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ri_jax.model import Model

Array = jax.Array

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    Args:
      devices: the devices to use.
      axis_name: name of the mesh axis.

    Returns:
      ``Mesh`` of shape (len(devices),).
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: need at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_spec(mesh: Mesh) -> P:
    """Leading axis split over every mesh axis (so any mesh shape works)."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    return P(tuple(mesh.axis_names))


def padded_size(n: int, mesh: Mesh, granule: int = 1) -> int:
    """Smallest size ≥ n that splits into equal per-device parts, each a multiple of ``granule``."""
    multiple = mesh.size * granule
    return max(1, -(-int(n) // multiple)) * multiple


def shard_batch(x, mesh: Mesh, *, size: int | None = None) -> Array:
    """Places ``x`` split along its leading axis over the devices of ``mesh``.

    Args:
      x: [N, ...] host or device array (the same global value on every process).
      mesh: the device mesh.
      size: padded length of the leading axis (default ``padded_size(N, mesh)``); must be
        ≥ N and divisible by the device count. The padding is zeros.

    Returns:
      [size, ...] ``jax.Array`` with ``NamedSharding(mesh, P(mesh axes))``.
    """
    spec = batch_spec(mesh)
    if np.ndim(x) < 1:
        raise ValueError(f"x: expected an array with a leading batch axis, got shape {np.shape(x)}")
    n = np.shape(x)[0]
    size = padded_size(n, mesh) if size is None else int(size)
    if size < n or size % mesh.size:
        raise ValueError(f"size: {size} must be >= {n} and divisible by {mesh.size} devices")
    sharding = NamedSharding(mesh, spec)
    if mesh.is_multi_process:
        host = np.asarray(x)
        host = np.pad(host, [(0, size - n)] + [(0, 0)] * (host.ndim - 1))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    x = jnp.asarray(x)
    return jax.device_put(jnp.pad(x, [(0, size - n)] + [(0, 0)] * (x.ndim - 1)), sharding)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of arrays whole on every device of ``mesh``."""
    sharding = NamedSharding(mesh, P())
    if mesh.is_multi_process:
        return jax.tree.map(lambda a: jax.make_array_from_callback(
            np.shape(a), sharding, lambda index, a=np.asarray(a): a[index]), tree)
    return jax.device_put(tree, sharding)


def to_host(x: Array) -> np.ndarray:
    """The global value of a (possibly multi-process) sharded array as a NumPy array."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class FeatureBatch(NamedTuple):
    """ψ and logits of a set of images.

    Attributes:
      psi: float32[N, h, w, c].
      logits: float32[N, C].
    """

    psi: np.ndarray
    logits: np.ndarray


@functools.partial(jax.jit, static_argnames=("model", "mesh"))
def _forward(model: Model, raw: Array, mesh: Mesh) -> tuple[Array, Array]:
    spec = batch_spec(mesh)

    def local(raw):
        psi = model.features(model.normalize(raw))
        return psi, model.head(psi)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec,), out_specs=(spec, spec))(raw)


def sharded_features(model: Model, raw_images, mesh: Mesh, *,
                     batch_size: int = 64) -> FeatureBatch:
    """ψ and logits of raw images, each step splitting ``batch_size`` images per device.

    Args:
      model: the ``ri_jax.model.Model``.
      raw_images: float32[N, S, S, 3] in [0, 1] (normalised inside, like
        ``ri_jax.featurize.compute_features``), a host array.
      mesh: the device mesh.
      batch_size: images per device per step; the last step is padded so one compiled
        shape serves all steps.

    Returns:
      ``FeatureBatch`` of host arrays for the N images.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model: expected a ri_jax.model.Model, got {type(model).__name__}")
    raw_images = np.asarray(raw_images)
    if raw_images.ndim != 4 or raw_images.shape[-1] != 3 or raw_images.shape[0] == 0:
        raise ValueError(f"raw_images: expected [N >= 1, S, S, 3], got shape {raw_images.shape}")
    if not np.issubdtype(raw_images.dtype, np.floating):
        raise ValueError(f"raw_images: expected floats in [0, 1], got dtype {raw_images.dtype}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    n = raw_images.shape[0]
    step = min(int(batch_size) * mesh.size, padded_size(n, mesh))
    psis, logits = [], []
    for start in range(0, n, step):
        chunk = raw_images[start:start + step]
        psi, logit = _forward(model, shard_batch(chunk, mesh, size=step), mesh)
        psis.append(to_host(psi)[:len(chunk)])
        logits.append(to_host(logit)[:len(chunk)])
    return FeatureBatch(psi=np.concatenate(psis), logits=np.concatenate(logits))
