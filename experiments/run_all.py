"""Every experiment on one data set and checkpoint, then RESULTS.md beside the paper's numbers.

    python experiments/run_all.py --out results --results-md RESULTS.md     # ~15 min, 2 CPU cores
    python experiments/run_all.py --out /tmp/smoke --quick                   # a few minutes

Runs in this process, in order, each into its own subfolder of --out with one shared
feature cache (``<out>/cache``): Table 1 (``table1.py``), Table 2 (``table2.py``),
Figure 4 (``figure4.py``), Figures 5–6 (``figures5_6.py``) and the case studies
(``case_studies.py``); Table 1, Figure 4 and the case studies include ACE unless --no-ace. Each step's wall time goes into
``<out>/run_all.json``; RESULTS.md (--results-md, default ``<out>/RESULTS.md``) is
written from the JSON files the steps just wrote, with the command, machine, date and
timings.

Settings are sized for the embedded default (2,000 references, 1,000 unseen images,
VGG-19 width 1/8 at 96 px) to finish in about 15 minutes on 2 CPU cores. Where they
differ from the paper, ``DRIVER_SETTINGS`` says so and RESULTS.md repeats it:
Figure 4 uses 100 inputs instead of 1,000 (ACE: the first 10), one run; ACE uses one
segmentation resolution and 5 TCAV repeats, and in Table 1 discovery sets of the 20
cluster members nearest each centre (Figure 4 and the case studies: the input and its 49
nearest references, as the paper's appendix). --quick shrinks everything further (a smoke test, not a result).

The paper's numbers appear only in RESULTS.md, in columns labelled as the paper's
(ASIRRA, typed from the text of its Tables 1 and 2, ``PAPER_TABLE1`` / ``PAPER_TABLE2``);
they never enter a results JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax

import case_studies
import figure4
import figures5_6
import table1
import table2
from common import format_mean_std, markdown_table, prepare_output, write_json
from ri_jax.checkpoint import load_checkpoint

# The paper's ASIRRA rows (ImageNet-pretrained VGG-19, 2,500 references per class, 1,000
# unseen images), typed from Table 1 and Table 2 of the paper. RESULTS.md only.
PAPER_TABLE1 = {
    "RI": ((2.00, 0.06), (30.72, 0.83)),
    "Grad-CAM": ((2.30, 0.09), (32.90, 0.39)),
    "Grad-CAM++": ((3.07, 0.02), (29.12, 0.42)),
    "Score-CAM": ((3.72, 0.09), (28.10, 0.23)),
    "ACE": ((36.27, 0.78), (1.36, 0.2)),
}
PAPER_TABLE2 = {  # (RI mean, RI std, F)
    "reference": {"ACU-GT": (99.85, 0.04, 100.00), "ACU-MD": (99.85, 0.04, 100.00),
                  "CVR": (99.83, 0.05, 100.00)},
    "unseen": {"ACU-GT": (98.38, 0.12, 98.80), "ACU-MD": (99.28, 0.08, 100.00),
               "CVR": (99.84, 0.14, 100.00)},
}

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
        "table1": ["--runs", "5"],
        "table2": ["--runs", "5"],
        "figure4": ["--num-inputs", "100", "--runs", "1"],
        "figures5_6": ["--runs", "5"],
        "case_studies": ["--num-inputs", "3", "--with-controls"],
    },
    "quick": {
        "table1": ["--runs", "1", "--unseen", "200"],
        "table2": ["--runs", "1", "--unseen", "200"],
        "figure4": ["--num-inputs", "10", "--runs", "1", "--ks", "1,5,10"],
        "figures5_6": ["--runs", "1", "--qs", "1,10,50", "--unseen", "200"],
        "case_studies": ["--num-inputs", "1"],
    },
}
DEVIATIONS = {
    "full": ["Figure 4 averages over 100 sampled reference inputs (the paper: 1,000) and one run.",
             "ACE runs with one SLIC resolution (15 segments), concepts of more than 5 patches, 5 "
             "TCAV random counterparts and random patches from 50 references; in Table 1 its "
             "discovery sets are the 20 members nearest each cluster centre (Figure 4 and the "
             "case studies: the input and its 49 nearest references, as the paper's appendix).",
             "Figure 4 evaluates ACE on only the first 10 of its 100 sampled inputs."],
    "quick": ["--quick: one run per table, 200 unseen images, 10 Figure 4 inputs with K ≤ 10, "
              "|Q| ∈ {1, 10, 50} for Figures 5–6, one case study, ACE on 2 Figure 4 inputs. "
              "A smoke test, not a result."],
}
STEPS = ("table1", "table2", "figure4", "figures5_6", "case_studies")
MODULES = {"table1": table1, "table2": table2, "figure4": figure4, "figures5_6": figures5_6,
           "case_studies": case_studies}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (new or empty, unless --resume)")
    p.add_argument("--results-md", default=None, help="where to write RESULTS.md (default <out>/RESULTS.md)")
    p.add_argument("--data", default="default", help="as in every experiment script")
    p.add_argument("--checkpoint", default="default", help="as in every experiment script")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    p.add_argument("--no-ace", action="store_true", help="leave ACE out of Table 1, Figure 4 and the case studies")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    p.add_argument("--extra", action="append", default=[], metavar="STEP:ARGS",
                   help="extra arguments for one step, e.g. 'table1:--unseen 50' (repeatable)")
    p.add_argument("--resume", action="store_true", help="reuse --out and its feature cache")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render-only", action="store_true",
                   help="only rebuild RESULTS.md from the run_all.json and step JSON in --out")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
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
    argv = ["--data", args.data, "--checkpoint", args.checkpoint, "--seed", str(args.seed),
            "--out", str(out / step), "--cache-dir", str(out / "cache")]
    mode = "quick" if args.quick else "full"
    argv += DRIVER_SETTINGS[mode][step]
    if step in ACE_STEP_ARGS[mode] and not args.no_ace:
        argv += ace_argv(mode, step)
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
        md_path.write_text(render_results(Path(args.out), md_path.parent, record))
        print(f"wrote {md_path}")
        return record
    out = prepare_output(args.out, args.resume)
    command = "python experiments/run_all.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    timings, argvs, results = {}, {}, {}
    started = time.perf_counter()
    for step in args.steps:
        argvs[step] = step_argv(step, args, out)
        print(f"== {step}: {' '.join(shlex.quote(a) for a in argvs[step])}", flush=True)
        t0 = time.perf_counter()
        results[step] = MODULES[step].main(argvs[step])
        timings[step] = time.perf_counter() - t0
    total = time.perf_counter() - started
    record = {"command": command, "steps": args.steps, "argv": argvs, "wall_seconds": timings,
              "total_wall_seconds": total, "quick": args.quick, "ace": not args.no_ace,
              "deviations_from_paper": DEVIATIONS["quick" if args.quick else "full"],
              "data": args.data, "checkpoint": args.checkpoint,
              "model": dataclasses.asdict(load_checkpoint(
                  None if args.checkpoint == "default" else args.checkpoint)[1]),
              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_json(out / "run_all.json", record)
    md_path.write_text(render_results(out, md_path.parent, record))
    print(f"wrote {md_path} ({total / 60:.1f} min)")
    return record


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def _load(out: Path, step: str) -> dict | None:
    path = out / step / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def ordering(scores: dict[str, float], lower_is_better: bool) -> str:
    """Methods best first, e.g. ``RI < Grad-CAM < …`` (``>`` when higher is better)."""
    names = sorted(scores, key=lambda n: scores[n], reverse=not lower_is_better)
    return (" < " if lower_is_better else " > ").join(names)


def controls_verdict(methods: dict, controls: dict) -> list[str]:
    """Says, from the numbers, whether the random-mask control beats the paper's methods."""
    random = controls.get("Random")
    if not random:
        return []
    lines = []
    for metric, low in (("mAD", True), ("mAI", False)):
        best = (min if low else max)(methods, key=lambda n: methods[n][metric]["mean"])
        r, b = random[metric]["mean"], methods[best][metric]["mean"]
        spread = random[metric]["std"] + methods[best][metric]["std"]
        beats = r < b if low else r > b
        if abs(r - b) <= spread:
            verdict_text = "as good as the best method (within the run-to-run spread)"
        elif beats:
            verdict_text = "better than every method"
        else:
            verdict_text = "worse than the best method"
        lines.append(f"- Control, {metric}: a random 20 % mask scores {r:.2f}, the best method "
                     f"({best}) {b:.2f} (spread {spread:.2f}): the random mask is {verdict_text}.")
    if any("better than every" in line or "as good as" in line for line in lines):
        lines.append("- So on this model and data, keeping 20 % of the pixels chosen by any of the "
                     "methods does not preserve the class score better than keeping 20 % at random "
                     "(on the metric(s) above): differences between the methods are real (see the stds) but "
                     "AD/AI at this scale say little about whether an interpretation finds the "
                     "evidence the model uses. A likely cause is that a 96 px image keeps most of "
                     "its colour and texture statistics under a scattered random mask, while a "
                     "heat-map mask keeps one blob.")
    return lines + [""]


