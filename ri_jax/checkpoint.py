"""Checkpoint folders: ``config.json`` (model config and extras) + ``params.msgpack``.

A checkpoint always carries the ``ModelConfig`` that built it, so any script can
rebuild the model from the folder alone. Training state for resuming lives in
``train_state.msgpack`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from ri_jax.errors import CheckpointError
from ri_jax.files import atomic_write_bytes  # re-exported: the one atomic writer
from ri_jax.models.vgg import ModelConfig, make_vgg

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "vgg19_w8_asirra_mini"


def save_checkpoint(path: str | Path, params: Any, model_config: ModelConfig,
                    extra: dict | None = None) -> Path:
    """Writes ``params`` and ``model_config`` (plus JSON-able ``extra``) into folder ``path``.

    Each file is replaced atomically, so an interrupted save leaves the previous one intact.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = jax.device_get(params)
    atomic_write_bytes(path / PARAMS_FILE, flax.serialization.to_bytes(params))
    write_json(path / CONFIG_FILE, {"model": dataclasses.asdict(model_config), **(extra or {})})
    return path


def load_checkpoint(path: str | Path | None = None) -> tuple[Any, ModelConfig, dict]:
    """Reads a checkpoint folder (default: the embedded model).

    Every ``config.json`` field of the model is validated, and every parameter's shape is
    checked against the model that config builds; errors name the file and the field.

    Returns:
      ``(params, model_config, extra)`` where ``extra`` is the rest of config.json.

    Raises:
      FileNotFoundError: a file is missing.
      CheckpointError: a file is malformed, or the params do not fit the config.
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if str(path) == "default":
        path = DEFAULT_CHECKPOINT
    cfg_file, params_file = path / CONFIG_FILE, path / PARAMS_FILE
    for f in (cfg_file, params_file):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint: {f} is missing (is {path} a folder written "
                                    "by experiments/train.py?)")
    meta, model_config = read_config(cfg_file)
    # Only shapes are needed for the template; eval_shape avoids running init.
    template = jax.eval_shape(make_vgg(model_config).init, jax.random.key(0))
    params = restore_checked(template, params_file, what=f"the model described in {cfg_file}")
    return params, model_config, meta


def read_config(cfg_file: Path) -> tuple[dict, ModelConfig]:
    """``(extra, model_config)`` from a checkpoint's config.json, every model field validated."""
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(meta).__name__}")
    model = meta.pop("model", None)
    if not isinstance(model, dict):
        raise CheckpointError(f"{cfg_file}: model: expected an object holding the model config, "
                              f"got {json.dumps(model)[:60]}")
    try:
        model_config = ModelConfig.from_dict(model)
    except (ValueError, TypeError) as e:  # ModelConfig's messages start with the field name
        raise CheckpointError(f"{cfg_file}: model.{e}") from None
    return meta, model_config


def restore_checked(template: Any, file: Path, *, what: str) -> Any:
    """Reads a flax msgpack file into ``template``'s structure, refusing any mismatch.

    Args:
      template: pytree with the expected structure (arrays or ``jax.ShapeDtypeStruct`` leaves).
      file: the msgpack file.
      what: what the file should fit, for the message (e.g. "the model described in ...").

    Raises:
      CheckpointError: naming ``file`` and the first differing entries (missing, unexpected,
        or of another shape).
    """
    try:
        state = flax.serialization.msgpack_restore(Path(file).read_bytes())
    except Exception as e:  # msgpack raises several types for a damaged file
        raise CheckpointError(f"{file}: not a readable parameter file ({type(e).__name__}: {e})"
                              ) from None
    diffs = tree_differences(flax.serialization.to_state_dict(template), state)
    if diffs:
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise CheckpointError(f"{file}: does not fit {what}: {'; '.join(diffs[:4])}{more}")
    return flax.serialization.from_state_dict(template, state)


def tree_differences(expected: Any, found: Any, prefix: str = "") -> list[str]:
    """Human-readable differences in keys and leaf shapes between two nested state dicts."""
    if isinstance(expected, dict) or isinstance(found, dict):
        if not (isinstance(expected, dict) and isinstance(found, dict)):
            return [f"{prefix or '<root>'}: expected {_kind(expected)}, found {_kind(found)}"]
        out = [f"{prefix}{k}: missing" for k in expected if k not in found]
        out += [f"{prefix}{k}: unexpected" for k in found if k not in expected]
        for k in expected:
            if k in found:
                out += tree_differences(expected[k], found[k], f"{prefix}{k}/")
        return out
    shape_e, shape_f = _shape(expected), _shape(found)
    if shape_e != shape_f:
        return [f"{prefix.rstrip('/')}: expected shape {shape_e}, found {shape_f}"]
    return []


def _shape(leaf: Any) -> tuple:
    return tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)


def _kind(x: Any) -> str:
    return "a group" if isinstance(x, dict) else f"an array of shape {_shape(x)}"


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


def strict_json(payload: Any, indent: int | None = 2) -> str:
    """Standard JSON text of ``payload``: NaN and ±inf become ``null`` (never ``NaN`` literals).

    numpy values, dataclasses and paths are converted as in ``json_default``.
    """
    loose = json.loads(json.dumps(payload, default=json_default))
    return json.dumps(_finite_or_none(loose), indent=indent, allow_nan=False)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def write_json(path: str | Path, payload: Any) -> None:
    """Writes ``strict_json(payload)`` to ``path`` atomically."""
    atomic_write_bytes(Path(path), (strict_json(payload) + "\n").encode())
