"""Summary statistics of repeated runs, as the paper reports them."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std"}`` (population std over runs, like the paper's ±)."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}
