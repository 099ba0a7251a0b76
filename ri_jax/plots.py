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
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

INPUT_COLOUR = "#1a9850"  # the paper marks the input image with a green box (Figure 1)


def _finite(value, name: str, shape_desc: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {shape_desc}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def overlay(raw_image, heatmap, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
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
      highlight: frame the cell (the input image).
    """

    image: np.ndarray
    heatmap: np.ndarray | None = None
    caption: str = ""
    highlight: bool = False


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi)
    return fig


def image_grid(rows: Sequence[Sequence[Cell]], *, row_labels: Sequence[str] | None = None,
               title: str | None = None, path: str | Path | None = None,
               cell_size: float = 1.7, dpi: int = 100) -> Figure:
    """A grid of captioned images, one list of ``Cell`` per row (rows may be shorter).

    Args:
      rows: the cells, row by row; at least one non-empty row.
      row_labels: one label per row, written left of it.
      title: figure title.
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
    # Fixed inch layout: each row is an image plus room for two caption lines below it.
    label_w = 1.1 if row_labels is not None else 0.05
    caption_h, gap = 0.36, 0.06
    width = label_w + n_cols * (cell_size + gap) + 0.05
    # About 13 characters of 9-pt text per inch: wrap long titles to the figure's width.
    title = textwrap.fill(title, max(20, int(13 * width))) if title else None
    title_h = 0.2 + 0.18 * title.count("\n") + 0.25 if title else 0.05
    height = title_h + n_rows * (cell_size + caption_h)
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
            ax.set_xlabel(cell.caption, fontsize=7, labelpad=2)
            for spine in ax.spines.values():
                spine.set_visible(cell.highlight)
                spine.set_color(INPUT_COLOUR)
                spine.set_linewidth(3)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(textwrap.fill(row_labels[i], 13), fontsize=8, rotation=0,
                              ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.12 / height, va="top")
    return _save(fig, path)


def _stack(value, name: str, count: int, ndim: int, desc: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[0] != count:
        raise ValueError(f"{name}: expected {desc} with {count} entries, got shape {arr.shape}")
    return arr


def interpretation_figure(input_image, input_heatmap, similar_images, similar_heatmaps,
                          captions: Sequence[str], heatmap_captions: Sequence[str] | None = None,
                          *, title: str | None = None, path: str | Path | None = None) -> Figure:
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
      title: figure title.
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
    all_images = [input_image, *images]
    all_maps = [input_heatmap, *maps]
    top = [Cell(im, None, c, highlight=i == 0) for i, (im, c) in enumerate(zip(all_images, captions))]
    bottom = [Cell(im, m, c, highlight=i == 0)
              for i, (im, m, c) in enumerate(zip(all_images, all_maps, heatmap_captions))]
    return image_grid([top, bottom], row_labels=["images", "heat map"], title=title, path=path)


class CaseBlock(NamedTuple):
    """One block of a case-study grid: a set of similar images and every method's maps on them.

    Attributes:
      name: label of the image row (e.g. "similar by RI").
      images: [n, S, S, 3] raw images, the input first.
      captions: n captions under the images (prediction scores).
      method_maps: method name → [n, S, S] heat maps of that method's interpretation.
      method_captions: method name → n captions under its maps (masked-image scores).
    """

    name: str
    images: np.ndarray
    captions: Sequence[str]
    method_maps: Mapping[str, np.ndarray]
    method_captions: Mapping[str, Sequence[str]]


def case_study_figure(blocks: Sequence[CaseBlock], *, title: str | None = None,
                      path: str | Path | None = None) -> Figure:
    """The case-study grid of Figures 2 and 3.

    For each block: a row with the input and its similar images (captioned with their
    prediction scores), then one row per method with that method's heat maps on the
    same images (captioned with the score of the image masked to its top 20 %).

    Args:
      blocks: the ``CaseBlock``s, drawn top to bottom.
      title: figure title.
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
        rows.append([Cell(im, None, c, highlight=i == 0)
                     for i, (im, c) in enumerate(zip(images, block.captions))])
        labels.append(block.name)
        for method, maps in block.method_maps.items():
            maps = _stack(maps, f"blocks[{block.name!r}].method_maps[{method!r}]", n, 3, "[n, S, S]")
            caps = block.method_captions[method]
            if len(caps) != n:
                raise ValueError(f"blocks[{block.name!r}].method_captions[{method!r}]: expected "
                                 f"{n}, got {len(caps)}")
            rows.append([Cell(im, m, c, highlight=i == 0)
                         for i, (im, m, c) in enumerate(zip(images, maps, caps))])
            labels.append(method)
    return image_grid(rows, row_labels=labels, title=title, path=path)


def k_curves_figure(ks: Sequence[int], curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                    errors: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                    metrics: Sequence[str] = ("mAD", "mAI"), dashed: Sequence[str] = (),
                    title: str | None = None, path: str | Path | None = None) -> Figure:
    """Metric against K, one line per method, one panel per metric (Figure 4).

    Args:
      ks: the K values, increasing.
      curves: method → metric → one value per K (percent).
      errors: optional method → metric → one ± value per K (drawn as error bars).
      metrics: which metrics get a panel, in order.
      dashed: methods drawn dashed (the controls).
      title: figure title.
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
    fig = Figure(figsize=(4.2 * len(metrics), 3.4), dpi=100)
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
            ax.errorbar(ks, y, yerr=err, marker="o", markersize=3, capsize=2, label=method,
                        linestyle="--" if method in dashed else "-")
        ax.set_xlabel("K")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
