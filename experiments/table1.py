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
   pixels are kept, the rest painted black, and AD / AI (Eqs. 7–8) compare the
   softmax probability of the class the model predicts on e before and after.

mAD / mAI are mean ± std (population) over the runs, in percent, like the paper.

Written into --out: ``table1.json`` (``methods``: the paper's methods; ``controls``;
``interpretations``: per method and run, what the interpretations were: distinct
polytopes, boundaries per polytope, references covered, τ, how many unseen images
were routed by a polytope or fell back to the nearest centre, ties at the 20 % cut),
``table1.csv`` (one row per method and run), ``table1.md`` (also printed).

Controls beside the paper's methods (under ``controls``): "Random" keeps a uniformly
random 20 % of each image's pixels; "Grad-CAM (own weights)" computes Grad-CAM at each
unseen image itself, i.e. without reuse (deterministic, so computed once: its std is 0).

Choices the paper leaves open:
* The reference and unseen sets are drawn once with --seed (--refs-per-class per class
  from the train split, default 2,500 as §6.2, capped by the set; --unseen from the
  test split, default 1,000); runs differ in the k-means seeding, the sample Q and the
  random control. Table 2 with the same --seed and runs builds the same |V| polytopes.
* A CAM explains the class the model predicts on its input image, as RI does. Y_c on
  the unmasked unseen images comes from the cached feature pass (same model).
* Two centres may share their nearest reference; both interpretations then coincide.
* Ties at the 20 % cut follow ``explainers.TIE_RULE``; empty polytopes draw all-zero
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

import jax
import numpy as np
from tqdm.auto import tqdm

from common import (ace_config, ace_random_images, add_ace_args, add_common_args, check_ace_args,
                    describe_run, format_mean_std, load_setup, markdown_table,
                    mean_std, prepare_output, write_csv, write_json)
