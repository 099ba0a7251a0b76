"""ψ and logits for a whole image set, batched, with an on-disk cache.

Feature extraction is the expensive first stage of every experiment, so its
output is cached and long runs resume from it. A cache file is named by the
checkpoint parameters, the model's input normalisation, the dataset, split, image
size and indices, and records a fingerprint of the image files' contents
(``ri_jax.data.content_fingerprint``). Files replaced under the same names, or an
unreadable (e.g. truncated) cache file, are recomputed with a ``FeatureCacheWarning``
naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from ri_jax.data import ImageSet, content_fingerprint
from ri_jax.files import atomic_path, name_bytes
from ri_jax.model import Model


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


class FeatureCacheWarning(UserWarning):
    """A cached feature file was stale or unreadable and is being recomputed."""


@functools.partial(jax.jit, static_argnames="model")
def _forward(model: Model, raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    psi = model.features(model.normalize(raw))
    return psi, model.head(psi)


def compute_features(model: Model, images: ImageSet,
                     indices: np.ndarray | None = None, *, batch_size: int = 128,
                     cache_dir: str | Path | None = None, progress: bool = True,
                     desc: str = "features") -> Features:
    """ψ and logits for ``images[indices]`` in fixed-size batches.

    Args:
      model: the ``ri_jax.model.Model``.
      images: the image set.
      indices: which images (default all), in this order.
      batch_size: images per forward pass; the last batch is padded so nothing recompiles.
      cache_dir: if given, results are stored there and reused by later calls with the same
        model (its ``fingerprint``), data and indices; a model without a fingerprint
        is never cached.
      progress: show a progress bar.

    Returns:
      ``Features`` for the requested images.
    """
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    cache_file = content = None
    if cache_dir is not None and model.fingerprint is not None:
        # Normalisation is part of ψ but not of the weights: a probe of it joins the key.
        probe = np.asarray(model.normalize(np.full((3,), 0.5, np.float32)), np.float32)
        # name_bytes: a data path may hold undecodable bytes (surrogate escapes).
        key = hashlib.sha256(
            name_bytes(f"{model.fingerprint}|{images.name}|{images.split}|"
                       f"{images.image_size}|") + probe.tobytes() + idx.tobytes()).hexdigest()[:24]
        cache_file = Path(cache_dir) / f"features-{key}.npz"
        content = content_fingerprint(images, idx)
        cached = _read_cache(cache_file, content, len(idx))
        if cached is not None:
            return cached

    psis, logits = [], []
    for start in tqdm(range(0, len(idx), batch_size), desc=desc, disable=not progress,
                      leave=False):
        chunk = idx[start:start + batch_size]
        raw = images.raw(chunk)
        pad = batch_size - len(chunk)
        if pad:
            raw = np.concatenate([raw, np.zeros((pad,) + raw.shape[1:], raw.dtype)])
        p, l = jax.device_get(_forward(model, raw))
        psis.append(p[:len(chunk)])
        logits.append(l[:len(chunk)])
    out = Features(np.concatenate(psis).astype(np.float32), np.concatenate(logits).astype(np.float32),
                   images.labels[idx].astype(np.int32), idx)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            np.savez(tmp, content=np.array(content), **out._asdict())
    return out


def _read_cache(cache_file: Path, content: str, count: int) -> Features | None:
    """The cached features, or None (with a warning naming the file) if stale or unreadable."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            stored = str(z["content"]) if "content" in z.files else None
            feats = Features(z["psi"], z["logits"], z["labels"], z["indices"])
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as e:
        warnings.warn(f"{cache_file}: unreadable feature cache ({type(e).__name__}: {e}); "
                      "recomputing", FeatureCacheWarning, stacklevel=3)
        return None
    if stored != content:
        warnings.warn(f"{cache_file}: the images changed since these features were cached; "
                      "recomputing", FeatureCacheWarning, stacklevel=3)
        return None
    if any(len(a) != count for a in feats):
        warnings.warn(f"{cache_file}: holds {len(feats.indices)} images, expected {count}; "
                      "recomputing", FeatureCacheWarning, stacklevel=3)
        return None
    return feats
