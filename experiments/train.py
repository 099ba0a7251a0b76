r"""Train a VGG classifier for RI, on any data source.

The embedded model shipped in ``ri_jax/assets/vgg19_w8_asirra_mini`` was made with
this command (also in the README; its settings are in the checkpoint's config.json):

    python experiments/train.py --data default --out runs/vgg19_w8 --arch vgg19 --width 0.125 \
        --image-size 96 --epochs 70 --lr 5e-4 --weight-decay 5e-4 --seed 0

Resume an interrupted run with ``--resume`` (same ``--out``). Fine-tune ImageNet
weights with ``--init imagenet:PATH`` (a torchvision ``.pth`` or Keras ``.h5``
VGG-19 file; see docs/reproduction.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from common import HelpFormatter
from ri_jax.cli import (DEBUG_FLAG, check_output_dir, non_negative_float, non_negative_int,
                        open_fraction, output_dir, positive_float, positive_int, run_script,
                        unit_interval)
from ri_jax.data import load_dataset
from ri_jax.errors import RIInputError
from ri_jax.files import OutputLock
from ri_jax.models.vgg import VGG_LAYERS, ModelConfig
from ri_jax.training import TrainConfig, train_and_evaluate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data", default="default", help="'default', a folder root/<split>/<class>/, or tfds:NAME")
    p.add_argument("--out", required=True, type=output_dir,
                   help="checkpoint folder (must be new or empty unless --resume)")
    p.add_argument("--arch", default="vgg19", choices=sorted(VGG_LAYERS), help="VGG configuration")
    p.add_argument("--width", type=positive_float, default=0.125, help="channel multiplier")
    p.add_argument("--image-size", type=image_size, default=96,
                   help="square input side, a multiple of 32")
    p.add_argument("--dropout", type=unit_interval, default=0.5, help="dropout between the FC layers")
    t = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=t.epochs,
                   help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=positive_int, default=t.batch_size, help="images per step")
    p.add_argument("--lr", type=positive_float, default=t.lr,
                   help="peak learning rate (after warmup, cosine decay)")
    p.add_argument("--weight-decay", type=non_negative_float, default=t.weight_decay,
                   help="weight decay")
    p.add_argument("--optimizer", default=t.optimizer, choices=["adamw", "sgd"],
                   help="AdamW, or SGD with momentum 0.9")
    p.add_argument("--warmup-epochs", type=non_negative_int, default=t.warmup_epochs,
                   help="epochs of linear warmup")
    p.add_argument("--val-fraction", type=open_fraction, default=t.val_fraction,
                   help="stratified share of train held out for validation (early stopping)")
    p.add_argument("--patience", type=positive_int, default=t.patience,
                   help="epochs without a validation gain before stopping")
    p.add_argument("--no-augment", action="store_true",
                   help="no random crops, flips or brightness/contrast jitter")
    p.add_argument("--seed", type=non_negative_int, default=t.seed,
                   help="seed of initialisation, split and batches")
    p.add_argument("--init", default=None, help="imagenet:PATH to start from ImageNet VGG-19 weights")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(DEBUG_FLAG, action="store_true",
                   help="show the Python traceback of expected errors (or set RI_JAX_DEBUG=1)")
    return p.parse_args(argv)


def image_size(text: str) -> int:
    """argparse type: a positive multiple of 32 (VGG halves the side five times)."""
    size = positive_int(text)
    if size % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32, got {text!r}")
    return size


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = check_output_dir(args.out, "--out")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise RIInputError(f"--out: {out} exists and is not empty; choose a new folder or pass "
                           "--resume")
    classes = load_dataset(args.data, "train", image_size=args.image_size).class_names
    model_config = ModelConfig(arch=args.arch, width=args.width, image_size=args.image_size,
                               num_classes=len(classes), class_names=classes, dropout=args.dropout)
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               weight_decay=args.weight_decay, optimizer=args.optimizer,
                               warmup_epochs=args.warmup_epochs, val_fraction=args.val_fraction,
                               patience=args.patience, augment=not args.no_augment, seed=args.seed)
    init_params = None
    if args.init:
        kind, _, path = args.init.partition(":")
        if kind != "imagenet" or not path:
            raise RIInputError(f"--init: expected imagenet:PATH, got {args.init!r}")
        from ri_jax.pretrained import imagenet_normalization, load_imagenet_params, weight_format
        # Use the normalisation under which the imported network is reproduced exactly.
        mean, std = imagenet_normalization(weight_format(path))
        model_config = dataclasses.replace(model_config, mean=mean, std=std)
        init_params = load_imagenet_params(path, model_config, key=jax.random.key(args.seed + 1))
    out.mkdir(parents=True, exist_ok=True)
    OutputLock.acquire(out, "--out")  # one run per folder, held until this process exits
    summary = train_and_evaluate(model_config, train_config, args.data, out, resume=args.resume,
                                 init_params=init_params, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run_script(main)
