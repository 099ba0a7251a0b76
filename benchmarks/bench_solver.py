"""Algorithm 1: ri_jax's batched packed solver against the NumPy peer, and its scaling.

Part 1 (comparison): a batch of inputs at one (|Q|, |R|), solved by
``ri_jax.solver._solve_batch`` (end to end: packing the side matrix and the
class masks, building every match matrix, solving) and by
``benchmarks.peers.greedy_peer_batch`` (one input after another). Both must
select the same boundaries in the same order before anything is timed.

Part 2 (scaling): ``_solve_batch`` over a grid of |Q| × |R| × batch, with time,
memory and the fitted growth exponents of time in |Q|, |R| and the batch.

Problems come from ``benchmarks.common.synthetic_problem`` (real Eq. 2
boundaries of a random two-class ReLU head), so the side bits have realistic
structure at any size.

    python -m benchmarks.bench_solver                # comparison + default grid
    python -m benchmarks.bench_solver --full         # also the largest grid cells
    python -m benchmarks.bench_solver --no-scaling   # comparison only

On a CPU the script asks XLA for one host device per usable core (unless
``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count``), so the
``_sharded_solve_batch`` rows split the batch over all cores.

Times are wall-clock and CPU seconds (the machine may be shared; see the load in
the JSON). The scaling table uses the best of the timed runs.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import time

# One XLA host device per usable core (before JAX starts), so the sharded rows split the
# batch over every core; an XLA_FLAGS set by the caller wins.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={len(os.sched_getaffinity(0))}").strip()

import jax  # noqa: E402 (after XLA_FLAGS)
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (DEFAULT_OUT, block, describe_machine, finish, format_table,
                               record, synthetic_problem, time_call)
from benchmarks.peers import greedy_peer_batch
from ri_jax import solver
from ri_jax.sharding import make_mesh
from ri_jax.solver import (_default_device_lanes, _local_solve_batch, _sharded_solve_batch,
                           _sharded_solve_classes, _solve_batch, _solve_classes, positive_words)
from ri_jax.bits import num_words, pack_bits

GRID_Q = (10, 50, 100, 200)
GRID_R = (1_000, 5_000, 20_000, 100_000)
GRID_B = (1, 100, 1_000)
# Default sweep skips cells whose per-input packed coverage (B·Q·W words, held about
# three times over by the vmapped loop) exceeds this; --full runs them.
DEFAULT_MAX_WORDS = 100_000_000


def ours_vmapped(problem, num_refs: int):
    """``ri_jax.solver._solve_batch`` from the unpacked side matrix to the selections."""
    side_words = pack_bits(jnp.asarray(problem.sides))
    positive = positive_words(problem.ref_preds, problem.x_preds, num_classes=2)
    return block(_solve_batch(side_words, num_refs, jnp.asarray(problem.x_sides), positive))


def ours_classes(problem):
    """``ri_jax.solver._solve_classes`` (what the interpreter runs) from the same start."""
    side_words = pack_bits(jnp.asarray(problem.sides))
    return block(_solve_classes(side_words, jnp.asarray(problem.x_sides), problem.ref_preds,
                               problem.x_preds, num_classes=2))


def ours_sharded_classes(problem, mesh):
    """``ri_jax.solver._sharded_solve_classes`` over every device, same start and end."""
    side_words = pack_bits(jnp.asarray(problem.sides))
    return _sharded_solve_classes(side_words, problem.x_sides, problem.ref_preds,
                                 problem.x_preds, num_classes=2, mesh=mesh)


def ours_sharded(problem, num_refs: int, mesh, lanes="auto"):
    """``ri_jax.solver._sharded_solve_batch`` over every device, same start and end."""
    side_words = pack_bits(jnp.asarray(problem.sides))
    positive = positive_words(problem.ref_preds, problem.x_preds, num_classes=2)
    return _sharded_solve_batch(side_words, num_refs, problem.x_sides, positive, mesh=mesh,
                               lanes=lanes)


def check_same(peer, ours, n: int, label: str) -> None:
    for name in ("order", "num_selected", "num_covered_positive", "num_covered_negative", "tau"):
        np.testing.assert_array_equal(getattr(peer, name), np.asarray(getattr(ours, name))[:n],
                                      err_msg=f"peer and {label} disagree on {name}")


def compare(args, rec) -> None:
    q, r, b = args.boundaries, args.refs, args.batch
    mesh = make_mesh()
    problem = synthetic_problem(r, q, b, key=jax.random.key(args.seed))
    peer_n = b if args.peer_inputs is None else min(args.peer_inputs, b)
    start, start_cpu = time.perf_counter(), time.process_time()
    peer = greedy_peer_batch(problem.sides, problem.x_sides[:peer_n], problem.ref_preds,
                             problem.x_preds[:peer_n])
    # The peer is deterministic and slow: its one run is its figure.
    peer_wall = (time.perf_counter() - start) * b / peer_n
    peer_cpu = (time.process_time() - start_cpu) * b / peer_n
    solvers = {
        "ri_jax.solver._solve_batch (one device)": lambda: ours_vmapped(problem, r),
        "ri_jax.solver._solve_classes (one device, references grouped by class)":
            lambda: ours_classes(problem),
        f"ri_jax.solver._sharded_solve_batch ({mesh.size} device(s), "
        f"{_default_device_lanes(mesh)} lanes each)": lambda: ours_sharded(problem, r, mesh),
        f"ri_jax.solver._sharded_solve_classes ({mesh.size} device(s), "
        f"{_default_device_lanes(mesh)} lanes each)": lambda: ours_sharded_classes(problem, mesh),
    }
    rows = []
    for label, fn in solvers.items():
        check_same(peer, fn(), peer_n, label)
        t = time_call(fn, repeat=args.repeat, warmup=0)
        rows.append({"solver": label, "wall_s": t["median"], "cpu_s": t["cpu_best"],
                     "speedup_wall": peer_wall / t["median"], "speedup_cpu": peer_cpu / t["cpu_best"]})
    rows.append({"solver": "peer: NumPy, one input at a time (benchmarks.peers)",
                 "wall_s": peer_wall, "cpu_s": peer_cpu, "speedup_wall": 1.0, "speedup_cpu": 1.0})
    selected = np.asarray(ours_vmapped(problem, r).num_selected)
    rec["comparison"] = {"Q": q, "R": r, "batch": b, "peer_inputs": peer_n, "rows": rows,
                         "identical_selections": True,
                         "iterations_mean": float(selected.mean()),
                         "iterations_max": int(selected.max()),
                         "ref_class_balance": float(np.mean(problem.ref_preds))}
    note = ("peer timed on all inputs" if peer_n == b else
            f"peer timed on {peer_n} inputs, per-input time × {b} (linear extrapolation)")
    rec["notes"].append(
        f"comparison at Q={q}, R={r}, batch={b}: selections asserted identical (order, counts, "
        f"τ) on {peer_n} inputs before timing; {note}; ours = median wall / best CPU of "
        f"{args.repeat} runs after a compile run, each from the unpacked side matrix "
        "(packing, class masks or class blocks, match matrices and solve included)")
    print(format_table(rows, ["solver", "wall_s", "cpu_s", "speedup_wall", "speedup_cpu"]))
    print(f"Q={q} R={r} batch={b}: identical selections on {peer_n} inputs; {note}; "
          f"greedy steps mean {selected.mean():.1f}, max {selected.max()}")

    lanes_rows = []
    for lanes in args.lanes:
        size = None if lanes == 0 else lanes
        t = time_call(lambda: ours_sharded(problem, r, mesh, size), repeat=args.repeat)
        lanes_rows.append({"lanes": "all (vmap)" if size is None else size,
                           "wall_s": t["median"], "cpu_s": t["cpu_best"]})
    rec["lanes_sweep"] = lanes_rows
    print(format_table(lanes_rows, ["lanes", "wall_s", "cpu_s"]))


def xla_memory(lowered) -> int:
    """Bytes XLA reserves for a compiled computation (arguments + outputs + temporaries)."""
    m = lowered.compile().memory_analysis()
    if m is None:
        return -1
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def fit_exponents(rows, key: str) -> dict[str, float]:
    """Least-squares fit log t = c + Σ_axis e_axis log axis, over the axes that vary."""
    axes = [a for a in ("Q", "R", "batch") if len({r[a] for r in rows}) > 1]
    x = np.array([[1.0] + [np.log(r[a]) for a in axes] for r in rows])
    y = np.log([r[key] for r in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return {a: float(c) for a, c in zip(axes, coef[1:])}


SCALING_COLUMNS = ["Q", "R", "batch", "vmap_s", "sharded_s", "steps_max", "packed_MiB",
                   "xla_vmap_MiB", "xla_sharded_MiB", "ns_per_word_step"]


def scaling(args, rec) -> None:
    mesh = make_mesh()
    lanes = _default_device_lanes(mesh)
    rows, skipped = [], []
    print("  ".join(SCALING_COLUMNS), flush=True)
    for q, r in itertools.product(args.grid_q, args.grid_r):
        if q > r:
            continue
        problem = None
        for b in args.grid_b:
            if b * q * num_words(r) > DEFAULT_MAX_WORDS and not args.full:
                skipped.append({"Q": q, "R": r, "batch": b})
                continue
            if problem is None:
                problem = synthetic_problem(r, q, max(args.grid_b),
                                            key=jax.random.key(args.seed + q + r))
            positive = block(pack_bits(jnp.asarray(problem.ref_preds)[None, :]
                                       == jnp.asarray(problem.x_preds[:b])[:, None]))
            x_sides = jnp.asarray(problem.x_sides[:b])
            words = problem.side_words
            result = block(_solve_batch(words, r, x_sides, positive))
            vmapped = time_call(lambda: block(_solve_batch(words, r, x_sides, positive)),
                                repeat=args.repeat, warmup=0)
            host = (np.asarray(words), np.asarray(x_sides), np.asarray(positive))
            sharded = time_call(lambda: _sharded_solve_batch(*host[:1], r, *host[1:], mesh=mesh),
                                repeat=args.repeat)
            steps = max(1, int(np.max(result.num_selected)))
            row = {"Q": q, "R": r, "batch": b, "vmap_s": vmapped["best"],
                   "sharded_s": sharded["best"], "steps_max": steps,
                   "packed_MiB": (4 * (words.size + positive.size) + x_sides.size) / 2**20,
                   # _solve_batch validates on the host and runs this jitted function.
                   "xla_vmap_MiB": xla_memory(solver._solve_batch_jit.lower(
                       words, jnp.int32(r), x_sides, positive, None)) / 2**20,
                   "xla_sharded_MiB": xla_memory(jax.jit(functools.partial(
                       _local_solve_batch, lanes=lanes)).lower(
                       words, jnp.int32(r), x_sides, positive)) / 2**20,
                   "ns_per_word_step": 1e9 * vmapped["best"] / (b * q * num_words(r) * steps)}
            rows.append(row)
            print(format_table([row], SCALING_COLUMNS).splitlines()[-1], flush=True)
    fit_rows = [r for r in rows if r["batch"] >= 100]
    exponents = {}
    if len(fit_rows) >= 4:
        for r in fit_rows:
            r["vmap_per_step_s"] = r["vmap_s"] / r["steps_max"]
        exponents = {"vmap": fit_exponents(fit_rows, "vmap_s"),
                     "sharded": fit_exponents(fit_rows, "sharded_s"),
                     "vmap per greedy step": fit_exponents(fit_rows, "vmap_per_step_s")}
    rec["rows"] = rows
    rec["skipped"] = skipped
    rec["exponents"] = exponents
    rec["notes"].append(
        "scaling: vmap_s = ri_jax.solver._solve_batch, sharded_s = "
        f"ri_jax.solver._sharded_solve_batch ({lanes} lanes per device), each the best of "
        f"{args.repeat} runs after a compile run, inputs already packed; xla_*_MiB = XLA's "
        "compiled memory analysis (arguments + outputs + temporaries), the peak device "
        "memory of the solve; packed_MiB = the packed side words, class masks and input "
        "sides it starts from; ns_per_word_step = vmap_s / (batch · Q · ⌈R/32⌉ · "
        "steps_max); exponents fitted by least squares on log time over the cells with "
        "batch ≥ 100. The bound Q² · R is (steps ≤ Q) × (Q · ⌈R/32⌉ words per step); "
        "'per greedy step' divides out the number of steps, which itself grows with R and Q")
    if skipped:
        rec["notes"].append(f"skipped without --full (batch · Q · ⌈R/32⌉ > "
                            f"{DEFAULT_MAX_WORDS:,} words): " + ", ".join(
                                f"Q={s['Q']} R={s['R']} B={s['batch']}" for s in skipped))
    print(format_table(rows, SCALING_COLUMNS))
    for name, e in exponents.items():
        fitted = " · ".join(f"{a}^{v:.2f}" for a, v in e.items())
        print(f"fitted growth of {name} (batch >= 100): time ∝ {fitted}   "
              "(bound: Q^2 · R^1 · batch^1)")
    if skipped:
        print(rec["notes"][-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record")
    p.add_argument("--name", default="solver", help="JSON file name (without .json)")
    p.add_argument("--boundaries", type=int, default=50, help="|Q| of the comparison")
    p.add_argument("--refs", type=int, default=5_000, help="|R| of the comparison")
    p.add_argument("--batch", type=int, default=1_000, help="inputs of the comparison")
    p.add_argument("--peer-inputs", type=int, default=None,
                   help="time the peer on this many inputs and extrapolate (default: all)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of ours per cell")
    p.add_argument("--lanes", type=int, nargs="*", default=[0, 1, 8, 32, 64, 128],
                   help="lanes (inputs in flight per device, _sharded_solve_batch's lanes) "
                        "to sweep (0 = the whole batch at once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic problems")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling grid")
    p.add_argument("--full", action="store_true", help="run every grid cell (needs ~10 GiB)")
    p.add_argument("--grid-q", type=int, nargs="+", default=list(GRID_Q),
                   help="|Q| values of the scaling grid")
    p.add_argument("--grid-r", type=int, nargs="+", default=list(GRID_R),
                   help="|R| values of the scaling grid")
    p.add_argument("--grid-b", type=int, nargs="+", default=list(GRID_B),
                   help="batch sizes of the scaling grid")
    args = p.parse_args(argv)
    rec = record("solver", {k: v for k, v in vars(args).items() if k not in ("out", "name")})
    print(describe_machine(rec["machine"]), "| load", rec["load_before"])
    compare(args, rec)
    if not args.no_scaling:
        scaling(args, rec)
    finish(rec, args.out, args.name)


if __name__ == "__main__":
    main()
