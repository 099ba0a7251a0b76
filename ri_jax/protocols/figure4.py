"""Figure 4 (appendix C): representativeness on reference images, mAD / mAI against K.

For N input images sampled from the reference set, every method computes one
interpretation at each input x and reuses it on x's top-K similar references S; AD and
AI (Eqs. 7–8) are averaged over S and then over the N inputs, for every K.

* RI: S = the references covered by P(x), ranked by the semantic distance of Eq. 6.
* Grad-CAM, Grad-CAM++, Score-CAM: S = the K nearest references to x by Euclidean
  distance in Ω; x's channel weights are reused on each (§6.1).
* ACE (optional, on only the first ``ace_inputs`` inputs): its discovery set is x plus
  its nearest references in Ω; S = the same Euclidean neighbours as the CAMs.
* Controls (every registered control: "Random", "Grad-CAM (own weights)", "Centre
  square"), on the Euclidean neighbours.

x itself is S's first image for every method (``routing.input_first``); when P(x)
covers fewer than K references, RI is evaluated on the covered ones only
(``images_used``); K values larger than the reference set are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from ri_jax.baselines.ace import ACECache
from ri_jax.data import sample_count
from ri_jax.featurize import Features
from ri_jax.model import Model
from ri_jax import metrics
from ri_jax.protocols import ace_adapter, methods, routing, scoring
from ri_jax.protocols.ace_adapter import ACE_DISCOVERY_IMAGES, ACESettings
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.scoring import MaskingOptions

DEFAULT_KS = (1, 5, 10, 20, 30, 40, 50)
SIMILAR_EUCLIDEAN = "x, then its nearest references by Euclidean distance in Ω"


@dataclasses.dataclass(frozen=True)
class Figure4Config:
    """Settings of the Figure 4 protocol.

    Attributes:
      num_inputs: reference images used as inputs, N (capped by the reference set).
      ks: K values, increasing.
      ri: how RI is built (|Q|, batch sizes).
      controls: add every registered control (``methods.method_names("control")``).
      block_size: inputs whose K similar images are evaluated together.
      batch_size: images per forward pass when scoring.
      masking: how heat maps become masked images.
      ace: ACE settings (``max_images``: discovery set size, x included, 0 = 50); None
        leaves ACE out.
      ace_inputs: ACE is evaluated on only the first this many inputs (it is slow).
    """

    num_inputs: int = 1000
    ks: tuple[int, ...] = DEFAULT_KS
    ri: RIOptions = RIOptions(num_boundaries=50)
    controls: bool = True
    block_size: int = 16
    batch_size: int = 128
    masking: MaskingOptions = MaskingOptions()
    ace: ACESettings | None = None
    ace_inputs: int = 10


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


def aggregate(runs: list[dict], names: list[str]) -> dict:
    """Mean ± std over runs of every curve."""
    out = {}
    for m in names:
        per = {key: np.asarray([r["curves"][m][key] for r in runs])
               for key in ("mAD", "mAI", "images_used")}
        out[m] = {"mAD": {"mean": per["mAD"].mean(0).tolist(), "std": per["mAD"].std(0).tolist()},
                  "mAI": {"mean": per["mAI"].mean(0).tolist(), "std": per["mAI"].std(0).tolist()},
                  "images_used": per["images_used"].mean(0).tolist()}
    return out


def _ace_curves(model: Model, feats: Features,
                ref_raw: Callable[[np.ndarray], np.ndarray], config: Figure4Config,
                inputs: np.ndarray, lists: np.ndarray, used: np.ndarray, ks: list[int], *,
                key: jax.Array, cache: ACECache, progress: bool) -> tuple[dict, dict]:
    """ACE's curves on the first ``config.ace_inputs`` inputs and what its interpretations were."""
    ace = config.ace
    psi, preds = feats.psi, feats.predictions
    n = min(config.ace_inputs, len(inputs))
    size = min(ace.max_images or ACE_DISCOVERY_IMAGES, len(psi))
    near = routing.euclidean_neighbours(psi[inputs[:n]], psi, size)
    sets, set_used = routing.input_first(inputs[:n], near, np.ones_like(near, bool), size)
    k_discover, k_random = jax.random.split(key)
    results = ace_adapter.ace_interpretations(
        model, [ref_raw(row[ok]) for row, ok in zip(sets, set_used)], preds[inputs[:n]],
        ace.config, key=k_discover, cache=cache,
        random_images=ace_adapter.random_reference_images(ref_raw, len(psi), ace.random_images,
                                                          key=k_random),
        progress=progress)
    v, r = np.nonzero(used[:n])
    targets = lists[:n][v, r]
    raw_t = ref_raw(targets)
    found = ace_adapter.ace_masks(results, v, raw_t, model, cache=cache)
    ev = scoring.evaluate_masks(model, raw_t, found.masks, logits=feats.logits[targets],
                                masking=config.masking, batch_size=config.batch_size)
    drop, inc = np.zeros(used[:n].shape), np.zeros(used[:n].shape, bool)
    drop[v, r], inc[v, r] = ev.drop, ev.increase
    report = {**ace_adapter.ace_summary(results, found), "inputs_evaluated": n,
              "inputs_sampled": len(inputs),
              "discovery_images": {"mean": float(set_used.sum(1).mean()),
                                   "min": int(set_used.sum(1).min())},
              "similar_images": SIMILAR_EUCLIDEAN}
    return curves_over_k(drop, inc, used[:n], ks), report


