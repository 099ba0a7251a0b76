"""Keras 3 models as ``ri_jax.Model``: the two real models in ../shared against Keras's own
forward pass and their recorded accuracy, the card's checks, and the head's checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

from ri_jax.data import load_for_model  # noqa: E402
from ri_jax.errors import RIInputError  # noqa: E402
from ri_jax.models.keras_model import LinearHeadWarning, from_keras, load_keras_folder  # noqa: E402
from ri_jax.models.loading import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "models" / "cifar10-cnn"
FER = SHARED / "models" / "fer-emotion"
needs_shared = pytest.mark.skipif(not (CIFAR / "model.json").is_file() or not (FER / "model.json").is_file(),
                                  reason="../shared/models is not beside this checkout")


@pytest.fixture(scope="module")
def cifar():
    return load_model(f"keras:{CIFAR}")


@needs_shared
def test_cifar_cnn_logits_equal_keras_and_its_accuracy_is_reproduced(cifar):
    assert (cifar.image_size, cifar.channels, cifar.num_classes) == (32, 3, 10)
    test = load_for_model(str(SHARED / "data" / "cifar10-mini"), "test-exact", image_size=32,
                          class_names=cifar.class_names)
    raw = test.raw(np.arange(len(test)))
    logits = np.concatenate([np.asarray(cifar.logits(raw[i:i + 256]))
                             for i in range(0, len(raw), 256)])
    accuracy = float(np.mean(logits.argmax(-1) == test.labels))
    assert len(test) == 932 and abs(accuracy - 0.826) <= 0.005
    whole = keras.models.load_model(CIFAR / "cnn_model.h5", compile=False)
    expected = whole.predict(np.asarray(cifar.normalize(raw[:128])), verbose=0)
    assert np.max(np.abs(logits[:128] - expected)) <= 1e-4 * np.max(np.abs(expected))
    psi = np.asarray(cifar.features(cifar.normalize(raw[:2])))
    assert psi.shape == (2, 5, 5, 128)  # cut at max_pooling2d_1, as the card says


@needs_shared
def test_fer_grey_model_logits_equal_keras():
    fer = load_model(f"keras:{FER}")
    assert (fer.image_size, fer.channels, fer.num_classes) == (64, 1, 7)
    with pytest.warns(UserWarning, match="treated as unknown"):
        faces = load_for_model(str(SHARED / "data" / "gender-faces-mini"), "test",
                               image_size=64, class_names=fer.class_names)
    assert np.all(faces.labels == -1)
    raw = faces.raw(np.arange(128))
    x = np.asarray(fer.normalize(raw))
    assert x.shape == (128, 64, 64, 1) and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    whole = keras.models.load_model(FER / "emotion_model.hdf5", compile=False)
    logits_model = keras.Model(whole.inputs, whole.get_layer("global_average_pooling2d_1").output)
    expected = logits_model.predict(x, verbose=0)
    got = np.asarray(fer.logits(raw))
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))


@needs_shared
def test_fer_cut_where_the_head_is_linear_warns():
    whole = keras.models.load_model(FER / "emotion_model.hdf5", compile=False)
    with pytest.warns(LinearHeadWarning, match="add_4"):
        from_keras(whole, feature_layer="add_4", logits_layer="global_average_pooling2d_1",
                   class_names=[str(i) for i in range(7)])


def _small_model(activation: str = "relu") -> "keras.Model":
    x = keras.Input((8, 8, 3))
    t = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    t = keras.layers.Flatten(name="flat")(t)
    t = keras.layers.Dense(5, activation=activation, name="hidden")(t)
    t = keras.layers.Dense(3, name="logits")(t)
    return keras.Model(x, keras.layers.Softmax(name="probs")(t))


def test_a_head_that_is_not_piecewise_linear_is_refused_naming_the_layer():
    with pytest.raises(RIInputError, match="'hidden' applies tanh"):
        from_keras(_small_model("tanh"), feature_layer="conv", logits_layer="logits",
                   class_names=["a", "b", "c"])
    with pytest.raises(RIInputError, match="probs"):  # the softmax itself, without logits_layer
        from_keras(_small_model(), feature_layer="conv", class_names=["a", "b", "c"])
    model = from_keras(_small_model(), feature_layer="conv", logits_layer="logits",
                       class_names=["a", "b", "c"])
    raw = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    assert np.asarray(model.logits(raw)).shape == (4, 3)


def _folder(tmp_path: Path, card: dict, keras_file: Path | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    if keras_file is None:
        keras_file = folder / "small.keras"
        if not keras_file.exists():
            seq = keras.Sequential([keras.Input((8, 8, 3)),
                                    keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                                    keras.layers.MaxPooling2D(name="pool"),
                                    keras.layers.Flatten(name="flat"),
                                    keras.layers.Dense(6, activation="relu", name="hidden"),
                                    keras.layers.Dense(3, name="logits")])
            seq.save(keras_file)
    (folder / "model.json").write_text(json.dumps(card))
    return folder


GOOD = {"format": "keras", "file": "small.keras", "class_names": ["a", "b", "c"],
        "image_size": 8, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "feature_layer": "pool", "logits_layer": "logits"}


def test_a_sequential_model_folder_splits_and_matches_keras(tmp_path):
    model = load_keras_folder(_folder(tmp_path, GOOD))
    raw = np.random.default_rng(1).random((5, 8, 8, 3)).astype(np.float32)
    whole = keras.models.load_model(tmp_path / "model" / "small.keras")
    expected = whole.predict((raw - 0.5) / 0.25, verbose=0)
    np.testing.assert_allclose(np.asarray(model.logits(raw)), expected, rtol=1e-5, atol=1e-5)
    assert model.fingerprint and "small.keras" in model.source


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, "field 'extra': unknown key"),
    ({"feature_layer": None}, "field 'feature_layer'"),
    ({"feature_layer": "nope"}, "field 'feature_layer': no layer named 'nope'"),
    ({"logits_layer": "nope"}, "field 'logits_layer': no layer named 'nope'"),
    ({"channels": 1, "mean": [0.5], "std": [0.25]}, "field 'channels': 1 does not match"),
    ({"image_size": 16}, "field 'image_size': 16 does not match"),
    ({"class_names": ["a", "b"]}, "field 'class_names': 2 names"),
    ({"mean": [0.5]}, "field 'mean': expected 3"),
    ({"std": [0.25, 0.0, 0.25]}, "field 'std': every value must be > 0"),
    ({"file": "missing.keras"}, "field 'file'"),
])
def test_bad_cards_name_the_card_and_the_field(tmp_path, change, message):
    card = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    folder = _folder(tmp_path, card)
    with pytest.raises(RIInputError, match=message) as err:
        load_keras_folder(folder)
    assert "model" in str(err.value)


def test_a_keras_file_that_does_not_load_is_named(tmp_path):
    folder = _folder(tmp_path, GOOD)
    (folder / "small.keras").write_bytes(b"not a keras file")
    with pytest.raises(RIInputError, match="small.keras: cannot load the Keras model"):
        load_keras_folder(folder)


def test_scripts_refuse_a_bad_model_before_writing_to_out(tmp_path):
    folder = _folder(tmp_path, {**GOOD, "class_names": ["a", "b"]})
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "interpret.py"), "--model",
                          f"keras:{folder}", "--out", str(out)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "model.json: field 'class_names'" in run.stderr
    assert not out.exists()


@needs_shared
@pytest.mark.slow
def test_interpret_script_explains_the_real_cifar_model(tmp_path):
    shutil.copytree(SHARED / "data" / "cifar10-mini" / "test-exact" / "cat", tmp_path / "cats",
                    ignore=lambda d, names: sorted(names)[2:])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "interpret.py"), "--model",
                          f"keras:{CIFAR}", "--data", str(SHARED / "data" / "cifar10-mini"),
                          "--refs-per-class", "40", "--images", str(tmp_path / "cats"),
                          "--out", str(out), "--html", "--no-progress"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["inputs"]) == 2 and (out / "index.html").is_file()
    assert all((out / r["figure"]).is_file() for r in summary["inputs"])


def test_a_grey_model_runs_every_cam_method_and_the_mean_fill():
    from ri_jax.metrics import make_fill
    from ri_jax.protocols import methods

    x = keras.Input((8, 8, 1))
    t = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    t = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(t))
    model = from_keras(keras.Model(x, t), feature_layer="conv", class_names=["a", "b", "c"],
                       mean=[0.5], std=[0.25])
    raw = np.random.default_rng(2).random((3, 8, 8, 3)).astype(np.float32)
    psi = np.asarray(model.features(model.normalize(raw)))
    classes = np.asarray(model.head(psi)).argmax(-1)
    for method in methods.method_names("cam"):
        alphas = methods.cam_weights(method, model, raw, psi, classes)
        assert alphas.shape == (3, 4) and np.all(np.isfinite(alphas))
    grey = make_fill("mean", model.normalize, 8).colour  # the raw grey that normalises to 0
    np.testing.assert_allclose(np.asarray(grey), [0.5, 0.5, 0.5], atol=1e-6)
