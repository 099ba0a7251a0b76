"""Multi-process runs on ``jax.distributed``: one process per host, any number of hosts.

JAX's own multi-process runtime is the engine; nothing here schedules work. Every
process runs the same program on the same arguments. What each one does:

* **features**: process p computes ψ and logits of its contiguous, batch-aligned
  share of the images (``distributed_features``), then the shares are gathered
  (``process_allgather``), so every image is computed in exactly the batch, with
  exactly the padding, of a one-process ``compute_features`` call;
* **boundaries**: Q is drawn from the same key everywhere (threefry is
  platform-independent), the sample's ψ are on every process after the gather,
  process 0's Eq. 2 result is broadcast (``broadcast_one_to_all``) so all
  processes hold its exact bits even on hosts whose CPUs compile differently;
* **packed sides**: split into the same word-aligned chunks ``boundaries.side_bits``
  uses in one process, each process packs its chunks, the words are gathered;
* **solve**: ``solver.solve(mesh=...)`` over a mesh of every device of every
  process (integer arithmetic only, so any split gives the same answer);
* **per-input pools** (the authors' variant): each process runs its share of the
  interpreter's whole chunks of inputs (search, Eq. 2, sides, solve), gathered;
* **files**: only process 0 writes (``is_main_process``).

Hence a multi-process run computes every floating-point value with the same
program, shapes and operands as a one-process run: its results are bit for bit
the same (``tests/test_distributed.py`` checks the written JSON).
"""

from __future__ import annotations

import errno
import math
import os
import socket
import sys
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ri_jax.boundaries import (DEFAULT_NUM_BOUNDARIES, Boundaries, sample_boundaries,
                               sample_indices, side_bits)
from ri_jax.buckets import pad_rows
from ri_jax.data import ImageSet
from ri_jax.featurize import Features, compute_features
from ri_jax.interpreter import (InMemoryStore, ModelFns, ReferenceSet, RepresentativeInterpreter,
                                chunks_in_turn)
from ri_jax.model import Model
from ri_jax.sharding import make_mesh
from ri_jax.bits import WORD_BITS, num_words, valid_words

Array = jax.Array

# Environment variables read by ``initialize_from_env`` (the flags take precedence).
COORDINATOR_ENV = "RI_JAX_COORDINATOR"
NUM_PROCESSES_ENV = "RI_JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "RI_JAX_PROCESS_ID"
# ``--coordinator auto``: let JAX detect the cluster (SLURM, Open MPI, TPU pods, ...).
AUTO = "auto"
# Default --join-timeout (``default_join_timeout``): a loopback coordinator, every process
# on this machine; any other host, whose processes may start minutes apart.
LOOPBACK_JOIN_TIMEOUT_S = 20.0
REMOTE_JOIN_TIMEOUT_S = 300.0
# Seconds JAX's own join deadline (which aborts the process) comes after ours.
_JAX_TIMEOUT_MARGIN_S = 60
# Exit status of a process that could not join (the scripts' usage-error status).
USAGE_EXIT = 2
# Rows per ``boundaries.side_bits`` matmul, the chunk its one-process call uses.
SIDE_CHUNK = 1024


