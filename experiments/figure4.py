"""Figure 4 (appendix C): representativeness on reference images, mAD / mAI against K.

    python experiments/figure4.py --out runs/figure4

For N input images sampled from the reference set (``--num-inputs``, default 1,000
as in the paper, capped by the set), every method computes one interpretation at
each input x and reuses it on x's top-K similar references S; AD and AI (Eqs. 7–8,
top 20 % of pixels kept, the rest black) are averaged over S and then over the N
inputs, for K in ``--ks`` (default 1, 5, 10, 20, 30, 40, 50).

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
* Ties at the 20 % cut: ``explainers.TIE_RULE``; ``ties`` counts the affected maps.
* ``--runs`` repeats everything with seeds seed..seed+runs−1 (new inputs, new Q, new
  random masks); curves are mean ± std over runs (std 0 for one run).
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from common import (ace_config, ace_random_images, add_ace_args, add_common_args, check_ace_args,
                    describe_run, load_setup, markdown_table, prepare_output,
                    write_csv, write_json)
from ri_jax import explainers
from ri_jax.baselines.ace import ACECache
from ri_jax.data import sample_count
from ri_jax.metrics import KEEP_FRACTION, cut_ties, mask_image, top_fraction_mask
from ri_jax.plots import k_curves_figure

DEFAULT_KS = (1, 5, 10, 20, 30, 40, 50)
ACE_DISCOVERY_IMAGES = 50  # x and its 49 nearest references


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, runs=1, refs_per_class=0, unseen=None)
    p.add_argument("--num-inputs", type=int, default=1000,
                   help="reference images used as inputs, N (capped by the reference set)")
    p.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma-separated K values")
    p.add_argument("--num-boundaries", type=int, default=50, help="|Q| for RI")
    p.add_argument("--no-controls", action="store_true", help="skip the Random and own-weights controls")
    p.add_argument("--block-size", type=int, default=16,
                   help="inputs whose K similar images are evaluated together (memory ~ block·K images)")
    add_ace_args(p, max_images_help=f"ACE discovery set size: x and its nearest references "
                                    f"(0 = {ACE_DISCOVERY_IMAGES})")
    p.add_argument("--ace-inputs", type=int, default=10,
                   help="ACE is evaluated on only the first N sampled inputs (it is slow)")
    args = p.parse_args(argv)
    check_ace_args(p, args)
    try:
        args.ks = sorted(set(int(k) for k in args.ks.split(",") if k.strip()))
    except ValueError:
        p.error(f"--ks: expected comma-separated integers, got {args.ks!r}")
    if not args.ks or args.ks[0] < 1:
        p.error(f"--ks: need positive K values, got {args.ks}")
    for name in ("num_inputs", "num_boundaries", "block_size", "runs", "ace_inputs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    return args


def input_first(inputs: np.ndarray, candidates: np.ndarray, valid: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each input's similar-image list with the input itself first, then the candidates without it.

    Args:
      inputs: int[V] index of each input among the references.
      candidates: int[V, M] ranked candidate references.
      valid: bool[V, M] which candidates exist (e.g. covered by P(x)).
      k: list length.

    Returns:
      ``(lists int[V, k], used bool[V, k])``; entries past the valid candidates are unused
      (their index is 0).
    """
    keep = valid & (candidates != inputs[:, None])
    # A stable sort on "not kept" moves the kept candidates to the front in rank order.
    order = np.argsort(~keep, axis=1, kind="stable")
    packed = np.take_along_axis(candidates, order, axis=1)[:, :k - 1]
    count = keep.sum(axis=1)
    used_rest = np.arange(packed.shape[1])[None, :] < count[:, None]
    lists = np.concatenate([inputs[:, None], np.where(used_rest, packed, 0)], axis=1)
    used = np.concatenate([np.ones((len(inputs), 1), bool), used_rest], axis=1)
    pad = k - lists.shape[1]  # fewer candidates than k − 1 in total
    return (np.pad(lists, ((0, 0), (0, pad))), np.pad(used, ((0, 0), (0, pad))))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _masked_chunk(fns, params, raw, heatmaps, classes, fraction):
    masks = jax.vmap(lambda m: top_fraction_mask(m, fraction))(heatmaps)
    ties = jax.vmap(lambda m: cut_ties(m, fraction))(heatmaps)
    flat = jnp.min(heatmaps, axis=(1, 2)) == jnp.max(heatmaps, axis=(1, 2))
    masked = jax.vmap(mask_image)(raw, masks)
    probs = jax.nn.softmax(fns.apply(params, fns.normalize(masked)), axis=-1)
    return jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0], ties, flat


