"""Bad input and faults (issue #13): each case gets a clear error naming the file or option,
or a documented recovery. Tiny data in tmp_path; scripts are run in-process through
``ri_jax.cli.run_script`` (as their ``__main__`` does), failing before any computation."""

import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ri_jax.checkpoint import load_checkpoint, restore_checked, save_checkpoint, strict_json
from ri_jax.cli import check_output_dir, run_script
from ri_jax.data import DatasetError, decode_image, load_dataset, stratified_split
from ri_jax.errors import CheckpointError, RIInputError, TrainingDivergedError
from ri_jax.featurize import FeatureCacheWarning, compute_features
from ri_jax.solver import _solve_greedy
from ri_jax.training import HISTORY_FILE, TrainConfig, train_and_evaluate

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))

import interpret  # noqa: E402
import train  # noqa: E402
from conftest import as_model

QUIET = dict(progress=False, log=lambda s: None)


def _image(path: Path, seed: int, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _folder(root: Path, per_class: int = 3, splits=("train", "test")) -> Path:
    for split in splits:
        for c, cls in enumerate(("a", "b")):
            for i in range(per_class):
                _image(root / split / cls / f"{i}.png", seed=100 * c + i)
    return root


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tiny_config):
    fns, params = tiny_model
    return save_checkpoint(tmp_path / "ckpt", params, tiny_config)


def _run(main, argv, capsys):
    """Exit status and stderr of a script run the way its ``__main__`` runs it."""
    with pytest.raises(SystemExit) as exc:
        run_script(main, argv, prog="script.py")
    return exc.value.code, capsys.readouterr().err


# 1, 2 ------------------------------------------------------------ feature cache


