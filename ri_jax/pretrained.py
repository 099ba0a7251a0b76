"""ImageNet VGG weights from torchvision or Keras files as ri_jax parameters (§6.2).

The paper fine-tunes an ImageNet-pretrained VGG-19 on every dataset. Nothing is
downloaded here; the user supplies one of

  * torchvision's ``vgg19-dcbb9e9d.pth`` state dict (read with PyTorch: ``ri_jax[import-torch]``);
  * Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels.h5`` (read with h5py: ``ri_jax[import-keras]``).

Any plain VGG-11/13/16/19 in those layouts works; arch and width are read from the shapes.
``convert`` handles the layout differences:

  * conv kernels: torchvision OIHW → HWIO; Keras kernels are HWIO already.
  * first FC layer: torchvision average-pools adaptively to 7×7 and flattens (C, H, W);
    our head flattens the 2×2-max-pooled ψ as (H, W, C) with no adaptive pool. The pool is
    linear, so it is folded into the FC kernel: the identity at 224 px, exact at any size.
    keras.applications.vgg19 puts ``Flatten`` straight after ``block5_pool`` in
    channels-last order, so the Keras kernel already reads (H, W, C) and needs 224 px.
  * input preprocessing: torchvision expects ImageNet mean/std on RGB in [0, 1]; Keras expects
    "caffe" preprocessing (RGB→BGR, 0–255, the BGR mean subtracted, no scaling). The
    source's preprocessing is folded into the first conv for the target ``ModelConfig``'s
    mean/std: channel order and scale go into the kernel (exact); a mean difference goes into
    the bias, which is exact except on the one-pixel image border, where the source's zero
    padding stands for a different raw value. ``imagenet_normalization(source)`` is the
    mean/std that makes the import exact everywhere; ``foreign_config`` uses it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ri_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG_LAYERS, ModelConfig

Params = Any

# Weight-file extensions and the layout each one holds.
WEIGHT_FORMATS = {".pth": "torchvision", ".pt": "torchvision", ".h5": "keras", ".hdf5": "keras"}

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# torch.save writes a zip archive; files from before torch 1.6 (torchvision's own
# vgg19-dcbb9e9d.pth among them) start with a pickle protocol byte.
_TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")


class Preprocessing(NamedTuple):
    """The input a source network expects, as a function of raw RGB in [0, 1].

    Its input channel ``k`` is ``(raw[..., order[k]] - mean[order[k]]) / std[order[k]]``.

    Attributes:
      order: RGB channel feeding each input channel of the source's first conv.
      mean: per RGB channel, in raw [0, 1] units.
      std: per RGB channel, in raw [0, 1] units.
    """

    order: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# keras.applications.imagenet_utils "caffe" mode: BGR, 0–255, minus (103.939, 116.779, 123.68).
KERAS_CAFFE_MEAN_RGB = (123.68 / 255, 116.779 / 255, 103.939 / 255)
SOURCE_PREPROCESSING = {
    "torchvision": Preprocessing((0, 1, 2), IMAGENET_MEAN, IMAGENET_STD),
    "keras": Preprocessing((2, 1, 0), KERAS_CAFFE_MEAN_RGB, (1 / 255,) * 3),
}


class ForeignWeights(NamedTuple):
    """A VGG's weights as read from a file, still in the source's own layout.

    Attributes:
      source: ``"torchvision"`` (conv ``[O, I, 3, 3]``, linear ``[out, in]``, first FC over a
        (C, 7, 7) flatten) or ``"keras"`` (conv ``[3, 3, I, O]``, dense ``[in, out]``).
      origin: where they came from (a path), for error messages.
      convs: ``(kernel, bias)`` per conv layer, in order.
      fcs: ``(kernel, bias)`` for the three fully connected layers.
    """

    source: str
    origin: str
    convs: tuple[tuple[np.ndarray, np.ndarray], ...]
    fcs: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def num_classes(self) -> int:
        kernel = self.fcs[-1][0]
        return int(kernel.shape[0] if self.source == "torchvision" else kernel.shape[1])


def weight_format(path: str | Path) -> str:
    """The layout of a weights file, from its extension, after checking its signature.

    Args:
      path: a ``.pth``/``.pt`` torchvision state dict or a ``.h5``/``.hdf5`` Keras weights file.

    Returns:
      ``"torchvision"`` or ``"keras"``.

    Raises:
      ValueError: unknown extension, or the file does not start like that format.
      FileNotFoundError: no such file.
    """
    p = Path(path)
    source = WEIGHT_FORMATS.get(p.suffix.lower())
    if source is None:
        raise ValueError(f"{path}: unknown weights file extension {p.suffix!r}; expected "
                         ".pth/.pt (torchvision state dict) or .h5/.hdf5 (Keras weights)")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: weights file does not exist")
    with p.open("rb") as f:
        if source == "keras":
            # HDF5 allows a user block, so the signature may sit at 0, 512, 1024, 2048, ...
            offsets, ok = [0] + [512 << i for i in range(12)], False
            for off in offsets:
                f.seek(off)
                if f.read(8) == _HDF5_SIGNATURE:
                    ok = True
                    break
        else:
            ok = f.read(4).startswith(_TORCH_SIGNATURES)
    if not ok:
        kind = "an HDF5" if source == "keras" else "a torch.save"
        raise ValueError(f"{path}: does not look like {kind} file (bad signature); "
                         f"the {p.suffix} extension promised {source} weights")
    return source


def imagenet_normalization(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Model mean/std under which ``convert`` reproduces the source network exactly.

    Args:
      source: ``"torchvision"`` or ``"keras"``.

    Returns:
      ``(mean, std)`` per RGB channel in raw [0, 1] units: ImageNet mean/std for torchvision,
      the caffe mean with ImageNet std for Keras (the std is folded into the first kernel).
    """
    if source not in SOURCE_PREPROCESSING:
        raise ValueError(f"source: unknown {source!r}; choose one of {sorted(SOURCE_PREPROCESSING)}")
    return SOURCE_PREPROCESSING[source].mean, IMAGENET_STD


