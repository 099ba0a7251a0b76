"""The main job, Figure 4 and the case studies end to end on a tiny checkpoint and folder dataset,
and their array helpers against plain loops."""

import csv
import html
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))

import case_studies  # noqa: E402
import figure4  # noqa: E402
import interpret  # noqa: E402
from ri_jax.protocols import methods, scoring  # noqa: E402
from ri_jax.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from ri_jax.data import load_dataset, sample_count  # noqa: E402
from conftest import as_model

PER_CLASS = 10
COMMON = ["--batch-size", "16", "--no-progress", "--num-boundaries", "4"]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_model, tiny_config):
    """10 PNGs per class and split (class "b" brighter) and a random tiny VGG predicting both classes."""
    root = tmp_path_factory.mktemp("figures")
    rng = np.random.default_rng(0)
    train = []
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b")):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(PER_CLASS):
                img = (rng.random((32, 32, 3)) * (0.5 + 0.5 * c) * 255).astype(np.uint8)
                Image.fromarray(img).save(root / "data" / split / name / f"{i}.png")
                if split == "train":
                    train.append(img / 255.0)
    fns, params = tiny_model
    logits = np.asarray(fns.apply(params, fns.normalize(np.asarray(train, np.float32))))
    # Shift the last bias so the random model splits the references between the classes.
    params = jax.tree.map(lambda a: a, params)
    shift = np.median(logits[:, 0] - logits[:, 1])
    params["params"]["fc_2"]["bias"] = params["params"]["fc_2"]["bias"].at[1].add(shift)
    save_checkpoint(root / "ckpt", params, tiny_config)
    return root, ["--data", str(root / "data"), "--checkpoint", str(root / "ckpt")] + COMMON


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- scripts end to end

def test_interpret_writes_figures_and_summary(tiny_setup, capsys):
    root, base = tiny_setup
    out = root / "interp"
    result = interpret.main(base + ["--out", str(out), "--num-inputs", "2", "--top-k", "3",
                                    "--html"])
    saved = json.loads((out / "summary.json").read_text())
    assert saved["inputs"] == json.loads(json.dumps(result["inputs"]))
    test = load_dataset(str(root / "data"), "test", image_size=32)
    labels = [test.labels[r["test_index"]] for r in saved["inputs"]]
    assert sorted(labels) == [0, 1]  # alternating between classes
    for r in saved["inputs"]:
        assert (out / r["figure"]).is_file() and r["figure"] == f"input_{r['test_index']}.png"
        assert r["file"] == test.ids[r["test_index"]]
        assert 0.5 <= r["probability"] <= 1.0  # the predicted class's probability (2 classes)
        assert 0 <= r["num_boundaries"] <= 4
        assert r["num_covered"] == r["num_covered_same_class"] + r["num_covered_other_class"]
        assert r["num_covered_other_class"] <= r["delta"] or not r["reached"]
        assert len(r["similar"]) == min(3, r["num_covered"])
        dists = [s["distance"] for s in r["similar"]]
        assert dists == sorted(dists) and all(np.isfinite(dists))
        if r["num_covered_other_class"] == 0:
            assert all(s["predicted_class"] == r["predicted_class"] for s in r["similar"])
        assert sum(r["covered_predicted"].values()) == r["num_covered"]
        assert sum(r["covered_labels"].values()) == r["num_covered"]
        assert r["misclassified"] == (r["true_label"] != r["predicted_class"])
        assert f"{r['num_covered']:,} training images" in r["description"]
    rows = read_csv(out / "summary.csv")
    assert [int(row["test_index"]) for row in rows] == [r["test_index"] for r in saved["inputs"]]
    md = (out / "summary.md").read_text()
    assert md in capsys.readouterr().out
    assert all(Path(r["file"]).name in md for r in saved["inputs"])
    page = (out / "index.html").read_text()
    assert page.count('<section class="input"') == 2
    assert page.count('data-misclassified="1"') == sum(r["misclassified"] for r in saved["inputs"])
    assert all(Path(r["file"]).name in page for r in saved["inputs"])
    assert not hasattr(interpret.parse_args(["--out", "x"]), "unseen")  # inputs come from --inputs

    chosen = interpret.main(base + ["--out", str(out), "--resume", "--inputs", "3,15"])
    assert [r["test_index"] for r in chosen["inputs"]] == [3, 15]
    with pytest.raises(SystemExit, match="outside"):
        interpret.main(base + ["--out", str(root / "interp3"), "--inputs", "3,99"])


