"""Cost of the faithfulness measures (``ri_jax.faithfulness``) that Table 1 adds per map set.

On Grad-CAM maps of embedded test images (the embedded checkpoint, VGG-19 width 1/8 at
96 px; random weights of that shape without it), this times

* the plain forward pass of the images, for scale;
* ``deletion_insertion``: 3 curves × (T + 1) masked forward passes per map (T = 20);
* ``road``: 2 orders × P percentiles of CG imputation plus a forward pass per map, and the
  imputations alone (``impute``, batched and jitted) against the peer's way, a SciPy
  sparse matrix built and factorised per image (``spsolve``, as pytorch-grad-cam);
* ``keep_fraction_scores``: AD / AI at 5 keep fractions;

each as seconds for all maps, milliseconds per map and multiples of the forward pass, with
the masked forward passes each does per map. Table 1 runs all three on each method's maps
for every run, on ``--faithfulness-images`` unseen images (100 in run_all).

    python -m benchmarks.bench_faithfulness [--images 64]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from benchmarks.common import (DEFAULT_OUT, HelpFormatter, block, describe_machine, finish,
                               format_table, load_model, record, time_call)
from ri_jax import faithfulness as F
from ri_jax.baselines.gradcam import gradcam_weights_batch
from ri_jax.data import load_dataset, sample_count
from ri_jax.heatmaps import cam
from ri_jax.models.vgg import ModelConfig

EMBEDDED_SHAPE = ModelConfig(arch="vgg19", width=1 / 8, image_size=96, num_classes=2,
                             class_names=("cat", "dog"))


def scipy_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The peer's imputation: one sparse system over the removed pixels, built and solved
    with SciPy (vectorised build; pytorch-grad-cam fills a ``lil_matrix`` entry by entry)."""
    h, w, c = image.shape
    flat, gone = image.reshape(-1, c).astype(np.float64), removed.reshape(-1)
    idx = np.flatnonzero(gone)
    var = np.full(h * w, -1)
    var[idx] = np.arange(len(idx))
    r, q = np.divmod(idx, w)
    rows, cols, vals = [np.arange(len(idx))], [np.arange(len(idx))], [np.zeros(len(idx))]
    rhs = np.zeros((len(idx), c))
    for (d0, d1), weight in F.ROAD_NEIGHBOURS:
        inside = (r + d0 >= 0) & (r + d0 < h) & (q + d1 >= 0) & (q + d1 < w)
        n = (r + d0) * w + q + d1
        vals[0][inside] += weight
        unknown = inside & gone[np.where(inside, n, 0)]
        known = inside & ~unknown
        rows.append(np.flatnonzero(unknown)), cols.append(var[n[unknown]])
        vals.append(np.full(unknown.sum(), -weight))
        rhs[known] += weight * flat[n[known]]
    a = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                        np.concatenate(cols))), shape=(len(idx),) * 2)
    out = flat.copy()
    out[idx] = scipy.sparse.linalg.spsolve(a, rhs).reshape(len(idx), c)
    return out.reshape(h, w, c)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=64, help="embedded test images (maps)")
    p.add_argument("--batch-size", type=int, default=32, help="images per chunk")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each measure")
    p.add_argument("--checkpoint", default="default",
                   help="model checkpoint folder ('default' = embedded; random init if absent)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the JSON record")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint, EMBEDDED_SHAPE)
    fns, params, size = model.fns, model.params, model.config.image_size
    test = load_dataset("default", "test", image_size=size)
    raw = test.raw(np.sort(sample_count(len(test), args.images, seed=0)))
    predict = jax.jit(functools.partial(fns.apply, params))
    normalize = fns.normalize
    x = jnp.asarray(normalize(jnp.asarray(raw)))
    psi = fns.features(params, x)
    classes = jnp.argmax(predict(x), axis=-1)
    alpha = gradcam_weights_batch(functools.partial(fns.head, params), psi, classes)
    maps = np.asarray(jax.vmap(cam, in_axes=(0, 0, None))(alpha, psi, size))
    percentiles = (10, 30, 50, 70, 90)
    steps = len(F.curve_fractions(F.CURVE_STEP))
    bs = args.batch_size
    forward = lambda: block([predict(x[i:i + bs]) for i in range(0, len(x), bs)])
    measures = {
        "forward pass (scale)": (forward, 1),
        f"deletion_insertion (step 5 %, {steps} points × 3 curves)": (
            lambda: F.deletion_insertion(predict, normalize, raw, maps, batch_size=bs), 3 * steps),
        f"road ({len(percentiles)} percentiles × MoRF, LeRF)": (
            lambda: F.road(predict, normalize, raw, maps, percentiles=percentiles, batch_size=bs),
            2 * len(percentiles) + 1),
        f"keep_fraction_scores ({len(F.KEEP_FRACTIONS)} fractions)": (
            lambda: F.keep_fraction_scores(predict, normalize, raw, maps, batch_size=bs),
            len(F.KEEP_FRACTIONS) + 1),
    }
    rec = record("faithfulness", {"images": args.images, "batch_size": bs, "repeat": args.repeat,
                                  "model": model.source, "road_percentiles": list(percentiles)})
    rows = []
    for name, (fn, passes) in measures.items():
        t = time_call(fn, repeat=args.repeat)
        rows.append({"measure": name, "forward_passes_per_map": passes, "wall_s": t["best"],
                     "cpu_s": t["cpu_best"], "ms_per_map": 1e3 * t["best"] / args.images})
    base = rows[0]["wall_s"]
    for r in rows:
        r["x_forward"] = r["wall_s"] / base
    # The imputations alone: ours batched in JAX against SciPy per image, same masks.
    removed = np.stack([np.asarray(F.road_removed(jnp.asarray(m), p, least_relevant=lerf))
                        for m in maps for p in percentiles for lerf in (False, True)])
    images = np.repeat(np.asarray(x), 2 * len(percentiles), axis=0)
    ours = jax.jit(jax.vmap(F.impute))
    chunks = lambda: block([ours(images[i:i + bs], removed[i:i + bs])
                            for i in range(0, len(images), bs)])
    t_ours = time_call(chunks, repeat=args.repeat)
    start, start_cpu = time.perf_counter(), time.process_time()
    peer = [scipy_impute(images[i], removed[i]) for i in range(len(images))]
    t_peer, cpu_peer = time.perf_counter() - start, time.process_time() - start_cpu
    got = np.concatenate(jax.device_get(
        [ours(images[i:i + bs], removed[i:i + bs]) for i in range(0, len(images), bs)]))
    gap = float(np.max(np.abs(got - np.stack(peer))))
    n = len(images)
    rows += [{"measure": "imputations only: ri_jax.faithfulness.impute (CG, batched, jitted)",
              "forward_passes_per_map": 0, "wall_s": t_ours["best"], "cpu_s": t_ours["cpu_best"],
              "ms_per_map": 1e3 * t_ours["best"] / n, "x_forward": t_ours["best"] / base},
             {"measure": "imputations only: peer, SciPy sparse build + spsolve per image",
              "forward_passes_per_map": 0, "wall_s": t_peer, "cpu_s": cpu_peer,
              "ms_per_map": 1e3 * t_peer / n, "x_forward": t_peer / base}]
    rec["rows"] = rows
    rec["imputation_max_abs_difference"] = gap
    rec["notes"] = [f"ms_per_map of the imputation rows is per imputation ({n} = {args.images} maps × "
                    f"{2 * len(percentiles)} masks); x_forward: multiple of one forward pass of all "
                    "images; the imputations of ours and the peer differ by at most "
                    f"{gap:.2g} (normalised pixels)"]
    print(describe_machine(rec["machine"]))
    print(format_table(rows, ["measure", "forward_passes_per_map", "wall_s", "cpu_s",
                              "ms_per_map", "x_forward"]))
    finish(rec, args.out)


if __name__ == "__main__":
    main()