from ri_jax import explainers as ex
from ri_jax.baselines.ace import ACECache
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES
from ri_jax.metrics import KEEP_FRACTION


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, runs=5, refs_per_class=2500, unseen=1000)
    p.add_argument("--per-class", type=int, default=10,
                   help="interpretations per class: |V| = per-class × classes")
    p.add_argument("--num-boundaries", type=int, default=DEFAULT_NUM_BOUNDARIES, help="|Q| for RI")
    add_ace_args(p, max_images_help="ACE discovery images per cluster, nearest the centre first "
                                    "(0 = all)")
    args = p.parse_args(argv)
    for name in ("runs", "per_class", "num_boundaries"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    check_ace_args(p, args)
    return args


def routing_report(routing: ex.Routing) -> dict:
    return {"routed_by_polytope": int(routing.covered.sum()),
            "routed_to_nearest_centre": int(routing.fallback.sum()),
            "interpretations_used": int(len(np.unique(routing.which)))}


def tie_report(ev: ex.Evaluation) -> dict:
    return {"tied_images": ev.tied_images, "tied_pixels": ev.tied_pixels, "flat_maps": ev.flat_maps}


def run_once(setup, args, seed: int, raw_unseen: np.ndarray, ace_cache: ACECache | None,
             own_weights: tuple[ex.Evaluation, dict],
             progress: bool) -> dict[str, tuple[ex.Evaluation, dict]]:
    """One run of the protocol: every method's and control's evaluation and report."""
    fns, params = setup.fns, setup.params
    refs, ref_f, un_f = setup.references, setup.ref_features, setup.unseen_features
    size = setup.model_config.image_size
    keys = ex.protocol_keys(seed)
    num_v = args.per_class * setup.references.num_classes
    km = ex.kmeans_inputs(ref_f.psi, num_v, key=keys.kmeans)
    raw_inputs = refs.raw(km.inputs)
    in_psi, in_cls = ref_f.psi[km.inputs], ref_f.predictions[km.inputs]
    nearest = ex.nearest_centre(un_f.psi, km.centres)
    common = {"interpretations": num_v, "distinct_inputs": int(len(np.unique(km.inputs)))}
    evaluate = lambda maps: ex.evaluate_heatmaps(fns, params, raw_unseen, maps,
                                                 logits=un_f.logits, batch_size=args.batch_size)
    out = {}
    for method in tqdm(ex.METHODS, desc=f"run seed={seed}", disable=not progress, leave=False):
        if method == "RI":
            interpreter = ex.make_interpreter(fns, params, ref_f.psi, key=keys.boundaries,
                                              num_boundaries=args.num_boundaries,
                                              batch_size=args.batch_size)
            ri = ex.ri_interpretations(interpreter, fns, raw_inputs)
            routing, interps = ex.route_ri(ri.regions, un_f.psi, km.centres), ri.interpretations
            extra = ex.ri_summary(ri)
        else:
            interps = ex.cam_interpretations(method, fns, params, raw_inputs, in_psi, in_cls)
            routing, extra = nearest, {}
        ev = evaluate(ex.interpretation_heatmaps(interps, routing.which, un_f.psi, size))
        out[method] = (ev, {**common, **extra, **routing_report(routing), **tie_report(ev)})
    if args.ace:
        members = [np.flatnonzero(km.assignment == v) for v in range(num_v)]
        if args.ace_max_images:
            dist = ((ref_f.psi.reshape(len(ref_f.psi), -1) - km.centres[km.assignment]) ** 2).sum(1)
            members = [m[np.argsort(dist[m], kind="stable")[:args.ace_max_images]] for m in members]
        k_discover, k_random_set = jax.random.split(keys.ace)
        results = ex.ace_interpretations(fns, params, [refs.raw(m) for m in members], in_cls,
                                         ace_config(args), key=k_discover, cache=ace_cache,
                                         random_images=ace_random_images(refs, args, k_random_set))
        found = ex.ace_masks(results, nearest.which, raw_unseen, fns, params, cache=ace_cache)
        ev = ex.evaluate_masks(fns, params, raw_unseen, found.masks, logits=un_f.logits,
                               batch_size=args.batch_size)
        out[ex.ACE] = (ev, {**common, **ex.ace_summary(results, found),
                            "discovery_images": {"mean": float(np.mean([len(m) for m in members])),
                                                 "min": int(min(len(m) for m in members))},
                            **routing_report(nearest)})
    ev = evaluate(ex.random_heatmaps(len(raw_unseen), size, key=keys.random))
    out["Random"] = (ev, {"reuse": False, **tie_report(ev)})
    out["Grad-CAM (own weights)"] = own_weights
    return out


def own_weights_control(setup, raw_unseen: np.ndarray, batch_size: int) -> tuple[ex.Evaluation, dict]:
    """Grad-CAM at each unseen image itself; it involves no random choice, so it runs once."""
    un_f = setup.unseen_features
    maps = ex.control_heatmaps("Grad-CAM (own weights)", setup.fns, setup.params, raw_unseen,
                               un_f.psi, un_f.predictions, key=None)
    ev = ex.evaluate_heatmaps(setup.fns, setup.params, raw_unseen, maps, logits=un_f.logits,
                              batch_size=batch_size)
    return ev, {"reuse": False, **tie_report(ev)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_output(args.out, args.resume)
    progress = not args.no_progress
    setup = load_setup(args, out)
    raw_unseen = setup.unseen.raw(np.arange(len(setup.unseen)))
    ace_cache = ACECache() if args.ace else None
    seeds = [args.seed + r for r in range(args.runs)]
    own = own_weights_control(setup, raw_unseen, args.batch_size)
    per_run = [run_once(setup, args, s, raw_unseen, ace_cache, own, progress)
               for s in tqdm(seeds, desc="Table 1 runs", disable=not progress)]
    names = list(per_run[0])
    rows = [{"run": r, "seed": s, "method": n,
             "kind": "control" if n in ex.CONTROLS else "method",
             "AD": res[n][0].ad, "AI": res[n][0].ai,
             **{k: v for k, v in res[n][1].items() if not isinstance(v, dict)}}
            for r, (s, res) in enumerate(zip(seeds, per_run)) for n in names]
    summary = {n: {"mAD": mean_std([res[n][0].ad for res in per_run]),
                   "mAI": mean_std([res[n][0].ai for res in per_run])} for n in names}
    payload = {
        "methods": {n: summary[n] for n in names if n not in ex.CONTROLS},
        "controls": {n: summary[n] for n in ex.CONTROLS},
        "interpretations": {n: [res[n][1] for res in per_run] for n in names},
        "tie_rule": ex.TIE_RULE,
        "config": describe_run(args, seeds=seeds, num_interpretations=args.per_class
                               * setup.references.num_classes,
                               num_references=len(setup.references), num_unseen=len(raw_unseen),
                               keep_fraction=KEEP_FRACTION, units="percent",
                               std="population std over runs",
                               ace_config=ace_config(args) if args.ace else None),
    }
    write_json(out / "table1.json", payload)
    write_csv(out / "table1.csv", rows)
    md = render_markdown(payload)
    (out / "table1.md").write_text(md)
    print(md)
    return payload


def render_markdown(payload: dict) -> str:
    """Table 1 as Markdown: methods, controls, and what the interpretations were."""
    cfg = payload["config"]
    text = [f"# Table 1: mAD / mAI (%) on {cfg['num_unseen']} unseen images, |V| = "
            f"{cfg['num_interpretations']}, {len(cfg['seeds'])} run(s)\n",
            markdown_table(["Method", "mAD (%) ↓", "mAI (%) ↑"],
                           [[n, format_mean_std(s["mAD"]), format_mean_std(s["mAI"])]
                            for n, s in payload["methods"].items()]),
            "\nControls (not in the paper): a random 20 % of the pixels, and Grad-CAM computed "
            "at each unseen image itself (no reuse).\n",
            markdown_table(["Control", "mAD (%)", "mAI (%)"],
                           [[n, format_mean_std(s["mAD"]), format_mean_std(s["mAI"])]
                            for n, s in payload["controls"].items()]),
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
    return "".join(text)


if __name__ == "__main__":
    main()
