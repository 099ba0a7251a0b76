"""The CAM baselines against pytorch-grad-cam on a numerically identical torch copy of the network.

``ri_jax.pretrained.to_torch_vgg`` copies the embedded checkpoint (VGG-19 width 1/8 at
96 px) into PyTorch; pytorch-grad-cam (``grad-cam`` on PyPI, tested with 1.5.7) then
explains the same test images with the same classes (the model's predictions), its
target layer being ψ (``features[-2]``, the last ReLU). For every pair the table gives
the largest absolute difference of the heat maps (both in [0, 1], image size) and of
the channel weights α relative to max |α| (pytorch-grad-cam's weights are captured from
its ``get_cam_weights``).

Rows:
  * ``forward``: logits and ψ of the torch copy against ``fns.apply`` / ``fns.features``;
  * ``Grad-CAM``, ``Grad-CAM++``: our defaults against pytorch-grad-cam's defaults, and
    Grad-CAM++ once more with pytorch-grad-cam's 1e-6 added to our α denominator;
  * ``Score-CAM …``: our Score-CAM with its options (``score``, ``masked_input``,
    ``mask_upsampling``) switched one by one to pytorch-grad-cam's choices, against
    pytorch-grad-cam's default ``ScoreCAM`` (logit target), and our probability score
    against its ``ClassifierOutputSoftmaxTarget``.

Needs PyTorch and pytorch-grad-cam, which the project itself never requires; without
them it prints why it skipped and exits 0. Run it in a virtualenv with the ``peer-cams``
extra, made as ``benchmarks/README.md`` says:

    PYTHONPATH=$PWD ../venv-peer/bin/python -m benchmarks.peer_cams [--images 4]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import HelpFormatter, DEFAULT_OUT, describe_machine, finish, format_table, record
from ri_jax.baselines.gradcam import class_score_grad, gradcam_weights_batch
from ri_jax.baselines.gradcam_pp import gradcam_pp_weights_batch
from ri_jax.baselines.scorecam import scorecam_weights_batch
from ri_jax.heatmaps import cam

# (row name, our Score-CAM options, pytorch-grad-cam target: "logit" or "softmax")
SCORECAM_VARIANTS = (
    ("Score-CAM (ours: defaults)", {}, "logit"),
    ("Score-CAM (ours: score=logit)", {"score": "logit"}, "logit"),
    ("Score-CAM (ours: score=logit, masked_input=normalised)",
     {"score": "logit", "masked_input": "normalised"}, "logit"),
    ("Score-CAM (ours: all three as pytorch-grad-cam)",
     {"score": "logit", "masked_input": "normalised", "mask_upsampling": "align_corners"}, "logit"),
    ("Score-CAM (ours: probability, normalised, align_corners) vs softmax target",
     {"masked_input": "normalised", "mask_upsampling": "align_corners"}, "softmax"),
)


def peer_modules() -> tuple[Any, Any] | str:
    """(torch, pytorch_grad_cam) or the reason they cannot be imported."""
    try:
        import torch
        import pytorch_grad_cam
    except ImportError as e:
        return f"{e.name or e} is not installed"
    return torch, pytorch_grad_cam


class Comparison(NamedTuple):
    """One row: ours against the peer.

    Attributes:
      name: what is compared.
      map_max_abs: largest |ours − peer| over the heat maps (None for ``forward``).
      weights_max_rel: largest |α_ours − α_peer| / max |α_peer| (``forward``: ψ's, absolute).
      logits_max_abs: for ``forward`` only.
    """

    name: str
    map_max_abs: float | None
    weights_max_rel: float
    logits_max_abs: float | None = None


def _captured(cls):
    """A pytorch-grad-cam CAM class that keeps the channel weights it computed."""
    class Captured(cls):
        def get_cam_weights(self, *args, **kwargs):
            self.captured_weights = np.asarray(super().get_cam_weights(*args, **kwargs))
            return self.captured_weights
    return Captured


def _peer_cam(gc, torch, cls_name: str, model, nchw: np.ndarray, classes: np.ndarray,
              target: str = "logit") -> tuple[np.ndarray, np.ndarray]:
    from pytorch_grad_cam.utils.model_targets import (ClassifierOutputSoftmaxTarget,
                                                      ClassifierOutputTarget)
    make_target = ClassifierOutputTarget if target == "logit" else ClassifierOutputSoftmaxTarget
    cls = _captured(getattr(gc, cls_name))
    with cls(model=model, target_layers=[model.features[-2]]) as explainer:
        explainer.batch_size = 64
        maps = explainer(input_tensor=torch.from_numpy(nchw),
                         targets=[make_target(int(c)) for c in classes])
        return np.asarray(maps), explainer.captured_weights


def _rel(ours: np.ndarray, peer: np.ndarray) -> float:
    return float(np.max(np.abs(ours - peer)) / max(float(np.max(np.abs(peer))), 1e-30))


def _gradcam_pp_with_eps(head, psi, class_idx, eps: float = 1e-6):
    """pytorch-grad-cam's Grad-CAM++ weights: a = g² / (2g² + Σ A · g³ + eps), 0 where g = 0."""
    g = class_score_grad(head, psi, class_idx)
    a = g ** 2 / (2 * g ** 2 + jnp.sum(psi, axis=(0, 1)) * g ** 3 + eps)
    return jnp.sum(jnp.maximum(g, 0.0) * jnp.where(g != 0, a, 0.0), axis=(0, 1))


def compare(fns, params, config, raw: np.ndarray) -> list[Comparison]:
    """Every comparison of the module docstring on raw images [N, S, S, 3].

    Raises:
      ImportError: torch or pytorch-grad-cam is missing.
    """
    found = peer_modules()
    if isinstance(found, str):
        raise ImportError(found)
    torch, gc = found
    from ri_jax.pretrained import to_torch_vgg

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = to_torch_vgg(params, config)
    size = config.image_size
    normalised = np.asarray(fns.normalize(jnp.asarray(raw)), np.float32)
    nchw = np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))
    psi = fns.features(params, jnp.asarray(normalised))
    logits = fns.apply(params, jnp.asarray(normalised))
    classes = np.asarray(jnp.argmax(logits, axis=-1))
    with torch.no_grad():
        torch_psi = model.features[:-1](torch.from_numpy(nchw)).numpy().transpose(0, 2, 3, 1)
        torch_logits = model(torch.from_numpy(nchw)).numpy()
    rows = [Comparison("forward (psi abs, logits abs)", None,
                       float(np.max(np.abs(torch_psi - np.asarray(psi)))),
                       float(np.max(np.abs(torch_logits - np.asarray(logits)))))]

    head = functools.partial(fns.head, params)
    forward = jax.jit(functools.partial(fns.apply, params))
    draw = jax.vmap(cam, in_axes=(0, 0, None))
    for name, cls_name, weights_fn in (("Grad-CAM", "GradCAM", gradcam_weights_batch),
                                       ("Grad-CAM++", "GradCAMPlusPlus", gradcam_pp_weights_batch)):
        alpha = weights_fn(head, psi, jnp.asarray(classes))
        peer_maps, peer_alpha = _peer_cam(gc, torch, cls_name, model, nchw, classes)
        ours = np.asarray(draw(alpha, psi, size))
        rows.append(Comparison(name, float(np.max(np.abs(ours - peer_maps))),
                               _rel(np.asarray(alpha), peer_alpha)))
    # Grad-CAM++ again with pytorch-grad-cam's 1e-6 added to the α denominator: if that
    # epsilon is the whole difference, this row agrees to float32 precision.
    alpha = jax.vmap(functools.partial(_gradcam_pp_with_eps, head))(psi, jnp.asarray(classes))
    peer_maps, peer_alpha = _peer_cam(gc, torch, "GradCAMPlusPlus", model, nchw, classes)
    rows.append(Comparison("Grad-CAM++ (ours + the peer's 1e-6 in the denominator)",
                           float(np.max(np.abs(np.asarray(draw(alpha, psi, size)) - peer_maps))),
                           _rel(np.asarray(alpha), peer_alpha)))
    peers = {t: _peer_cam(gc, torch, "ScoreCAM", model, nchw, classes, target=t)
             for t in ("logit", "softmax")}
    for name, options, target in SCORECAM_VARIANTS:
        alpha = scorecam_weights_batch(forward, fns.normalize, jnp.asarray(raw), psi,
                                       jnp.asarray(classes), **options)
        peer_maps, peer_alpha = peers[target]
        ours = np.asarray(draw(alpha, psi, size))
        rows.append(Comparison(name, float(np.max(np.abs(ours - peer_maps))),
                               _rel(np.asarray(alpha), peer_alpha)))
    return rows


