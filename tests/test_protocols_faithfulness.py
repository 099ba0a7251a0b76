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
    own = {f"{m} (own weights)" for m in methods.method_names("ri", "cam")}
    assert set(saved["methods"]) == set(methods.method_names("ri", "cam"))
    assert set(saved["controls"]) == set(methods.method_names("control")) | own
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
        scored = FaithfulnessOptions(images=N).targets(len(run["RI"][0].drop))
        assert len(scored) == N and scored[-1] > N  # spread over the set, not its first N
        for name in list(methods.method_names("ri", "cam")) + ["Random", "Centre square"]:
            ev = run[name][0]
            assert faith[name].scalars()["mAD@20%"] == pytest.approx(
                100 * ev.drop[scored].mean(), abs=1e-3)
            curves = faith[name].curves  # nothing removed yet: the intact probability
            np.testing.assert_allclose(curves.deletion[:, 0], ev.y[scored], atol=1e-5)
    rows = table.csv_rows()
    assert all("road_combined" in r for r in rows if r["method"] != "ACE")


def _table(fill, rows, measures):
    names = list(rows)
    return {"faithfulness": {
        "config": {"curve_step": 0.05, "road_percentiles": [50.0], "images_scored": 4, "fill": fill},
        "measures": [{"key": k, "label": k, "lower_is_better": low, "fill_dependent": dep}
                     for k, low, dep in measures],
        "methods": {n: rows[n] for n in names if n in ("RI", "Grad-CAM")},
        "controls": {n: rows[n] for n in names if n not in ("RI", "Grad-CAM")},
        "curves": {}}}


def test_measures_verdict_reads_each_measure_and_fill():
    from ri_jax.protocols.report import faithfulness_section, measure_claims, measure_columns

    ms = lambda m, s=0.0: {"mean": m, "std": s}
    black = _table("black", {"RI": {"deletion_auc": ms(0.2), "mAD@20%": ms(10.0)},
                             "Grad-CAM": {"deletion_auc": ms(0.3), "mAD@20%": ms(20.0)},
                             "Random": {"deletion_auc": ms(0.25), "mAD@20%": ms(5.0)}},
                   [("deletion_auc", True, False), ("mAD@20%", True, True)])
    blur = _table("blur", {"RI": {"mAD@20%": ms(30.0)}, "Grad-CAM": {"mAD@20%": ms(25.0, 1.0)},
                           "Random": {"mAD@20%": ms(50.0)}}, [("mAD@20%", True, True)])
    cols = measure_columns({"black": black, "blur": blur})
    assert list(cols) == ["deletion_auc", "mAD@20% [black]", "mAD@20% [blur]"]
    claims = measure_claims(cols, ["RI", "Grad-CAM"])
    assert claims["RI is the best method"] == {"deletion_auc": True, "mAD@20% [black]": True,
                                               "mAD@20% [blur]": False}
    assert claims["RI clearly beats the Random control"] == {
        "deletion_auc": True, "mAD@20% [black]": False, "mAD@20% [blur]": True}
    text = "\n".join(faithfulness_section({"black": black, "blur": blur}, rel="."))
    assert "- RI is the best method: 2 of 3 (deletion_auc, mAD@20% [black])" in text
    assert "- Grad-CAM clearly beats the Random control: 1 of 3 (mAD@20% [blur])" in text
    assert "- RI beats Grad-CAM: 2 of 3" in text and "Grad-CAM beats RI" not in text
    assert "Best on: RI 2 of 3 measures; Grad-CAM 1 of 3 measures." in text
