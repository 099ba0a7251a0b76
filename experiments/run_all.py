"""Every experiment on one data set and checkpoint, then RESULTS.md beside the paper's numbers.

    python experiments/run_all.py --out results --results-md RESULTS.md     # ~30 min, 2 CPU cores
    python experiments/run_all.py --out /tmp/smoke --quick                   # a few minutes

Runs, in order, each into its own subfolder of --out with one shared
feature cache (``<out>/cache``): Table 1 (``table1.py``) under each AD / AI fill
(black, the paper's, in ``table1``; the normalisation mean colour in ``table1_mean``;
a blurred copy of the image in ``table1_blur``, both without ACE), Table 2 (``table2.py``),
Figure 4 (``figure4.py``), Figures 5–6 (``figures5_6.py``), the case studies
(``case_studies.py``) and the RI variant study (``variant_study.py``: Table 1 and 2 for both
RI variants on the embedded model and a second, VGG-11 model); Table 1, Figure 4 and the case studies include ACE unless --no-ace. Each step's wall time goes into
``<out>/run_all.json``; RESULTS.md (--results-md, default ``<out>/RESULTS.md``) is
written from the JSON files the steps just wrote, with the command, machine, date, the
code's commit (``ri_jax.provenance.code_version``) and timings.

Settings are sized for the embedded default (2,000 references, 1,000 unseen images,
VGG-19 width 1/8 at 96 px) to finish in about half an hour on 2 CPU cores (31.9 min for the
run recorded in results/run_all.json, ``total_wall_seconds``). Where they
differ from the paper, ``DRIVER_SETTINGS`` says so and RESULTS.md repeats it:
Figure 4 uses 100 inputs instead of 1,000 (ACE: the first 10), one run; ACE uses one
segmentation resolution and 5 TCAV repeats, and in Table 1 discovery sets of the 20
cluster members nearest each centre (Figure 4 and the case studies: the input and its 49
nearest references, as the paper's appendix). --quick shrinks everything further (a smoke test, not a result).

Each step runs as its own process (``python experiments/<step>.py``), or with --in-process
all in this one, where they share compiled programs (faster on small runs). RESULTS.md is
rendered by ``ri_jax.protocols.report``; the paper's numbers appear only there, in
columns labelled as the paper's, and never enter a results JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jax

import ri_jax
from common import HelpFormatter, prepare_output, write_json
from ri_jax.files import atomic_write_text
from ri_jax.cli import run_script
from ri_jax.models.loading import MODEL_SPEC_HELP, describe_model
from ri_jax.protocols.report import model_section, render_results
from ri_jax.provenance import code_version
from ri_jax.variants import DEFAULT_VARIANT, VARIANT_NAMES

ACE_ARGS = ["--ace", "--ace-segments", "15", "--ace-max-images", "20", "--ace-min-members", "5",
            "--ace-repeats", "5", "--ace-random-images", "50"]
# The steps ACE_ARGS go to (unless --no-ace), with what each adds: Figure 4 and the case
# studies discover on the input and its 49 nearest references (--ace-max-images 0), and
# Figure 4 evaluates ACE (slow) on only its first N sampled inputs.
ACE_STEP_ARGS = {
    "full": {"table1": [], "figure4": ["--ace-max-images", "0", "--ace-inputs", "10"],
             "case_studies": ["--ace-max-images", "0"]},
    "quick": {"table1": [], "figure4": ["--ace-max-images", "0", "--ace-inputs", "2"],
              "case_studies": ["--ace-max-images", "0"]},
}
DRIVER_SETTINGS = {
    "full": {
        # The faithfulness measures (deletion / insertion, ROAD, AD / AI at 5–50 %) on the
        # 100 unseen images spread over the set; the curves and ROAD do not depend on the fill, so the
        # other fills add only AD / AI at the keep fractions (--faithfulness keep).
        "interpret": ["--num-inputs", "4", "--html"],
        "table1": ["--runs", "5", "--faithfulness-images", "100"],
        "table1_mean": ["--runs", "5", "--fill", "mean", "--faithfulness", "keep"],
        "table1_blur": ["--runs", "5", "--fill", "blur", "--faithfulness", "keep"],
        "table2": ["--runs", "5"],
        "figure4": ["--num-inputs", "100", "--runs", "1"],
        "figures5_6": ["--runs", "5"],
        "case_studies": ["--num-inputs", "3", "--with-controls"],
        "variant_study": ["--runs", "3"],
    },
    "quick": {
        "interpret": ["--num-inputs", "2", "--html"],
        "table1": ["--runs", "1", "--unseen", "200", "--faithfulness-images", "8"],
        "table1_mean": ["--runs", "1", "--unseen", "200", "--fill", "mean", "--faithfulness",
                        "keep", "--faithfulness-images", "8"],
        "table1_blur": ["--runs", "1", "--unseen", "200", "--fill", "blur", "--faithfulness",
                        "keep", "--faithfulness-images", "8"],
        "table2": ["--runs", "1", "--unseen", "200"],
        "figure4": ["--num-inputs", "10", "--runs", "1", "--ks", "1,5,10"],
        "figures5_6": ["--runs", "1", "--qs", "1,10,50", "--unseen", "200"],
        "case_studies": ["--num-inputs", "1"],
        "variant_study": ["--runs", "1", "--unseen", "100", "--models", "default"],
    },
}
DEVIATIONS = {
    "full": ["Figure 4 averages over 100 sampled reference inputs (the paper: 1,000) and one run.",
             "ACE runs with one SLIC resolution (15 segments), concepts of more than 5 patches, 5 "
             "TCAV random counterparts and random patches from 50 references; in Table 1 its "
             "discovery sets are the 20 members nearest each cluster centre (Figure 4 and the "
             "case studies: the input and its 49 nearest references, as the paper's appendix).",
             "Figure 4 evaluates ACE on only the first 10 of its 100 sampled inputs.",
             "Table 1 is repeated with two fills the paper does not use (the normalisation's mean "
             "colour, and the image blurred), without ACE; the paper's fill, black, is the main "
             "table.",
             "Beside the paper's AD / AI at 20 %, Table 1 scores every method and control with "
             "deletion / insertion curves, ROAD and AD / AI at 5, 10, 20, 30 and 50 % kept, on "
             "unseen images evenly spaced over the set (each table says how many; measures the "
             "paper does not use)."],
    "quick": ["--quick: one run per table, 200 unseen images, 10 Figure 4 inputs with K ≤ 10, "
              "|Q| ∈ {1, 10, 50} for Figures 5–6, one case study, ACE on 2 Figure 4 inputs. "
              "A smoke test, not a result."],
}
STEPS = ("interpret", "table1", "table1_mean", "table1_blur", "table2", "figure4", "figures5_6",
         "case_studies", "variant_study")
# Steps that run RI with one variant (--ri-variant); the variant study runs both.
RI_VARIANT_STEPS = ("interpret", "table1", "table1_mean", "table1_blur", "table2", "figure4", "figures5_6",
                    "case_studies")
# Every step is one script; the extra Table 1 fills rerun table1.py with --fill.
SCRIPT_OF = {**{step: step for step in STEPS}, "table1_mean": "table1", "table1_blur": "table1"}
SCRIPTS = {step: Path(__file__).resolve().parent / f"{SCRIPT_OF[step]}.py" for step in STEPS}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="results folder (new or empty, unless --resume)")
    p.add_argument("--results-md", default=None, help="where to write RESULTS.md (default <out>/RESULTS.md)")
    p.add_argument("--data", default="default", help="as in every experiment script")
    p.add_argument("--model", "--checkpoint", dest="model", default="default",
                   help="as in every experiment script: " + MODEL_SPEC_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    p.add_argument("--ri-variant", default=DEFAULT_VARIANT, choices=VARIANT_NAMES,
                   help="RI variant of every step but the variant study, which runs both")
    p.add_argument("--no-ace", action="store_true", help="leave ACE out of Table 1, Figure 4 and the case studies")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    p.add_argument("--extra", action="append", default=[], metavar="STEP:ARGS",
                   help="extra arguments for one step, e.g. 'table1:--unseen 50' (repeatable)")
    p.add_argument("--resume", action="store_true", help="reuse --out and its feature cache")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--in-process", action="store_true",
                   help="run the steps in this process, not one process each: they share compiled "
                        "programs, which saves compilation on small runs")
    p.add_argument("--other-models", default="", metavar="DIR[,DIR]",
                   help="results folders of run_all on other models, summarised with their "
                        "verdicts in this RESULTS.md (each keeps its own RESULTS.md)")
    p.add_argument("--render-only", action="store_true",
                   help="only rebuild RESULTS.md from the run_all.json and step JSON in --out")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    args.other_models = [Path(d.strip()) for d in args.other_models.split(",") if d.strip()]
    for folder in args.other_models:
        if not (folder / "run_all.json").is_file():
            p.error(f"--other-models: {folder} holds no run_all.json (run run_all.py there first)")
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown or not args.steps:
        p.error(f"--steps: unknown or empty {unknown or args.steps}; choose from {', '.join(STEPS)}")
    extra = {}
    for item in args.extra:
        step, sep, rest = item.partition(":")
        if not sep or step not in STEPS:
            p.error(f"--extra: expected STEP:ARGS with STEP in {', '.join(STEPS)}, got {item!r}")
        extra.setdefault(step, []).extend(shlex.split(rest))
    args.extra = extra
    return args


def ace_argv(mode: str, step: str) -> list[str]:
    """ACE_ARGS with the step's own ACE_STEP_ARGS values replacing or joining them."""
    argv, extra = list(ACE_ARGS), ACE_STEP_ARGS[mode][step]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def step_argv(step: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The command line one step gets."""
    argv = ["--data", args.data, "--model", args.model, "--seed", str(args.seed),
            "--out", str(out / step), "--cache-dir", str(out / "cache")]
    mode = "quick" if args.quick else "full"
    argv += DRIVER_SETTINGS[mode][step]
    if step in ACE_STEP_ARGS[mode] and not args.no_ace:
        argv += ace_argv(mode, step)
    if step in RI_VARIANT_STEPS:
        argv += ["--ri-variant", args.ri_variant]
    if step == "variant_study" and args.model != "default":
        # The second default regime is a VGG-11 on the embedded data: another model's data
        # does not fit it, so a model of its own is studied alone.
        if "--models" in argv:
            del argv[argv.index("--models"):argv.index("--models") + 2]
        argv += ["--models", args.model]
    if args.resume:
        argv.append("--resume")
    if args.no_progress:
        argv.append("--no-progress")
    return argv + args.extra.get(step, [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    md_path = Path(args.results_md) if args.results_md else Path(args.out) / "RESULTS.md"
    if args.render_only:
        record_file = Path(args.out) / "run_all.json"
        if not record_file.is_file():
            sys.exit(f"--render-only: {record_file} is missing; run the driver first")
        record = json.loads(record_file.read_text())
        atomic_write_text(md_path, render_record(Path(args.out), md_path.parent, record,
                                                 args.other_models))
        print(f"wrote {md_path}")
        return record
    out = prepare_output(args.out, args.resume)
    command = "python experiments/run_all.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    timings, argvs = {}, {}
    started = time.perf_counter()
    for step in args.steps:
        argvs[step] = step_argv(step, args, out)
        print(f"== {step}: {' '.join(shlex.quote(a) for a in argvs[step])}", flush=True)
        t0 = time.perf_counter()
        run_step(step, argvs[step], in_process=args.in_process)
        timings[step] = time.perf_counter() - t0
    total = time.perf_counter() - started
    record = {"command": command, "steps": args.steps, "argv": argvs, "wall_seconds": timings,
              "total_wall_seconds": total, "in_process": args.in_process, "quick": args.quick,
              "ace": not args.no_ace,
              "deviations_from_paper": deviations(args),
              "data": args.data, "model": describe_model(args.model),
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "code": code_version()}
    write_json(out / "run_all.json", record)
    atomic_write_text(md_path, render_record(out, md_path.parent, record, args.other_models))
    print(f"wrote {md_path} ({total / 60:.1f} min)")
    return record


def deviations(args: argparse.Namespace) -> list[str]:
    """The driver's deviations from the paper, as this run was actually set."""
    lines = DEVIATIONS["quick" if args.quick else "full"]
    if args.no_ace:  # the ACE settings did not apply; say that ACE was left out instead
        lines = [d for d in lines if not (d.startswith("ACE") or "evaluates ACE" in d)]
        lines = lines + ["ACE was left out (--no-ace)."]
    lines = [d for d in lines if not d.startswith("Figure 4") or "figure4" in args.steps]
    return lines + [f"Step {step} ran with extra arguments: {' '.join(extra)}"
                    for step, extra in args.extra.items() if step in args.steps]


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def run_step(step: str, argv: list[str], *, in_process: bool = False) -> None:
    """Runs one step's script in its own process, or in this one; a failure names the step.

    In its own process a failing step exits the driver with the step's name. In this process
    a script's error exit does the same, and any other exception is raised with a note.
    """
    if in_process:
        try:
            importlib.import_module(SCRIPT_OF[step]).main(argv)
        except SystemExit as stop:  # a script's own error exit (its argument parser's)
            if stop.code not in (None, 0):
                sys.exit(f"{step}: {SCRIPTS[step].name} failed: {stop.code}")
        except Exception as error:  # raised as it is, traceback and all, naming the step
            error.add_note(f"in run_all step {step} ({SCRIPTS[step].name})")
            raise
        return
    # The child imports the same ri_jax as this process, installed or not.
    library_root = str(Path(ri_jax.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (library_root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(SCRIPTS[step]), *argv], env=env)
    if done.returncode != 0:
        sys.exit(f"{step}: {SCRIPTS[step].name} failed with exit status {done.returncode}")


def step_results(out: Path) -> dict[str, dict]:
    """Step name -> the result JSON that step wrote under ``out`` (steps not run left out)."""
    results = {}
    for step in STEPS:
        path = out / step / f"{SCRIPT_OF[step]}.json"
        if path.is_file():
            results[step] = json.loads(path.read_text())
    return results


def render_record(out: Path, md_dir: Path, record: dict, other_models: list[Path] = ()) -> str:
    """RESULTS.md from the step JSON files under ``out``, then each of ``other_models``
    (run_all folders of other models) in short; links relative to ``md_dir``."""
    figures = sorted(p.name for p in (out / "case_studies").glob("case_*.png"))
    text = render_results(record, step_results(out), rel=os.path.relpath(out, md_dir),
                          case_figures=figures)
    if other_models:
        text += ("\n## Other models\n\nThe same driver on models trained elsewhere, each "
                 "with its own RESULTS.md; the verdicts below are computed from their numbers.\n\n")
        for folder in other_models:
            other = json.loads((folder / "run_all.json").read_text())
            text += "\n".join(model_section(other, step_results(folder),
                                             rel=os.path.relpath(folder, md_dir))) + "\n"
    return text


if __name__ == "__main__":
    run_script(main)