def parse_args(argv=None, description: str = __doc__) -> argparse.Namespace:
    """``--images``, ``--seed``, ``--out`` (shared with ``peer_road``, whose docstring it shows)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=4, help="embedded test images compared")
    p.add_argument("--seed", type=int, default=0, help="which test images (a seeded sample)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the JSON record")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images: must be >= 1, got {args.images}")
    return args


def embedded_test_images(images: int, seed: int):
    """``(fns, params, config, raw [images, S, S, 3])``: the embedded checkpoint and a seeded
    sample of its test images."""
    from ri_jax.checkpoint import load_checkpoint
    from ri_jax.data import load_dataset, sample_count
    from ri_jax.models.vgg import make_vgg

    params, config, _ = load_checkpoint()
    test = load_dataset("default", "test", image_size=config.image_size)
    return (make_vgg(config), params, config,
            test.raw(np.sort(sample_count(len(test), images, seed=seed))))


def main(argv=None) -> list[Comparison] | None:
    args = parse_args(argv)
    found = peer_modules()
    if isinstance(found, str):
        print(f"SKIP peer_cams: {found}; install torch and grad-cam (pytorch-grad-cam) to "
              "compare the CAM baselines with pytorch-grad-cam")
        return None
    fns, params, config, raw = embedded_test_images(args.images, args.seed)
    rec = record("peer_cams", {"images": args.images, "seed": args.seed,
                               "checkpoint": "embedded default",
                               "pytorch_grad_cam": importlib.metadata.version("grad-cam"),
                               "torch": found[0].__version__})
    rows = compare(fns, params, config, raw)
    rec["rows"] = [r._asdict() for r in rows]
    rec["notes"] = ["map_max_abs: heat maps in [0, 1] at image size; weights_max_rel: channel "
                    "weights relative to the peer's largest (forward row: ψ absolute)"]
    print(describe_machine(rec["machine"]))
    print(format_table(rec["rows"], list(Comparison._fields)))
    finish(rec, args.out)
    return rows


if __name__ == "__main__":
    main()
