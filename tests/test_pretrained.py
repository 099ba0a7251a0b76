"""ImageNet weight import: torchvision and Keras layouts against foreign-layout reference forwards.

Random narrow VGGs stand in for the real files (no download at test time). The references
below are written the way the foreign frameworks compute: NCHW convolution, torchvision's
AdaptiveAvgPool2d((7, 7)) and a (C, H, W) flatten; Keras' caffe preprocessing, HWIO
convolution and an (H, W, C) flatten.
"""

import functools
import math
import sys
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax import pretrained
from ri_jax.checkpoint import load_checkpoint
from ri_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG_LAYERS, ModelConfig, make_vgg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import import_weights  # noqa: E402

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
WIDTH = 1 / 16


# ---------------------------------------------------------------- foreign reference forwards

def conv_nchw(x, weight, bias):
    """torch.nn.Conv2d(3×3, padding=1): x [N, C, H, W], weight [O, C, 3, 3]."""
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
    return out + bias[None, :, None, None]


def maxpool_nchw(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def adaptive_avg_pool_nchw(x, out):
    """torch.nn.AdaptiveAvgPool2d((out, out)) written from its definition."""
    n, c, h, w = x.shape
    y = np.empty((n, c, out, out))
    for i in range(out):
        h0, h1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
        for j in range(out):
            w0, w1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def torchvision_forward(state_dict, arch, raw):
    """torchvision VGG on raw RGB [N, S, S, 3] in [0, 1]."""
    x = ((raw - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(0, 3, 1, 2)
    idx = 0
    for layer in VGG_LAYERS[arch]:
        if layer == "M":
            x, idx = maxpool_nchw(x), idx + 1
        else:
            x = np.maximum(conv_nchw(x, state_dict[f"features.{idx}.weight"],
                                     state_dict[f"features.{idx}.bias"]), 0)
            idx += 2
    x = adaptive_avg_pool_nchw(x, 7).reshape(len(x), -1)
    for i in (0, 3, 6):
        x = x @ state_dict[f"classifier.{i}.weight"].T + state_dict[f"classifier.{i}.bias"]
        x = np.maximum(x, 0) if i < 6 else x
    return x


def conv_nhwc(x, kernel, bias):
    """Keras Conv2D(3×3, padding="same"): x [N, H, W, C], kernel [3, 3, C, O]."""
    _, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(xp[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx] for dy in range(3) for dx in range(3))
    return out + bias


def keras_first_conv(raw, kernel, bias):
    """Keras' caffe preprocessing (RGB→BGR, 0–255, minus the BGR mean) then block1_conv1."""
    return conv_nhwc(raw[..., ::-1] * 255.0 - CAFFE_MEAN_BGR, kernel, bias)


def keras_forward(layers, arch, raw):
    """keras.applications-style VGG on raw RGB [N, S, S, 3] in [0, 1]; ``layers`` name → (k, b)."""
    x, names, first = raw, iter(pretrained._keras_conv_names(arch)), True
    for layer in VGG_LAYERS[arch]:
        if layer == "M":
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        else:
            k, b = layers[next(names)]
            x = np.maximum(keras_first_conv(x, k, b) if first else conv_nhwc(x, k, b), 0)
            first = False
    x = x.reshape(len(x), -1)
    for name in ("fc1", "fc2", "predictions"):
        k, b = layers[name]
        x = x @ k + b
        x = np.maximum(x, 0) if name != "predictions" else x
    return x


# ---------------------------------------------------------------- random foreign weights

def random_vgg(arch, side, classes, rng, input_scale=1.0):
    """He-initialised conv kernels HWIO and FC kernels [in, out], in = side·side·C.

    ``input_scale`` is the typical magnitude of the network's input (~100 for Keras' 0–255).
    """
    cfg = ModelConfig(arch=arch, width=WIDTH, image_size=32 * side, num_classes=classes)
    convs, c_in = [], 3
    for i, c in enumerate(cfg.conv_channels):
        scale = np.sqrt(2 / (9 * c_in)) / (input_scale if i == 0 else 1.0)
        convs.append((rng.normal(0, scale, (3, 3, c_in, c)), rng.normal(0, 0.1, c)))
        c_in = c
    dims = [side * side * c_in, cfg.fc_width, cfg.fc_width, classes]
    fcs = [(rng.normal(0, np.sqrt(2 / a), (a, b)), rng.normal(0, 0.1, b)) for a, b in zip(dims, dims[1:])]
    return convs, fcs


def torchvision_state_dict(arch, classes, rng):
    """A torchvision-layout state dict (OIHW convs, classifier.0 over a (C, 7, 7) flatten)."""
    convs, fcs = random_vgg(arch, 7, classes, rng)
    sd = {}
    for idx, (k, b) in zip(pretrained._torchvision_conv_indices(arch), convs):
        sd[f"features.{idx}.weight"] = k.transpose(3, 2, 0, 1)
        sd[f"features.{idx}.bias"] = b
    for i, (k, b) in zip((0, 3, 6), fcs):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = k.T, b
    return {n: v.astype(np.float32) for n, v in sd.items()}


def keras_layers(arch, side, classes, rng):
    convs, fcs = random_vgg(arch, side, classes, rng, input_scale=100.0)
    names = pretrained._keras_conv_names(arch) + ["fc1", "fc2", "predictions"]
    return {n: (k.astype(np.float32), b.astype(np.float32)) for n, (k, b) in zip(names, convs + fcs)}


def write_keras_h5(path, layers, arch, layout):
    """Writes ``layers`` the way Keras does.

    layouts: "keras1" (``f[l][l + "_W_1:0"]``, the original applications files), "keras2"
    (``f[l][l]["kernel:0"]`` from save_weights), "model" (keras2 under ``model_weights`` as
    model.save writes), "bare" (keras2 groups without the name attributes).
    """
    order = ["input_1"]
    names = iter(pretrained._keras_conv_names(arch))
    block = 1
    for layer in VGG_LAYERS[arch]:
        if layer == "M":
            order.append(f"block{block}_pool")
            block += 1
        else:
            order.append(next(names))
    order += ["flatten", "fc1", "fc2", "predictions"]
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if layout == "model" else f
        if layout != "bare":
            root.attrs["layer_names"] = [n.encode() for n in order]
        for name in order:
            g = root.create_group(name)
            if name not in layers:
                if layout != "bare":
                    g.attrs["weight_names"] = np.array([], dtype="S8")
                continue
            suffixes = ("_W_1:0", "_b_1:0") if layout == "keras1" else ("/kernel:0", "/bias:0")
            weight_names = [name + s for s in suffixes]
            for wn, arr in zip(weight_names, layers[name]):
                g.create_dataset(wn, data=arr)
            if layout != "bare":
                g.attrs["weight_names"] = [n.encode() for n in weight_names]


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
    fns = make_vgg(config)
    return jax.jit(lambda p, raw: fns.apply(p, fns.normalize(raw))), fns


def shapes(params):
    """The pytree with every leaf replaced by its shape (structure and shapes in one value)."""
    return jax.tree.map(lambda x: tuple(x.shape), params)


def assert_logits_close(ours, ref):
    assert np.ptp(ref) > 1e-3, "degenerate reference logits make the comparison vacuous"
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


def raw_images(rng, n, size):
    return rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- whole-network round trips

@pytest.mark.parametrize("arch,side", [("vgg19", 2), ("vgg11", 3)])
def test_torchvision_state_dict_matches_torch_forward(arch, side):
    rng = np.random.default_rng(0)
    sd = torchvision_state_dict(arch, 5, rng)
    weights = pretrained.from_torchvision_state_dict(sd)
    config = pretrained.foreign_config(weights, image_size=32 * side)
    assert (config.arch, config.width, config.num_classes) == (arch, WIDTH, 5)
    params = pretrained.convert(weights, config)
    apply, fns = jitted_apply(config)
    assert shapes(params) == shapes(jax.eval_shape(fns.init, jax.random.key(0)))
    raw = raw_images(rng, 3, config.image_size)
    assert_logits_close(np.asarray(apply(params, raw)), torchvision_forward(sd, arch, raw.astype(np.float64)))


def test_torch_save_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    sd = torchvision_state_dict("vgg19", 4, rng)
    path = tmp_path / "vgg19.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    config = pretrained.foreign_config(pretrained.read_weights(path), image_size=64)
    params = pretrained.import_params(path, config)
    apply, _ = jitted_apply(config)
    raw = raw_images(rng, 2, 64)
    ref = torchvision_forward(sd, "vgg19", raw.astype(np.float64))
    assert_logits_close(np.asarray(apply(params, raw)), ref)


def test_pth_without_torch_asks_for_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "vgg19.pth"
    path.write_bytes(b"PK\x03\x04 a torch.save zip archive")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r"ri_jax\[import-torch\]"):
        pretrained.read_weights(path)


@pytest.mark.parametrize("layout", ["keras1", "keras2", "model", "bare"])
def test_keras_h5_matches_keras_forward(tmp_path, layout):
    rng = np.random.default_rng(2)
    layers = keras_layers("vgg19", 2, 6, rng)
    path = tmp_path / "vgg19.h5"
    write_keras_h5(path, layers, "vgg19", layout)
    weights = pretrained.read_weights(path)
    config = pretrained.foreign_config(weights)
    assert (config.arch, config.width, config.image_size, config.num_classes) == ("vgg19", WIDTH, 64, 6)
    assert config.mean == pretrained.imagenet_normalization("keras")[0]
    params = pretrained.convert(weights, config)
    apply, _ = jitted_apply(config)
    raw = raw_images(rng, 3, 64)
    ref = keras_forward(layers, "vgg19", raw.astype(np.float64))
    assert_logits_close(np.asarray(apply(params, raw)), ref)


def test_keras_with_imagenet_mean_differs_only_on_the_border(tmp_path):
    """With our default (ImageNet) mean the folded bias is exact wherever conv_0 sees no padding."""
    rng = np.random.default_rng(3)
    layers = keras_layers("vgg11", 2, 3, rng)
    path = tmp_path / "vgg11.h5"
    write_keras_h5(path, layers, "vgg11", "keras2")
    weights = pretrained.read_weights(path)
    config = ModelConfig(arch="vgg11", width=WIDTH, image_size=64, num_classes=3)
    assert config.mean == IMAGENET_MEAN
    p = pretrained.convert(weights, config)["params"]["conv_0"]
    raw = raw_images(rng, 2, 64).astype(np.float64)
    normalised = (raw - np.array(config.mean)) / np.array(config.std)
    ours = conv_nhwc(normalised, np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64))
    ref = keras_first_conv(raw, *(a.astype(np.float64) for a in layers["block1_conv1"]))
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], **tol)
    border_gap = np.abs(ours - ref)[:, 0].max()
    assert border_gap > 1e-3 * np.abs(ref).max()  # the documented border difference is real