def table1_section(t1: dict) -> list[str]:
    methods, controls = t1["methods"], t1["controls"]
    rows = []
    for name, s in methods.items():
        paper = PAPER_TABLE1.get(name)
        rows.append([name, format_mean_std(s["mAD"]), format_mean_std(s["mAI"]),
                     _pm(*paper[0]) if paper else "–", _pm(*paper[1]) if paper else "–"])
    for name, s in controls.items():
        rows.append([f"{name} (control)", format_mean_std(s["mAD"]), format_mean_std(s["mAI"]),
                     "not in the paper", "not in the paper"])
    ours_ad = {n: s["mAD"]["mean"] for n, s in methods.items()}
    ours_ai = {n: s["mAI"]["mean"] for n, s in methods.items()}
    shared = [n for n in methods if n in PAPER_TABLE1]
    paper_ad = {n: PAPER_TABLE1[n][0][0] for n in shared}
    paper_ai = {n: PAPER_TABLE1[n][1][0] for n in shared}
    cfg = t1["config"]
    text = ["## Table 1: representativeness on unseen images (§6.4)", "",
            f"{cfg['num_unseen']} unseen images, |V| = {cfg['num_interpretations']}, "
            f"|Q| = {cfg['num_boundaries']}, {len(cfg['seeds'])} run(s) (seeds {cfg['seeds']}), "
            "mean ± std over runs, percent. Lower mAD and higher mAI are better.", "",
            markdown_table(["Method", "mAD ours", "mAI ours", "mAD paper (ASIRRA)",
                            "mAI paper (ASIRRA)"], rows),
            "Ordering by mAD (best first):", "",
            f"- ours: {ordering(ours_ad, True)}",
            f"- paper (ASIRRA): {ordering(paper_ad, True)}", "",
            "Ordering by mAI (best first):", "",
            f"- ours: {ordering(ours_ai, False)}",
            f"- paper (ASIRRA): {ordering(paper_ai, False)}", ""]
    for metric, ours, paper, low in (("mAD", ours_ad, paper_ad, True),
                                     ("mAI", ours_ai, paper_ai, False)):
        same = ordering({n: ours[n] for n in shared}, low) == ordering(paper, low)
        text.append(f"- The paper's {metric} ordering {'holds' if same else 'does NOT hold'} "
                    f"here (compared over {', '.join(shared)}).")
    text += [verdict("mAD", methods, lower_is_better=True),
             verdict("mAI", methods, lower_is_better=False), ""]
    text += controls_verdict(methods, controls)
    ri = t1["interpretations"].get("RI", [])
    if ri:
        mean = lambda key, sub=None: sum((r[key][sub] if sub else r[key]) for r in ri) / len(ri)
        text += [f"What RI's interpretations were (means over runs): {mean('distinct_polytopes'):.1f} "
                 f"distinct polytopes among the {cfg['num_interpretations']}, "
                 f"{mean('boundaries_per_polytope', 'mean'):.1f} boundaries per polytope, "
                 f"{mean('references_covered', 'mean'):.0f} references covered per polytope, "
                 f"τ = {mean('tau', 'mean'):.1f}; {mean('routed_by_polytope'):.0f} unseen images "
                 f"were covered by a polytope and {mean('routed_to_nearest_centre'):.0f} fell back "
                 f"to the nearest centre. Heat maps whose 20 % cut fell among tied values: "
                 + ", ".join(f"{n} {sum(r['tied_images'] for r in reps) / len(reps):.0f}"
                             for n, reps in t1["interpretations"].items()
                             if reps and reps[0].get("tied_images", -1) >= 0)
                 + f" (of {cfg['num_unseen']}); {t1['tie_rule']}. Such a map "
                 "usually has fewer than 20 % positive pixels (ReLU zeros), so part of what it "
                 "keeps is chosen by the tie rule rather than by the interpretation.", ""]
    return text


