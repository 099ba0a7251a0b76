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
* Sets and keys as in Table 1 (``explainers.protocol_keys``): with the same --seed and
  runs, Table 1's RI and Table 2 use the same polytopes.
* A run in which no image of a set is covered leaves ACU undefined there; it is left
  out of that mean (``runs_without_coverage`` counts such runs).
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

from common import (add_common_args, describe_run, format_mean_std, load_setup, markdown_table,
                    mean_std, prepare_output, write_csv, write_json)
from ri_jax import explainers as ex
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES
from ri_jax.metrics import region_metrics
from ri_jax.regions import predict

SETS = ("reference", "unseen")
METRICS = ("ACU-GT", "ACU-MD", "CVR")


def make_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """Table 2's options (Figures 5–6 add ``--qs``)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, runs=5, refs_per_class=2500, unseen=1000)
    p.add_argument("--per-class", type=int, default=10,
                   help="interpretations per class: |V| = per-class × classes")
    p.add_argument("--num-boundaries", type=int, default=DEFAULT_NUM_BOUNDARIES, help="|Q| for RI")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    for name in ("runs", "per_class", "num_boundaries"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    return args


def parse_args(argv=None) -> argparse.Namespace:
    p = make_parser()
    return check_args(p, p.parse_args(argv))


def region_scores(setup, *, seed: int, per_class: int, num_boundaries: int,
                  batch_size: int) -> dict:
    """One run: RI's |V| regions scored on the reference and unseen sets.

    Returns:
      ``{"reference": {metric: %, "covered": n}, "unseen": {...}, "interpretations": summary}``.
    """
    fns, params = setup.fns, setup.params
    keys = ex.protocol_keys(seed)
    ref_f = setup.ref_features
    km = ex.kmeans_inputs(ref_f.psi, per_class * setup.references.num_classes, key=keys.kmeans)
    interpreter = ex.make_interpreter(fns, params, ref_f.psi, key=keys.boundaries,
                                      num_boundaries=num_boundaries, batch_size=batch_size)
    ri = ex.ri_interpretations(interpreter, fns, setup.references.raw(km.inputs))
    out = {"interpretations": ex.ri_summary(ri)}
    for name, feats in zip(SETS, (ref_f, setup.unseen_features)):
        m = region_metrics(predict(ri.regions, feats.psi).label, feats.labels, feats.predictions)
        out[name] = {"ACU-GT": 100 * float(m.acu_gt), "ACU-MD": 100 * float(m.acu_md),
                     "CVR": 100 * float(m.cvr), "covered": int(m.num_covered)}
    return out


def summarise(runs: list[dict]) -> tuple[dict, dict]:
    """Mean ± std per set and metric over runs; ACU only over runs that cover something.

    Returns:
      ``({set: {metric: mean_std}}, {set: runs_without_coverage})``.
    """
    table, empty = {}, {}
    for s in SETS:
        every = [r[s] for r in runs]
        covered = [r for r in every if r["covered"] > 0]
        empty[s] = len(every) - len(covered)
        table[s] = {"CVR": mean_std([r["CVR"] for r in every])}
        for m in ("ACU-GT", "ACU-MD"):
            table[s][m] = (mean_std([r[m] for r in covered]) if covered
                           else {"mean": None, "std": None})
        table[s] = {m: table[s][m] for m in METRICS}
    return table, empty


def model_accuracy(setup) -> dict:
    """The CNN's own accuracy (%) on the reference and unseen sets."""
    acc = lambda f: 100 * float(np.mean(f.predictions == f.labels))
    return {"reference_accuracy": acc(setup.ref_features),
            "unseen_accuracy": acc(setup.unseen_features)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_output(args.out, args.resume)
    progress = not args.no_progress
    setup = load_setup(args, out)
    seeds = [args.seed + r for r in range(args.runs)]
    runs = [region_scores(setup, seed=s, per_class=args.per_class,
                          num_boundaries=args.num_boundaries, batch_size=args.batch_size)
            for s in tqdm(seeds, desc="Table 2 runs", disable=not progress)]
    table, empty = summarise(runs)
    payload = {
        **table,
        "model": model_accuracy(setup),
        "runs_without_coverage": empty,
        "covered_images": {s: mean_std([r[s]["covered"] for r in runs]) for s in SETS},
        "interpretations": [r["interpretations"] for r in runs],
        "config": describe_run(args, seeds=seeds,
                               num_interpretations=args.per_class * setup.references.num_classes,
                               num_references=len(setup.references),
                               num_unseen=len(setup.unseen), units="percent",
                               std="population std over runs"),
    }
    write_json(out / "table2.json", payload)
    write_csv(out / "table2.csv", [{"run": i, "seed": s, "set": name, **r[name]}
                                   for i, (s, r) in enumerate(zip(seeds, runs)) for name in SETS])
    md = render_markdown(payload)
    (out / "table2.md").write_text(md)
    print(md)
    return payload


def render_markdown(payload: dict) -> str:
    """Table 2 as Markdown, RI's regions beside the model F."""
    cfg, model = payload["config"], payload["model"]
    fmt = lambda d: "undefined" if d["mean"] is None else format_mean_std(d)
    rows = [[label, fmt(payload[s]["ACU-GT"]), f"{model[s + '_accuracy']:.2f}",
             fmt(payload[s]["ACU-MD"]), "100.00", fmt(payload[s]["CVR"]), "100.00"]
            for s, label in zip(SETS, ("Ref.", "Unseen"))]
    return (f"# Table 2: RI's |V| = {cfg['num_interpretations']} decision regions, "
            f"{len(cfg['seeds'])} run(s), {cfg['num_references']} references, "
            f"{cfg['num_unseen']} unseen images\n"
            + markdown_table(["Set", "ACU-GT of RI (%)", "ACU-GT of F (%)", "ACU-MD of RI (%)",
                              "ACU-MD of F (%)", "CVR of RI (%)", "CVR of F (%)"], rows))


if __name__ == "__main__":
    main()
