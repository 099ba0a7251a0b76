"""Heat-map overlays and the paper's figure layouts (Figures 2, 3, 4 and 8).

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, no
global figure registry, no window. Every function returns the ``Figure`` and,
given ``path``, also writes it there as a PNG.

* ``overlay``: a heat map drawn with the jet colormap over the raw image (alpha blend).
* ``image_grid``: the generic grid of captioned cells the other layouts use.
* ``interpretation_figure`` (Figures 2/8, the main job): the input and its top-k
  similar references, raw images on top and the RI heat map overlaid below.
* ``case_study_figure`` (Figures 2/3): per block of similar images (RI's, the
  Euclidean neighbours'), a row of images then one row of heat maps per method.
* ``k_curves_figure`` (Figure 4): mAD and mAI against K, one line per method.

Figures explain themselves: grids with heat maps get a colour bar, a footnote can
say in one line what the captions mean (``HEATMAP_NOTE``, ``DISTANCE_NOTE``), and
flagged cells (misclassified images) get a red frame. ``polytope_description`` and
``count_phrase`` put a polytope and its covered images into plain words for titles.
"""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ri_jax.faithfulness import auc
from ri_jax.files import atomic_path, display_name

INPUT_COLOUR = "#1a9850"  # the paper marks the input image with a green box (Figure 1)
FLAG_COLOUR = "#d73027"  # red frame: a misclassified image
HEATMAP_CMAP = "jet"
COLORBAR_LABEL = "heat-map importance (0 = none, 1 = most)"
HEATMAP_NOTE = ("Heat maps: the polytope's channel weights (Eq. 5), computed once at the input "
                "and reused unchanged on every reference.")
DISTANCE_NOTE = ("d: semantic distance (Eq. 6), the summed gaps between input and reference "
                 "along the normals of the polytope's boundaries; 0 = same place, smaller = "
                 "more similar.")
METRIC_DIRECTION = {"mAD": ", lower is better", "mAI": ", higher is better"}
K_CURVES_NOTE = ("Each method's interpretation is computed at the input and reused on its K most "
                 "similar images; each image keeps its top 20 % pixels (rest black). mAD: mean "
                 "drop of the predicted class's probability; mAI: share of images whose "
                 "probability rises. Dashed: controls.")
MISCLASSIFIED_NOTE = "Red frame: misclassified (predicted class differs from the true label)."


def count_phrase(counts: Mapping[str, int], *, word: str = "") -> str:
    """``{"cat": 1020, "dog": 5}`` → ``"1,020 cat, 5 dog"`` (largest first, zeros left out).

    Args:
      counts: class name → count.
      word: inserted before every class name (e.g. ``"predicted"``).

    Returns:
      The phrase; ``"none"`` when every count is zero.
    """
    items = sorted(((int(n), c) for c, n in counts.items() if int(n) > 0), key=lambda t: -t[0])
    prefix = f"{word} " if word else ""
    return ", ".join(f"{n:,} {prefix}{c}" for n, c in items) or "none"


def polytope_description(num_boundaries: int, predicted_counts: Mapping[str, int], *,
                         label_counts: Mapping[str, int] | None = None, delta: int = 0,
                         references: str = "training images") -> str:
    """A polytope and the references it covers in plain words, with real counts by class.

    Args:
      num_boundaries: |P(x)|.
      predicted_counts: class name → covered references the model predicts as that class.
      label_counts: class name → covered references with that true label (optional).
      delta: δ, references of other classes the polytope may cover (said only for an empty one).
      references: what the references are called.

    Returns:
      e.g. ``"polytope of 17 boundaries covering 1,025 training images, all predicted cat"``.
    """
    total = sum(int(n) for n in predicted_counts.values())
    present = [c for c, n in predicted_counts.items() if int(n) > 0]
    if num_boundaries == 0:
        head = (f"empty polytope: no boundary is needed (δ = {delta:,} other-class images "
                f"allowed), so it covers all {total:,} {references} and its heat maps are blank")
    else:
        noun = "boundary" if num_boundaries == 1 else "boundaries"
        head = f"polytope of {num_boundaries:,} {noun} covering {total:,} {references}"
    if total == 0:
        text = head
    elif len(present) == 1:
        text = f"{head}, {'all' if total > 1 else 'the one'} predicted {present[0]}"
    else:
        text = f"{head}: {count_phrase(predicted_counts, word='predicted')}"
    if label_counts is not None and total:
        text += f" (true labels: {count_phrase(label_counts)})"
    return text


