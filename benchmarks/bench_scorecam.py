"""Score-CAM speed: ri-jax against pytorch-grad-cam on the same network and images (optional).

``ri_jax.pretrained.to_torch_vgg`` copies the embedded checkpoint (VGG-19 width 1/8
at 96 px) into PyTorch; the copy's logits and ψ are checked against ri-jax's first
(the run stops if they differ by more than ``--tolerance``). Both then explain the
same embedded test images for the model's predicted classes, from the raw images
to the heat maps:

  * ri-jax: ψ and classes by one forward pass, ``protocols.methods.cam_weights("Score-CAM")``
    (its default ``channel_chunk``, which fits every channel of this model in one pass,
    and 32 channels per pass), ``heatmaps.cam``;
  * peer: ``pytorch_grad_cam.ScoreCAM`` (target layer ψ = ``features[-2]``, the softmax
    target so both score the class probability) with its default ``batch_size`` of
    masked images per forward pass and with the same value as ours.

Each is timed after one untimed run (compilation, torch's first-call setup); the
row reports the median of ``--repeat`` runs and the peer's best time divided by it.
Score-CAM is one forward pass per (image, channel) in both, so the record also holds
the roofline that bounds the ratio: the plain forward pass in both frameworks, its
GFLOP/s (FLOPs counted from the config) beside a dense float32 matmul's, measured in
the same run as this CPU's practical peak, and what 2× the peer would need.
Both use every core they see. Needs torch and pytorch-grad-cam, which ri-jax never
requires; without them it prints why it skipped and exits 0. Run it in a virtualenv
with the ``peer-cams`` extra, made as ``benchmarks/README.md`` says:

    PYTHONPATH=$PWD ../venv-peer/bin/python -m benchmarks.bench_scorecam [--images 64]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import HelpFormatter, DEFAULT_OUT, describe_machine, finish, format_table, record
from benchmarks.report import SCORECAM_TARGET, roofline_line
from ri_jax.baselines import scorecam_chunk_size
from ri_jax.protocols.methods import cam_weights
from ri_jax.heatmaps import cam
from ri_jax.models.vgg import VGG_LAYERS, ModelConfig


def peer_modules():
    """(torch, pytorch_grad_cam) or the reason they cannot be imported."""
    try:
        import torch
        import pytorch_grad_cam
    except ImportError as e:
        return f"{e.name or e} is not installed"
    return torch, pytorch_grad_cam


def _timed(fn, repeat: int) -> tuple[list[float], list[float], object]:
    out = fn()  # untimed: compilation / first-call setup
    walls, cpus = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return walls, cpus, out


def forward_flops(config: ModelConfig) -> int:
    """Floating-point operations of one image's forward pass, two per multiply-add.

    The usual count: every 3×3 convolution at every output pixel (padding included) and
    the three dense layers; biases, ReLUs and pools are left out (under 1 % here).
    """
    side, inputs, flops = config.image_size, 3, 0
    channels = iter(config.conv_channels)
    for layer in VGG_LAYERS[config.arch]:
        if layer == "M":
            side //= 2
        else:
            outputs = next(channels)
            flops += 2 * 9 * inputs * outputs * side * side
            inputs = outputs
    widths = (side * side * inputs, config.fc_width, config.fc_width, config.num_classes)
    return flops + sum(2 * a * b for a, b in zip(widths, widths[1:]))


def matmul_gflops(torch, n: int, repeat: int) -> dict:
    """GFLOP/s of one dense float32 n×n matmul in XLA and in torch: the CPU's practical peak."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    xa, ta = jnp.asarray(a), torch.from_numpy(a)
    matmul = jax.jit(jnp.matmul)
    xla_s = min(_timed(lambda: jax.block_until_ready(matmul(xa, xa)), repeat)[0])
    torch_s = min(_timed(lambda: torch.mm(ta, ta), repeat)[0])
    return {"n": n, "xla": 2 * n**3 / xla_s / 1e9, "torch": 2 * n**3 / torch_s / 1e9}


