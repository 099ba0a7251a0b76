"""RESULTS.md: every result of one driver run beside the paper's numbers (§6, appendices C–E).

``render_results`` turns the driver record and the steps' result JSON (already loaded)
into Markdown; it reads and writes no file. The paper's numbers appear only here, in
columns labelled as the paper's (ASIRRA, typed from the text of its Tables 1 and 2,
``PAPER_TABLE1`` / ``PAPER_TABLE2``); they never enter a results JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ri_jax.protocols.methods import OWN_WEIGHTS
from ri_jax.protocols.statistics import format_mean_std


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats with two decimals."""
    fmt = lambda x: f"{x:.2f}" if isinstance(x, float) else str(x)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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


# The driver steps holding Table 1 under each fill (run_all.py).
TABLE1_FILL_STEPS = {"black": "table1", "mean": "table1_mean", "blur": "table1_blur"}


def _pm(mean: float, std: float) -> str:
    return format_mean_std({"mean": mean, "std": std})


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
            missing = "does not apply" if m == "ACU-GT" and "ground_truth" in t2 else "undefined"
            cells += [missing if d["mean"] is None else format_mean_std(d), _pm(p[0], p[1]),
                      missing if f_ours is None else f"{f_ours:.2f}", f"{p[2]:.2f}"]
        rows.append(cells)
    header = ["Set"] + [f"{m} {who}" for m in ("ACU-GT", "ACU-MD", "CVR")
                        for who in ("RI ours", "RI paper", "F ours", "F paper")]
    cfg = t2["config"]
    return ["## Table 2: RI's decision regions as classifiers (appendix D)", "",
            f"|V| = {cfg['num_interpretations']}, |Q| = {cfg['num_boundaries']}, "
            f"{cfg['num_references']} references, {cfg['num_unseen']} unseen images, "
            f"{len(cfg['seeds'])} run(s), percent. F is the CNN itself (its ACU-MD and CVR are 100 % "
            "by definition). Paper columns: ASIRRA."
            + (f" {t2['ground_truth']}." if "ground_truth" in t2 else ""), "",
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
                row.append(format_mean_std(d))
        rows.append(row)
    return ["## Figures 5–6: ACU-GT and ACU-MD against |Q| (appendix E)", "",
            "The paper's figures are plots only; its text says both rise with |Q| and level off "
            "from about |Q| = 50.", "",
            markdown_table(["|Q|", "ACU-GT ref.", "ACU-MD ref.", "ACU-GT unseen", "ACU-MD unseen"],
                           rows),
            f"![Figures 5–6]({rel}/figures5_6/figures5_6.png)", ""]


def cases_section(figures: list[str], rel: str) -> list[str]:
    return (["## Case studies (Figures 2, 3, 8)", ""]
            + [f"![{name}]({rel}/case_studies/{name})" for name in figures] + [""])


def caveat(record: dict) -> str:
    """The paragraph that says what our numbers can and cannot be compared with."""
    model = record["model"]
    # Records made before the model interface hold the VGG's config and a checkpoint.
    net = model.get("summary") or (f"a {model['arch'].upper().replace('VGG', 'VGG-')} of width "
                                   f"{model['width']:g} at {model['image_size']} × "
                                   f"{model['image_size']} pixels")
    spec = model.get("spec") or record.get("checkpoint", "default")
    if record["data"] == "default" and spec == "default":
        origin = (f"come from {net} trained from scratch on a small subset of ASIRRA (the embedded "
                  "data set, cats vs dogs), not from an ImageNet-pretrained VGG-19 fine-tuned on "
                  "the full data sets as in the paper")
    else:
        origin = (f"come from {net} (`--model {spec}`) on `{record['data']}`; "
                  "the paper used ImageNet-pretrained VGG-19 models fine-tuned at 224 × 224 "
                  "pixels on the full data sets")
    return (f"**Read this first.** These numbers {origin}. Absolute values are therefore not "
            "comparable with the paper's; only the ordering of the methods is. The paper's "
            "columns are typed from the ASIRRA rows of its Tables 1 and 2 and are never part of "
            "our results files. Where the paper's ordering does not hold here, this file says so "
            "and shows the numbers.")


def render_results(record: dict, results: dict[str, dict], *, rel: str,
                   case_figures: list[str]) -> str:
    """RESULTS.md from a driver record and the steps' result JSON.

    Args:
      record: the driver's ``run_all.json`` (command, steps, argv, wall times, machine,
        date, code, deviations, data, checkpoint, model).
      results: step name -> that step's result JSON (missing steps are left out).
      rel: path of the results folder relative to RESULTS.md (for figure links).
      case_figures: file names of the case-study figures, in order.

    Returns:
      The Markdown text.
    """
    t = record["wall_seconds"]
    m = record["machine"]
    text = ["# Results", "", caveat(record), "",
            f"Command: `{record['command']}`  ",
            f"Date: {record['date']}  ",
            *([f"Code: commit {record['code']}  "] if record.get("code") else []),
            f"Machine: {m['platform']}, {m['cpu_count']} CPU cores, JAX {m['jax']} "
            f"({m['backend']})  ",
            f"Total wall time: {record['total_wall_seconds'] / 60:.1f} min", "",
            markdown_table(["Step", "wall time (s)", "arguments"],
                           [[s, f"{t[s]:.0f}", "`" + " ".join(record["argv"][s]) + "`"]
                            for s in record["steps"]]),
            "Deviations from the paper's protocol in this driver run:", ""]
    text += [f"- {d}" for d in record["deviations_from_paper"]] + [""]
    sections = {"table1": table1_section, "table2": table2_section,
                "figure4": lambda d: figure4_section(d, rel),
                "figures5_6": lambda d: figures56_section(d, rel)}
    for step, render in sections.items():
        if results.get(step) is not None:
            text += render(results[step]) + earlier_run_note(step, results[step], record)
        if step == "table1":
            by_fill = {fill: results.get(name) for fill, name in TABLE1_FILL_STEPS.items()}
            by_fill = {f: t for f, t in by_fill.items() if t is not None and "fill_prior" in t}
            if by_fill:
                text += fills_section(by_fill)
                text += faithfulness_section(by_fill, rel)
    if "interpret" in record["steps"]:
        text += ["## Interpretations of a few test images (Figures 2, 8)", "",
                 f"[{rel}/interpret/summary.md]({rel}/interpret/summary.md), and an interactive "
                 f"page: [{rel}/interpret/index.html]({rel}/interpret/index.html).", ""]
    if case_figures:
        text += cases_section(case_figures, rel)
        text += earlier_run_note("case_studies", results.get("case_studies") or {}, record)
    if results.get("variant_study") is not None:
        study = results["variant_study"]
        text += [variant_study_markdown(study)]
        if "variant_study" not in record["steps"]:
            code = study.get("config", {}).get("code")
            text += ["*The variant study comes from an earlier driver run"
                     + (f" at commit {code}" if code else "")
                     + "; this run did not repeat it. Its variants are named in every row.*", ""]
    return "\n".join(text) + "\n"


def earlier_run_note(step: str, result: dict, record: dict) -> list[str]:
    """A line saying that ``step``'s results come from an earlier driver run (``--steps``
    left it out of this one), with that run's commit and RI variant; nothing otherwise."""
    if step in record["steps"]:
        return []
    cfg = result.get("config", {})
    variant = cfg.get("ri_variant")
    return [f"*This section comes from an earlier driver run at commit "
            f"{cfg.get('code') or 'unrecorded'}"
            + (f", RI variant `{variant}`" if variant else "")
            + "; this run did not repeat it.*", ""]


def _fmt(v, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def variant_study_markdown(study: dict) -> str:
    """The variant study (``protocols.variant_study``) as Markdown, with its verdict."""
    cfg = study["config"]
    lines = ["## RI variants: the paper's text vs the authors' code", "",
             "The paper's RI (`--ri-variant paper`: one shared Q of boundaries at sampled "
             "references, δ = τ(x), no loosen step) and the authors' (`--ri-variant authors`: a "
             "pool of |Q| references per input from D(x), each boundary found on the decision "
             "boundary by the authors' line search, δ = 0, the loosen step). "
             f"{cfg['runs']} run(s) of each table, {cfg['unseen']} unseen images, seed "
             f"{cfg['seed']}; mean ± std over runs, percent.", "",
             "Models:", ""]
    seen = set()
    for r in study["rows"]:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        i = r["model_info"]
        accuracy = (f", test accuracy {_fmt(100 * i['test_accuracy'], 2)} %"
                    if i.get("test_accuracy") else "")
        # Studies recorded before the model interface name a checkpoint and its VGG instead.
        summary = i.get("summary") or (f"a {str(i.get('arch')).upper().replace('VGG', 'VGG-')} "
                                       f"of width {i.get('width')} at {i.get('image_size')} px")
        lines.append(f"- **{r['model']}**: {summary}, ψ "
                     f"{'×'.join(map(str, i.get('feature_shape', [])))}{accuracy} "
                     f"(`--model {i.get('spec') or i.get('checkpoint')}`).")
    lines += ["", "Table 1 (mAD ↓ / mAI ↑):", ""]
    names = list(study["rows"][0]["table1"]) + list(study["rows"][0]["controls"])
    rows = []
    for r in study["rows"]:
        cells = [r["model"], r["variant"]]
        for n in names:
            s = r["table1"].get(n) or r["controls"].get(n)
            cells.append(f"{format_mean_std(s['mAD'])} / {format_mean_std(s['mAI'])}" if s else "–")
        rows.append(cells)
    lines += [markdown_table(["Model", "Variant"] + names, rows)]
    lines += ["Table 2 (RI's decision regions):", ""]
    rows = []
    for r in study["rows"]:
        for s in ("reference", "unseen"):
            t = r["table2"][s]
            rows.append([r["model"], r["variant"], s, format_mean_std(t["ACU-GT"]),
                         format_mean_std(t["ACU-MD"]), format_mean_std(t["CVR"])])
    lines += [markdown_table(["Model", "Variant", "Set", "ACU-GT", "ACU-MD", "CVR"], rows)]
    lines += ["What RI's interpretations were (means over the runs of both tables; |V| = 20 "
              "interpretations per run):", ""]
    rows = []
    for r in study["rows"]:
        d = r["ri"]
        rows.append([r["model"], r["variant"], _fmt(d["distinct_polytopes"], 1),
                     _fmt(d["distinct_covered_sets"], 1),
                     f"{_fmt(d['boundaries_before_loosen'], 1)} → {_fmt(d['boundaries_after_loosen'], 1)}",
                     _fmt(d["references_covered"], 0), _fmt(d["other_class_covered"], 1),
                     _fmt(d["not_reached"], 1),
                     f"{_fmt(d['search_steps_mean'], 1)} / {d['search_steps_max']}",
                     str(d["searches_not_converged"]),
                     _fmt(d["cosine_within_polytope"]), _fmt(d["cosine_across_interpretations"]),
                     _fmt(d["cosine_ri_gradcam"]), _fmt(d["interpretations_used_table1"], 1)])
    lines += [markdown_table(
        ["Model", "Variant", "distinct polytopes", "distinct covered sets",
         "|P(x)| greedy → loosened", "refs covered", "other-class covered", "δ not reached",
         "search steps mean / max", "searches not converged", "cos W within", "cos W across",
         "cos(RI α, Grad-CAM α)", "interpretations used (Table 1)"], rows)]
    lines += ["Definitions: *distinct covered sets* tells polytopes apart by the references "
              "they cover; *cos W within* is the mean pairwise cosine of a polytope's unit "
              "normals oriented towards its input; *cos W across* the mean pairwise cosine "
              "between the interpretations' mean oriented normals; *cos(RI α, Grad-CAM α)* the "
              "cosine between RI's channel weights averaged over P(x) and Grad-CAM's at x. "
              "*δ not reached*: inputs whose polytope still covers more than δ other-class "
              "references (with δ = 0, every input with τ(x) > 0).", "",
              "Verdict (computed from the numbers above):", ""]
    lines += [f"- {v}" for v in study["verdict"]] + [""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Table 1 under each fill

FILL_WORDS = {"black": "black (raw 0, the paper's)", "mean": "the model's normalisation mean colour",
              "blur": "the image under a strong Gaussian blur"}


def _fill_label(t1: dict) -> str:
    m = t1.get("masking", {"fill": t1.get("config", {}).get("fill", "black")})
    sigma = f", σ = {m['blur_sigma']:.1f} px" if m.get("blur_sigma") else ""
    return f"{FILL_WORDS.get(m['fill'], m['fill'])}{sigma}"


def _cell(d: dict | None, metric: str) -> str:
    return "–" if not d or d.get(metric) is None else format_mean_std(d[metric])


def table1_fill_section(fill: str, t1: dict) -> list[str]:
    """One fill's Table 1 with its checks: controls, inverses, per-class AD / AI, fill prior."""
    classes = list(t1["fill_prior"]["probabilities"])
    rows = []
    for kind in ("methods", "controls"):
        for name, s in t1[kind].items():
            per = t1.get("per_class", {}).get(name, {})
            rows.append([name if kind == "methods" else f"{name} (control)",
                         _cell(s, "mAD"), _cell(s, "mAI"), _cell(s.get("inverse"), "mAD"),
                         _cell(s.get("inverse"), "mAI")]
                        + [f"{_cell(per.get(c), 'mAD')} / {_cell(per.get(c), 'mAI')}" for c in classes])
    counts = {c: next(iter(t1["per_class"].values()))[c]["count"] for c in classes} \
        if t1.get("per_class") else {c: "?" for c in classes}
    prior = t1["fill_prior"]
    blur_note = (f" (mean over the {prior['images']} fully blurred unseen images; predicted as: "
                 + ", ".join(f"{c} {100 * p:.0f} %" for c, p in prior["predicted"].items()) + ")"
                 if prior["fill"] == "blur" else "")
    return [f"### Fill: {fill} — {_fill_label(t1)}", "",
            "The model's probabilities on an all-fill image (the fill's own class prior): "
            + ", ".join(f"p({c}) = {p:.2f}" for c, p in prior["probabilities"].items())
            + blur_note + ".", "",
            markdown_table(["Method", "mAD ↓", "mAI ↑", "inverse mAD", "inverse mAI"]
                           + [f"{c} (n = {counts[c]}): mAD / mAI" for c in classes], rows),
            "The inverse keeps each map's least important 20 % (same tie order, read from the "
            "other end); per-class columns split the unseen images by the class the model "
            "predicts on the unmasked image. Percent, mean ± std over runs.", ""]


def baseline_controls(controls: Sequence[str]) -> list[str]:
    """The controls a method should clearly beat (e.g. Random, Centre square): all but the
    methods computed at each image itself (``… (own weights)``), which are compared with the
    method's reused maps instead."""
    return [c for c in controls if not c.endswith(OWN_WEIGHTS)]


def fill_claims(t1: dict) -> dict[str, bool]:
    """Statements about the methods, each true or false on one fill's Table 1 (by the means).

    A method "beats" another score on mAD when its mAD is lower and on mAI when its mAI is
    higher; "clearly" means by more than the sum of the two stds.
    """
    methods, controls = t1["methods"], t1["controls"]
    mean = lambda s, m: s[m]["mean"]
    clear = lambda a, b, m, low: ((mean(a, m) < mean(b, m)) if low else (mean(a, m) > mean(b, m))) \
        and abs(mean(a, m) - mean(b, m)) > a[m]["std"] + b[m]["std"]
    claims = {}
    for metric, low in (("mAD", True), ("mAI", False)):
        order = sorted(methods, key=lambda n: mean(methods[n], metric), reverse=not low)
        claims[f"{metric} ordering of the methods is {' > '.join(order)} (best first)"] = True
        if "RI" in methods:  # strictly: a tie is not "the best"
            claims[f"RI is the best method on {metric}"] = all(
                (mean(methods["RI"], metric) < mean(s, metric)) if low else
                (mean(methods["RI"], metric) > mean(s, metric))
                for n, s in methods.items() if n != "RI")
        for name, s in methods.items():
            if "inverse" in s:
                claims[f"{name} clearly beats its own inverse on {metric}"] = clear(
                    s, s["inverse"], metric, low)
            for control in baseline_controls(controls):
                claims[f"{name} clearly beats the {control} control on {metric}"] = clear(
                    s, controls[control], metric, low)
    return claims


def fills_verdict(tables: dict[str, dict]) -> list[str]:
    """Which statements about the methods hold under every fill, computed from the numbers.

    Args:
      tables: fill name -> that fill's Table 1 JSON.

    Returns:
      Markdown lines: the statements true under all fills, and those that depend on the fill
      (with the fills under which they hold).
    """
    per_fill = {fill: fill_claims(t1) for fill, t1 in tables.items()}
    statements = list(dict.fromkeys(k for c in per_fill.values() for k in c))
    holds = {s: [f for f, c in per_fill.items() if c.get(s)] for s in statements}
    fills = list(tables)
    survive = [s for s in statements if len(holds[s]) == len(fills)]
    depend = [s for s in statements if 0 < len(holds[s]) < len(fills)]
    never = [s for s in statements if not holds[s] and "ordering" not in s]
    lines = [f"### Verdict across fills ({', '.join(fills)})", "",
             "Computed from the tables above (means; \"clearly\" = by more than the sum of the "
             "two stds). A conclusion about the methods that changes with the fill measures the "
             "fill, not the interpretations.", "",
             "Holds under every fill:", ""]
    lines += [f"- {s}" for s in survive] or ["- nothing"]
    lines += ["", "Depends on the fill (holds only under the fills named):", ""]
    lines += [f"- {s}: {', '.join(holds[s])}" for s in depend] or ["- nothing"]
    lines += ["", "Holds under no fill:", ""]
    lines += [f"- {s}" for s in never] or ["- nothing"]
    return lines + [""]


def fills_section(tables: dict[str, dict]) -> list[str]:
    """Table 1 under each fill with its checks, then the verdict across fills."""
    text = ["## Table 1 under each fill: controls, inverses, per-class breakdown", "",
            "The paper masks the dropped 80 % of the pixels in black. No flat fill is neutral "
            "(see each fill's class prior), so Table 1 is repeated with the normalisation's mean "
            "colour and with a blurred copy of the image as the fill.", ""]
    for fill, t1 in tables.items():
        text += table1_fill_section(fill, t1)
    if len(tables) > 1:
        text += fills_verdict(tables)
    return text


# ---------------------------------------------------------------- measures beyond AD / AI at 20 %

def _measure_text(d: dict | None, percent: bool) -> str:
    return "–" if d is None else format_mean_std(d, 2 if percent else 3)


def faithfulness_tables(t1: dict) -> list[str]:
    """The faithfulness columns of one Table 1 (``table1.json``'s ``faithfulness``): deletion /
    insertion AUCs and ROAD in one table, AD / AI at each keep fraction in another."""
    f = t1["faithfulness"]
    cfg = f["config"]
    names = [(n, n) for n in f["methods"]] + [(n, f"{n} (control)") for n in f["controls"]]
    rows = {**f["methods"], **f["controls"]}
    text = []
    for fill_dependent, intro in (
            (False, f"Deletion / insertion AUCs (p_c over the share of pixels removed / revealed, "
                    f"steps of {100 * cfg['curve_step']:g} %) and ROAD (p_c after imputation − "
                    f"p_c intact, mean over percentiles {', '.join(f'{p:g}' for p in cfg['road_percentiles'])}; "
                    "combined = (LeRF − MoRF) / 2). Probability units."),
            (True, f"AD / AI (%) keeping each share of the pixels, fill {cfg.get('fill', '?')}.")):
        measures = [m for m in f["measures"] if m["fill_dependent"] == fill_dependent]
        if not measures:
            continue
        header = ["Method"] + [m["label"] + (" ↓" if m["lower_is_better"] else " ↑") for m in measures]
        body = [[label] + [_measure_text(rows[n].get(m["key"]), fill_dependent) for m in measures]
                for n, label in names]
        text += [intro, "", markdown_table(header, body)]
    # Runs before the even spacing scored the first images in file order (one class, for a
    # set stored class by class), and say so.
    where = (f"{cfg['images_scored']} unseen images {cfg['selection']}" if cfg.get("selection")
             else f"the first {cfg['images_scored']} unseen images in file order (for a data "
                  "set stored class by class, images of its first classes only)")
    text += [f"On {where}, the same reused maps as AD / AI "
             "(RI: the covering polytope's; the CAMs: the nearest centre's). Controls: Random, "
             "Centre square, and each method computed at the unseen image itself (own weights, "
             "no reuse; computed once). Mean ± std over runs.", ""]
    return text


def measure_columns(tables: dict[str, dict]) -> dict[str, dict]:
    """Every faithfulness measure of the tables, once: ``{label: {"lower", "rows"}}``.

    A fill-dependent measure (AD / AI at a keep fraction) gets one column per fill, labelled
    ``"mAD@20% (%) [black]"``; the curves and ROAD do not depend on the fill and are taken from
    the first table that has them.
    """
    cols = {}
    for fill, t1 in tables.items():
        f = t1.get("faithfulness")
        if not f:
            continue
        rows = {**f["methods"], **f["controls"]}
        for m in f["measures"]:
            label = f"{m['label']} [{fill}]" if m["fill_dependent"] else m["label"]
            if label not in cols:
                cols[label] = {"lower": m["lower_is_better"],
                               "rows": {n: r[m["key"]] for n, r in rows.items() if m["key"] in r}}
    return cols


def _better(a: dict, b: dict, low: bool) -> bool:
    return a["mean"] < b["mean"] if low else a["mean"] > b["mean"]


def _clearly(a: dict, b: dict, low: bool) -> bool:
    return _better(a, b, low) and abs(a["mean"] - b["mean"]) > a["std"] + b["std"]


def measure_claims(cols: dict[str, dict], methods: Sequence[str]) -> dict[str, dict[str, bool]]:
    """Statements about the methods, each true or false on every measure column (by the means).

    "Best" is a strict win over every other method; "clearly" by more than the sum of the two
    stds; "reused … at least as good as … (own weights)" compares a method's reused maps with
    the same method computed at each image.
    """
    claims: dict[str, dict[str, bool]] = {}
    put = lambda text, label, value: claims.setdefault(text, {}).__setitem__(label, bool(value))
    for label, col in cols.items():
        rows, low = col["rows"], col["lower"]
        present = [m for m in methods if m in rows]
        for m in present:
            put(f"{m} is the best method", label,
                all(_better(rows[m], rows[o], low) for o in present if o != m))
            for control in baseline_controls([n for n in rows if n not in methods]):
                put(f"{m} clearly beats the {control} control", label,
                    _clearly(rows[m], rows[control], low))
            own = m + OWN_WEIGHTS
            if own in rows:
                put(f"{m} reused is at least as good as {own}", label,
                    not _better(rows[own], rows[m], low))
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                put(f"{a} beats {b}", label, _better(rows[a], rows[b], low))
                put(f"{b} beats {a}", label, _better(rows[b], rows[a], low))
    return claims


def measures_verdict(tables: dict[str, dict]) -> list[str]:
    """Which method is best on which measure, and which conclusions hold across measures and fills.

    Args:
      tables: fill name -> that fill's Table 1 JSON (those with ``faithfulness``).

    Returns:
      Markdown lines: the best method per measure, then the statements that hold on every
      measure, those that depend on the measure or fill (naming where they hold), and those
      that hold nowhere.
    """
    cols = measure_columns(tables)
    if not cols:
        return []
    first = next(t for t in tables.values() if t.get("faithfulness"))
    methods = list(first["faithfulness"]["methods"])
    rows = []
    for label, col in cols.items():
        low, r = col["lower"], col["rows"]
        ranked = sorted((m for m in methods if m in r), key=lambda m: r[m]["mean"], reverse=not low)
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        tied = [m for m in ranked if r[m]["mean"] == r[best]["mean"]]
        rows.append([label + (" ↓" if low else " ↑"),
                     best if len(tied) == 1 else f"tie: {', '.join(tied)}", f"{r[best]['mean']:.3f}",
                     f"{second} ({r[second]['mean']:.3f})" if second else "–",
                     "yes" if second and _clearly(r[best], r[second], low) else "no",
                     f"{ranked.index('RI') + 1} of {len(ranked)}" if "RI" in ranked else "–"])
    claims = measure_claims(cols, methods)
    holds = {c: [m for m, ok in v.items() if ok] for c, v in claims.items()}
    total = {c: len(v) for c, v in claims.items()}
    pair = lambda c: " beats " in c and not c.split(" beats ")[1].endswith("control")
    shown = []
    for c in claims:  # of the two orientations of a pair, show the one that holds more often
        if pair(c):
            a, b = c.split(" beats ")
            if len(holds[f"{b} beats {a}"]) > len(holds[c]) or (
                    len(holds[f"{b} beats {a}"]) == len(holds[c]) and f"{b} beats {a}" in shown):
                continue
        shown.append(c)
    every = [c for c in shown if len(holds[c]) == total[c]]
    some = [c for c in shown if 0 < len(holds[c]) < total[c]]
    never = [c for c in shown if not holds[c] and not pair(c)]
    best_counts = {m: sum(r[1] == m for r in rows) for m in methods}
    lines = ["### Verdict across measures and fills", "",
             f"Computed from the {len(cols)} measure columns above (means; \"clearly\" = by more "
             "than the sum of the two stds; a fill-dependent measure counts once per fill). "
             + ("With one run every std is 0, so \"clearly\" only means \"differs\". "
                if len(first.get("config", {}).get("seeds", [0, 1])) == 1 else "")
             + "Best method per measure:", "",
             markdown_table(["Measure", "best method", "its score", "runner-up",
                             "clearly ahead", "RI's rank"], rows),
             "Best on: " + "; ".join(f"{m} {n} of {len(cols)} measures"
                                     for m, n in sorted(best_counts.items(), key=lambda x: -x[1])) + ".",
             "", "Holds on every measure and fill:", ""]
    lines += [f"- {c}" for c in every] or ["- nothing"]
    lines += ["", "Depends on the measure or fill (holds only on those named):", ""]
    lines += [f"- {c}: {len(holds[c])} of {total[c]} ({', '.join(holds[c])})" for c in some] \
        or ["- nothing"]
    lines += ["", "Holds on no measure:", ""]
    lines += [f"- {c}" for c in never] or ["- nothing"]
    return lines + [""]


def faithfulness_section(tables: dict[str, dict], rel: str | None = None) -> list[str]:
    """RESULTS.md's section on the measures beyond AD / AI at 20 %, with the verdict.

    Args:
      tables: fill name -> that fill's Table 1 JSON; those without ``faithfulness`` are skipped.
      rel: path of the results folder relative to RESULTS.md, for the curve plot (None: no link).
    """
    tables = {f: t for f, t in tables.items() if t.get("faithfulness")}
    if not tables:
        return []
    text = ["## Beyond AD / AI at 20 %: deletion / insertion curves, ROAD, several keep fractions",
            "", "Measures built not to rest on one flat fill: deletion and insertion curves "
            "(Petsiuk et al., RISE), ROAD's noisy linear imputation (Rong et al., 2022; equal to "
            "pytorch-grad-cam's, benchmarks/results/peer_road.json) and AD / AI with the cut "
            "moved. Whether RI's claim survives them is read off the verdict below.", ""]
    for fill, t1 in tables.items():
        text += [f"### Fill: {fill}", ""] + faithfulness_tables(t1)
        if rel is not None and t1["faithfulness"].get("curves"):
            step = TABLE1_FILL_STEPS.get(fill, "table1")
            text += [f"![Deletion and insertion curves]({rel}/{step}/faithfulness_curves.png)", ""]
    return text + measures_verdict(tables)


def model_section(record: dict, results: dict[str, dict], *, rel: str) -> list[str]:
    """One more model's results in short, with its verdict computed from its numbers.

    Args:
      record: that model's ``run_all.json``.
      results: step name -> that model's step JSON.
      rel: its results folder relative to the RESULTS.md being written.

    Returns:
      Markdown lines: what the model is, the verdicts of Table 1 (under the paper's fill,
      across fills and across measures), Table 2 and the variant study, and links to its
      own RESULTS.md and interactive report.
    """
    model = record["model"]
    name = Path(model["spec"].removeprefix("keras:")).name
    lines = [f"### {name}", "",
             f"{model['summary'][:1].upper()}{model['summary'][1:]}, ψ "
             f"{'×'.join(map(str, model['feature_shape']))}, {model['num_classes']} classes, on "
             f"`{record['data']}` (`--model {model['spec']}`). Every table, figure and the "
             f"command: [{rel}/RESULTS.md]({rel}/RESULTS.md); interpretations: "
             f"[{rel}/interpret/index.html]({rel}/interpret/index.html).", ""]
    t1 = results.get("table1")
    if t1 is not None:
        methods = t1["methods"]
        lines += ["Table 1 under the paper's black fill:", "",
                  verdict("mAD", methods, lower_is_better=True),
                  verdict("mAI", methods, lower_is_better=False), ""]
        lines += controls_verdict(methods, t1["controls"])
    by_fill = {fill: results.get(step) for fill, step in TABLE1_FILL_STEPS.items()}
    by_fill = {f: t for f, t in by_fill.items() if t is not None and "fill_prior" in t}
    if len(by_fill) > 1:
        lines += [line.replace("### ", "#### ", 1) for line in fills_verdict(by_fill)]
    lines += [line.replace("### ", "#### ", 1) for line in measures_verdict(by_fill)]
    t2 = results.get("table2")
    if t2 is not None:
        u = t2["unseen"]
        gt = ("does not apply (the data's labels are not the model's classes)"
              if "ground_truth" in t2 else format_mean_std(u["ACU-GT"]))
        lines += [f"Table 2 on unseen images: ACU-MD {format_mean_std(u['ACU-MD'])} %, CVR "
                  f"{format_mean_std(u['CVR'])} %, ACU-GT {gt}.", ""]
    study = results.get("variant_study")
    if study is not None:
        lines += ["RI variants (paper's text vs the authors' code):", ""]
        lines += [f"- {v}" for v in study["verdict"]] + [""]
    return lines
