"""Training a classifier to interpret: optax loop, augmentation, early stopping, resume (§6.2).

``train_and_evaluate(model_config, train_config, data, workdir)`` follows the flax
examples: pure ``train_step``/``eval_step`` functions over a ``TrainState``
NamedTuple, the configs are small frozen dataclasses saved with the checkpoint.
The best epoch on a validation split carved from train (stratified, seeded) is
what ends up in ``workdir``; ``train_state.msgpack`` lets a run resume.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ri_jax.checkpoint import (CONFIG_FILE, atomic_write_bytes, read_config, restore_checked,
                               save_checkpoint, write_json)
from ri_jax.data import DatasetError, ImageSet, load_dataset, stratified_split
from ri_jax.errors import CheckpointError, TrainingDivergedError
from ri_jax.models.vgg import ModelConfig, ModelFns, make_vgg

STATE_FILE = "train_state.msgpack"
HISTORY_FILE = "history.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (everything overridable from experiments/train.py)."""

    epochs: int = 70
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9), the usual VGG fine-tuning choice
    warmup_epochs: int = 2
    val_fraction: float = 0.1
    patience: int = 15  # epochs without validation improvement before stopping
    augment: bool = True
    seed: int = 0
    eval_batch_size: int = 250

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer: must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def augment_image(raw: jax.Array, *, key: jax.Array, pad: int = 8) -> jax.Array:
    """Random reflect-padded crop, horizontal flip and brightness/contrast jitter of one raw image."""
    k_crop, k_flip, k_bright, k_contrast = jax.random.split(key, 4)
    s = raw.shape[0]
    padded = jnp.pad(raw, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    img = jax.lax.dynamic_slice(padded, (dy, dx, 0), (s, s, 3))
    img = jnp.where(jax.random.bernoulli(k_flip), img[:, ::-1], img)
    img = img + jax.random.uniform(k_bright, (), minval=-0.1, maxval=0.1)
    mean = jnp.mean(img)
    img = (img - mean) * jax.random.uniform(k_contrast, (), minval=0.8, maxval=1.2) + mean
    return jnp.clip(img, 0.0, 1.0)


def _sgd(learning_rate, weight_decay):
    """SGD with Nesterov momentum 0.9 and decoupled weight decay, the usual VGG fine-tuning."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=0.9, nesterov=True))


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    """The optimiser, its learning rate a hyperparameter in its state (``inject_hyperparams``).

    ``train_step`` sets that learning rate from its argument, so the schedule is data:
    one compiled step serves every schedule, and a run resumed with more epochs (a
    longer schedule) does not recompile it.
    """
    factory = _sgd if train_config.optimizer == "sgd" else optax.adamw
    return optax.inject_hyperparams(factory)(learning_rate=train_config.lr,
                                             weight_decay=train_config.weight_decay)


def learning_rates(train_config: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """float32[epochs · steps_per_epoch]: linear warm-up from 0 to ``lr``, then cosine decay to 0.

    The values of ``optax.warmup_cosine_decay_schedule(0, lr, warmup, total)``, computed
    on the host (in float64), so no schedule is compiled.

    Args:
      train_config: ``lr``, ``epochs`` and ``warmup_epochs`` are read.
      steps_per_epoch: optimiser steps per epoch.

    Returns:
      The learning rate of every step.
    """
    total = train_config.epochs * steps_per_epoch
    warmup = min(train_config.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    step = np.arange(total, dtype=np.float64)
    decay = max(total, 1) - warmup
    cosine = 0.5 * (1 + np.cos(np.pi * np.minimum(step - warmup, decay) / decay))
    rising = step / warmup if warmup else np.ones_like(step)
    return (train_config.lr * np.where(step < warmup, rising, cosine)).astype(np.float32)


def make_steps(fns: ModelFns, tx: optax.GradientTransformation, augment: bool
               ) -> tuple[Callable, Callable]:
    """Returns jitted ``train_step(state, images_uint8, labels, key, learning_rate) ->
    (state, loss)`` and ``eval_step(params, raw) -> logits``.

    ``tx`` is ``make_optimizer``'s (its state holds the learning rate that
    ``train_step`` sets); ``learning_rate`` is a float32 scalar, e.g. from ``learning_rates``.
    """

    def loss_fn(params, images_uint8, labels, key):
        k_aug, k_drop = jax.random.split(key)
        raw = images_uint8.astype(jnp.float32) / 255.0
        if augment:
            raw = jax.vmap(lambda im, k: augment_image(im, key=k))(
                raw, jax.random.split(k_aug, raw.shape[0]))
        logits = fns.apply(params, fns.normalize(raw), train=True, dropout_key=k_drop)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(state: TrainState, raw, labels, key, learning_rate):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, raw, labels, key)
        opt_state = state.opt_state._replace(hyperparams={
            **state.opt_state.hyperparams,
            "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
        updates, opt_state = tx.update(grads, opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    @jax.jit
    def eval_step(params, raw):
        return fns.apply(params, fns.normalize(raw))

    return train_step, eval_step


def predict(eval_step: Callable, params: Any, images: ImageSet | np.ndarray, batch_size: int
            ) -> np.ndarray:
    """Logits float32[N, C] in fixed-size batches (the last one padded, so nothing recompiles)."""
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        raw = images.raw(idx) if isinstance(images, ImageSet) else images[idx]
        pad = batch_size - len(idx)
        if pad:
            raw = np.concatenate([raw, np.zeros((pad,) + raw.shape[1:], raw.dtype)])
        out.append(np.asarray(eval_step(params, raw))[:len(idx)])
    return np.concatenate(out)


def train_and_evaluate(model_config: ModelConfig, train_config: TrainConfig, data: str,
                       workdir: str | Path, *, resume: bool = False, init_params: Any = None,
                       progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Trains on ``data``'s train split, keeps the best validation epoch, reports test accuracy.

    Args:
      model_config: the model to build (its ``class_names`` are filled from the data).
      train_config: optimisation settings.
      data: dataset spec for ``ri_jax.data.load_dataset``.
      workdir: checkpoint folder (config.json, params.msgpack, train_state.msgpack, history.json).
      resume: continue from ``workdir/train_state.msgpack``.
      init_params: starting parameters (e.g. ImageNet weights); random init otherwise.

    Returns:
      Summary dict: best epoch, validation and test accuracy, epochs run, seconds.

    Raises:
      DatasetError: a class has fewer than 2 training images (one must stay for validation).
      CheckpointError: ``resume`` with a state written for another model.
      TrainingDivergedError: an epoch's training loss or validation outputs are not finite.
        Nothing of that epoch is saved: the last good checkpoint and state stay in ``workdir``.
    """
    workdir = Path(workdir)
    train_all = load_dataset(data, "train", image_size=model_config.image_size)
    test_set = load_dataset(data, "test", image_size=model_config.image_size,
                            class_names=train_all.class_names)
    if train_all.num_classes != model_config.num_classes:
        raise ValueError(f"model_config.num_classes: {model_config.num_classes}, but data {data!r} "
                         f"has {train_all.num_classes} classes {list(train_all.class_names)}")
    model_config = dataclasses.replace(model_config, class_names=train_all.class_names)
    counts = np.bincount(train_all.labels, minlength=train_all.num_classes)
    if counts.min() < 2:
        few = {c: int(n) for c, n in zip(train_all.class_names, counts) if n < 2}
        raise DatasetError(f"{data}: split 'train' has too few images in class(es) {few}; "
                           "training needs at least 2 per class (one is held out for validation)")
    if resume:
        _check_resume_model(workdir, model_config)
    train_idx, val_idx = stratified_split(train_all.labels, train_config.val_fraction,
                                          seed=train_config.seed)
    log(f"data {data}: {len(train_idx)} train, {len(val_idx)} validation, {len(test_set)} test, "
        f"classes {list(train_all.class_names)}")
    train_raw = train_all.subset(train_idx)
    x_train = train_raw.read_uint8(np.arange(len(train_raw)))  # uint8: 4× less memory than float
    y_train = train_raw.labels
    val_set = train_all.subset(val_idx).cached()
    test_set = test_set.cached()

    bs = min(train_config.batch_size, len(x_train))
    steps_per_epoch = len(x_train) // bs
    fns = make_vgg(model_config)
    tx = make_optimizer(train_config)
    lrs = learning_rates(train_config, steps_per_epoch)
    train_step, eval_step = make_steps(fns, tx, train_config.augment)

    key = jax.random.key(train_config.seed)
    key, init_key = jax.random.split(key)
    params = init_params if init_params is not None else fns.init(init_key)
    state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))
    meta = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "stale": 0, "seconds": 0.0}
    history: list[dict] = []
    if resume:
        state, meta, history = _load_state(workdir, state, meta, model_config)
        log(f"resuming after epoch {meta['epoch']} (best validation {meta['best_val']:.4f})")

    start_time = time.time() - meta["seconds"]
    epochs = range(meta["epoch"], train_config.epochs)
    bar = tqdm(epochs, desc="train", disable=not progress, initial=meta["epoch"],
               total=train_config.epochs)
    for epoch in bar:
        if meta["stale"] >= train_config.patience:
            log(f"early stop: no validation improvement for {train_config.patience} epochs")
            break
        perm = np.random.default_rng([train_config.seed, epoch]).permutation(len(x_train))
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            step_key = jax.random.fold_in(key, epoch * steps_per_epoch + s)
            state, loss = train_step(state, x_train[idx], y_train[idx], step_key,
                                     lrs[epoch * steps_per_epoch + s])
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        val_logits = predict(eval_step, state.params, val_set, train_config.eval_batch_size)
        # The loss is of the parameters before each update: non-finite outputs on the
        # validation images catch a blow-up in the epoch's last steps too.
        if not (np.isfinite(train_loss) and np.isfinite(val_logits).all()):
            bar.close()
            kept = (f"keeps the checkpoint of epoch {meta['best_epoch']} and the training state "
                    f"after epoch {meta['epoch']}" if meta["epoch"]
                    else "has no checkpoint (no epoch finished)")
            raise TrainingDivergedError(
                f"epoch {epoch + 1}: training loss is {train_loss}, validation outputs are "
                f"{'' if np.isfinite(val_logits).all() else 'not '}finite (diverged; try a lower "
                f"--lr, now {train_config.lr}); {workdir} {kept}")
        val_acc = float(np.mean(np.argmax(val_logits, -1) == val_set.labels))
        test_acc = _accuracy(eval_step, state.params, test_set, train_config.eval_batch_size)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_accuracy": val_acc,
                  "test_accuracy": test_acc}
        history.append(record)
        meta["epoch"] = epoch + 1
        if val_acc > meta["best_val"]:
            meta.update(best_val=val_acc, best_epoch=epoch + 1, stale=0, best_test=test_acc)
            save_checkpoint(workdir, state.params, model_config,
                            extra={"train": dataclasses.asdict(train_config), "data": data,
                                   "epoch": epoch + 1, "val_accuracy": val_acc,
                                   "test_accuracy": test_acc})
        else:
            meta["stale"] += 1
        meta["seconds"] = time.time() - start_time
        _save_state(workdir, state, meta, history)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.3f}", test=f"{test_acc:.3f}")
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f}  val acc {val_acc:.4f}  "
            f"test acc {test_acc:.4f}")
    bar.close()
    summary = {"best_epoch": meta["best_epoch"], "val_accuracy": meta["best_val"],
               "test_accuracy": meta.get("best_test"), "epochs_run": meta["epoch"],
               "seconds": round(time.time() - start_time, 1)}
    write_json(workdir / "summary.json", summary)
    return summary


