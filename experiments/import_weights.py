r"""Convert ImageNet VGG weights into an ri_jax checkpoint folder (see docs/reproduction.md).

    python experiments/import_weights.py --torchvision vgg19-dcbb9e9d.pth --out runs/vgg19_imagenet
    python experiments/import_weights.py --keras-h5 vgg19_weights_tf_dim_ordering_tf_kernels.h5 \
        --out runs/vgg19_imagenet

The checkpoint holds the network exactly as the file defines it (arch, width and class
count read from the shapes; the normalisation from ``ri_jax.pretrained.imagenet_normalization``),
so ``load_checkpoint`` + ``make_vgg`` reproduce the source model's logits. Nothing is
downloaded: fetch the file yourself.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from common import HelpFormatter
from ri_jax.checkpoint import save_checkpoint
from ri_jax.cli import run_script
from ri_jax.pretrained import convert, foreign_config, read_weights, weight_format


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="PTH", help="torchvision VGG state dict (.pth/.pt)")
    src.add_argument("--keras-h5", metavar="H5", help="Keras VGG weights (.h5), e.g. "
                     "vgg19_weights_tf_dim_ordering_tf_kernels.h5")
    p.add_argument("--out", required=True, help="checkpoint folder to write (new or empty unless --force)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side for the config (torchvision: any multiple of 32, default 224; "
                        "Keras weights fix it)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    flag, path, want = (("--torchvision", args.torchvision, "torchvision") if args.torchvision
                        else ("--keras-h5", args.keras_h5, "keras"))
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        sys.exit(f"--out: {out} exists and is not an empty folder; choose another or pass --force")
    try:
        found = weight_format(path)
        if found != want:
            raise ValueError(f"{path} holds {found} weights; pass it with "
                             f"{'--torchvision' if found == 'torchvision' else '--keras-h5'}")
        weights = read_weights(path)
        config = foreign_config(weights, image_size=args.image_size)
        params = convert(weights, config)
    except (ValueError, OSError, ImportError) as e:
        sys.exit(f"{flag}: {e}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    extra = {"imported_from": {"source": found, "file": str(Path(path).resolve()),
                               "sha256": digest.hexdigest()}}
    save_checkpoint(out, params, config, extra=extra)
    print(f"wrote {out}: {config.arch} width {config.width:g}, {config.num_classes} classes, "
          f"{config.image_size} px, mean {config.mean}, std {config.std} (from {found} weights)")
    return out


if __name__ == "__main__":
    run_script(main)
