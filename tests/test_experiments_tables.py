"""Table 1, Table 2 and Figures 5–6 end to end on a tiny checkpoint and a tiny folder dataset."""

import csv
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
import figures5_6  # noqa: E402
import interpret  # noqa: E402
import run_all  # noqa: E402
import table1  # noqa: E402
import table2  # noqa: E402
import variant_study  # noqa: E402
from ri_jax.checkpoint import save_checkpoint  # noqa: E402
from ri_jax.data import DatasetError  # noqa: E402
from ri_jax.protocols.statistics import format_mean_std  # noqa: E402
from ri_jax.provenance import code_version  # noqa: E402

PER_CLASS = 10
SCRIPTS = {"interpret": interpret, "table1": table1, "table1_mean": table1, "table1_blur": table1, "table2": table2,
           "figure4": figure4, "figures5_6": figures5_6, "case_studies": case_studies,
           "variant_study": variant_study}
TINY_ARGS = ["--refs-per-class", "0", "--unseen", "0", "--batch-size", "16", "--no-progress",
             "--per-class", "2"]


def write_images(root: Path, rng) -> np.ndarray:
    """10 PNGs per class and split; class "b" is brighter so the classes differ."""
    train = []
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(PER_CLASS):
                img = (rng.random((32, 32, 3)) * (0.5 + 0.5 * c) * 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i}.png")
                if split == "train":
                    train.append(img / 255.0)
    return np.asarray(train, np.float32)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_model, tiny_config):
    """A data folder and a checkpoint whose random model predicts both classes."""
    root = tmp_path_factory.mktemp("tables")
    raw = write_images(root / "data", np.random.default_rng(0))
    fns, params = tiny_model
    logits = np.asarray(fns.apply(params, fns.normalize(raw)))
    params = jax.tree.map(lambda a: a, params)
    shift = np.median(logits[:, 0] - logits[:, 1])
    params["params"]["fc_2"]["bias"] = params["params"]["fc_2"]["bias"].at[1].add(shift)
    save_checkpoint(root / "ckpt", params, tiny_config)
    return root, ["--data", str(root / "data"), "--checkpoint", str(root / "ckpt")] + TINY_ARGS


def mean_std_ok(d, lo=0.0, hi=100.0):
    return set(d) == {"mean", "std"} and lo <= d["mean"] <= hi and d["std"] >= 0


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def results(tiny_setup):
    """One ``run_all --quick`` on the tiny setup: two runs per table, no ACE (slow), no case studies."""
    root, base = tiny_setup
    out, md = root / "all", root / "RESULTS.md"
    record = run_all.main(base[:4] + [
        "--out", str(out), "--quick", "--no-progress", "--no-ace", "--results-md", str(md),
        "--in-process",  # the steps share compiled programs; a process each is tested below
        "--extra", "table1:--runs 2 --per-class 2 --num-boundaries 4",
        "--extra", "table2:--runs 2 --per-class 2 --num-boundaries 4",
        "--extra", "figures5_6:--runs 2 --per-class 2 --qs 3,1",
        "--extra", "figure4:--ks 1,3 --num-boundaries 4",
        # The case studies only add figures; tests/test_experiments_figures.py runs them.
        "--steps", "table1,table2,figure4,figures5_6"])
    # Table 1 under the other two fills, in this process (the jitted steps compile once: a
    # fill is data, not a shape), into the folders run_all's table1_mean / table1_blur use;
    # then RESULTS.md again from everything on disk.
    for fill in ("mean", "blur"):
        table1.main(base + ["--out", str(out / f"table1_{fill}"), "--cache-dir", str(out / "cache"),
                            "--runs", "1", "--num-boundaries", "4", "--fill", fill,
                            "--faithfulness", "keep", "--faithfulness-images", "4"])
    run_all.main(["--out", str(out), "--render-only", "--results-md", str(md)])
    return out, md, record


