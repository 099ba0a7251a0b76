"""Streamed reference sets at 10k, 100k, 1M references: throughput, peak memory, one interpret.

    python -m benchmarks.bench_streaming --sizes 10000,100000,1000000

References are synthetic and deterministic: image i is uniform noise drawn from
``fold_in(key(seed), i)``, generated on the fly in each batch (nothing is stored).
They go through a small model (the embedded VGG-19 at width 1/8, 96 px, ψ 6×6×64,
or with ``--checkpoint tiny`` a VGG-11 at width 1/16, 32 px, ψ 2×2×32, random weights
with the last bias shifted so the classes are about balanced) into ``ri_jax.streaming.stream_references`` (classes, packed sides and
[N, Q] projections), then one ``streaming_interpreter(...).interpret_batch`` of
``--inputs`` images. Each size runs in its own process so its peak resident memory
(``resource.getrusage``) is its own; the record also holds the memory the in-memory
reference set would need for ψ (N·h·w·c float32) and the XLA cost analysis (FLOPs)
of one image's forward pass, for the per-image estimates in benchmarks/RESULTS.md.

The same inputs are then interpreted with the authors' per-input pools
(``variant="authors"``) over the same streamed set: each chunk of inputs draws its pools,
reads the pool references' ψ by index, and makes two passes over all N references (the
sides, then Eq. 6 on the selected boundaries), recomputing ψ from the images. Their cost
per chunk therefore grows linearly in N: 2·N forward passes plus Q·N·D multiply-adds per
input for each pass; a chunk holds as many inputs as their side words (Q·⌈N/32⌉ each) fit
in 256 MiB, so the passes are shared by the chunk's inputs. On a GPU the forward passes and
the [B·Q, D] × [D, N] products run far faster, so a chunk costs about two streamed passes
over the images (input decoding and host-to-device transfer), unless ψ fits in device
memory (``keep_features``); the boundary searches become latency-bound (Σ steps / lanes
sequential iterations), which larger chunks amortise.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import HelpFormatter, DEFAULT_OUT, finish, record
from ri_jax.variants import ri_variant


def forward_flops(fns, params, image_size: int) -> float:
    """XLA's FLOP count of ψ and G for one image (cost analysis of the compiled program)."""
    def forward(x):
        psi = fns.features(params, x)
        return fns.head(params, psi)

    compiled = jax.jit(forward).lower(jnp.zeros((1, image_size, image_size, 3))).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def vgg19_flops_per_image() -> dict:
    """XLA's FLOPs of VGG-19 (width 1, 224 px) ψ and G for one image, from the lowered
    program's cost analysis (abstract weights: nothing is allocated or run)."""
    from ri_jax.models.vgg import ModelConfig, make_vgg
    fns = make_vgg(ModelConfig(arch="vgg19", width=1.0, image_size=224, num_classes=2))
    params = jax.eval_shape(fns.init, jax.random.key(0))
    image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    psi = jax.eval_shape(fns.features, params, image)
    cost = jax.jit(lambda p, x: fns.head(p, fns.features(p, x))).lower(params, image)
    cost = cost.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float(cost["flops"]), "feature_floats": int(np.prod(psi.shape[1:]))}


def estimates(vgg: dict, *, tflops: float, hosts: int, q: int, n: int, inputs: int) -> list[str]:
    """The written estimates, from XLA's FLOP count and a stated sustained rate."""
    per_s = tflops * 1e12 / vgg["flops"]
    proj = 2 * q * vgg["feature_floats"]  # FLOPs of one reference's Q projections and sides
    pools = 2.0 * inputs * q * n * vgg["feature_floats"]
    psi_gib = n * vgg["feature_floats"] * 4 / 2**30
    return [
        f"VGG-19 at 224 px: {vgg['flops'] / 1e9:.1f} GFLOP per image forward (XLA cost "
        f"analysis), ψ = {vgg['feature_floats']} floats; projections and sides add "
        f"{proj / 1e6:.1f} MFLOP per reference.",
        f"Assumed sustained rate {tflops:g} TFLOP/s on one H100 (an assumption: bf16/TF32 "
        f"convolutions at a fraction of peak, input decoding not limiting): "
        f"{per_s:,.0f} references/s, {n / per_s / 60:,.1f} min for {n:,} references; "
        f"the kept state is {n * q * 4 / 2**20:,.0f} MiB of projections vs "
        f"{n * vgg['feature_floats'] * 4 / 2**30:,.0f} GiB of ψ.",
        f"A {hosts}-host slice with one such device each: shares need no communication "
        f"until the gather of {n * q * 4 / 2**20:,.0f} MiB of projections and "
        f"{n * q / 8 / 2**20:,.1f} MiB of side bits, so about {n / per_s / hosts / 60:,.1f} "
        f"min, linear in hosts while the gather stays small.",
        f"The authors' per-input pools: each of B inputs gets its own Q boundaries, so no "
        f"projection is shared; B·Q·N inner products of {vgg['feature_floats']} floats are "
        f"{pools / 1e15:,.0f} PFLOP for B = {inputs}, Q = {q}, N = {n:,} "
        f"({pools / (tflops * 1e12):,.0f} s at the same rate), but every input reads all N ψ: "
        f"{psi_gib:,.0f} GiB, which fits in no device memory, so each input streams it from "
        f"host memory (about {psi_gib * 2**30 / 25e9:,.0f} s at an assumed 25 GB/s, "
        f"{inputs * psi_gib * 2**30 / 25e9 / 3600:,.1f} h for B = {inputs}) or recomputes it "
        f"({inputs * n / per_s / 3600:,.0f} h). StreamingInterpreter recomputes them: each "
        f"chunk of inputs (as many as {n * q / 8 / 2**20:,.1f} MiB of side words each fit in "
        f"256 MiB) makes two passes over the N images (sides, then Eq. 6), so B inputs cost "
        f"2·⌈B / chunk⌉·N forward passes, besides B·Q·⌈N/32⌉ word operations in the solver.",
    ]