def verdict(metric: str, methods: dict, *, lower_is_better: bool) -> str:
    """Whether RI is best on ``metric``, with the margin against the best other method."""
    if "RI" not in methods or len(methods) < 2:
        return ""
    ri = methods["RI"][metric]
    others = {n: s[metric] for n, s in methods.items() if n != "RI"}
    pick = min if lower_is_better else max
    best = pick(others, key=lambda n: others[n]["mean"])
    b = others[best]
    ri_best = ri["mean"] < b["mean"] if lower_is_better else ri["mean"] > b["mean"]
    gap = abs(ri["mean"] - b["mean"])
    spread = ri["std"] + b["std"]
    return (f"- {metric}: RI is {'the best' if ri_best else 'not the best'} method here "
            f"(RI {format_mean_std(ri)} vs {best} {format_mean_std(b)}; the gap {gap:.2f} is "
            f"{'larger' if gap > spread else 'not larger'} than the sum of the two stds, "
            f"{spread:.2f}).")


def table2_section(t2: dict) -> list[str]:
    rows = []
    for s, label in (("reference", "Ref."), ("unseen", "Unseen")):
        acc = t2["model"][f"{s}_accuracy"]
        cells = [label]
        for m in ("ACU-GT", "ACU-MD", "CVR"):
            d = t2[s][m]
            p = PAPER_TABLE2[s][m]
            f_ours = acc if m == "ACU-GT" else 100.0
            cells += ["undefined" if d["mean"] is None else format_mean_std(d), _pm(p[0], p[1]),
                      f"{f_ours:.2f}", f"{p[2]:.2f}"]
        rows.append(cells)
    header = ["Set"] + [f"{m} {who}" for m in ("ACU-GT", "ACU-MD", "CVR")
                        for who in ("RI ours", "RI paper", "F ours", "F paper")]
    cfg = t2["config"]
    return ["## Table 2: RI's decision regions as classifiers (appendix D)", "",
            f"|V| = {cfg['num_interpretations']}, |Q| = {cfg['num_boundaries']}, "
            f"{cfg['num_references']} references, {cfg['num_unseen']} unseen images, "
            f"{len(cfg['seeds'])} run(s), percent. F is the CNN itself (its ACU-MD and CVR are 100 % "
            "by definition). Paper columns: ASIRRA.", "",
            markdown_table(header, rows)]


