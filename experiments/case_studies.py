"""Case studies (Figures 2, 3 and 8): one input, its similar images and every method's maps.

    python experiments/case_studies.py --out runs/cases [--inputs 12,345]

For each chosen test image x (``--inputs`` test indices, or ``--num-inputs`` drawn
with ``--seed`` alternating between classes), two blocks of images are compared:

* "similar by RI": x and its top-k references covered by P(x), ranked by Eq. 6;
* "Euclidean neighbours": x and its k nearest references in Ω (how the baselines
  find similar images, §6.1).

Every method computes its interpretation at x and reuses it on the images of both
blocks (``--layout paper`` draws, as in Figure 2, RI only under RI's images and the
baselines only under the Euclidean neighbours, controls under both; every score is
computed and saved either way). Under each image: the softmax probability of x's predicted class c.
Under each heat map: the probability of c on the image masked to the map's top 20 %
(the rest black, or --fill mean | blur), "a higher prediction score means a better interpretation".

Written into ``--out``: ``case_<i>.png`` per input (i = test index; its title says the
polytope in words, a colour bar reads the maps, misclassified images have a red frame),
with ``--html`` an interactive ``index.html`` (method toggle, filters, click to enlarge), and
``case_studies.json`` / ``.csv`` / ``.md`` with every score, the neighbours (files
and distances) and RI's polytope (|P(x)|, references covered, δ). ``--with-controls``
adds the rows "Random" (uniformly random 20 % of pixels) and "Grad-CAM (own weights)"
(Grad-CAM computed at each image itself). ``--ace`` adds an ACE row (slow; the ``--ace-*``
settings as in ``table1.py``): ACE discovers concepts on x and its 49 nearest references
in Ω (``--ace-max-images`` sets the set's size, x included; 0 = 50), explaining x's
predicted class, and on every image keeps the segments of its significant concepts, in
order of importance, until more than 20 % of the pixels are kept; its "heat map" is
that keep mask (1 kept, 0 black), its score the probability of c on the kept pixels.

Choices the paper leaves open: the score class is x's predicted class for every
image (as the paper's Figures 2–3 score one class throughout); a polytope covering
fewer than k references shows only those.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (prepare_run, HelpFormatter, add_html_arg, ace_config, ace_settings, add_ace_args, load_data,
                    add_common_args, add_fill_args, add_ri_variant_arg, describe_run, load_setup,
                    markdown_cell, masking_options, parse_indices, remove_stale_outputs,
                    ri_options, write_csv, write_json)
from ri_jax.api import choose_inputs
from ri_jax.files import atomic_write_text
from ri_jax.cli import positive_int, run_script
from ri_jax.featurize import compute_features
from ri_jax.html_report import Report, case_study_input, write_report
from ri_jax.plots import DISTANCE_NOTE, MISCLASSIFIED_NOTE, CaseBlock, case_study_figure
from ri_jax.protocols.case_studies import (ACE_DISCOVERY_IMAGES, BLOCKS, CONTROLS_SHOWN, CaseInputs,
                                           CaseReferences, CaseStudiesConfig, run_case_studies)
from ri_jax.protocols.report import markdown_table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, refs_per_class=0, unseen=None)
    p.add_argument("--num-inputs", type=positive_int, default=3, help="test images to study (seeded)")
    p.add_argument("--inputs", default=None,
                   help="comma-separated test-split indices (overrides --num-inputs)")
    p.add_argument("--top-k", type=positive_int, default=4, help="similar images per block")
    p.add_argument("--num-boundaries", type=positive_int, default=50, help="|Q| for RI")
    add_ri_variant_arg(p)
    p.add_argument("--layout", choices=("full", "paper"), default="full",
                   help="full: every method under both blocks; paper: RI under RI's images, "
                        "baselines under the Euclidean neighbours (Figure 2)")
    p.add_argument("--with-controls", action="store_true",
                   help=f"add the rows of the controls {' and '.join(CONTROLS_SHOWN)}")
    add_fill_args(p)
    add_ace_args(p, max_images_help=f"ACE discovery set size: x and its nearest references "
                                    f"(0 = {ACE_DISCOVERY_IMAGES})")
    add_html_arg(p)
    args = p.parse_args(argv)
    masking_options(args, p)  # validates --blur-sigma
    return args


FOOTNOTE = ("Under each image: p(c), the probability of the input's predicted class c. Under each "
            "heat map: p(c) on the image keeping only the map's top 20 % pixels (the rest black); "
            "higher = the map found what the model uses. Every method's map is computed at the "
            "input and reused unchanged on the other images.\n"
            + DISTANCE_NOTE.replace("d:", "d (similar by RI):", 1)
            + " d (Euclidean neighbours): distance in the feature space Ω.\n" + MISCLASSIFIED_NOTE)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_run(args)
    setup = load_setup(args, out, need_unseen=False)
    refs = setup.references
    test = load_data(args, "test", setup.model)
    try:
        chosen = (parse_indices(args.inputs, len(test)) if args.inputs is not None
                  else choose_inputs(test.labels, args.num_inputs, seed=args.seed))
    except ValueError as e:
        sys.exit(str(e))
    progress = not args.no_progress
    in_feats = compute_features(setup.model, test, chosen, batch_size=args.batch_size,
                                cache_dir=Path(args.cache_dir) if args.cache_dir else out / "cache",
                                progress=progress, desc="input features")
    inputs = CaseInputs(raw=test.raw(chosen), features=in_feats, indices=chosen,
                        ids=[test.ids[i] for i in chosen], labels=test.labels[chosen])
    references = CaseReferences(features=setup.ref_features, raw=refs.raw, ids=refs.ids,
                                labels=refs.labels, class_names=refs.class_names)
    config = CaseStudiesConfig(top_k=args.top_k,
                               ri=ri_options(args),
                               layout=args.layout, controls=args.with_controls,
                               batch_size=args.batch_size, masking=masking_options(args),
                               ace=ace_settings(args))
    result = run_case_studies(setup.model, inputs, references, seed=args.seed,
                              config=config, progress=progress)
    for rec, blocks, title in zip(result.records, result.panels, result.titles):
        case_study_figure([CaseBlock(**b) for b in blocks], path=out / rec["figure"], title=title,
                          footnote=FOOTNOTE)
    if args.html:
        write_report(out, case_studies_report(result, args), overwrite=args.resume)
    payload = {**result.to_json(),
               "config": describe_run(args, **config.masking.describe(setup.model.image_size),
                                      num_references=len(refs), top_k=result.top_k,
                                      inputs_used=[int(i) for i in chosen],
                                      ace_config=ace_config(args) if args.ace else None)}
    write_json(out / "case_studies.json", payload)
    write_csv(out / "case_studies.csv", result.rows)
    atomic_write_text(out / "case_studies.md", render_markdown(payload, args))
    # A --resume with other inputs, or without --html, must not leave the last run's files.
    remove_stale_outputs(out, ["case_*.png", "index.html"],
                         [out / r["figure"] for r in result.records] + [out / "index.html"] * args.html)
    return payload


def case_studies_report(result, args: argparse.Namespace) -> Report:
    """The case studies as an interactive page: per input both blocks, every method's maps."""
    inputs = [case_study_input([CaseBlock(**b) for b in blocks], name=Path(rec["file"]).name,
                               predicted_class=rec["predicted_class"],
                               probability=rec["probability"], true_class=rec["true_label"],
                               description=rec["ri"]["description"][:1].upper()
                               + rec["ri"]["description"][1:] + ".")
              for rec, blocks in zip(result.records, result.panels)]
    methods = list(dict.fromkeys(m for blocks in result.panels for b in blocks
                                 for m in b["method_maps"]))
    return Report(title="Case studies: every method's interpretation, reused on similar images",
                  intro=f"Model {args.model}, data {args.data}, |Q| = {args.num_boundaries}, "
                        f"top-{result.top_k}, seed {args.seed}, layout {args.layout}.",
                  methods=methods, inputs=inputs, notes=FOOTNOTE.split("\n"))