def balance_classes(fns, params, synthetic, *, count: int = 2048):
    """Random weights call nearly every noise image one class, which would make the
    interpret run trivial (no other-class reference to exclude). Shift the last layer's
    bias so the median logit margin over ``count`` calibration images (indices from
    2**30, disjoint from references and inputs) is zero: about half of each class."""
    xs = synthetic(jnp.arange(count, dtype=jnp.uint32) + np.uint32(2**30))
    logits = fns.head(params, fns.features(params, xs))
    shift = jnp.median(logits[:, 1] - logits[:, 0]) / 2
    last = sorted(k for k in params["params"] if k.startswith("fc_"))[-1]
    bias = params["params"][last]["bias"] + jnp.array([shift, -shift])
    return {"params": {**params["params"], last: {**params["params"][last], "bias": bias}}}


def run_one(args) -> dict:
    """One size in this process: stream, interpret, report (printed as JSON)."""
    import functools

    from ri_jax.checkpoint import load_checkpoint
    from ri_jax.models.vgg import make_vgg
    from ri_jax.streaming import streaming_interpreter

    if args.checkpoint == "tiny":  # the test suite's model, random weights: cheap per image
        from ri_jax.models.vgg import ModelConfig
        config = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
        fns = make_vgg(config)
        params = fns.init(jax.random.key(args.seed))
    else:
        params, config, _ = load_checkpoint(args.checkpoint)
        fns = make_vgg(config)
    size = config.image_size
    key = jax.random.key(args.seed)

    @jax.jit
    def synthetic(idx):
        one = lambda i: jax.random.uniform(jax.random.fold_in(key, i), (size, size, 3))
        return fns.normalize(jax.vmap(one)(idx))

    if args.checkpoint == "tiny":
        params = balance_classes(fns, params, synthetic)

    ri_start = time.perf_counter()
    cpu_start = time.process_time()
    ri = streaming_interpreter(functools.partial(fns.features, params),
                               functools.partial(fns.head, params),
                               lambda idx: synthetic(jnp.asarray(idx, jnp.uint32)), args.n,
                               key=jax.random.key(args.seed + 1),
                               num_boundaries=args.num_boundaries, batch_size=args.batch_size,
                               piecewise_linear=True, progress=not args.no_progress,
                               variant="paper")
    jax.block_until_ready(ri.store.streamed.projections)
    stream_s = time.perf_counter() - ri_start
    stream_cpu = time.process_time() - cpu_start
    xs = synthetic(jnp.arange(args.inputs, dtype=jnp.uint32) + np.uint32(2**31))
    t = time.perf_counter()
    out = jax.block_until_ready(ri.interpret_batch(xs, top_k=4))
    interpret_s = time.perf_counter() - t
    s = ri.store.streamed
    feat_floats = int(np.prod(s.boundaries.w.shape[1:]))
    # The authors' per-input pools over the same streamed set (its classes are all they
    # read of it): the interpreter with the other variant, without streaming N again.
    pools = copy.copy(ri)
    pools.variant = ri_variant("authors")
    t, cpu = time.perf_counter(), time.process_time()
    own = jax.block_until_ready(pools.interpret_batch(xs, top_k=4))
    pools_s, pools_cpu = time.perf_counter() - t, time.process_time() - cpu
    chunk = pools._pool_chunk_size(args.inputs)
    return {
        "references": args.n, "stream_s": stream_s, "stream_cpu_s": stream_cpu,
        "refs_per_s": args.n / stream_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept_mib": (s.projections.nbytes + s.side_words.nbytes + s.preds.nbytes) / 2**20,
        "in_memory_psi_mib": args.n * feat_floats * 4 / 2**20,
        "interpret_inputs": args.inputs, "interpret_s": interpret_s,
        "mean_selected": float(np.mean(out.num_selected)),
        "mean_covered": float(np.mean(out.num_covered)),
        "class_1_share": float(np.mean(np.asarray(s.preds) == 1)),
        "pools_interpret_s": pools_s, "pools_interpret_cpu_s": pools_cpu,
        "pools_chunk": chunk, "pools_reference_passes": 2 * -(-args.inputs // chunk),
        "pools_s_per_input": pools_s / args.inputs,
        "pools_mean_selected": float(np.mean(own.num_selected)),
        "pools_distinct_polytopes": len({tuple(np.flatnonzero(r)) + tuple(x[r])
                                         for r, x in zip(np.asarray(own.selected),
                                                         np.asarray(own.diagnostics.x_side))}),
        "pools_searches_not_converged": int(np.sum(~np.asarray(own.diagnostics.search_converged))),
        "pools_side_words_mib": args.inputs * args.num_boundaries * (-(-args.n // 32)) * 4
        / 2**20,
        "feature_shape": list(s.boundaries.w.shape[1:]),
        "forward_flops_per_image": forward_flops(fns, params, size),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="N values, comma-separated")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder, or 'tiny' (VGG-11 at width 1/16, 32 px, random "
                        "weights); default the embedded VGG-19")
    p.add_argument("--num-boundaries", type=int, default=50, help="|Q|")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--inputs", type=int, default=4, help="inputs in the interpret run")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic references")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the JSON record")
    p.add_argument("--name", default="streaming", help="record name")
    p.add_argument("--assumed-tflops", type=float, default=200.0,
                   help="sustained TFLOP/s assumed for one H100 in the written estimate")
    p.add_argument("--hosts", type=int, default=8, help="hosts of the slice in the estimate")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--n", type=int, default=None,
                   help="internal: measure one size N in this process (the driver runs one per size)")
    args = p.parse_args(argv)
    if args.n is not None:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rec = record("streaming", {k: v for k, v in vars(args).items() if k != "n"})
    rec["vgg19_224"] = vgg19_flops_per_image()
    rec["notes"] += estimates(rec["vgg19_224"], tflops=args.assumed_tflops, hosts=args.hosts,
                              q=args.num_boundaries, n=1_000_000, inputs=1000)
    print("\n".join(rec["notes"]), flush=True)
    for n in sizes:
        cmd = [sys.executable, "-m", "benchmarks.bench_streaming", "--n", str(n)]
        for flag in ("num_boundaries", "batch_size", "inputs", "seed"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        if args.no_progress:
            cmd.append("--no-progress")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        row = json.loads(done.stdout.split("RESULT ", 1)[1])
        rec["rows"].append(row)
        print({k: row[k] for k in ("references", "stream_s", "refs_per_s", "peak_rss_mib",
                                   "kept_mib", "in_memory_psi_mib", "interpret_s",
                                   "pools_interpret_s", "pools_reference_passes")}, flush=True)
        finish(rec, args.out, args.name)  # after every size: a long run keeps what it measured
    if len(rec["rows"]) > 1:
        rec["notes"].append(pools_growth(rec["rows"]))
        finish(rec, args.out, args.name)


def pools_growth(rows: list[dict]) -> str:
    """How the per-input pools' interpret time grew with N, from a least-squares line."""
    n = np.array([r["references"] for r in rows], float)
    t = np.array([r["pools_interpret_s"] for r in rows])
    slope, offset = np.polyfit(n, t, 1)
    measured = ", ".join(f"{r['pools_interpret_s']:.1f} s at N = {r['references']:,} "
                         f"({r['pools_reference_passes']} passes)" for r in rows)
    return (f"Per-input pools (the authors' variant), {rows[0]['interpret_inputs']} inputs in "
            f"one chunk, first call: {measured}; a line through them costs "
            f"{slope * 1e6:.1f} s per million references plus {offset:.1f} s (compilation and "
            f"the searches, which do not depend on N): linear in N, since every chunk reads "
            f"all N ψ twice, here recomputed from the images.")


if __name__ == "__main__":
    main()
