"""Figures 5–6 (appendix E): ACU-GT and ACU-MD of RI's decision regions against |Q|.

    python experiments/figures5_6.py --out runs/figures5_6

For every |Q| in --qs (default 1, 5, 10, 30, 50, 70) the Table 2 protocol runs --runs
times (seeds --seed..--seed+runs−1): |V| = --per-class × classes polytopes from the
k-means inputs, used as classifiers on the reference and unseen sets. The figure has
two panels, ACU-GT (Figure 5) and ACU-MD (Figure 6), each with RI's mean ± std on the
reference and unseen sets (solid, error bars) and the model F's value (dashed; F's
ACU-MD is 100 % by definition).

Written into --out: ``figures5_6.json`` (per set and metric, one mean ± std per |Q|,
plus CVR), ``figures5_6.csv`` (one row per |Q|, run and set), ``figures5_6.md`` (also
printed) and ``figures5_6.png``.

Choices the paper leaves open: as Table 2 (``table2.py``, ``protocols.table2``); --num-boundaries is
ignored (``--qs`` replaces it). With one seed every |Q| uses the same k-means inputs
and the samples are nested: Q is the first |Q| references of one seeded permutation
(``boundaries.sample_indices``), so a larger Q only adds boundaries. |Q| above the
number of references is capped there (with a warning), see ``config.qs_used``.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import (prepare_run, print_written, HelpFormatter, add_common_args, add_polytope_args, describe_run,  # noqa: E402
                    load_setup, write_csv, write_json)
from ri_jax.files import atomic_path, atomic_write_text  # noqa: E402
from ri_jax.cli import positive_int_list, run_script  # noqa: E402
from ri_jax.protocols.figures5_6 import run_figures5_6  # noqa: E402
from ri_jax.protocols.methods import RIOptions  # noqa: E402
from ri_jax.protocols.report import markdown_table
from ri_jax.protocols.statistics import format_mean_std  # noqa: E402
from ri_jax.variants import ri_variant  # noqa: E402
from ri_jax.protocols.table2 import METRICS, SETS, Table2Config  # noqa: E402

DEFAULT_QS = (1, 5, 10, 30, 50, 70)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=HelpFormatter)
    add_common_args(p, runs=5, refs_per_class=0, unseen=1000)
    add_polytope_args(p)
    p.add_argument("--qs", type=positive_int_list, default=",".join(map(str, DEFAULT_QS)),
                   help="comma-separated |Q| values")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_run(args)
    setup = load_setup(args, out)
    seeds = [args.seed + r for r in range(args.runs)]
    qs_used = [min(q, len(setup.references)) for q in args.qs]
    config = Table2Config(per_class=args.per_class, ri=RIOptions(batch_size=args.batch_size,
                                                                  variant=ri_variant(args.ri_variant)))
    result = run_figures5_6(setup.model, setup.ref_features, setup.unseen_features,
                            setup.references.raw, num_classes=setup.references.num_classes,
                            qs=args.qs, seeds=seeds, config=config,
                            progress=not args.no_progress)
    payload = {
        **result.to_json(),
        "config": describe_run(args, seeds=seeds, qs_used=qs_used,
                               num_interpretations=args.per_class * setup.references.num_classes,
                               num_references=len(setup.references),
                               num_unseen=len(setup.unseen), units="percent",
                               std="population std over runs"),
    }
    write_json(out / "figures5_6.json", payload)
    write_csv(out / "figures5_6.csv", result.csv_rows())
    plot(payload, out / "figures5_6.png")
    md = render_markdown(payload)
    atomic_write_text(out / "figures5_6.md", md)
    print(md)
    print_written(out)
    return payload


def plot(payload: dict, path) -> None:
    """Two panels, ACU-GT and ACU-MD vs |Q|: RI on both sets with error bars, F dashed."""
    qs, model = payload["qs"], payload["model"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    colours = {"reference": "tab:blue", "unseen": "tab:orange"}
    for ax, metric, title in zip(axes, ("ACU-GT", "ACU-MD"), ("Figure 5: ACU-GT", "Figure 6: ACU-MD")):
        for s in SETS:
            points = [(q, d["mean"], d["std"]) for q, d in zip(qs, payload[s][metric])
                      if d["mean"] is not None]
            if points:
                x, y, e = zip(*points)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=colours[s],
                            label=f"RI, {s}")
            if metric == "ACU-GT":
                ax.plot(qs, [model[f"{s}_accuracy"]] * len(qs), "--", color=colours[s],
                        label=f"F, {s}")
        if metric == "ACU-MD":
            ax.plot(qs, [100.0] * len(qs), "--", color="grey", label="F, both sets (by definition)")
        ax.set_xlabel("|Q|")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:  # whole or not at all
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def render_markdown(payload: dict) -> str:
    """One row per |Q|: ACU-GT, ACU-MD and CVR on both sets."""
    fmt = format_mean_std
    header = ["|Q|"] + [f"{m} {s} (%)" for s in SETS for m in METRICS]
    rows = [[q] + [fmt(payload[s][m][i]) for s in SETS for m in METRICS]
            for i, q in enumerate(payload["qs"])]
    model = payload["model"]
    return ("# Figures 5–6: RI's decision regions against |Q| "
            f"({len(payload['config']['seeds'])} run(s))\n" + markdown_table(header, rows)
            + f"\nModel F: accuracy {model['reference_accuracy']:.2f} % (reference), "
              f"{model['unseen_accuracy']:.2f} % (unseen); its ACU-MD and CVR are 100 %.\n")


if __name__ == "__main__":
    run_script(main)
