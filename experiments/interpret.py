"""The main job: representative interpretations of a few test images (Figures 2 and 8).

    python experiments/interpret.py --out runs/interpret

For each chosen input x of the test split, RI (§3–5) finds the polytope P(x) over
|Q| boundaries sampled from the reference set, ranks the references it covers by
the semantic distance of Eq. 6 and reuses x's channel weights (Eq. 5) to draw heat
maps on x and on its top-k similar references: ``ri_jax.explain`` does it (the same seed
gives the same answer from Python), sharded on several processes. Written into ``--out``:

* ``input_<i>.png`` per input (i = its index in the test split): the input and its
  top-k similar references, raw on top and with the RI heat map below, predicted
  class and probability under each image and the Eq. 6 distance under each map; the
  title says the polytope in words with the covered references' class counts, a
  colour bar reads the maps and misclassified images have a red frame;
* ``summary.json`` / ``summary.csv`` / ``summary.md``: per input its test index and
  file, true label, predicted class and probability, |P(x)|, references covered (how
  many share x's predicted class, how many have x's predicted class as ground truth),
  δ = τ(x), whether P(x) is empty, and the ranked similar references with distances.
  The Markdown summary is also printed;
* with ``--html``, ``index.html``: the same interpretations as an interactive page that
  works offline (heat-map toggle between RI and Grad-CAM's reused weights, filters by
  predicted class and for misclassified inputs, click to enlarge).

Every file is written whole or not at all; a ``--resume`` removes the figures of inputs
it no longer shows, and an ``index.html`` it did not rewrite (no ``--html``).

Choices the paper leaves open: inputs default to ``--num-inputs`` test images drawn
with ``--seed``, alternating between classes so every class appears (``--inputs``
picks test indices instead); references are the whole train split by default
(``--refs-per-class 0``); Q is drawn with key ``--seed``. A polytope can cover fewer
than k references; the figure then shows only those.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import (print_written, HelpFormatter, add_common_args, add_distributed_args, add_html_arg, load_data,
                    markdown_cell, remove_stale_outputs,
                    add_ri_variant_arg, describe_run, feature_cache, parse_indices, start_run,
                    write_csv, write_json)
from ri_jax.api import Explanations, choose_inputs, explain, own_images
from ri_jax.cli import positive_int, run_script
from ri_jax.files import atomic_write_text, display_name
from ri_jax.models.loading import load_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, refs_per_class=0, unseen=None)
    add_distributed_args(p)
    p.add_argument("--num-inputs", type=positive_int, default=4, help="test images to interpret (seeded)")
    p.add_argument("--inputs", default=None,
                   help="comma-separated test-split indices to interpret (overrides --num-inputs)")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="your own image files or folders (searched recursively) to interpret, "
                        "instead of test images")
    p.add_argument("--top-k", type=positive_int, default=4, help="similar references shown per input")
    p.add_argument("--num-boundaries", type=positive_int, default=50, help="|Q|, boundaries sampled")
    add_ri_variant_arg(p)
    add_html_arg(p)
    return p.parse_args(argv)


def summary_markdown(records: list[dict], config: dict) -> str:
    """The human-readable summary: one table row per input, then each input's similar references."""
    lines = ["# Representative interpretations", "",
             f"Model `{display_name(config['model'])}`, data `{display_name(config['data'])}`, "
             f"{config['num_references']} "
             f"references, |Q| = {config['num_boundaries']}, seed {config['seed']}.", "",
             "|P(x)|: boundaries of the polytope; covered: references inside it (same class = "
             "predicted as x's class; labelled = ground truth is x's predicted class); "
             "δ: references of other classes allowed inside (τ(x), §4.2).", "",
             "| test index | file | true | predicted (p) | \\|P(x)\\| | covered (same class / "
             "labelled) | δ / τ | empty |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['test_index']} | {markdown_cell(Path(r['file']).name)} | "
                     f"{markdown_cell(r['true_label'] or 'unknown')} | "
                     f"{markdown_cell(r['predicted_class'])} ({r['probability']:.3f})"
                     f"{' **misclassified**' if r['misclassified'] else ''} | "
                     f"{r['num_boundaries']} | "
                     f"{r['num_covered']} ({r['num_covered_same_class']} / "
                     f"{r['num_covered_label_matches']}) | {r['delta']} / {r['tau']} | "
                     f"{'yes' if r['empty_polytope'] else 'no'} |")
    for r in records:
        lines += ["", f"## Test image {r['test_index']} ({markdown_cell(Path(r['file']).name)}): "
                      f"{r['figure']}", "",
                  r["description"][:1].upper() + r["description"][1:] + ".", ""]
        if not r["similar"]:
            lines.append("No reference is covered by P(x).")
        for s in r["similar"]:
            lines.append(f"{s['rank']}. {markdown_cell(Path(s['file']).name)}: "
                         f"distance {s['distance']:.4g}, "
                         f"true {s['true_label'] or 'unknown'}, predicted {s['predicted_class']} "
                         f"({s['probability']:.3f})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = start_run(args)
    cache = feature_cache(args, out)  # before any computation
    model = load_model(args.model)
    if args.images:
        test = own_images(args.images, model.image_size, model.class_names, name="--images")
        chosen = np.arange(len(test))
    else:
        test = load_data(args, "test", model)
        try:
            chosen = (parse_indices(args.inputs, len(test)) if args.inputs is not None
                      else choose_inputs(test.labels, args.num_inputs, seed=args.seed))
        except ValueError as e:
            sys.exit(str(e))
    print(f"interpreting {len(chosen)} input(s) ...", file=sys.stderr, flush=True)
    # The one-call API's own path (sharded, with the same answer, on several processes).
    explained = explain(test, inputs=chosen, model=model, data=args.data, top_k=args.top_k,
                        num_boundaries=args.num_boundaries, variant=args.ri_variant,
                        refs_per_class=args.refs_per_class, seed=args.seed,
                        batch_size=args.batch_size, cache_dir=cache, progress=not args.no_progress)
    run = explained.config

    records = []
    for test_index, e in zip(chosen, explained):  # a handful of inputs
        diag = e.details.diagnostics
        similar = [{"rank": r.rank, "reference_index": r.index, "file": r.file,
                    "distance": r.distance, "true_label": r.true_class,
                    "predicted_class": r.predicted_class, "probability": r.probability}
                   for r in e.similar]
        rec = {"test_index": int(test_index), "file": e.file, "true_label": e.true_class,
               "predicted_class": e.predicted_class, "probability": e.probability,
               "misclassified": bool(e.misclassified), "num_boundaries": e.num_boundaries,
               "num_covered": e.num_covered,
               "num_covered_same_class": e.covered_predicted[e.predicted_class],
               "num_covered_other_class": int(e.details.num_covered_other),
               "num_covered_label_matches": e.covered_labels[e.predicted_class],
               "covered_predicted": dict(e.covered_predicted),
               "covered_labels": dict(e.covered_labels), "description": e.describe(),
               "delta": e.delta, "tau": int(diag.tau), "reached": bool(diag.reached),
               "empty_polytope": e.empty,
               "num_boundaries_before_loosen": int(diag.num_selected_greedy),
               "search_steps_mean": float(np.mean(diag.search_steps)),
               "searches_not_converged": int(np.sum(~diag.search_converged)),
               "similar": similar,
               "figure": f"input_{int(test_index)}.png"}
        records.append(rec)
        e.save(out / rec["figure"])

    config = describe_run(args, model_source=run["model"], num_references=run["num_references"],
                          top_k=run["top_k"], inputs_used=[int(i) for i in chosen],
                          boundary_references=run["boundary_references"])
    payload = {"inputs": records, "config": config}
    write_json(out / "summary.json", payload)
    write_csv(out / "summary.csv", [
        {**{k: v for k, v in r.items()
            if k not in ("similar", "covered_predicted", "covered_labels")},
         "similar_files": " ".join(Path(s["file"]).name for s in r["similar"]),
         "similar_distances": " ".join(f"{s['distance']:.6g}" for s in r["similar"])}
        for r in records])
    if args.html:
        page = Explanations(explained, {**run, "model": args.model,
                                        "num_boundaries": args.num_boundaries})
        page.save_html(out, overwrite=args.resume)
    text = display_name(summary_markdown(records, config))  # printable in any terminal
    atomic_write_text(out / "summary.md", text)
    # A --resume with other inputs, or without --html, must not leave the last run's files.
    remove_stale_outputs(out, ["input_*.png", "index.html"],
                         [out / r["figure"] for r in records] + [out / "index.html"] * args.html)
    print(text)
    print_written(out)
    return payload


if __name__ == "__main__":
    run_script(main)