def test_figure4_curves_controls_and_k1_cross_check(tiny_setup):
    root, base = tiny_setup
    out = root / "fig4"
    result = figure4.main(base + ["--out", str(out), "--num-inputs", "4", "--ks", "1,3,8,50",
                                  "--runs", "2", "--block-size", "3"])
    saved = json.loads((out / "figure4.json").read_text())
    assert saved["ks"] == [1, 3, 8] and saved["ks_dropped"] == [50]
    assert saved["methods"].keys() == set(methods.method_names("ri", "cam"))
    assert saved["controls"].keys() == set(methods.method_names("control"))
    for name, block in list(saved["methods"].items()) + list(saved["controls"].items()):
        for metric in ("mAD", "mAI"):
            assert all(0 <= v <= 100 for v in block[metric]["mean"])
            assert len(block[metric]["std"]) == 3 and min(block[metric]["std"]) >= 0
        used = block["images_used"]
        assert used[0] == 1.0
        if name == "RI":
            assert all(u <= k for u, k in zip(used, [1, 3, 8]))
        else:
            assert used == [1.0, 3.0, 8.0]
    assert len(saved["runs"]) == 2 and len(saved["interpretations"]["RI"]) == 2
    assert saved["interpretations"]["RI"][0]["interpretations"] == 4
    for t in saved["ties"].values():
        assert t["maps"] > 0 and 0 <= t["tied_maps"] <= t["maps"]
    assert "covered references only" in saved["notes"]["fewer_than_k"]
    assert len(read_csv(out / "figure4.csv")) == len(methods.method_names("ri", "cam", "control")) * 3
    assert (out / "figure4.png").stat().st_size > 0 and "K=8" in (out / "figure4.md").read_text()

    # K = 1 is x alone: Grad-CAM reused at x is Grad-CAM with x's own weights, and both
    # equal an independent evaluation of the inputs' own maps.
    for run in saved["runs"]:
        gc, own = run["curves"]["Grad-CAM"], run["curves"]["Grad-CAM (own weights)"]
        assert gc["mAD"][0] == pytest.approx(own["mAD"][0]) and gc["mAI"][0] == own["mAI"][0]
    params, config, _ = load_checkpoint(root / "ckpt")
    from ri_jax.models.vgg import make_vgg
    fns = make_vgg(config)
    refs = load_dataset(str(root / "data"), "train", image_size=32, class_names=config.class_names)
    inputs = sample_count(len(refs), 4, seed=0)
    raw = refs.raw(inputs)
    psi = np.asarray(fns.features(params, fns.normalize(raw)))
    preds = np.asarray(fns.head(params, psi)).argmax(axis=1)
    interps = methods.cam_interpretations("Grad-CAM", as_model(fns, params), raw, psi, preds)
    maps = methods.interpretation_heatmaps(interps, np.arange(4), psi, 32)
    ev = scoring.evaluate_heatmaps(as_model(fns, params), raw, maps)
    first = saved["runs"][0]["curves"]["Grad-CAM"]
    assert first["mAD"][0] == pytest.approx(ev.ad, abs=1e-3)
    assert first["mAI"][0] == pytest.approx(ev.ai)
    assert result["ks"] == saved["ks"]


