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

Controls: "Random" (a uniformly random 20 % of the pixels, per run), "Grad-CAM (own
weights)" (Grad-CAM at each unseen image itself) and "Centre square" (the same centred
20 % on every image); the last two are deterministic, so computed once.

Checks beside the table, all under the fill of ``config.masking`` (black, the paper's, by
default):
  * every method's (and the deterministic controls') *inverse*: the same maps keeping
    their least important 20 % (``scoring.evaluate_heatmaps(inverse=True)``). A method
    worth its name loses clearly to its own inverse. Not for "Random" (its inverse is
    another random 20 %) nor ACE (its segments carry no pixel ranking);
  * AD / AI per class predicted on the unmasked image (``Evaluation.per_class``);
  * the fill's own class prior (``scoring.fill_prior_report``) on the unseen images.

Faithfulness beyond AD / AI at 20 % (``config.faithfulness``, ``protocols.faithfulness``):
on ``faithfulness.images`` unseen images evenly spaced over the set, each method's reused maps (exactly
the maps AD / AI score: k-means inputs, then the covering polytope or the nearest centre),
"Random", the deterministic controls and every method computed at the unseen image itself
("… (own weights)", no reuse, computed once; RI's with the first run's boundary key) get
deletion / insertion curves (RISE), ROAD (MoRF, LeRF, combined) and AD / AI at several
keep fractions under the table's fill. ACE has no pixel ranking and is left out.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ri_jax.baselines.ace import ACECache
from ri_jax.featurize import Features
from ri_jax.model import Model
from ri_jax.protocols import ace_adapter, methods, routing, scoring
from ri_jax.protocols.ace_adapter import ACESettings
from ri_jax.protocols.faithfulness import (MEASURES, Faithfulness, FaithfulnessOptions,
                                           evaluate_faithfulness, keep_measures, mean_curves,
                                           summarise)
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.scoring import Evaluation, MaskingOptions
from ri_jax.protocols.statistics import mean_std



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
      inverse: also score every method's inverse (doubles the masked forward passes).
      faithfulness: deletion / insertion curves, ROAD and AD / AI at several keep fractions
        of every heat-map method and control, on ``faithfulness.images`` evenly spaced unseen
        images (``protocols.faithfulness``); off by default.
    """

    per_class: int = 10
    ri: RIOptions = RIOptions()
    masking: MaskingOptions = MaskingOptions()
    batch_size: int = 128
    ace: ACESettings | None = None
    inverse: bool = True
    faithfulness: FaithfulnessOptions = FaithfulnessOptions(measures="none")


class Table1Result(NamedTuple):
    """Every method's and control's evaluation per run.

    Attributes:
      seeds: the run seeds.
      runs: per run, ``{name: (Evaluation, report dict)}`` in table order.
      inverses: per run, ``{name: Evaluation}`` of the names that have an inverse.
      class_names: the model's C class names (``per_class`` keys).
      fill_prior: ``scoring.fill_prior_report`` on the unseen images.
      masking: the ``MaskingOptions`` used.
      image_size: side S of the images.
      faithfulness: per run, ``{name: Faithfulness}`` of every heat-map method, control and
        own-input control (``methods.OWN_WEIGHTS``; the same object in every run); empty lists
        when off.
      faithfulness_options: the ``FaithfulnessOptions`` used.
    """

    seeds: list[int]
    runs: list[dict[str, tuple[Evaluation, dict]]]
    inverses: list[dict[str, Evaluation]]
    class_names: tuple[str, ...]
    fill_prior: dict
    masking: MaskingOptions
    image_size: int
    faithfulness: list[dict[str, Faithfulness]] = []
    faithfulness_options: FaithfulnessOptions = FaithfulnessOptions(measures="none")

    def summary(self, name: str) -> dict:
        """mAD / mAI of ``name`` over runs, with ``"inverse"`` (its own mAD / mAI) when scored."""
        out = {"mAD": mean_std([res[name][0].ad for res in self.runs]),
               "mAI": mean_std([res[name][0].ai for res in self.runs])}
        if name in self.inverses[0]:
            out["inverse"] = {"mAD": mean_std([inv[name].ad for inv in self.inverses]),
                              "mAI": mean_std([inv[name].ai for inv in self.inverses])}
        return out

    def per_class(self, name: str) -> dict:
        """``{class: {"count", "mAD", "mAI"}}`` of ``name`` over runs (None where no image is
        predicted as the class)."""
        reports = [res[name][0].per_class(self.class_names) for res in self.runs]
        out = {}
        for c in self.class_names:
            rows = [r[c] for r in reports]
            defined = rows[0]["count"] > 0
            out[c] = {"count": rows[0]["count"],
                      "mAD": mean_std([r["AD"] for r in rows]) if defined else None,
                      "mAI": mean_std([r["AI"] for r in rows]) if defined else None}
        return out

    def to_json(self) -> dict:
        """``methods`` and ``controls`` (mAD / mAI mean ± std over runs, each with its
        ``inverse`` where scored), ``per_class``, ``fill_prior``, ``interpretations`` (per
        name and run, what they were), ``tie_rule`` and ``masking`` (fill, σ)."""
        names = list(self.runs[0])
        controls = methods.method_names("control")
        return {"methods": {n: self.summary(n) for n in names if n not in controls},
                "controls": {n: self.summary(n) for n in names if n in controls},
                "per_class": {n: self.per_class(n) for n in names},
                "fill_prior": self.fill_prior,
                "interpretations": {n: [res[n][1] for res in self.runs] for n in names},
                "tie_rule": scoring.TIE_RULE,
                "masking": self.masking.describe(self.image_size),
                **({"faithfulness": self.faithfulness_json()} if self.faithfulness else {})}

    def faithfulness_json(self) -> dict:
        """``{"config", "methods", "controls", "curves"}``: every measure's mean ± std over
        runs per method and control (``protocols.faithfulness.MEASURES``), and the mean
        deletion / insertion curves."""
        names = list(self.faithfulness[0])
        rows = {n: summarise([f[n] for f in self.faithfulness]) for n in names}
        curves = {n: mean_curves([f[n] for f in self.faithfulness]) for n in names}
        options = self.faithfulness_options
        measures = (MEASURES if options.measures == "all" else ()) + keep_measures(
            options.keep_fractions)
        return {"config": {**options.describe(), "images_scored": self._faithfulness_images(),
                           "fill": self.masking.fill},
                "measures": [{"key": k, "label": label, "lower_is_better": low,
                              "fill_dependent": k.startswith(("mAD@", "mAI@"))}
                             for k, label, low in measures],
                "methods": {n: rows[n] for n in names if not is_control(n)},
                "controls": {n: rows[n] for n in names if is_control(n)},
                "curves": {n: c for n, c in curves.items() if c is not None}}

    def _faithfulness_images(self) -> int:
        first = next(iter(self.faithfulness[0].values()))
        return len(first.keep.y) if first.keep is not None else 0

    def csv_rows(self) -> list[dict]:
        """One row per run and name: AD, AI, the inverse's AD / AI (None where not scored)
        and the scalar report fields."""
        controls = methods.method_names("control")
        return [{"run": r, "seed": s, "method": n,
                 "kind": "control" if n in controls else "method",
                 "AD": res[n][0].ad, "AI": res[n][0].ai,
                 "AD_inverse": inv[n].ad if n in inv else None,
                 "AI_inverse": inv[n].ai if n in inv else None,
                 **{k: v for k, v in res[n][1].items() if not isinstance(v, dict)},
                 **(self.faithfulness[r][n].scalars() if self.faithfulness
                    and n in self.faithfulness[r] else {})}
                for r, (s, res, inv) in enumerate(zip(self.seeds, self.runs, self.inverses))
                for n in res]


def is_control(name: str) -> bool:
    """Whether a Table 1 name is a control (a registered control or an own-input control)."""
    return name in methods.method_names("control") or name.endswith(methods.OWN_WEIGHTS)


def _run_once(model: Model, ref_features: Features, unseen_features: Features,
              ref_raw: Callable[[np.ndarray], np.ndarray], unseen_raw: np.ndarray,
              num_classes: int, seed: int, config: Table1Config, ace_cache: ACECache | None,
              fixed: dict[str, tuple[Evaluation, dict]], fixed_faithfulness: dict[str, Faithfulness],
              progress: bool) -> tuple[dict[str, tuple[Evaluation, dict]], dict[str, Evaluation],
                                       dict[str, Faithfulness]]:
    ref_f, un_f = ref_features, unseen_features
    size = unseen_raw.shape[1]
    keys = routing.protocol_keys(seed)
    num_v = config.per_class * num_classes
    km = routing.kmeans_inputs(ref_f.psi, num_v, key=keys.kmeans)
    raw_inputs = ref_raw(km.inputs)
    in_psi, in_cls = ref_f.psi[km.inputs], ref_f.predictions[km.inputs]
    nearest = routing.nearest_centre(un_f.psi, km.centres)
    common = {"interpretations": num_v, "distinct_inputs": int(len(np.unique(km.inputs)))}
    evaluate = lambda maps, inverse=False: scoring.evaluate_heatmaps(
        model, unseen_raw, maps, logits=un_f.logits, masking=config.masking,
        inverse=inverse, batch_size=config.batch_size)
    faithful = lambda maps: _faithfulness(model, unseen_raw, maps, un_f.predictions, config,
                                          key=jax.random.fold_in(keys.random, 1))
    out, inverses, faith = {}, {}, {}
    for method in tqdm(methods.method_names("ri", "cam"), desc=f"run seed={seed}",
                       disable=not progress, leave=False):
        entry = methods.method(method)
        if entry.kind == "ri":
            ri = entry.function(model, ref_f.psi, raw_inputs, config.ri, key=keys.boundaries)
            route, interps = routing.route_ri(ri.regions, un_f.psi, km.centres), ri.interpretations
            extra = methods.ri_summary(ri, methods.cam_weights("Grad-CAM", model,
                                                               raw_inputs, in_psi, in_cls))
        else:
            interps = methods.cam_interpretations(method, model, raw_inputs, in_psi, in_cls)
            route, extra = nearest, {}
        maps = methods.interpretation_heatmaps(interps, route.which, un_f.psi, size)
        ev = evaluate(maps)
        out[method] = (ev, {**common, **extra, **routing.routing_report(route),
                            **ev.tie_report()})
        if config.inverse:
            inverses[method] = evaluate(maps, inverse=True)
        if config.faithfulness.enabled:
            faith[method] = faithful(maps)
    if config.ace is not None:
        ace = config.ace
        members = [np.flatnonzero(km.assignment == v) for v in range(num_v)]
        if ace.max_images:
            dist = ((ref_f.psi.reshape(len(ref_f.psi), -1) - km.centres[km.assignment]) ** 2).sum(1)
            members = [m[np.argsort(dist[m], kind="stable")[:ace.max_images]] for m in members]
        k_discover, k_random_set = jax.random.split(keys.ace)
        results = ace_adapter.ace_interpretations(
            model, [ref_raw(m) for m in members], in_cls, ace.config, key=k_discover,
            cache=ace_cache, random_images=ace_adapter.random_reference_images(
                ref_raw, len(ref_f.psi), ace.random_images, key=k_random_set))
        found = ace_adapter.ace_masks(results, nearest.which, unseen_raw, model,
                                      cache=ace_cache)
        ev = scoring.evaluate_masks(model, unseen_raw, found.masks, logits=un_f.logits,
                                    masking=config.masking, batch_size=config.batch_size)
        out[methods.ACE] = (ev, {**common, **ace_adapter.ace_summary(results, found),
                                 "discovery_images": {
                                     "mean": float(np.mean([len(m) for m in members])),
                                     "min": int(min(len(m) for m in members))},
                                 **routing.routing_report(nearest)})
    for name in methods.method_names("control"):  # random ones drawn now, the rest from fixed
        if name in fixed:
            ev, report, inverse = fixed[name]
            out[name] = (ev, report)
            if inverse is not None:
                inverses[name] = inverse
            continue
        maps = methods.control_heatmaps(name, model, unseen_raw, un_f.psi, un_f.predictions,
                                        key=keys.random)
        ev = evaluate(maps)
        out[name] = (ev, {"reuse": False, **ev.tie_report()})
        if config.faithfulness.enabled:
            faith[name] = faithful(maps)
    return out, inverses, {**faith, **fixed_faithfulness}


def _faithfulness(model: Model, unseen_raw: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                  config: Table1Config, *, key: jax.Array) -> Faithfulness:
    """``protocols.faithfulness`` of one method's maps on the unseen images (table's fill)."""
    return evaluate_faithfulness(model.forward, model.normalize, unseen_raw, maps, classes,
                                 config.faithfulness, fill=config.masking.fill,
                                 blur_sigma=config.masking.blur_sigma, key=key)


def _own_input_faithfulness(model: Model, ref_psi: np.ndarray, unseen_raw: np.ndarray,
                            unseen_features: Features, config: Table1Config, seed: int
                            ) -> dict[str, Faithfulness]:
    """The own-input controls: every method computed at each scored unseen image itself.

    RI's own polytope is built with the first run's boundary key; "Grad-CAM (own
    weights)" is a Table 1 control already and is scored by the caller.
    """
    idx = config.faithfulness.targets(len(unseen_raw))
    raw, psi = unseen_raw[idx], unseen_features.psi[idx]
    classes = unseen_features.predictions[idx]
    out = {}
    for method in methods.method_names("ri", "cam"):
        name = method + methods.OWN_WEIGHTS
        if name in methods.method_names("control"):
            continue
        entry = methods.method(method)
        if entry.kind == "ri":
            own = entry.function(model, ref_psi, raw, config.ri,
                                 key=routing.protocol_keys(seed).boundaries).interpretations
        else:
            own = methods.cam_interpretations(method, model, raw, psi, classes)
        maps = methods.interpretation_heatmaps(own, np.arange(len(idx)), psi, raw.shape[1])
        out[name] = _faithfulness(model, raw, maps, classes, config,
                                  key=jax.random.fold_in(jax.random.key(seed), 2))
    return out


def run_table1(model: Model, ref_features: Features, unseen_features: Features,
               ref_raw: Callable[[np.ndarray], np.ndarray], unseen_raw: np.ndarray, *,
               num_classes: int, seeds: Sequence[int], config: Table1Config = Table1Config(),
               class_names: Sequence[str] | None = None, progress: bool = False) -> Table1Result:
    """Table 1 on one model, reference set and unseen set.

    Args:
      model: the ``ri_jax.model.Model``.
      ref_features: the references' ``Features`` (ψ, logits, predictions) [N, ...].
      unseen_features: the unseen images' ``Features`` [M, ...].
      ref_raw: indices int[n] -> float32[n, S, S, 3] raw reference images in [0, 1].
      unseen_raw: float32[M, S, S, 3] raw unseen images in [0, 1].
      num_classes: classes of the model.
      seeds: one run per seed.
      config: ``Table1Config``.
      class_names: the C class names (``per_class`` keys); default "0", "1", ….
      progress: show progress bars over runs and methods.

    Returns:
      ``Table1Result``.
    """
    un_f = unseen_features
    names = tuple(class_names) if class_names else tuple(str(c) for c in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"class_names: {len(names)} names for {num_classes} classes")
    ace_cache = ACECache() if config.ace is not None else None
    size = unseen_raw.shape[1]
    # The controls that involve no random choice (e.g. Grad-CAM at each unseen image itself,
    # the same centred square on every image) run once.
    fixed, fixed_faithfulness = {}, {}
    seeds = list(seeds)
    for control in methods.method_names("control"):
        if methods.method(control).random:
            continue
        maps = methods.control_heatmaps(control, model, unseen_raw, un_f.psi,
                                        un_f.predictions)
        score = lambda inverse: scoring.evaluate_heatmaps(
            model, unseen_raw, maps, logits=un_f.logits, masking=config.masking,
            inverse=inverse, batch_size=config.batch_size)
        ev = score(False)
        fixed[control] = (ev, {"reuse": False, **ev.tie_report()},
                          score(True) if config.inverse else None)
        if config.faithfulness.enabled:
            fixed_faithfulness[control] = _faithfulness(
                model, unseen_raw, maps, un_f.predictions, config,
                key=jax.random.fold_in(jax.random.key(seeds[0]), 3))
    if config.faithfulness.enabled:
        fixed_faithfulness.update(_own_input_faithfulness(model, ref_features.psi, unseen_raw,
                                                          un_f, config, seeds[0]))
    prior = scoring.fill_prior_report(model, unseen_raw, config.masking, names,
                                      batch_size=config.batch_size)
    both = [_run_once(model, ref_features, unseen_features, ref_raw, unseen_raw,
                      num_classes, s, config, ace_cache, fixed, fixed_faithfulness, progress)
            for s in tqdm(seeds, desc="Table 1 runs", disable=not progress)]
    return Table1Result(seeds=seeds, runs=[b[0] for b in both], inverses=[b[1] for b in both],
                        class_names=names, fill_prior=prior, masking=config.masking,
                        image_size=size,
                        faithfulness=[b[2] for b in both] if config.faithfulness.enabled else [],
                        faithfulness_options=config.faithfulness)