def roofline(flops: int, peak: dict, forward: list[dict], peer_wall: float,
             masked_forwards: int, target: float) -> dict:
    """What the forward rows and the peer's time mean against the matmul peak.

    Args:
      flops: FLOPs of one forward pass (``forward_flops``).
      peak: ``matmul_gflops``'s answer.
      forward: ``forward_rates``'s rows; each gains both frameworks' GFLOP/s and their
        share of their own framework's matmul peak.
      peer_wall: the peer's best Score-CAM wall time, seconds.
      masked_forwards: forward passes in one Score-CAM run (images × channels).
      target: the speed-up asked of ri-jax over the peer.

    Returns:
      The summary: the peer's milliseconds per masked forward pass, and the GFLOP/s and
      share of XLA's matmul peak that ``target``× the peer would need if the forward
      passes took all of ri-jax's time (they take most).
    """
    for row in forward:
        for side, framework in (("ri_jax", "xla"), ("torch", "torch")):
            rate = flops / (row[f"{side}_ms_per_image"] * 1e-3) / 1e9
            row[f"{side}_gflops"] = rate
            row[f"{side}_of_matmul_peak"] = rate / peak[framework]
    peer_ms = 1e3 * peer_wall / masked_forwards
    needed = target * flops / (peer_ms * 1e-3) / 1e9
    return {"forward_mflops_per_image": flops / 1e6, "matmul": peak,
            "peer_ms_per_masked_forward": peer_ms, "target": target,
            "needed_ms_per_masked_forward": peer_ms / target, "needed_gflops": needed,
            "needed_of_xla_matmul_peak": needed / peak["xla"]}