def from_torchvision_state_dict(state_dict: Mapping[str, Any], *, origin: str = "state_dict"
                                ) -> ForeignWeights:
    """Reads a torchvision VGG state dict (tensors or arrays) into ``ForeignWeights``.

    Args:
      state_dict: ``features.{i}.weight/bias`` (conv, ``[O, I, 3, 3]``) and
        ``classifier.{0,3,6}.weight/bias`` (linear, ``[out, in]``).
      origin: name used in error messages.
    """
    layers: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for name, value in state_dict.items():
        m = re.fullmatch(r"(features|classifier)\.(\d+)\.(weight|bias)", name)
        if m is None:
            hint = (" (batch-norm VGG variants are not supported: ri_jax's VGG has no batch norm)"
                    if "running_" in name or "num_batches" in name else "")
            raise ValueError(f"{origin}: unexpected key {name!r} in a torchvision VGG state dict{hint}")
        layers.setdefault((m[1], int(m[2])), {})[m[3]] = _to_numpy(value, f"{origin}[{name!r}]")
    for (part, idx), wb in layers.items():
        if set(wb) != {"weight", "bias"}:
            raise ValueError(f"{origin}: {part}.{idx} has {sorted(wb)}, needs weight and bias")
    conv_idx = sorted(i for part, i in layers if part == "features")
    fc_idx = sorted(i for part, i in layers if part == "classifier")
    if fc_idx != [0, 3, 6]:
        raise ValueError(f"{origin}: classifier layers {fc_idx}, expected [0, 3, 6] "
                         "(Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)")
    arch = _arch_for(len(conv_idx), origin)
    expected = _torchvision_conv_indices(arch)
    if conv_idx != expected:
        raise ValueError(f"{origin}: conv layers at features{conv_idx}, expected {expected} for {arch}")
    convs = tuple((layers["features", i]["weight"], layers["features", i]["bias"]) for i in conv_idx)
    fcs = tuple((layers["classifier", i]["weight"], layers["classifier", i]["bias"]) for i in fc_idx)
    return ForeignWeights("torchvision", origin, convs, fcs)


