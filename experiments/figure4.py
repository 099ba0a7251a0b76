"""Figure 4 (appendix C): representativeness on reference images, mAD / mAI against K.

    python experiments/figure4.py --out runs/figure4

For N input images sampled from the reference set (``--num-inputs``, default 1,000
as in the paper, capped by the set), every method computes one interpretation at
each input x and reuses it on x's top-K similar references S; AD and AI (Eqs. 7–8,
top 20 % of pixels kept, the rest black or --fill mean | blur) are averaged over S and
then over the N inputs, for K in ``--ks`` (default 1, 5, 10, 20, 30, 40, 50).

* RI: S = the references covered by P(x), ranked by the semantic distance of Eq. 6;
  the heat map on each is drawn with x's channel weights (Eq. 5).
* Grad-CAM, Grad-CAM++, Score-CAM: S = the K nearest references to x by Euclidean
  distance in Ω; x's channel weights are reused on each (§6.1).
* ACE (``--ace``, slow, on only the first ``--ace-inputs`` sampled inputs, default 10):
  its discovery set is x plus its 49 nearest references in Ω (``--ace-max-images`` sets
  the set's size, x included; 0 = 50), explaining the class predicted on x; TCAV's
  random counterparts are patches of ``--ace-random-images`` references drawn per run.
  S = the same Euclidean neighbours as the CAMs; on each image the segments of ACE's
  significant concepts are kept in order of importance until more than 20 % of the
  pixels are (§6.2), the rest black.
* Controls (``controls`` in the JSON, dashed in the plot; ``--no-controls`` drops
  them): "Random" keeps a uniformly random 20 % of each image's pixels and
  "Grad-CAM (own weights)" computes Grad-CAM at each image itself (no reuse), both
  on the Euclidean neighbours.

Choices the paper leaves open (also written into ``figure4.json`` under ``notes``):

* x itself is S's first image for every method (the paper: "K = 1 means S contains
  only the input image x"), then the ranking/neighbours without x. This matters
  only with exact ties, e.g. an empty polytope where every distance is 0.
* When P(x) covers fewer than K references, RI is evaluated on the covered ones
  only; ``images_used`` reports the average |S| per K for every method.
* K values larger than the reference set are dropped (reported as ``ks_dropped``).
* Y_c is the softmax probability of the class the model predicts on each unmasked
  image; the unmasked scores come from the cached forward pass of the references.
* Ties at the 20 % cut: ``protocols.scoring.TIE_RULE``; ``ties`` counts the affected maps.
* ``--runs`` repeats everything with seeds seed..seed+runs−1 (new inputs, new Q, new
  random masks); curves are mean ± std over runs (std 0 for one run).
"""

from __future__ import annotations

import argparse
import sys

from common import (prepare_run, print_written, HelpFormatter, ace_config, ace_settings, add_ace_args, add_common_args,
                    add_fill_args, add_ri_variant_arg, describe_run, load_setup, masking_options,
                    ri_options, write_csv, write_json)
from ri_jax.files import atomic_write_text
from ri_jax.cli import positive_int, positive_int_list, run_script
from ri_jax.plots import K_CURVES_NOTE, k_curves_figure
from ri_jax.protocols.figure4 import (ACE_DISCOVERY_IMAGES, DEFAULT_KS, Figure4Config,
                                      run_figure4)
from ri_jax.protocols.methods import method_names
from ri_jax.protocols.report import markdown_table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, runs=1, refs_per_class=0, unseen=None)
    p.add_argument("--num-inputs", type=positive_int, default=1000,
                   help="reference images used as inputs, N (capped by the reference set)")
    p.add_argument("--ks", type=positive_int_list, default=",".join(map(str, DEFAULT_KS)),
                   help="comma-separated K values")
    p.add_argument("--num-boundaries", type=positive_int, default=50, help="|Q| for RI")
    add_ri_variant_arg(p)
    p.add_argument("--no-controls", action="store_true",
                   help=f"skip the controls ({', '.join(method_names('control'))})")
    p.add_argument("--block-size", type=positive_int, default=16,
                   help="inputs whose K similar images are evaluated together (memory ~ block·K images)")
    add_fill_args(p)
    add_ace_args(p, max_images_help=f"ACE discovery set size: x and its nearest references "
                                    f"(0 = {ACE_DISCOVERY_IMAGES})")
    p.add_argument("--ace-inputs", type=positive_int, default=10,
                   help="ACE is evaluated on only the first N sampled inputs (it is slow)")
    args = p.parse_args(argv)
    masking_options(args, p)  # validates --blur-sigma
    return args


