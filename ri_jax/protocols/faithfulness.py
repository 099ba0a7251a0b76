"""The faithfulness measures of ``ri_jax.faithfulness`` as the §6 protocols run them.

``FaithfulnessOptions`` says which measures run, on how many target images and with which
settings; ``evaluate_faithfulness`` scores one set of heat maps on its targets and returns
a ``Faithfulness`` with per-image values; ``summarise`` turns the runs of one method into
the mean ± std (over runs) that ``table1.json`` holds, and ``mean_curves`` its mean
deletion / insertion curves for the plot.

Measures (``MEASURES``: key, label, whether lower is better), units as stored:
  * ``deletion_auc``, ``insertion_auc_blur``, ``insertion_auc_mean``: areas under the
    curves of p_c (probability, fraction axis [0, 1]);
  * ``road_morf``, ``road_lerf``: ROAD scores p_c(imputed) − p_c(intact) averaged over the
    percentiles, ``road_combined`` = (LeRF − MoRF) / 2 (pytorch-grad-cam's ``ROADCombined``);
  * ``mAD@f`` / ``mAI@f``: AD / AI (percent) keeping the top share f, under the table's fill.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from ri_jax import faithfulness as F
from ri_jax.protocols.statistics import mean_std

MEASURE_SETS = ("all", "keep", "none")


@dataclasses.dataclass(frozen=True)
class FaithfulnessOptions:
    """Which faithfulness measures a protocol runs, and how.

    Attributes:
      measures: ``"all"`` (curves, ROAD and AD / AI at ``keep_fractions``), ``"keep"`` (only
        AD / AI at ``keep_fractions``: the part that depends on the fill) or ``"none"``.
      images: score the first ``images`` targets (0 = all): the curves cost 3 (T + 1)
        forward passes per map and ROAD 2 · percentiles imputations and passes.
      step: largest share of pixels per curve step (≤ 5 %).
      keep_fractions: AD / AI keep fractions.
      road_percentiles: ROAD percentiles.
      road_noise: std of ROAD's imputation noise (normalised units).
      batch_size: images per forward chunk.
    """

    measures: str = "all"
    images: int = 100
    step: float = F.CURVE_STEP
    keep_fractions: tuple[float, ...] = F.KEEP_FRACTIONS
    road_percentiles: tuple[float, ...] = (10, 30, 50, 70, 90)
    road_noise: float = F.ROAD_NOISE
    batch_size: int = 32

    def __post_init__(self):
        if self.measures not in MEASURE_SETS:
            raise ValueError(f"measures: unknown {self.measures!r}; choose one of {list(MEASURE_SETS)}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 0:
            raise ValueError(f"images: must be an int >= 0 (0 = all), got {self.images!r}")
        F.curve_fractions(self.step)  # validates the step
        object.__setattr__(self, "keep_fractions", tuple(float(f) for f in self.keep_fractions))
        object.__setattr__(self, "road_percentiles", tuple(float(p) for p in self.road_percentiles))

    @property
    def enabled(self) -> bool:
        return self.measures != "none"

    def targets(self, n: int) -> np.ndarray:
        """Which of ``n`` targets are scored: ``images`` of them evenly spaced over the whole
        set (all when 0), so a set stored class by class is scored on every class."""
        k = n if self.images == 0 else min(self.images, n)
        return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))

    def describe(self) -> dict:
        """The options as written into a results file."""
        return {"measures": self.measures, "images": self.images,
                "selection": "evenly spaced over the unseen set", "curve_step": self.step,
                "keep_fractions": list(self.keep_fractions),
                "road_percentiles": list(self.road_percentiles), "road_noise": self.road_noise,
                "road_rule": "exact (the project's tie rule: exactly round((1 - p/100) S²) "
                             "pixels removed)",
                "deletion": "removed pixels become the normalisation mean colour (RISE's zero)",
                "insertion": "from the blurred image (blur) and from the mean colour (mean)"}


MEASURES = (("deletion_auc", "deletion AUC", True),
            ("insertion_auc_blur", "insertion AUC (blur)", False),
            ("insertion_auc_mean", "insertion AUC (mean)", False),
            ("road_morf", "ROAD MoRF", True),
            ("road_lerf", "ROAD LeRF", False),
            ("road_combined", "ROAD combined", False))


def keep_measures(fractions: Sequence[float]) -> tuple[tuple[str, str, bool], ...]:
    """``(key, label, lower is better)`` of AD / AI at each keep fraction."""
    return tuple(m for f in fractions for m in (
        (f"mAD@{100 * f:g}%", f"mAD@{100 * f:g}% (%)", True),
        (f"mAI@{100 * f:g}%", f"mAI@{100 * f:g}% (%)", False)))


class Faithfulness(NamedTuple):
    """One set of heat maps scored on its targets (None: that measure was not run).

    Attributes:
      curves: ``faithfulness.Curves``.
      road: ``faithfulness.RoadScores``.
      keep: ``faithfulness.KeepScores``.
    """

    curves: F.Curves | None
    road: F.RoadScores | None
    keep: F.KeepScores | None

    def scalars(self) -> dict[str, float]:
        """Every measure's mean over the targets (``MEASURES`` and ``keep_measures`` keys)."""
        out = {}
        if self.curves is not None:
            c = self.curves
            for key, curve in (("deletion_auc", c.deletion), ("insertion_auc_blur", c.insertion_blur),
                               ("insertion_auc_mean", c.insertion_mean)):
                out[key] = float(np.mean(F.auc(curve, c.fractions)))
        if self.road is not None:
            out["road_morf"] = float(np.mean(self.road.morf))
            out["road_lerf"] = float(np.mean(self.road.lerf))
            out["road_combined"] = float(np.mean(self.road.combined))
            for j, p in enumerate(self.road.percentiles):
                out[f"road_morf@{p:g}"] = float(np.mean(self.road.morf[:, j]))
                out[f"road_lerf@{p:g}"] = float(np.mean(self.road.lerf[:, j]))
        if self.keep is not None:
            drop, increase = F.drop_increase(self.keep.y, self.keep.y_masked)
            for j, f in enumerate(self.keep.fractions):
                out[f"mAD@{100 * f:g}%"] = float(100 * np.mean(drop[:, j]))
                out[f"mAI@{100 * f:g}%"] = float(100 * np.mean(increase[:, j]))
        return out


