"""VGG family (Simonyan & Zisserman) split into the paper's ψ and G (§3.1).

ψ (``features``) is the output of the last conv+ReLU, before the final max-pool
(14×14×512 for VGG-19 at 224 px). G (``head``) is everything after it: the final
max-pool, the flatten and the three fully connected layers. There is no batch
norm: the head has to stay piecewise linear, since RI reads its linear
decision boundaries.

Parameters are a plain pytree ``{"params": {...}}`` with layers named
``conv_0 … conv_{n-1}`` and ``fc_0, fc_1, fc_2`` (kernels HWIO / [in, out]); the
first FC kernel expects a channels-last (H, W, C) flatten.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ri_jax.model import Model, params_fingerprint

Array = jax.Array
Params = Any

# "M" is a 2×2 max-pool. The last "M" of every config belongs to G.
VGG_LAYERS: dict[str, tuple] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; saved with every checkpoint.

    Attributes:
      arch: one of ``VGG_LAYERS``.
      width: channel multiplier (1.0 is the standard VGG; 0.125 the embedded model).
      image_size: square input side in pixels, divisible by 32.
      num_classes: number of output logits C.
      class_names: optional names of the C classes, in label order.
      mean, std: per-channel normalisation applied to raw [0, 1] RGB images.
      dropout: dropout rate between FC layers (training only).
    """

    arch: str = "vgg19"
    width: float = 1.0
    image_size: int = 224
    num_classes: int = 1000
    class_names: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dropout: float = 0.5

    def __post_init__(self):
        # Every field is checked (type and range): configs also come from hand-edited JSON.
        if not isinstance(self.arch, str) or self.arch not in VGG_LAYERS:
            raise ValueError(f"arch: unknown VGG configuration {self.arch!r}; "
                             f"choose one of {sorted(VGG_LAYERS)}")
        if not _real(self.width) > 0:
            raise ValueError(f"width: must be a positive number, got {self.width!r}")
        if not _integer(self.image_size) or self.image_size <= 0 or self.image_size % 32:
            raise ValueError(f"image_size: must be a positive multiple of 32, got {self.image_size!r}")
        if not _integer(self.num_classes) or self.num_classes < 2:
            raise ValueError(f"num_classes: need an integer >= 2, got {self.num_classes!r}")
        if isinstance(self.class_names, str) or not all(
                isinstance(c, str) for c in _sequence(self.class_names, "class_names")):
            raise ValueError(f"class_names: expected a list of strings, got {self.class_names!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names: {len(self.class_names)} names for "
                             f"{self.num_classes} classes")
        for name in ("mean", "std"):
            values = _sequence(getattr(self, name), name)
            if len(values) != 3 or any(math.isnan(_real(v)) for v in values):
                raise ValueError(f"{name}: expected 3 finite numbers (R, G, B), got {values!r}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std: every channel must be > 0, got {list(self.std)}")
        if not 0 <= _real(self.dropout) < 1:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def conv_channels(self) -> tuple[int, ...]:
        return tuple(_scale(c, self.width) for c in VGG_LAYERS[self.arch] if c != "M")

    @property
    def fc_width(self) -> int:
        return _scale(4096, self.width)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of ψ for one image: (H/16, W/16, last conv channels)."""
        side = self.image_size // 16
        return (side, side, self.conv_channels[-1])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Builds a config from JSON-like values (lists for tuples); every field is validated.

        Raises:
          ValueError: naming the first bad or unknown field.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{', '.join(map(str, unknown))}: unknown key(s); the model config "
                             f"has {known}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _real(x: Any) -> float:
    """``x`` as a finite float, or NaN when it is not a finite real number (NaN fails every test)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        return math.nan
    return float(x)


