"""The benchmark plumbing that needs no timing: optional peers skip cleanly, targets are read right."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_masks, bench_scorecam, common, report
from ri_jax.models.vgg import ModelConfig


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is installed: the peer would run")
def test_scorecam_benchmark_skips_without_torch(capsys):
    assert bench_scorecam.main([]) is None
    assert "SKIP bench_scorecam: torch is not installed" in capsys.readouterr().out


def _record(benchmark, **fields):
    return {"benchmark": benchmark, "date": "today", "load_before": [0.5, 0.5, 0.5],
            "machine": {"backend": "cpu", "cpus_usable": 2}, **fields}


def test_targets_read_the_end_to_end_ratio_and_the_scorecam_rows():
    end_to_end = _record("end_to_end", images=10, images_per_s={"second_run": 5.0},
                         total_over_features={"wall": 1.5, "cpu": 1.9},
                         rows=[{"stage": "features", "first_run_s": 1.0, "second_run_s": 1.0,
                                "second_run_share": 0.7}])
    rows = [{"method": "ri-jax Score-CAM (x)", "peer_best_over_this_wall": 1.5,
             "peer_best_over_this_cpu": 3.0},
            {"method": "peer: pytorch-grad-cam ScoreCAM", "peer_best_over_this_wall": 1.0,
             "peer_best_over_this_cpu": 1.0}]
    text = report.targets([end_to_end, _record("scorecam", rows=rows)])
    lines = text.splitlines()
    assert any("end to end ≤ 2×" in line and "1.50× wall, 1.90× CPU" in line
               and "| yes |" in line for line in lines)
    assert any("Score-CAM ≥ 2×" in line and "ri-jax Score-CAM (x)" in line and "| no |" in line
               for line in lines)
    assert not any("peer: pytorch-grad-cam" in line for line in lines)
    assert "rerun idle" not in text


def test_targets_go_by_wall_time_on_an_idle_machine_and_flag_an_overloaded_one():
    comparison = {"Q": 50, "R": 5000, "batch": 1000, "rows": [
        {"solver": "ours", "speedup_wall": 150.0, "speedup_cpu": 40.0}, {"solver": "peer"}]}
    idle = report.targets([_record("solver", comparison=comparison)]).splitlines()[-1]
    assert "| yes |" in idle and "150.0× wall, 40.0× CPU" in idle and "rerun idle" not in idle
    busy = _record("solver", comparison=comparison, load_before=[9.0, 8.0, 7.0])
    line = report.targets([busy]).splitlines()[-1]
    assert "| no |" in line and "load 9 on 2 cores" in line


def test_records_name_the_commit_they_were_made_at():
    rec = common.record("solver", {})
    assert rec["code"] == common.code_version()
    rec["code"] = "0123456789+changes"
    assert "- code: commit 0123456789+changes\n" in report.provenance(rec)


def test_a_report_of_another_folder_is_written_into_it(tmp_path):
    shutil.copy(common.DEFAULT_OUT / "features.json", tmp_path)
    repository_report = Path(report.__file__).parent / "RESULTS.md"
    before = repository_report.read_bytes()
    report.main([str(tmp_path)])
    assert "## Feature extraction throughput" in (tmp_path / "RESULTS.md").read_text()
    assert repository_report.read_bytes() == before


def test_mask_benchmark_asserts_identical_masks_and_writes_its_rows(tmp_path):
    bench_masks.main(["--images", "8", "--batch-size", "8", "--repeat", "1",
                      "--out", str(tmp_path)])
    rec = json.loads((tmp_path / "masks.json").read_text())
    assert rec["identical_masks"] and rec["config"]["images"] == 8
    assert [r["method"].split(" (")[0] for r in rec["rows"]] == 2 * [
        "ri_jax.metrics.kept_pixels", "peer: benchmarks.peers.sort_keep_mask",
        "forward pass of the masked images"]
    assert all(r["wall_s"] > 0 and np.isfinite(r["peer_over_this"]) for r in rec["rows"])


def test_forward_flops_counts_every_conv_and_dense_layer():
    # vgg11 at width 1/16 and 32 px, by hand: convs 3→4 @32², 4→8 @16², 8→16, 16→16 @8²,
    # 16→32, 32→32 @4², 32→32, 32→32 @2² (2·9·c_in·c_out·side² each), then dense
    # 32→256→256→2 (2·in·out each).
    convs = 18 * (3 * 4 * 32**2 + 4 * 8 * 16**2 + (8 * 16 + 16 * 16) * 8**2
                  + (16 * 32 + 32 * 32) * 4**2 + 2 * 32 * 32 * 2**2)
    dense = 2 * (32 * 256 + 256 * 256 + 256 * 2)
    config = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
    assert bench_scorecam.forward_flops(config) == convs + dense == 1_549_312


def test_roofline_relates_the_forward_rows_and_the_peer_to_the_matmul_peak():
    forward = [{"batch": 16, "ri_jax_ms_per_image": 2.0, "torch_ms_per_image": 1.0}]
    r = bench_scorecam.roofline(100_000_000, {"n": 8, "xla": 200.0, "torch": 100.0}, forward,
                                peer_wall=6.4, masked_forwards=4000, target=2.0)
    assert forward[0]["ri_jax_gflops"] == pytest.approx(50.0)
    assert forward[0]["ri_jax_of_matmul_peak"] == pytest.approx(0.25)
    assert forward[0]["torch_of_matmul_peak"] == pytest.approx(1.0)
    assert r["peer_ms_per_masked_forward"] == pytest.approx(1.6)
    assert r["needed_ms_per_masked_forward"] == pytest.approx(0.8)
    assert r["needed_gflops"] == pytest.approx(125.0)
    assert r["needed_of_xla_matmul_peak"] == pytest.approx(0.625)
    line = report.roofline_line(r)
    assert "1.60 ms" in line and "0.80 ms" in line and "125 GFLOP/s, 62 % of" in line
