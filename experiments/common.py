"""Plumbing shared by the experiment scripts: arguments, data/model setup, outputs.

Every script takes ``--data`` (``default``, a folder ``root/<split>/<class>/``, or
``tfds:NAME``), ``--checkpoint`` (a folder written by ``experiments/train.py``;
``default`` is the embedded model), ``--out`` (a new or empty results folder;
``--resume`` reuses a folder and its feature cache), ``--seed`` and, where runs
repeat, ``--runs``. References are sampled from the train split
(``--refs-per-class``, 0 = all, §6.2) and unseen images from the test split
(``--unseen``), both seeded by ``--seed``.

Numbers and output folders are validated while parsing (``ri_jax.cli`` types, naming
the option); scripts run under ``ri_jax.cli.run_script``, which prints expected errors
as ``script.py: error: <message>`` (exit 2; ``--debug`` or ``RI_JAX_DEBUG=1`` for the
traceback).
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from ri_jax.baselines.ace import ACEConfig
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES
from ri_jax.checkpoint import write_json as write_strict_json
from ri_jax.cli import (DEBUG_FLAG, check_output_dir, int_at_least, non_negative_int,
                        output_dir, positive_float, positive_int)
from ri_jax.data import ImageSet, load_for_model, sample_count, sample_per_class
from ri_jax import distributed
from ri_jax.errors import RIInputError
from ri_jax.featurize import Features
from ri_jax.files import (LOCK_NAME, OutputLock, atomic_write_text, display_name,
                          remove_stale_temps)
from ri_jax.model import Model
from ri_jax.models.loading import MODEL_SPEC_HELP, load_model
from ri_jax.metrics import DEFAULT_FILL, FILLS
from ri_jax.protocols.ace_adapter import ACESettings
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.scoring import MaskingOptions
from ri_jax.provenance import code_version
from ri_jax.variants import DEFAULT_VARIANT, VARIANT_NAMES, ri_variant


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help``: the script's docstring as written, and every option's default (unless the
    option is required, has none, or its help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def add_html_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--html``: also write the interactive report ``<out>/index.html``."""
    p.add_argument("--html", action="store_true",
                   help="also write <out>/index.html, an interactive report that works offline "
                        "(images embedded; heat-map toggle, class and misclassified filters)")
    return p


def add_common_args(p: argparse.ArgumentParser, *, runs: int | None = None,
                    refs_per_class: int = 0, unseen: int | None = 1000) -> argparse.ArgumentParser:
    """Adds the stable, shared command-line options to ``p`` (``unseen=None``: no ``--unseen``)."""
    p.add_argument("--data", default="default",
                   help="'default' (embedded set), a folder root/<split>/<class>/, or tfds:NAME")
    p.add_argument("--model", "--checkpoint", dest="model", default="default",
                   help=MODEL_SPEC_HELP + "; --checkpoint is an alias")
    p.add_argument("--out", required=True, type=output_dir,
                   help="results folder (new or empty, unless --resume)")
    p.add_argument("--resume", action="store_true",
                   help="reuse --out and its cached features; result files there are rewritten")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of every random choice")
    if runs is not None:
        p.add_argument("--runs", type=positive_int, default=runs,
                       help="repetitions with seeds seed..seed+runs-1")
    p.add_argument("--refs-per-class", type=non_negative_int, default=refs_per_class,
                   help="reference images per class from the train split, drawn with --seed "
                        "(0 = all; the paper used 2500)")
    if unseen is not None:
        p.add_argument("--unseen", type=non_negative_int, default=unseen,
                       help="unseen images from the test split (0 = all)")
    p.add_argument("--cache-dir", default=None, type=output_dir,
                   help="feature cache folder (default <out>/cache); scripts may share one")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_arg(p)
    return p


