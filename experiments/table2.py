"""Table 2 (appendix D): RI's decision regions used as classifiers, next to the model.

    python experiments/table2.py --out runs/table2

Per run r (seed = --seed + r), the |V| = --per-class × classes polytopes of Table 1's
protocol (k-means centres on the references, the reference nearest each centre as
input, |Q| = --num-boundaries, Algorithm 1) become decision regions: polytope v predicts
Class(x_v) for every image it covers; an image covered by several takes the label of the
one covering the most references (ties: lower index); an uncovered image has no label.
On the reference and on the unseen set:

* ACU-GT: accuracy of the region labels against the ground truth, on covered images;
* ACU-MD: agreement of the region labels with the model's predictions, on covered images;
* CVR: share of images covered by at least one region.

All in percent, mean ± std (population) over runs. ``model`` holds the CNN's own
accuracy on both sets (its ACU-MD and CVR are 100 % by definition).

Written into --out: ``table2.json``, ``table2.csv`` (one row per run and set),
``table2.md`` (also printed).

Choices the paper leaves open:
* Sets and keys as in Table 1 (``protocols.routing.protocol_keys``): with the same --seed and
  runs, Table 1's RI and Table 2 use the same polytopes.
* A run in which no image of a set is covered leaves ACU undefined there; it is left
  out of that mean (``runs_without_coverage`` counts such runs).
"""

from __future__ import annotations

import argparse

from common import (print_written, HelpFormatter, ri_options, add_common_args, add_distributed_args,
                    add_polytope_args, describe_run, load_setup, start_run, write_csv, write_json)
from ri_jax.files import atomic_write_text
from ri_jax.cli import run_script
from ri_jax.protocols.report import markdown_table
from ri_jax.protocols.statistics import format_mean_std
from ri_jax.protocols.table2 import SETS, Table2Config, run_table2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    add_common_args(p, runs=5, refs_per_class=0, unseen=1000)
    add_distributed_args(p)
    add_polytope_args(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = start_run(args)
    setup = load_setup(args, out)
    seeds = [args.seed + r for r in range(args.runs)]
    config = Table2Config(per_class=args.per_class,
                          ri=ri_options(args))
    result = run_table2(setup.model, setup.ref_features, setup.unseen_features,
                        setup.references.raw, num_classes=setup.references.num_classes,
                        seeds=seeds, config=config, progress=not args.no_progress)
    payload = {
        **result.to_json(),
        "config": describe_run(args, seeds=seeds,
                               num_interpretations=args.per_class * setup.references.num_classes,
                               num_references=len(setup.references),
                               num_unseen=len(setup.unseen), units="percent",
                               std="population std over runs"),
    }
    write_json(out / "table2.json", payload)
    write_csv(out / "table2.csv", result.csv_rows())
    md = render_markdown(payload)
    atomic_write_text(out / "table2.md", md)
    print(md)
    print_written(out)
    return payload


def render_markdown(payload: dict) -> str:
    """Table 2 as Markdown, RI's regions beside the model F."""
    cfg, model = payload["config"], payload["model"]
    no_truth = "ground_truth" in payload  # the data's labels are not the model's classes
    fmt = lambda d, gt=False: format_mean_std(
        d, missing="does not apply" if gt and no_truth else "undefined")
    accuracy = lambda a: "does not apply" if a is None else f"{a:.2f}"
    rows = [[label, fmt(payload[s]["ACU-GT"], True), accuracy(model[s + "_accuracy"]),
             fmt(payload[s]["ACU-MD"]), "100.00", fmt(payload[s]["CVR"]), "100.00"]
            for s, label in zip(SETS, ("Ref.", "Unseen"))]
    return (f"# Table 2: RI's |V| = {cfg['num_interpretations']} decision regions, "
            f"{len(cfg['seeds'])} run(s), {cfg['num_references']} references, "
            f"{cfg['num_unseen']} unseen images\n"
            + markdown_table(["Set", "ACU-GT of RI (%)", "ACU-GT of F (%)", "ACU-MD of RI (%)",
                              "ACU-MD of F (%)", "CVR of RI (%)", "CVR of F (%)"], rows)
            + (f"\n{payload['ground_truth']}.\n" if no_truth else ""))


if __name__ == "__main__":
    run_script(main)
