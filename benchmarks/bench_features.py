"""Feature extraction throughput (ψ and logits), one device and sharded over all devices.

A randomly initialised VGG (weights do not change the cost) runs on random raw
images in fixed-size batches:

* one jitted forward (normalise → ψ → G) on the default device, batch after batch
  already on the device: the compute throughput;
* ``ri_jax.sharding.sharded_features`` over every device from host images: what a
  caller gets, host transfers included.

Paper scale is VGG-19 width 1 at 224 px (ψ 14×14×512):

    python -m benchmarks.bench_features --arch vgg19 --width 1 --image-size 224
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.common import (DEFAULT_OUT, block, describe_machine, finish, format_table,
                               random_params, record, time_call)
from ri_jax.models.vgg import ModelConfig, make_vgg, vgg_model
from ri_jax.sharding import make_mesh, sharded_features


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record")
    p.add_argument("--name", default="features", help="JSON file name (without .json)")
    p.add_argument("--arch", default="vgg19",
                   help="VGG configuration (vgg11/13/16/19)")
    p.add_argument("--width", type=float, default=1 / 8,
                   help="channel width multiplier (1 = standard VGG)")
    p.add_argument("--image-size", type=int, default=96, help="square input side in pixels")
    p.add_argument("--num-classes", type=int, default=2, help="output classes of the head")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (per device)")
    p.add_argument("--images", type=int, default=512, help="images per timed run")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed runs after one compile run (the median is reported)")
    args = p.parse_args(argv)
    rec = record("features", {k: v for k, v in vars(args).items() if k not in ("out", "name")})
    print(describe_machine(rec["machine"]), "| load", rec["load_before"])
    config = ModelConfig(arch=args.arch, width=args.width, image_size=args.image_size,
                         num_classes=args.num_classes)
    fns = make_vgg(config)
    params = random_params(fns)
    rng = np.random.default_rng(0)
    raw = rng.random((args.images, args.image_size, args.image_size, 3), np.float32)

    @jax.jit
    def forward(params, batch):
        psi = fns.features(params, fns.normalize(batch))
        return psi, fns.head(params, psi)

    device_params = jax.device_put(params)
    batches = [jax.device_put(raw[i:i + args.batch_size])
               for i in range(0, args.images - args.batch_size + 1, args.batch_size)]
    if not batches:
        raise SystemExit("--images: must be at least --batch-size")

    def on_device():
        for b in batches:
            block(forward(device_params, b))

    mesh = make_mesh()
    on_device_t = time_call(on_device, repeat=args.repeat)
    sharded_t = time_call(lambda: sharded_features(vgg_model(params, config), raw, mesh,
                                                   batch_size=args.batch_size),
                          repeat=args.repeat)
    n_device = len(batches) * args.batch_size
    rows = [
        {"method": "jitted forward, batches on one device", "images": n_device,
         "wall_s": on_device_t["median"], "images_per_s": n_device / on_device_t["median"]},
        {"method": f"sharded_features over {mesh.size} device(s), from host", "images": args.images,
         "wall_s": sharded_t["median"], "images_per_s": args.images / sharded_t["median"]},
    ]
    rec["rows"] = rows
    rec["config"]["feature_shape"] = list(config.feature_shape)
    rec["notes"].append(
        f"{config.arch} width {config.width:g} at {config.image_size} px (ψ "
        f"{'×'.join(map(str, config.feature_shape))}), random init, batch {args.batch_size}; "
        f"median of {args.repeat} runs after one compile run")
    print(format_table(rows, ["method", "images", "wall_s", "images_per_s"]))
    finish(rec, args.out, args.name)


if __name__ == "__main__":
    main()
