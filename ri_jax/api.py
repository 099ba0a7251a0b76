"""One call from images to an answer: ``ri_jax.explain``.

    import ri_jax
    result = ri_jax.explain()                      # 4 test images, embedded model and data
    print(result)                                  # a readable summary
    result.save("ri.png")                          # one figure: every input and its references
    result[0].predicted_class, result[0].similar[0].file, result[0].heatmap

``explain`` loads a checkpoint (the embedded model by default) and a data spec,
takes the train split as references, runs ``RepresentativeInterpreter`` over them
and returns ``Explanations``: one ``Explanation`` per input with names instead of
indices (reference files, class names), the heat maps of RI and of Grad-CAM (both
computed at the input and reused on the references), the class counts of the
references the polytope covers, and ``plot()`` / ``save()`` / ``save_html()``.

Inputs are test images of the data spec (``inputs`` picks test indices; by default
``num_inputs`` are drawn with ``seed``, alternating between classes so every class
appears), your own images: uint8 arrays [B, H, W, 3] / [H, W, 3] or image files,
converted like the data sets (RGB, shorter side resized, centre-cropped), or an
``ImageSet`` already loaded. The pure functions underneath are unchanged; ``ri_options``
go to ``RepresentativeInterpreter``. In a multi-process run (``jax.distributed``) every
process computes its share, and the answer is the one-process answer bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ri_jax.baselines.gradcam import gradcam_weights_batch
from ri_jax.boundaries import DEFAULT_NUM_BOUNDARIES, check_head, pool_keys
from ri_jax.data import (IMAGE_EXTENSIONS, ImageSet, _to_square_rgb, decode_image, load_for_model,
                         sample_per_class)
from ri_jax.errors import RIInputError
from ri_jax.files import display_name
from ri_jax.featurize import Features, compute_features
from ri_jax.heatmaps import cam
from ri_jax.html_report import explanations_report, write_report
from ri_jax.interpreter import Interpretation, RepresentativeInterpreter
from ri_jax.model import Model, softmax
from ri_jax.models.loading import load_model
from ri_jax.regions import covered_by_class
from ri_jax.variants import RIVariant
from ri_jax.plots import (DISTANCE_NOTE, HEATMAP_NOTE, MISCLASSIFIED_NOTE, Cell, image_grid,
                          interpretation_figure, polytope_description)


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """One covered reference, as shown beside an input.

    Attributes:
      rank: 1 = most similar by Eq. 6.
      index: position in the reference set.
      file: its file (or data-set id).
      true_class: its label's name, or None when unknown.
      predicted_class: the model's prediction, by name.
      probability: softmax probability of ``predicted_class``.
      distance: Eq. 6 semantic distance to the input.
      image: float32[S, S, 3] raw image in [0, 1].
      heatmap: float32[S, S] the input's RI heat map reused on it.
      gradcam_heatmap: float32[S, S] the input's Grad-CAM weights reused on it.
    """

    rank: int
    index: int
    file: str
    true_class: str | None
    predicted_class: str
    probability: float
    distance: float
    image: np.ndarray
    heatmap: np.ndarray
    gradcam_heatmap: np.ndarray

    @property
    def name(self) -> str:
        return display_name(Path(self.file).name)  # shown: undecodable bytes as \xNN

    @property
    def misclassified(self) -> bool:
        """False when the label is unknown."""
        return self.true_class is not None and self.true_class != self.predicted_class


@dataclasses.dataclass(frozen=True, eq=False)
class Explanation:
    """RI's answer for one input, with names, images and heat maps.

    Attributes:
      name: the input's file name as shown (undecodable bytes as ``\\xNN``), or
        ``"image <i>"`` for an array.
      file: its file or data-set id (or the same as ``name``).
      image: float32[S, S, 3] the raw input in [0, 1].
      true_class: its label's name, or None when unknown (your own images).
      predicted_class: Class(x), by name.
      probability: softmax probability of ``predicted_class``.
      num_boundaries: |P(x)|, boundaries of the polytope.
      num_sampled: |Q|, boundaries sampled.
      num_references: references the polytope was chosen over.
      num_covered: references inside the polytope.
      covered_predicted: class name → covered references predicted as that class.
      covered_labels: class name → covered references with that true label.
      delta: δ, other-class references allowed inside (τ(x) by default).
      heatmap: float32[S, S] RI's heat map on the input (Eq. 5).
      gradcam_heatmap: float32[S, S] Grad-CAM on the input.
      similar: the top-k covered references, most similar first.
      details: the interpreter's ``Interpretation`` for this input (numpy), for everything else.
    """

    name: str
    file: str
    image: np.ndarray
    true_class: str | None
    predicted_class: str
    probability: float
    num_boundaries: int
    num_sampled: int
    num_references: int
    num_covered: int
    covered_predicted: Mapping[str, int]
    covered_labels: Mapping[str, int]
    delta: int
    heatmap: np.ndarray
    gradcam_heatmap: np.ndarray
    similar: tuple[Reference, ...]
    details: Interpretation

    @property
    def misclassified(self) -> bool | None:
        """True when the prediction differs from the true label (None: label unknown)."""
        return None if self.true_class is None else self.true_class != self.predicted_class

    @property
    def empty(self) -> bool:
        return self.num_boundaries == 0

    def describe(self) -> str:
        """The polytope in plain words, with real counts by class."""
        return polytope_description(self.num_boundaries, self.covered_predicted,
                                    label_counts=self.covered_labels, delta=self.delta,
                                    references="training images")

    def headline(self) -> str:
        """``"cat.4001.jpg: predicted cat (p = 0.93), true dog, MISCLASSIFIED"``."""
        truth = "" if self.true_class is None else f", true {self.true_class}"
        flag = ", MISCLASSIFIED" if self.misclassified else ""
        return f"{self.name}: predicted {self.predicted_class} (p = {self.probability:.2f}){truth}{flag}"

    def __str__(self) -> str:
        lines = [self.headline(), f"  {self.describe()}"]
        lines += [f"  #{r.rank} {r.name}: d = {r.distance:.3g}, true {r.true_class or 'unknown'}, predicted "
                  f"{r.predicted_class} ({r.probability:.2f})" for r in self.similar]
        return "\n".join(lines)

    def figure_parts(self) -> dict:
        """Keyword arguments of ``plots.interpretation_figure`` for this input."""
        truth = "" if self.true_class is None else f"true {self.true_class}, "
        return dict(
            input_image=self.image, input_heatmap=self.heatmap,
            similar_images=np.stack([r.image for r in self.similar]) if self.similar
            else np.zeros((0,) + self.image.shape, np.float32),
            similar_heatmaps=np.stack([r.heatmap for r in self.similar]) if self.similar
            else np.zeros((0,) + self.heatmap.shape, np.float32),
            captions=[f"input{' MISCLASSIFIED' if self.misclassified else ''}\n{truth}pred "
                      f"{self.predicted_class} {self.probability:.2f}"]
                     + [f"#{r.rank} true {r.true_class or 'unknown'}\npred {r.predicted_class} "
                        f"{r.probability:.2f}" for r in self.similar],
            heatmap_captions=["RI on the input"] + [f"d = {r.distance:.3g}" for r in self.similar],
            flagged=[bool(self.misclassified)] + [r.misclassified for r in self.similar])

    def plot(self, path: str | os.PathLike | None = None):
        """The input and its similar references, raw and with the reused RI heat map.

        Args:
          path: where to write the PNG (optional).

        Returns:
          The matplotlib ``Figure``.
        """
        return interpretation_figure(**self.figure_parts(),
                                     title=f"{self.headline()}\n{_capitalise(self.describe())}",
                                     footnote=_footnote(self.similar), path=path)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``plot()`` to ``path`` (PNG) and returns the path."""
        self.plot(path)
        return Path(path)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _footnote(references: Sequence[Reference]) -> str:
    notes = [HEATMAP_NOTE]
    if references:
        notes.append(DISTANCE_NOTE)
    notes.append(MISCLASSIFIED_NOTE)
    return "\n".join(notes)