def test_case_studies_blocks_scores_and_layout(tiny_setup):
    root, base = tiny_setup
    out = root / "cases"
    result = case_studies.main(base + ["--out", str(out), "--num-inputs", "2", "--top-k", "3",
                                       "--with-controls", "--layout", "paper", "--html"])
    saved = json.loads((out / "case_studies.json").read_text())
    assert saved["inputs"] == json.loads(json.dumps(result["inputs"]))
    # The case studies' controls are the two that draw a heat map per image (not the
    # centre square, which is the same mask on every image).
    names = set(methods.method_names("ri", "cam")) | {"Random", "Grad-CAM (own weights)"}
    assert saved["mean_masked_scores"].keys() == names
    for rec in saved["inputs"]:
        assert (out / rec["figure"]).is_file()
        assert rec["blocks"].keys() == set(case_studies.BLOCKS)
        ri_block, eu_block = (rec["blocks"][b] for b in case_studies.BLOCKS)
        assert len(eu_block) == 4 and 1 <= len(ri_block) <= 4
        assert len(ri_block) == 1 + min(3, rec["ri"]["num_covered"])
        for block in (ri_block, eu_block):
            first = block[0]
            assert first["reference_index"] is None and first["file"] == rec["file"]
            assert first["score"] == pytest.approx(rec["probability"], abs=1e-5)
            dists = [e["distance"] for e in block]
            assert dists == sorted(dists)
            for e in block:
                assert e["masked_scores"].keys() == names
                assert all(0 <= s <= 1 for s in e["masked_scores"].values())
        # x's own weights and the reused weights coincide on x itself.
        assert first["masked_scores"]["Grad-CAM"] == pytest.approx(
            first["masked_scores"]["Grad-CAM (own weights)"], abs=1e-6)
    rows = read_csv(out / "case_studies.csv")
    per_input = sum(len(b) for rec in saved["inputs"] for b in rec["blocks"].values())
    assert len(rows) == per_input * len(names)
    assert "similar by RI" in (out / "case_studies.md").read_text()
    page = (out / "index.html").read_text()
    assert page.count('<section class="input"') == 2
    assert all(f"> {m}</label>" in page for m in names)  # one toggle per method
    for rec in saved["inputs"]:
        assert sum(rec["ri"]["covered_predicted"].values()) == rec["ri"]["num_covered"]
        assert rec["ri"]["description"][1:] in html.unescape(page)  # capitalised there


ACE_TINY = ["--ace", "--ace-segments", "4", "--ace-min-members", "1", "--ace-repeats", "2",
            "--ace-random-images", "20", "--ace-max-images", "6"]


def test_figure4_with_ace_on_the_first_inputs(tiny_setup):
    root, base = tiny_setup
    out = root / "fig4_ace"
    figure4.main(base + ["--out", str(out), "--num-inputs", "3", "--ks", "1,3,5",
                          "--no-controls", "--ace-inputs", "1"] + ACE_TINY)
    saved = json.loads((out / "figure4.json").read_text())
    ace = saved["methods"][methods.ACE]
    assert set(saved["methods"]) == set(methods.method_names("ri", "cam")) | {methods.ACE}
    for metric in ("mAD", "mAI"):
        assert len(ace[metric]["mean"]) == len(ace[metric]["std"]) == 3
        assert all(np.isfinite(v) and 0 <= v <= 100 for v in ace[metric]["mean"])
    assert ace["images_used"] == [1.0, 3.0, 5.0]
    report = saved["interpretations"][methods.ACE][0]
    assert report["inputs_evaluated"] == 1 and report["inputs_sampled"] == 3
    assert report["interpretations"] == 1 and report["discovery_images"]["min"] == 6
    assert "first 1 of the 3" in saved["notes"]["ace"]
    assert methods.ACE not in saved["ties"]
    assert [r["method"] for r in read_csv(out / "figure4.csv")].count(methods.ACE) == 3
    assert "| ACE |" in (out / "figure4.md").read_text()
    assert saved["config"]["ace_config"]["n_segments"] == [4]


@pytest.mark.slow
def test_case_studies_with_ace_row(tiny_setup):
    root, base = tiny_setup
    out = root / "cases_ace"
    case_studies.main(base + ["--out", str(out), "--num-inputs", "1", "--top-k", "2",
                              "--layout", "paper"] + ACE_TINY)
    saved = json.loads((out / "case_studies.json").read_text())
    assert methods.ACE in saved["mean_masked_scores"]
    assert all(np.isfinite(v) for v in saved["mean_masked_scores"][methods.ACE].values()
               if v is not None)
    assert saved["ace"]["interpretations"] == 1 and saved["ace"]["discovery_images"] == 6
    for rec in saved["inputs"]:
        assert (out / rec["figure"]).is_file()
        for block in rec["blocks"].values():
            assert all(0 <= e["masked_scores"][methods.ACE] <= 1 for e in block)
    assert "| ACE |" in (out / "case_studies.md").read_text()