def _run_once(model: Model, feats: Features,
              ref_raw: Callable[[np.ndarray], np.ndarray], seed: int, ks: list[int],
              config: Figure4Config, ace_cache: ACECache | None, progress: bool) -> dict:
    """One repetition: every method's curves, tie counts and interpretation report."""
    psi, preds = feats.psi, feats.predictions
    logits = feats.logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    y_orig = (probs / probs.sum(axis=1, keepdims=True))[np.arange(len(preds)), preds]
    n_refs, kmax = len(preds), ks[-1]
    inputs = sample_count(n_refs, config.num_inputs, seed=seed)
    raw_inputs = ref_raw(inputs)
    size = raw_inputs.shape[1]
    key = jax.random.key(seed)

    ri = methods.ri_at_inputs(model, psi, raw_inputs, config.ri, key=key, progress=progress)
    # The first kmax ranks hold x or, besides x, at least kmax − 1 others: enough for input_first.
    ranked = np.asarray(ri.details.ranked)[:, :kmax]
    count = np.asarray(ri.details.num_covered)
    similar = {methods.RI: routing.input_first(inputs, ranked,
                                               np.arange(kmax)[None, :] < count[:, None], kmax)}
    neighbours = routing.euclidean_neighbours(psi[inputs], psi, kmax)
    similar["Euclidean"] = routing.input_first(inputs, neighbours, np.ones_like(neighbours, bool),
                                               kmax)

    interps = {methods.RI: ri.interpretations}
    for method in methods.method_names("cam"):
        interps[method] = methods.cam_interpretations(
            method, model, raw_inputs, psi[inputs], preds[inputs], progress=progress)
    controls = methods.method_names("control") if config.controls else ()
    names = list(interps) + list(controls)
    uses = {m: methods.RI if m == methods.RI else "Euclidean" for m in names}

    grids = {m: (np.zeros((len(inputs), kmax)), np.zeros((len(inputs), kmax), bool)) for m in names}
    ties = {m: {"maps": 0, "tied_maps": 0, "tied_pixels_dropped": 0, "flat_maps": 0} for m in names}
    for block, start in enumerate(tqdm(range(0, len(inputs), config.block_size),
                                       disable=not progress, desc="Figure 4 blocks", leave=False)):
        rows = np.arange(start, min(start + config.block_size, len(inputs)))
        for list_name, (lists, used) in similar.items():
            v, r = np.nonzero(used[rows])
            targets = lists[rows][v, r]
            raw_t, psi_t, pred_t = ref_raw(targets), psi[targets], preds[targets]
            for m in (m for m in names if uses[m] == list_name):  # a handful of methods
                if m in interps:
                    maps = methods.interpretation_heatmaps(interps[m], rows[v], psi_t, size)
                else:
                    maps = methods.control_heatmaps(m, model, raw_t, psi_t, pred_t,
                                                    key=jax.random.fold_in(key, block))
                y_masked, tied, flat = scoring.masked_class_scores(
                    model, raw_t, maps, pred_t, masking=config.masking,
                    batch_size=config.batch_size)
                d, inc = metrics.drop_and_increase(y_orig[targets], y_masked)
                grids[m][0][rows[v], r] = d
                grids[m][1][rows[v], r] = inc
                t = ties[m]
                t["maps"] += len(targets)
                t["tied_maps"] += int(np.sum(tied > 0))
                t["tied_pixels_dropped"] += int(np.sum(tied))
                t["flat_maps"] += int(np.sum(flat))

    curves = {m: curves_over_k(*grids[m], similar[uses[m]][1], ks) for m in names}
    report = {methods.RI: methods.ri_summary(ri)}
    for m in methods.method_names("cam"):
        report[m] = {"interpretations": len(inputs), "channel_weights": f"{m} at each input x",
                     "similar_images": SIMILAR_EUCLIDEAN}
    if config.ace is not None:
        curves[methods.ACE], report[methods.ACE] = _ace_curves(
            model, feats, ref_raw, config, inputs, *similar["Euclidean"], ks,
            key=jax.random.fold_in(key, 2**20), cache=ace_cache, progress=progress)
    return {"seed": seed, "num_inputs": len(inputs), "curves": curves, "ties": ties,
            "interpretations": report}


