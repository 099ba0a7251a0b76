"""The RI variant study: Table 1 and Table 2 for the paper's and the authors' RI, per model.

    python experiments/variant_study.py --out runs/variants
    python experiments/variant_study.py --out runs/variants --models default,PATH --runs 3

For every model in --models and every variant in --variants, runs
``table1.py`` (without ACE, with its controls) and ``table2.py`` with ``--ri-variant``
into ``<out>/<model>/<variant>/``, then writes ``variant_study.json`` and
``variant_study.md``: per (model, variant) the methods' and controls' mAD / mAI, the
decision regions' ACU / CVR, RI's diagnostics (distinct polytopes, boundaries before and
after the loosen step, search steps, cosines) and a verdict computed from the numbers
(``ri_jax.protocols.variant_study``).

The default second model regime, ``results/models/vgg11_w4_asirra_mini``, is a VGG-11 at
width 1/4 (ψ 6×6×128) trained on the embedded data with this project's script:

    python experiments/train.py --data default --out results/models/vgg11_w4_asirra_mini \
        --arch vgg11 --width 0.25 --image-size 96 --epochs 30 --patience 10 --lr 5e-4 \
        --weight-decay 5e-4 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import ri_jax
from common import HelpFormatter, add_debug_arg, prepare_output, write_json
from ri_jax.files import atomic_write_text
from ri_jax.cli import positive_int, run_script
from ri_jax.models.loading import KERAS_PREFIX, MODEL_SPEC_HELP, describe_model
from ri_jax.protocols.report import variant_study_markdown
from ri_jax.protocols.variant_study import summarise_variant_study
from ri_jax.provenance import code_version
from ri_jax.variants import VARIANT_NAMES

HERE = Path(__file__).resolve().parent
SECOND_MODEL = HERE.parent / "results" / "models" / "vgg11_w4_asirra_mini"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="results folder (new or empty, unless --resume)")
    p.add_argument("--data", default="default", help="as in every experiment script (default: embedded)")
    p.add_argument("--model", "--checkpoint", dest="model", default="default",
                   help="first model regime: " + MODEL_SPEC_HELP)
    p.add_argument("--models", "--checkpoints", dest="models", default=None,
                   help="comma-separated model regimes, overriding --model (default: "
                        f"--model and {SECOND_MODEL.relative_to(HERE.parent)})")
    p.add_argument("--variants", default=",".join(VARIANT_NAMES),
                   help="comma-separated RI variants, each named explicitly to every table")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--runs", type=positive_int, default=3, help="runs of each table (default 3)")
    p.add_argument("--unseen", type=positive_int, default=1000, help="unseen test images (default 1000)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder shared by every run (default <out>/cache; keyed by "
                        "checkpoint, so models may share it)")
    p.add_argument("--resume", action="store_true",
                   help="reuse --out and its feature caches; tables already written are kept "
                        "(with a warning when another commit made them)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_arg(p)
    args = p.parse_args(argv)
    args.models = ([c.strip() for c in args.models.split(",") if c.strip()]
                   if args.models else [args.model, str(SECOND_MODEL)])
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = sorted(set(args.variants) - set(VARIANT_NAMES))
    if bad or not args.variants:
        p.error(f"--variants: unknown or empty {bad or args.variants}; choose from "
                f"{', '.join(VARIANT_NAMES)}")
    return args


def model_label(spec: str) -> str:
    return "embedded" if spec == "default" else Path(spec.removeprefix(KERAS_PREFIX)).name


def model_info(spec: str) -> dict:
    info = describe_model(spec)
    path = Path(spec.removeprefix(KERAS_PREFIX))
    if spec != "default" and path.resolve().is_relative_to(HERE.parent):
        info["spec"] = str(path.resolve().relative_to(HERE.parent))  # the repository's own
    return info


def run(script: str, argv: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(ri_jax.__file__).parent.parent),
                                                      env.get("PYTHONPATH")]))
    print("+", script, " ".join(argv), flush=True)
    done = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *argv], env=env)
    if done.returncode:
        sys.exit(f"variant_study.py: error: {script}.py failed with exit code {done.returncode}")


def stale_table_warning(path: Path, table: dict, code: str | None) -> str | None:
    """Why a table that --resume kept may not be this code's, or None when it is."""
    made = table.get("config", {}).get("code")
    if made == code:
        return None
    return (f"variant_study: --resume kept {path}, made at {made or 'an unrecorded commit'}, "
            f"not at this code ({code or 'unknown'}); remove its folder to recompute it")


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_output(args.out, args.resume)
    code = code_version()
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    entries = []
    for spec in args.models:
        label = model_label(spec)
        info = model_info(spec)
        for variant in args.variants:
            folder = out / label / variant
            results = {}
            for table in ("table1", "table2"):
                target = folder / table
                argv_ = ["--data", args.data, "--model", spec, "--out", str(target),
                         "--seed", str(args.seed), "--runs", str(args.runs),
                         "--unseen", str(args.unseen), "--ri-variant", variant,
                         "--cache-dir", str(cache)]
                if table == "table1":  # the faithfulness measures belong to run_all's table1 step
                    argv_ += ["--faithfulness", "none"]
                if args.resume and target.exists():
                    argv_.append("--resume")
                if args.no_progress:
                    argv_.append("--no-progress")
                kept = args.resume and (target / f"{table}.json").is_file()
                if not kept:
                    run(table, argv_)
                results[table] = json.loads((target / f"{table}.json").read_text())
                if kept and (warning := stale_table_warning(target / f"{table}.json",
                                                            results[table], code)):
                    print(warning, file=sys.stderr, flush=True)
            entries.append({"model": label, "model_info": info, "variant": variant, **results})
    study = summarise_variant_study(entries)
    study["config"] = {"models": args.models, "variants": args.variants,
                       "runs": args.runs, "unseen": args.unseen, "seed": args.seed,
                       "data": args.data, "code": code}
    write_json(out / "variant_study.json", study)
    text = variant_study_markdown(study)
    atomic_write_text(out / "variant_study.md", text)
    print(text)
    return study


if __name__ == "__main__":
    run_script(main)