def test_import_params_replaces_the_classifier(tmp_path):
    rng = np.random.default_rng(4)
    layers = keras_layers("vgg11", 2, 7, rng)
    path = tmp_path / "w.h5"
    write_keras_h5(path, layers, "vgg11", "keras2")
    config = ModelConfig(arch="vgg11", width=WIDTH, image_size=64, num_classes=3)
    with pytest.raises(ValueError, match="key"):
        pretrained.import_params(path, config)
    params = pretrained.import_params(path, config, key=jax.random.key(0))["params"]
    full = pretrained.convert(pretrained.read_weights(path),
                              ModelConfig(arch="vgg11", width=WIDTH, image_size=64, num_classes=7))["params"]
    assert params["fc_2"]["kernel"].shape == (config.fc_width, 3)
    for name in full:
        if name != "fc_2":
            np.testing.assert_array_equal(params[name]["kernel"], full[name]["kernel"])
    assert shapes({"params": params}) == shapes(jax.eval_shape(make_vgg(config).init, jax.random.key(1)))


def test_import_weights_cli_writes_a_loadable_checkpoint(tmp_path):
    rng = np.random.default_rng(5)
    # Small (vgg11, 32 px): load_checkpoint initialises a template model eagerly.
    layers = keras_layers("vgg11", 1, 4, rng)
    path = tmp_path / "vgg11.h5"
    write_keras_h5(path, layers, "vgg11", "keras1")
    with pytest.raises(SystemExit, match="--torchvision"):
        import_weights.main(["--torchvision", str(path), "--out", str(tmp_path / "bad")])
    out = import_weights.main(["--keras-h5", str(path), "--out", str(tmp_path / "ckpt")])
    params, config, extra = load_checkpoint(out)
    assert extra["imported_from"]["source"] == "keras"
    assert (config.arch, config.image_size, config.num_classes) == ("vgg11", 32, 4)
    apply, _ = jitted_apply(config)
    raw = raw_images(rng, 2, 32)
    ref = keras_forward(layers, "vgg11", raw.astype(np.float64))
    assert_logits_close(np.asarray(apply(params, raw)), ref)
    with pytest.raises(SystemExit, match="--out"):
        import_weights.main(["--keras-h5", str(path), "--out", str(out)])