def _integer(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _sequence(x: Any, name: str) -> tuple:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__iter__"):
        raise ValueError(f"{name}: expected a list, got {x!r}")
    return tuple(x)


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# Inputs this narrow (the RGB input) are convolved as a sum of shifted copies on a CPU;
# 8 channels measured no faster that way, so wider layers keep the convolution op.
TAP_SUM_MAX_CHANNELS = 3


def lax_conv3x3(x: Array, kernel: Array) -> Array:
    """x [B, H, W, c_in] ⊛ kernel [3, 3, c_in, c_out] → [B, H, W, c_out], 'SAME', as ``nn.Conv``."""
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def tap_sum_conv3x3(x: Array, kernel: Array) -> Array:
    """``lax_conv3x3`` as the sum over the 9·c_in kernel taps of shifted, scaled copies of x.

    XLA fuses the sum into one elementwise loop. For 3 input channels that is 5–7× faster
    on a CPU than XLA:CPU's convolution, whose kernels are tuned for wide channels; for
    8 or more channels it is not faster. Equal to ``lax_conv3x3`` up to float rounding.
    """
    height, width, channels = x.shape[-3:]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = jnp.zeros(x.shape[:-1] + kernel.shape[-1:], jnp.result_type(x, kernel))
    for dy in range(3):
        for dx in range(3):
            for c in range(channels):
                out = out + padded[:, dy:dy + height, dx:dx + width, c:c + 1] * kernel[dy, dx, c]
    return out


def _pool_windows(x: Array) -> Array:
    """[B, H, W, c] → its 2×2 windows [B, H // 2, W // 2, c, 4] (odd trailing rows and
    columns dropped, as by 'VALID' pooling)."""
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return windows.reshape(b, h // 2, w // 2, c, 4)


@jax.custom_jvp
def max_pool_2x2(x: Array) -> Array:
    """``nn.max_pool(x, (2, 2), strides=(2, 2))`` with a derivative that is cheap on a CPU.

    The value is ``nn.max_pool``'s, and so is the derivative: all of a window's tangent or
    gradient goes through its first largest element, as XLA's select-and-scatter sends it
    (and torch's max_pool2d). But it is a one-hot product, not a select-and-scatter, which
    XLA:CPU runs 5× slower: Eq. 2 at the per-input pools' B·Q points spent most of its
    time there. Forward-over-reverse derivatives (the curvature check) work as before.

    Args:
      x: [B, H, W, c].

    Returns:
      [B, H // 2, W // 2, c].
    """
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    first = jax.nn.one_hot(jnp.argmax(_pool_windows(x), axis=-1), 4, dtype=x.dtype)
    # Linear in dx, so JAX transposes it into the gradient: one-hot times g, elementwise.
    return max_pool_2x2(x), jnp.sum(_pool_windows(dx) * first, axis=-1)


class Conv3x3(nn.Module):
    """3×3 'SAME' convolution with bias; the parameters are ``nn.Conv``'s (same names,
    shapes and initial values), so checkpoints are unchanged.

    A layer with at most ``TAP_SUM_MAX_CHANNELS`` input channels runs ``tap_sum_conv3x3``
    when lowered for a CPU and ``lax_conv3x3`` elsewhere (``lax.platform_dependent``);
    wider layers always run ``lax_conv3x3``.
    """

    features: int
    kernel_init: Callable = nn.initializers.kaiming_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if x.shape[-1] <= TAP_SUM_MAX_CHANNELS:
            y = lax.platform_dependent(x, kernel, cpu=tap_sum_conv3x3, default=lax_conv3x3)
        else:
            y = lax_conv3x3(x, kernel)
        return y + bias


class VGG(nn.Module):
    """Flax VGG with ``features`` (ψ) and ``head`` (G) as separate methods."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.convs = [Conv3x3(c, name=f"conv_{i}") for i, c in enumerate(cfg.conv_channels)]
        self.fcs = [nn.Dense(cfg.fc_width, name="fc_0", kernel_init=nn.initializers.kaiming_normal()),
                    nn.Dense(cfg.fc_width, name="fc_1", kernel_init=nn.initializers.kaiming_normal()),
                    nn.Dense(cfg.num_classes, name="fc_2")]
        self.drop = nn.Dropout(cfg.dropout)

    def features(self, images: Array) -> Array:
        """images [B, S, S, 3] normalised → ψ [B, S/16, S/16, C_last]."""
        layers = VGG_LAYERS[self.config.arch][:-1]  # the final pool is part of G
        x, conv = images, iter(self.convs)
        for layer in layers:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(next(conv)(x))
        return x

    def head(self, psi: Array, train: bool = False) -> Array:
        """ψ [B, h, w, c] → logits [B, C]."""
        x = max_pool_2x2(psi)
        x = x.reshape((x.shape[0], -1))
        x = self.drop(nn.relu(self.fcs[0](x)), deterministic=not train)
        x = self.drop(nn.relu(self.fcs[1](x)), deterministic=not train)
        return self.fcs[2](x)

    def __call__(self, images: Array, train: bool = False) -> Array:
        return self.head(self.features(images), train=train)


class ModelFns(NamedTuple):
    """Pure functions of one model configuration.

    Attributes:
      init: ``init(key) -> params``.
      features: ``features(params, images [B,S,S,3]) -> ψ [B,h,w,c]`` (normalised images).
      head: ``head(params, ψ [B,h,w,c]) -> logits [B,C]`` (G, deterministic).
      apply: ``apply(params, images, *, train=False, dropout_key=None) -> logits``.
      normalize: ``normalize(raw [..., 3] in [0,1]) -> normalised images``.
    """

    init: Callable[..., Params]
    features: Callable[[Params, Array], Array]
    head: Callable[[Params, Array], Array]
    apply: Callable[..., Array]
    normalize: Callable[[Array], Array]


@functools.cache
def make_vgg(config: ModelConfig) -> ModelFns:
    """Builds the pure ψ/G functions for ``config``; ``head(p, features(p, x)) == apply(p, x)``.

    The functions are jitted (called directly they run one compiled program per input
    shape, not op by op; inside another transformation they are inlined), and equal
    configs get the same functions, so their compiled programs are shared.
    """
    model = VGG(config)
    mean = jnp.asarray(config.mean, jnp.float32)
    std = jnp.asarray(config.std, jnp.float32)

    def init_traced(key: Array) -> Params:
        dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
        return model.init(key, dummy)

    compiled_init = []

    def init(key: Array) -> Params:
        if isinstance(key, jax.core.Tracer):
            return init_traced(key)
        if not compiled_init:
            # Initialisation runs once: compiling it without XLA optimisations takes ~1 s
            # instead of ~10 s (and eager init dispatches op by op, slower still).
            lowered = jax.jit(init_traced).lower(key)
            compiled_init.append(lowered.compile(
                compiler_options={"xla_backend_optimization_level": 0}))
        return compiled_init[0](key)

    def features(params: Params, images: Array) -> Array:
        return model.apply(params, images, method=VGG.features)

    def head(params: Params, psi: Array) -> Array:
        return model.apply(params, psi, method=VGG.head)

    def apply(params: Params, images: Array, *, train: bool = False,
              dropout_key: Array | None = None) -> Array:
        rngs = {"dropout": dropout_key} if train else None
        return model.apply(params, images, train=train, rngs=rngs)

    def normalize(raw: Array) -> Array:
        return (raw - mean) / std

    return ModelFns(init=init, features=jax.jit(features), head=jax.jit(head),
                    apply=jax.jit(apply, static_argnames="train"), normalize=jax.jit(normalize))


def vgg_model(params: Params, config: ModelConfig, *, source: str = "vgg") -> Model:
    """The ``ri_jax.model.Model`` of a VGG with ``params`` bound (ψ, G and normalisation)."""
    fns = make_vgg(config)
    names = config.class_names or tuple(f"class {i}" for i in range(config.num_classes))
    return Model(features=functools.partial(fns.features, params),
                 head=functools.partial(fns.head, params), normalize=fns.normalize,
                 image_size=config.image_size, channels=3, class_names=names, source=source,
                 fingerprint=params_fingerprint(params))
