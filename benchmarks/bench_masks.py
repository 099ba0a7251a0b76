"""Average Drop's masks: ri-jax's selection of the top 20 % against sorting every map.

AD / AI (Eqs. 7–8) keep each heat map's top 20 % of pixels, ties broken by a fixed
pixel order, and forward the masked image. On the Grad-CAM maps of embedded test
images (the embedded checkpoint, VGG-19 width 1/8 at 96 px), this times

* ``ri_jax.metrics.kept_pixels``, vmapped and jitted: the library (the value at the
  cut by a bitwise selection, then only the pixels tied with it ranked);
* ``benchmarks.peers.sort_keep_mask``: the same rule by a stable sort of every map
  (the obvious formulation, and ri-jax's own before);
* the forward pass of the masked images that the masks feed, for scale;

each for the top share and for the inverse (the bottom share), in chunks of
``--batch-size`` maps as ``protocols.scoring.evaluate_heatmaps`` makes them. Masks
and tie counts are asserted identical before timing.

    python -m benchmarks.bench_masks [--images 1000]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (DEFAULT_OUT, HelpFormatter, block, describe_machine, finish,
                               format_table, load_model, record, time_call)
from benchmarks.peers import sort_keep_mask
from ri_jax.data import load_dataset, sample_count
from ri_jax.heatmaps import cam
from ri_jax.metrics import KEEP_FRACTION, kept_pixels, mask_image
from ri_jax.models.vgg import ModelConfig
from ri_jax.protocols.methods import cam_weights

EMBEDDED_SHAPE = ModelConfig(arch="vgg19", width=1 / 8, image_size=96, num_classes=2,
                             class_names=("cat", "dog"))


def gradcam_maps(model, raw: np.ndarray, batch_size: int) -> np.ndarray:
    """float32[N, S, S] Grad-CAM maps of the predicted classes on ``raw`` [N, S, S, 3]."""
    fns, params = model.fns, model.params
    forward = jax.jit(lambda x: (fns.features(params, fns.normalize(x)),
                                 fns.apply(params, fns.normalize(x))))
    psi, logits = map(np.concatenate, zip(*(
        jax.device_get(forward(raw[i:i + batch_size])) for i in range(0, len(raw), batch_size))))
    alphas = cam_weights("Grad-CAM", model.interface, raw, psi, logits.argmax(axis=1))
    draw = jax.jit(jax.vmap(cam, in_axes=(0, 0, None)), static_argnums=2)
    return np.asarray(draw(jnp.asarray(alphas), jnp.asarray(psi), raw.shape[1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="embedded test images (maps)")
    p.add_argument("--batch-size", type=int, default=64, help="maps per jitted call")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each method")
    p.add_argument("--checkpoint", default="default",
                   help="model checkpoint folder ('default' = embedded; random init if absent)")
    p.add_argument("--seed", type=int, default=0, help="which test images (a seeded sample)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record")
    p.add_argument("--name", default="masks", help="JSON file name (without .json)")
    args = p.parse_args(argv)
    for name in ("images", "batch_size", "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: must be at least 1")
    model = load_model(args.checkpoint, EMBEDDED_SHAPE)
    size = model.config.image_size
    test = load_dataset("default", "test", image_size=size)
    raw = np.asarray(test.raw(np.sort(sample_count(len(test), args.images, seed=args.seed))),
                     np.float32)
    rec = record("masks", {"images": len(raw), "batch_size": args.batch_size,
                           "repeat": args.repeat, "seed": args.seed,
                           "checkpoint": args.checkpoint, "image_size": size,
                           "keep_fraction": KEEP_FRACTION})
    print(describe_machine(rec["machine"]), "| load", rec["load_before"])
    maps = gradcam_maps(model, raw, args.batch_size)
    chunks = [jnp.asarray(maps[i:i + args.batch_size])
              for i in range(0, len(maps), args.batch_size)]
    raw_chunks = [jnp.asarray(raw[i:i + args.batch_size])
                  for i in range(0, len(raw), args.batch_size)]

    def batched(rule, inverse):
        one = functools.partial(rule, fraction=KEEP_FRACTION, inverse=inverse)
        fn = jax.jit(jax.vmap(one))
        return lambda: [block(fn(c)) for c in chunks]

    fns, params = model.fns, model.params
    masked_forward = jax.jit(lambda r, m: fns.apply(params, fns.normalize(
        jax.vmap(mask_image, in_axes=(0, 0, None))(r, m, None))))
    rows, tied = [], {}
    for inverse in (False, True):
        ours, peer = batched(kept_pixels, inverse), batched(sort_keep_mask, inverse)
        got, want = ours(), peer()
        for (m1, t1), (m2, t2) in zip(got, want):
            np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
            np.testing.assert_array_equal(np.asarray(t1), np.asarray(t2))
        masks = [m for m, _ in got]
        share = "bottom (inverse)" if inverse else "top"
        tied[share] = int(sum(int(np.sum(np.asarray(t) > 0)) for _, t in got))
        forward = lambda: [block(masked_forward(r, m)) for r, m in zip(raw_chunks, masks)]
        timings = {f"ri_jax.metrics.kept_pixels ({share} 20 %)": time_call(ours, repeat=args.repeat),
                   f"peer: benchmarks.peers.sort_keep_mask ({share} 20 %)":
                       time_call(peer, repeat=args.repeat),
                   f"forward pass of the masked images ({share} 20 %)":
                       time_call(forward, repeat=args.repeat)}
        peer_wall = timings[f"peer: benchmarks.peers.sort_keep_mask ({share} 20 %)"]["median"]
        forward_wall = timings[f"forward pass of the masked images ({share} 20 %)"]["median"]
        for label, t in timings.items():
            rows.append({"method": label, "wall_s": t["median"], "cpu_s": t["cpu_best"],
                         "ms_per_map": 1e3 * t["median"] / len(raw),
                         "peer_over_this": peer_wall / t["median"],
                         "share_of_forward": t["median"] / forward_wall})
    rec["rows"] = rows
    rec["identical_masks"] = True
    rec["maps_with_ties_at_the_cut"] = tied
    rec["notes"].append(
        f"{len(raw)} Grad-CAM maps ({size} × {size}) of embedded test images for the predicted "
        f"class; chunks of {args.batch_size}; median wall / best CPU of {args.repeat} runs after "
        "one compile run; masks and tie counts asserted identical for both shares before "
        "timing; share_of_forward = this row's time / the forward pass of the masked images")
    print(format_table(rows, ["method", "wall_s", "ms_per_map", "peer_over_this",
                              "share_of_forward"]))
    finish(rec, args.out, args.name)


if __name__ == "__main__":
    main()