def figure4_section(f4: dict, rel: str) -> list[str]:
    ks = f4["ks"]
    rows = []
    for kind in ("methods", "controls"):
        for name, s in f4[kind].items():
            label = name if kind == "methods" else f"{name} (control)"
            rows.append([label] + [f"{s['mAD']['mean'][i]:.2f} / {s['mAI']['mean'][i]:.2f}"
                                   for i in range(len(ks))])
    cfg = f4["config"]
    return (["## Figure 4: representativeness on reference images (appendix C)", "",
            f"{cfg.get('num_inputs_used', '?')} reference inputs, mAD / mAI (%) over each input's "
            "top-K similar references (RI: covered references ranked by Eq. 6; baselines: "
            "Euclidean neighbours in Ω). The paper gives Figure 4 only as plots (RI best on mAD "
            "for K > 1 on every data set), so there is no paper column.", "",
            markdown_table(["Method"] + [f"K={k}" for k in ks], rows)]
            + ([f4["notes"]["ace"], ""] if "ace" in f4.get("notes", {}) else [])
            + [f"![Figure 4]({rel}/figure4/figure4.png)", ""])


def figures56_section(f56: dict, rel: str) -> list[str]:
    rows = []
    for i, q in enumerate(f56["qs"]):
        row = [q]
        for s in ("reference", "unseen"):
            for m in ("ACU-GT", "ACU-MD"):
                d = f56[s][m][i]
                row.append("undefined" if d["mean"] is None else format_mean_std(d))
        rows.append(row)
    return ["## Figures 5–6: ACU-GT and ACU-MD against |Q| (appendix E)", "",
            "The paper's figures are plots only; its text says both rise with |Q| and level off "
            "from about |Q| = 50.", "",
            markdown_table(["|Q|", "ACU-GT ref.", "ACU-MD ref.", "ACU-GT unseen", "ACU-MD unseen"],
                           rows),
            f"![Figures 5–6]({rel}/figures5_6/figures5_6.png)", ""]