# ---------------------------------------------------------------- the two folds, many cases

@settings(max_examples=80, deadline=None)
@given(channels=st.integers(1, 4), side=st.integers(1, 8), pool=st.integers(1, 9),
       n_out=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_adaptive_pool_fold_matches_pool_then_chw_flatten(channels, side, pool, n_out, seed):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n_out, channels * pool * pool))
    x = rng.normal(size=(side, side, channels))
    folded = pretrained._fold_adaptive_pool(weight, channels, side, "test")
    ref = adaptive_avg_pool_nchw(x.transpose(2, 0, 1)[None], pool).reshape(-1) @ weight.T
    np.testing.assert_allclose(x.reshape(-1) @ folded, ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=80, deadline=None)
@given(source=st.sampled_from(sorted(pretrained.SOURCE_PREPROCESSING)), same_mean=st.booleans(),
       size=st.integers(3, 7), n_out=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_normalization_fold_matches_source_preprocessing(source, same_mean, size, n_out, seed):
    rng = np.random.default_rng(seed)
    pre = pretrained.SOURCE_PREPROCESSING[source]
    mean = np.array(pre.mean) if same_mean else rng.uniform(0.2, 0.8, 3)
    std = rng.uniform(0.1, 2.0, 3)
    kernel, bias = rng.normal(size=(3, 3, 3, n_out)), rng.normal(size=n_out)
    raw = rng.uniform(0, 1, (1, size, size, 3))
    source_input = ((raw - np.array(pre.mean)) / np.array(pre.std))[..., list(pre.order)]
    ref = conv_nhwc(source_input, kernel, bias)
    k, b = pretrained.fold_normalization(kernel, bias, pre, mean, std)
    ours = conv_nhwc((raw - mean) / std, k.astype(np.float64), b.astype(np.float64))
    tol = dict(rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], **tol)
    if same_mean:
        np.testing.assert_allclose(ours, ref, **tol)


