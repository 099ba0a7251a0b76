"""Overlays against a per-pixel loop; figure layouts checked through their axes and saved PNGs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib import colormaps
from PIL import Image

from ri_jax.plots import (INPUT_COLOUR, CaseBlock, Cell, case_study_figure, image_grid,
                          interpretation_figure, k_curves_figure, overlay)


def slow_overlay(image, heat, alpha, cmap):
    """One pixel at a time: clip both, colour the map value, blend."""
    out = np.empty(image.shape)
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            v = min(max(float(heat[i, j]), 0.0), 1.0)
            colour = np.asarray(colormaps[cmap](v)[:3])
            out[i, j] = (1 - alpha) * np.clip(image[i, j], 0, 1) + alpha * colour
    return out


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 6), alpha=st.floats(0, 1), cmap=st.sampled_from(["jet", "viridis"]),
       seed=st.integers(0, 2**31 - 1))
def test_overlay_matches_per_pixel_blend(size, alpha, cmap, seed):
    rng = np.random.default_rng(seed)
    # Values a little outside [0, 1] exercise the clipping.
    image = rng.uniform(-0.2, 1.2, (size, size, 3))
    heat = rng.uniform(-0.5, 1.5, (size, size))
    got = overlay(image, heat, alpha=alpha, cmap=cmap)
    assert got.shape == (size, size, 3)
    np.testing.assert_allclose(got, slow_overlay(image, heat, alpha, cmap), atol=1e-12)
    assert got.min() >= 0 and got.max() <= 1


def test_overlay_extremes():
    image = np.random.default_rng(0).random((4, 4, 3))
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    np.testing.assert_allclose(overlay(image, heat, alpha=0.0), image)
    jet = colormaps["jet"]
    np.testing.assert_allclose(overlay(image, heat, alpha=1.0)[0, 0], jet(0.0)[:3])
    np.testing.assert_allclose(overlay(image, heat, alpha=1.0)[3, 3], jet(1.0)[:3])


@pytest.mark.parametrize("image, heat, kwargs, match", [
    (np.zeros((4, 4)), np.zeros((4, 4)), {}, "raw_image"),
    (np.zeros((4, 4, 4)), np.zeros((4, 4)), {}, "raw_image"),
    (np.zeros((4, 4, 3)), np.zeros((4, 5)), {}, "heatmap"),
    (np.zeros((4, 4, 3)), np.full((4, 4), np.nan), {}, "heatmap"),
    (np.full((4, 4, 3), np.inf), np.zeros((4, 4)), {}, "raw_image"),
    (np.zeros((4, 4, 3)), np.zeros((4, 4)), {"alpha": 1.5}, "alpha"),
    (np.zeros((4, 4, 3)), np.zeros((4, 4)), {"cmap": "no-such-map"}, "cmap"),
])
def test_overlay_rejects_bad_input(image, heat, kwargs, match):
    with pytest.raises(ValueError, match=match):
        overlay(image, heat, **kwargs)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_image_grid_layout_captions_frames_and_png(tmp_path):
    rng = np.random.default_rng(1)
    img = lambda: rng.random((8, 8, 3))
    heat = rng.random((8, 8))
    rows = [[Cell(img(), None, "first", highlight=True), Cell(img(), heat, "second")],
            [Cell(img(), heat, "third")]]
    path = tmp_path / "sub" / "grid.png"
    fig = image_grid(rows, row_labels=["row one", "row two"], title="T", path=path, dpi=50)
    shown = image_axes(fig)
    assert len(shown) == 3 and len(fig.axes) == 4  # the short row leaves one blank axis
    assert [ax.get_xlabel() for ax in shown] == ["first", "second", "third"]
    np.testing.assert_allclose(shown[1].images[0].get_array(), overlay(rows[0][1].image, heat))
    assert all(s.get_visible() for s in shown[0].spines.values())
    assert not any(s.get_visible() for s in shown[1].spines.values())
    assert shown[0].spines["top"].get_edgecolor()[:3] == pytest.approx(
        tuple(int(INPUT_COLOUR[i:i + 2], 16) / 255 for i in (1, 3, 5)))
    with Image.open(path) as saved:
        w, h = fig.get_size_inches() * 50
        # Agg truncates fractional pixel sizes.
        assert abs(saved.size[0] - w) < 1 and abs(saved.size[1] - h) < 1
    with pytest.raises(ValueError, match="rows"):
        image_grid([[]])
    with pytest.raises(ValueError, match="row_labels"):
        image_grid(rows, row_labels=["only one"])


def test_interpretation_figure_rows_and_captions(tmp_path):
    rng = np.random.default_rng(2)
    x, hx = rng.random((8, 8, 3)), rng.random((8, 8))
    sims, hs = rng.random((3, 8, 8, 3)), rng.random((3, 8, 8))
    caps = ["in", "a", "b", "c"]
    fig = interpretation_figure(x, hx, sims, hs, caps, ["m0", "m1", "m2", "m3"],
                                path=tmp_path / "f.png")
    shown = image_axes(fig)
    assert len(shown) == 8
    assert [ax.get_xlabel() for ax in shown] == caps + ["m0", "m1", "m2", "m3"]
    np.testing.assert_allclose(shown[0].images[0].get_array(), x)
    np.testing.assert_allclose(shown[6].images[0].get_array(), overlay(sims[1], hs[1]))
    assert (tmp_path / "f.png").stat().st_size > 0
    # No similar image (a polytope covering no reference): the input alone.
    alone = interpretation_figure(x, hx, np.zeros((0, 8, 8, 3)), np.zeros((0, 8, 8)), ["in"])
    assert len(image_axes(alone)) == 2
    with pytest.raises(ValueError, match="captions"):
        interpretation_figure(x, hx, sims, hs, caps[:3])
    with pytest.raises(ValueError, match="similar_heatmaps"):
        interpretation_figure(x, hx, sims, hs[:2], caps)
    with pytest.raises(ValueError, match="similar_images"):
        interpretation_figure(x, hx, sims[0], hs, caps)


def test_case_study_figure_one_row_per_method_per_block(tmp_path):
    rng = np.random.default_rng(3)

    def block(name, n, methods):
        return CaseBlock(name, rng.random((n, 8, 8, 3)), [f"{name}{i}" for i in range(n)],
                         {m: rng.random((n, 8, 8)) for m in methods},
                         {m: [f"{m}:{i}" for i in range(n)] for m in methods})

    blocks = [block("ri", 5, ["RI", "Grad-CAM"]), block("eu", 3, ["Grad-CAM"])]
    fig = case_study_figure(blocks, title="case", path=tmp_path / "c.png")
    shown = image_axes(fig)
    assert len(shown) == 5 * 3 + 3 * 2
    labels = [ax.get_ylabel() for ax in shown if ax.get_ylabel()]
    assert labels == ["ri", "RI", "Grad-CAM", "eu", "Grad-CAM"]
    assert shown[5].get_xlabel() == "RI:0" and shown[-1].get_xlabel() == "Grad-CAM:2"
    np.testing.assert_allclose(shown[-1].images[0].get_array(),
                               overlay(blocks[1].images[2], blocks[1].method_maps["Grad-CAM"][2]))
    framed = [ax for ax in shown if ax.spines["left"].get_visible()]
    assert len(framed) == 3 + 2  # the input column of every row
    bad = blocks[0]._replace(method_captions={"RI": ["x"] * 5})
    with pytest.raises(ValueError, match="method_captions"):
        case_study_figure([bad])
    with pytest.raises(ValueError, match="captions"):
        case_study_figure([blocks[0]._replace(captions=["x"])])
    with pytest.raises(ValueError, match="blocks"):
        case_study_figure([])


def test_k_curves_lines_styles_and_errors(tmp_path):
    ks = [1, 5, 10]
    curves = {"RI": {"mAD": [1.0, 2.0, 3.0], "mAI": [30.0, 31.0, 32.0]},
              "Random": {"mAD": [9.0, 8.0, 7.0], "mAI": [5.0, 6.0, 7.0]}}
    errors = {"RI": {"mAD": [0.1, 0.2, 0.3], "mAI": [1.0, 1.0, 1.0]}}
    fig = k_curves_figure(ks, curves, errors=errors, dashed=["Random"], path=tmp_path / "k.png")
    ad, ai = fig.axes
    assert ad.get_ylabel() == "mAD (%)" and ai.get_ylabel() == "mAI (%)"
    lines = {c.get_label(): c.lines[0] for c in ad.containers}  # errorbar: label on the container
    np.testing.assert_allclose(lines["RI"].get_ydata(), curves["RI"]["mAD"])
    np.testing.assert_allclose(lines["Random"].get_xdata(), ks)
    assert lines["Random"].get_linestyle() == "--" and lines["RI"].get_linestyle() == "-"
    assert [t.get_text() for t in ad.get_legend().get_texts()] == ["RI", "Random"]
    assert ad.containers[0].has_yerr and not ad.containers[1].has_yerr
    assert (tmp_path / "k.png").stat().st_size > 0
    with pytest.raises(ValueError, match="ks"):
        k_curves_figure([5, 1], curves)
    with pytest.raises(ValueError, match="3 values"):
        k_curves_figure(ks, {"RI": {"mAD": [1.0], "mAI": [1.0, 2.0, 3.0]}})
    with pytest.raises(ValueError, match="NaN"):
        k_curves_figure(ks, {"RI": {"mAD": [1.0, np.nan, 2.0], "mAI": [1.0, 2.0, 3.0]}})
    with pytest.raises(ValueError, match="missing metric"):
        k_curves_figure(ks, {"RI": {"mAD": [1.0, 2.0, 3.0]}})
    with pytest.raises(ValueError, match="errors"):
        k_curves_figure(ks, curves, errors={"RI": {"mAD": [1.0]}})
