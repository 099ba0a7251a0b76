"""ψ and logits for a whole image set, batched, with an on-disk cache.

Feature extraction is the expensive first stage of every experiment, so its
output is cached per (checkpoint parameters, dataset, split, image indices) and
long runs resume from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import numpy as np
from tqdm.auto import tqdm

from ri_jax.data import ImageSet
from ri_jax.models.vgg import ModelFns


class Features(NamedTuple):
    """Per-image model outputs.

    Attributes:
      psi: float32[N, h, w, c] feature maps ψ.
      logits: float32[N, C] head outputs G(ψ).
      labels: int32[N] ground truth.
      indices: int64[N] positions in the image set they came from.
    """

    psi: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logits, axis=-1).astype(np.int32)


def params_fingerprint(params: Any) -> str:
    """Short hash of a parameter pytree (cache key component)."""
    return hashlib.sha256(flax.serialization.to_bytes(jax.device_get(params))).hexdigest()[:16]


def compute_features(fns: ModelFns, params: Any, images: ImageSet,
                     indices: np.ndarray | None = None, *, batch_size: int = 128,
                     cache_dir: str | Path | None = None, progress: bool = True,
                     desc: str = "features") -> Features:
    """ψ and logits for ``images[indices]`` in fixed-size batches.

    Args:
      fns, params: the model.
      images: the image set.
      indices: which images (default all), in this order.
      batch_size: images per forward pass; the last batch is padded so nothing recompiles.
      cache_dir: if given, results are stored there and reused by later calls with the same
        parameters, data and indices.
      progress: show a progress bar.

    Returns:
      ``Features`` for the requested images.
    """
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(
            f"{params_fingerprint(params)}|{images.name}|{images.split}|{images.image_size}|".encode()
            + idx.tobytes()).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"features-{key}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                return Features(z["psi"], z["logits"], z["labels"], z["indices"])

    @jax.jit
    def forward(raw):
        psi = fns.features(params, fns.normalize(raw))
        return psi, fns.head(params, psi)

    psis, logits = [], []
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress,
                      leave=False):
        chunk = idx[start:start + batch_size]
        raw = images.raw(chunk)
        pad = batch_size - len(chunk)
        if pad:
            raw = np.concatenate([raw, np.zeros((pad,) + raw.shape[1:], raw.dtype)])
        p, l = jax.device_get(forward(raw))
        psis.append(p[:len(chunk)])
        logits.append(l[:len(chunk)])
    out = Features(np.concatenate(psis).astype(np.float32), np.concatenate(logits).astype(np.float32),
                   images.labels[idx].astype(np.int32), idx)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **out._asdict())
        tmp.replace(cache_file)
    return out
