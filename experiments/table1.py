"""Table 1 (§6.4): representativeness on unseen images, mAD / mAI of reused interpretations.

    python experiments/table1.py --out runs/table1

Per run r (seed = --seed + r):

1. k-means (k-means++ seeding) on the references' ψ in Ω gives |V| clusters,
   |V| = --per-class × classes (10 × classes, as the paper); the reference nearest
   each centre is interpretation v's input image.
2. Every method computes one interpretation at each input: RI (|Q| =
   --num-boundaries boundaries sampled from the references, P(x) by Algorithm 1,
   channel weights of Eq. 5), Grad-CAM, Grad-CAM++ and Score-CAM (channel weights of
   the class the model predicts on the input), and with --ace ACE (concepts
   discovered on the references of cluster v).
3. Every unseen image e is routed to one interpretation: RI uses the polytope that
   covers e (several: the one covering the most references; none: the nearest
   centre's); the baselines use the nearest centre's.
4. The interpretation is drawn on e with its weights unchanged (§6.1), the top 20 % of
   pixels are kept, the rest painted with --fill (black, the paper's, by default), and
   AD / AI (Eqs. 7–8) compare the softmax probability of the class the model predicts
   on e before and after.

mAD / mAI are mean ± std (population) over the runs, in percent, like the paper.

Written into --out: ``table1.json`` (``methods``: the paper's methods; ``controls``;
``interpretations``: per method and run, what the interpretations were: distinct
polytopes, boundaries per polytope, references covered, τ, how many unseen images
were routed by a polytope or fell back to the nearest centre, ties at the 20 % cut),
``table1.csv`` (one row per method and run), ``table1.md`` (also printed).

Beside the paper's AD / AI at 20 % (--faithfulness all, the default): ``faithfulness`` in
``table1.json`` holds, for every method, control and own-input control ("RI (own
weights)", …: the method computed at the unseen image itself), deletion / insertion AUCs
(insertion from the blurred image and from the mean colour), ROAD (MoRF, LeRF and
combined over --road-percentiles, pytorch-grad-cam's imputation) and AD / AI keeping 5, 10,
20, 30 and 50 % under --fill, on --faithfulness-images unseen images evenly spaced over the set, with the
mean curves; ``faithfulness_curves.png`` plots them and ``table1.md`` ends with a verdict
across the measures. --faithfulness keep scores only AD / AI at the keep fractions.

Controls beside the paper's methods (under ``controls``): "Random" keeps a uniformly
random 20 % of each image's pixels; "Grad-CAM (own weights)" computes Grad-CAM at each
unseen image itself, i.e. without reuse; "Centre square" keeps the same centred 20 % of
every image (the last two are deterministic, so computed once: their std is 0).

Checks of the metric itself: every method's and deterministic control's ``inverse``
(its least important 20 %, mAD / mAI), ``per_class`` (AD / AI split by the class
predicted on the unmasked image) and ``fill_prior`` (the model's probabilities on an
all-fill image; for --fill blur, the mean over the fully blurred unseen images). The
fill is recorded as ``config.fill`` (and ``config.blur_sigma``, in pixels).

Choices the paper leaves open:
* The reference and unseen sets are drawn once with --seed (--refs-per-class per class
  from the train split, default 2,500 as §6.2, capped by the set; --unseen from the
  test split, default 1,000); runs differ in the k-means seeding, the sample Q and the
  random control. Table 2 with the same --seed and runs builds the same |V| polytopes.
* A CAM explains the class the model predicts on its input image, as RI does. Y_c on
  the unmasked unseen images comes from the cached feature pass (same model).
* Two centres may share their nearest reference; both interpretations then coincide.
* Ties at the 20 % cut follow ``protocols.scoring.TIE_RULE``; empty polytopes draw all-zero
  maps, whose kept pixels are then 20 % spread by the fixed tie order (counted as
  ``flat_maps``).
* ACE's discovery set for cluster v is its members (--ace-max-images keeps the ones
  nearest the centre, 0 = all); it explains the class predicted on v's input image.
  TCAV's random counterparts are patches of --ace-random-images references drawn per run
  from all classes (ACE draws random ImageNet images). Its settings are --ace-segments,
  --ace-min-members and --ace-repeats; its kept pixels are whole segments, added until
  more than 20 % are kept (§6.2).
"""

from __future__ import annotations

import argparse

import numpy as np

from common import (prepare_run, print_written, HelpFormatter, ace_config, ace_settings, add_ace_args, add_common_args,
                    add_fill_args, add_polytope_args, describe_run, load_setup, masking_options,
                    ri_options, write_csv, write_json)
from ri_jax.files import atomic_write_text
from ri_jax.cli import run_script
from ri_jax.plots import faithfulness_curves_figure
from ri_jax.metrics import KEEP_FRACTION
from ri_jax.protocols.statistics import format_mean_std
from ri_jax.protocols.report import (faithfulness_tables, markdown_table,
                                     measures_verdict, table1_fill_section)
from ri_jax.protocols.faithfulness import MEASURE_SETS, FaithfulnessOptions
from ri_jax.protocols.table1 import Table1Config, is_control, run_table1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p, runs=5, refs_per_class=0, unseen=1000)
    add_polytope_args(p)
    add_fill_args(p)
    add_ace_args(p, max_images_help="ACE discovery images per cluster, nearest the centre first "
                                    "(0 = all)")
    add_faithfulness_args(p)
    args = p.parse_args(argv)
    masking_options(args, p)  # validates --blur-sigma
    faithfulness_options(args, p)  # validates the faithfulness settings
    return args