def masked_class_scores(fns, params, raw: np.ndarray, heatmaps: np.ndarray, classes: np.ndarray,
                        *, fraction: float = KEEP_FRACTION, batch_size: int = 64
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y_c of images masked to the top ``fraction`` of their heat maps (one forward per image).

    Args:
      fns, params: the model.
      raw: float32[B, S, S, 3] raw images in [0, 1].
      heatmaps: float32[B, S, S] their heat maps.
      classes: int[B] the class c scored on each image.
      fraction: share of pixels kept (``metrics.top_fraction_mask``; the rest is black).
      batch_size: images per jitted call.

    Returns:
      ``(y_masked float[B], tied_pixels int[B], flat bool[B])``: softmax probability of c
      on the masked image, pixels dropped among ties at the cut (``metrics.cut_ties``) and
      whether the map is constant.
    """
    if np.shape(heatmaps) != np.shape(raw)[:3] or np.shape(classes) != np.shape(raw)[:1]:
        raise ValueError(f"heatmaps, classes: shapes {np.shape(heatmaps)}, {np.shape(classes)} do "
                         f"not match raw {np.shape(raw)}")
    fn = functools.partial(_masked_chunk, fns, params, fraction=float(fraction))
    return explainers.map_chunks(fn, (raw, heatmaps, np.asarray(classes, np.int32)), batch_size)


def drop_and_increase(y: np.ndarray, y_masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image terms of Eq. 7 (max(0, Y − Y′)/Y, 0 where Y = 0) and Eq. 8 (Y < Y′)."""
    safe = np.where(y > 0, y, 1.0)
    return np.where(y > 0, np.maximum(y - y_masked, 0.0) / safe, 0.0), y < y_masked


def curves_over_k(drop: np.ndarray, increase: np.ndarray, used: np.ndarray, ks: list[int]) -> dict:
    """mAD / mAI (percent) and mean |S| for each K from per-(input, rank) terms.

    Args:
      drop: float[V, Kmax] AD term of rank r's image for input v.
      increase: bool[V, Kmax] AI term.
      used: bool[V, Kmax] whether rank r exists for input v (rank 0 always does).
      ks: K values ≤ Kmax.

    Returns:
      ``{"mAD": [..], "mAI": [..], "images_used": [..]}``, one entry per K.
    """
    count = np.cumsum(used, axis=1)
    ad = np.cumsum(np.where(used, drop, 0.0), axis=1) / count
    ai = np.cumsum(used & increase, axis=1) / count
    cols = np.asarray(ks) - 1
    return {"mAD": (100.0 * ad[:, cols].mean(axis=0)).tolist(),
            "mAI": (100.0 * ai[:, cols].mean(axis=0)).tolist(),
            "images_used": count[:, cols].mean(axis=0).tolist()}


def ace_curves(setup, refs, args: argparse.Namespace, inputs: np.ndarray, lists: np.ndarray,
               used: np.ndarray, ks: list[int], *, key: jax.Array, cache: ACECache
               ) -> tuple[dict, dict]:
    """ACE's curves on the first ``--ace-inputs`` inputs and what its interpretations were.

    Args:
      setup, refs, args: as for ``run_once``.
      inputs: int[V] the sampled inputs (reference indices).
      lists, used: ``input_first`` Euclidean similar-image lists of every input, [V, Kmax].
      ks: K values.
      key: this run's ACE key (discovery and the random set).
      cache: the model's ``ACECache``.
    """
    fns, params, feats = setup.fns, setup.params, setup.ref_features
    psi, preds = feats.psi, feats.predictions
    n = min(args.ace_inputs, len(inputs))
    size = min(args.ace_max_images or ACE_DISCOVERY_IMAGES, len(psi))
    near = explainers.euclidean_neighbours(psi[inputs[:n]], psi, size)
    sets, set_used = input_first(inputs[:n], near, np.ones_like(near, bool), size)
    k_discover, k_random = jax.random.split(key)
    results = explainers.ace_interpretations(
        fns, params, [refs.raw(row[ok]) for row, ok in zip(sets, set_used)], preds[inputs[:n]],
        ace_config(args), key=k_discover, cache=cache,
        random_images=ace_random_images(refs, args, k_random), progress=not args.no_progress)
    v, r = np.nonzero(used[:n])
    targets = lists[:n][v, r]
    raw_t = refs.raw(targets)
    found = explainers.ace_masks(results, v, raw_t, fns, params, cache=cache)
    ev = explainers.evaluate_masks(fns, params, raw_t, found.masks, logits=feats.logits[targets],
                                   batch_size=args.batch_size)
    drop, inc = np.zeros(used[:n].shape), np.zeros(used[:n].shape, bool)
    drop[v, r], inc[v, r] = ev.drop, ev.increase
    report = {**explainers.ace_summary(results, found), "inputs_evaluated": n,
              "inputs_sampled": len(inputs),
              "discovery_images": {"mean": float(set_used.sum(1).mean()),
                                   "min": int(set_used.sum(1).min())},
              "similar_images": "x, then its nearest references by Euclidean distance in Ω"}
    return curves_over_k(drop, inc, used[:n], ks), report


def run_once(setup, refs, args: argparse.Namespace, seed: int, ks: list[int],
             ace_cache: ACECache | None = None) -> dict:
    """One repetition: every method's curves, tie counts and interpretation report.

    Args:
      setup: the experiment ``Setup`` (model and reference features).
      refs: the reference ``ImageSet`` decoded in memory.
      args: parsed arguments.
      seed: this run's seed (inputs, Q, random masks).
      ks: K values, increasing, at most the number of references.
      ace_cache: with ``--ace``, the model's ``ACECache`` (shared across runs).
    """
    fns, params = setup.fns, setup.params
    feats = setup.ref_features
    psi, preds = feats.psi, feats.predictions
    logits = feats.logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    y_orig = (probs / probs.sum(axis=1, keepdims=True))[np.arange(len(preds)), preds]
    n_refs, size, kmax = len(preds), refs.image_size, ks[-1]
    inputs = sample_count(n_refs, args.num_inputs, seed=seed)
    raw_inputs = refs.raw(inputs)
    progress = not args.no_progress
    key = jax.random.key(seed)

    interpreter = explainers.make_interpreter(fns, params, psi, key=key,
                                              num_boundaries=args.num_boundaries,
                                              batch_size=args.batch_size)
    ri = explainers.ri_interpretations(interpreter, fns, raw_inputs, progress=progress)
    # The first kmax ranks hold x or, besides x, at least kmax − 1 others: enough for input_first.
    ranked = np.asarray(ri.details.ranked)[:, :kmax]
    count = np.asarray(ri.details.num_covered)
    similar = {"RI": input_first(inputs, ranked, np.arange(kmax)[None, :] < count[:, None], kmax)}
    neighbours = explainers.euclidean_neighbours(psi[inputs], psi, kmax)
    similar["Euclidean"] = input_first(inputs, neighbours, np.ones_like(neighbours, bool), kmax)

    interps = {"RI": ri.interpretations}
    for method in explainers.CAM_METHODS:
        interps[method] = explainers.cam_interpretations(
            method, fns, params, raw_inputs, psi[inputs], preds[inputs], progress=progress)
    controls = () if args.no_controls else explainers.CONTROLS
    names = list(interps) + list(controls)
    uses = {m: "RI" if m == "RI" else "Euclidean" for m in names}

    grids = {m: (np.zeros((len(inputs), kmax)), np.zeros((len(inputs), kmax), bool)) for m in names}
    ties = {m: {"maps": 0, "tied_maps": 0, "tied_pixels_dropped": 0, "flat_maps": 0} for m in names}
    for block, start in enumerate(tqdm(range(0, len(inputs), args.block_size), disable=not progress,
                                       desc="Figure 4 blocks", leave=False)):
        rows = np.arange(start, min(start + args.block_size, len(inputs)))
        for list_name, (lists, used) in similar.items():
            v, r = np.nonzero(used[rows])
            targets = lists[rows][v, r]
            raw_t, psi_t, pred_t = refs.raw(targets), psi[targets], preds[targets]
            for m in (m for m in names if uses[m] == list_name):  # a handful of methods
                if m in interps:
                    maps = explainers.interpretation_heatmaps(interps[m], rows[v], psi_t, size)
                else:
                    maps = explainers.control_heatmaps(m, fns, params, raw_t, psi_t, pred_t,
                                                       key=jax.random.fold_in(key, block))
                y_masked, tied, flat = masked_class_scores(fns, params, raw_t, maps, pred_t,
                                                           batch_size=args.batch_size)
                d, inc = drop_and_increase(y_orig[targets], y_masked)
                grids[m][0][rows[v], r] = d
                grids[m][1][rows[v], r] = inc
                t = ties[m]
                t["maps"] += len(targets)
                t["tied_maps"] += int(np.sum(tied > 0))
                t["tied_pixels_dropped"] += int(np.sum(tied))
                t["flat_maps"] += int(np.sum(flat))

    curves = {m: curves_over_k(*grids[m], similar[uses[m]][1], ks) for m in names}
    report = {"RI": explainers.ri_summary(ri)}
    for m in explainers.CAM_METHODS:
        report[m] = {"interpretations": len(inputs), "channel_weights": f"{m} at each input x",
                     "similar_images": "x, then its nearest references by Euclidean distance in Ω"}
    if args.ace:
        curves[explainers.ACE], report[explainers.ACE] = ace_curves(
            setup, refs, args, inputs, *similar["Euclidean"], ks,
            key=jax.random.fold_in(key, 2**20), cache=ace_cache)
    return {"seed": seed, "num_inputs": len(inputs), "curves": curves, "ties": ties,
            "interpretations": report}


def _spread(stats: dict) -> str:
    return f"{stats['mean']:.1f} ({stats['min']:.0f}–{stats['max']:.0f})"


def aggregate(runs: list[dict], names: list[str]) -> dict:
    """Mean ± std over runs of every curve."""
    out = {}
    for m in names:
        per = {key: np.asarray([r["curves"][m][key] for r in runs]) for key in ("mAD", "mAI", "images_used")}
        out[m] = {"mAD": {"mean": per["mAD"].mean(0).tolist(), "std": per["mAD"].std(0).tolist()},
                  "mAI": {"mean": per["mAI"].mean(0).tolist(), "std": per["mAI"].std(0).tolist()},
                  "images_used": per["images_used"].mean(0).tolist()}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_output(args.out, args.resume)
    setup = load_setup(args, out, need_unseen=False)
    n_refs = len(setup.references)
    ks = [k for k in args.ks if k <= n_refs]
    dropped = [k for k in args.ks if k > n_refs]
    if not ks:
        sys.exit(f"--ks: every K exceeds the {n_refs} references")
    # Every reference may be a target many times over: decode the set once (uint8 in memory).
    refs = setup.references.cached()
    ace_cache = ACECache() if args.ace else None
    runs = [run_once(setup, refs, args, args.seed + r, ks, ace_cache) for r in range(args.runs)]

    methods = list(explainers.METHODS) + ([explainers.ACE] if args.ace else [])
    controls = [] if args.no_controls else list(explainers.CONTROLS)
    summary = aggregate(runs, methods + controls)
    ties = {m: {k: sum(r["ties"][m][k] for r in runs) for k in runs[0]["ties"][m]}
            for m in runs[0]["ties"]}
    notes = {
        "similar_images": "RI: x first, then the references covered by P(x) by ascending Eq. 6 "
                          "distance; baselines and controls: x first, then the nearest references "
                          "by Euclidean distance in Ω.",
        "fewer_than_k": "When P(x) covers fewer than K references, RI's AD/AI for that input are "
                        "averaged over the covered references only; images_used is the mean |S| "
                        "per K.",
        "ties": explainers.TIE_RULE,
        "fallback": "not applicable: every input is a reference and uses its own interpretation",
    }
    if args.ace:
        ace_n = runs[0]["interpretations"][explainers.ACE]["inputs_evaluated"]
        notes["ace"] = (f"ACE is evaluated on only the first {ace_n} of the "
                        f"{runs[0]['num_inputs']} sampled inputs (--ace-inputs; it is slow), so "
                        "its curves average fewer inputs than the other methods'. Its discovery "
                        f"set is x and its {(args.ace_max_images or ACE_DISCOVERY_IMAGES) - 1} "
                        "nearest references in Ω; S = the same Euclidean neighbours as the "
                        "CAMs; kept pixels are whole segments of its significant concepts, in "
                        "order of importance, until more than 20 % are kept (no ties).")
    payload = {"ks": ks, "ks_dropped": dropped,
               "methods": {m: summary[m] for m in methods},
               "controls": {m: summary[m] for m in controls},
               "ties": ties,
               "interpretations": {m: [r["interpretations"][m] for r in runs]
                                   for m in runs[0]["interpretations"]},
               "runs": [{"seed": r["seed"], "num_inputs": r["num_inputs"], "curves": r["curves"]}
                        for r in runs],
               "notes": notes,
               "config": describe_run(args, num_references=n_refs,
                                      num_inputs_used=runs[0]["num_inputs"],
                                      ace_config=ace_config(args) if args.ace else None)}
    write_json(out / "figure4.json", payload)
    write_csv(out / "figure4.csv", [
        {"method": m, "kind": "method" if m in methods else "control", "K": k,
         "mAD_mean": summary[m]["mAD"]["mean"][i], "mAD_std": summary[m]["mAD"]["std"][i],
         "mAI_mean": summary[m]["mAI"]["mean"][i], "mAI_std": summary[m]["mAI"]["std"][i],
         "images_used": summary[m]["images_used"][i]}
        for m in methods + controls for i, k in enumerate(ks)])
    header = ["method"] + [f"K={k}" for k in ks]
    fmt = lambda s, i: f"{s['mean'][i]:.2f} ± {s['std'][i]:.2f}"
    text = ["# Figure 4: representativeness on reference images",
            "", f"{runs[0]['num_inputs']} inputs from {n_refs} references, {args.runs} run(s), "
            f"|Q| = {args.num_boundaries}, seed {args.seed}. Percent, mean ± std over runs. "
            "Controls are marked with *.", ""]
    for metric in ("mAD", "mAI"):
        text += [f"## {metric} (%)", "", markdown_table(header, [
            [m + ("*" if m in controls else "")] + [fmt(summary[m][metric], i) for i in range(len(ks))]
            for m in methods + controls])]
    text += ["## Images used per K (mean |S|)", "", markdown_table(header, [
        [m] + [summary[m]["images_used"][i] for i in range(len(ks))] for m in methods + controls]),
        "", notes["fewer_than_k"], ""] + ([notes["ace"], ""] if args.ace else []) + [
        "## RI's interpretations", "", markdown_table(
            ["run", "inputs", "distinct polytopes", "boundaries per polytope (mean, min–max)",
             "references covered (mean, min–max)", "τ (mean)", "empty polytopes"],
            [[r["seed"], ri["interpretations"], ri["distinct_polytopes"],
              _spread(ri["boundaries_per_polytope"]), _spread(ri["references_covered"]),
              ri["tau"]["mean"], ri["empty_polytopes"]]
             for r, ri in zip(runs, (r["interpretations"]["RI"] for r in runs))]),
        "", "## Ties at the 20 % cut", "", f"Rule: {notes['ties']}.", "", markdown_table(
            ["method", "maps", "maps with ties at the cut", "tied pixels dropped", "constant maps"],
            [[m, t["maps"], t["tied_maps"], t["tied_pixels_dropped"], t["flat_maps"]]
             for m, t in ties.items()]), ""]
    if dropped:
        text += [f"K values {dropped} exceed the {n_refs} references and were dropped.", ""]
    (out / "figure4.md").write_text("\n".join(text))
    k_curves_figure(ks, {m: {k: summary[m][k]["mean"] for k in ("mAD", "mAI")} for m in methods + controls},
                    errors={m: {k: summary[m][k]["std"] for k in ("mAD", "mAI")} for m in methods + controls}
                    if args.runs > 1 else None,
                    dashed=controls, title=f"Figure 4: {runs[0]['num_inputs']} reference inputs, "
                                           f"{args.runs} run(s)", path=out / "figure4.png")
    return payload


if __name__ == "__main__":
    main()
