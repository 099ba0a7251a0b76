"""``ri_jax.explain``: names, counts and maps against the pure functions it wraps; the README snippet."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import ri_jax
from ri_jax.api import choose_inputs
from ri_jax.baselines.gradcam import gradcam_weights
from ri_jax.checkpoint import save_checkpoint
from ri_jax.data import load_dataset
from ri_jax.heatmaps import cam, polytope_heatmap
from ri_jax.interpreter import RepresentativeInterpreter

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 6


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_model, tiny_config):
    """The tiny VGG as a checkpoint folder and a folder data set of both its classes."""
    fns, params = tiny_model
    root = tmp_path_factory.mktemp("api")
    checkpoint = save_checkpoint(root / "ckpt", params, tiny_config)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate(tiny_config.class_names):
            folder = root / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):  # class b brighter, so a random net may split them
                pixels = rng.integers(0, 128, (40, 40, 3)) + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{cls}{i}.png")
    return fns, params, str(checkpoint), str(root / "data")


def test_explain_matches_the_interpreter_and_names_everything(tiny_setup, tmp_path):
    fns, params, checkpoint, data = tiny_setup
    result = ri_jax.explain(model=checkpoint, data=data, num_inputs=3, top_k=3,
                            num_boundaries=6, seed=1, variant="paper")
    train = load_dataset(data, "train", image_size=32)
    test = load_dataset(data, "test", image_size=32)
    chosen = choose_inputs(test.labels, 3, seed=1)
    assert len(result) == 3 and [e.file for e in result] == [test.ids[i] for i in chosen]
    # The same answer straight from the pure interpreter.
    interp = RepresentativeInterpreter(lambda x: fns.features(params, x),
                                       lambda p: fns.head(params, p),
                                       fns.normalize(train.raw(range(len(train)))),
                                       key=jax.random.key(1), num_boundaries=6, progress=False,
                                       variant="paper")
    direct = interp.interpret_batch(fns.normalize(test.raw(chosen)), top_k=3)
    ref_psi = interp.reference_set.feats
    for b, e in enumerate(result):
        assert e.true_class == test.class_names[test.labels[chosen[b]]]
        assert e.predicted_class == test.class_names[int(direct.predicted_class[b])]
        assert e.misclassified == (e.true_class != e.predicted_class)
        assert e.num_boundaries == int(direct.num_selected[b]) and e.num_sampled == 6
        assert e.num_covered == int(direct.num_covered[b]) == sum(e.covered_predicted.values())
        assert sum(e.covered_labels.values()) == e.num_covered
        assert e.covered_predicted[e.predicted_class] == int(
            direct.num_covered[b] - direct.num_covered_other[b])
        np.testing.assert_allclose(e.heatmap, direct.heatmap[b], atol=1e-5)
        sims = [int(j) for j in direct.similar[b] if j >= 0]
        assert [r.index for r in e.similar] == sims
        assert [r.file for r in e.similar] == [train.ids[j] for j in sims]
        assert [r.rank for r in e.similar] == list(range(1, len(sims) + 1))
        x_psi = fns.features(params, fns.normalize(jnp.asarray(e.image[None])))[0]
        alpha = gradcam_weights(lambda p: fns.head(params, p), x_psi, int(direct.predicted_class[b]))
        # atol 1e-4: ψ of one image and of a batch round differently on some CPUs' conv
        # kernels, and the min-max normalised map amplifies that (3.9e-5 seen on a Xeon).
        np.testing.assert_allclose(e.gradcam_heatmap, cam(alpha, x_psi, 32), atol=1e-4)
        for r in e.similar:
            assert r.true_class == train.class_names[train.labels[r.index]]
            np.testing.assert_allclose(r.image, train.raw([r.index])[0])
            np.testing.assert_allclose(r.heatmap, polytope_heatmap(
                e.details.alphas, e.details.selected, ref_psi[r.index], 32), atol=1e-5)
            np.testing.assert_allclose(r.gradcam_heatmap, cam(alpha, ref_psi[r.index], 32),
                                       atol=1e-5)
        text = str(e)
        assert e.name in text and e.describe() in text
        assert ("MISCLASSIFIED" in e.headline()) == e.misclassified
    summary = str(result)
    assert f"{len(train):,} reference images" in summary and "|Q| = 6" in summary
    fig = result.save(tmp_path / "all.png")
    assert fig.stat().st_size > 0 and result[0].save(tmp_path / "one.png").stat().st_size > 0
    page = result.save_html(tmp_path / "report")
    html = page.read_text()
    assert html.count('<section class="input"') == 3 and all(e.name in html for e in result)


def test_explain_own_uint8_images_and_options(tiny_setup):
    _, _, checkpoint, data = tiny_setup
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 50, 40, 3)).astype(np.uint8)  # not square, not 32 px
    result = ri_jax.explain(images, checkpoint=checkpoint, data=data, top_k=2, num_boundaries=4,
                            piecewise_linear=True, variant="paper")
    assert [e.name for e in result] == ["image 0", "image 1"]
    assert all(e.true_class is None and e.misclassified is None for e in result)
    assert result[0].image.shape == (32, 32, 3)
    one = ri_jax.explain(images[0], checkpoint=checkpoint, data=data, top_k=2, num_boundaries=4,
                         variant="paper")
    np.testing.assert_allclose(one[0].heatmap, result[0].heatmap, atol=1e-6)
    with pytest.raises(ValueError, match="images: expected raw uint8"):
        ri_jax.explain(images / 255.0, checkpoint=checkpoint, data=data)
    with pytest.raises(ValueError, match="images: expected uint8 images"):
        ri_jax.explain(np.zeros((4, 4), np.uint8), checkpoint=checkpoint, data=data)
    with pytest.raises(ValueError, match="inputs"):
        ri_jax.explain(images, inputs=[0], checkpoint=checkpoint, data=data)
    with pytest.raises(ValueError, match="inputs"):
        ri_jax.explain(inputs=[99], checkpoint=checkpoint, data=data)
    with pytest.raises(ValueError, match="images: an ImageSet at 40 px"):
        ri_jax.explain(load_dataset(data, "test", image_size=40), checkpoint=checkpoint, data=data)
    with pytest.raises(ValueError, match="top_k"):
        ri_jax.explain(checkpoint=checkpoint, data=data, top_k=0)
    with pytest.raises(TypeError, match="no_such_option"):
        ri_jax.explain(checkpoint=checkpoint, data=data, num_boundaries=4, no_such_option=1)


@pytest.mark.parametrize("variant", ["authors", "paper"])
def test_explain_an_own_model_with_each_variant(protocol_model, tmp_path, variant):
    fns, params, raw, _, classes = protocol_model
    model = ri_jax.Model.from_functions(fns.features, fns.head, params=params, image_size=32,
                                        class_names=("a", "b"), normalize=fns.normalize)
    pixels = (raw * 255).round().astype(np.uint8)
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in (16, 17):
        Image.fromarray(pixels[i]).save(folder / f"x{i}.png")
    result = ri_jax.explain(folder, model=model, references=pixels[:16], top_k=2,
                            num_boundaries=5, variant=variant, progress=False)
    assert [e.name for e in result] == ["x16.png", "x17.png"]
    assert result.config["variant"] == variant and all(e.num_sampled == 5 for e in result)
    assert all(e.num_references == 16 and e.true_class is None for e in result)
    assert [e.predicted_class for e in result] == [("a", "b")[c] for c in classes[16:18]]
    again = ri_jax.explain(pixels[16:18], model=model, references=pixels[:16], top_k=2,
                           num_boundaries=5, variant=variant, progress=False)
    for e, f in zip(result, again):  # PNG round trip is lossless: the same answer
        np.testing.assert_array_equal(e.details.selected, f.details.selected)
    with pytest.raises(ValueError, match="images: a list must hold only"):
        ri_jax.explain([folder / "x16.png", pixels[0]], model=model, references=pixels[:16])
    for bad in ({"batch_size": 0}, {"seed": -1}, {"num_boundaries": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ri_jax.explain(pixels[16:18], model=model, references=pixels[:16], **bad)


def readme_snippet(section: str) -> str:
    """The first Python block of a README section."""
    text = (ROOT / "README.md").read_text()
    part = text.split(f"## {section}", 1)[1]
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


def run_snippet(snippet: str, folder: Path) -> subprocess.CompletedProcess:
    script = folder / "snippet.py"
    script.write_text(snippet)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_readme_library_snippet_runs_as_a_script(tmp_path):
    snippet = readme_snippet("The library in three snippets")
    assert "print(" in snippet
    run = run_snippet(snippet, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Representative interpretations of 4 image(s)" in run.stdout
    assert "polytope of" in run.stdout and "MISCLASSIFIED" in run.stdout
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(f.stat().st_size > 10_000 for f in figures)
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.slow
def test_readme_own_model_snippet_runs_as_a_script(tmp_path):
    snippet = readme_snippet("Explain your own model")
    assert "Model.from_functions" in snippet and "nn.Module" in snippet
    run = run_snippet(snippet, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Representative interpretations of 4 image(s) by own functions" in run.stdout
    assert run.stdout.count("polytope of") == 4
    assert (tmp_path / "own_model.png").stat().st_size > 10_000
    page = (tmp_path / "own_report" / "index.html").read_text()
    assert page.count('<section class="input"') == 4


def test_tensorflow_datasets_is_imported_only_for_tfds_specs():
    code = ("import sys, ri_jax, ri_jax.api, ri_jax.data\n"
            "s = ri_jax.data.load_dataset('default', 'train'); s.raw([0, 1])\n"
            "print('tensorflow_datasets' in sys.modules, 'tensorflow' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["False", "False"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["authors", "paper"])
def test_interpret_script_and_explain_give_the_same_answers(protocol_model, tiny_config, tmp_path,
                                                            variant):
    """The main job is a shell over the one-call API: for the same seed and inputs, the same
    pools (or shared sample) and the same answer, bit for bit."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import interpret

    fns, params, raw, _, _ = protocol_model  # balanced: both classes are predicted
    checkpoint = save_checkpoint(tmp_path / "ckpt", params, tiny_config)
    pixels = (raw * 255).round().astype(np.uint8)
    for split, rows in (("train", range(0, 16)), ("test", range(16, 24))):
        for i in rows:
            folder = tmp_path / "data" / split / tiny_config.class_names[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f"{i:02d}.png")
    data = str(tmp_path / "data")
    script = interpret.main(["--model", str(checkpoint), "--data", data, "--out",
                             str(tmp_path / "out"), "--inputs", "0,3,5", "--num-boundaries", "5",
                             "--top-k", "2", "--seed", "3", "--no-progress",
                             "--ri-variant", variant])
    api = ri_jax.explain(model=str(checkpoint), data=data, inputs=[0, 3, 5], num_boundaries=5,
                         top_k=2, seed=3, progress=False, variant=variant)
    assert script["config"]["ri_variant"] == api.config["variant"] == variant
    shared = script["config"]["boundary_references"]
    assert shared == api.config["boundary_references"]
    assert (shared is None) == (variant == "authors")
    for record, e in zip(script["inputs"], api):
        assert record["file"] == e.file and record["predicted_class"] == e.predicted_class
        assert record["num_boundaries"] == e.num_boundaries
        assert record["num_covered"] == e.num_covered
        assert record["tau"] == int(e.details.diagnostics.tau)
        assert [s["file"] for s in record["similar"]] == [r.file for r in e.similar]
        assert [s["distance"] for s in record["similar"]] == [r.distance for r in e.similar]


@pytest.mark.slow
def test_explain_defaults_give_each_input_its_own_polytope():
    """The authors' variant (the default) on the embedded model: at least 6 distinct polytopes
    among 8 test inputs; the paper's variant gives most inputs of a class the same one."""
    result = ri_jax.explain(num_inputs=8, top_k=1, progress=False)
    assert result.config["variant"] == "authors"
    # Polytopes that cover different reference sets are different polytopes.
    covered = {np.asarray(e.details.covered).tobytes() for e in result}
    assert len(covered) >= 6