class Explanations(Sequence[Explanation]):
    """The ``Explanation`` of every input, in input order, plus the run's settings.

    Attributes:
      items: the explanations.
      config: checkpoint, data, references, |Q|, seed, the shared sample's references
        (``boundary_references``, the paper's variant; else None) and the RI options used.
    """

    def __init__(self, items: Sequence[Explanation], config: Mapping[str, Any]):
        self.items = tuple(items)
        self.config = dict(config)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __iter__(self) -> Iterator[Explanation]:
        return iter(self.items)

    def summary(self) -> str:
        """A readable summary: the run's settings, then each input with its polytope."""
        c = self.config
        wrong = sum(bool(e.misclassified) for e in self)
        head = (f"Representative interpretations of {len(self)} image(s) by {c['model']} "
                f"over {c['num_references']:,} reference images of {c['data']} "
                f"(|Q| = {c['num_boundaries']} sampled boundaries, seed {c['seed']})"
                + (f"; {wrong} misclassified" if wrong else "") + ".")
        return "\n\n".join([head] + [str(e) for e in self])

    __str__ = summary

    def __repr__(self) -> str:
        return f"Explanations({len(self)} inputs, model={self.config['model']!r})"

    def plot(self, path: str | os.PathLike | None = None):
        """Every input and its similar references in one figure (two rows per input).

        Args:
          path: where to write the PNG (optional).

        Returns:
          The matplotlib ``Figure``.
        """
        rows, labels = [], []
        for e in self:
            parts = e.figure_parts()
            images = [parts["input_image"], *parts["similar_images"]]
            maps = [parts["input_heatmap"], *parts["similar_heatmaps"]]
            rows.append([Cell(im, None, cap, highlight=i == 0, flagged=f) for i, (im, cap, f)
                         in enumerate(zip(images, parts["captions"], parts["flagged"]))])
            rows.append([Cell(im, m, cap, highlight=i == 0, flagged=f) for i, (im, m, cap, f)
                         in enumerate(zip(images, maps, parts["heatmap_captions"], parts["flagged"]))])
            labels += [e.name, f"RI heat map\n({e.num_boundaries} boundaries, "
                               f"{e.num_covered:,} covered)"]
        title = "\n".join(f"{e.name}: {e.describe()}" for e in self)
        return image_grid(rows, row_labels=labels, title=title,
                          footnote=_footnote([r for e in self for r in e.similar]), path=path)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``plot()`` to ``path`` (PNG) and returns the path."""
        self.plot(path)
        return Path(path)

    def save_html(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes the interactive report ``out/index.html`` (see ``ri_jax.html_report``)."""
        return write_report(out, explanations_report(self), overwrite=overwrite)


