"""ROAD (``ri_jax.faithfulness.road``) against pytorch-grad-cam 1.5.7's ROAD classes.

The same network on both sides (``ri_jax.pretrained.to_torch_vgg``'s torch copy of the
embedded checkpoint, VGG-19 width 1/8 at 96 px), the same images (seeded embedded test
images), the same maps and the same classes (the model's predictions, scored as softmax
probabilities: pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``). Our side runs with
``rule="percentile"`` (the peer's threshold ``map < np.percentile(map, p)``).

The noise is made identical by switching it off on both sides: ``noise=0`` here, and the
default of pytorch-grad-cam's ``NoisyLinearImputer(noise=0.01)`` set to 0 for this run (its
ROAD classes build their imputer with the default; the noise is i.i.d. N(0, 0.01²) added
to the imputed pixels after the solve, so it is not part of what is being compared).

Maps: ``Grad-CAM`` (our Grad-CAM of the predicted class: ReLU zeros, so many ties at low
percentiles) and ``Grad-CAM + jitter`` (the same plus 1e-3 · U[0, 1), tie-free). A map
whose p-th percentile is its minimum removes every pixel; the peer's system is then
singular (SciPy returns NaN), ours imputes the mean colour: such (image, percentile)
cells are counted and left out of the differences.

Rows:
  * ``imputation``: largest |ours − peer| over the imputed normalised images, MoRF and
    LeRF at every percentile;
  * ``ROADMostRelevantFirst(p)`` / ``ROADLeastRelevantFirst(p)`` for each p, and
    ``ROADCombined`` (percentiles 10 … 90): largest |ours − peer| of the per-image scores.

Needs PyTorch and pytorch-grad-cam (the ``peer-cams`` extra); without them it prints why it
skipped and exits 0:

    PYTHONPATH=$PWD ../venv-peer/bin/python -m benchmarks.peer_road [--images 4]
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import describe_machine, finish, format_table, record
from benchmarks.peer_cams import embedded_test_images, parse_args, peer_modules
from ri_jax import faithfulness
from ri_jax.baselines.gradcam import gradcam_weights_batch
from ri_jax.heatmaps import cam

JITTER = 1e-3


class RoadComparison(NamedTuple):
    """One row: ours against the peer.

    Attributes:
      maps: which heat maps.
      name: what is compared.
      max_abs: largest |ours − peer| over the compared cells.
      cells: (image, percentile) cells compared.
      singular: cells left out because every pixel was removed (peer: NaN).
    """

    maps: str
    name: str
    max_abs: float
    cells: int
    singular: int


def _diff(ours: np.ndarray, peer: np.ndarray) -> tuple[float, int, int]:
    ok = np.isfinite(peer)
    return (float(np.max(np.abs(ours[ok] - peer[ok]))) if ok.any() else float("nan"),
            int(ok.sum()), int((~ok).sum()))


def compare(fns, params, config, raw: np.ndarray,
            percentiles=faithfulness.ROAD_PERCENTILES) -> list[RoadComparison]:
    """Every comparison of the module docstring on raw images [N, S, S, 3].

    Raises:
      ImportError: torch or pytorch-grad-cam is missing.
    """
    found = peer_modules()
    if isinstance(found, str):
        raise ImportError(found)
    torch, _ = found
    from pytorch_grad_cam.metrics import road as peer_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from ri_jax.pretrained import to_torch_vgg

    model = to_torch_vgg(params, config).eval()
    predict = jax.jit(functools.partial(fns.apply, params))
    normalised = np.asarray(fns.normalize(jnp.asarray(raw)), np.float32)
    nchw = torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    psi = fns.features(params, jnp.asarray(normalised))
    classes = np.asarray(jnp.argmax(predict(jnp.asarray(normalised)), axis=-1)).astype(np.int32)
    alpha = gradcam_weights_batch(functools.partial(fns.head, params), psi, jnp.asarray(classes))
    gradcam = np.asarray(jax.vmap(cam, in_axes=(0, 0, None))(alpha, psi, config.image_size),
                         np.float32)
    jitter = np.random.default_rng(0).random(gradcam.shape).astype(np.float32) * JITTER
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    defaults = peer_road.NoisyLinearImputer.__init__.__defaults__
    peer_road.NoisyLinearImputer.__init__.__defaults__ = (0.0,) + defaults[1:]  # no noise
    rows = []
    try:
        for label, maps in (("Grad-CAM", gradcam), ("Grad-CAM + jitter", gradcam + jitter)):
            ours = faithfulness.road(predict, fns.normalize, raw, maps, percentiles=percentiles,
                                     rule="percentile", noise=0.0, classes=classes)
            # The imputed images themselves, every order and percentile.
            imputer = peer_road.NoisyLinearImputer(noise=0.0)
            gaps, skipped, cells = [], 0, 0
            for lerf in (False, True):
                for p in percentiles:
                    for b in range(len(raw)):
                        removed = faithfulness.road_removed(jnp.asarray(maps[b]), p,
                                                            least_relevant=lerf, rule="percentile")
                        removed = np.asarray(removed)
                        if removed.all():
                            skipped += 1
                            continue
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            theirs = imputer(nchw[b], torch.from_numpy((~removed).astype(np.float32)))
                        mine = faithfulness.impute(jnp.asarray(normalised[b]), jnp.asarray(removed))
                        gaps.append(np.max(np.abs(np.asarray(mine)
                                                  - theirs.numpy().transpose(1, 2, 0))))
                        cells += 1
            rows.append(RoadComparison(label, "imputation (normalised pixels)",
                                       float(max(gaps)), cells, skipped))
            morf_all, lerf_all = [], []
            for j, p in enumerate(percentiles):
                for name, cls, mine, store in (
                        ("ROADMostRelevantFirst", peer_road.ROADMostRelevantFirst, ours.morf, morf_all),
                        ("ROADLeastRelevantFirst", peer_road.ROADLeastRelevantFirst, ours.lerf, lerf_all)):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        theirs = np.asarray(cls(percentile=p)(nchw, maps, targets, model),
                                            np.float64)
                    store.append(theirs)
                    rows.append(RoadComparison(label, f"{name}({p:g})", *_diff(mine[:, j], theirs)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                combined = np.asarray(peer_road.ROADCombined(percentiles=list(percentiles))(
                    nchw, maps, targets, model), np.float64)
            rows.append(RoadComparison(label, "ROADCombined", *_diff(ours.combined, combined)))
    finally:
        peer_road.NoisyLinearImputer.__init__.__defaults__ = defaults
    return rows


def main(argv=None) -> list[RoadComparison] | None:
    args = parse_args(argv, description=__doc__)
    found = peer_modules()
    if isinstance(found, str):
        print(f"SKIP peer_road: {found}; install torch and grad-cam (pytorch-grad-cam) to "
              "compare ROAD with pytorch-grad-cam")
        return None
    fns, params, config, raw = embedded_test_images(args.images, args.seed)
    rec = record("peer_road", {"images": args.images, "seed": args.seed,
                               "checkpoint": "embedded default",
                               "percentiles": list(faithfulness.ROAD_PERCENTILES),
                               "noise": "0 on both sides (ours noise=0; the peer's "
                                        "NoisyLinearImputer default set to 0)",
                               "rule": "percentile (the peer's threshold)",
                               "target": "ClassifierOutputSoftmaxTarget(predicted class)",
                               "pytorch_grad_cam": importlib.metadata.version("grad-cam"),
                               "torch": found[0].__version__})
    rows = compare(fns, params, config, raw)
    rec["rows"] = [r._asdict() for r in rows]
    largest = max(r.max_abs for r in rows if r.name != "imputation (normalised pixels)")
    rec["largest_score_difference"] = largest
    rec["notes"] = [f"largest |ours - pytorch-grad-cam| over every ROAD score: {largest:.3g} "
                    "(probability units)",
                    "singular: (image, percentile) cells where every pixel is removed; the "
                    "peer's system is singular there (NaN), ours imputes the mean colour"]
    print(describe_machine(rec["machine"]))
    print(format_table(rec["rows"], list(RoadComparison._fields)))
    print(rec["notes"][0])
    finish(rec, args.out)
    return rows


if __name__ == "__main__":
    main()