def forward_rates(fns, params, model, torch, normalised: np.ndarray, repeat: int,
                  batches=(16, 32, 64, 128)) -> list[dict]:
    """Milliseconds per image of the plain forward pass in ri-jax and in the torch copy."""
    apply = jax.jit(lambda x: fns.apply(params, x))
    rows = []
    for batch in batches:
        x = np.resize(normalised, (batch,) + normalised.shape[1:])
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            jax_s = min(_timed(lambda: jax.block_until_ready(apply(x)), repeat)[0])
            torch_s = min(_timed(lambda: model(xt), repeat)[0])
        rows.append({"batch": batch, "ri_jax_ms_per_image": 1e3 * jax_s / batch,
                     "torch_ms_per_image": 1e3 * torch_s / batch,
                     "torch_over_ri_jax": torch_s / jax_s})
    return rows


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--images", type=int, default=64, help="embedded test images explained")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each method")
    p.add_argument("--chunk-size", type=int, default=16, help="ri-jax inputs per jitted call")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest |logit| and |ψ| difference accepted between the two copies")
    p.add_argument("--seed", type=int, default=0, help="which test images (a seeded sample)")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="side of the square float32 matmul that measures the CPU's peak")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON record")
    p.add_argument("--name", default="scorecam", help="JSON file name (without .json)")
    args = p.parse_args(argv)
    found = peer_modules()
    if isinstance(found, str):
        print(f"SKIP bench_scorecam: {found}; install torch and grad-cam (pytorch-grad-cam) "
              "to time Score-CAM against pytorch-grad-cam")
        return None
    torch, gc = found
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from ri_jax.checkpoint import load_checkpoint
    from ri_jax.data import load_dataset, sample_count
    from ri_jax.models.vgg import make_vgg, vgg_model
    from ri_jax.pretrained import to_torch_vgg

    params, config, _ = load_checkpoint()
    fns = make_vgg(config)
    interface = vgg_model(params, config)
    test = load_dataset("default", "test", image_size=config.image_size)
    raw = np.asarray(test.raw(np.sort(sample_count(len(test), args.images, seed=args.seed))),
                     np.float32)
    rec = record("scorecam", {"images": len(raw), "repeat": args.repeat, "seed": args.seed,
                              "chunk_size": args.chunk_size, "checkpoint": "embedded default",
                              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                              "pytorch_grad_cam": importlib.metadata.version("grad-cam")})
    print(describe_machine(rec["machine"]), "| load", rec["load_before"])
    model = to_torch_vgg(params, config)
    size = config.image_size
    channels = config.feature_shape[-1]

    normalised = np.asarray(fns.normalize(jnp.asarray(raw)), np.float32)
    nchw = torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        torch_psi = model.features[:-1](nchw).numpy().transpose(0, 2, 3, 1)
        torch_logits = model(nchw).numpy()
    psi_diff = float(np.max(np.abs(torch_psi - np.asarray(fns.features(params, normalised)))))
    logit_diff = float(np.max(np.abs(torch_logits - np.asarray(fns.apply(params, normalised)))))
    rec["copy_check"] = {"psi_max_abs": psi_diff, "logits_max_abs": logit_diff}
    print(f"torch copy: max |Δψ| = {psi_diff:.2e}, max |Δlogits| = {logit_diff:.2e}")
    if max(psi_diff, logit_diff) > args.tolerance:
        raise SystemExit(f"the torch copy differs from the Flax model by more than "
                         f"--tolerance {args.tolerance}; not timing")

    forward = jax.jit(lambda x: (fns.features(params, x), fns.apply(params, x)))
    draw = jax.jit(jax.vmap(cam, in_axes=(0, 0, None)), static_argnums=2)

    def ours(channel_chunk):
        def run():
            psi, logits = forward(jnp.asarray(fns.normalize(jnp.asarray(raw))))
            classes = np.asarray(jnp.argmax(logits, axis=-1))
            alphas = cam_weights("Score-CAM", interface, raw, np.asarray(psi), classes,
                                 chunk_size=args.chunk_size, channel_chunk=channel_chunk)
            return np.asarray(draw(jnp.asarray(alphas), psi, size)), classes
        return run

    classes = np.asarray(jnp.argmax(fns.apply(params, normalised), axis=-1))

    def peer(batch_size):
        def run():
            with gc.ScoreCAM(model=model, target_layers=[model.features[-2]]) as explainer:
                explainer.batch_size = batch_size
                return explainer(input_tensor=nchw,
                                 targets=[ClassifierOutputSoftmaxTarget(int(c)) for c in classes])
        return run

    methods = {
        f"ri-jax Score-CAM (the default: {scorecam_chunk_size(channels, size)} channels "
        "per pass)": ours(None),
        "ri-jax Score-CAM (channel_chunk 32)": ours(32),
        "peer: pytorch-grad-cam ScoreCAM (batch_size 16, its default)": peer(16),
        "peer: pytorch-grad-cam ScoreCAM (batch_size 32)": peer(32),
    }
    timings = {}
    for label, fn in methods.items():
        walls, cpus, _ = _timed(fn, args.repeat)
        timings[label] = (float(np.median(walls)), min(cpus))
        print(f"{label}: {np.median(walls):.2f} s wall, {min(cpus):.2f} s CPU", flush=True)
    peer_wall = min(w for label, (w, _) in timings.items() if label.startswith("peer"))
    peer_cpu = min(c for label, (_, c) in timings.items() if label.startswith("peer"))
    flops = forward_flops(config)
    rec["rows"] = [{"method": label, "wall_s": w, "cpu_s": c, "images_per_s": len(raw) / w,
                    "masked_forward_gflops": len(raw) * channels * flops / w / 1e9,
                    "peer_best_over_this_wall": peer_wall / w,
                    "peer_best_over_this_cpu": peer_cpu / c}
                   for label, (w, c) in timings.items()]
    rec["notes"].append(
        f"{len(raw)} embedded test images at {size} px, {channels} channels of ψ, so "
        f"{len(raw) * channels} masked forward passes per method; median wall / best CPU of "
        f"{args.repeat} runs after an untimed one; every method starts from the raw images "
        "and ends with the heat maps; the peer's best row is the baseline")
    print(format_table(rec["rows"], ["method", "wall_s", "cpu_s", "peer_best_over_this_wall"]))
    rec["forward"] = forward_rates(fns, params, model, torch, normalised, args.repeat)
    rec["roofline"] = roofline(flops, matmul_gflops(torch, args.matmul_size, args.repeat),
                               rec["forward"], peer_wall, len(raw) * channels, SCORECAM_TARGET)
    print(format_table(rec["forward"], ["batch", "ri_jax_ms_per_image", "torch_ms_per_image",
                                        "ri_jax_of_matmul_peak", "torch_of_matmul_peak"]))
    print(roofline_line(rec["roofline"]))
    rec["notes"].append(
        "Score-CAM is one forward pass per (image, channel) in both, so its ratio is bounded "
        "by the two frameworks' forward throughput on this CPU: the forward table times the "
        "plain model (no masks) at each batch size, best of --repeat runs after one untimed; "
        "its GFLOP/s count the config's FLOPs (forward_flops) and are compared with a dense "
        f"float32 {args.matmul_size}² matmul in each framework, timed the same way")
    finish(rec, args.out, args.name)
    return rec


if __name__ == "__main__":
    main()