@pytest.mark.slow
def test_table1_writes_the_stable_schema(results):
    out = results[0] / "table1"
    saved = json.loads((out / "table1.json").read_text())
    assert saved["methods"].keys() == {"RI", "Grad-CAM", "Grad-CAM++", "Score-CAM"}
    assert saved["controls"].keys() == {"Random", "Grad-CAM (own weights)", "Centre square"}
    for name, scores in {**saved["methods"], **saved["controls"]}.items():
        # Every method and deterministic control has its inverse; "Random"'s would be random too.
        assert scores.keys() == ({"mAD", "mAI"} if name == "Random" else {"mAD", "mAI", "inverse"})
        for s in (scores, scores.get("inverse", scores)):
            assert mean_std_ok(s["mAD"]) and mean_std_ok(s["mAI"])
    assert saved["config"]["fill"] == "black" and saved["config"]["blur_sigma"] is None
    prior = saved["fill_prior"]
    assert prior["fill"] == "black" and prior["images"] == 1
    assert sum(prior["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert sorted(prior["predicted"].values()) == [0.0, 1.0]
    per_class = saved["per_class"]["RI"]
    assert per_class.keys() == {"a", "b"} and sum(c["count"] for c in per_class.values()) == 20
    # The per-class AD / AI average back to the overall numbers, weighted by the counts.
    defined = [c for c in per_class.values() if c["count"]]
    assert sum(c["count"] * c["mAD"]["mean"] for c in defined) / 20 == pytest.approx(
        saved["methods"]["RI"]["mAD"]["mean"], rel=1e-4)
    ri = saved["interpretations"]["RI"]
    assert len(ri) == 2
    for report in ri:
        assert report["interpretations"] == 4
        assert report["routed_by_polytope"] + report["routed_to_nearest_centre"] == 20
        assert 1 <= report["distinct_polytopes"] <= 4 and "tau" in report
    for report in saved["interpretations"]["Grad-CAM"]:
        assert report["routed_to_nearest_centre"] == 20 and report["routed_by_polytope"] == 0
    # A random map has no ties at the cut; the flat maps of empty polytopes always do.
    assert all(r["tied_images"] == 0 for r in saved["interpretations"]["Random"])
    for r in ri:
        assert r["tied_images"] >= r["flat_maps"]
    # Own-weights Grad-CAM has nothing random: it is computed once, std 0.
    assert saved["controls"]["Grad-CAM (own weights)"]["mAD"]["std"] == 0
    rows = read_csv(out / "table1.csv")
    assert len(rows) == 2 * 7 and {r["method"] for r in rows} >= {"RI", "Random", "Centre square"}
    ads = [float(r["AD"]) for r in rows if r["method"] == "RI"]
    assert saved["methods"]["RI"]["mAD"]["mean"] == pytest.approx(np.mean(ads))
    md = (out / "table1.md").read_text()
    assert "| RI |" in md and "Grad-CAM (own weights)" in md and "inverse mAD" in md
    assert saved["config"]["seeds"] == [0, 1] and saved["config"]["num_unseen"] == 20


@pytest.mark.slow
def test_table1_runs_are_seeded_and_repeatable_and_ace_joins(tiny_setup, results):
    root, base = tiny_setup
    out = results[0] / "table1"
    variant = json.loads((out / "table1.json").read_text())["config"]["ri_variant"]  # run_all's
    again = table1.main(base + ["--out", str(root / "t1_seed1"), "--runs", "1", "--seed", "1",
                                "--num-boundaries", "4", "--ri-variant", variant]
                        + run_all.ACE_ARGS)
    rows = read_csv(out / "table1.csv")
    by_seed = {(int(r["seed"]), r["method"]): (float(r["AD"]), float(r["AI"])) for r in rows}
    # Run 1 of the two-run call (seed 1) is repeated exactly by a one-run call with --seed 1 …
    for name, scores in {**again["methods"], **again["controls"]}.items():
        if name != "ACE":
            assert by_seed[(1, name)] == pytest.approx((scores["mAD"]["mean"], scores["mAI"]["mean"]))
    # … and different seeds draw different random masks.
    assert by_seed[(0, "Random")] != by_seed[(1, "Random")]
    # ACE joins the paper's methods, routed like the baselines, and reports what it found.
    assert mean_std_ok(again["methods"]["ACE"]["mAD"]) and mean_std_ok(again["methods"]["ACE"]["mAI"])
    ace = again["interpretations"]["ACE"][0]
    assert ace["routed_to_nearest_centre"] == 20 and ace["interpretations"] == 4
    assert 0 <= ace["empty_masks"] <= 20 and 0 <= ace["without_significant_concept"] <= 4


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["mean", "blur"])
def test_table1_under_other_fills(results, fill):
    saved = json.loads((results[0] / f"table1_{fill}" / "table1.json").read_text())
    assert saved["config"]["fill"] == fill == saved["fill_prior"]["fill"]
    if fill == "blur":  # σ = 0.1 · S by default; the blur prior averages over the 20 unseen images
        assert saved["config"]["blur_sigma"] == pytest.approx(3.2) and saved["fill_prior"]["images"] == 20
    black = json.loads((results[0] / "table1" / "table1.json").read_text())
    # Same images, same first seed, another fill: other scores.
    assert saved["methods"]["RI"] != black["methods"]["RI"] or \
        saved["controls"]["Random"] != black["controls"]["Random"]


@pytest.mark.slow
def test_table1_faithfulness_columns_plot_and_verdict(results):
    """run_all --quick passes the faithfulness measures through: curves, ROAD and AD / AI at
    several fractions under black, AD / AI at those fractions under the other fills."""
    black = json.loads((results[0] / "table1" / "table1.json").read_text())["faithfulness"]
    assert black["config"]["images_scored"] == 8
    assert {"deletion_auc", "road_combined", "mAD@5%"} <= set(black["methods"]["RI"])
    assert {"Random", "Centre square", "RI (own weights)"} <= set(black["controls"])
    assert (results[0] / "table1" / "faithfulness_curves.png").stat().st_size > 0
    blur = json.loads((results[0] / "table1_blur" / "table1.json").read_text())["faithfulness"]
    assert "deletion_auc" not in blur["methods"]["RI"] and "mAD@50%" in blur["methods"]["RI"]
    text = results[1].read_text()
    assert "### Verdict across measures and fills" in text and "mAD@50% (%) [blur]" in text


@pytest.mark.slow
def test_table2_writes_the_stable_schema_and_shares_table1_polytopes(results):
    out = results[0] / "table2"
    saved = json.loads((out / "table2.json").read_text())
    for s in ("reference", "unseen"):
        assert saved[s].keys() == {"ACU-GT", "ACU-MD", "CVR"}
        assert all(mean_std_ok(v) for v in saved[s].values())
    assert saved["model"].keys() == {"reference_accuracy", "unseen_accuracy"}
    assert 0 <= saved["model"]["reference_accuracy"] <= 100
    rows = read_csv(out / "table2.csv")
    assert len(rows) == 4 and {r["set"] for r in rows} == {"reference", "unseen"}
    # Every polytope covers its own input, a reference, so CVR on references is positive.
    assert all(float(r["CVR"]) > 0 for r in rows if r["set"] == "reference")
    assert "ACU-GT of F" in (out / "table2.md").read_text()
    # Same seeds, same polytopes as Table 1's RI: the same unseen images are covered.
    t1 = json.loads((results[0] / "table1" / "table1.json").read_text())["interpretations"]["RI"]
    unseen_rows = [r for r in rows if r["set"] == "unseen"]
    for run, row in zip(t1, unseen_rows):
        assert run["routed_by_polytope"] == int(row["covered"])
    for run, summary in zip(t1, saved["interpretations"]):
        assert run["distinct_polytopes"] == summary["distinct_polytopes"]


@pytest.mark.slow
def test_figures5_6_sweep_and_plot(results):
    out = results[0] / "figures5_6"
    saved = json.loads((out / "figures5_6.json").read_text())
    assert saved["qs"] == [1, 3]
    for s in ("reference", "unseen"):
        for m in ("ACU-GT", "ACU-MD", "CVR"):
            assert len(saved[s][m]) == 2
            assert all(d["mean"] is None or mean_std_ok(d) for d in saved[s][m])
    png = out / "figures5_6.png"
    assert png.stat().st_size > 1000 and Image.open(png).size[0] > 500
    assert len(read_csv(out / "figures5_6.csv")) == 2 * 2 * 2


def test_scripts_reject_bad_arguments(tiny_setup):
    root, base = tiny_setup
    with pytest.raises(SystemExit):
        table1.main(base + ["--out", str(root / "bad1"), "--runs", "0"])
    with pytest.raises(SystemExit):
        figures5_6.main(base + ["--out", str(root / "bad2"), "--qs", "0,5"])
    with pytest.raises(SystemExit):
        figures5_6.main(base + ["--out", str(root / "bad3"), "--qs", "a"])
    with pytest.raises(SystemExit):
        run_all.main(["--out", str(root / "bad4"), "--steps", "table9"])


@pytest.mark.slow
def test_run_all_writes_results_md_from_the_json(results):
    out, md, record = results
    assert list(record["wall_seconds"]) == ["table1", "table2", "figure4", "figures5_6"]
    assert record["in_process"] is True
    for step in ("table1", "table2", "figure4", "figures5_6"):
        assert (out / step / f"{step}.json").is_file()
    t1 = json.loads((out / "table1" / "table1.json").read_text())
    t2 = json.loads((out / "table2" / "table2.json").read_text())
    text = md.read_text()
    assert "Read this first" in text and "paper (ASIRRA)" in text
    # The paper's numbers are in RESULTS.md only, never in a results file.
    for step in ("table1", "table2"):
        assert "30.72" not in (out / step / f"{step}.json").read_text()
    assert "30.72 ± 0.83" in text
    # Our numbers in RESULTS.md are the ones the steps just wrote.
    assert f"| RI | {format_mean_std(t1['methods']['RI']['mAD'])} | " in text
    assert format_mean_std(t2["unseen"]["CVR"]) in text
    assert "(all/figures5_6/figures5_6.png)" in text and "(all/figure4/figure4.png)" in text
    assert "does NOT hold" in text or "holds here" in text
    # Table 1 under each fill, with its checks and a verdict computed across the fills.
    for fill in ("black", "mean", "blur"):
        assert f"### Fill: {fill}" in text
    assert "### Verdict across fills (black, mean, blur)" in text and "Holds under every fill" in text
    assert "inverse mAD" in text and "(n = " in text
    assert json.loads((out / "run_all.json").read_text())["total_wall_seconds"] > 0
    # Results name the code they were made with, in every step's file and in RESULTS.md.
    assert record["code"] == t1["config"]["code"] == t2["config"]["code"] == code_version()
    if record["code"]:
        assert f"Code: commit {record['code']}" in text


@pytest.mark.parametrize("in_process", [False, True])
def test_run_all_names_the_step_that_fails(tmp_path, capfd, in_process):
    argv = ["--out", str(tmp_path / "out"), "--data", str(tmp_path / "missing"),
            "--steps", "table2", "--no-progress"] + ["--in-process"] * in_process
    if in_process:
        with pytest.raises(DatasetError, match="data folder does not exist") as raised:
            run_all.main(argv)
        assert "in run_all step table2 (table2.py)" in raised.value.__notes__
    else:  # the step's own process fails as a script does, and the driver names the step
        with pytest.raises(SystemExit, match="table2: table2.py failed with exit status 2"):
            run_all.main(argv)
        err = capfd.readouterr().err
        assert "table2.py: error:" in err and "data folder does not exist" in err


def test_run_all_runs_table1_under_every_fill(tmp_path):
    for quick in ([], ["--quick"]):
        args = run_all.parse_args(["--out", str(tmp_path)] + quick)
        fills = {step: table1.parse_args(run_all.step_argv(step, args, tmp_path)).fill
                 for step in ("table1", "table1_mean", "table1_blur")}
        assert fills == {"table1": "black", "table1_mean": "mean", "table1_blur": "blur"}
        assert "--ace" not in run_all.step_argv("table1_blur", args, tmp_path)


def test_run_all_settings_parse_in_every_script(tmp_path):
    for quick in ([], ["--quick"]):
        args = run_all.parse_args(["--out", str(tmp_path)] + quick)
        for step in run_all.STEPS:
            SCRIPTS[step].parse_args(run_all.step_argv(step, args, tmp_path))


def test_run_all_passes_ace_to_figure4_and_case_studies(tmp_path):
    for quick in ([], ["--quick"]):
        args = run_all.parse_args(["--out", str(tmp_path)] + quick)
        for step in ("figure4", "case_studies"):
            parsed = SCRIPTS[step].parse_args(run_all.step_argv(step, args, tmp_path))
            assert parsed.ace and parsed.ace_max_images == 0 and parsed.ace_segments == "15"
        f4 = SCRIPTS["figure4"].parse_args(
            run_all.step_argv("figure4", args, tmp_path))
        assert f4.ace_inputs == (2 if quick else 10) and f4.ace_repeats == 5
        assert table1.parse_args(run_all.step_argv("table1", args, tmp_path)).ace_max_images == 20
    args = run_all.parse_args(["--out", str(tmp_path), "--no-ace"])
    for step in run_all.STEPS:
        assert "--ace" not in run_all.step_argv(step, args, tmp_path)


def test_table2_with_the_authors_variant_records_it_and_its_diagnostics(tiny_setup):
    root, base = tiny_setup
    result = table2.main(base + ["--out", str(root / "t2_authors"), "--runs", "1",
                                 "--num-boundaries", "4", "--ri-variant", "authors"])
    assert result["config"]["ri_variant"] == "authors"
    d = result["interpretations"][0]["diagnostics"]
    assert d["searches"] == 4 * 2 * 2 and d["search_steps"]["max"] >= 1
    assert d["boundaries_after_loosen"]["max"] <= d["boundaries_before_loosen"]["max"]
    assert 1 <= d["distinct_covered_sets"] <= 4
    assert -1 <= d["cosine_ri_gradcam"]["mean"] <= 1
    for set_name in ("reference", "unseen"):
        assert mean_std_ok(result[set_name]["CVR"])


def test_run_all_passes_the_ri_variant_to_every_ri_step(tmp_path):
    args = run_all.parse_args(["--out", str(tmp_path), "--ri-variant", "authors"])
    for step in run_all.RI_VARIANT_STEPS:
        assert SCRIPTS[step].parse_args(run_all.step_argv(step, args, tmp_path)).ri_variant == \
            "authors"
    study = variant_study.parse_args(run_all.step_argv("variant_study", args, tmp_path))
    assert study.variants == ["paper", "authors"] and len(study.models) == 2


def test_the_variant_study_warns_when_resume_keeps_another_commits_table(tmp_path):
    path = tmp_path / "table1.json"
    assert variant_study.stale_table_warning(path, {"config": {"code": "abc"}}, "abc") is None
    warning = variant_study.stale_table_warning(path, {"config": {"code": "abc"}}, "def")
    assert str(path) in warning and "made at abc" in warning and "(def)" in warning
    assert "an unrecorded commit" in variant_study.stale_table_warning(path, {"config": {}}, "def")
