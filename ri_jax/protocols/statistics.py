"""Summary statistics of repeated runs, as the paper reports them, and their one text form."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std"}`` (population std over runs, like the paper's ±)."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}


def mean_min_max(values: Sequence[float]) -> dict:
    """``{"mean", "min", "max"}`` of values (all None when there are none)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def format_mean_std(d: dict, digits: int = 2, *, missing: str = "undefined") -> str:
    """``"mean ± std"`` of a ``mean_std`` dict, or ``missing`` when its mean is None."""
    if d["mean"] is None:
        return missing
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"