def render_markdown(payload: dict, args: argparse.Namespace) -> str:
    """The mean masked scores, then every input's blocks, as Markdown."""
    summary, records, cfg = payload["mean_masked_scores"], payload["inputs"], payload["config"]
    chosen, k, maps = cfg["inputs_used"], cfg["top_k"], list(summary)
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    text = ["# Case studies", "",
            f"{len(chosen)} test inputs, {cfg['num_references']} references, |Q| = "
            f"{args.num_boundaries}, top-{k}, seed {args.seed}. Mean probability of the input's "
            "predicted class on images masked to each method's top 20 % (higher is better).", "",
            markdown_table(["method", "input"] + [f"{n} (mean)" for n in BLOCKS],
                           [[m, fmt(s["input"])] + [fmt(s[n]) for n in BLOCKS]
                            for m, s in summary.items()])]
    for rec in records:
        text += [f"## Test image {rec['test_index']} ({markdown_cell(Path(rec['file']).name)}): "
                 f"{rec['figure']}", "",
                 f"True {rec['true_label']}, predicted {rec['predicted_class']} "
                 f"({rec['probability']:.3f}); |P(x)| = {rec['ri']['num_boundaries']}, "
                 f"{rec['ri']['num_covered']} references covered, δ = {rec['ri']['delta']}.", ""]
        for name in BLOCKS:
            entries = rec["blocks"][name]
            text += [f"**{name}**", "", markdown_table(
                ["method"] + [("input" if e["reference_index"] is None
                               else markdown_cell(Path(e["file"]).name))
                              for e in entries],
                [["(unmasked)"] + [f"{e['score']:.3f}" for e in entries]]
                + [[m] + [f"{e['masked_scores'][m]:.3f}" for e in entries] for m in maps])]
    return "\n".join(text)


if __name__ == "__main__":
    run_script(main)
