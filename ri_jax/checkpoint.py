"""Checkpoint folders: ``config.json`` (model config and extras) + ``params.msgpack``.

A checkpoint always carries the ``ModelConfig`` that built it, so any script can
rebuild the model from the folder alone. Training state for resuming lives in
``train_state.msgpack`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from ri_jax.models.vgg import ModelConfig, make_vgg

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "vgg19_w8_asirra_mini"


def save_checkpoint(path: str | Path, params: Any, model_config: ModelConfig,
                    extra: dict | None = None) -> Path:
    """Writes ``params`` and ``model_config`` (plus JSON-able ``extra``) into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = jax.device_get(params)
    (path / PARAMS_FILE).write_bytes(flax.serialization.to_bytes(params))
    meta = {"model": dataclasses.asdict(model_config), **(extra or {})}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=json_default))
    return path


def load_checkpoint(path: str | Path | None = None) -> tuple[Any, ModelConfig, dict]:
    """Reads a checkpoint folder (default: the embedded model).

    Returns:
      ``(params, model_config, extra)`` where ``extra`` is the rest of config.json.
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if str(path) == "default":
        path = DEFAULT_CHECKPOINT
    cfg_file, params_file = path / CONFIG_FILE, path / PARAMS_FILE
    for f in (cfg_file, params_file):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint: {f} is missing (is {path} a folder written by "
                                    "experiments/train.py?)")
    try:
        meta = json.loads(cfg_file.read_text())
        model_config = ModelConfig.from_dict({k: tuple(v) if isinstance(v, list) else v
                                              for k, v in meta.pop("model").items()})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint: {cfg_file} is not a valid config ({e})") from None
    # Only shapes are needed for the template; eval_shape avoids running init.
    template = jax.eval_shape(make_vgg(model_config).init, jax.random.key(0))
    try:
        params = flax.serialization.from_bytes(template, params_file.read_bytes())
    except Exception as e:  # msgpack/flax raise several types for a bad file
        raise ValueError(f"checkpoint: {params_file} does not match the model in {cfg_file} "
                         f"({type(e).__name__}: {e})") from None
    return params, model_config, meta


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays, dataclasses and paths."""
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