def cases_section(out: Path, rel: str) -> list[str]:
    figures = sorted(p.name for p in (out / "case_studies").glob("case_*.png"))
    return (["## Case studies (Figures 2, 3, 8)", ""]
            + [f"![{name}]({rel}/case_studies/{name})" for name in figures] + [""])


def caveat(record: dict) -> str:
    """The paragraph that says what our numbers can and cannot be compared with."""
    model = record["model"]
    net = (f"a {model['arch'].upper().replace('VGG', 'VGG-')} of width {model['width']:g} at {model['image_size']} × "
           f"{model['image_size']} pixels")
    if record["data"] == "default" and record["checkpoint"] == "default":
        origin = (f"come from {net} trained from scratch on a small subset of ASIRRA (the embedded "
                  "data set, cats vs dogs), not from an ImageNet-pretrained VGG-19 fine-tuned on "
                  "the full data sets as in the paper")
    else:
        origin = (f"come from {net} (checkpoint `{record['checkpoint']}`) on `{record['data']}`; "
                  "the paper used ImageNet-pretrained VGG-19 models fine-tuned at 224 × 224 "
                  "pixels on the full data sets")
    return (f"**Read this first.** These numbers {origin}. Absolute values are therefore not "
            "comparable with the paper's; only the ordering of the methods is. The paper's "
            "columns are typed from the ASIRRA rows of its Tables 1 and 2 and are never part of "
            "our results files. Where the paper's ordering does not hold here, this file says so "
            "and shows the numbers.")


def render_results(out: Path, md_dir: Path, record: dict) -> str:
    """RESULTS.md from the JSON files under ``out``; links relative to ``md_dir``."""
    rel = os.path.relpath(out, md_dir)
    t = record["wall_seconds"]
    m = record["machine"]
    text = ["# Results", "", caveat(record), "",
            f"Command: `{record['command']}`  ",
            f"Date: {record['date']}  ",
            f"Machine: {m['platform']}, {m['cpu_count']} CPU cores, JAX {m['jax']} "
            f"({m['backend']})  ",
            f"Total wall time: {record['total_wall_seconds'] / 60:.1f} min", "",
            markdown_table(["Step", "wall time (s)", "arguments"],
                           [[s, f"{t[s]:.0f}", "`" + " ".join(record["argv"][s]) + "`"]
                            for s in record["steps"]]),
            "Deviations from the paper's protocol in this driver run:", ""]
    text += [f"- {d}" for d in record["deviations_from_paper"]] + [""]
    sections = {"table1": lambda d: table1_section(d), "table2": table2_section,
                "figure4": lambda d: figure4_section(d, rel),
                "figures5_6": lambda d: figures56_section(d, rel)}
    for step, render in sections.items():
        data = _load(out, step)
        if data is not None:
            text += render(data)
    if "case_studies" in record["steps"]:
        text += cases_section(out, rel)
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    main()
