"""Keras 3 models on the JAX backend as ``ri_jax.model.Model`` (the ``[keras]`` extra).

A model folder holds one Keras file (``.keras``, or a legacy Keras 2 ``.h5``/``.hdf5``)
and a ``model.json`` card:

    {"format": "keras", "file": "cnn_model.h5", "class_names": ["airplane", ...],
     "image_size": 32, "channels": 3, "mean": [0, 0, 0], "std": [0.0039, ...],
     "feature_layer": "max_pooling2d_1", "logits_layer": "dense_2"}

* ``mean``/``std`` apply to pixels scaled to [0, 1]; ``channels: 1`` is ITU-R 601 luma.
* ``feature_layer`` is the layer whose output is ψ; ``logits_layer`` the layer whose output
  is the pre-softmax score vector (the model's last layer when left out).

The model is cut at those layers into two Keras sub-models, and ψ and G run as pure JAX
functions over copies of their variables (``stateless_call``, inference mode: batch norm
on its moving statistics, dropout off), jitted like the VGG's. Every op between ψ and the
logits must be piecewise linear, since RI reads G's linear decision boundaries: a head with
a sigmoid, tanh, GELU, softmax, ... is refused, naming the layer, and a head that is
entirely linear (no ReLU or max) gets a ``LinearHeadWarning``, since then every boundary
of a class pair is the same hyperplane.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.errors import RIInputError
from ri_jax.model import Model, input_normalizer

CARD_FILE = "model.json"
REQUIRED_FIELDS = ("format", "file", "class_names", "image_size", "channels", "mean", "std",
                   "feature_layer")
OPTIONAL_FIELDS = ("logits_layer",)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

PIECEWISE_LINEAR_ACTIVATIONS = frozenset({"linear", "relu", "relu6", "leaky_relu"})
# Layer classes that are piecewise linear in inference mode, and those among them whose
# kinks are what make a head more than one linear map.
PIECEWISE_LINEAR_LAYERS = frozenset({
    "InputLayer", "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D",
    "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D", "Conv1DTranspose",
    "Conv2DTranspose", "Conv3DTranspose", "BatchNormalization", "MaxPooling1D", "MaxPooling2D",
    "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Add", "Subtract",
    "Average", "Maximum", "Minimum", "Concatenate", "Flatten", "Reshape", "Permute",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "ReLU", "LeakyReLU", "Activation", "Identity",
    "Rescaling", "UpSampling1D", "UpSampling2D", "UpSampling3D"})
KINKED_LAYERS = frozenset({"MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D",
                           "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Maximum", "Minimum",
                           "ReLU", "LeakyReLU"})


class ModelCardError(RIInputError):
    """A model folder, its card or its Keras file is unusable (the message names which)."""


class LinearHeadWarning(UserWarning):
    """The head has no ReLU or max between ψ and the logits: RI degenerates."""


def read_card(folder: str | os.PathLike) -> dict:
    """The checked ``model.json`` of a model folder.

    Returns:
      The card with ``file`` resolved against the folder and ``logits_layer`` None if absent.

    Raises:
      ModelCardError: naming the card and the field for unknown keys, missing fields or
        values of the wrong type or length.
    """
    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not folder.is_dir():
        raise ModelCardError(f"{folder}: not a model folder (expected a folder with a Keras "
                             f"file and {CARD_FILE})")
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise ModelCardError(f"{card_path}: missing; a model folder needs a {CARD_FILE} card "
                             "(see ri_jax.models.keras_model)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelCardError(f"{card_path}: cannot read the card ({e})") from None
    if not isinstance(card, dict):
        raise ModelCardError(f"{card_path}: expected a JSON object, got {type(card).__name__}")

    def bad(field: str, why: str) -> ModelCardError:
        return ModelCardError(f"{card_path}: field {field!r}: {why}")

    unknown = sorted(set(card) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown key (known: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise bad(missing[0], "missing")
    if card["format"] != "keras":
        raise bad("format", f"only 'keras' is supported, got {card['format']!r}")
    for field in ("file", "feature_layer"):
        if not isinstance(card[field], str) or not card[field]:
            raise bad(field, f"expected a non-empty string, got {card[field]!r}")
    logits_layer = card.get("logits_layer")
    if logits_layer is not None and (not isinstance(logits_layer, str) or not logits_layer):
        raise bad("logits_layer", f"expected a layer name, got {logits_layer!r}")
    names = card["class_names"]
    if (not isinstance(names, list) or len(names) < 2
            or not all(isinstance(c, str) and c for c in names)):
        raise bad("class_names", "expected a list of at least two non-empty strings")
    if len(set(names)) != len(names):
        raise bad("class_names", "names repeat")
    size = card["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad("image_size", f"expected a positive integer, got {size!r}")
    if card["channels"] not in (1, 3) or isinstance(card["channels"], bool):
        raise bad("channels", f"expected 1 (grey) or 3 (RGB), got {card['channels']!r}")
    for field in ("mean", "std"):
        values = card[field]
        if (not isinstance(values, list) or len(values) != card["channels"]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and np.isfinite(v) for v in values)):
            raise bad(field, f"expected {card['channels']} finite number(s), one per input "
                             f"channel, got {values!r}")
    if any(v <= 0 for v in card["std"]):
        raise bad("std", f"every value must be > 0, got {card['std']}")
    model_file = folder / card["file"]
    if model_file.suffix.lower() not in KERAS_SUFFIXES:
        raise bad("file", f"expected a Keras file ({', '.join(KERAS_SUFFIXES)}), got {card['file']!r}")
    if not model_file.is_file():
        raise bad("file", f"{model_file} does not exist")
    return {**card, "file": model_file, "logits_layer": logits_layer}


def import_keras():
    """Keras 3 on the JAX backend, or a clear error naming the extra to install."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise RIInputError("keras: not installed; Keras models need the [keras] extra "
                           "(pip install -e '.[keras]')") from None
    if not keras.__version__.startswith("3") and int(keras.__version__.split(".")[0]) < 3:
        raise RIInputError(f"keras: need Keras >= 3, found {keras.__version__}")
    if keras.backend.backend() != "jax":
        raise RIInputError(f"keras: running on the {keras.backend.backend()!r} backend; set "
                           "KERAS_BACKEND=jax before Keras is first imported")
    return keras