def add_debug_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Documents ``--debug`` in ``--help`` (``ri_jax.cli.run_script`` acts on it)."""
    p.add_argument(DEBUG_FLAG, action="store_true",
                   help="show the Python traceback of expected errors (or set RI_JAX_DEBUG=1)")
    return p


def add_polytope_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--per-class`` (|V| = per-class × classes) and ``--num-boundaries`` (|Q|)."""
    p.add_argument("--per-class", type=positive_int, default=10,
                   help="interpretations per class: |V| = per-class × classes")
    p.add_argument("--num-boundaries", type=positive_int, default=DEFAULT_NUM_BOUNDARIES,
                   help="|Q| for RI")
    return add_ri_variant_arg(p)


def add_ri_variant_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--ri-variant {paper,authors}`` (``ri_jax.variants``; default the authors')."""
    p.add_argument("--ri-variant", default=DEFAULT_VARIANT, choices=VARIANT_NAMES,
                   help="RI as the authors' code runs it (a pool per input on the decision "
                        "boundary, δ = 0, their greedy's extras and loosen step: each input its "
                        "own polytope) or as the paper's text describes it (one shared Q at "
                        "sampled references, δ = τ(x))")
    return p


def ri_options(args: argparse.Namespace) -> RIOptions:
    """``RIOptions`` from ``--num-boundaries``, ``--batch-size`` and ``--ri-variant``."""
    return RIOptions(num_boundaries=args.num_boundaries, batch_size=args.batch_size,
                     variant=ri_variant(args.ri_variant))


def add_fill_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--fill and --blur-sigma: what AD / AI paint the dropped 80 % of the pixels with."""
    p.add_argument("--fill", choices=FILLS, default=DEFAULT_FILL,
                   help="what the dropped pixels become: black (raw 0, the paper's), mean (the "
                        "model's normalisation mean colour) or blur (the image under a strong "
                        "Gaussian blur)")
    p.add_argument("--blur-sigma", type=float, default=None,
                   help="σ in pixels of --fill blur (default: 0.1 × image size)")
    return p


def masking_options(args: argparse.Namespace, p: argparse.ArgumentParser | None = None
                    ) -> MaskingOptions:
    """The ``MaskingOptions`` of --fill / --blur-sigma; with ``p`` a bad σ is a usage error."""
    try:
        return MaskingOptions(fill=args.fill, blur_sigma=args.blur_sigma)
    except ValueError as e:
        if p is None:
            raise
        p.error(f"--blur-sigma: {e}")


def add_ace_args(p: argparse.ArgumentParser, *, max_images_help: str) -> argparse.ArgumentParser:
    """Adds ``--ace`` and the ``--ace-*`` settings shared by Table 1, Figure 4 and the case studies."""
    p.add_argument("--ace", action="store_true", help="add ACE (slow: segments every image)")
    p.add_argument("--ace-segments", default="15,50,80",
                   help="ACE's SLIC segment counts, comma-separated")
    p.add_argument("--ace-max-images", type=non_negative_int, default=0, help=max_images_help)
    p.add_argument("--ace-min-members", type=non_negative_int, default=ACEConfig.min_members,
                   help="patches a cluster needs to become an ACE concept")
    p.add_argument("--ace-repeats", type=int_at_least(2), default=ACEConfig.repeats,
                   help="TCAV random counterparts per ACE concept")
    p.add_argument("--ace-random-images", type=positive_int, default=50,
                   help="references (any class, seeded) whose patches form TCAV's random sets")
    return p


def ace_settings(args: argparse.Namespace) -> ACESettings | None:
    """The protocols' ACE settings from the command line (None without ``--ace``)."""
    if not args.ace:
        return None
    return ACESettings(config=ace_config(args), max_images=args.ace_max_images,
                       random_images=args.ace_random_images)


def ace_config(args: argparse.Namespace) -> ACEConfig:
    """ACE settings from the command line."""
    try:
        segments = tuple(int(s) for s in args.ace_segments.split(","))
        return ACEConfig(n_segments=segments, min_members=args.ace_min_members,
                         repeats=args.ace_repeats, batch_size=args.batch_size)
    except ValueError as e:
        raise RIInputError(f"--ace-*: {e}") from None


# Launch settings: they decide where the work runs, never what it computes, so they are
# left out of the results (a multi-process run writes the JSON of a one-process run).
LAUNCH_ARGS = ("coordinator", "num_processes", "process_id", "join_timeout")


def add_distributed_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds ``--coordinator``, ``--num-processes``, ``--process-id`` (docs/distributed.md)."""
    g = p.add_argument_group("multi-process runs (jax.distributed; see docs/distributed.md)")
    g.add_argument("--coordinator", default=None,
                   help="host:port of process 0's coordinator, or 'auto' for JAX's cluster "
                        f"detection (SLURM, Open MPI, TPU pods); default ${distributed.COORDINATOR_ENV}"
                        " or a one-process run")
    g.add_argument("--num-processes", type=positive_int, default=None,
                   help=f"processes in the run (default ${distributed.NUM_PROCESSES_ENV})")
    g.add_argument("--process-id", type=non_negative_int, default=None,
                   help=f"this process's rank, 0 writes the files (default ${distributed.PROCESS_ID_ENV})")
    g.add_argument("--join-timeout", type=positive_float, default=None,
                   help="seconds to wait for every process to join before failing with what is "
                        f"missing (default {distributed.LOOPBACK_JOIN_TIMEOUT_S:g} for a loopback "
                        f"coordinator, {distributed.REMOTE_JOIN_TIMEOUT_S:g} for another host)")
    return p


def start_run(args: argparse.Namespace) -> Path:
    """Joins a multi-process run if asked, then ``prepare_output`` on process 0.

    Returns:
      ``--out`` on process 0; on the others a throwaway folder, so only process 0's
      files are written (``--cache-dir``, when given, is used by every process).
    """
    try:
        distributed.initialize_from_args(args)  # before any JAX work, loading the model included
    except ValueError as e:
        raise RIInputError(str(e)) from None
    load_model(args.model)  # validated before anything is written to --out
    if distributed.is_main_process():
        out = prepare_output(args.out, args.resume)
    else:
        import atexit, shutil, tempfile
        out = Path(tempfile.mkdtemp(prefix=f"ri_jax_process{jax.process_index()}_"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
    distributed.barrier("start_run")
    return out


def prepare_run(args: argparse.Namespace) -> Path:
    """``prepare_output`` once ``--model`` is validated: a bad model writes nothing to --out."""
    load_model(args.model)
    return prepare_output(args.out, args.resume)


def prepare_output(out: str | Path, resume: bool) -> Path:
    """Creates the results folder and takes its lock for this process's life.

    Refuses a folder another live run holds (naming the lock, ``ri_jax.files.OutputLock``)
    and a non-empty folder unless resuming; temporary files of killed writes are removed.
    """
    out = check_output_dir(out, "--out")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = OutputLock.acquire(out, "--out")  # first: a concurrent run is named as such
    if existed and not resume and any(p.name != LOCK_NAME for p in out.iterdir()):
        lock.release()
        raise RIInputError(f"--out: {out} is not empty; choose a new folder, or pass --resume "
                           "to reuse it")
    remove_stale_temps(out)
    return out


def remove_stale_outputs(out: Path, patterns: Sequence[str], keep: Sequence[Path]) -> list[Path]:
    """Removes the files of ``out`` matching ``patterns`` that this run did not write.

    A ``--resume`` with other inputs or options would otherwise leave the earlier run's
    figures (or page) beside the new summary.

    Args:
      out: the results folder.
      patterns: globs of the files the script owns (e.g. ``"input_*.png"``).
      keep: the files this run wrote.

    Returns:
      The removed paths.
    """
    kept = {Path(k).resolve() for k in keep}
    stale = sorted({p for pattern in patterns for p in out.glob(pattern)
                    if p.is_file() and p.resolve() not in kept})
    for p in stale:
        p.unlink()
    return stale


def markdown_cell(text: object) -> str:
    """``text`` safe inside a Markdown table row or heading.

    ``|`` would split the cell and a line break would end the row, so they are escaped
    (``\\|``, ``\\n``); undecodable bytes of file names become ``\\xNN``.
    """
    shown = display_name(str(text)).replace("\\", "\\\\").replace("|", "\\|")
    return shown.replace("\r", "\\r").replace("\n", "\\n")


class Setup(NamedTuple):
    """Model, reference set and unseen set of one experiment, with their features."""

    model: Model
    references: ImageSet
    unseen: ImageSet
    ref_features: Features
    unseen_features: Features


def feature_cache(args: argparse.Namespace, out: Path) -> Path:
    """The feature cache folder, ``--cache-dir`` or ``<out>/cache``, checked (creates nothing)."""
    cache = Path(args.cache_dir) if getattr(args, "cache_dir", None) else out / "cache"
    check_output_dir(cache, "--cache-dir")
    return cache


def load_setup(args: argparse.Namespace, out: Path, *, need_unseen: bool = True) -> Setup:
    """Loads the model and data, samples references/unseen images, computes (cached) features."""
    cache = feature_cache(args, out)  # before any computation
    model = load_model(args.model)
    train = load_data(args, "train", model)
    refs = train.subset(sample_per_class(train.labels, args.refs_per_class, seed=args.seed))
    progress = not args.no_progress
    # One process: compute_features itself; several: each computes its share of batches.
    ref_feats = distributed.distributed_features(model, refs, batch_size=args.batch_size,
                                                 cache_dir=cache, progress=progress,
                                                 desc="reference features")
    if need_unseen:
        test = load_data(args, "test", model)
        unseen = test.subset(sample_count(len(test), args.unseen, seed=args.seed + 1))
        unseen_feats = distributed.distributed_features(
            model, unseen, batch_size=args.batch_size, cache_dir=cache, progress=progress,
            desc="unseen features")
    else:
        unseen, unseen_feats = refs.subset([]), None
    return Setup(model, refs, unseen, ref_feats, unseen_feats)


def load_data(args: argparse.Namespace, split: str, model: Model) -> ImageSet:
    """``--data``'s ``split`` at the model's input size, labelled in its class order."""
    return load_for_model(args.data, split, image_size=model.image_size,
                          class_names=model.class_names)


def print_written(out: Path) -> None:
    """Says on stderr which files the run left in ``out`` (its feature cache aside)."""
    import sys
    files = sorted(p.relative_to(out) for p in Path(out).rglob("*")
                   if p.is_file() and p.relative_to(out).parts[0] != "cache"
                   and not p.name.startswith("."))
    print(f"wrote {len(files)} file(s) into {out}: " + ", ".join(map(str, files)),
          file=sys.stderr, flush=True)


def describe_run(args: argparse.Namespace, **extra: Any) -> dict:
    """The configuration block written with every result file."""
    return {**{k: v for k, v in vars(args).items()
               if k not in ("no_progress", "debug") + LAUNCH_ARGS},
            "jax": jax.__version__, "backend": jax.default_backend(),
            "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "code": code_version(), **extra}


def write_json(path: Path, payload: dict) -> None:
    """Strict JSON (NaN/inf as null), written atomically (``ri_jax.checkpoint.write_json``)."""
    write_strict_json(path, payload)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV (one column per key seen), written whole or not at all."""
    text = io.StringIO(newline="")
    if rows:
        w = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, text.getvalue())


def parse_indices(text: str, size: int) -> np.ndarray:
    """Test-split indices from ``"i,j,k"``; each must lie in [0, size), no repeats."""
    try:
        idx = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--inputs: expected comma-separated integers, got {text!r}") from None
    if not idx:
        raise ValueError("--inputs: no index given")
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise ValueError(f"--inputs: indices {bad} are outside the test split [0, {size})")
    if len(set(idx)) != len(idx):
        raise ValueError(f"--inputs: repeated indices in {idx}")
    return np.asarray(idx, np.int64)


if __name__ == "__main__":
    import sys
    sys.exit("experiments/common.py holds the scripts' shared options and plumbing; run one of "
             "interpret.py, table1.py, table2.py, figure4.py, figures5_6.py, case_studies.py, "
             "variant_study.py, reproduce.py, run_all.py or train.py")
