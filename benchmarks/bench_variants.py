"""Cost per input of the two RI variants (``ri_jax.variants``), side by side, and the floor.

The reference set is the embedded ASIRRA training split (2,000 references; features cached
once, not timed); the inputs are the first ``--inputs`` test images. The headline is
``RepresentativeInterpreter.interpret_batch`` on those images (ψ of the inputs included),
each variant's interpreter built once, its first call compiling, the best of the timed
calls after it (wall and CPU time), and the authors' cost over the paper's.

Then the authors' per-input path stage by stage, with the library's own functions:

  features  ψ and classes of the inputs (both variants pay it)
  pools     drawing each pool from D(x), the boundary searches (``search_lanes``) and Eq. 2
  sides     the references' packed sides against every input's own Q boundaries, with the
            products kept for Eq. 6 (``side_bits(dots=True)``)
  solve     Algorithm 1 (δ = 0), the authors' extras and loosen step
  explain   Eq. 6 from the products, channel weights, heat maps (top-k references)

and the floor those stages cannot go under: per input, the sides are Q·N·D multiply-adds
(one [B·Q, D] × [D, N] product per chunk of B inputs), the searches Σ steps head
evaluations and Eq. 2 one forward and backward pass at Q points, each counted in FLOPs by
XLA's cost analysis and turned into milliseconds at the dense float32 matmul rate measured
in the same run. The record says where the time goes and how far each stage is from it.

Where the time goes (64 inputs, |Q| = 50, N = 2,000; the recorded run, on a shared 2-core
CPU): the authors' variant costs ~8.2 ms per input against the paper's ~1.45 ms (5.7× wall;
six runs on this machine gave 5.4× to 6.4×, the spread of its load). Its pools take ~4.6 ms:
3,200 boundary searches of 20.5 steps on average, i.e. ~1,024 head evaluations of 1.12 MFLOP
per input (their number fixed by the authors' step rule), plus Eq. 2 at those 50 points; the
sides ~1.6 ms (230 M multiply-adds per input); ψ of the inputs ~0.8 ms (both variants pay
it); Eq. 6 and the heat maps ~0.7 ms; the solver ~0.05 ms. At the float32 matmul rate
measured in the same run the floor is ~5.1 ms per input (sides 1.4 ms, searches and Eq. 2
3.7 ms): the sides run at 1.2× their floor and the pools at 1.2× theirs (the head's matmuls
at 128 rows, the lanes' refills and the last searches to finish). Before this benchmark's
changes the same call took ~15× the paper variant: a vmapped search stepped every search as
long as the slowest one (54 steps), Eq. 6 made a second Q·N·D pass, XLA:CPU's
select-and-scatter made Eq. 2's backward pass through the max-pool 5× slower than the
one-hot derivative it uses now, and the pools were copied through the explain step's map.
The floor plus the inputs' ψ is 4.1× to 5.2× the paper variant here, depending on the
matmul rate a run measures: the 5× bound leaves the other stages little or no room.

    python -m benchmarks.bench_variants [--inputs 64] [--checkpoint default]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import HelpFormatter, DEFAULT_OUT, block, finish, format_table, record, time_call
from ri_jax.boundaries import (draw_pools, pool_boundaries, pool_keys, side_bits)
from ri_jax.data import load_dataset
from ri_jax.featurize import compute_features
from ri_jax.interpreter import Diagnostics, RepresentativeInterpreter, _explain_batch
from ri_jax.models.loading import load_model
from ri_jax.ranking import pool_distances
from ri_jax.solver import _keep_adding_batch, _loosen_batch, positive_words, _solve_batch
from ri_jax.variants import VARIANT_NAMES, ri_variant

# The issue's bound: the authors' variant at most this many times the paper's, per input.
TARGET_RATIO = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--inputs", type=int, default=64, help="test images interpreted")
    p.add_argument("--num-boundaries", type=int, default=50, help="|Q|")
    p.add_argument("--top-k", type=int, default=5, help="similar references drawn")
    p.add_argument("--checkpoint", default="default", help="model (default: the embedded one)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="records folder")
    args = p.parse_args(argv)
    for name in ("inputs", "num_boundaries", "top_k", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    return args


def cost_flops(fn, *args) -> float:
    """XLA's FLOP count of ``fn(*args)`` (cost analysis of the compiled program)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def matmul_rate(m: int, k: int, n: int, repeat: int) -> float:
    """Measured float32 GFLOP/s of one dense [m, k] × [k, n] product (the sides' shape)."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((m, k), (k, n)))
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
    t = time_call(lambda: block(dot(a, b)), repeat=repeat)
    return 2.0 * m * k * n / t["best"] / 1e9


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = load_model(args.checkpoint)
    train, test = (load_dataset("default", s, image_size=model.image_size)
                   for s in ("train", "test"))
    refs = compute_features(model, train, progress=False)
    xs = model.normalize(test.raw(np.arange(args.inputs)))
    b, q = args.inputs, args.num_boundaries
    n, feat_shape = refs.psi.shape[0], refs.psi.shape[1:]
    d = int(np.prod(feat_shape))
    rec = record("variants", {"inputs": b, "references": n, "Q": q, "top_k": args.top_k,
                              "feature_shape": list(feat_shape), "checkpoint": args.checkpoint})

    # --- Headline: interpret_batch, side by side, second call onwards.
    interpreters = {v: RepresentativeInterpreter(model, refs.psi, key=jax.random.key(0),
                                                 num_boundaries=q, is_features=True,
                                                 progress=False, variant=v)
                    for v in VARIANT_NAMES}
    first = {}
    for v, it in interpreters.items():
        start = time.perf_counter()
        block(it.interpret_batch(xs, top_k=args.top_k))
        first[v] = time.perf_counter() - start
    # Interleaved rounds, so a change of load on the shared machine hits both variants.
    best = {v: {"wall": float("inf"), "cpu": float("inf")} for v in interpreters}
    for _ in range(args.repeat):
        for v, it in interpreters.items():
            t = time_call(lambda: block(it.interpret_batch(xs, top_k=args.top_k)), repeat=1,
                          warmup=0)
            best[v]["wall"] = min(best[v]["wall"], t["best"])
            best[v]["cpu"] = min(best[v]["cpu"], t["cpu_best"])
    per_input = {v: {"ms_per_input": 1e3 * best[v]["wall"] / b,
                     "cpu_ms_per_input": 1e3 * best[v]["cpu"] / b,
                     "first_call_s": first[v]} for v in interpreters}
    for v in per_input:
        per_input[v]["ratio_to_paper"] = (per_input[v]["ms_per_input"]
                                          / per_input["paper"]["ms_per_input"])
        per_input[v]["cpu_ratio_to_paper"] = (per_input[v]["cpu_ms_per_input"]
                                              / per_input["paper"]["cpu_ms_per_input"])

    # --- The authors' path stage by stage (the interpreter's own functions, one chunk).
    rows = []

    def timed(variant, stage, fn):
        t = time_call(lambda: block(fn()), repeat=args.repeat)
        rows.append({"variant": variant, "stage": stage, "seconds": t["best"],
                     "cpu_seconds": t["cpu_best"], "ms_per_input": 1e3 * t["best"] / b,
                     "cpu_ms_per_input": 1e3 * t["cpu_best"] / b})
        return fn()

    authors = interpreters["authors"]
    variant = ri_variant("authors")
    ref_feats, ref_preds = authors.reference_set.feats, authors.reference_set.preds
    feats = timed("both", "features (ψ and classes of the inputs)", lambda: authors.features(xs))
    preds = authors.predict_classes(feats)
    keys = pool_keys(jax.random.key(0), np.arange(b))

    def pools():
        idx, _ = draw_pools(ref_preds, preds, q, keys=keys)
        return pool_boundaries(model.head, feats, preds, ref_feats[idx],
                               max_steps=variant.max_search_steps, tol=variant.search_tol)

    own, found = timed("authors", "pools (draw, search, Eq. 2)", pools)
    words, dots = timed("authors", "sides (and Eq. 6 products)",
                        lambda: side_bits(own, ref_feats, dots=True))
    dots_x = jnp.einsum("bqhwc,bhwc->bq", own.w, feats, precision="highest")
    x_sides = (dots_x + own.b) > 0
    positives = positive_words(ref_preds, preds, num_classes=authors.num_classes)

    def solve():
        r = _solve_batch(words, n, x_sides, positives, jnp.zeros((b,), jnp.int32))
        r = _keep_adding_batch(words, n, x_sides, positives, r)
        kept = _loosen_batch(words, n, x_sides, positives, r.selected)
        return r._replace(selected=kept.selected, num_selected=kept.num_selected)

    result = timed("authors", "solve (Algorithm 1, extras, loosen)", solve)
    diagnostics = Diagnostics(tau=result.tau, reached=result.reached, x_side=x_sides,
                              pool=draw_pools(ref_preds, preds, q, keys=keys)[0],
                              num_selected_greedy=result.num_selected,
                              search_steps=found.steps, search_converged=found.converged)
    timed("authors", "explain (Eq. 6, α, heat maps)", lambda: _explain_batch(
        ref_feats, own, feats, preds, result, diagnostics,
        pool_distances(result.selected, dots_x, dots, own.w),
        top_k=args.top_k, image_size=model.image_size))

    # --- The floor: FLOPs by XLA's cost analysis, at the measured matmul rate.
    gflops = matmul_rate(min(b, 64) * q, d, n, args.repeat)
    one = jax.ShapeDtypeStruct((1,) + tuple(feat_shape), jnp.float32)
    head_flops = cost_flops(model.head, one)
    grad_flops = cost_flops(jax.grad(lambda t: jnp.sum(model.head(t))), one)
    steps = float(np.sum(found.steps)) / b
    floor = {"sides_mflop": 2.0 * q * n * d / 1e6, "searches_mflop": steps * head_flops / 1e6,
             "eq2_mflop": q * grad_flops / 1e6, "head_flops": head_flops,
             "search_steps_per_input": steps, "matmul_gflops": gflops}
    floor["ms_per_input"] = (floor["sides_mflop"] + floor["searches_mflop"]
                             + floor["eq2_mflop"]) / gflops
    stage = {r["stage"].split(" ")[0]: r for r in rows}
    floor["sides_ms"] = floor["sides_mflop"] / gflops
    floor["pools_ms"] = (floor["searches_mflop"] + floor["eq2_mflop"]) / gflops
    floor["sides_over_floor"] = stage["sides"]["ms_per_input"] / floor["sides_ms"]
    floor["pools_over_floor"] = stage["pools"]["ms_per_input"] / floor["pools_ms"]
    floor["floor_plus_shared_ms"] = (floor["ms_per_input"] + stage["features"]["ms_per_input"])
    a, p = per_input["authors"], per_input["paper"]
    rec["per_input"] = per_input
    rec["rows"] = rows
    rec["floor"] = floor
    rec["search"] = {"steps_mean": float(np.mean(found.steps)),
                     "steps_max": int(np.max(found.steps)),
                     "not_converged": int(np.sum(~np.asarray(found.converged))),
                     "searches": int(found.steps.size)}
    rec["notes"] += [
        f"interpret_batch, {b} inputs, second call onwards: authors {a['ms_per_input']:.2f} ms "
        f"per input, paper {p['ms_per_input']:.2f} ms: {a['ratio_to_paper']:.2f}× wall "
        f"({a['cpu_ratio_to_paper']:.2f}× CPU); the bound is {TARGET_RATIO:g}×.",
        "Where the authors' time goes: " + "; ".join(
            f"{r['stage']} {r['ms_per_input']:.2f} ms" for r in rows) + " per input.",
        f"Floor at the measured {gflops:.0f} GFLOP/s float32 matmul rate: sides "
        f"{floor['sides_ms']:.2f} ms (Q·N·D = {floor['sides_mflop'] / 2:.0f} M multiply-adds), "
        f"searches and Eq. 2 {floor['pools_ms']:.2f} ms ({steps:.0f} head evaluations of "
        f"{head_flops / 1e6:.2f} MFLOP, Eq. 2 at Q points), {floor['ms_per_input']:.2f} ms in "
        f"all; measured sides {floor['sides_over_floor']:.2f}× and pools "
        f"{floor['pools_over_floor']:.2f}× their floor. With the inputs' ψ, which both "
        f"variants pay, the authors' variant cannot go under "
        f"{floor['floor_plus_shared_ms']:.2f} ms per input here, "
        f"{floor['floor_plus_shared_ms'] / p['ms_per_input']:.2f}× the paper variant.",
    ]
    print(format_table([{"variant": v, **t} for v, t in per_input.items()],
                       ["variant", "ms_per_input", "cpu_ms_per_input", "ratio_to_paper",
                        "cpu_ratio_to_paper", "first_call_s"]))
    print(format_table(rows, ["variant", "stage", "ms_per_input", "cpu_ms_per_input"]))
    for note in rec["notes"]:
        print("-", note)
    finish(rec, args.out)
    return rec


if __name__ == "__main__":
    main()
