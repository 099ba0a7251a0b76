"""The model interface: one frozen record that every path of ri-jax takes.

RI needs a CNN split in two (§3.1): ψ, the feature extractor up to a convolutional
layer, and G, the piecewise-linear head from ψ to the logits. ``Model`` holds the two
as pure, batched, jittable functions with their parameters bound, the input
normalisation, and what a figure or a report needs to name things. Three providers
make one:

* the project's VGG checkpoints: ``ri_jax.load_model("default")`` (the embedded model) or a
  folder written by ``experiments/train.py``;
* your own JAX callables: ``Model.from_functions(features, head, ...)``;
* Keras 3 models on the JAX backend: ``ri_jax.load_model("keras:DIR")`` for a folder with a
  Keras file and a ``model.json`` card (``ri_jax.models.keras``).

    model = ri_jax.Model.from_functions(features, head, params=params, image_size=32,
                                        class_names=("cat", "dog"))
    ri_jax.explain(model=model, images=my_images, references=my_references)

Raw images everywhere are float32 RGB in [0, 1], [..., S, S, 3]; ``normalize`` turns them
into the model's input (for a grey model, ITU-R 601 luma exactly as Pillow's "L").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.errors import RIInputError

Array = jax.Array

@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A CNN as RI sees it: ψ, G, the input normalisation and names.

    Attributes:
      features: ``features(x [B, S, S, channels]) -> ψ [B, h, w, c]`` on normalised inputs.
      head: ``head(ψ [B, h, w, c]) -> logits [B, C]``, piecewise linear (G).
      normalize: ``normalize(raw [..., S, S, 3] in [0, 1]) -> x [..., S, S, channels]``.
      image_size: S, the square input side in pixels.
      channels: input channels, 1 (grey) or 3 (RGB).
      class_names: the C class names, in logit order.
      source: where the model came from (a checkpoint folder, a Keras file, ...).
      fingerprint: a short hash of the weights and normalisation that keys the feature
        cache; None means features of this model are never cached.

    The record is compared by identity: keep one per model so that compiled programs
    (which key on the bound functions) are reused between calls.
    """

    features: Callable[[Array], Array]
    head: Callable[[Array], Array]
    normalize: Callable[[Array], Array]
    image_size: int
    channels: int
    class_names: tuple[str, ...]
    source: str
    fingerprint: str | None = None

    def __post_init__(self):
        for name in ("features", "head", "normalize"):
            if not callable(getattr(self, name)):
                raise RIInputError(f"{name}: expected a callable, got {getattr(self, name)!r}")
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1:
            raise RIInputError(f"image_size: must be a positive integer, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise RIInputError(f"channels: must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        names = self.class_names
        if isinstance(names, str) or not all(isinstance(c, str) for c in names) or len(names) < 2:
            raise RIInputError(f"class_names: need at least two class names (strings), got {names!r}")
        object.__setattr__(self, "class_names", tuple(names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: Array) -> Array:
        """G(ψ(x)): logits [B, C] of normalised inputs x [B, S, S, channels]."""
        return self.head(self.features(x))

    def logits(self, raw: Array) -> Array:
        """G(ψ(normalize(raw))): logits [B, C] of raw images [B, S, S, 3] in [0, 1]."""
        return self.head(self.features(self.normalize(raw)))

    def __repr__(self) -> str:
        return (f"Model({self.source!r}, {self.image_size}x{self.image_size}x{self.channels}, "
                f"{self.num_classes} classes)")

    @classmethod
    def from_functions(cls, features: Callable, head: Callable, *, image_size: int,
                       class_names: Sequence[str], params: Any = None, channels: int = 3,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       normalize: Callable[[Array], Array] | None = None,
                       source: str = "own functions") -> "Model":
        """Wraps your own JAX functions.

        Args:
          features: ψ, ``features(x)`` or, with ``params``, ``features(params, x)``.
          head: G, ``head(ψ)`` or, with ``params``, ``head(params, ψ)``.
          image_size: square input side S.
          class_names: the C class names in logit order.
          params: parameters bound as the first argument of both functions (optional).
            With them the feature cache is keyed by their hash; without, nothing is cached.
          channels: 1 (grey, ITU-R 601 luma) or 3 (RGB).
          mean, std: per-channel normalisation of pixels in [0, 1] (default 0 and 1).
          normalize: your own ``normalize(raw [..., S, S, 3]) -> x``, instead of mean/std.
          source: a name for reports.

        Returns:
          The ``Model``; its functions are jitted.
        """
        if normalize is not None and (mean is not None or std is not None):
            raise RIInputError("normalize: give either normalize or mean/std, not both")
        if params is not None:
            features, head = functools.partial(features, params), functools.partial(head, params)
        norm = normalize if normalize is not None else input_normalizer(
            mean if mean is not None else (0.0,) * channels,
            std if std is not None else (1.0,) * channels, channels)
        fingerprint = None if params is None else params_fingerprint(params)
        return cls(features=jax.jit(features), head=jax.jit(head), normalize=jax.jit(norm),
                   image_size=int(image_size), channels=channels,
                   class_names=tuple(class_names), source=source, fingerprint=fingerprint)


def params_fingerprint(params: Any) -> str:
    """Short hash of a parameter pytree (a cache key component)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params)):
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def luma(raw: Array) -> Array:
    """ITU-R 601 luma of raw RGB [..., 3] in [0, 1] → [..., 1], bit-exact to Pillow's "L".

    Pillow rounds each pixel to 8 bits and computes (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16.
    """
    v = jnp.round(jnp.clip(raw, 0.0, 1.0) * 255.0).astype(jnp.int32)
    y = (v[..., 0] * 19595 + v[..., 1] * 38470 + v[..., 2] * 7471 + 0x8000) >> 16
    return (y.astype(jnp.float32) / 255.0)[..., None]


def input_normalizer(mean: Sequence[float], std: Sequence[float], channels: int = 3
                     ) -> Callable[[Array], Array]:
    """``normalize(raw RGB [..., 3] in [0, 1])``: luma when grey, then ``(x − mean) / std``.

    Args:
      mean, std: one value per input channel; every std must be > 0.
      channels: 1 or 3.
    """
    mean_a, std_a = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for name, a in (("mean", mean_a), ("std", std_a)):
        if a.shape != (channels,) or not np.all(np.isfinite(a)):
            raise RIInputError(f"{name}: need {channels} finite value(s), one per input "
                               f"channel, got {list(np.ravel(a))}")
    if np.any(std_a <= 0):
        raise RIInputError(f"std: every value must be > 0, got {std_a.tolist()}")

    def normalize(raw: Array) -> Array:
        x = luma(raw) if channels == 1 else raw
        return (x - mean_a) / std_a

    return normalize


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of logits [..., C] (NumPy, float64 inside for a stable sum)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
