"""Figures 5–6 (appendix E): ACU-GT and ACU-MD of RI's decision regions against |Q|.

For every |Q| the Table 2 protocol (``protocols.table2``) runs once per seed. With one
seed every |Q| uses the same k-means inputs and the samples are nested: Q is the first
|Q| references of one seeded permutation (``boundaries.sample_indices``), so a larger Q
only adds boundaries.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from ri_jax.featurize import Features
from ri_jax.model import Model
from ri_jax.protocols.table2 import (METRICS, SETS, Table2Config, model_accuracy, region_scores,
                                     summarise)



class Figures56Result(NamedTuple):
    """The |Q| sweep.

    Attributes:
      qs: the |Q| values, increasing.
      seeds: the run seeds.
      runs: per |Q|, ``table2.region_scores`` per seed.
      model: ``table2.model_accuracy``.
    """

    qs: list[int]
    seeds: list[int]
    runs: list[list[dict]]
    model: dict

    def to_json(self) -> dict:
        """Per set and metric one mean ± std per |Q|, runs without coverage, the model."""
        per_q = [summarise(runs) for runs in self.runs]
        return {"qs": self.qs,
                **{s: {m: [table[s][m] for table, _ in per_q] for m in METRICS} for s in SETS},
                "runs_without_coverage": {s: [empty[s] for _, empty in per_q] for s in SETS},
                "model": self.model}

    def csv_rows(self) -> list[dict]:
        """One row per |Q|, run and set."""
        return [{"num_boundaries": q, "run": i, "seed": s, "set": name, **r[name],
                 "boundaries_per_polytope": r["interpretations"]["boundaries_per_polytope"]["mean"]}
                for q, runs in zip(self.qs, self.runs)
                for i, (s, r) in enumerate(zip(self.seeds, runs)) for name in SETS]


def run_figures5_6(model: Model, ref_features: Features,
                   unseen_features: Features, ref_raw: Callable[[np.ndarray], np.ndarray], *,
                   num_classes: int, qs: Sequence[int], seeds: Sequence[int],
                   config: Table2Config = Table2Config(),
                   progress: bool = False) -> Figures56Result:
    """Table 2's regions for every |Q| in ``qs`` (``config.ri.num_boundaries`` is replaced).

    Args:
      model, ref_features, unseen_features, ref_raw, num_classes: as
        ``table2.region_scores``.
      qs: |Q| values, increasing.
      seeds: one run per seed and |Q|.
      config: ``Table2Config``.
      progress: show a progress bar over |Q|.

    Returns:
      ``Figures56Result``.
    """
    seeds = list(seeds)
    runs = []
    for q in tqdm(list(qs), desc="|Q| sweep", disable=not progress):
        config_q = dataclasses.replace(config, ri=dataclasses.replace(config.ri, num_boundaries=q))
        runs.append([region_scores(model, ref_features, unseen_features, ref_raw,
                                   num_classes=num_classes, seed=s, config=config_q)
                     for s in seeds])
    return Figures56Result(qs=list(qs), seeds=seeds, runs=runs,
                           model=model_accuracy(ref_features, unseen_features))