def _finite(value, name: str, shape_desc: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {shape_desc}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def overlay(raw_image, heatmap, *, alpha: float = 0.5, cmap: str = HEATMAP_CMAP) -> np.ndarray:
    """A heat map drawn over an image.

    Args:
      raw_image: [S, S, 3] raw image in [0, 1] (values outside are clipped).
      heatmap: [S, S] map in [0, 1] (values outside are clipped), e.g. from ``heatmaps.cam``.
      alpha: weight of the coloured map, in [0, 1].
      cmap: matplotlib colormap name.

    Returns:
      float[S, S, 3] in [0, 1]: (1 − alpha) · image + alpha · cmap(map).
    """
    image = _finite(raw_image, "raw_image", "an image [S, S, 3]", 3)
    if image.shape[-1] != 3:
        raise ValueError(f"raw_image: expected 3 channels, got shape {image.shape}")
    heat = _finite(heatmap, "heatmap", "a map [S, S]", 2)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heatmap: shape {heat.shape} does not match raw_image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    if cmap not in colormaps:
        raise ValueError(f"cmap: unknown matplotlib colormap {cmap!r}")
    colour = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]
    return (1.0 - alpha) * np.clip(image, 0.0, 1.0) + alpha * colour


class Cell(NamedTuple):
    """One image of a grid.

    Attributes:
      image: [S, S, 3] raw image in [0, 1].
      heatmap: [S, S] map to overlay, or None for the plain image.
      caption: text under the image.
      highlight: frame the cell in green (the input image).
      flagged: frame the cell in red instead (a misclassified image).
    """

    image: np.ndarray
    heatmap: np.ndarray | None = None
    caption: str = ""
    highlight: bool = False
    flagged: bool = False


def _save(fig: Figure, path: str | Path | None) -> Figure:
    """Writes ``fig`` to ``path`` whole or not at all (``ri_jax.files.atomic_path``)."""
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi)
    return fig


def _literal_text(build):
    """Decorator: every text of the figure is drawn as written.

    File and class names may hold ``$`` (matplotlib would parse a pair as TeX and may
    fail) and undecodable bytes (surrogate escapes, which no font can draw): text is
    never parsed as math, and names pass through ``_shown``.
    """
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with rc_context({"text.parse_math": False}):
            return build(*args, **kwargs)
    return wrapper


def _shown(text: str | None) -> str | None:
    """``text`` with undecodable bytes as ``\\xNN`` (``ri_jax.files.display_name``)."""
    return display_name(text) if text else text


@_literal_text
def image_grid(rows: Sequence[Sequence[Cell]], *, row_labels: Sequence[str] | None = None,
               title: str | None = None, footnote: str | None = None,
               colorbar: bool | None = None, colorbar_label: str = COLORBAR_LABEL,
               path: str | Path | None = None, cell_size: float = 1.7, dpi: int = 100) -> Figure:
    """A grid of captioned images, one list of ``Cell`` per row (rows may be shorter).

    Args:
      rows: the cells, row by row; at least one non-empty row.
      row_labels: one label per row, written left of it.
      title: figure title.
      footnote: text under the grid (what captions and maps mean).
      colorbar: draw the heat maps' colour bar right of the grid (None: when a cell has a map).
      colorbar_label: the colour bar's label.
      path: where to save the PNG (optional).
      cell_size: inches per cell side.
      dpi: resolution.

    Returns:
      The ``Figure``.
    """
    if not rows or max(len(r) for r in rows) == 0:
        raise ValueError("rows: need at least one cell")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels: expected {len(rows)} labels, got {len(row_labels)}")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    heat_rows = [i for i, r in enumerate(rows) if any(c.heatmap is not None for c in r)]
    colorbar = bool(heat_rows) if colorbar is None else colorbar
    # Fixed inch layout: each row is an image plus room for two caption lines below it.
    label_w = 1.1 if row_labels is not None else 0.05
    caption_h, gap = 0.36, 0.06
    bar_w = 0.85 if colorbar else 0.0
    grid_w = label_w + n_cols * (cell_size + gap)
    width = grid_w + bar_w + 0.05
    # About 13 characters of 9-pt (15 of 7-pt) text per inch: wrap to the figure's width.
    title, footnote = _shown(title), _shown(footnote)
    title = "\n".join(textwrap.fill(t, max(20, int(13 * width))) for t in title.split("\n")) if title else None
    title_h = 0.2 + 0.18 * title.count("\n") + 0.25 if title else 0.05
    footnote = ("\n".join(textwrap.fill(t, max(24, int(15 * width))) for t in footnote.split("\n"))
                if footnote else None)
    foot_h = 0.12 + 0.14 * (footnote.count("\n") + 1) if footnote else 0.0
    height = title_h + n_rows * (cell_size + caption_h) + foot_h
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            left = label_w + j * (cell_size + gap)
            top = title_h + i * (cell_size + caption_h)
            ax = fig.add_axes((left / width, 1.0 - (top + cell_size) / height,
                               cell_size / width, cell_size / height))
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.set_axis_off()
                continue
            cell = row[j]
            shown = (np.clip(_finite(cell.image, "image", "an image [S, S, 3]", 3), 0.0, 1.0)
                     if cell.heatmap is None else overlay(cell.image, cell.heatmap))
            ax.imshow(shown, interpolation="nearest")
            ax.set_xlabel(_shown(cell.caption), fontsize=7, labelpad=2,
                          color=FLAG_COLOUR if cell.flagged else "black")
            for spine in ax.spines.values():
                spine.set_visible(cell.highlight or cell.flagged)
                spine.set_color(FLAG_COLOUR if cell.flagged else INPUT_COLOUR)
                spine.set_linewidth(3)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(textwrap.fill(_shown(row_labels[i]), 13), fontsize=8, rotation=0,
                              ha="right", va="center", labelpad=6)
    if colorbar:
        span = heat_rows or range(n_rows)
        top = title_h + span[0] * (cell_size + caption_h)
        bottom = title_h + span[-1] * (cell_size + caption_h) + cell_size
        cax = fig.add_axes(((grid_w + 0.1) / width, 1.0 - bottom / height,
                            0.12 / width, (bottom - top) / height))
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), HEATMAP_CMAP), cax=cax)
        bar.set_label(textwrap.fill(colorbar_label, max(12, int(14 * (bottom - top)))), fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.12 / height, va="top")
    if footnote:
        fig.text(0.05 / width, 0.06 / height, footnote, fontsize=7, ha="left", va="bottom",
                 color="#333333")
    return _save(fig, path)