def load_keras_folder(folder: str | os.PathLike) -> Model:
    """The ``Model`` of a model folder (a Keras file and its ``model.json`` card).

    Raises:
      ModelCardError: naming the file and the field when the card or the model is unusable.
    """
    card = read_card(folder)
    keras = import_keras()
    model_file = card["file"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 2 files warn about their input_shape args
            keras_model = keras.models.load_model(model_file, compile=False)
    except Exception as e:  # Keras raises many types for a bad file; all mean "cannot load"
        raise ModelCardError(f"{model_file}: cannot load the Keras model "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                             ) from None
    h = hashlib.sha256(model_file.read_bytes())
    h.update(json.dumps({k: v for k, v in card.items() if k != "file"}, sort_keys=True).encode())
    return from_keras(keras_model, feature_layer=card["feature_layer"],
                      logits_layer=card["logits_layer"], class_names=card["class_names"],
                      image_size=card["image_size"], channels=card["channels"],
                      mean=card["mean"], std=card["std"],
                      source=f"{model_file} (ψ = {card['feature_layer']}, logits = "
                             f"{card['logits_layer'] or 'the last layer'})",
                      fingerprint=h.hexdigest()[:16], where=str(Path(folder) / CARD_FILE))


def from_keras(keras_model: Any, *, feature_layer: str, class_names: Sequence[str],
               logits_layer: str | None = None, image_size: int | None = None,
               channels: int | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, source: str = "keras model",
               fingerprint: str | None = None, where: str = "model") -> Model:
    """Cuts a Keras 3 model (JAX backend) at ``feature_layer`` into ψ and G.

    Args:
      keras_model: a functional or Sequential ``keras.Model`` with a known input shape.
      feature_layer: the layer whose output is ψ.
      class_names: the C class names in logit order.
      logits_layer: the layer whose output is the pre-softmax scores (default: the last).
      image_size, channels: checked against the model's input (taken from it when None).
      mean, std: per-channel normalisation of pixels in [0, 1] (default 0 and 1).
      source, fingerprint: recorded in the ``Model`` (``fingerprint`` keys the feature cache).
      where: the file or object named in error messages.

    Returns:
      The ``Model``.

    Raises:
      ModelCardError: a layer that is not in the model, an input size or channel count
        that does not match, a class count that is not the logits', or a head that is
        not piecewise linear.
    """
    keras = import_keras()
    shape = tuple(keras_model.inputs[0].shape[1:]) if getattr(keras_model, "inputs", None) else ()
    if len(shape) != 3:
        raise ModelCardError(f"{where}: the model needs one image input [H, W, C] with a known "
                             f"shape, got {shape or 'none'}")
    height, width, in_channels = shape
    channels = in_channels if channels is None else channels
    if in_channels != channels:
        raise ModelCardError(f"{where}: field 'channels': {channels} does not match the "
                             f"model's input, which has {in_channels} channel(s)")
    if image_size is None:
        if height is None or height != width:
            raise ModelCardError(f"{where}: field 'image_size': needed, since the model's "
                                 f"input is {height}x{width}")
        image_size = height
    for side in (height, width):
        if side is not None and side != image_size:
            raise ModelCardError(f"{where}: field 'image_size': {image_size} does not match the "
                                 f"model's input, {height}x{width}")
    layer_names = [layer.name for layer in keras_model.layers]
    logits_layer = layer_names[-1] if logits_layer is None else logits_layer
    for field, name in (("feature_layer", feature_layer), ("logits_layer", logits_layer)):
        if name not in layer_names:
            raise ModelCardError(f"{where}: field {field!r}: no layer named {name!r} in the "
                                 f"model (layers: {', '.join(layer_names)})")
    features_model, head_model = _split(keras, keras_model, feature_layer, logits_layer, where)
    head_layers = [layer for layer in head_model.layers if type(layer).__name__ != "InputLayer"]
    check_piecewise_linear(head_layers, where=where, feature_layer=feature_layer,
                           logits_layer=logits_layer)
    logits_shape = tuple(head_model.outputs[0].shape[1:])
    if logits_shape != (len(class_names),):
        raise ModelCardError(f"{where}: field 'class_names': {len(class_names)} names, but "
                             f"layer {logits_layer!r} outputs shape {logits_shape}")
    norm = input_normalizer(mean if mean is not None else (0.0,) * channels,
                            std if std is not None else (1.0,) * channels, channels)
    return Model(features=_pure(features_model), head=_pure(head_model),
                 normalize=jax.jit(norm), image_size=int(image_size), channels=int(channels),
                 class_names=tuple(class_names), source=source, fingerprint=fingerprint)


def _split(keras, keras_model, feature_layer: str, logits_layer: str, where: str):
    """(ψ sub-model, G sub-model) of a functional or Sequential model."""
    if isinstance(keras_model, keras.Sequential):
        # A Sequential loaded from a file has no graph to cut ("never been called"):
        # rebuild both halves from its layers, in order.
        layers = keras_model.layers
        names = [layer.name for layer in layers]
        f, last = names.index(feature_layer), names.index(logits_layer)
        if last <= f:
            raise ModelCardError(f"{where}: field 'logits_layer': {logits_layer!r} comes before "
                                 f"feature_layer {feature_layer!r}")
        x = keras.Input(tuple(keras_model.inputs[0].shape[1:]))
        t = x
        for layer in layers[:f + 1]:
            t = layer(t)
        psi = keras.Input(tuple(t.shape[1:]))
        u = psi
        for layer in layers[f + 1:last + 1]:
            u = layer(u)
        return keras.Model(x, t), keras.Model(psi, u)
    psi = keras_model.get_layer(feature_layer).output
    try:
        head = keras.Model(psi, keras_model.get_layer(logits_layer).output)
    except ValueError:
        raise ModelCardError(
            f"{where}: field 'logits_layer': {logits_layer!r} is not computed from "
            f"feature_layer {feature_layer!r} alone (it comes before it, or a skip connection "
            "bypasses it); choose a feature layer that every path to the logits goes through"
        ) from None
    return keras.Model(keras_model.inputs, psi), head


def check_piecewise_linear(layers: Sequence[Any], *, where: str, feature_layer: str,
                           logits_layer: str) -> None:
    """Refuses a head with a layer that is not piecewise linear; warns when it is linear.

    Args:
      layers: the Keras layers between ψ and the logits.
      where, feature_layer, logits_layer: named in the messages.
    """
    kinked = False
    for layer in layers:
        kind = type(layer).__name__
        if kind not in PIECEWISE_LINEAR_LAYERS:
            raise ModelCardError(
                f"{where}: field 'feature_layer': layer {layer.name!r} ({kind}) between "
                f"{feature_layer!r} and {logits_layer!r} is not known to be piecewise linear; RI "
                "needs a piecewise-linear head (choose a later feature layer, or an earlier "
                "logits layer)")
        activation = getattr(layer, "activation", None)
        act = getattr(activation, "__name__", None) if activation is not None else None
        if act is not None and act not in PIECEWISE_LINEAR_ACTIVATIONS:
            raise ModelCardError(
                f"{where}: field 'feature_layer': layer {layer.name!r} applies {act}, which is "
                f"not piecewise linear, between {feature_layer!r} and {logits_layer!r}; RI needs "
                "a piecewise-linear head (for a final softmax, set logits_layer to the layer "
                "before it)")
        kinked |= kind in KINKED_LAYERS or act in ("relu", "relu6", "leaky_relu")
    if not kinked:
        warnings.warn(
            f"{where}: the head from {feature_layer!r} to {logits_layer!r} is linear (no ReLU "
            "or max): every boundary of a class pair is then the same hyperplane and RI "
            "degenerates; choose an earlier feature layer", LinearHeadWarning, stacklevel=3)


def _pure(sub_model) -> Any:
    """``f(x)``: the sub-model as a jitted pure JAX function over copies of its variables.

    The variables are copied out of Keras and passed as arguments: a jitted function that
    closes over ``variable.value`` fails once Keras replaces those buffers.
    """
    trainable = [jnp.array(np.asarray(v.value)) for v in sub_model.trainable_variables]
    frozen = [jnp.array(np.asarray(v.value)) for v in sub_model.non_trainable_variables]

    @jax.jit
    def call(trainable, frozen, x):
        out, _ = sub_model.stateless_call(trainable, frozen, x, training=False)
        return out

    def apply(x):
        return call(trainable, frozen, x)

    return apply
