"""``load_model(spec)``: the ``Model`` of a command-line spec, from any of its providers."""

from __future__ import annotations

import functools
from pathlib import Path

import jax

from ri_jax.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from ri_jax.model import Model
from ri_jax.models.vgg import vgg_model

KERAS_PREFIX = "keras:"
MODEL_SPEC_HELP = ("'default' (the embedded VGG-19), a checkpoint folder from experiments/train.py, "
                   "or keras:DIR (a folder with a Keras file and a model.json card)")


def load_model(spec: str | Path | Model = "default") -> Model:
    """The model of a command-line spec.

    Args:
      spec: ``"default"`` (the embedded VGG-19), a checkpoint folder from
        ``experiments/train.py``, ``"keras:DIR"`` (a folder with a Keras file and a
        ``model.json`` card; see ``ri_jax.models.keras_model``), or a ``Model`` (returned as is).

    Returns:
      The ``Model``; the same spec returns the same record (so compiled programs are shared).
    """
    if isinstance(spec, Model):
        return spec
    return _load_model(str(spec))


@functools.lru_cache(maxsize=8)
def _load_model(spec: str) -> Model:
    if spec.startswith(KERAS_PREFIX):
        # Keras is an optional extra: imported only for a Keras spec.
        from ri_jax.models.keras_model import load_keras_folder
        return load_keras_folder(spec[len(KERAS_PREFIX):])
    params, config, _ = load_checkpoint(None if spec == "default" else spec)
    return vgg_model(params, config, source=spec)


def describe_model(spec: str) -> dict:
    """What a results file records about the model of ``spec``.

    Returns:
      dict with ``spec``, ``source``, ``image_size``, ``channels``, ``num_classes``,
      ``feature_shape`` (ψ's [h, w, c]), ``summary`` (one phrase for reports) and, for the
      project's VGG checkpoints, ``arch``, ``width``, ``test_accuracy`` and ``val_accuracy``.
    """
    model = load_model(spec)
    psi = jax.eval_shape(model.features, jax.ShapeDtypeStruct(
        (1, model.image_size, model.image_size, model.channels), "float32"))
    size = f"{model.image_size} × {model.image_size} {'grey' if model.channels == 1 else 'RGB'}"
    info = {"spec": str(spec), "source": model.source, "image_size": model.image_size,
            "channels": model.channels, "num_classes": model.num_classes,
            "feature_shape": list(psi.shape[1:])}
    if str(spec).startswith(KERAS_PREFIX):
        return {**info, "summary": f"the Keras model {model.source} at {size} pixels"}
    _, config, meta = load_checkpoint(DEFAULT_CHECKPOINT if spec == "default" else spec)
    arch = config.arch.upper().replace("VGG", "VGG-")
    return {**info, "arch": config.arch, "width": config.width,
            "test_accuracy": meta.get("test_accuracy"), "val_accuracy": meta.get("val_accuracy"),
            "summary": f"a {arch} of width {config.width:g} at {size} pixels"}
