import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from ri_jax.checkpoint import load_checkpoint, save_checkpoint
from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.training import (TrainConfig, TrainState, augment_image, learning_rates, make_optimizer,
                              make_steps, train_and_evaluate)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6)):
        for label, cls in enumerate(("dark", "bright")):
            for i in range(n):
                base = 60 if label == 0 else 190
                arr = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


def test_a_few_steps_lower_the_loss(tiny_config):
    fns = make_vgg(tiny_config)
    tc = TrainConfig(epochs=1, lr=1e-3, warmup_epochs=0, augment=False)
    tx = make_optimizer(tc)
    lrs = learning_rates(tc, steps_per_epoch=30)
    train_step, _ = make_steps(fns, tx, augment=False)
    params = fns.init(jax.random.key(0))
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    rng = np.random.default_rng(1)
    y = np.arange(16) % 2
    x = (rng.random((16, 32, 32, 3)) * np.where(y == 1, 0.3, 1.0)[:, None, None, None] * 255
         ).astype(np.uint8)
    losses = []
    for i in range(25):
        state, loss = train_step(state, x, y, jax.random.key(i), lrs[i])
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert float(state.opt_state.hyperparams["learning_rate"]) == lrs[24]


@pytest.mark.parametrize("epochs, warmup_epochs, steps_per_epoch",
                         [(3, 0, 5), (70, 2, 28), (1, 2, 7), (2, 1, 1), (1, 0, 1), (5, 5, 3)])
def test_learning_rates_are_optaxs_warmup_cosine_schedule(epochs, warmup_epochs, steps_per_epoch):
    tc = TrainConfig(epochs=epochs, warmup_epochs=warmup_epochs, lr=5e-4)
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs * steps_per_epoch, total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, total)
    expected = np.asarray([schedule(i) for i in range(total)])
    np.testing.assert_allclose(learning_rates(tc, steps_per_epoch), expected, rtol=1e-5, atol=1e-10)


def test_augment_keeps_range_and_shape():
    x = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    a = augment_image(x, key=jax.random.key(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not np.allclose(a, augment_image(x, key=jax.random.key(2)))


def test_checkpoint_round_trip(tmp_path, tiny_model, tiny_config):
    fns, params = tiny_model
    save_checkpoint(tmp_path / "ck", params, tiny_config, extra={"note": "x"})
    loaded, cfg, extra = load_checkpoint(tmp_path / "ck")
    assert cfg == tiny_config and extra["note"] == "x"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    bad = ModelConfig(arch="vgg13", width=1 / 16, image_size=32, num_classes=2)
    cfg_json = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg_json["model"]["arch"] = bad.arch
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ValueError, match="params.msgpack: does not fit"):
        load_checkpoint(tmp_path / "ck")


def test_train_resume_continues(tiny_folder, tmp_path, tiny_config):
    tc = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_epochs=0, patience=5, seed=3)
    work = tmp_path / "run"
    first = train_and_evaluate(tiny_config, tc, str(tiny_folder), work, progress=False, log=lambda s: None)
    assert first["epochs_run"] == 2
    before = json.loads((work / "history.json").read_text())["history"]
    assert [h["epoch"] for h in before] == [1, 2]
    longer = TrainConfig(**{**tc.__dict__, "epochs": 3})
    again = train_and_evaluate(tiny_config, longer, str(tiny_folder), work, resume=True,
                               progress=False, log=lambda s: None)
    assert again["epochs_run"] == 3
    hist = json.loads((work / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[:2] == before
    params, cfg, extra = load_checkpoint(work)
    assert cfg.class_names == ("bright", "dark") and extra["data"] == str(tiny_folder)
    assert 0.0 <= again["test_accuracy"] <= 1.0


def test_resume_without_state_is_a_clear_error(tiny_folder, tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="resume"):
        train_and_evaluate(tiny_config, TrainConfig(epochs=1, batch_size=8), str(tiny_folder),
                           tmp_path / "empty", resume=True, progress=False, log=lambda s: None)


def test_wrong_class_count_is_a_clear_error(tiny_folder, tmp_path):
    cfg = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        train_and_evaluate(cfg, TrainConfig(epochs=1), str(tiny_folder), tmp_path, progress=False)