def read_torchvision(path: str | Path) -> ForeignWeights:
    """Reads a torchvision VGG ``.pth`` state dict (needs PyTorch: ``ri_jax[import-torch]``)."""
    try:
        import torch  # optional and large: only this reader needs it
    except ImportError:
        raise ImportError("reading a torchvision .pth file needs PyTorch: "
                          "pip install 'ri_jax[import-torch]' (or use the Keras .h5 file)") from None
    try:
        state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; the message matters
        raise ValueError(f"{path}: cannot read as a torch state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: holds a {type(state_dict).__name__}, expected a state dict")
    return from_torchvision_state_dict(state_dict, origin=str(path))


def read_keras_h5(path: str | Path) -> ForeignWeights:
    """Reads Keras VGG weights (``block{b}_conv{i}``, ``fc1``, ``fc2``, ``predictions``) from h5.

    Supports the layouts Keras has written: Keras 1 / the original applications files
    (``f[layer][layer + "_W_1:0"]``), Keras 2 ``save_weights`` (``f[layer][layer]["kernel:0"]``),
    and whole-model files (the same under ``f["model_weights"]``). Datasets are found through
    each layer's ``weight_names`` attribute, or by name if it is missing.
    """
    try:
        import h5py  # optional: only this reader needs it
    except ImportError:
        raise ImportError("reading a Keras .h5 file needs h5py: pip install 'ri_jax[import-keras]'") from None
    origin = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open as HDF5 ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        names = _h5_attr_list(root, "layer_names") or list(root.keys())
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in names:
            group = root.get(name)
            if not isinstance(group, h5py.Group):
                continue
            datasets = _h5_layer_datasets(group, h5py)
            if datasets:
                found[name] = _kernel_and_bias(datasets, f"{origin}[{name!r}]")
    conv_names = sorted((n for n in found if re.fullmatch(r"block\d+_conv\d+", n)),
                        key=lambda n: tuple(int(x) for x in re.findall(r"\d+", n)))
    fc_names = ("fc1", "fc2", "predictions")
    missing = [n for n in fc_names if n not in found]
    if missing:
        raise ValueError(f"{origin}: no {missing} layers (the '_notop' files lack the classifier; "
                         "use vgg19_weights_tf_dim_ordering_tf_kernels.h5)")
    extra = sorted(set(found) - set(conv_names) - set(fc_names))
    if extra:
        raise ValueError(f"{origin}: unexpected layers with weights {extra}; not a plain Keras VGG")
    arch = _arch_for(len(conv_names), origin)
    expected = _keras_conv_names(arch)
    if conv_names != expected:
        raise ValueError(f"{origin}: conv layers {conv_names}, expected {expected} for {arch}")
    for name in conv_names:
        kernel = found[name][0]
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
            raise ValueError(f"{origin}: {name} kernel has shape {kernel.shape}, expected "
                             "(3, 3, in, out) as in the tf-dim-ordering/tf-kernels files")
    return ForeignWeights("keras", origin, tuple(found[n] for n in conv_names),
                          tuple(found[n] for n in fc_names))


def read_weights(path: str | Path) -> ForeignWeights:
    """Reads a torchvision ``.pth``/``.pt`` or Keras ``.h5``/``.hdf5`` file (chosen by extension)."""
    if weight_format(path) == "torchvision":
        return read_torchvision(path)
    return read_keras_h5(path)