def test_1_cache_is_keyed_on_image_contents(tmp_path, tiny_model):
    fns, params = tiny_model
    data = _folder(tmp_path / "d", splits=("train",))
    images = load_dataset(str(data), "train", image_size=32)
    first = compute_features(as_model(fns, params), images, cache_dir=tmp_path / "c", progress=False)
    _image(data / "train" / "a" / "0.png", seed=999)  # same name, other pixels
    images = load_dataset(str(data), "train", image_size=32)
    with pytest.warns(FeatureCacheWarning, match="images changed"):
        second = compute_features(as_model(fns, params), images, cache_dir=tmp_path / "c", progress=False)
    fresh = compute_features(as_model(fns, params), images, progress=False)
    np.testing.assert_array_equal(second.psi, fresh.psi)
    assert not np.array_equal(second.psi[0], first.psi[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now current: served from the cache, no warning
        np.testing.assert_array_equal(
            compute_features(as_model(fns, params), images, cache_dir=tmp_path / "c", progress=False).psi,
            fresh.psi)


def test_2_truncated_cache_is_named_and_recomputed(tmp_path, tiny_model):
    fns, params = tiny_model
    images = load_dataset(str(_folder(tmp_path / "d", splits=("train",))), "train", image_size=32)
    first = compute_features(as_model(fns, params), images, cache_dir=tmp_path / "c", progress=False)
    (cache_file,) = (tmp_path / "c").glob("features-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(FeatureCacheWarning, match=cache_file.name + ".*unreadable"):
        again = compute_features(as_model(fns, params), images, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(again.psi, first.psi)


# 3, 4, 5 --------------------------------------------------------- image decoding


def test_3_decompression_bomb_names_the_file_and_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _image(path, 0, size=(40, 30))  # 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"big.png: image too large.*limit 1000.*RI_JAX_MAX_IMAGE"):
        decode_image(path, 16)
    monkeypatch.setenv("RI_JAX_MAX_IMAGE_PIXELS", "5000")  # the documented way to raise it
    assert decode_image(path, 16).shape == (16, 16, 3)


def test_4_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = decode_image(tmp_path / "deep.png", 32)
    np.testing.assert_allclose(out[..., 0], ramp / 257.0, atol=1)
    assert (out[..., 0] == out[..., 2]).all() and out.mean() < 200


def test_5_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg"))
    assert upright.size == (20, 40)
    out = decode_image(tmp_path / "rotated.jpg", 20).astype(int)
    # Upright the red half is on top: the centre crop is red above, blue below.
    assert out[:8, :, 0].mean() > 200 and out[:8, :, 2].mean() < 60
    assert out[-8:, :, 2].mean() > 200 and out[-8:, :, 0].mean() < 60


# 6 --------------------------------------------------------------------- TFDS


def test_6_unprepared_tfds_set_never_downloads(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def no_download(*args, **kwargs):
        raise AssertionError("reading a dataset must not download or build it")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DatasetError, match=r"tfds:mnist: not prepared in .*tfds build mnist "
                                           r"--file_format=array_record --data_dir"):
        load_dataset("tfds:mnist", "train", image_size=32, data_dir=str(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# 7, 8 -------------------------------------------------------------- checkpoints


def test_7_params_that_do_not_fit_the_config_name_the_file(checkpoint):
    cfg_file = checkpoint / "config.json"
    meta = json.loads(cfg_file.read_text())
    meta["model"]["width"] = 1 / 8  # the params are width 1/16
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"params.msgpack: does not fit the model described "
                                              r"in .*config.json: params/conv_0/.*expected shape"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("field,value,reason", [
    ("std", [0, 0, 0], "std: every channel must be > 0"),
    ("arch", "vgg99", "arch: unknown VGG configuration"),
    ("width", "wide", "width: must be a positive number"),
    ("mean", [0.5], "mean: expected 3 finite numbers"),
    ("dropout", 1.5, r"dropout: must be in \[0, 1\)"),
    ("image_size", 30, "image_size: must be a positive multiple of 32"),
    ("class_names", "ab", "class_names: expected a list of strings"),
    ("colour", "red", "colour: unknown key"),
])
def test_8_every_config_field_is_validated_naming_file_and_field(checkpoint, field, value, reason):
    cfg_file = checkpoint / "config.json"
    meta = json.loads(cfg_file.read_text())
    meta["model"][field] = value
    cfg_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"config.json: model.{reason}"):
        load_checkpoint(checkpoint)


def test_8_missing_or_null_model_and_bad_json_name_the_file(checkpoint):
    cfg_file = checkpoint / "config.json"
    cfg_file.write_text(json.dumps({"model": None}))
    with pytest.raises(CheckpointError, match="config.json: model: expected an object"):
        load_checkpoint(checkpoint)
    cfg_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(checkpoint)


# 9, 10, 11 ----------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """One epoch of the tiny VGG on a tiny folder, kept in a workdir."""
    root = tmp_path_factory.mktemp("trained")
    data = _folder(root / "data", per_class=4)
    tc = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_epochs=0, val_fraction=0.25,
                     augment=False, eval_batch_size=8)
    train_and_evaluate(tiny_config, tc, str(data), root / "run", **QUIET)
    return data, root / "run", tc


def test_9_resume_with_another_architecture_names_the_file_and_the_difference(
        trained, tiny_config):
    import dataclasses
    data, work, tc = trained
    other = dataclasses.replace(tiny_config, arch="vgg13")
    with pytest.raises(CheckpointError, match=r"config.json describes another model.*arch: "
                                              r"'vgg11' there, 'vgg13' now"):
        train_and_evaluate(other, tc, str(data), work, resume=True, **QUIET)
    # Without a config.json to compare, the state file itself is checked and named.
    with pytest.raises(CheckpointError, match=r"train_state.msgpack: does not fit .*missing"):
        restore_checked({"params": {"params": {"conv_99": np.zeros(1)}}}, work / "train_state.msgpack",
                        what="another model")


def test_10_one_image_per_class_is_refused_before_training(tmp_path, tiny_config):
    data = _folder(tmp_path / "d", per_class=1)
    with pytest.raises(DatasetError, match=r"too few images in class\(es\) \{'a': 1, 'b': 1\}.*"
                                           "at least 2 per class"):
        train_and_evaluate(tiny_config, TrainConfig(epochs=1), str(data), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()
    with pytest.raises(RIInputError, match="class 1 has 1 member"):
        stratified_split(np.array([0, 0, 1]), 0.5, seed=0)
    rest, held = stratified_split(np.array([0, 0, 1, 1]), 0.9, seed=0)  # one always stays
    assert len(rest) == 2 and len(held) == 2


def test_11_divergence_stops_keeps_the_last_good_checkpoint_and_writes_strict_json(trained):
    data, work, tc = trained
    before = {f: (work / f).read_bytes() for f in ("params.msgpack", "train_state.msgpack",
                                                    HISTORY_FILE)}
    diverging = TrainConfig(**{**tc.__dict__, "epochs": 2, "lr": 1e30})
    with pytest.raises(TrainingDivergedError, match=r"epoch 2: training loss is .*(nan|inf|not finite).*"
                                                     "keeps the checkpoint of epoch 1"):
        train_and_evaluate(load_checkpoint(work)[1], diverging, str(data), work, resume=True,
                           **QUIET)
    assert {f: (work / f).read_bytes() for f in before} == before
    json.loads((work / HISTORY_FILE).read_text(), parse_constant=pytest.fail)  # no NaN literal
    assert not list(work.glob("*.tmp")) and not list(work.glob(".*.tmp"))
    assert json.loads(strict_json({"loss": float("nan"), "x": [np.float32("inf"), 1.5]})) == {
        "loss": None, "x": [None, 1.5]}


# 12, 13, 14 ---------------------------------------------------- script arguments


def test_12_train_out_pointing_to_a_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _run(train.main, ["--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "--out" in err and "not a folder" in err and "Traceback" not in err


def test_13_output_paths_are_checked_before_any_computation(tmp_path, capsys, checkpoint):
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    base = ["--checkpoint", str(checkpoint), "--data", str(_folder(tmp_path / "d"))]
    for argv, reason in [
            (["--out", str(tmp_path / "file" / "sub")], "file is a file"),
            (["--out", str(tmp_path / "dangling")], "symbolic link to the missing"),
            (["--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "file")],
             "--cache-dir.*exists and is not a folder")]:
        code, err = _run(interpret.main, base + argv, capsys)
        assert code == 2 and "error:" in err and "Traceback" not in err
        assert re.search(reason, err), err
    assert not (tmp_path / "o").exists()  # refused while parsing: nothing was written
    with pytest.raises(RIInputError, match="--out: .*cannot be created"):
        check_output_dir(tmp_path / "file" / "a" / "b", "--out")


@pytest.mark.parametrize("option,value", [
    ("--batch-size", "0"), ("--refs-per-class", "-1"), ("--seed", "-1"), ("--batch-size", "x")])
def test_14_numbers_are_validated_while_parsing_naming_the_option(tmp_path, capsys, option, value):
    code, err = _run(interpret.main, ["--out", str(tmp_path / "o"), option, value], capsys)
    assert code == 2 and f"argument {option}" in err and value in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option,value", [
    ("--epochs", "0"), ("--batch-size", "0"), ("--lr", "nan"), ("--lr", "-1"),
    ("--image-size", "33"), ("--val-fraction", "1"), ("--dropout", "1"), ("--width", "0")])
def test_14_train_numbers_are_validated_naming_the_option(tmp_path, capsys, option, value):
    code, err = _run(train.main, ["--out", str(tmp_path / "o"), option, value], capsys)
    assert code == 2 and option in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# 15 -------------------------------------------------------------------- solver


def test_15_solver_with_zero_references_is_a_clear_error():
    with pytest.raises(ValueError, match=r"match: need at least one reference \(N >= 1\)"):
        _solve_greedy(np.zeros((3, 0), bool), np.zeros((0,), bool))


# 16 ------------------------------------------------------------- error layer


def test_16_expected_errors_print_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def bad_data(argv):
        return load_dataset(str(tmp_path / "missing"), "train")

    code, err = _run(bad_data, [], capsys)
    assert code == 2 and err == f"script.py: error: {tmp_path / 'missing'}: data folder does not exist\n"
    code, err = _run(lambda argv: sys.exit("--x: refused"), [], capsys)
    assert (code, err) == (2, "script.py: error: --x: refused\n")
    code, err = _run(lambda argv: open(tmp_path / "nope"), [], capsys)
    assert code == 2 and "nope: No such file or directory" in err

    def diverged(argv):
        raise TrainingDivergedError("epoch 3: training loss is nan")

    assert _run(diverged, [], capsys)[0] == 2
    # --debug (removed from argv) or RI_JAX_DEBUG=1 show the original exception.
    seen = []
    with pytest.raises(DatasetError):
        run_script(lambda argv: seen.append(argv) or bad_data(argv), ["--debug", "--a"])
    assert seen == [["--a"]]
    monkeypatch.setenv("RI_JAX_DEBUG", "1")
    with pytest.raises(DatasetError):
        run_script(bad_data, [])


def test_16_bugs_keep_their_traceback():
    def numpy_error(argv):
        return np.zeros(2).reshape(3)  # ValueError raised inside numpy, not by our validation

    with pytest.raises(ValueError, match="reshape"):
        run_script(numpy_error, [])
    with pytest.raises(KeyError):
        run_script(lambda argv: {}["k"], [])


def test_16_scripts_use_the_error_layer(tmp_path):
    """A real script process: one line on stderr, status 2, no traceback."""
    import subprocess
    proc = subprocess.run(
        [sys.executable, str(Path(interpret.__file__)), "--out", str(tmp_path / "o"),
         "--checkpoint", str(tmp_path / "no_such_checkpoint")],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 2, proc.stderr
    assert "interpret.py: error: checkpoint:" in proc.stderr and "Traceback" not in proc.stderr
