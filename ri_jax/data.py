"""Labelled image sets behind one function, ``load_dataset(spec, split)``.

Three sources (§6.2):
  * ``"default"`` — the embedded ASIRRA subset (cats vs dogs, 96×96), shipped in the package;
  * a folder laid out as ``root/<split>/<class>/<image>`` (how the paper's Kaggle sets unpack);
  * ``"tfds:NAME"`` — a TensorFlow Datasets name read through ``tfds.data_source``
    (array_record, no TensorFlow needed once the dataset is prepared).

Images are decoded lazily, turned upright by their EXIF orientation tag (as
``PIL.ImageOps.exif_transpose`` does), converted to RGB (16-bit images scaled to
8 bits, transparency composited over white), resized so the shorter side is
``image_size`` and centre-cropped. Images of more than ``max_image_pixels()``
pixels (PIL's ``Image.MAX_IMAGE_PIXELS``, about 89.5 million by default) are
refused as decompression bombs; raise the limit with the environment variable
``RI_JAX_MAX_IMAGE_PIXELS`` or by setting ``PIL.Image.MAX_IMAGE_PIXELS``. ``ImageSet.raw`` gives float32 images in
[0, 1] (the metrics black out pixels in this space); models normalise them with
``ModelFns.normalize``. Large sets are read in batches with ``ImageSet.batches``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ri_jax.errors import RIInputError
from ri_jax.files import name_bytes

EMBEDDED_ROOT = Path(__file__).parent / "assets" / "asirra_mini"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_PIXELS_ENV = "RI_JAX_MAX_IMAGE_PIXELS"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Largest intermediate of resize-then-crop, in output images (S²), beyond the input's size.
_MAX_RESIZE_FACTOR = 16


class DatasetError(RIInputError):
    """Raised for unusable data; the message names the file or folder and the reason."""


def max_image_pixels() -> int | None:
    """Largest image (width × height) that is decoded; None = no limit.

    ``$RI_JAX_MAX_IMAGE_PIXELS`` if set, else PIL's ``Image.MAX_IMAGE_PIXELS``.

    Raises:
      RIInputError: the variable is not a positive integer (0 or a negative limit would
        refuse every image as a decompression bomb), naming the variable.
    """
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            limit = int(env)
        except ValueError:
            limit = None
        if limit is None or limit < 1:
            raise RIInputError(f"${MAX_PIXELS_ENV}: invalid setting {env!r}, expected a positive "
                               "integer (pixels per image); unset it for PIL's default") from None
        return limit
    return Image.MAX_IMAGE_PIXELS


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSet:
    """Random-access labelled images of one split.

    Attributes:
      name: the spec it was loaded from.
      split: split name.
      class_names: class names in label order.
      labels: int32[N] ground-truth labels.
      image_size: side of the square images produced.
      read_uint8: ``indices -> uint8[B, S, S, 3]``.
      ids: per-image identifiers (file paths or TFDS indices), for reports.
    """

    name: str
    split: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    image_size: int
    read_uint8: Callable[[np.ndarray], np.ndarray]
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32[B, S, S, 3] images in [0, 1]."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices: out of range for {len(self)} images in {self.name}/{self.split}")
        return self.read_uint8(idx).astype(np.float32) / 255.0

    def batches(self, batch_size: int, indices: Sequence[int] | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields ``(indices[B], raw[B, S, S, 3])`` in order; the last batch may be short."""
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            yield chunk, self.raw(chunk)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        """The images at ``indices`` (in that order) as a new set."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        parent = self.read_uint8
        return dataclasses.replace(self, labels=self.labels[idx],
                                   read_uint8=lambda i: parent(idx[np.asarray(i)]),
                                   ids=tuple(self.ids[i] for i in idx))

    def cached(self) -> "ImageSet":
        """Decodes every image once into memory (uint8) and serves reads from there."""
        data = self.read_uint8(np.arange(len(self)))
        return dataclasses.replace(self, read_uint8=lambda i: data[np.asarray(i)])


def content_fingerprint(images: ImageSet, indices: Sequence[int] | np.ndarray | None = None
                        ) -> str:
    """Hash of what the images at ``indices`` decode from (a feature-cache key component).

    For images read from files: each file's size, modification time and content hash
    (so files replaced under the same names change it); for other sources their ids.
    The output image size is part of it.
    """
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    h = hashlib.sha256(name_bytes(f"{images.name}|{images.split}|{images.image_size}"))
    for i in idx:  # ids may be paths with undecodable bytes: name_bytes never fails
        h.update(b"\0" + name_bytes(_id_fingerprint(images.ids[int(i)])))
    return h.hexdigest()[:24]


def _id_fingerprint(image_id: str) -> str:
    try:
        st = os.stat(image_id)
    except (OSError, ValueError):  # not a file path (e.g. a TFDS index)
        return image_id
    return f"{image_id}|{st.st_size}|{st.st_mtime_ns}|{_file_hash(image_id, st.st_size, st.st_mtime_ns)}"


@functools.lru_cache(maxsize=1 << 16)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    """Content hash, memoised per (path, size, mtime): a rerun in one process reads each file once."""
    del size, mtime_ns  # cache key only
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=16).hexdigest()


def load_dataset(spec: str, split: str, *, image_size: int = 96,
                 class_names: Sequence[str] | None = None,
                 data_dir: str | None = None) -> ImageSet:
    """Loads one split of a dataset.

    Args:
      spec: ``"default"``, a folder ``root`` with ``root/<split>/<class>/<image>``, or ``"tfds:NAME"``.
      split: split name (``"train"``, ``"test"``; TFDS split strings such as ``"train[:80%]"`` too).
      image_size: side of the square output images.
      class_names: expected classes in label order (e.g. from a model's config); a folder split
        missing one of them is an error, and labels follow this order.
      data_dir: TFDS data directory (TFDS sources only).

    Returns:
      An ``ImageSet``.
    """
    if image_size <= 0:
        raise ValueError(f"image_size: must be positive, got {image_size}")
    if spec == "default":
        return _folder_set(EMBEDDED_ROOT, split, image_size, class_names, name="default")
    if spec.startswith("tfds:"):
        return _tfds_set(spec[len("tfds:"):], split, image_size, class_names, data_dir)
    return _folder_set(Path(spec), split, image_size, class_names, name=spec)


class LabelsNotModelClassesWarning(UserWarning):
    """A data set's classes are not the model's: its labels are treated as unknown (−1)."""


def load_for_model(spec: str, split: str, *, image_size: int, class_names: Sequence[str],
                   data_dir: str | None = None) -> ImageSet:
    """One split at a model's input size, labelled in the model's class order.

    When the data's classes are among the model's (by name), labels follow the model's
    order. When they are not (faces labelled by gender for an emotion model), the images
    are still usable, since RI, AD/AI, ACU-MD and CVR need only predictions: the labels
    become −1 (unknown) with a ``LabelsNotModelClassesWarning``, and anything that needs
    ground truth says it does not apply.

    Args:
      spec, split, data_dir: as for ``load_dataset``.
      image_size: the model's input side S.
      class_names: the model's classes, in logit order.

    Returns:
      An ``ImageSet`` whose ``class_names`` are the model's.
    """
    images = load_dataset(spec, split, image_size=image_size, data_dir=data_dir)
    model_classes = tuple(class_names)
    if images.class_names == model_classes:
        return images
    if set(images.class_names) <= set(model_classes):
        to_model = np.array([model_classes.index(c) for c in images.class_names], np.int32)
        labels = to_model[images.labels]
    else:
        warnings.warn(f"{spec}: its classes {list(images.class_names)} are not the model's "
                      f"{list(model_classes)}; its labels are treated as unknown (measures that "
                      "need ground truth do not apply)", LabelsNotModelClassesWarning,
                      stacklevel=2)
        labels = np.full(len(images), -1, np.int32)
    return dataclasses.replace(images, class_names=model_classes, labels=labels)


def decode_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """uint8[S, S, 3]: any PIL-readable image, upright (EXIF), as RGB, shorter side resized
    to S, centre-cropped."""
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # The limit is enforced below, strictly, with a message naming the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if limit is not None and w * h > limit:
                    raise Image.DecompressionBombError(f"{w}x{h} = {w * h} pixels")
                im.load()
                return _to_square_rgb(ImageOps.exif_transpose(im), image_size)
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"{path}: image too large ({e}; limit {limit} pixels), refused as a possible "
            f"decompression bomb; raise the limit with ${MAX_PIXELS_ENV}=N or "
            "PIL.Image.MAX_IMAGE_PIXELS") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def _to_square_rgb(im: Image.Image, size: int) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255 (almost all white); scale instead.
        # Mode "I" is how PIL decodes 16-bit grayscale PNG/TIFF.
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency over white rather than letting it turn black.
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh > max(w * h, _MAX_RESIZE_FACTOR * size * size):
        # An extreme aspect ratio: resizing it whole would upscale a strip to a huge
        # intermediate (1×100000 px → 96×9.6 M, 2.8 GB). Resize only the source region the
        # centre crop shows (PIL's ``box``, in source pixels), so memory stays S×S. PIL's
        # filter weights differ there by a few levels, so ordinary images keep the path below.
        box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
        return np.asarray(im.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _folder_set(root: Path, split: str, image_size: int, class_names: Sequence[str] | None,
                name: str) -> ImageSet:
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(f"{split_dir}: missing split {split!r} (found splits: {found})")
    found_classes = sorted(p.name for p in split_dir.iterdir()
                           if p.is_dir() and not p.name.startswith("."))
    if class_names is None:
        class_names = found_classes
    else:
        class_names = list(class_names)
        missing = [c for c in class_names if c not in found_classes]
        if missing:
            raise DatasetError(f"{split_dir}: missing class folder(s) {missing} "
                               f"(expected {class_names}, found {found_classes})")
        extra = sorted(set(found_classes) - set(class_names))
        if extra:
            raise DatasetError(f"{split_dir}: class folder(s) {extra} are not among the "
                               f"expected classes {class_names}")
    if len(class_names) < 2:
        raise DatasetError(f"{split_dir}: need at least 2 class folders, found {found_classes}")
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        files = sorted(p for p in (split_dir / cls).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"{split_dir / cls}: class folder has no images "
                               f"(extensions {sorted(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    path_arr = np.array([str(p) for p in paths])

    def read(indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), image_size, image_size, 3), np.uint8)
        for j, i in enumerate(np.asarray(indices)):  # file decoding is inherently per file
            out[j] = decode_image(path_arr[i], image_size)
        return out

    return ImageSet(name=name, split=split, class_names=tuple(class_names),
                    labels=np.asarray(labels, np.int32), image_size=image_size,
                    read_uint8=read, ids=tuple(path_arr))


def _tfds_set(tfds_name: str, split: str, image_size: int, class_names: Sequence[str] | None,
              data_dir: str | None) -> ImageSet:
    if not tfds_name:
        raise DatasetError("data: empty TFDS name in 'tfds:'")
    import tensorflow_datasets as tfds  # imported lazily: heavy, and only this source needs it

    builder = _tfds_builder(tfds, tfds_name, data_dir)
    split = _tfds_split(builder, tfds_name, split)
    try:
        # download=False: reading never starts a download or a build (that is `tfds build`'s job).
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types; the message is what matters to the user
        if not builder.is_prepared():
            raise DatasetError(f"tfds:{tfds_name}: not prepared in {builder.data_dir} (reading "
                               f"never downloads). {_tfds_build_hint(tfds_name, data_dir)}") from None
        raise DatasetError(
            f"tfds:{tfds_name} split {split!r}: cannot open as a data source ({type(e).__name__}: {e}). "
            f"{_tfds_build_hint(tfds_name, data_dir)}") from None
    info = getattr(source, "dataset_info", None) or builder.info
    features = info.features
    image_key = "image" if "image" in features else None
    label_key = "label" if "label" in features else None
    if image_key is None or label_key is None:
        raise DatasetError(f"tfds:{tfds_name}: needs 'image' and 'label' features, "
                           f"has {sorted(features.keys())}")
    names = tuple(features[label_key].names)
    if class_names is not None and tuple(class_names) != names:
        raise DatasetError(f"tfds:{tfds_name}: classes {list(names)} differ from the expected "
                           f"{list(class_names)}")
    if len(names) < 2:
        raise DatasetError(f"tfds:{tfds_name}: need at least 2 classes, found {list(names)}")
    n = len(source)
    if n == 0:
        raise DatasetError(f"tfds:{tfds_name} split {split!r}: no examples")
    # Labels are read once (cheap); images are decoded on demand.
    labels = np.array([int(source[i][label_key]) for i in range(n)], np.int32)

    def read(indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), image_size, image_size, 3), np.uint8)
        for j, i in enumerate(np.asarray(indices)):
            arr = np.asarray(source[int(i)][image_key])
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            out[j] = _to_square_rgb(Image.fromarray(arr.astype(np.uint8)), image_size)
        return out

    return ImageSet(name=f"tfds:{tfds_name}", split=split, class_names=names, labels=labels,
                    image_size=image_size, read_uint8=read,
                    ids=tuple(f"tfds:{tfds_name}/{split}/{i}" for i in range(n)))


def _tfds_build_hint(tfds_name: str, data_dir: str | None) -> str:
    where = f" --data_dir {data_dir}" if data_dir else ""
    return ("Prepare it once with `pip install ri_jax[tfds-prepare]` and "
            f"`tfds build {tfds_name} --file_format=array_record{where}`.")


def _tfds_builder(tfds, tfds_name: str, data_dir: str | None):
    """The dataset's builder, or a DatasetError naming the set when TFDS does not know it."""
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError lists every TFDS name: keep only the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"tfds:{tfds_name}: cannot load its builder ({first})") from None
    return builder


