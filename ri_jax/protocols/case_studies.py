"""Case studies (Figures 2, 3 and 8): one input, its similar images and every method's maps.

For each input x two blocks of images are compared: "similar by RI" (x and its top-k
references covered by P(x), ranked by Eq. 6) and "Euclidean neighbours" (x and its k
nearest references in Ω, how the baselines find similar images, §6.1). Every method
computes its interpretation at x and reuses it on the images of both blocks. Each
image is scored by the softmax probability of x's predicted class c, unmasked and
masked to each map's top 20 % (the rest filled with ``config.masking.fill``, black
by default). Optional rows: the controls, and ACE
(discovered on x and its nearest references; its "heat map" is its keep mask).
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from ri_jax.baselines.ace import ACECache
from ri_jax.featurize import Features
from ri_jax.model import Model, softmax
from ri_jax.plots import polytope_description
from ri_jax.protocols import ace_adapter, methods, routing, scoring
from ri_jax.protocols.ace_adapter import ACE_DISCOVERY_IMAGES, ACESettings
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.scoring import MaskingOptions
from ri_jax.regions import covered_by_class

BLOCKS = ("similar by RI", "Euclidean neighbours")
LAYOUTS = ("full", "paper")
# The registered controls ``CaseStudiesConfig.controls`` adds as rows, in this order.
CONTROLS_SHOWN = ("Random", "Grad-CAM (own weights)")


@dataclasses.dataclass(frozen=True)
class CaseStudiesConfig:
    """Settings of the case studies.

    Attributes:
      top_k: similar images per block (capped by the reference set).
      ri: how RI is built (|Q|, batch sizes).
      layout: "full" draws every method under both blocks; "paper" RI only under RI's
        images and the baselines only under the Euclidean neighbours (Figure 2).
      controls: add the rows of the controls ``CONTROLS_SHOWN``.
      batch_size: images per forward pass when scoring.
      masking: how heat maps become masked images.
      ace: ACE settings (``max_images``: discovery set size, x included, 0 = 50); None
        leaves ACE out.
    """

    top_k: int = 4
    ri: RIOptions = RIOptions(num_boundaries=50)
    layout: str = "full"
    controls: bool = False
    batch_size: int = 128
    masking: MaskingOptions = MaskingOptions()
    ace: ACESettings | None = None


class CaseInputs(NamedTuple):
    """The studied input images.

    Attributes:
      raw: float32[B, S, S, 3] raw images in [0, 1].
      features: their ``Features`` (ψ, logits, predictions).
      indices: int[B] their indices in their split (the figure is named after them).
      ids: B file names.
      labels: int[B] ground truth.
    """

    raw: np.ndarray
    features: Features
    indices: np.ndarray
    ids: Sequence[str]
    labels: np.ndarray


class CaseReferences(NamedTuple):
    """The reference set.

    Attributes:
      features: ``Features`` [N, ...].
      raw: indices int[n] -> float32[n, S, S, 3] raw reference images.
      ids: N file names.
      labels: int[N] ground truth.
      class_names: class names, indexed by label.
    """

    features: Features
    raw: Callable[[np.ndarray], np.ndarray]
    ids: Sequence[str]
    labels: np.ndarray
    class_names: Sequence[str]


class CaseStudiesResult(NamedTuple):
    """Every score of the case studies and what their figures show.

    Attributes:
      records: one dict per input (blocks with every image's scores, RI's polytope).
      mean_masked_scores: per method, mean masked score on the inputs and on each block.
      notes: how the scores were computed.
      ace: what ACE's interpretations were (None without ACE).
      top_k: similar images per block used.
      panels: per input, one dict per block with the ``plots.CaseBlock`` fields.
      titles: per input, its figure title.
      rows: one CSV row per input, block, position and method.
    """

    records: list[dict]
    mean_masked_scores: dict
    notes: dict
    ace: dict | None
    top_k: int
    panels: list[list[dict]]
    titles: list[str]
    rows: list[dict]

    def to_json(self) -> dict:
        """``inputs``, ``mean_masked_scores``, ``notes`` and, with ACE, ``ace``."""
        return {"inputs": self.records, "mean_masked_scores": self.mean_masked_scores,
                "notes": self.notes, **({"ace": self.ace} if self.ace is not None else {})}


def run_case_studies(model: Model, inputs: CaseInputs, refs: CaseReferences, *,
                     seed: int, config: CaseStudiesConfig = CaseStudiesConfig(),
                     progress: bool = False) -> CaseStudiesResult:
    """The case studies of ``inputs`` against ``refs``.

    Args:
      model: the ``ri_jax.model.Model``.
      inputs: ``CaseInputs``.
      refs: ``CaseReferences``.
      seed: seeds Q (key ``seed``), the Random control and ACE.
      config: ``CaseStudiesConfig``.
      progress: show progress bars.

    Returns:
      ``CaseStudiesResult``.
    """
    if config.layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {config.layout!r}")
    ref_feats, in_feats, classes = refs.features, inputs.features, refs.class_names
    num_refs = len(ref_feats.psi)
    k = min(config.top_k, num_refs)
    in_raw, in_pred, n_in = inputs.raw, in_feats.predictions, len(inputs.indices)
    in_probs = softmax(in_feats.logits.astype(np.float64))
    ref_probs = softmax(ref_feats.logits.astype(np.float64))
    psi, size = ref_feats.psi, in_raw.shape[1]

    ri = methods.ri_at_inputs(model, psi, in_raw, config.ri, key=jax.random.key(seed),
                              top_k=k)
    interps = {methods.RI: ri.interpretations}
    for method in methods.method_names("cam"):
        interps[method] = methods.cam_interpretations(method, model, in_raw, in_feats.psi,
                                                      in_pred, progress=progress)
    ri_similar = np.asarray(ri.details.similar)
    ri_dist = np.asarray(ri.details.similar_distances)
    euclid = routing.euclidean_neighbours(in_feats.psi, psi, k)
    flat_in, flat_refs = in_feats.psi.reshape(n_in, -1), psi.reshape(len(psi), -1)
    euclid_dist = np.linalg.norm(flat_refs[euclid] - flat_in[:, None], axis=-1)

    # Every (input, block, position) image as one flat batch of targets; reference -1 = x itself.
    owner, block_of, ref_of, dist_of = [], [], [], []
    for b in range(n_in):  # a few inputs: only bookkeeping, no model calls
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

    maps = {m: methods.interpretation_heatmaps(interps[m], owner, t_psi, size) for m in interps}
    if config.controls:
        t_pred = np.where(is_input, in_pred[owner], ref_feats.predictions[np.maximum(ref_of, 0)])
        for control in CONTROLS_SHOWN:
            maps[control] = methods.control_heatmaps(
                control, model, t_raw, t_psi, t_pred,
                key=jax.random.fold_in(jax.random.key(seed), 1))
    masked = {m: scoring.masked_class_scores(model, t_raw, maps[m], score_class,
                                             masking=config.masking,
                                             batch_size=config.batch_size)[0] for m in maps}
    ace_report = None
    if config.ace is not None:
        ace = config.ace
        # Discovery set: x and its nearest references in Ω (the Euclidean block's ranking).
        n_near = min((ace.max_images or ACE_DISCOVERY_IMAGES) - 1, num_refs)
        near = (routing.euclidean_neighbours(in_feats.psi, psi, n_near) if n_near
                else np.zeros((n_in, 0), int))
        cache = ACECache()
        k_discover, k_random = jax.random.split(jax.random.fold_in(jax.random.key(seed), 2))
        results = ace_adapter.ace_interpretations(
            model, [np.concatenate([in_raw[b:b + 1], refs.raw(near[b])]) for b in
                          range(n_in)], in_pred, ace.config, key=k_discover, cache=cache,
            random_images=ace_adapter.random_reference_images(refs.raw, num_refs,
                                                              ace.random_images, key=k_random),
            progress=progress)
        found = ace_adapter.ace_masks(results, owner, t_raw, model, cache=cache)
        maps[methods.ACE] = found.masks.astype(np.float32)
        probs = scoring.masked_probabilities(model, t_raw, found.masks,
                                             masking=config.masking, batch_size=config.batch_size)
        masked[methods.ACE] = probs[np.arange(len(owner)), score_class]
        ace_report = {**ace_adapter.ace_summary(results, found), "discovery_images": 1 + n_near}

    def shown(method: str, block: str) -> bool:
        if config.layout == "full" or method not in methods.method_names("ri", "cam", "ace"):
            return True
        return (method == methods.RI) == (block == BLOCKS[0])

    records, rows, panels, titles = [], [], [], []
    ref_pred = ref_feats.predictions
    for b, index in enumerate(inputs.indices):
        c = classes[in_pred[b]]
        covered = np.asarray(ri.details.covered[b])
        rec = {"test_index": int(index), "file": inputs.ids[b],
               "true_label": classes[inputs.labels[b]], "predicted_class": c,
               "probability": float(in_probs[b, in_pred[b]]),
               "misclassified": bool(inputs.labels[b] != in_pred[b]),
               "ri": {"num_boundaries": int(ri.details.num_selected[b]),
                      "num_covered": int(ri.details.num_covered[b]),
                      "covered_predicted": covered_by_class(covered, ref_pred, classes),
                      "covered_labels": covered_by_class(covered, refs.labels, classes),
                      "delta": int(ri.details.delta[b]), "empty_polytope": bool(ri.details.empty[b])},
               "blocks": {}, "figure": f"case_{int(index)}.png"}
        blocks = []
        for name in BLOCKS:
            sel = np.flatnonzero((owner == b) & (block_of == name))
            images = []
            for pos, t in enumerate(sel):
                j = int(ref_of[t])
                entry = {"position": pos, "reference_index": None if j < 0 else j,
                         "file": rec["file"] if j < 0 else refs.ids[j],
                         "true_label": rec["true_label"] if j < 0 else classes[refs.labels[j]],
                         "predicted_class": c if j < 0 else classes[ref_pred[j]],
                         "distance": float(dist_of[t]), "score": float(t_score[t]),
                         "masked_scores": {m: float(masked[m][t]) for m in maps}}
                images.append(entry)
                rows += [{"test_index": int(index), "block": name, "position": pos,
                          "file": PurePath(entry["file"]).name, "method": m,
                          "score": entry["score"], "masked_score": entry["masked_scores"][m]}
                         for m in maps]
            rec["blocks"][name] = images
            captions = [(f"input, true {e['true_label']}" if e["reference_index"] is None
                         else f"#{e['position']} true {e['true_label']}, d={e['distance']:.3g}")
                        + f"\np({c}) = {e['score']:.3f}" for e in images]
            drawn = [m for m in maps if shown(m, name)]
            blocks.append(dict(
                name=name, images=t_raw[sel], captions=captions,
                method_maps={m: maps[m][sel] for m in drawn},
                method_captions={m: [f"masked p = {masked[m][t]:.3f}" for t in sel]
                                 for m in drawn},
                flagged=[e["true_label"] != e["predicted_class"] for e in images]))
        records.append(rec)
        panels.append(blocks)
        rec["ri"]["description"] = polytope_description(
            rec["ri"]["num_boundaries"], rec["ri"]["covered_predicted"],
            label_counts=rec["ri"]["covered_labels"], delta=rec["ri"]["delta"])
        titles.append(f"{PurePath(rec['file']).name}: predicted {c} (p = {rec['probability']:.2f}), "
                      f"true {rec['true_label']}{', MISCLASSIFIED' if rec['misclassified'] else ''}"
                      f"\nRI: {rec['ri']['description']}")

    # Mean masked score per method: on the inputs, and on each block's similar images.
    summary = {m: {"input": float(np.mean(masked[m][is_input])),
                   **{name: (float(np.mean(masked[m][~is_input & (block_of == name)]))
                             if np.any(~is_input & (block_of == name)) else None)
                      for name in BLOCKS}} for m in maps}
    notes = {"score": "softmax probability of the input's predicted class c",
             "masked_score": "the same on the image keeping the top 20 % pixels of the "
                             "map (rest black); ties: " + scoring.TIE_RULE,
             "layout": config.layout,
             **({"ace": "ACE's map is its keep mask (whole segments of its significant "
                        "concepts, in order of importance, until more than 20 % of "
                        "the pixels are kept); discovery set: the input and its "
                        f"{ace_report['discovery_images'] - 1} nearest references "
                        "in Ω"} if ace_report is not None else {})}
    return CaseStudiesResult(records=records, mean_masked_scores=summary, notes=notes,
                             ace=ace_report, top_k=k, panels=panels, titles=titles, rows=rows)
