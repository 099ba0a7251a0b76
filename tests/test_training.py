import json

import jax
import numpy as np
import pytest
from PIL import Image

from ri_jax.checkpoint import load_checkpoint, save_checkpoint
from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.training import TrainConfig, augment_image, make_optimizer, make_steps, train_and_evaluate


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
    tx = make_optimizer(tc, steps_per_epoch=30)
    train_step, _ = make_steps(fns, tx, augment=False)
    from ri_jax.training import TrainState
    import jax.numpy as jnp
    params = fns.init(jax.random.key(0))
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    x = jax.random.uniform(jax.random.key(1), (16, 32, 32, 3))
    y = jnp.arange(16) % 2
    x = (x.at[y == 1].multiply(0.3) * 255).astype(jnp.uint8)
    losses = []
    for i in range(25):
        state, loss = train_step(state, x, y, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_augment_keeps_range_and_shape():
    x = jax.random.uniform(jax.random.key(0), (32, 32, 3))
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
    hist = json.loads((work / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    longer = TrainConfig(**{**tc.__dict__, "epochs": 3})
    again = train_and_evaluate(tiny_config, longer, str(tiny_folder), work, resume=True,
                               progress=False, log=lambda s: None)
    assert again["epochs_run"] == 3
    hist = json.loads((work / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[:2] == hist[:2]
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