def _tfds_split(builder, tfds_name: str, split: str) -> str:
    """Maps ``train``/``test`` onto a TFDS set that only has ``train`` (e.g. cats_vs_dogs).

    Such sets are split deterministically: the first 80 % of ``train`` is our train split and
    the last 20 % our test split. Explicit TFDS split strings pass through unchanged.
    """
    if split not in ("train", "test"):
        return split
    splits = set(builder.info.splits.keys())
    if "test" in splits or "train" not in splits:
        return split  # nothing to carve: both exist, or the set has neither
    mapped = "train[:80%]" if split == "train" else "train[80%:]"
    warnings.warn(f"tfds:{tfds_name} has no {split!r} split; using {mapped!r}", stacklevel=3)
    return mapped


def stratified_split(labels: np.ndarray, fraction: float, *, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (rest, held_out) with ``fraction`` of each class held out, seeded.

    Every class keeps at least one index on each side; a class of one member is an error.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise RIInputError(f"labels: class {int(c)} has {len(idx)} member(s); a stratified "
                               "split needs at least 2 per class")
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)  # keep one in `rest`
        held.append(rng.choice(idx, size=k, replace=False))
    held_out = np.sort(np.concatenate(held))
    rest = np.setdiff1d(np.arange(len(labels)), held_out)
    return rest, held_out


def sample_per_class(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
    """Sorted indices of up to ``per_class`` images of every class (0 = all), seeded (§6.2)."""
    if per_class < 0:
        raise ValueError(f"per_class: must be >= 0, got {per_class}")
    if per_class == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picks = [rng.choice(idx, size=min(per_class, len(idx)), replace=False)
             for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(picks))


def sample_count(n: int, count: int, *, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` images drawn without replacement (0 or ≥ n = all), seeded."""
    if count < 0:
        raise ValueError(f"count: must be >= 0, got {count}")
    if count == 0 or count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