def add_faithfulness_args(p: argparse.ArgumentParser) -> None:
    """--faithfulness, --faithfulness-images, --curve-step, --road-percentiles."""
    p.add_argument("--faithfulness", choices=MEASURE_SETS, default="all",
                   help="beside AD / AI at 20 %%: all = deletion / insertion curves, ROAD and AD / "
                        "AI at 5, 10, 20, 30, 50 %% kept; keep = only AD / AI at those fractions "
                        "(the part that depends on --fill); none")
    p.add_argument("--faithfulness-images", type=int, default=100,
                   help="score the faithfulness measures on N unseen images evenly spaced over the set "
                        "(0 = all)")
    p.add_argument("--curve-step", type=float, default=0.05,
                   help="largest share of pixels per deletion / insertion step")
    p.add_argument("--road-percentiles", default="10,30,50,70,90",
                   help="comma-separated ROAD percentiles")


def faithfulness_options(args: argparse.Namespace, p: argparse.ArgumentParser | None = None
                         ) -> FaithfulnessOptions:
    """The ``FaithfulnessOptions`` of the faithfulness arguments; with ``p`` a bad one is a usage error."""
    try:
        percentiles = tuple(float(v) for v in args.road_percentiles.split(",") if v.strip())
        return FaithfulnessOptions(measures=args.faithfulness, images=args.faithfulness_images,
                                   step=args.curve_step, road_percentiles=percentiles,
                                   batch_size=min(args.batch_size, 64))
    except ValueError as e:
        if p is None:
            raise
        p.error(f"faithfulness: {e}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_run(args)
    setup = load_setup(args, out)
    raw_unseen = setup.unseen.raw(np.arange(len(setup.unseen)))
    seeds = [args.seed + r for r in range(args.runs)]
    config = Table1Config(per_class=args.per_class, batch_size=args.batch_size,
                          ri=ri_options(args),
                          masking=masking_options(args), ace=ace_settings(args),
                          faithfulness=faithfulness_options(args))
    result = run_table1(setup.model, setup.ref_features, setup.unseen_features,
                        setup.references.raw, raw_unseen,
                        num_classes=setup.references.num_classes, seeds=seeds, config=config,
                        class_names=setup.references.class_names, progress=not args.no_progress)
    payload = {
        **result.to_json(),
        "config": describe_run(args, **config.masking.describe(setup.model.image_size),
                               seeds=seeds, num_interpretations=args.per_class
                               * setup.references.num_classes,
                               num_references=len(setup.references), num_unseen=len(raw_unseen),
                               keep_fraction=KEEP_FRACTION, units="percent",
                               std="population std over runs",
                               ace_config=ace_config(args) if args.ace else None),
    }
    write_json(out / "table1.json", payload)
    write_csv(out / "table1.csv", result.csv_rows())
    md = render_markdown(payload)
    atomic_write_text(out / "table1.md", md)
    curves = payload.get("faithfulness", {}).get("curves")
    if curves:
        faithfulness_curves_figure(
            curves, dashed=[n for n in curves if is_control(n)],
            title=f"Deletion and insertion curves, {setup.model.source}: "
                  f"{payload['faithfulness']['config']['images_scored']} unseen images, "
                  f"{len(seeds)} run(s)", path=out / "faithfulness_curves.png")
    print(md)
    print_written(out)
    return payload


def render_markdown(payload: dict) -> str:
    """Table 1 as Markdown: methods, controls, the fill's checks, and what the interpretations were."""
    cfg = payload["config"]
    text = [f"# Table 1: mAD / mAI (%) on {cfg['num_unseen']} unseen images, |V| = "
            f"{cfg['num_interpretations']}, {len(cfg['seeds'])} run(s), fill {cfg['fill']}\n",
            markdown_table(["Method", "mAD (%) ↓", "mAI (%) ↑"],
                           [[n, format_mean_std(s["mAD"]), format_mean_std(s["mAI"])]
                            for n, s in payload["methods"].items()]),
            "\nControls (not in the paper): a random 20 % of the pixels, Grad-CAM computed "
            "at each unseen image itself (no reuse), and the same centred square on every image.\n",
            markdown_table(["Control", "mAD (%)", "mAI (%)"],
                           [[n, format_mean_std(s["mAD"]), format_mean_std(s["mAI"])]
                            for n, s in payload["controls"].items()]),
            "\n" + "\n".join(table1_fill_section(cfg["fill"], payload)),
            "\nWhat the interpretations were (means over runs):\n"]
    rows = []
    for name, reports in payload["interpretations"].items():
        mean = lambda key, sub=None: (
            "–" if key not in reports[0] else
            f"{np.mean([r[key]['mean'] if sub else r[key] for r in reports]):.1f}")
        rows.append([name, mean("distinct_polytopes"), mean("boundaries_per_polytope", True),
                     mean("references_covered", True), mean("tau", True),
                     mean("routed_by_polytope"), mean("routed_to_nearest_centre"),
                     mean("tied_images"), mean("flat_maps")])
    text.append(markdown_table(["Method", "distinct polytopes", "boundaries / polytope",
                                "refs covered / polytope", "τ", "unseen routed by polytope",
                                "unseen to nearest centre", "maps with ties at cut",
                                "flat maps"], rows))
    text.append(f"\nTies at the 20 % cut: {payload['tie_rule']}.\n")
    if payload.get("faithfulness"):
        text.append("\n## Beyond AD / AI at 20 %\n\n" + "\n".join(
            faithfulness_tables(payload) + measures_verdict({cfg["fill"]: payload})))
    return "".join(text)


if __name__ == "__main__":
    run_script(main)
