"""Table 1 (§6.4): representativeness on unseen images, mAD / mAI of reused interpretations.

Per run (one seed each):

1. k-means (k-means++ seeding) on the references' ψ in Ω gives |V| = per-class ×
   classes clusters; the reference nearest each centre is interpretation v's input.
2. Every method computes one interpretation at each input: RI (``methods.ri_at_inputs``),
   Grad-CAM, Grad-CAM++ and Score-CAM (channel weights of the class the model predicts
   on the input), and optionally ACE (concepts discovered on the references of cluster v).
3. Every unseen image is routed to one interpretation: RI uses the polytope that covers
   it (``routing.route_ri``); the baselines use the nearest centre's.
4. The interpretation is drawn on the image with its weights unchanged (§6.1) and scored
   with ``scoring.evaluate_heatmaps`` (ACE: ``scoring.evaluate_masks``).

Controls: "Random" (a uniformly random 20 % of the pixels, per run) and "Grad-CAM (own
weights)" (Grad-CAM at each unseen image itself; deterministic, computed once).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ri_jax.baselines.ace import ACECache
from ri_jax.featurize import Features
from ri_jax.models.vgg import ModelFns
from ri_jax.protocols import ace_adapter, methods, routing, scoring
from ri_jax.protocols.ace_adapter import ACESettings
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.scoring import Evaluation, MaskingOptions
from ri_jax.protocols.statistics import mean_std

Params = Any


@dataclasses.dataclass(frozen=True)
class Table1Config:
    """Settings of the Table 1 protocol.

    Attributes:
      per_class: interpretations per class, |V| = per_class × classes.
      ri: how RI is built (|Q|, batch sizes).
      masking: how heat maps become masked images.
      batch_size: images per forward pass when scoring.
      ace: ACE settings (``max_images``: discovery images per cluster, nearest the centre
        first, 0 = all); None leaves ACE out.
    """

    per_class: int = 10
    ri: RIOptions = RIOptions()
    masking: MaskingOptions = MaskingOptions()
    batch_size: int = 128
    ace: ACESettings | None = None


class Table1Result(NamedTuple):
    """Every method's and control's evaluation per run.

    Attributes:
      seeds: the run seeds.
      runs: per run, ``{name: (Evaluation, report dict)}`` in table order.
    """

    seeds: list[int]
    runs: list[dict[str, tuple[Evaluation, dict]]]

    def to_json(self) -> dict:
        """``methods`` and ``controls`` (mAD / mAI mean ± std over runs), ``interpretations``
        (per name and run, what they were) and ``tie_rule``."""
        names = list(self.runs[0])
        summary = {n: {"mAD": mean_std([res[n][0].ad for res in self.runs]),
                       "mAI": mean_std([res[n][0].ai for res in self.runs])} for n in names}
        return {"methods": {n: summary[n] for n in names if n not in methods.CONTROLS},
                "controls": {n: summary[n] for n in methods.CONTROLS},
                "interpretations": {n: [res[n][1] for res in self.runs] for n in names},
                "tie_rule": scoring.TIE_RULE}

    def csv_rows(self) -> list[dict]:
        """One row per run and name: AD, AI and the scalar report fields."""
        return [{"run": r, "seed": s, "method": n,
                 "kind": "control" if n in methods.CONTROLS else "method",
                 "AD": res[n][0].ad, "AI": res[n][0].ai,
                 **{k: v for k, v in res[n][1].items() if not isinstance(v, dict)}}
                for r, (s, res) in enumerate(zip(self.seeds, self.runs)) for n in res]


def _run_once(fns: ModelFns, params: Params, ref_features: Features, unseen_features: Features,
              ref_raw: Callable[[np.ndarray], np.ndarray], unseen_raw: np.ndarray,
              num_classes: int, seed: int, config: Table1Config, ace_cache: ACECache | None,
              own_weights: tuple[Evaluation, dict],
              progress: bool) -> dict[str, tuple[Evaluation, dict]]:
    ref_f, un_f = ref_features, unseen_features
    size = unseen_raw.shape[1]
    keys = routing.protocol_keys(seed)
    num_v = config.per_class * num_classes
    km = routing.kmeans_inputs(ref_f.psi, num_v, key=keys.kmeans)
    raw_inputs = ref_raw(km.inputs)
    in_psi, in_cls = ref_f.psi[km.inputs], ref_f.predictions[km.inputs]
    nearest = routing.nearest_centre(un_f.psi, km.centres)
    common = {"interpretations": num_v, "distinct_inputs": int(len(np.unique(km.inputs)))}
    evaluate = lambda maps: scoring.evaluate_heatmaps(fns, params, unseen_raw, maps,
                                                      logits=un_f.logits, masking=config.masking,
                                                      batch_size=config.batch_size)
    out = {}
    for method in tqdm(methods.METHODS, desc=f"run seed={seed}", disable=not progress,
                       leave=False):
        if method == "RI":
            ri = methods.ri_at_inputs(fns, params, ref_f.psi, raw_inputs, config.ri,
                                      key=keys.boundaries)
            route, interps = routing.route_ri(ri.regions, un_f.psi, km.centres), ri.interpretations
            extra = methods.ri_summary(ri, methods.cam_weights("Grad-CAM", fns, params,
                                                               raw_inputs, in_psi, in_cls))
        else:
            interps = methods.cam_interpretations(method, fns, params, raw_inputs, in_psi, in_cls)
            route, extra = nearest, {}
        ev = evaluate(methods.interpretation_heatmaps(interps, route.which, un_f.psi, size))
        out[method] = (ev, {**common, **extra, **routing.routing_report(route),
                            **ev.tie_report()})
    if config.ace is not None:
        ace = config.ace
        members = [np.flatnonzero(km.assignment == v) for v in range(num_v)]
        if ace.max_images:
            dist = ((ref_f.psi.reshape(len(ref_f.psi), -1) - km.centres[km.assignment]) ** 2).sum(1)
            members = [m[np.argsort(dist[m], kind="stable")[:ace.max_images]] for m in members]
        k_discover, k_random_set = jax.random.split(keys.ace)
        results = ace_adapter.ace_interpretations(
            fns, params, [ref_raw(m) for m in members], in_cls, ace.config, key=k_discover,
            cache=ace_cache, random_images=ace_adapter.random_reference_images(
                ref_raw, len(ref_f.psi), ace.random_images, key=k_random_set))
        found = ace_adapter.ace_masks(results, nearest.which, unseen_raw, fns, params,
                                      cache=ace_cache)
        ev = scoring.evaluate_masks(fns, params, unseen_raw, found.masks, logits=un_f.logits,
                                    batch_size=config.batch_size)
        out[methods.ACE] = (ev, {**common, **ace_adapter.ace_summary(results, found),
                                 "discovery_images": {
                                     "mean": float(np.mean([len(m) for m in members])),
                                     "min": int(min(len(m) for m in members))},
                                 **routing.routing_report(nearest)})
    ev = evaluate(methods.random_heatmaps(len(unseen_raw), size, key=keys.random))
    out["Random"] = (ev, {"reuse": False, **ev.tie_report()})
    out["Grad-CAM (own weights)"] = own_weights
    return out


def run_table1(fns: ModelFns, params: Params, ref_features: Features, unseen_features: Features,
               ref_raw: Callable[[np.ndarray], np.ndarray], unseen_raw: np.ndarray, *,
               num_classes: int, seeds: Sequence[int], config: Table1Config = Table1Config(),
               progress: bool = False) -> Table1Result:
    """Table 1 on one model, reference set and unseen set.

    Args:
      fns, params: the model.
      ref_features: the references' ``Features`` (ψ, logits, predictions) [N, ...].
      unseen_features: the unseen images' ``Features`` [M, ...].
      ref_raw: indices int[n] -> float32[n, S, S, 3] raw reference images in [0, 1].
      unseen_raw: float32[M, S, S, 3] raw unseen images in [0, 1].
      num_classes: classes of the model.
      seeds: one run per seed.
      config: ``Table1Config``.
      progress: show progress bars over runs and methods.

    Returns:
      ``Table1Result``.
    """
    un_f = unseen_features
    ace_cache = ACECache() if config.ace is not None else None
    # Grad-CAM at each unseen image itself involves no random choice, so it runs once.
    maps = methods.own_gradcam_heatmaps(fns, params, unseen_raw, un_f.psi, un_f.predictions)
    ev = scoring.evaluate_heatmaps(fns, params, unseen_raw, maps, logits=un_f.logits,
                                   masking=config.masking, batch_size=config.batch_size)
    own = (ev, {"reuse": False, **ev.tie_report()})
    seeds = list(seeds)
    runs = [_run_once(fns, params, ref_features, unseen_features, ref_raw, unseen_raw,
                      num_classes, s, config, ace_cache, own, progress)
            for s in tqdm(seeds, desc="Table 1 runs", disable=not progress)]
    return Table1Result(seeds=seeds, runs=runs)