# ---------------------------------------------------------------- classifier replacement

def test_replace_classifier():
    config = ModelConfig(arch="vgg11", width=WIDTH, image_size=32, num_classes=10)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype),
                          jax.eval_shape(make_vgg(config).init, jax.random.key(0)))
    new = pretrained.replace_classifier(params, 3, key=jax.random.key(1))
    again = pretrained.replace_classifier(params, 3, key=jax.random.key(1))
    other = pretrained.replace_classifier(params, 3, key=jax.random.key(2))
    fc = new["params"]["fc_2"]
    assert fc["kernel"].shape == (config.fc_width, 3) and fc["kernel"].dtype == jnp.float32
    np.testing.assert_array_equal(fc["bias"], np.zeros(3))
    np.testing.assert_array_equal(fc["kernel"], again["params"]["fc_2"]["kernel"])
    assert not np.allclose(fc["kernel"], other["params"]["fc_2"]["kernel"])
    assert np.isfinite(fc["kernel"]).all() and np.abs(fc["kernel"]).max() > 0
    assert params["params"]["fc_2"]["kernel"].shape == (config.fc_width, 10)  # input untouched
    for name in params["params"]:
        if name != "fc_2":
            assert new["params"][name] is params["params"][name]
    with pytest.raises(ValueError, match="num_classes"):
        pretrained.replace_classifier(params, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="params"):
        pretrained.replace_classifier({"params": {}}, 3, key=jax.random.key(0))


