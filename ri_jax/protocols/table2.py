"""Table 2 (appendix D): RI's decision regions used as classifiers, next to the model.

Per run (one seed each), the |V| = per-class × classes polytopes of Table 1's protocol
(same ``routing.protocol_keys``: k-means inputs, sample Q) become decision regions:
polytope v predicts Class(x_v) for every image it covers; an image covered by several
takes the label of the one covering the most references (ties: lower index); an
uncovered image has no label. On the reference and on the unseen set:

* ACU-GT: accuracy of the region labels against the ground truth, on covered images;
* ACU-MD: agreement of the region labels with the model's predictions, on covered images;
* CVR: share of images covered by at least one region.

All in percent, mean ± std (population) over runs; a run that covers no image of a
set leaves ACU undefined there and is left out of that mean.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from ri_jax.featurize import Features
from ri_jax.metrics import region_metrics
from ri_jax.model import Model
from ri_jax.protocols import methods, routing
from ri_jax.protocols.methods import RIOptions
from ri_jax.protocols.statistics import mean_std
from ri_jax.regions import predict

SETS = ("reference", "unseen")
METRICS = ("ACU-GT", "ACU-MD", "CVR")


@dataclasses.dataclass(frozen=True)
class Table2Config:
    """Settings of the Table 2 protocol (and of each |Q| in Figures 5–6).

    Attributes:
      per_class: interpretations per class, |V| = per_class × classes.
      ri: how RI is built (|Q|, batch sizes).
    """

    per_class: int = 10
    ri: RIOptions = RIOptions()


def region_scores(model: Model, ref_features: Features,
                  unseen_features: Features, ref_raw: Callable[[np.ndarray], np.ndarray], *,
                  num_classes: int, seed: int, config: Table2Config) -> dict:
    """One run: RI's |V| regions scored on the reference and unseen sets.

    Args:
      model: the ``ri_jax.model.Model``.
      ref_features, unseen_features: ``Features`` (ψ, labels, predictions) of both sets.
      ref_raw: indices int[n] -> float32[n, S, S, 3] raw reference images.
      num_classes: classes of the model.
      seed: the run's seed (``routing.protocol_keys``).
      config: ``Table2Config``.

    Returns:
      ``{"interpretations": summary, "reference": {metric: %, "covered": n}, "unseen": {...}}``.
    """
    keys = routing.protocol_keys(seed)
    km = routing.kmeans_inputs(ref_features.psi, config.per_class * num_classes, key=keys.kmeans)
    raw_inputs = ref_raw(km.inputs)
    ri = methods.ri_at_inputs(model, ref_features.psi, raw_inputs, config.ri,
                              key=keys.boundaries)
    gradcam = methods.cam_weights("Grad-CAM", model, raw_inputs,
                                  ref_features.psi[km.inputs], ref_features.predictions[km.inputs])
    out = {"interpretations": methods.ri_summary(ri, gradcam)}
    for name, feats in zip(SETS, (ref_features, unseen_features)):
        m = region_metrics(predict(ri.regions, feats.psi).label, feats.labels, feats.predictions)
        out[name] = {"ACU-GT": 100 * float(m.acu_gt) if labels_known(feats) else None,
                     "ACU-MD": 100 * float(m.acu_md), "CVR": 100 * float(m.cvr),
                     "covered": int(m.num_covered)}
    return out


def labels_known(features: Features) -> bool:
    """Whether every label is one of the model's classes (unknown labels are −1: data whose
    classes are not the model's, where ACU-GT and the model's accuracy do not apply)."""
    return bool(np.all(np.asarray(features.labels) >= 0))


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
            values = [r[m] for r in covered if r[m] is not None]
            table[s][m] = mean_std(values) if values else {"mean": None, "std": None}
        table[s] = {m: table[s][m] for m in METRICS}
    return table, empty


def model_accuracy(ref_features: Features, unseen_features: Features) -> dict:
    """The CNN's own accuracy (%) on the reference and unseen sets (None: labels unknown)."""
    acc = lambda f: 100 * float(np.mean(f.predictions == f.labels)) if labels_known(f) else None
    return {"reference_accuracy": acc(ref_features), "unseen_accuracy": acc(unseen_features)}


class Table2Result(NamedTuple):
    """Table 2's runs.

    Attributes:
      seeds: the run seeds.
      runs: ``region_scores`` per run.
      model: ``model_accuracy``.
    """

    seeds: list[int]
    runs: list[dict]
    model: dict

    def to_json(self) -> dict:
        """Per set and metric mean ± std, the model's accuracy, runs without coverage,
        covered images and RI's interpretations per run."""
        table, empty = summarise(self.runs)
        known = all(r[s]["ACU-GT"] is not None for r in self.runs for s in SETS)
        ground_truth = ({} if known else {"ground_truth": (
            "ACU-GT and the model's accuracy do not apply: the data's labels are not the "
            "model's classes")})
        return {**table, "model": self.model, "runs_without_coverage": empty, **ground_truth,
                "covered_images": {s: mean_std([r[s]["covered"] for r in self.runs])
                                   for s in SETS},
                "interpretations": [r["interpretations"] for r in self.runs]}

    def csv_rows(self) -> list[dict]:
        """One row per run and set."""
        return [{"run": i, "seed": s, "set": name, **r[name]}
                for i, (s, r) in enumerate(zip(self.seeds, self.runs)) for name in SETS]


def run_table2(model: Model, ref_features: Features, unseen_features: Features,
               ref_raw: Callable[[np.ndarray], np.ndarray], *, num_classes: int,
               seeds: Sequence[int], config: Table2Config = Table2Config(),
               progress: bool = False) -> Table2Result:
    """Table 2 on one model, reference set and unseen set (arguments as ``region_scores``).

    Returns:
      ``Table2Result``.
    """
    seeds = list(seeds)
    runs = [region_scores(model, ref_features, unseen_features, ref_raw,
                          num_classes=num_classes, seed=s, config=config)
            for s in tqdm(seeds, desc="Table 2 runs", disable=not progress)]
    return Table2Result(seeds=seeds, runs=runs, model=model_accuracy(ref_features, unseen_features))