def evaluate_faithfulness(predict: Callable, normalize: Callable, raw: np.ndarray,
                          heatmaps: np.ndarray, classes: np.ndarray, options: FaithfulnessOptions,
                          *, fill: str = "black", blur_sigma: float | None = None,
                          key: jax.Array | None = None) -> Faithfulness:
    """Scores heat maps on ``options.targets(B)`` of their targets.

    Args:
      predict: ``predict(normalised [n, S, S, C]) -> logits`` (pass the same object every
        call, e.g. ``model.forward``, so programs compile once).
      normalize: raw -> normalised, pixel by pixel.
      raw: float32[B, S, S, 3] raw targets in [0, 1].
      heatmaps: float32[B, S, S] maps drawn on them.
      classes: int[B] the class scored on each target (the model's prediction).
      options: ``FaithfulnessOptions``.
      fill, blur_sigma: the fill of AD / AI at the keep fractions.
      key: PRNG key of ROAD's noise.

    Returns:
      ``Faithfulness`` (every field None when ``options.measures == "none"``).
    """
    if not options.enabled:
        return Faithfulness(None, None, None)
    idx = options.targets(len(raw))
    raw, heatmaps = np.asarray(raw[idx], np.float32), np.asarray(heatmaps[idx], np.float32)
    classes = np.asarray(classes[idx], np.int32)
    common = dict(classes=classes, batch_size=options.batch_size)
    keep = F.keep_fraction_scores(predict, normalize, raw, heatmaps,
                                  fractions=options.keep_fractions, fill=fill,
                                  blur_sigma=blur_sigma, **common)
    if options.measures == "keep":
        return Faithfulness(None, None, keep)
    curves = F.deletion_insertion(predict, normalize, raw, heatmaps, step=options.step, **common)
    road = F.road(predict, normalize, raw, heatmaps, percentiles=options.road_percentiles,
                  noise=options.road_noise, key=key, **common)
    return Faithfulness(curves, road, keep)


def summarise(runs: Sequence[Faithfulness]) -> dict[str, dict]:
    """Each measure's mean ± std over runs (of the per-run means over targets)."""
    per_run = [r.scalars() for r in runs]
    return {k: mean_std([s[k] for s in per_run]) for k in per_run[0]} if per_run else {}


def mean_curves(runs: Sequence[Faithfulness]) -> dict | None:
    """The deletion / insertion curves averaged over targets and runs (None without curves).

    Returns:
      ``{"fractions", "deletion", "insertion_blur", "insertion_mean"}``, lists of T + 1 floats.
    """
    runs = [r for r in runs if r.curves is not None]
    if not runs:
        return None
    mean = lambda field: np.mean([getattr(r.curves, field).mean(0) for r in runs], axis=0).tolist()
    return {"fractions": runs[0].curves.fractions.tolist(), "deletion": mean("deletion"),
            "insertion_blur": mean("insertion_blur"), "insertion_mean": mean("insertion_mean")}