def _accuracy(eval_step, params, images: ImageSet, batch_size: int) -> float:
    logits = predict(eval_step, params, images, batch_size)
    return float(np.mean(np.argmax(logits, -1) == images.labels))


def _save_state(workdir: Path, state: TrainState, meta: dict, history: list) -> None:
    blob = flax.serialization.to_bytes({"params": state.params, "opt_state": state.opt_state,
                                        "step": state.step})
    # Both atomic, so an interrupted save never corrupts a resume.
    atomic_write_bytes(workdir / STATE_FILE, blob)
    write_json(workdir / HISTORY_FILE, {"meta": meta, "history": history})


def _check_resume_model(workdir: Path, model_config: ModelConfig) -> None:
    """Refuses, before any work, to resume a workdir whose checkpoint is of another model."""
    cfg_file = workdir / CONFIG_FILE
    if not cfg_file.is_file():  # written at the first best epoch; the state check still runs
        return
    _, saved_config = read_config(cfg_file)
    differ = [f"{f.name}: {getattr(saved_config, f.name)!r} there, "
              f"{getattr(model_config, f.name)!r} now"
              for f in dataclasses.fields(ModelConfig)
              if getattr(saved_config, f.name) != getattr(model_config, f.name)]
    if differ:
        raise CheckpointError(f"resume: {cfg_file} describes another model than this run "
                              f"({'; '.join(differ)}); use the same model options or a new --out")


def _load_state(workdir: Path, state: TrainState, meta: dict, model_config: ModelConfig):
    state_file, hist_file = workdir / STATE_FILE, workdir / HISTORY_FILE
    if not state_file.is_file() or not hist_file.is_file():
        raise FileNotFoundError(f"resume: {state_file} or {hist_file} is missing; "
                                "nothing to resume in this workdir")
    template = {"params": state.params, "opt_state": state.opt_state, "step": state.step}
    restored = restore_checked(template, state_file,
                               what=f"the training state of {model_config.arch} width "
                                    f"{model_config.width} with this optimiser")
    try:
        saved = json.loads(hist_file.read_text())
        saved_meta, saved_history = saved["meta"], saved["history"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"resume: {hist_file} is not a valid history "
                              f"({type(e).__name__}: {e})") from None
    return (TrainState(restored["params"], restored["opt_state"], restored["step"]),
            {**meta, **saved_meta}, saved_history)
