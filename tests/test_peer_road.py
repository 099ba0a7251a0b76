"""ROAD agrees with pytorch-grad-cam's ROAD classes on the tiny VGG (skipped without torch)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

from benchmarks.peer_road import compare  # noqa: E402


def test_road_matches_pytorch_grad_cam(tiny_config, tiny_model):
    fns, params = tiny_model
    raw = np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32)
    rows = compare(fns, params, tiny_config, raw, percentiles=(20, 80))
    assert {r.name for r in rows} >= {"ROADCombined", "ROADMostRelevantFirst(20)",
                                      "ROADLeastRelevantFirst(80)"}
    for r in rows:
        assert r.cells > 0 and r.max_abs < 1e-4, r