def _spread(stats: dict) -> str:
    return f"{stats['mean']:.1f} ({stats['min']:.0f}–{stats['max']:.0f})"


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_run(args)
    setup = load_setup(args, out, need_unseen=False)
    n_refs = len(setup.references)
    config = Figure4Config(num_inputs=args.num_inputs, ks=tuple(args.ks),
                           ri=ri_options(args),
                           controls=not args.no_controls, block_size=args.block_size,
                           batch_size=args.batch_size, masking=masking_options(args),
                           ace=ace_settings(args),
                           ace_inputs=args.ace_inputs)
    # Every reference may be a target many times over: decode the set once (uint8 in memory).
    refs = setup.references.cached()
    try:
        result = run_figure4(setup.model, setup.ref_features, refs.raw,
                             seeds=[args.seed + r for r in range(args.runs)], config=config,
                             progress=not args.no_progress)
    except ValueError as e:
        sys.exit(f"--ks: {e}")
    payload = {**result.to_json(),
               "config": describe_run(args, **config.masking.describe(setup.model.image_size),
                                      num_references=n_refs,
                                      num_inputs_used=result.runs[0]["num_inputs"],
                                      ace_config=ace_config(args) if args.ace else None)}
    write_json(out / "figure4.json", payload)
    write_csv(out / "figure4.csv", result.csv_rows())
    atomic_write_text(out / "figure4.md", render_markdown(payload, args))
    ks, names = payload["ks"], result.methods + result.controls
    summary = {**payload["methods"], **payload["controls"]}
    k_curves_figure(ks, {m: {k: summary[m][k]["mean"] for k in ("mAD", "mAI")} for m in names},
                    errors={m: {k: summary[m][k]["std"] for k in ("mAD", "mAI")} for m in names}
                    if args.runs > 1 else None,
                    dashed=result.controls,
                    title=f"Figure 4: how well an interpretation at an input carries over to its K "
                          f"most similar training images ({result.runs[0]['num_inputs']:,} inputs, "
                          f"{args.runs} run{'s' if args.runs > 1 else ''}"
                          f"{', mean ± std' if args.runs > 1 else ''})",
                    footnote=K_CURVES_NOTE + " Similar images: RI's covered references ranked by "
                             "Eq. 6; the other methods' Euclidean neighbours in Ω.",
                    path=out / "figure4.png")
    print_written(out)
    return payload


def render_markdown(payload: dict, args: argparse.Namespace) -> str:
    """Figure 4's curves, images used, RI's interpretations and ties as Markdown."""
    ks, notes, ties = payload["ks"], payload["notes"], payload["ties"]
    controls = list(payload["controls"])
    summary = {**payload["methods"], **payload["controls"]}
    names = list(summary)
    runs = payload["runs"]
    n_refs = payload["config"]["num_references"]
    header = ["method"] + [f"K={k}" for k in ks]
    fmt = lambda s, i: f"{s['mean'][i]:.2f} ± {s['std'][i]:.2f}"
    text = ["# Figure 4: representativeness on reference images",
            "", f"{runs[0]['num_inputs']} inputs from {n_refs} references, {args.runs} run(s), "
            f"|Q| = {args.num_boundaries}, seed {args.seed}. Percent, mean ± std over runs. "
            "Controls are marked with *.", ""]
    for metric in ("mAD", "mAI"):
        text += [f"## {metric} (%)", "", markdown_table(header, [
            [m + ("*" if m in controls else "")] + [fmt(summary[m][metric], i) for i in range(len(ks))]
            for m in names])]
    text += ["## Images used per K (mean |S|)", "", markdown_table(header, [
        [m] + [summary[m]["images_used"][i] for i in range(len(ks))] for m in names]),
        "", notes["fewer_than_k"], ""] + ([notes["ace"], ""] if args.ace else []) + [
        "## RI's interpretations", "", markdown_table(
            ["run", "inputs", "distinct polytopes", "boundaries per polytope (mean, min–max)",
             "references covered (mean, min–max)", "τ (mean)", "empty polytopes"],
            [[r["seed"], ri["interpretations"], ri["distinct_polytopes"],
              _spread(ri["boundaries_per_polytope"]), _spread(ri["references_covered"]),
              ri["tau"]["mean"], ri["empty_polytopes"]]
             for r, ri in zip(runs, payload["interpretations"]["RI"])]),
        "", "## Ties at the 20 % cut", "", f"Rule: {notes['ties']}.", "", markdown_table(
            ["method", "maps", "maps with ties at the cut", "tied pixels dropped", "constant maps"],
            [[m, t["maps"], t["tied_maps"], t["tied_pixels_dropped"], t["flat_maps"]]
             for m, t in ties.items()]), ""]
    if payload["ks_dropped"]:
        text += [f"K values {payload['ks_dropped']} exceed the {n_refs} references and were "
                 "dropped.", ""]
    return "\n".join(text)


if __name__ == "__main__":
    run_script(main)
