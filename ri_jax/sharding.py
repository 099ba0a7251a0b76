"""Feature extraction, side matrices and batched solving split over all devices.

The three stages that grow with the data are data-parallel: every image's ψ,
every reference's side bits and every input's Algorithm 1 run are independent.
So each is split along its batch axis over a ``jax.sharding.Mesh`` of all
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

from ri_jax.boundaries import Boundaries
from ri_jax.model import Model
from ri_jax.solver import (DEFAULT_LANES, WORD_BITS, GreedyResult, check_batch_args,
                           check_class_args, class_blocks, class_sets, default_lanes, num_words,
                           pack_bits, solve_blocks, solve_lanes, to_blocks, valid_words)

Array = jax.Array

BATCH_AXIS = "batch"
_HIGHEST = jax.lax.Precision.HIGHEST


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


def _batch_spec(mesh: Mesh) -> P:
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
    spec = _batch_spec(mesh)
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
    spec = _batch_spec(mesh)

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


def _check_sides_args(boundaries: Boundaries, feats) -> tuple[Array, Array, np.ndarray]:
    w, b = jnp.asarray(boundaries.w), jnp.asarray(boundaries.b)
    if w.ndim < 2 or b.shape != w.shape[:1] or w.shape[0] == 0:
        raise ValueError(f"boundaries: expected w [Q >= 1, *feat_shape] and b [Q], got "
                         f"{w.shape} and {b.shape}")
    feats = np.asarray(feats)
    if feats.ndim < 2 or feats.shape[0] == 0:
        raise ValueError(f"feats: expected [N >= 1, *feat_shape], got shape {feats.shape}")
    if feats.shape[1:] != w.shape[1:]:
        raise ValueError(f"feats: feature shape {feats.shape[1:]} does not match the "
                         f"boundaries' {w.shape[1:]}")
    if not np.issubdtype(feats.dtype, np.floating) or not np.all(np.isfinite(feats)):
        raise ValueError("feats: expected finite floating feature maps")
    return w.reshape(w.shape[0], -1), b, feats.reshape(feats.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("mesh", "packed"))
def _sides(w_flat: Array, b: Array, feats_flat: Array, mesh: Mesh, packed: bool) -> Array:
    spec = _batch_spec(mesh)

    def local(w_flat, b, feats_flat):
        # Same rule and precision as ri_jax.boundaries.sides: ⟨W_h, ψ_n⟩ + b_h > 0.
        side = (jnp.dot(w_flat, feats_flat.T, precision=_HIGHEST) + b[:, None]) > 0
        return pack_bits(side) if packed else side

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), spec),
                         out_specs=P(None, *spec))(w_flat, b, feats_flat)


def sharded_sides(boundaries: Boundaries, feats, mesh: Mesh) -> np.ndarray:
    """``ri_jax.boundaries.sides`` with the feature maps split over the devices.

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])``.
      feats: [N, *feat_shape] host array.
      mesh: the device mesh.

    Returns:
      bool[Q, N] host array: ⟨W_h, ψ_n⟩ + b_h > 0.
    """
    w_flat, b, flat = _check_sides_args(boundaries, feats)
    n = flat.shape[0]
    out = _sides(replicate(w_flat, mesh), replicate(b, mesh), shard_batch(flat, mesh), mesh,
                 packed=False)
    return to_host(out)[:, :n]


def sharded_sides_packed(boundaries: Boundaries, feats, mesh: Mesh) -> np.ndarray:
    """``ri_jax.boundaries.sides_packed`` with the feature maps split over the devices.

    Each device packs whole words (its share is padded to a multiple of 32 maps), so
    the per-device words concatenate into the global packing; padding bits are cleared.

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])``.
      feats: [N, *feat_shape] host array.
      mesh: the device mesh.

    Returns:
      uint32[Q, ⌈N/32⌉] host array.
    """
    w_flat, b, flat = _check_sides_args(boundaries, feats)
    n = flat.shape[0]
    size = padded_size(n, mesh, granule=WORD_BITS)
    out = _sides(replicate(w_flat, mesh), replicate(b, mesh),
                 shard_batch(flat, mesh, size=size), mesh, packed=True)
    words = num_words(n)
    return to_host(out)[:, :words] & np.asarray(valid_words(n, words))


def default_device_lanes(mesh: Mesh) -> int | None:
    """Inputs in flight per device: ``solver.DEFAULT_LANES`` on CPUs, the whole share on
    accelerators.

    On a CPU a few dozen lanes, each refilled with the next input as soon as its own
    stops (``solver.solve_lanes``), keep their words in cache and amortise XLA's
    per-operation cost (lane sweep in benchmarks/RESULTS.md). GPUs and TPUs want the
    whole batch in parallel.
    """
    return DEFAULT_LANES if all(d.platform == "cpu" for d in mesh.devices.flat) else None


def local_solve_batch(side_words: Array, num_refs, x_sides: Array, positive_words: Array,
                      delta: Array | None = None, *, lanes: int | None = None
                      ) -> GreedyResult:
    """``ri_jax.solver.solve_batch`` as a traceable function (no host-side checks).

    Args:
      side_words: uint32[Q, W] packed sides of the references.
      num_refs: N (may be traced).
      x_sides: bool[B, Q].
      positive_words: uint32[B, W].
      delta: int32[B] or None for each input's τ.
      lanes: inputs in flight (``solver.solve_lanes``'s lanes); None puts the whole
        batch in flight at once.

    Returns:
      ``GreedyResult`` with a leading batch axis B.
    """
    positive, negative = jax.vmap(class_sets, (0, None))(positive_words, num_refs)
    in_flight = x_sides.shape[0] if lanes is None else int(lanes)
    return solve_lanes(side_words, x_sides, positive, negative, delta, lanes=in_flight)


@functools.partial(jax.jit, static_argnames=("mesh", "lanes"))
def _solve(side_words, num_refs, x_sides, positive_words, delta, mesh: Mesh,
           lanes: int | None) -> GreedyResult:
    spec = _batch_spec(mesh)
    local = functools.partial(local_solve_batch, lanes=lanes)
    args = (side_words, num_refs, x_sides, positive_words, delta)
    specs = (P(), P(), spec, spec, None if delta is None else spec)
    # Each device runs its own while loops to completion: no cross-device sync per step.
    # check_vma=False: the solver's loop carries start as constants (not marked as varying
    # over the mesh axis); every value is per-device anyway.
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec,
                         check_vma=False)(*args)


def sharded_solve_batch(side_words, num_refs: int, x_sides, positive_words, delta=None, *,
                        mesh: Mesh, lanes: int | None | str = "auto") -> GreedyResult:
    """``ri_jax.solver.solve_batch`` with the inputs split over the devices.

    The batch is padded to a multiple of the device count; padded inputs are solved
    and dropped.

    Args:
      side_words: uint32[Q, W] packed sides of the N references (replicated).
      num_refs: N.
      x_sides: bool[B, Q], each input's side of each boundary.
      positive_words: uint32[B, W], packed references predicted as each input's class.
      delta: int[B] bounds ≥ 0, or None for each input's τ.
      mesh: the device mesh.
      lanes: inputs each device solves together (see ``local_solve_batch``);
        "auto" is ``default_device_lanes(mesh)``, capped on CPUs by ``solver.default_lanes``.

    Returns:
      ``GreedyResult`` of host arrays with a leading batch axis B.
    """
    side_words = np.asarray(side_words)
    x_sides = np.asarray(x_sides)
    positive_words = np.asarray(positive_words)
    q, w, b = check_batch_args(side_words, num_refs, x_sides, positive_words)
    delta = _shard_delta(delta, b, mesh)
    lanes = _resolve_lanes(lanes, mesh, q, w)
    result = _solve(replicate(side_words, mesh), replicate(np.int32(num_refs), mesh),
                    shard_batch(x_sides, mesh), shard_batch(positive_words, mesh), delta, mesh,
                    lanes=lanes)
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
    """``lanes`` resolved: "auto" is ``default_device_lanes``, capped by ``default_lanes``."""
    if lanes == "auto":
        lanes = default_device_lanes(mesh)
        return None if lanes is None else min(lanes, default_lanes(q, w))
    if lanes is not None and (not isinstance(lanes, (int, np.integer)) or lanes < 1):
        raise ValueError(f"lanes: expected a positive int, None or 'auto', got {lanes!r}")
    return lanes


@functools.partial(jax.jit, static_argnames=("num_classes", "mesh", "lanes"))
def _solve_classes(side_words, x_sides, ref_classes, x_classes, delta, num_classes: int,
                   mesh: Mesh, lanes: int | None) -> GreedyResult:
    blocks = class_blocks(ref_classes, num_classes=num_classes)
    blocked = to_blocks(side_words, blocks)
    spec = _batch_spec(mesh)

    def local(side_words, blocked, blocks, x_sides, x_classes, delta):
        in_flight = x_sides.shape[0] if lanes is None else lanes
        return solve_blocks(side_words, blocked, blocks, x_sides, x_classes, delta,
                            lanes=in_flight)

    specs = (P(), P(), P(), spec, spec, None if delta is None else spec)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)(
        side_words, blocked, blocks, x_sides, x_classes, delta)


def sharded_solve_classes(side_words, x_sides, ref_classes, x_classes, delta=None, *,
                          num_classes: int, mesh: Mesh, lanes: int | None | str = "auto",
                          check: bool = True) -> GreedyResult:
    """``ri_jax.solver.solve_classes`` with the inputs split over the devices.

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
      lanes: inputs in flight per device, as in ``sharded_solve_batch``.
      check: validate the arrays first, as ``solver.solve_classes`` does (the bounds δ
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
    result = _solve_classes(replicate(side_words, mesh), shard_batch(x_sides, mesh),
                            replicate(ref_classes.astype(np.int32), mesh),
                            shard_batch(x_classes.astype(np.int32), mesh), delta, num_classes,
                            mesh, lanes)
    return GreedyResult(*(to_host(field)[:b] for field in result))
