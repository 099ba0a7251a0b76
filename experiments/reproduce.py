r"""Reproduce the paper's experiments on one dataset with one command (docs/reproduction.md).

    python experiments/reproduce.py --dataset asirra --data data/asirra \
        --imagenet vgg19-dcbb9e9d.pth --out runs/asirra [--seed 0] [--dry-run] [--resume]

Runs, as subprocesses, the experiment scripts in order: fine-tune ImageNet VGG-19
(train.py) → Table 1 (table1.py) → Table 2 (table2.py) → Figure 4 (figure4.py) →
Figures 5/6 (figures5_6.py) → case studies (case_studies.py), with the per-dataset
settings of §6.2 (``RECIPES``). ``--dry-run`` checks the inputs and prints the plan
without computing anything. ``--resume`` continues in a non-empty ``--out`` and
skips the steps that already finished there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from common import HelpFormatter
from ri_jax.variants import VARIANT_NAMES
from ri_jax.files import atomic_write_text
from ri_jax.cli import run_script
from ri_jax.data import IMAGE_EXTENSIONS
from ri_jax.pretrained import weight_format

EXPERIMENTS = Path(__file__).resolve().parent
PLAN_FILE = "plan.json"
DONE_SUFFIX = ".done"
IMAGE_SIZE = 224  # the paper's VGG-19 input
RUNS = 5  # independent RI runs behind each mean ± std (Tables 1–2, Figures 5–6)


@dataclasses.dataclass(frozen=True)
class DatasetRecipe:
    """Per-dataset settings (§6.2); the fine-tuning numbers are ours, the paper gives none.

    Attributes:
      title: the dataset as the paper names it.
      num_classes: class folders expected in each split.
      refs_per_class: reference images sampled per class from train (0 = all, as for FOOD).
      unseen: test images sampled as the unseen set.
      epochs, batch_size, lr, weight_decay, optimizer, warmup_epochs: fine-tuning from ImageNet.
    """

    title: str
    num_classes: int
    refs_per_class: int
    unseen: int = 1000
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    warmup_epochs: int = 1


RECIPES: dict[str, DatasetRecipe] = {
    "asirra": DatasetRecipe("ASIRRA (Kaggle Dogs vs. Cats)", 2, refs_per_class=2500),
    "gc": DatasetRecipe("Gender Classification", 2, refs_per_class=2500),
    "ro": DatasetRecipe("Retinal OCT (Kermany et al.)", 4, refs_per_class=2500, epochs=4),
    "food": DatasetRecipe("Food-5K", 2, refs_per_class=0, epochs=20),
}


@dataclasses.dataclass(frozen=True)
class Step:
    """One experiment script run after training, and the options it takes.

    Attributes:
      name: script ``experiments/<name>.py`` and results folder ``<out>/<name>``.
      refs, unseen, runs: whether it gets ``--refs-per-class``, ``--unseen``, ``--runs``.
      extra: further arguments.
    """

    name: str
    refs: bool
    unseen: bool
    runs: bool
    extra: tuple[str, ...] = ()


STEPS = (
    Step("table1", refs=True, unseen=True, runs=True, extra=("--ace",)),  # §6.4, ACE included
    Step("table2", refs=True, unseen=True, runs=True),  # App. D ACU-GT/ACU-MD/CVR
    Step("figure4", refs=True, unseen=False, runs=False),  # App. C, on reference images only
    Step("figures5_6", refs=True, unseen=True, runs=True),  # App. E, |Q| sweep
    Step("case_studies", refs=True, unseen=False, runs=False),  # §6.3 and App. G, Fig. 2, 3, 8
)


class Command(NamedTuple):
    """One subprocess of the plan: a step name, its argv and the folder it writes."""

    name: str
    argv: tuple[str, ...]
    workdir: str


def plan(dataset: str, data: str, imagenet: str, out: Path, seed: int, *, ace: bool = True,
         ri_variant: str = "paper") -> list[Command]:
    """The command lines that reproduce ``dataset``: train, then every step of ``STEPS``.

    Args:
      dataset: a key of ``RECIPES``.
      data: dataset spec for every script (folder or ``tfds:NAME``).
      imagenet: ImageNet VGG-19 weights file for ``train.py --init``.
      out: run folder; the checkpoint goes to ``out/checkpoint``, step results to ``out/<step>``.
      seed: ``--seed`` of every script.
      ace: keep ACE in Table 1 (by far its slowest method).
      ri_variant: ``--ri-variant`` of every step (``"paper"`` or ``"authors"``).
    """
    r = RECIPES[dataset]
    checkpoint = out / "checkpoint"
    py = sys.executable
    train = (py, str(EXPERIMENTS / "train.py"), "--data", data, "--out", str(checkpoint),
             "--init", f"imagenet:{imagenet}", "--arch", "vgg19", "--width", "1.0",
             "--image-size", str(IMAGE_SIZE), "--epochs", str(r.epochs),
             "--batch-size", str(r.batch_size), "--lr", str(r.lr), "--weight-decay", str(r.weight_decay),
             "--optimizer", r.optimizer, "--warmup-epochs", str(r.warmup_epochs), "--seed", str(seed))
    commands = [Command("train", train, str(checkpoint))]
    for step in STEPS:
        argv = [py, str(EXPERIMENTS / f"{step.name}.py"), "--data", data,
                "--checkpoint", str(checkpoint), "--out", str(out / step.name), "--seed", str(seed)]
        if step.runs:
            argv += ["--runs", str(RUNS)]
        if step.refs:
            argv += ["--refs-per-class", str(r.refs_per_class)]
        if step.unseen:
            argv += ["--unseen", str(r.unseen)]
        argv += [a for a in step.extra if ace or a != "--ace"]
        argv += ["--ri-variant", ri_variant]
        commands.append(Command(step.name, tuple(argv), str(out / step.name)))
    return commands


def check_inputs(dataset: str, data: str, imagenet: str, out: Path, resume: bool) -> None:
    """Fails early, naming the argument, on inputs that would only break hours into a run.

    Raises:
      ValueError: the message starts with the offending option.
    """
    try:
        weight_format(imagenet)
    except (ValueError, OSError) as e:
        raise ValueError(f"--imagenet: {e}") from None
    if data.startswith("tfds:"):
        # NAME[/CONFIG][:VERSION] as tfds.load spells it.
        if not re.fullmatch(r"[a-z][a-z0-9_]*(/[\w.-]+)?(:\d+(\.(\d+|\*)){0,2})?", data[5:]):
            raise ValueError(f"--data: {data!r} is not a well-formed TFDS name "
                             "(tfds:NAME[/CONFIG][:VERSION])")
    else:
        _check_folder(Path(data), RECIPES[dataset].num_classes)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out: {out} exists and is not a folder")
        if any(out.iterdir()) and not resume:
            raise ValueError(f"--out: {out} is not empty; choose a new folder or pass --resume")


def _check_folder(root: Path, num_classes: int) -> None:
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder (expected root/<split>/<class>/<image> "
                         "or tfds:NAME)")
    classes = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise ValueError(f"--data: {root} has no {split!r} split folder ({split_dir})")
        names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(names) < 2:
            raise ValueError(f"--data: {split_dir} needs at least 2 class folders, found {names}")
        for name in names:
            if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in (split_dir / name).iterdir()):
                raise ValueError(f"--data: class folder {split_dir / name} holds no images")
        classes[split] = names
    if classes["train"] != classes["test"]:
        raise ValueError(f"--data: train classes {classes['train']} differ from "
                         f"test classes {classes['test']}")
    if len(classes["train"]) != num_classes:
        raise ValueError(f"--data: {len(classes['train'])} classes {classes['train']}, "
                         f"the dataset has {num_classes}")


def execute(commands: list[Command], out: Path, *, resume: bool,
            run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Runs ``commands`` in order, recording each finished step in ``out``.

    Args:
      commands: from ``plan``.
      out: the run folder; gets ``plan.json`` and a ``<step>.done`` marker per finished step.
      resume: skip steps already marked done and pass ``--resume`` to a step whose folder
        an interrupted run left behind; the recorded plan must match ``commands``.
      run: ``subprocess.run``-like callable (injected by tests).

    Returns:
      Names of the steps that ran.

    Raises:
      ValueError: ``--resume`` against a different plan, or a missing experiment script.
      RuntimeError: a step exited with a non-zero status (later steps are not started).
    """
    for c in commands:
        if not Path(c.argv[1]).is_file():
            raise ValueError(f"{c.name}: experiment script {c.argv[1]} does not exist")
    recorded = [{"name": c.name, "argv": list(c.argv)} for c in commands]
    plan_file = out / PLAN_FILE
    if resume and plan_file.is_file() and json.loads(plan_file.read_text()) != recorded:
        raise ValueError(f"--resume: {plan_file} records a different plan (other dataset, data, "
                         "weights or seed); use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan_file, json.dumps(recorded, indent=2))
    ran = []
    for c in commands:
        marker = out / f"{c.name}{DONE_SUFFIX}"
        if resume and marker.is_file():
            print(f"[reproduce] {c.name}: already done, skipped", flush=True)
            continue
        argv = list(c.argv)
        workdir = Path(c.workdir)
        if resume and workdir.is_dir() and any(workdir.iterdir()):
            argv.append("--resume")  # every experiment script continues its own partial work
        print(f"[reproduce] {c.name}: {shlex.join(argv)}", flush=True)
        status = run(argv).returncode
        if status != 0:
            raise RuntimeError(f"{c.name}: exited with status {status}; fix it and rerun with --resume")
        atomic_write_text(marker, "")
        ran.append(c.name)
    return ran


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(RECIPES),
                   help="which of the paper's datasets (its recipe: image size, references, runs)")
    p.add_argument("--data", required=True, help="folder root/{train,test}/<class>/<image>, or tfds:NAME")
    p.add_argument("--imagenet", required=True, help="ImageNet VGG-19 weights: torchvision .pth or Keras .h5")
    p.add_argument("--out", required=True, type=Path, help="run folder (new or empty unless --resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--no-ace", action="store_true", help="leave ACE out of Table 1 (it is slow)")
    p.add_argument("--ri-variant", default="paper", choices=VARIANT_NAMES,
                   help="RI of every step, named explicitly on each one: as the paper's text "
                        "describes it (reproducing its tables) or as the authors' code runs it")
    p.add_argument("--dry-run", action="store_true", help="check inputs and print the plan only")
    p.add_argument("--resume", action="store_true", help="continue in --out, skipping finished steps")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_inputs(args.dataset, args.data, args.imagenet, args.out, args.resume)
    except ValueError as e:
        parser.error(str(e))
    # Absolute paths, so a resumed run may start from another working directory.
    data = args.data if args.data.startswith("tfds:") else str(Path(args.data).resolve())
    commands = plan(args.dataset, data, str(Path(args.imagenet).resolve()), args.out.resolve(), args.seed,
                    ace=not args.no_ace, ri_variant=args.ri_variant)
    recipe = RECIPES[args.dataset]
    print(f"# {recipe.title}: {len(commands)} steps into {args.out}")
    for c in commands:
        missing = "" if Path(c.argv[1]).is_file() else "  # script missing"
        print(f"{shlex.join(c.argv)}{missing}")
    if args.dry_run:
        return 0
    try:
        execute(commands, args.out, resume=args.resume)
    except (ValueError, RuntimeError) as e:
        sys.exit(f"reproduce: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
