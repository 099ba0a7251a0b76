"""Table 1's faithfulness columns: the same reused maps as AD / AI, every method and control."""

import numpy as np
import pytest
from conftest import as_model

from ri_jax.featurize import Features
from ri_jax.protocols import methods
from ri_jax.protocols.faithfulness import FaithfulnessOptions
from ri_jax.protocols.table1 import Table1Config, run_table1

N = 4  # unseen images scored


@pytest.fixture(scope="module")
def table(protocol_model):
    fns, params, raw, psi, classes = protocol_model
    model = as_model(fns, params)
    feats = Features(psi, np.asarray(model.head(psi)), classes, np.arange(len(psi)))
    options = FaithfulnessOptions(images=N, step=0.25, keep_fractions=(0.2, 0.5),
                                  road_percentiles=(50,), batch_size=4)
    config = Table1Config(per_class=2, ri=methods.RIOptions(num_boundaries=4), inverse=False,
                          faithfulness=options)
    return run_table1(model, feats, feats, lambda i: raw[i], raw, num_classes=2, seeds=[0, 1],
                      config=config)


def test_every_method_and_control_has_every_measure(table):
    saved = table.to_json()["faithfulness"]
    own = {f"{m} (own weights)" for m in methods.method_names()}
    assert set(saved["methods"]) == set(methods.method_names())
    assert set(saved["controls"]) == set(methods.CONTROLS) | own
    keys = {m["key"] for m in saved["measures"]}
    assert keys == {"deletion_auc", "insertion_auc_blur", "insertion_auc_mean", "road_morf",
                    "road_lerf", "road_combined", "mAD@20%", "mAI@20%", "mAD@50%", "mAI@50%"}
    for row in {**saved["methods"], **saved["controls"]}.values():
        assert keys <= set(row)
        assert all(0 <= row[k]["mean"] <= 1 for k in keys if "auc" in k)
    assert saved["config"]["images_scored"] == N
    assert set(saved["curves"]) == set(saved["methods"]) | set(saved["controls"])
    # The deterministic controls are scored once: std 0 over runs.
    assert saved["controls"]["Centre square"]["deletion_auc"]["std"] == 0


def test_faithfulness_scores_the_maps_table1_reuses(table):
    """AD at 20 % from the faithfulness pass equals Table 1's own AD on the same images:
    the measures see exactly the reused maps (k-means inputs, polytope or nearest centre)."""
    for run, faith in zip(table.runs, table.faithfulness):
        for name in list(methods.method_names()) + ["Random", "Centre square"]:
            ev = run[name][0]
            assert faith[name].scalars()["mAD@20%"] == pytest.approx(100 * ev.drop[:N].mean(),
                                                                     abs=1e-3)
            curves = faith[name].curves  # nothing removed yet: the intact probability
            np.testing.assert_allclose(curves.deletion[:, 0], ev.y[:N], atol=1e-5)
    rows = table.csv_rows()
    assert all("road_combined" in r for r in rows if r["method"] != "ACE")