# ---------------------------------------------------------------- bad input

def test_load_imagenet_params_rejects_bad_path_and_config(tmp_path):
    vgg19 = ModelConfig(arch="vgg19", width=1.0, image_size=224, num_classes=2)
    bad_ext = tmp_path / "weights.npz"
    bad_ext.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.npz"):
        pretrained.load_imagenet_params(bad_ext, vgg19, key=jax.random.key(0))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        pretrained.load_imagenet_params(tmp_path / "missing.pth", vgg19, key=jax.random.key(0))
    fake_h5 = tmp_path / "fake.h5"
    fake_h5.write_text("not hdf5")
    with pytest.raises(ValueError, match="fake.h5.*signature"):
        pretrained.load_imagenet_params(fake_h5, vgg19, key=jax.random.key(0))
    real = tmp_path / "narrow.h5"
    write_keras_h5(real, keras_layers("vgg11", 2, 3, np.random.default_rng(0)), "vgg11", "keras2")
    for config in (ModelConfig(arch="vgg16", num_classes=2), ModelConfig(width=0.5, num_classes=2)):
        with pytest.raises(ValueError, match="config"):
            pretrained.load_imagenet_params(real, config, key=jax.random.key(0))


def test_mismatched_or_broken_weights_are_rejected(tmp_path):
    rng = np.random.default_rng(6)
    sd = torchvision_state_dict("vgg11", 3, rng)
    weights = pretrained.from_torchvision_state_dict(sd)
    with pytest.raises(ValueError, match="conv layer 0 kernel"):
        pretrained.convert(weights, ModelConfig(arch="vgg11", width=1 / 8, image_size=64, num_classes=3))
    with pytest.raises(ValueError, match="config"):
        pretrained.convert(weights, ModelConfig(arch="vgg13", width=WIDTH, image_size=64, num_classes=3))
    with pytest.raises(ValueError, match="running_mean.*batch-norm"):
        pretrained.from_torchvision_state_dict({**sd, "features.1.running_mean": np.zeros(4, np.float32)})
    without_head = {k: v for k, v in sd.items() if not k.startswith("classifier.6")}
    with pytest.raises(ValueError, match="classifier"):
        pretrained.from_torchvision_state_dict(without_head)
    broken = dict(sd)
    broken["features.0.bias"] = np.full_like(sd["features.0.bias"], np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        pretrained.convert(pretrained.from_torchvision_state_dict(broken),
                           ModelConfig(arch="vgg11", width=WIDTH, image_size=64, num_classes=3))

    layers = keras_layers("vgg11", 2, 3, rng)
    notop = tmp_path / "notop.h5"
    write_keras_h5(notop, {k: v for k, v in layers.items() if k.startswith("block")}, "vgg11", "keras2")
    with pytest.raises(ValueError, match="notop"):
        pretrained.read_weights(notop)
    theano = tmp_path / "th.h5"
    write_keras_h5(theano, {k: (v[0].transpose(3, 2, 0, 1), v[1]) if k.startswith("block") else v
                            for k, v in layers.items()}, "vgg11", "keras2")
    with pytest.raises(ValueError, match=r"\(3, 3, in, out\)"):
        pretrained.read_weights(theano)
    keras_weights = pretrained.read_weights(_written(tmp_path / "ok.h5", layers, "vgg11"))
    with pytest.raises(ValueError, match="image_size"):
        pretrained.foreign_config(keras_weights, image_size=224)


def _written(path, layers, arch):
    write_keras_h5(path, layers, arch, "keras2")
    return path
