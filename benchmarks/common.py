"""Plumbing shared by the benchmark scripts: machine description, timing, JSON, tables.

Every benchmark writes one JSON record ``{"benchmark", "command", "date", "code",
"machine", "load_before", "load_after", "config", "rows", ...}``; ``report.py``
turns the records into RESULTS.md. Timings are wall-clock seconds of calls that
block until their results are ready (``jax.block_until_ready``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.boundaries import sample_boundaries, sample_indices, side_bits
from ri_jax.checkpoint import json_default
from ri_jax.files import atomic_write_text
from ri_jax.provenance import code_version
from ri_jax.bits import pack_bits

DEFAULT_OUT = Path(__file__).parent / "results"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help``: the benchmark's docstring as written, and every option's default."""


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, JAX devices and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    devices = jax.devices()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in devices],
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line for tables and RESULTS.md."""
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    devices = ", ".join(sorted(set(m["devices"])))
    return (f"{m['cpu']} ({m['cpus_usable']} usable cores{mem}); JAX {m['jax']} on "
            f"{m['backend']} ×{m['device_count']} ({devices})")


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages (other jobs share the machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def block(x):
    """Waits for every array in a pytree and returns it."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """Wall-clock and CPU seconds of ``fn()`` (which must block on its results).

    CPU time (all threads of this process) is reported beside wall time because the
    benchmark machine is shared: other jobs stretch wall time but barely CPU time.

    Returns:
      ``{"best", "median", "cpu_best", "runs"}`` over the timed runs, after ``warmup``
      untimed runs (compilation happens there).
    """
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"best": min(times), "median": float(np.median(times)), "cpu_best": min(cpu),
            "runs": repeat}


def record(benchmark: str, config: dict[str, Any]) -> dict[str, Any]:
    """A fresh JSON record with the command line, date, machine and load at the start."""
    command = "python -m benchmarks." + Path(sys.argv[0]).stem
    if sys.argv[1:]:
        command += " " + shlex.join(sys.argv[1:])
    return {
        "benchmark": benchmark,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "machine": machine_info(),
        "load_before": load_average(),
        "config": config,
        "rows": [],
        "notes": [],
    }


def finish(rec: dict[str, Any], out_dir: str | Path, name: str | None = None) -> Path:
    """Stamps the end load and writes ``<out_dir>/<name>.json``."""
    rec["load_after"] = load_average()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name or rec['benchmark']}.json"
    atomic_write_text(path, json.dumps(rec, indent=2, default=json_default) + "\n")
    print(f"wrote {path}")
    return path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``rows`` restricted to ``columns``."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


class SolverProblem(NamedTuple):
    """One batch of Algorithm 1 problems sharing a reference set.

    Attributes:
      sides: bool[Q, N], side of every reference for every boundary.
      side_words: uint32[Q, ⌈N/32⌉], the same packed.
      x_sides: bool[B, Q], each input's side of every boundary.
      ref_preds: int32[N], predicted classes of the references.
      x_preds: int32[B], predicted classes of the inputs.
    """

    sides: np.ndarray
    side_words: jax.Array
    x_sides: np.ndarray
    ref_preds: np.ndarray
    x_preds: np.ndarray


def synthetic_problem(num_refs: int, num_boundaries: int, batch: int, *, key: jax.Array,
                      dim: int = 64, hidden: int = 128) -> SolverProblem:
    """Algorithm 1 problems with the geometry of real ones, cheap enough for |R| = 100k.

    A random two-class ReLU network G on Gaussian "feature maps" of ``dim`` values plays
    the CNN head: its output bias is shifted so the references split about evenly, Q
    boundaries are sampled from it with Eq. 2 (``ri_jax.boundaries``), and the sides of
    the references and of ``batch`` fresh inputs are taken against them. So the side
    bits have the correlations of real piecewise-linear boundaries, not coin flips.

    Args:
      num_refs: |R|.
      num_boundaries: |Q| ≤ |R|.
      batch: number of inputs B.
      key: PRNG key.
      dim: size of the synthetic feature maps.
      hidden: width of the hidden layer of G.

    Returns:
      ``SolverProblem``.
    """
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    w1 = jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim)
    b1 = 0.1 * jax.random.normal(k2, (hidden,))
    w2 = jax.random.normal(k3, (hidden, 2)) / np.sqrt(hidden)
    refs = jax.random.normal(k4, (num_refs, dim))
    inputs = jax.random.normal(k5, (batch, dim))

    def margin_free_head(t):
        return jax.nn.relu(t @ w1 + b1) @ w2

    logits = margin_free_head(refs)
    shift = jnp.median(logits[:, 1] - logits[:, 0]) / 2
    b2 = jnp.stack([shift, -shift])

    def head(t):
        return margin_free_head(t) + b2

    chosen = sample_indices(num_refs, num_boundaries, key=jax.random.fold_in(key, 1))
    bounds = sample_boundaries(head, refs[chosen], piecewise_linear=True)
    ref_sides = side_bits(bounds, refs, packed=False)
    return SolverProblem(
        sides=np.asarray(ref_sides),
        side_words=block(pack_bits(ref_sides)),
        x_sides=np.asarray(side_bits(bounds, inputs, packed=False).T),
        ref_preds=np.asarray(jnp.argmax(head(refs), axis=1), np.int32),
        x_preds=np.asarray(jnp.argmax(head(inputs), axis=1), np.int32))


def random_params(fns, *, seed: int = 0) -> Any:
    """He-normal weights and zero biases for ``fns`` without compiling its ``init``.

    Timings hardly depend on the weights, and tracing ``init`` only for its shapes
    (``jax.eval_shape``) avoids minutes of compilation for the wider models.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(fns.init, jax.random.key(seed))

    def fill(s):
        if len(s.shape) < 2:
            return jnp.zeros(s.shape, s.dtype)
        fan_in = int(np.prod(s.shape[:-1]))
        return jnp.asarray(rng.normal(size=s.shape) * np.sqrt(2.0 / fan_in), s.dtype)

    return jax.tree.map(fill, shapes)


class Model(NamedTuple):
    """A model to benchmark and where it came from.

    Attributes:
      fns, params, config: the VGG's pure functions, parameters and configuration.
      source: where it came from.
      interface: the same model as the ``ri_jax.model.Model`` the library's paths take.
    """

    fns: Any
    params: Any
    config: Any
    source: str
    interface: Any


def load_model(checkpoint: str | None, fallback) -> Model:
    """The checkpoint at ``checkpoint`` ("default" = embedded) if it exists, else ``fallback``.

    Args:
      checkpoint: a checkpoint folder, "default", or None for the fallback model.
      fallback: ``ModelConfig`` of a randomly initialised model used when there is no
        checkpoint (timings barely depend on weights).
    """
    from ri_jax.checkpoint import DEFAULT_CHECKPOINT, PARAMS_FILE, load_checkpoint
    from ri_jax.models.vgg import make_vgg, vgg_model

    path = DEFAULT_CHECKPOINT if checkpoint == "default" else checkpoint
    if path is not None and (Path(path) / PARAMS_FILE).is_file():
        params, config, _ = load_checkpoint(path)
        return Model(make_vgg(config), params, config, f"checkpoint {path}",
                     vgg_model(params, config, source=str(path)))
    fns = make_vgg(fallback)
    params = random_params(fns)
    source = (f"random init {fallback.arch} width {fallback.width:g} at "
              f"{fallback.image_size} px (no checkpoint at {path})")
    return Model(fns, params, fallback, source, vgg_model(params, fallback, source=source))
