"""Overlays against a per-pixel loop; figure layouts checked through their axes and saved PNGs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib import colormaps
from PIL import Image

from ri_jax.plots import (COLORBAR_LABEL, FLAG_COLOUR, INPUT_COLOUR, CaseBlock, Cell,
                          case_study_figure, count_phrase, image_grid, interpretation_figure,
                          k_curves_figure, overlay, polytope_description)


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
    # The short row leaves one blank axis; the colour bar is the fifth.
    assert len(shown) == 3 and len(fig.axes) == 5
    assert fig.axes[-1].get_ylabel().replace("\n", " ") == COLORBAR_LABEL
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


def rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))


def test_image_grid_flags_footnote_and_colorbar_choice():
    rng = np.random.default_rng(4)
    img = rng.random((8, 8, 3))
    plain = image_grid([[Cell(img, None, "a"), Cell(img, None, "b", flagged=True)]],
                       footnote="what it means")
    assert len(plain.axes) == 2  # no heat map: no colour bar
    a, b = plain.axes
    assert not a.spines["top"].get_visible() and b.spines["top"].get_visible()
    assert b.spines["top"].get_edgecolor()[:3] == pytest.approx(rgb(FLAG_COLOUR))
    assert b.xaxis.label.get_color() == FLAG_COLOUR
    assert [t.get_text() for t in plain.texts] == ["what it means"]
    forced = image_grid([[Cell(img, None, "a")]], colorbar=True, colorbar_label="scale")
    assert forced.axes[-1].get_ylabel() == "scale"
    bare = image_grid([[Cell(img, rng.random((8, 8)), "a")]], colorbar=False)
    assert len(bare.axes) == 1


def test_count_phrase_and_polytope_description():
    assert count_phrase({"cat": 5, "dog": 1020, "bird": 0}) == "1,020 dog, 5 cat"
    assert count_phrase({"cat": 2}, word="predicted") == "2 predicted cat"
    assert count_phrase({"cat": 0}) == "none"
    assert (polytope_description(17, {"cat": 1025, "dog": 0})
            == "polytope of 17 boundaries covering 1,025 training images, all predicted cat")
    assert (polytope_description(1, {"cat": 1, "dog": 0}, references="references")
            == "polytope of 1 boundary covering 1 references, the one predicted cat")
    assert (polytope_description(3, {"cat": 1020, "dog": 5}, label_counts={"cat": 1000, "dog": 25})
            == "polytope of 3 boundaries covering 1,025 training images: 1,020 predicted cat, "
               "5 predicted dog (true labels: 1,000 cat, 25 dog)")
    empty = polytope_description(0, {"cat": 1500, "dog": 500}, delta=600)
    assert empty.startswith("empty polytope") and "all 2,000 training images" in empty
    assert "δ = 600" in empty and "blank" in empty


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
    flagged = interpretation_figure(x, hx, sims, hs, caps, flagged=[True, False, True, False],
                                    title="T", footnote="F")
    frames = [ax.spines["left"].get_edgecolor()[:3] for ax in image_axes(flagged)]
    assert frames[0] == pytest.approx(rgb(FLAG_COLOUR)) and frames[2] == pytest.approx(rgb(FLAG_COLOUR))
    assert not image_axes(flagged)[1].spines["left"].get_visible()
    assert "F" in [t.get_text() for t in flagged.texts]
    with pytest.raises(ValueError, match="flagged"):
        interpretation_figure(x, hx, sims, hs, caps, flagged=[True])
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
    marked = blocks[1]._replace(flagged=[False, True, False])
    red = [ax for ax in image_axes(case_study_figure([marked], footnote="n"))
           if ax.spines["left"].get_edgecolor()[:3] == pytest.approx(rgb(FLAG_COLOUR))
           and ax.spines["left"].get_visible()]
    assert len(red) == 2  # the flagged image in its image row and its Grad-CAM row
    with pytest.raises(ValueError, match="flagged"):
        case_study_figure([blocks[1]._replace(flagged=[True])])
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
    fig = k_curves_figure(ks, curves, errors=errors, dashed=["Random"], footnote="what K is",
                          path=tmp_path / "k.png")
    ad, ai = fig.axes
    assert ad.get_ylabel() == "mAD (%), lower is better"
    assert ai.get_ylabel() == "mAI (%), higher is better"
    assert [t.get_text() for t in fig.texts] == ["what K is"]
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
