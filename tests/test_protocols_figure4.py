"""ri_jax.protocols.figure4's curve arithmetic against a loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.protocols import figure4

S = 32
FEW = settings(max_examples=40, deadline=None)


@settings(max_examples=80, deadline=None)
@given(v=st.integers(1, 6), kmax=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_curves_over_k_matches_loop(v, kmax, seed):
    rng = np.random.default_rng(seed)
    drop = rng.random((v, kmax))
    increase = rng.random((v, kmax)) < 0.5
    counts = rng.integers(1, kmax + 1, v)
    used = np.arange(kmax)[None] < counts[:, None]
    ks = sorted(set(rng.integers(1, kmax + 1, 3).tolist()))
    got = figure4.curves_over_k(drop, increase, used, ks)
    for i, k in enumerate(ks):
        ads, ais, sizes = [], [], []
        for row in range(v):
            s = [r for r in range(k) if used[row, r]]
            ads.append(np.mean([drop[row, r] for r in s]))
            ais.append(np.mean([increase[row, r] for r in s]))
            sizes.append(len(s))
        assert got["mAD"][i] == pytest.approx(100 * np.mean(ads))
        assert got["mAI"][i] == pytest.approx(100 * np.mean(ais))
        assert got["images_used"][i] == pytest.approx(np.mean(sizes))