class Figure4Result(NamedTuple):
    """Figure 4's runs.

    Attributes:
      ks: K values used (at most the number of references).
      ks_dropped: K values dropped because they exceed it.
      runs: per run ``{"seed", "num_inputs", "curves", "ties", "interpretations"}``.
      methods: method names, in table order.
      controls: control names.
      ace_discovery_images: ACE's discovery set size (None without ACE).
    """

    ks: list[int]
    ks_dropped: list[int]
    runs: list[dict]
    methods: list[str]
    controls: list[str]
    ace_discovery_images: int | None

    def to_json(self) -> dict:
        """Curves (mean ± std over runs), tie counts, interpretation reports, runs and notes."""
        runs = self.runs
        summary = aggregate(runs, self.methods + self.controls)
        ties = {m: {k: sum(r["ties"][m][k] for r in runs) for k in runs[0]["ties"][m]}
                for m in runs[0]["ties"]}
        notes = {
            "similar_images": "RI: x first, then the references covered by P(x) by ascending "
                              "Eq. 6 distance; baselines and controls: x first, then the nearest "
                              "references by Euclidean distance in Ω.",
            "fewer_than_k": "When P(x) covers fewer than K references, RI's AD/AI for that input "
                            "are averaged over the covered references only; images_used is the "
                            "mean |S| per K.",
            "ties": scoring.TIE_RULE,
            "fallback": "not applicable: every input is a reference and uses its own "
                        "interpretation",
        }
        if self.ace_discovery_images is not None:
            ace_n = runs[0]["interpretations"][methods.ACE]["inputs_evaluated"]
            notes["ace"] = (f"ACE is evaluated on only the first {ace_n} of the "
                            f"{runs[0]['num_inputs']} sampled inputs (--ace-inputs; it is slow), "
                            "so its curves average fewer inputs than the other methods'. Its "
                            f"discovery set is x and its {self.ace_discovery_images - 1} "
                            "nearest references in Ω; S = the same Euclidean neighbours as the "
                            "CAMs; kept pixels are whole segments of its significant concepts, "
                            "in order of importance, until more than 20 % are kept (no ties).")
        return {"ks": self.ks, "ks_dropped": self.ks_dropped,
                "methods": {m: summary[m] for m in self.methods},
                "controls": {m: summary[m] for m in self.controls},
                "ties": ties,
                "interpretations": {m: [r["interpretations"][m] for r in runs]
                                    for m in runs[0]["interpretations"]},
                "runs": [{"seed": r["seed"], "num_inputs": r["num_inputs"],
                          "curves": r["curves"]} for r in runs],
                "notes": notes}

    def csv_rows(self) -> list[dict]:
        """One row per method (or control) and K."""
        summary = aggregate(self.runs, self.methods + self.controls)
        return [{"method": m, "kind": "method" if m in self.methods else "control", "K": k,
                 "mAD_mean": summary[m]["mAD"]["mean"][i], "mAD_std": summary[m]["mAD"]["std"][i],
                 "mAI_mean": summary[m]["mAI"]["mean"][i], "mAI_std": summary[m]["mAI"]["std"][i],
                 "images_used": summary[m]["images_used"][i]}
                for m in self.methods + self.controls for i, k in enumerate(self.ks)]


def run_figure4(model: Model, ref_features: Features,
                ref_raw: Callable[[np.ndarray], np.ndarray], *, seeds: list[int],
                config: Figure4Config = Figure4Config(), progress: bool = False) -> Figure4Result:
    """Figure 4 on one model and reference set.

    Args:
      model: the ``ri_jax.model.Model``.
      ref_features: the references' ``Features`` (ψ, logits, predictions) [N, ...].
      ref_raw: indices int[n] -> float32[n, S, S, 3] raw reference images in [0, 1]
        (every reference may be a target many times: pass a fast one, e.g.
        ``ImageSet.cached().raw``).
      seeds: one run per seed (new inputs, new Q, new random masks).
      config: ``Figure4Config``.
      progress: show progress bars.

    Returns:
      ``Figure4Result``.

    Raises:
      ValueError: every K exceeds the number of references.
    """
    n_refs = len(ref_features.psi)
    ks = [k for k in config.ks if k <= n_refs]
    dropped = [k for k in config.ks if k > n_refs]
    if not ks:
        raise ValueError(f"every K exceeds the {n_refs} references")
    ace_cache = ACECache() if config.ace is not None else None
    runs = [_run_once(model, ref_features, ref_raw, s, ks, config, ace_cache, progress)
            for s in seeds]
    return Figure4Result(
        ks=ks, ks_dropped=dropped, runs=runs,
        methods=list(methods.method_names("ri", "cam"))
        + ([methods.ACE] if config.ace is not None else []),
        controls=list(methods.method_names("control")) if config.controls else [],
        ace_discovery_images=(config.ace.max_images or ACE_DISCOVERY_IMAGES)
        if config.ace is not None else None)