def foreign_config(weights: ForeignWeights, *, image_size: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` that reproduces ``weights`` exactly.

    Arch and width come from the conv shapes, the class count from the last layer, the
    normalisation from ``imagenet_normalization``.

    Args:
      weights: as read by ``read_weights``.
      image_size: input side; Keras weights fix it through the first FC layer
        (224 px for ImageNet VGG), torchvision weights work at any size (default 224).
    """
    arch = _arch_for(len(weights.convs), weights.origin)
    first_kernel = weights.convs[0][0]
    out0 = first_kernel.shape[0] if weights.source == "torchvision" else first_kernel.shape[-1]
    width = out0 / 64
    if weights.source == "keras":
        fc_rows, c_last = weights.fcs[0][0].shape[0], weights.convs[-1][0].shape[-1]
        side = int(round(np.sqrt(fc_rows / c_last)))
        if side * side * c_last != fc_rows:
            raise ValueError(f"{weights.origin}: fc1 has {fc_rows} inputs, not a square map of "
                             f"{c_last} channels")
        if image_size is not None and image_size != 32 * side:
            raise ValueError(f"image_size: Keras weights in {weights.origin} need {32 * side} px "
                             f"(fc1 reads a {side}×{side} map), got {image_size}")
        image_size = 32 * side
    mean, std = imagenet_normalization(weights.source)
    return ModelConfig(arch=arch, width=width, image_size=image_size or 224,
                       num_classes=weights.num_classes, mean=mean, std=std)


def convert(weights: ForeignWeights, config: ModelConfig) -> Params:
    """Converts foreign VGG weights into ri_jax parameters for ``config``.

    Args:
      weights: as read by ``read_weights``; must match ``config``'s arch, width and class count.
      config: the target model; its mean/std are folded into the first conv (see module doc).

    Returns:
      ``{"params": {"conv_i": {"kernel": [3, 3, I, O], "bias": [O]}, "fc_j": {"kernel": [in, out],
      "bias": [out]}}}`` in float32, the structure ``make_vgg(config).init`` returns.
    """
    origin, torch_layout = weights.origin, weights.source == "torchvision"
    channels = config.conv_channels
    if len(weights.convs) != len(channels):
        raise ValueError(f"config: {config.arch} has {len(channels)} conv layers, "
                         f"{origin} has {len(weights.convs)}")
    for i, (kernel, bias) in enumerate(weights.convs + weights.fcs):
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise ValueError(f"{origin}: layer {i} holds non-finite values")
    layers: dict[str, dict[str, jax.Array]] = {}
    c_in = 3
    for i, (kernel, bias) in enumerate(weights.convs):
        kernel = np.transpose(kernel, (2, 3, 1, 0)) if torch_layout else kernel
        _expect_shape(f"{origin}: conv layer {i} kernel", kernel.shape, (3, 3, c_in, channels[i]), config)
        _expect_shape(f"{origin}: conv layer {i} bias", bias.shape, (channels[i],), config)
        if i == 0:
            kernel, bias = fold_normalization(kernel, bias, SOURCE_PREPROCESSING[weights.source],
                                              config.mean, config.std)
        layers[f"conv_{i}"] = _layer(kernel, bias)
        c_in = channels[i]
    side = config.image_size // 32
    fc_shapes = ((side * side * c_in, config.fc_width), (config.fc_width, config.fc_width),
                 (config.fc_width, config.num_classes))
    for j, ((kernel, bias), (n_in, n_out)) in enumerate(zip(weights.fcs, fc_shapes)):
        if torch_layout:
            kernel = _fold_adaptive_pool(kernel, c_in, side, origin) if j == 0 else kernel.T
        _expect_shape(f"{origin}: fc layer {j} kernel", kernel.shape, (n_in, n_out), config)
        _expect_shape(f"{origin}: fc layer {j} bias", bias.shape, (n_out,), config)
        layers[f"fc_{j}"] = _layer(kernel, bias)
    return {"params": layers}


def fold_normalization(kernel: np.ndarray, bias: np.ndarray, source: Preprocessing,
                       mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Rewrites a first conv layer from the source's preprocessing to ``(raw - mean) / std``.

    Args:
      kernel: ``[kh, kw, 3, O]`` HWIO, input channels in the source's order.
      bias: ``[O]``.
      source: the preprocessing the layer was trained with.
      mean, std: the target normalisation per RGB channel (raw [0, 1] units).

    Returns:
      ``(kernel, bias)`` in float32 with RGB input channels. Exact on every output pixel whose
      receptive field lies inside the image; where it reaches the zero padding, exact only when
      ``mean == source.mean``.
    """
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    src_mean, src_std = np.asarray(source.mean, np.float64), np.asarray(source.std, np.float64)
    rgb = kernel[:, :, np.argsort(source.order), :]  # source channel k holds RGB channel order[k]
    # source input = (std/src_std)·ours + (mean - src_mean)/src_std, per RGB channel.
    new_kernel = rgb * (std / src_std)[None, None, :, None]
    new_bias = bias + np.einsum("hwco,c->o", rgb, (mean - src_mean) / src_std)
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def replace_classifier(params: Params, num_classes: int, *, key: jax.Array) -> Params:
    """Swaps the last layer ``fc_2`` for a freshly initialised one with ``num_classes`` outputs.

    The new kernel is drawn like ``VGG``'s own ``fc_2`` (flax ``Dense`` defaults: LeCun
    normal kernel, zero bias); every other layer is kept as is.

    Args:
      params: ``{"params": {..., "fc_2": {"kernel": [F, C_old], "bias": [C_old]}}}``.
      num_classes: C ≥ 2.
      key: PRNG key for the new kernel.

    Returns:
      The same pytree with ``fc_2`` of shapes ``[F, C]`` and ``[C]``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: need at least 2 classes, got {num_classes}")
    inner = params.get("params", {}) if isinstance(params, Mapping) else {}
    if "fc_2" not in inner:
        raise ValueError("params: no params['params']['fc_2'] layer to replace")
    fan_in = inner["fc_2"]["kernel"].shape[0]
    kernel = nn.initializers.lecun_normal()(key, (fan_in, num_classes), jnp.float32)
    fc_2 = {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}
    return {**params, "params": {**inner, "fc_2": fc_2}}


def import_params(path: str | Path, config: ModelConfig, *, key: jax.Array | None = None) -> Params:
    """Reads a weights file and converts it for ``config`` (any VGG the file matches).

    Args:
      path: torchvision ``.pth``/``.pt`` or Keras ``.h5``/``.hdf5`` file.
      config: target model; arch and width must match the file, the class count may differ.
      key: PRNG key for a new classifier, required when ``config.num_classes`` differs from
        the file's class count.
    """
    weights = read_weights(path)
    file_classes = weights.num_classes
    if file_classes != config.num_classes and key is None:
        raise ValueError(f"key: needed to initialise a new {config.num_classes}-class classifier "
                         f"({path} has {file_classes} classes)")
    params = convert(weights, dataclasses.replace(config, num_classes=file_classes, class_names=()))
    if file_classes != config.num_classes:
        params = replace_classifier(params, config.num_classes, key=key)
    return params


def load_imagenet_params(path: str | Path, config: ModelConfig, *, key: jax.Array) -> Params:
    """ImageNet VGG-19 weights as the starting point for fine-tuning ``config`` (§6.2).

    Args:
      path: torchvision ``vgg19`` state dict (``.pth``/``.pt``) or Keras
        ``vgg19_weights_tf_dim_ordering_tf_kernels.h5``.
      config: VGG-19 at width 1.0; any image size for torchvision weights, 224 px for Keras.
        Its mean/std are folded into the first conv (exact for ``imagenet_normalization``).
      key: PRNG key for the new classifier when ``config.num_classes != 1000``.

    Returns:
      Parameters for ``make_vgg(config)``; ``fc_2`` is freshly initialised unless C = 1000.
    """
    weight_format(path)
    if config.arch != "vgg19" or config.width != 1.0:
        raise ValueError(f"config: ImageNet weights are VGG-19 at width 1.0, got arch={config.arch!r} "
                         f"width={config.width}")
    return import_params(path, config, key=key)


def to_torch_vgg(params: Params, config: ModelConfig):
    """A PyTorch copy of a ri_jax VGG, for running torch tools (pytorch-grad-cam) on the same network.

    The inverse of ``convert`` for ri_jax's own layout: conv kernels HWIO → OIHW, dense
    kernels transposed, and the first FC kernel's rows reordered from our (H, W, C)
    flatten to torch's (C, H, W). The layer layout is torchvision's VGG
    (``features``: Conv2d, ReLU, …, MaxPool2d; ``classifier``: Linear, ReLU, Dropout,
    Linear, ReLU, Dropout, Linear) without the adaptive average pool, so the state-dict
    keys read like torchvision's. ReLUs are not in-place, so hooks see ψ intact.

    The module takes the model's *normalised* input (what ``fns.apply`` takes, but NCHW)
    and returns the same logits up to float32 rounding. ψ is the output of
    ``model.features[-2]`` (the last ReLU, before the final max-pool): the target layer
    for CAM methods. It is returned in eval mode (dropout off). Needs PyTorch
    (``ri_jax[import-torch]``), imported only here.

    Args:
      params: ``make_vgg(config)`` parameters.
      config: their ``ModelConfig``.

    Returns:
      ``torch.nn.Module`` in float32 on the CPU.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("to_torch_vgg needs PyTorch: pip install 'ri_jax[import-torch]'") from None
    layers = params["params"]
    tensor = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
    features, conv_index, c_in = [], 0, 3
    for layer in VGG_LAYERS[config.arch]:
        if layer == "M":
            features.append(torch.nn.MaxPool2d(2, 2))
            continue
        conv_params = layers[f"conv_{conv_index}"]
        conv = torch.nn.Conv2d(c_in, config.conv_channels[conv_index], 3, padding=1)
        conv.weight.data = tensor(np.transpose(conv_params["kernel"], (3, 2, 0, 1)))
        conv.bias.data = tensor(conv_params["bias"])
        features += [conv, torch.nn.ReLU(inplace=False)]
        c_in, conv_index = config.conv_channels[conv_index], conv_index + 1
    side = config.image_size // 32
    linears = []
    for j in range(3):
        kernel = np.asarray(layers[f"fc_{j}"]["kernel"], np.float32)
        if j == 0:  # rows (h, w, c) → columns (c, h, w)
            kernel = kernel.reshape(side, side, c_in, -1).transpose(2, 0, 1, 3).reshape(-1, kernel.shape[-1])
        linear = torch.nn.Linear(*kernel.shape)
        linear.weight.data = tensor(kernel.T)
        linear.bias.data = tensor(layers[f"fc_{j}"]["bias"])
        linears.append(linear)
    classifier = torch.nn.Sequential(linears[0], torch.nn.ReLU(), torch.nn.Dropout(config.dropout),
                                     linears[1], torch.nn.ReLU(), torch.nn.Dropout(config.dropout),
                                     linears[2])

    class TorchVGG(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(*features)
            self.classifier = classifier

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return TorchVGG().eval()


def _arch_for(num_convs: int, origin: str) -> str:
    by_count = {sum(c != "M" for c in layers): arch for arch, layers in VGG_LAYERS.items()}
    if num_convs not in by_count:
        known = ", ".join(f"{a}: {n}" for n, a in sorted(by_count.items()))
        raise ValueError(f"{origin}: {num_convs} conv layers match no VGG ({known})")
    return by_count[num_convs]


def _torchvision_conv_indices(arch: str) -> list[int]:
    # torchvision's features: Conv2d, ReLU per conv and one MaxPool2d per "M".
    out, idx = [], 0
    for layer in VGG_LAYERS[arch]:
        if layer == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 2
    return out


def _keras_conv_names(arch: str) -> list[str]:
    out, block, conv = [], 1, 1
    for layer in VGG_LAYERS[arch]:
        if layer == "M":
            block, conv = block + 1, 1
        else:
            out.append(f"block{block}_conv{conv}")
            conv += 1
    return out


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of torch's AdaptiveAvgPool1d (bins floor(i·n/m) … ceil((i+1)·n/m))."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _fold_adaptive_pool(weight: np.ndarray, channels: int, side: int, origin: str) -> np.ndarray:
    """torchvision's ``classifier.0.weight`` ``[out, C·p·p]``, applied to x adaptively pooled to
    p×p and flattened (C, p, p), as a kernel ``[side·side·C, out]`` on x flattened (H, W, C)."""
    n_out, n_in = weight.shape
    pool = int(round(np.sqrt(n_in / channels)))
    if pool * pool * channels != n_in:
        raise ValueError(f"{origin}: classifier.0 has {n_in} inputs, not {channels} channels "
                         "times a square pooled map")
    # Rows (i, j) of the pooled map, columns (c, o): the layout our flatten needs, up to the pool.
    w = weight.reshape(n_out, channels, pool, pool).transpose(2, 3, 1, 0).reshape(pool * pool, -1)
    if pool != side:  # 224 px: pooling 7×7 to 7×7 is the identity
        p = _adaptive_pool_matrix(side, pool).astype(weight.dtype)  # [pool, side]
        w = np.kron(p, p).T @ w  # kron(P, P)[(i, j), (r, s)] = P[i, r] P[j, s]
    return w.reshape(side * side * channels, n_out)


def _expect_shape(what: str, got: tuple, want: tuple, config: ModelConfig) -> None:
    if tuple(got) != tuple(want):
        raise ValueError(f"{what} has shape {tuple(got)}, expected {tuple(want)} for config "
                         f"(arch={config.arch}, width={config.width}, image_size={config.image_size}, "
                         f"num_classes={config.num_classes})")


def _layer(kernel: np.ndarray, bias: np.ndarray) -> dict[str, jax.Array]:
    return {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: expected floating-point weights, got dtype {arr.dtype}")
    return arr


def _h5_attr_list(group: Any, name: str) -> list[str]:
    """A list-of-strings attribute, including the chunked ``name0``, ``name1``… form Keras
    uses when the list outgrows the HDF5 header."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += list(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _h5_layer_datasets(group: Any, h5py: Any) -> dict[str, np.ndarray]:
    names = _h5_attr_list(group, "weight_names")
    if names:
        return {n: np.asarray(group[n]) for n in names}
    found: dict[str, np.ndarray] = {}
    group.visititems(lambda n, obj: found.__setitem__(n, np.asarray(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return found


_KERNEL_NAME = re.compile(r"(?:^|_)(?:kernel|W)(?:_\d+)?(?::\d+)?$")
_BIAS_NAME = re.compile(r"(?:^|_)(?:bias|b)(?:_\d+)?(?::\d+)?$")


def _kernel_and_bias(datasets: dict[str, np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
    base = {n: n.rsplit("/", 1)[-1] for n in datasets}
    kernels = [n for n in datasets if _KERNEL_NAME.search(base[n])]
    biases = [n for n in datasets if _BIAS_NAME.search(base[n])]
    if len(kernels) != 1 or len(biases) != 1 or len(datasets) != 2:
        raise ValueError(f"{what}: expected one kernel and one bias dataset, found {sorted(datasets)}")
    return (_to_numpy(datasets[kernels[0]], f"{what}/{kernels[0]}"),
            _to_numpy(datasets[biases[0]], f"{what}/{biases[0]}"))
