"""ri_jax.protocols.ace_adapter against per-image ACE explanations."""

import jax
import numpy as np
import pytest
from hypothesis import settings

from ri_jax.protocols import ace_adapter
from conftest import as_model

S = 32
FEW = settings(max_examples=40, deadline=None)


# ---- ACE ------------------------------------------------------------------------------------------

def test_ace_masks_match_per_image_explanations(protocol_model):
    from ri_jax.baselines.ace import ACECache, ACEConfig, explain_image

    fns, params, raw, _, classes = protocol_model
    config = ACEConfig(n_segments=(6,), num_concepts=3, min_members=1, max_members=4,
                       num_random=4, repeats=2, kmeans_restarts=1, kmeans_iters=5)
    cache = ACECache()
    results = ace_adapter.ace_interpretations(as_model(fns, params), [raw[:4], raw[4:8]], classes[[0, 4]], config,
                                     key=jax.random.key(0), cache=cache, random_images=raw[8:12])
    which = np.array([1, 0, 1, 1, 0])
    found = ace_adapter.ace_masks(results, which, raw[12:17], as_model(fns, params), cache=cache)
    for b, v in enumerate(which):
        e = explain_image(results[v], as_model(fns, params), raw[12 + b],
                    cache=cache)
        np.testing.assert_array_equal(found.masks[b], e.keep)
        assert found.reached[b] == e.reached and found.num_segments[b] == len(e.segments)
    summary = ace_adapter.ace_summary(results, found)
    assert summary["interpretations"] == 2
    assert summary["empty_masks"] == int(np.sum(~found.masks.any(axis=(1, 2))))
    with pytest.raises(ValueError, match="which"):
        ace_adapter.ace_masks(results, np.array([0, 2, 0, 0, 0]), raw[12:17], as_model(fns, params), cache=cache)
    with pytest.raises(ValueError, match="discovery_sets"):
        ace_adapter.ace_interpretations(as_model(fns, params), [raw[:4]], classes[:2], config,
                               key=jax.random.key(0), cache=cache)
