"""``load_model(spec)``: the ``Model`` of a command-line spec, from any of its providers."""

from __future__ import annotations

import functools
from pathlib import Path

from ri_jax.checkpoint import load_checkpoint
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