def _stack(value, name: str, count: int, ndim: int, desc: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[0] != count:
        raise ValueError(f"{name}: expected {desc} with {count} entries, got shape {arr.shape}")
    return arr


def interpretation_figure(input_image, input_heatmap, similar_images, similar_heatmaps,
                          captions: Sequence[str], heatmap_captions: Sequence[str] | None = None,
                          *, flagged: Sequence[bool] | None = None, title: str | None = None,
                          footnote: str | None = None, path: str | Path | None = None) -> Figure:
    """The input and its top-k similar references with one interpretation (Figures 2 and 8).

    The top row shows the raw images (input first, framed in green), the bottom row
    the same images with the interpretation's heat map overlaid.

    Args:
      input_image: [S, S, 3] raw input image.
      input_heatmap: [S, S] heat map on the input.
      similar_images: [k, S, S, 3] raw similar images, most similar first (k may be 0).
      similar_heatmaps: [k, S, S] the interpretation reused on them.
      captions: k + 1 captions under the raw images (e.g. predicted class and score).
      heatmap_captions: k + 1 captions under the overlays (e.g. semantic distances).
      flagged: k + 1 flags, True frames that image in red (misclassified).
      title: figure title.
      footnote: text under the figure (e.g. ``HEATMAP_NOTE``, ``DISTANCE_NOTE``).
      path: where to save the PNG (optional).

    Returns:
      The ``Figure``.
    """
    images = np.asarray(similar_images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"similar_images: expected [k, S, S, 3], got shape {images.shape}")
    k = images.shape[0]
    maps = _stack(similar_heatmaps, "similar_heatmaps", k, 3, "[k, S, S]")
    if len(captions) != k + 1:
        raise ValueError(f"captions: expected {k + 1} (input + {k} similar), got {len(captions)}")
    heatmap_captions = heatmap_captions if heatmap_captions is not None else [""] * (k + 1)
    if len(heatmap_captions) != k + 1:
        raise ValueError(f"heatmap_captions: expected {k + 1}, got {len(heatmap_captions)}")
    flagged = [False] * (k + 1) if flagged is None else [bool(f) for f in flagged]
    if len(flagged) != k + 1:
        raise ValueError(f"flagged: expected {k + 1}, got {len(flagged)}")
    all_images = [input_image, *images]
    all_maps = [input_heatmap, *maps]
    top = [Cell(im, None, c, highlight=i == 0, flagged=f)
           for i, (im, c, f) in enumerate(zip(all_images, captions, flagged))]
    bottom = [Cell(im, m, c, highlight=i == 0, flagged=f)
              for i, (im, m, c, f) in enumerate(zip(all_images, all_maps, heatmap_captions, flagged))]
    return image_grid([top, bottom], row_labels=["images", "heat map"], title=title,
                      footnote=footnote, path=path)


class CaseBlock(NamedTuple):
    """One block of a case-study grid: a set of similar images and every method's maps on them.

    Attributes:
      name: label of the image row (e.g. "similar by RI").
      images: [n, S, S, 3] raw images, the input first.
      captions: n captions under the images (prediction scores).
      method_maps: method name → [n, S, S] heat maps of that method's interpretation.
      method_captions: method name → n captions under its maps (masked-image scores).
      flagged: n flags, True frames that image in red (misclassified); None: none.
    """

    name: str
    images: np.ndarray
    captions: Sequence[str]
    method_maps: Mapping[str, np.ndarray]
    method_captions: Mapping[str, Sequence[str]]
    flagged: Sequence[bool] | None = None


def case_study_figure(blocks: Sequence[CaseBlock], *, title: str | None = None,
                      footnote: str | None = None, path: str | Path | None = None) -> Figure:
    """The case-study grid of Figures 2 and 3.

    For each block: a row with the input and its similar images (captioned with their
    prediction scores), then one row per method with that method's heat maps on the
    same images (captioned with the score of the image masked to its top 20 %).

    Args:
      blocks: the ``CaseBlock``s, drawn top to bottom.
      title: figure title.
      footnote: text under the figure (what the captions mean).
      path: where to save the PNG (optional).

    Returns:
      The ``Figure``.
    """
    if not blocks:
        raise ValueError("blocks: need at least one block")
    rows, labels = [], []
    for block in blocks:
        images = np.asarray(block.images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"blocks[{block.name!r}].images: expected [n >= 1, S, S, 3], "
                             f"got shape {images.shape}")
        n = images.shape[0]
        if len(block.captions) != n:
            raise ValueError(f"blocks[{block.name!r}].captions: expected {n}, got {len(block.captions)}")
        if set(block.method_maps) != set(block.method_captions):
            raise ValueError(f"blocks[{block.name!r}].method_captions: methods "
                             f"{sorted(block.method_captions)} differ from method_maps "
                             f"{sorted(block.method_maps)}")
        flagged = [False] * n if block.flagged is None else [bool(f) for f in block.flagged]
        if len(flagged) != n:
            raise ValueError(f"blocks[{block.name!r}].flagged: expected {n}, got {len(flagged)}")
        rows.append([Cell(im, None, c, highlight=i == 0, flagged=f)
                     for i, (im, c, f) in enumerate(zip(images, block.captions, flagged))])
        labels.append(block.name)
        for method, maps in block.method_maps.items():
            maps = _stack(maps, f"blocks[{block.name!r}].method_maps[{method!r}]", n, 3, "[n, S, S]")
            caps = block.method_captions[method]
            if len(caps) != n:
                raise ValueError(f"blocks[{block.name!r}].method_captions[{method!r}]: expected "
                                 f"{n}, got {len(caps)}")
            rows.append([Cell(im, m, c, highlight=i == 0, flagged=f)
                         for i, (im, m, c, f) in enumerate(zip(images, maps, caps, flagged))])
            labels.append(method)
    return image_grid(rows, row_labels=labels, title=title, footnote=footnote, path=path)


@_literal_text
def k_curves_figure(ks: Sequence[int], curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                    errors: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                    metrics: Sequence[str] = ("mAD", "mAI"), dashed: Sequence[str] = (),
                    title: str | None = None, footnote: str | None = None,
                    path: str | Path | None = None) -> Figure:
    """Metric against K, one line per method, one panel per metric (Figure 4).

    Args:
      ks: the K values, increasing.
      curves: method → metric → one value per K (percent).
      errors: optional method → metric → one ± value per K (drawn as error bars).
      metrics: which metrics get a panel, in order.
      dashed: methods drawn dashed (the controls).
      title: figure title.
      footnote: text under the panels (what the metrics mean).
      path: where to save the PNG (optional).

    Returns:
      The ``Figure``.
    """
    ks = np.asarray(ks)
    if ks.ndim != 1 or ks.size == 0 or np.any(np.diff(ks) <= 0):
        raise ValueError(f"ks: expected increasing K values, got {ks.tolist()}")
    if not curves:
        raise ValueError("curves: need at least one method")
    if not metrics:
        raise ValueError("metrics: need at least one metric")
    width = 4.2 * len(metrics)
    title, footnote = _shown(title), _shown(footnote)
    title = "\n".join(textwrap.fill(t, int(11 * width)) for t in title.split("\n")) if title else None
    footnote = "\n".join(textwrap.fill(t, int(16 * width)) for t in footnote.split("\n")) if footnote else None
    foot_lines = footnote.count("\n") + 1 if footnote else 0
    fig = Figure(figsize=(width, 3.4 + 0.15 * foot_lines), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for method, values in curves.items():
            if metric not in values:
                raise ValueError(f"curves[{method!r}]: missing metric {metric!r}")
            y = _finite(values[metric], f"curves[{method!r}][{metric!r}]", f"{ks.size} values", 1)
            if y.size != ks.size:
                raise ValueError(f"curves[{method!r}][{metric!r}]: expected {ks.size} values, "
                                 f"got {y.size}")
            err = None
            if errors is not None and method in errors and metric in errors[method]:
                err = _finite(errors[method][metric], f"errors[{method!r}][{metric!r}]",
                              f"{ks.size} values", 1)
                if err.size != ks.size:
                    raise ValueError(f"errors[{method!r}][{metric!r}]: expected {ks.size} values, "
                                     f"got {err.size}")
            ax.errorbar(ks, y, yerr=err, marker="o", markersize=3, capsize=2, label=_shown(method),
                        linestyle="--" if method in dashed else "-")
        ax.set_xlabel("K (similar images per input)")
        ax.set_ylabel(f"{metric} (%){METRIC_DIRECTION.get(metric, '')}")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _titled(fig, title, footnote, foot_lines, path)


CURVE_PANELS = (("deletion", "deletion: top share → mean colour", "lower is better"),
                ("insertion_blur", "insertion from the blurred image", "higher is better"),
                ("insertion_mean", "insertion from the mean colour", "higher is better"))
CURVES_NOTE = ("p_c: softmax probability of the class predicted on the intact image, mean over "
               "images (and runs). Pixels go in heat-map order, ties by the fixed tie order; "
               "legend: area under the curve. Dashed: controls.")


@_literal_text
def faithfulness_curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                               dashed: Sequence[str] = (), title: str | None = None,
                               footnote: str | None = CURVES_NOTE,
                               path: str | Path | None = None) -> Figure:
    """Deletion and insertion curves (RISE), one line per method, one panel per curve.

    Args:
      curves: method → ``{"fractions", "deletion", "insertion_blur", "insertion_mean"}``, each
        a list of T + 1 values (``protocols.faithfulness.mean_curves``).
      dashed: methods drawn dashed (the controls).
      title: figure title.
      footnote: text under the panels.
      path: where to save the PNG (optional).

    Returns:
      The ``Figure``.
    """
    if not curves:
        raise ValueError("curves: need at least one method")
    width = 4.2 * len(CURVE_PANELS)
    title, footnote = _shown(title), _shown(footnote)
    footnote = textwrap.fill(footnote, int(16 * width)) if footnote else None
    foot_lines = footnote.count("\n") + 1 if footnote else 0
    fig = Figure(figsize=(width, 3.8 + 0.15 * foot_lines), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(CURVE_PANELS), squeeze=False)[0]
    for ax, (key, label, direction) in zip(axes, CURVE_PANELS):
        for method, c in curves.items():
            x = _finite(c["fractions"], f"curves[{method!r}]['fractions']", "T + 1 values", 1)
            y = _finite(c[key], f"curves[{method!r}][{key!r}]", f"{x.size} values", 1)
            if y.size != x.size:
                raise ValueError(f"curves[{method!r}][{key!r}]: expected {x.size} values, got {y.size}")
            area = float(auc(y, x))
            ax.plot(100 * x, y, linestyle="--" if method in dashed else "-",
                    label=f"{_shown(method)} ({area:.3f})")
        ax.set_title(f"{label}\n(AUC, {direction})", fontsize=8)
        ax.set_xlabel("pixels " + ("removed" if key == "deletion" else "revealed") + " (%)")
        ax.set_ylabel("p_c")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _titled(fig, title, footnote, foot_lines, path)


def _titled(fig: Figure, title: str | None, footnote: str | None, foot_lines: int,
            path: str | Path | None) -> Figure:
    """A row of panels with its title on top and footnote below, laid out and saved."""
    if title:
        fig.suptitle(title, fontsize=9)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=7, ha="left", va="bottom", color="#333333")
    bottom = (0.15 * foot_lines + 0.1) / fig.get_figheight() if footnote else 0.0
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    return _save(fig, path)