class LaunchConfig(NamedTuple):
    """How this process joins a run.

    Attributes:
      coordinator: "host:port" of process 0's coordination service, ``AUTO`` to let JAX
        detect the cluster, or None for a one-process run.
      num_processes: processes in the run (None with ``AUTO``).
      process_id: this process's rank in [0, num_processes) (None with ``AUTO``).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def check_launch(config: LaunchConfig) -> LaunchConfig:
    """Validates a ``LaunchConfig``; errors name the flag."""
    coordinator, n, rank = config
    if coordinator is None:
        if n not in (None, 1) or rank not in (None, 0):
            raise ValueError("--coordinator: required when --num-processes > 1 or "
                             "--process-id > 0")
        return LaunchConfig()
    if coordinator != AUTO:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator: expected host:port or '{AUTO}', got {coordinator!r}")
        if n is None or rank is None:
            raise ValueError("--num-processes and --process-id: both required with "
                             f"--coordinator {coordinator}")
    if n is not None and int(n) < 1:
        raise ValueError(f"--num-processes: must be >= 1, got {n}")
    if rank is not None and (n is None or not 0 <= int(rank) < int(n)):
        raise ValueError(f"--process-id: must be in [0, --num-processes), got {rank}")
    return LaunchConfig(coordinator, None if n is None else int(n),
                        None if rank is None else int(rank))


def initialize(config: LaunchConfig, *, timeout_s: float | None = None) -> bool:
    """Joins the run described by ``config`` (call before any other JAX work).

    A config without a coordinator is a one-process run and does nothing. On CPUs the
    collectives go over gloo (JAX's CPU implementation for multi-process runs). Process 0
    first checks that the coordinator's port is free (``check_port_free``). A process that
    cannot join within ``timeout_s`` prints why (``join_timeout_message``) and exits with
    status 2: JAX's own timeout aborts the process only after minutes, with a misleading
    message, and cannot be caught.

    Args:
      config: from ``initialize_from_args``/``initialize_from_env`` or built directly.
      timeout_s: seconds to wait for every process to join (``--join-timeout``; default
        ``default_join_timeout``).

    Returns:
      Whether ``jax.distributed`` was initialised.
    """
    config = check_launch(config)
    if config.coordinator is None:
        return False
    if jax.distributed.is_initialized():  # a second script in the same process
        return True
    timeout_s = default_join_timeout(config.coordinator) if timeout_s is None else timeout_s
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"--join-timeout: must be a number of seconds > 0, got {timeout_s!r}")
    if config.coordinator != AUTO and config.process_id == 0:
        check_port_free(config.coordinator)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's deadline comes after ours, so the watchdog's message is the one printed.
    jax_timeout = math.ceil(timeout_s) + _JAX_TIMEOUT_MARGIN_S
    watchdog = threading.Timer(timeout_s, _give_up, (config, timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        if config.coordinator == AUTO:
            jax.distributed.initialize(initialization_timeout=jax_timeout)
        else:
            jax.distributed.initialize(config.coordinator, config.num_processes,
                                       config.process_id, initialization_timeout=jax_timeout)
    finally:
        watchdog.cancel()
    return True


def default_join_timeout(coordinator: str | None) -> float:
    """Seconds to wait for every process by default: a loopback coordinator means every
    process runs on this machine and starts at once; a remote one may wait on a scheduler."""
    host = (coordinator or "").rpartition(":")[0].strip("[]")
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    return LOOPBACK_JOIN_TIMEOUT_S if loopback else REMOTE_JOIN_TIMEOUT_S


def check_port_free(coordinator: str) -> None:
    """Refuses a coordinator port that something on this host already listens on.

    JAX's coordination service binds ``[::]:port`` on process 0; on a port in use it
    crashes the process (a segmentation fault), so the port is tried first.

    Raises:
      ValueError: naming ``--coordinator`` and the port.
    """
    port = int(coordinator.rpartition(":")[2])
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host: try IPv4
            continue
        with probe:
            # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count, only
            # a socket bound or listening there now.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ValueError(
                        f"--coordinator: port {port} of {coordinator} is already in use on "
                        "this host (another run's coordinator, or another program); choose "
                        "a free port, or stop what holds it") from None
                continue  # e.g. the address family is unavailable: try the next one
            return


def join_timeout_message(config: LaunchConfig, timeout_s: float) -> str:
    """Why a process could not join: the coordinator's address and what is missing."""
    n, rank, address = config.num_processes, config.process_id, config.coordinator
    if address == AUTO:
        return (f"--join-timeout: could not join the run detected from the cluster environment "
                f"within {timeout_s:g} s (check that every process of the job started)")
    where = f"the coordinator {address}"
    if rank == 0:
        missing = (f"process{'es' if n > 2 else ''} {_rank_range(1, n - 1)} did not connect "
                   f"to {where} (not started, or cannot reach this host and port)")
    elif _listening(address):
        missing = (f"{where} answers, but not every one of the {n} processes joined (the "
                   "others are not started, or cannot reach it)")
    else:
        missing = (f"nothing is listening at {where} (process 0 is not started, or runs on "
                   "another host or port)")
    return (f"--join-timeout: process {rank} of {n} could not join the run within "
            f"{timeout_s:g} s: {missing}")


def _rank_range(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}..{last}"


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _give_up(config: LaunchConfig, timeout_s: float) -> None:
    """The watchdog: the main thread is blocked inside JAX, so print and exit from here."""
    prog = os.path.basename(sys.argv[0]) or "ri_jax"
    print(f"{prog}: error: {join_timeout_message(config, timeout_s)}", file=sys.stderr,
          flush=True)
    os._exit(USAGE_EXIT)


def config_from_env(environ: dict | None = None) -> LaunchConfig:
    """``LaunchConfig`` from ``RI_JAX_COORDINATOR``, ``RI_JAX_NUM_PROCESSES``, ``RI_JAX_PROCESS_ID``."""
    environ = os.environ if environ is None else environ

    def number(name):
        text = environ.get(name)
        if text is None or text == "":
            return None
        if not text.strip().isdigit():
            raise ValueError(f"{name}: expected a non-negative integer, got {text!r}")
        return int(text)

    return LaunchConfig(environ.get(COORDINATOR_ENV) or None, number(NUM_PROCESSES_ENV),
                        number(PROCESS_ID_ENV))


def initialize_from_env(environ: dict | None = None, **kwargs) -> bool:
    """``initialize(config_from_env(environ))``."""
    return initialize(config_from_env(environ), **kwargs)


def initialize_from_args(args: Any, **kwargs) -> bool:
    """``initialize`` from ``args.coordinator``, ``args.num_processes``, ``args.process_id``
    (argparse attributes; each one missing or None falls back to the environment) and
    ``args.join_timeout`` (missing or None: ``default_join_timeout``)."""
    env = config_from_env()
    config = LaunchConfig(*(getattr(args, name, None) if getattr(args, name, None) is not None
                            else default for name, default in zip(LaunchConfig._fields, env)))
    kwargs.setdefault("timeout_s", getattr(args, "join_timeout", None))
    return initialize(config, **kwargs)


def is_main_process() -> bool:
    """Whether this process writes the files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (no-op in a one-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def share_range(n: int, granule: int = 1, *, process_index: int | None = None,
                process_count: int | None = None) -> tuple[int, int]:
    """This process's contiguous share [start, stop) of ``n`` items, in whole granules.

    Granules are split as evenly as possible, lower ranks taking the extra ones; a share
    may be empty when there are fewer granules than processes.

    Args:
      n: items.
      granule: share boundaries fall on multiples of it (e.g. the batch size).
      process_index, process_count: default this process and the run's count.

    Returns:
      (start, stop), 0 ≤ start ≤ stop ≤ n.
    """
    rank = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    granules = -(-int(n) // int(granule))
    base, extra = divmod(granules, count)
    first = rank * base + min(rank, extra)
    last = first + base + (rank < extra)
    return min(first * granule, n), min(last * granule, n)


def gather_shares(local: np.ndarray, n: int, granule: int = 1) -> np.ndarray:
    """Concatenates every process's ``share_range`` rows into the global [n, ...] array.

    Args:
      local: [stop - start, ...] this process's rows (same trailing shape and dtype on
        every process).
      n, granule: as given to ``share_range``.

    Returns:
      [n, ...] host array, identical on every process.
    """
    local = np.asarray(local)
    count = jax.process_count()
    if count == 1:
        return local
    ranges = [share_range(n, granule, process_index=p, process_count=count) for p in range(count)]
    rows = max(stop - start for start, stop in ranges)
    padded = np.zeros((rows,) + local.shape[1:], local.dtype)
    padded[:len(local)] = local
    every = np.asarray(multihost_utils.process_allgather(padded, tiled=False))
    return np.concatenate([every[p, :stop - start] for p, (start, stop) in enumerate(ranges)])


def distributed_features(model: Model, images: ImageSet,
                         indices: np.ndarray | None = None, *, batch_size: int = 128,
                         cache_dir=None, progress: bool = True,
                         desc: str = "features") -> Features:
    """``featurize.compute_features`` with each process computing its share, then gathered.

    Shares are whole batches, so every image is computed in the same batch (same
    neighbours, same zero padding) as in a one-process call: the result is bit for bit
    ``compute_features(model, images, indices, batch_size=batch_size)``. Each
    process caches its own share under ``cache_dir``.

    Returns:
      ``Features`` of every requested image, on every process.
    """
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    if jax.process_count() == 1:
        return compute_features(model, images, idx, batch_size=batch_size,
                                cache_dir=cache_dir, progress=progress, desc=desc)
    start, stop = share_range(len(idx), batch_size)
    if stop > start:
        local = compute_features(model, images, idx[start:stop], batch_size=batch_size,
                                 cache_dir=cache_dir, progress=progress and is_main_process(),
                                 desc=desc)
        psi, logits = local.psi, local.logits
    else:  # fewer batches than processes: contribute nothing, with the right shapes
        size = images.image_size
        shapes = jax.eval_shape(lambda raw: (lambda f: (f, model.head(f)))(
            model.features(model.normalize(raw))),
            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        psi, logits = (np.zeros((0,) + s.shape[1:], np.float32) for s in shapes)
    return Features(gather_shares(psi, len(idx), batch_size),
                    gather_shares(logits, len(idx), batch_size),
                    images.labels[idx].astype(np.int32), idx)


def side_chunk_size(num_refs: int) -> int:
    """Width of ``boundaries.side_bits``'s matmuls for ``num_refs`` feature maps (its own rule)."""
    return min(-(-SIDE_CHUNK // WORD_BITS), -(-int(num_refs) // WORD_BITS)) * WORD_BITS


def _chunk_side_bits(boundaries: Boundaries, feats: np.ndarray, chunk: int) -> np.ndarray:
    """Packed sides of consecutive feature maps, with the matmul shape of a longer call.

    ``feats`` is a run of whole ``chunk``-sized pieces of a longer reference set (the
    last one may be short): each piece is zero-padded to ``chunk`` and goes through one
    ``side_bits(..., chunk_size=chunk)`` matmul, exactly as inside the longer call, so the
    bits are those of ``side_bits(boundaries, longer)`` for these references.

    Args:
      boundaries: ``Boundaries(w [Q, *feat_shape], b [Q])``.
      feats: [M, *feat_shape] feature maps.
      chunk: the longer call's chunk width, a multiple of 32.

    Returns:
      uint32[Q, ⌈M/32⌉], padding bits zero.
    """
    m = feats.shape[0]
    padded = -(-m // chunk) * chunk
    feats = np.pad(np.asarray(feats), [(0, padded - m)] + [(0, 0)] * (feats.ndim - 1))
    words = side_bits(boundaries, feats, chunk_size=chunk)[:, :num_words(m)]
    return np.asarray(words & valid_words(m, num_words(m)))


def shared_boundaries(head_fn: Callable[[Array], Array], feats: np.ndarray, *, key: Array,
                      num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
                      piecewise_linear: bool | None = None) -> tuple[Array, Boundaries]:
    """Q drawn with ``key`` and its Eq. 2 boundaries, process 0's bits on every process.

    Args:
      head_fn: G.
      feats: [N, *feat_shape] every reference's ψ (the same on every process).
      key, num_boundaries, piecewise_linear: as in ``RepresentativeInterpreter``.

    Returns:
      (int32[Q] chosen references, ``Boundaries``).
    """
    chosen = sample_indices(feats.shape[0], num_boundaries, key=key)
    bounds = sample_boundaries(head_fn, jnp.asarray(feats)[chosen],
                               piecewise_linear=piecewise_linear)
    return chosen, from_main_process(bounds)


def from_main_process(tree: Any) -> Any:
    """Process 0's value of a pytree of arrays, on every process (identity in one process).

    Values every process computes alike (the same program on the same operands) could
    still differ in their last bits on hosts whose CPUs compile differently; broadcasting
    makes them exactly process 0's, which is what a one-process run computes.
    """
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(jnp.asarray, multihost_utils.broadcast_one_to_all(jax.device_get(tree)))


def _distributed_side_bits(boundaries: Boundaries, feats: np.ndarray) -> np.ndarray:
    """``boundaries.side_bits(boundaries, feats)``, its chunks split over the processes.

    Returns:
      uint32[Q, ⌈N/32⌉], identical on every process and to the one-process call.
    """
    n = feats.shape[0]
    chunk = side_chunk_size(n)
    start, stop = share_range(n, chunk)
    q = boundaries.w.shape[0]
    local = (_chunk_side_bits(boundaries, feats[start:stop], chunk) if stop > start
             else np.zeros((q, 0), np.uint32))
    # Shares start on multiples of 32 references, so their words concatenate.
    return gather_shares(local.T, -(-n // WORD_BITS), chunk // WORD_BITS).T


def sharded_reference_features(fns: ModelFns, images: Array, progress: bool) -> Array:
    """ψ of this process's share of whole batches of reference images, gathered.

    Args:
      fns: the model.
      images: [N, S, S, 3] the same on every process.
      progress: show a bar (process 0 only).

    Returns:
      [N, h, w, c] on every process, every batch padded as in a one-process run.
    """
    n = images.shape[0]
    size = min(fns.batch_size, n)
    start, stop = share_range(n, size)
    parts = []
    for i in tqdm(range(start, stop, size), desc="reference features", unit="batch",
                  disable=not (progress and is_main_process())):
        batch = pad_rows(images[i:i + size], size)  # the last batch padded as in one process
        parts.append(np.asarray(fns.features(batch))[:min(size, stop - i)])
    if not parts:
        shape = jax.eval_shape(fns.features, jax.ShapeDtypeStruct(
            (size,) + images.shape[1:], images.dtype)).shape
        parts = [np.zeros((0,) + shape[1:], np.float32)]
    return jnp.asarray(gather_shares(np.concatenate(parts), n, size))


def sharded_sample(fns: ModelFns, feats: Array, preds: Array, *, key: Array,
                   num_boundaries: int, piecewise_linear: bool | None) -> ReferenceSet:
    """``interpreter.shared_sample`` with process 0's boundaries (``shared_boundaries``) and
    the packed sides split between processes (``_distributed_side_bits``)."""
    chosen, bounds = shared_boundaries(fns.raw_head, feats, key=key,
                                       num_boundaries=num_boundaries,
                                       piecewise_linear=piecewise_linear)
    words = _distributed_side_bits(bounds, np.asarray(feats))
    return ReferenceSet(feats=feats, preds=preds, boundary_refs=chosen, boundaries=bounds,
                        side_words=jnp.asarray(words))


class ShardedStore:
    """A reference store for a multi-process run: every process holds every ψ, the work is
    shared out. Same methods, same answers as ``interpreter.InMemoryStore``.

    Reference feature maps are computed in per-process shares of whole batches and
    gathered (or given, ``is_features``, the same on every process). With the shared
    sample the boundaries come from ``shared_boundaries``, the packed sides from
    ``_distributed_side_bits``, and every batched solve is sharded over ``mesh``. With
    per-input pools (the authors' variant) each process runs its share of whole chunks of
    inputs, exactly the one-process chunks (search, Eq. 2, sides, solve, Eq. 6), and the
    answers are gathered. Explanations, heat maps and regions run on every process (the
    ``InMemoryStore`` it holds). Every value is bit for bit what one process computes (on
    hosts that compile alike: a pool chunk's values are those of the process that ran it).

    Args:
      local: the ``InMemoryStore`` of the gathered references.
      mesh: devices for the solve of the shared sample.
    """

    def __init__(self, local: InMemoryStore, mesh):
        self.local = local
        self.mesh = mesh
        self.reference_set = local.reference_set
        self.num_boundaries = local.num_boundaries
        self.image_shape = local.image_shape
        self.feature_spec = local.feature_spec

    @classmethod
    def builder(cls, mesh=None):
        """The ``store`` argument of ``RepresentativeInterpreter`` for a multi-process run.

        Args:
          mesh: devices for the solve of the shared sample (default every device of every
            process).
        """
        mesh = make_mesh() if mesh is None else mesh

        def build(fns: ModelFns, references: Array, **options) -> ShardedStore:
            local = InMemoryStore.build(fns, references,
                                        reference_features=sharded_reference_features,
                                        sample=sharded_sample, **options)
            return cls(local, mesh)

        return build

    def features(self, indices: Array) -> Array:
        return self.local.features(indices)

    def pool_floats_per_input(self) -> int:
        return self.local.pool_floats_per_input()

    def pool_sides(self, bounds: Boundaries):
        return self.local.pool_sides(bounds)

    def pool_distances(self, bounds: Boundaries, selected: Array, dots_x: Array,
                       dots: Array) -> Array:
        return self.local.pool_distances(bounds, selected, dots_x, dots)

    def map_chunks(self, run, b: int, chunk: int, progress: bool):
        """``chunks_in_turn`` with each process running its share of the chunks, gathered.

        Args:
          run: one chunk's pytree [chunk, ...] from the index of its first input.
          b, chunk, progress: inputs, inputs per chunk, a bar (process 0 only).

        Returns:
          The pytree with B rows, on every process.
        """
        if jax.process_count() == 1:
            return chunks_in_turn(run, b, chunk, progress)
        start, stop = share_range(b, chunk)
        # A process without a chunk still runs the first one, for the shapes it contributes
        # zero rows of (only when there are fewer chunks than processes).
        firsts = range(start, stop, chunk) if stop > start else [0]
        parts = [run(i) for i in tqdm(firsts, desc="boundary pools", unit="chunk",
                                      disable=not (progress and is_main_process()))]
        local = jax.tree.map(lambda *xs: np.concatenate(xs)[:stop - start], *parts)
        return jax.tree.map(lambda a: jnp.asarray(gather_shares(a, b, chunk)), local)

    def interpretation(self, *args, **kwargs):
        """``InMemoryStore.interpretation``, on every process."""
        return self.local.interpretation(*args, **kwargs)


def sharded_interpreter(*args, mesh=None, **kwargs) -> RepresentativeInterpreter:
    """``RepresentativeInterpreter`` over a ``ShardedStore`` (arguments as its own)."""
    return RepresentativeInterpreter(*args, store=ShardedStore.builder(mesh), **kwargs)


def representative_interpreter(*args, **kwargs) -> RepresentativeInterpreter:
    """``sharded_interpreter`` in a multi-process run, ``RepresentativeInterpreter``
    otherwise (same arguments)."""
    if jax.process_count() > 1:
        return sharded_interpreter(*args, **kwargs)
    kwargs.pop("mesh", None)
    return RepresentativeInterpreter(*args, **kwargs)
