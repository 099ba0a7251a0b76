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
(the rest black), "a higher prediction score means a better interpretation".

Written into ``--out``: ``case_<i>.png`` per input (i = test index), and
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

import jax
import numpy as np

from common import (ace_config, ace_random_images, add_ace_args, add_common_args, check_ace_args,
                    describe_run, load_setup, markdown_table, prepare_output,
                    write_csv, write_json)
from figure4 import ACE_DISCOVERY_IMAGES, masked_class_scores
from interpret import choose_inputs, parse_indices
from ri_jax import explainers
from ri_jax.baselines.ace import ACECache
from ri_jax.data import load_dataset
from ri_jax.featurize import compute_features
from ri_jax.plots import CaseBlock, case_study_figure

BLOCKS = ("similar by RI", "Euclidean neighbours")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, refs_per_class=0, unseen=None)
    p.add_argument("--num-inputs", type=int, default=3, help="test images to study (seeded)")
    p.add_argument("--inputs", default=None,
                   help="comma-separated test-split indices (overrides --num-inputs)")
    p.add_argument("--top-k", type=int, default=4, help="similar images per block")
    p.add_argument("--num-boundaries", type=int, default=50, help="|Q| for RI")
    p.add_argument("--layout", choices=("full", "paper"), default="full",
                   help="full: every method under both blocks; paper: RI under RI's images, "
                        "baselines under the Euclidean neighbours (Figure 2)")
    p.add_argument("--with-controls", action="store_true",
                   help="add the Random and Grad-CAM (own weights) rows")
    add_ace_args(p, max_images_help=f"ACE discovery set size: x and its nearest references "
                                    f"(0 = {ACE_DISCOVERY_IMAGES})")
    args = p.parse_args(argv)
    check_ace_args(p, args)
    for name in ("num_inputs", "top_k", "num_boundaries"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    return args


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = prepare_output(args.out, args.resume)
    setup = load_setup(args, out, need_unseen=False)
    fns, params = setup.fns, setup.params
    refs, ref_feats = setup.references, setup.ref_features
    classes = refs.class_names
    test = load_dataset(args.data, "test", image_size=setup.model_config.image_size,
                        class_names=classes)
    try:
        chosen = (parse_indices(args.inputs, len(test)) if args.inputs is not None
                  else choose_inputs(test.labels, args.num_inputs, seed=args.seed))
    except ValueError as e:
        sys.exit(str(e))
    progress = not args.no_progress
    k = min(args.top_k, len(refs))
    in_feats = compute_features(fns, params, test, chosen, batch_size=args.batch_size,
                                cache_dir=Path(args.cache_dir) if args.cache_dir else out / "cache",
                                progress=progress, desc="input features")
    in_raw = test.raw(chosen)
    in_pred = in_feats.predictions
    in_probs = _softmax(in_feats.logits.astype(np.float64))
    ref_probs = _softmax(ref_feats.logits.astype(np.float64))
    psi, size = ref_feats.psi, in_raw.shape[1]

    interpreter = explainers.make_interpreter(fns, params, psi, key=jax.random.key(args.seed),
                                              num_boundaries=args.num_boundaries,
                                              batch_size=args.batch_size)
    ri = explainers.ri_interpretations(interpreter, fns, in_raw, top_k=k)
    interps = {"RI": ri.interpretations}
    for method in explainers.CAM_METHODS:
        interps[method] = explainers.cam_interpretations(method, fns, params, in_raw, in_feats.psi,
                                                         in_pred, progress=progress)
    ri_similar = np.asarray(ri.details.similar)
    ri_dist = np.asarray(ri.details.similar_distances)
    euclid = explainers.euclidean_neighbours(in_feats.psi, psi, k)
    flat_in, flat_refs = in_feats.psi.reshape(len(chosen), -1), psi.reshape(len(psi), -1)
    euclid_dist = np.linalg.norm(flat_refs[euclid] - flat_in[:, None], axis=-1)

    # Every (input, block, position) image as one flat batch of targets; reference -1 = x itself.
    owner, block_of, ref_of, dist_of = [], [], [], []
    for b in range(len(chosen)):  # a few inputs: only bookkeeping, no model calls
        for name, sims, dists in ((BLOCKS[0], ri_similar[b], ri_dist[b]),
                                  (BLOCKS[1], euclid[b], euclid_dist[b])):
            keep = sims >= 0
            owner += [b] * (1 + int(keep.sum()))
            block_of += [name] * (1 + int(keep.sum()))
            ref_of += [-1] + sims[keep].tolist()
            dist_of += [0.0] + dists[keep].tolist()
    owner, ref_of, dist_of = np.asarray(owner), np.asarray(ref_of), np.asarray(dist_of)
    block_of = np.asarray(block_of)
    is_input = ref_of < 0
    t_psi = np.where(is_input[:, None, None, None], in_feats.psi[owner], psi[np.maximum(ref_of, 0)])
    refs_raw = refs.raw(np.maximum(ref_of, 0))
    t_raw = np.where(is_input[:, None, None, None], in_raw[owner], refs_raw)
    score_class = in_pred[owner]
    t_score = np.where(is_input, in_probs[owner, score_class],
                       ref_probs[np.maximum(ref_of, 0), score_class])

    maps = {m: explainers.interpretation_heatmaps(interps[m], owner, t_psi, size) for m in interps}
    if args.with_controls:
        maps["Random"] = explainers.random_heatmaps(len(owner), size,
                                                    key=jax.random.fold_in(jax.random.key(args.seed), 1))
        t_pred = np.where(is_input, in_pred[owner], ref_feats.predictions[np.maximum(ref_of, 0)])
        own = explainers.cam_interpretations("Grad-CAM", fns, params, t_raw, t_psi, t_pred)
        maps["Grad-CAM (own weights)"] = explainers.interpretation_heatmaps(
            own, np.arange(len(owner)), t_psi, size)
    masked = {m: masked_class_scores(fns, params, t_raw, maps[m], score_class,
                                     batch_size=args.batch_size)[0] for m in maps}
    ace_report = None
    if args.ace:
        # Discovery set: x and its nearest references in Ω (the Euclidean block's ranking).
        n_near = min((args.ace_max_images or ACE_DISCOVERY_IMAGES) - 1, len(refs))
        near = (explainers.euclidean_neighbours(in_feats.psi, psi, n_near) if n_near
                else np.zeros((len(chosen), 0), int))
        cache = ACECache()
        k_discover, k_random = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), 2))
        results = explainers.ace_interpretations(
            fns, params, [np.concatenate([in_raw[b:b + 1], refs.raw(near[b])]) for b in
                          range(len(chosen))], in_pred, ace_config(args), key=k_discover,
            cache=cache, random_images=ace_random_images(refs, args, k_random), progress=progress)
        found = explainers.ace_masks(results, owner, t_raw, fns, params, cache=cache)
        maps[explainers.ACE] = found.masks.astype(np.float32)
        probs = explainers.masked_probabilities(fns, params, t_raw, found.masks,
                                                batch_size=args.batch_size)
        masked[explainers.ACE] = probs[np.arange(len(owner)), score_class]
        ace_report = {**explainers.ace_summary(results, found), "discovery_images": 1 + n_near}

    def shown(method: str, block: str) -> bool:
        if args.layout == "full" or method not in explainers.METHODS + (explainers.ACE,):
            return True
        return (method == "RI") == (block == BLOCKS[0])

    records, rows = [], []
    for b, test_index in enumerate(chosen):
        c = classes[in_pred[b]]
        rec = {"test_index": int(test_index), "file": test.ids[test_index],
               "true_label": classes[test.labels[test_index]], "predicted_class": c,
               "probability": float(in_probs[b, in_pred[b]]),
               "ri": {"num_boundaries": int(ri.details.num_selected[b]),
                      "num_covered": int(ri.details.num_covered[b]),
                      "delta": int(ri.details.delta[b]), "empty_polytope": bool(ri.details.empty[b])},
               "blocks": {}, "figure": f"case_{int(test_index)}.png"}
        fig_blocks = []
        for name in BLOCKS:
            sel = np.flatnonzero((owner == b) & (block_of == name))
            images = []
            for pos, t in enumerate(sel):
                j = int(ref_of[t])
                entry = {"position": pos, "reference_index": None if j < 0 else j,
                         "file": rec["file"] if j < 0 else refs.ids[j],
                         "true_label": rec["true_label"] if j < 0 else classes[refs.labels[j]],
                         "distance": float(dist_of[t]), "score": float(t_score[t]),
                         "masked_scores": {m: float(masked[m][t]) for m in maps}}
                images.append(entry)
                rows += [{"test_index": int(test_index), "block": name, "position": pos,
                          "file": Path(entry["file"]).name, "method": m, "score": entry["score"],
                          "masked_score": entry["masked_scores"][m]} for m in maps]
            rec["blocks"][name] = images
            captions = [(f"input, true {e['true_label']}" if e["reference_index"] is None
                         else f"#{e['position']} true {e['true_label']}, d={e['distance']:.3g}")
                        + f"\np({c}) = {e['score']:.3f}" for e in images]
            methods = [m for m in maps if shown(m, name)]
            fig_blocks.append(CaseBlock(
                name=name, images=t_raw[sel], captions=captions,
                method_maps={m: maps[m][sel] for m in methods},
                method_captions={m: [f"masked p = {masked[m][t]:.3f}" for t in sel] for m in methods}))
        records.append(rec)
        case_study_figure(fig_blocks, path=out / rec["figure"],
                          title=f"{Path(rec['file']).name}: predicted {c} "
                                f"(p = {rec['probability']:.2f}), |P(x)| = "
                                f"{rec['ri']['num_boundaries']}; under maps: p({c}) keeping the "
                                f"top 20 % pixels")

    # Mean masked score per method: on the inputs, and on each block's similar images.
    summary = {m: {"input": float(np.mean(masked[m][is_input])),
                   **{name: (float(np.mean(masked[m][~is_input & (block_of == name)]))
                             if np.any(~is_input & (block_of == name)) else None)
                      for name in BLOCKS}} for m in maps}
    payload = {"inputs": records, "mean_masked_scores": summary,
               "notes": {"score": "softmax probability of the input's predicted class c",
                         "masked_score": "the same on the image keeping the top 20 % pixels of the "
                                         "map (rest black); ties: " + explainers.TIE_RULE,
                         "layout": args.layout,
                         **({"ace": "ACE's map is its keep mask (whole segments of its significant "
                                    "concepts, in order of importance, until more than 20 % of "
                                    "the pixels are kept); discovery set: the input and its "
                                    f"{ace_report['discovery_images'] - 1} nearest references "
                                    "in Ω"} if args.ace else {})},
               **({"ace": ace_report} if args.ace else {}),
               "config": describe_run(args, num_references=len(refs), top_k=k,
                                      inputs_used=[int(i) for i in chosen],
                                      ace_config=ace_config(args) if args.ace else None)}
    write_json(out / "case_studies.json", payload)
    write_csv(out / "case_studies.csv", rows)
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    text = ["# Case studies", "",
            f"{len(chosen)} test inputs, {len(refs)} references, |Q| = {args.num_boundaries}, "
            f"top-{k}, seed {args.seed}. Mean probability of the input's predicted class on images "
            "masked to each method's top 20 % (higher is better).", "",
            markdown_table(["method", "input"] + [f"{n} (mean)" for n in BLOCKS],
                           [[m, fmt(s["input"])] + [fmt(s[n]) for n in BLOCKS]
                            for m, s in summary.items()])]
    for rec in records:
        text += [f"## Test image {rec['test_index']} ({Path(rec['file']).name}): {rec['figure']}", "",
                 f"True {rec['true_label']}, predicted {rec['predicted_class']} "
                 f"({rec['probability']:.3f}); |P(x)| = {rec['ri']['num_boundaries']}, "
                 f"{rec['ri']['num_covered']} references covered, δ = {rec['ri']['delta']}.", ""]
        for name in BLOCKS:
            entries = rec["blocks"][name]
            text += [f"**{name}**", "", markdown_table(
                ["method"] + [("input" if e["reference_index"] is None else Path(e["file"]).name)
                              for e in entries],
                [["(unmasked)"] + [f"{e['score']:.3f}" for e in entries]]
                + [[m] + [f"{e['masked_scores'][m]:.3f}" for e in entries] for m in maps])]
    (out / "case_studies.md").write_text("\n".join(text))
    return payload


if __name__ == "__main__":
    main()
