import numpy as np
from PIL import Image

from ri_jax.data import load_dataset
from ri_jax.featurize import compute_features
from conftest import as_model


def test_features_batched_cached_and_padded(tmp_path, tiny_model):
    fns, params = tiny_model
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "d" / "train" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "d" / "train" / cls / f"{i}.png")
    images = load_dataset(str(tmp_path / "d"), "train", image_size=32)
    idx = np.array([7, 1, 3])
    f = compute_features(as_model(fns, params), images, idx, batch_size=2, cache_dir=tmp_path / "c", progress=False)
    raw = images.raw(idx)
    psi = fns.features(params, fns.normalize(raw))
    np.testing.assert_allclose(f.psi, psi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.logits, fns.head(params, psi), rtol=1e-5, atol=1e-6)
    assert f.labels.tolist() == images.labels[idx].tolist() and f.indices.tolist() == idx.tolist()
    assert len(list((tmp_path / "c").glob("features-*.npz"))) == 1
    again = compute_features(as_model(fns, params), images, idx, batch_size=2, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(again.psi, f.psi)
    other = compute_features(as_model(fns, params), images, idx[:2], batch_size=2, cache_dir=tmp_path / "c",
                             progress=False)
    assert other.psi.shape[0] == 2 and len(list((tmp_path / "c").glob("features-*.npz"))) == 2