def choose_inputs(labels: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """``count`` indices drawn with ``seed``, alternating between classes (capped by the set)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    alternating = [i for group in itertools.zip_longest(*per_class) for i in group if i is not None]
    return np.asarray(alternating[:count], np.int64)


def image_files(paths: Sequence[str | os.PathLike], name: str = "images") -> list[Path]:
    """Image files of ``paths``: files as given, folders searched recursively (sorted).

    Raises:
      RIInputError: naming ``name`` for a path that does not exist or a folder with no image.
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise RIInputError(f"{name}: folder {path} holds no image file "
                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise RIInputError(f"{name}: {path} does not exist")
    return files


def own_images(images, image_size: int, class_names: Sequence[str], name: str = "images"
               ) -> ImageSet:
    """Your images as an unlabelled ``ImageSet`` (labels −1).

    Args:
      images: uint8 arrays [B, H, W, 3] / [H, W, 3], or a path / list of paths of image files
        or folders (searched recursively); converted like the data sets (RGB, shorter side
        resized, centre-cropped).
      image_size: the model's input side S.
      class_names: the model's classes.
      name: the argument named in errors.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and any(
            isinstance(i, (str, os.PathLike)) for i in images):
        if not all(isinstance(i, (str, os.PathLike)) for i in images):
            raise RIInputError(f"{name}: a list must hold only file/folder paths or only "
                               "arrays, not both")
        files = image_files(images, name)
        ids = tuple(str(f) for f in files)
        data = np.stack([decode_image(f, image_size) for f in files])
    else:
        try:
            arr = np.asarray(images)
        except ValueError:
            raise RIInputError(f"{name}: expected uint8 images [B, H, W, 3] or [H, W, 3] of "
                               "one shape, or image files") from None
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
            raise RIInputError(f"{name}: expected uint8 images [B, H, W, 3] or [H, W, 3] or "
                               f"image files, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise RIInputError(f"{name}: expected raw uint8 pixels (0–255), got dtype "
                               f"{arr.dtype}; convert with (x * 255).round().astype(np.uint8) "
                               "if in [0, 1]")
        ids = tuple(f"image {i}" for i in range(len(arr)))
        data = np.stack([_to_square_rgb(Image.fromarray(a), image_size) for a in arr])
    return ImageSet(name=name, split="inputs", class_names=tuple(class_names),
                    labels=np.full(len(data), -1, np.int32), image_size=image_size,
                    read_uint8=lambda i: data[np.asarray(i)], ids=ids)


@functools.partial(jax.jit, static_argnames=("head_fn", "image_size"))
def _gradcam_maps(in_psi: jax.Array, in_pred: jax.Array, target_psi: jax.Array, *,
                  head_fn: Callable, image_size: int) -> jax.Array:
    """Grad-CAM weights at each of V inputs, reused on its T targets [V, T, h, w, c] → [V, T, S, S]."""
    alphas = gradcam_weights_batch(head_fn, in_psi, in_pred)
    draw = jax.vmap(jax.vmap(cam, in_axes=(None, 0, None)), in_axes=(0, 0, None))
    return draw(alphas, target_psi, image_size)


def check_model_fits(model: Model) -> None:
    """ψ then G traced once on a single input (nothing is computed), so a head whose input
    does not fit the features' shape is named before any image is read.

    Raises:
      RIInputError: naming ``model`` and the shape that failed.
    """
    x = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, model.channels),
                             jnp.float32)
    try:
        psi = jax.eval_shape(model.features, x)
    except Exception as err:  # noqa: BLE001 — any tracing error: re-raised naming the argument
        raise RIInputError(f"model: features(x) failed for x of shape {x.shape[1:]}: "
                           f"{type(err).__name__}: {str(err)[:200]}") from None
    if not hasattr(psi, "shape") or len(psi.shape) < 2:
        raise RIInputError(f"model: features(x) must give feature maps [B, h, w, c], got "
                           f"{getattr(psi, 'shape', type(psi))}")
    try:
        check_head(model.head, psi, name="model")
    except ValueError as err:
        raise RIInputError(str(err)) from None


def _references(references, data: str, model: Model, refs_per_class: int, seed: int) -> ImageSet:
    """The reference set: ``data``'s train split, a data spec or folder, or your images."""
    if references is None:
        refs = load_for_model(data, "train", image_size=model.image_size,
                              class_names=model.class_names)
    elif isinstance(references, ImageSet):
        refs = references
    elif isinstance(references, (str, os.PathLike)) and (Path(references) / "train").is_dir():
        refs = load_for_model(str(references), "train", image_size=model.image_size,
                              class_names=model.class_names)
    else:
        refs = own_images(references, model.image_size, model.class_names, name="references")
    if len(refs) < 2:
        raise RIInputError(f"references: need at least 2 images, got {len(refs)}")
    return refs.subset(sample_per_class(refs.labels, refs_per_class, seed=seed))


def explain(images=None, *, model: str | os.PathLike | Model = "default", references=None,
            data: str = "default", inputs: Sequence[int] | None = None, num_inputs: int = 4,
            top_k: int = 4, num_boundaries: int = DEFAULT_NUM_BOUNDARIES,
            variant: str | RIVariant = "authors", refs_per_class: int = 0, seed: int = 0,
            batch_size: int = 128, cache_dir: str | os.PathLike | None = None,
            progress: bool = True, checkpoint: str | os.PathLike | None = None,
            **ri_options) -> Explanations:
    """Representative interpretations of a few images, ready to print, plot and save.

    Args:
      images: None (test images of ``data``), uint8 arrays [B, H, W, 3] / [H, W, 3], image
        files or folders (searched recursively), or an ``ImageSet`` at the model's input size
        and classes (``load_for_model``, ``own_images``); your images are resized and
        centre-cropped to the model's input size.
      model: a ``ri_jax.Model`` (e.g. ``Model.from_functions``) or a spec for
        ``ri_jax.load_model``: ``"default"`` (the embedded VGG-19), a checkpoint folder, or
        ``"keras:DIR"``.
      references: None (the train split of ``data``), a data folder ``root/train/<class>/``,
        image files or folders, uint8 arrays, or an ``ImageSet``.
      data: data spec of the default references (its train split) and default inputs (its
        test split): ``"default"``, a folder ``root/<split>/<class>/``, or ``"tfds:NAME"``.
      inputs: indices to explain: in the test split (``images`` None) or in the ``ImageSet``
        given as ``images`` (default: all of it); not with arrays or files.
      num_inputs: test images drawn with ``seed``, alternating classes, when ``inputs`` is None.
      top_k: similar references kept per input.
      num_boundaries: |Q|, boundaries per input (Eq. 2).
      variant: ``"authors"`` (default: a pool of boundaries per input, as the authors' code),
        ``"paper"`` (one shared sample, as the paper's text) or an ``RIVariant``.
      refs_per_class: references per class, drawn with ``seed`` (0 = all).
      seed: seed of every random choice (inputs, references, Q); input i's own pool is drawn
        with ``fold_in(key(seed), id)``, id its test index (or its position for your images),
        so an input's answer does not depend on which other inputs come with it.
      batch_size: images per forward pass.
      cache_dir: folder caching the reference features between calls (None: no cache).
      progress: show progress bars.
      checkpoint: an alias of ``model`` (a spec), kept for older code.
      **ri_options: passed on to ``RepresentativeInterpreter``.

    Returns:
      ``Explanations``, one ``Explanation`` per input.
    """
    if checkpoint is not None:
        if not (isinstance(model, str) and model == "default"):
            raise RIInputError("checkpoint: an alias of model; give one of them")
        model = checkpoint
    for name, value, least in (("top_k", top_k, 1), ("num_boundaries", num_boundaries, 1),
                               ("batch_size", batch_size, 1), ("seed", seed, 0),
                               ("refs_per_class", refs_per_class, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise RIInputError(f"{name}: must be an integer >= {least}, got {value!r}")
    model = load_model(model)
    check_model_fits(model)
    refs = _references(references, data, model, refs_per_class, seed)
    if images is None or isinstance(images, ImageSet):
        source = images if images is not None else load_for_model(
            data, "test", image_size=model.image_size, class_names=model.class_names)
        if (source.image_size, tuple(source.class_names)) != (model.image_size, model.class_names):
            raise RIInputError(f"images: an ImageSet at {source.image_size} px of classes "
                               f"{list(source.class_names)}; the model's are "
                               f"{model.image_size} px and {list(model.class_names)}")
        if inputs is not None:
            chosen = np.asarray(inputs, np.int64).reshape(-1)
            if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= len(source):
                raise RIInputError(f"inputs: expected {'test ' * (images is None)}indices in "
                                   f"[0, {len(source)}), got {chosen.tolist()}")
        elif images is not None:
            chosen = np.arange(len(source))
        else:
            if isinstance(num_inputs, bool) or not isinstance(num_inputs, (int, np.integer)) \
                    or num_inputs < 1:
                raise RIInputError(f"num_inputs: must be a positive integer, got {num_inputs!r}")
            chosen = choose_inputs(source.labels, num_inputs, seed=seed)
    else:
        if inputs is not None:
            raise RIInputError("inputs: picks test images or an ImageSet's, not arrays or files")
        source = own_images(images, model.image_size, model.class_names)
        chosen = np.arange(len(source))
    featurize, store = compute_features, None
    if jax.process_count() > 1:  # the multi-process module only where there are processes
        from ri_jax.distributed import ShardedStore, distributed_features
        featurize, store = distributed_features, ShardedStore.builder()
    cache = None if cache_dir is None else Path(cache_dir)
    ref_feats = featurize(model, refs, batch_size=batch_size, cache_dir=cache,
                          progress=progress, desc="reference features")
    in_feats = compute_features(model, source, chosen, batch_size=batch_size, progress=False)
    top_k = min(int(top_k), len(refs))
    interpreter = RepresentativeInterpreter(
        model, ref_feats.psi, key=jax.random.key(seed), num_boundaries=num_boundaries,
        batch_size=batch_size, is_features=True, progress=progress, variant=variant,
        **{"store": store, **ri_options})
    raw = source.raw(chosen)
    keys = pool_keys(jax.random.key(seed), np.asarray(chosen, np.int32))
    res = jax.device_get(interpreter.interpret_features(
        jnp.asarray(in_feats.psi), top_k=top_k, image_size=model.image_size, keys=keys))
    items = explanations_from(model, res, raw, source, chosen, in_feats, refs, ref_feats)
    shared = interpreter.reference_set.boundary_refs  # the paper's variant's sample, else None
    config = {"model": model.source, "data": data, "num_references": len(refs),
              "num_boundaries": int(res.selected.shape[1]), "variant": interpreter.variant.name,
              "seed": seed, "top_k": top_k, "refs_per_class": refs_per_class,
              "inputs": [int(i) for i in chosen] if images is None else None,
              "boundary_references": None if shared is None else [int(i) for i in shared],
              "ri_options": dict(ri_options)}
    return Explanations(items, config)


def _label_name(classes: Sequence[str], label: int) -> str | None:
    """The class name of a label, None for an unknown one (−1)."""
    return classes[int(label)] if label >= 0 else None


def explanations_from(model: Model, res: Interpretation, raw: np.ndarray, source: ImageSet,
                      chosen: np.ndarray, in_feats: Features, refs: ImageSet,
                      ref_feats: Features) -> list[Explanation]:
    """Per-input ``Explanation``s from an ``interpret_batch`` answer (for scripts that ran it).

    Args:
      model: the ``ri_jax.model.Model`` the interpreter ran on (G for Grad-CAM).
      res: ``Interpretation`` batch of the V inputs (``jax.device_get``-ed or not).
      raw: float32[V, S, S, 3] the raw inputs.
      source: the image set the inputs come from (labels −1 = unknown).
      chosen: int[V] their indices in ``source``.
      in_feats: ``Features`` of the inputs, in the same order.
      refs: the reference set the interpreter was built on.
      ref_feats: ``Features`` of ``refs``.

    Returns:
      One ``Explanation`` per input.
    """
    res = jax.device_get(res)
    classes = refs.class_names
    size = raw.shape[1]
    in_pred = np.asarray(res.predicted_class)
    in_probs = softmax(in_feats.logits.astype(np.float64))
    ref_preds = ref_feats.predictions
    ref_probs = softmax(ref_feats.logits.astype(np.float64))
    similar = np.asarray(res.similar)
    safe = np.maximum(similar, 0)
    # Grad-CAM on each input (target 0) and on its similar references (targets 1..k).
    targets = np.concatenate([in_feats.psi[:, None], ref_feats.psi[safe]], axis=1)
    gradcam = np.asarray(_gradcam_maps(jnp.asarray(in_feats.psi), jnp.asarray(in_pred),
                                       jnp.asarray(targets), head_fn=model.head, image_size=size))
    items = []
    for b, index in enumerate(chosen):
        present = similar[b] >= 0
        shown = similar[b][present]
        ref_raw = refs.raw(shown)
        covered = np.asarray(res.covered[b])
        label = int(source.labels[index])
        one = jax.tree.map(lambda a: np.asarray(a[b]), res)
        items.append(Explanation(
            name=display_name(Path(source.ids[index]).name), file=source.ids[index], image=raw[b],
            true_class=_label_name(classes, label),
            predicted_class=classes[in_pred[b]], probability=float(in_probs[b, in_pred[b]]),
            num_boundaries=int(res.num_selected[b]), num_sampled=int(res.selected.shape[1]),
            num_references=len(refs), num_covered=int(res.num_covered[b]),
            covered_predicted=covered_by_class(covered, ref_preds, classes),
            covered_labels=covered_by_class(covered, refs.labels, classes),
            delta=int(res.delta[b]), heatmap=np.asarray(res.heatmap[b]),
            gradcam_heatmap=gradcam[b, 0],
            similar=tuple(Reference(
                rank=r + 1, index=int(j), file=refs.ids[j], true_class=_label_name(classes, refs.labels[j]),
                predicted_class=classes[ref_preds[j]],
                probability=float(ref_probs[j, ref_preds[j]]),
                distance=float(res.similar_distances[b][r]), image=ref_raw[r],
                heatmap=np.asarray(res.similar_heatmaps[b][r]), gradcam_heatmap=gradcam[b, 1 + r])
                for r, j in enumerate(shown)),
            details=one))
    return items
