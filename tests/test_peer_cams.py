"""The CAM baselines agree with pytorch-grad-cam where their docstrings say so (skipped without torch)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

from benchmarks.peer_cams import compare  # noqa: E402
from ri_jax.pretrained import to_torch_vgg  # noqa: E402


def test_to_torch_vgg_is_the_same_function(tiny_config, tiny_model):
    import torch

    fns, params = tiny_model
    x = np.asarray(fns.normalize(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)))
    with torch.no_grad():
        got = to_torch_vgg(params, tiny_config)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, np.asarray(fns.apply(params, x)), rtol=1e-4, atol=1e-5)


def test_cams_match_pytorch_grad_cam_where_documented(tiny_config, tiny_model):
    fns, params = tiny_model
    raw = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    rows = {r.name: r for r in compare(fns, params, tiny_config, raw)}
    forward = rows["forward (psi abs, logits abs)"]
    assert forward.weights_max_rel < 1e-4 and forward.logits_max_abs < 1e-4
    for name in ("Grad-CAM", "Grad-CAM++ (ours + the peer's 1e-6 in the denominator)",
                 "Score-CAM (ours: all three as pytorch-grad-cam)",
                 "Score-CAM (ours: probability, normalised, align_corners) vs softmax target"):
        assert rows[name].map_max_abs < 1e-4, name
        assert rows[name].weights_max_rel < 1e-4, name
