"""Eq. 2 boundary sampling: ri_jax's vmapped gradient against one backward pass per sample.

On the embedded default's head (VGG-19 width 1/8 at 96 px; a random-init one of
that shape until the checkpoint exists), boundaries are sampled at the feature
maps of the first Q reference images by

* ``ri_jax.boundaries.sample_boundaries`` as the library is called (it builds and
  compiles its jitted vmap on every call), with the piecewise-linearity check
  (default) and without it (``piecewise_linear=True``);
* the same vmapped ``value_and_grad`` jitted once and reused (what
  ``sample_boundaries`` costs once its compiled function is cached);
* ``benchmarks.peers.BoundaryPeer``: the gradient at one feature map, jitted once,
  called in a Python loop.

All agree (checked before timing); the table gives boundaries per second.

    python -m benchmarks.bench_boundaries [--sizes 50 200 1000]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (DEFAULT_OUT, block, describe_machine, finish, format_table,
                               load_model, record, time_call)
from benchmarks.peers import BoundaryPeer
from ri_jax.boundaries import delta_g, sample_boundaries
from ri_jax.data import load_dataset
from ri_jax.models.vgg import ModelConfig

EMBEDDED_SHAPE = ModelConfig(arch="vgg19", width=1 / 8, image_size=96, num_classes=2,
                             class_names=("cat", "dog"))
_HIGHEST = jax.lax.Precision.HIGHEST


def jitted_once(head_fn):
    """Eq. 2 for a batch of feature maps: one jitted vmap of ΔG's gradient, compiled once."""
    grad = jax.vmap(jax.value_and_grad(lambda t: delta_g(head_fn(t[None])[0])))

    @jax.jit
    def linearise(feats):
        value, w = grad(feats)
        return w, value - jnp.einsum("q...,q...->q", w, feats, precision=_HIGHEST)

    return linearise


def reference_feature_maps(model, count: int, batch_size: int = 100) -> np.ndarray:
    """ψ of the first ``count`` training images of the embedded set."""
    images = load_dataset("default", "train", image_size=model.config.image_size)
    count = min(count, len(images))

    @jax.jit
    def features(raw):
        return model.fns.features(model.params, model.fns.normalize(raw))

    chunks = []
    for start in range(0, count, batch_size):
        idx = np.arange(start, min(start + batch_size, count))
        raw = images.raw(idx)
        pad = batch_size - len(idx)
        raw = np.concatenate([raw, np.zeros((pad,) + raw.shape[1:], raw.dtype)]) if pad else raw
        chunks.append(np.asarray(features(raw))[:len(idx)])
    return np.concatenate(chunks)


def _flops_per_boundary(head, sample) -> float | None:
    def total(ts):
        top = jax.lax.top_k(head(ts), 2)[0]
        return jnp.sum(top[:, 0] - top[:, 1])
    try:
        cost = jax.jit(jax.grad(total)).lower(sample).compile().cost_analysis()
    except Exception:  # cost analysis is best effort and backend dependent
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) / sample.shape[0] if flops else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record")
    p.add_argument("--name", default="boundaries", help="JSON file name (without .json)")
    p.add_argument("--checkpoint", default="default",
                   help="checkpoint folder ('default' = embedded; random init if missing)")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000],
                   help="numbers of boundaries Q to sample")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method")
    args = p.parse_args(argv)
    rec = record("boundaries", {k: v for k, v in vars(args).items() if k not in ("out", "name")})
    print(describe_machine(rec["machine"]), "| load", rec["load_before"])
    model = load_model(args.checkpoint, EMBEDDED_SHAPE)
    rec["config"]["model"] = model.source
    print("model:", model.source)
    head = functools.partial(model.fns.head, model.params)
    feats = reference_feature_maps(model, max(args.sizes))
    peer = BoundaryPeer(head)
    once = jitted_once(head)

    rows = []
    for q in args.sizes:
        sample = jnp.asarray(feats[:q])
        ours = sample_boundaries(head, sample, piecewise_linear=True)
        theirs = peer(np.asarray(sample))
        np.testing.assert_allclose(np.asarray(theirs.w), np.asarray(ours.w), rtol=1e-4,
                                   atol=1e-6, err_msg="peer and ri_jax disagree on W")
        np.testing.assert_allclose(np.asarray(theirs.b), np.asarray(ours.b), rtol=1e-3,
                                   atol=1e-4, err_msg="peer and ri_jax disagree on b")
        methods = {
            "sample_boundaries (as called, with check)": lambda: block(
                sample_boundaries(head, sample)),
            "sample_boundaries (as called, piecewise_linear=True)": lambda: block(
                sample_boundaries(head, sample, piecewise_linear=True)),
            "vmapped gradient, jitted once": lambda: block(once(sample)),
            "peer: one backward pass per sample": lambda: block(peer(np.asarray(sample))),
        }
        timings = {label: time_call(fn, repeat=args.repeat) for label, fn in methods.items()}
        peer_rate = q / timings["peer: one backward pass per sample"]["median"]
        # XLA's own FLOP count of one batched forward+backward, to see how close to the
        # machine's arithmetic limit both sides already are.
        flops = _flops_per_boundary(head, sample)
        if flops:
            rec["notes"].append(
                f"Q={q}: XLA counts {flops / 1e6:.2f} MFLOP per boundary; the peer runs at "
                f"{flops * peer_rate / 1e9:.1f} GFLOP/s and the fastest ri_jax path at "
                f"{flops * max(q / t['median'] for t in timings.values()) / 1e9:.1f} GFLOP/s, "
                f"so a 10x ratio would need {10 * flops * peer_rate / 1e9:.0f} GFLOP/s")
        for label, t in timings.items():
            rows.append({"Q": q, "method": label, "wall_s": t["median"], "cpu_s": t["cpu_best"],
                         "boundaries_per_s": q / t["median"],
                         "vs_peer": q / t["median"] / peer_rate})
        print(format_table(rows[-len(methods):], ["Q", "method", "wall_s", "cpu_s",
                                                  "boundaries_per_s", "vs_peer"]), flush=True)
    rec["rows"] = rows
    rec["config"]["feature_shape"] = list(feats.shape[1:])
    rec["notes"].append(
        "boundaries agree with the peer (W rtol 1e-4, b rtol 1e-3) before timing; times are "
        f"the median wall / best CPU of {args.repeat} runs after one untimed run. "
        "sample_boundaries computes every W in one batched backward pass (the gradient of "
        "the summed ΔG), compiled once per head_fn object, so after the untimed run its "
        "times include only its input checks (and the curvature check 'with check')")
    finish(rec, args.out, args.name)


if __name__ == "__main__":
    main()
