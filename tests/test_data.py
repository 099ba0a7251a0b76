import numpy as np
import pytest
from PIL import Image

from ri_jax.data import (DatasetError, load_dataset, sample_count, sample_per_class,
                         stratified_split)


def _write(path, mode="RGB", size=(40, 30), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)


@pytest.fixture
def folder(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                _write(tmp_path / split / cls / f"{i}.png", value=40 * i)
    return tmp_path


def test_embedded_default():
    d = load_dataset("default", "test")
    assert d.class_names == ("cat", "dog") and len(d) == 2000
    assert np.bincount(d.labels).tolist() == [1000, 1000]
    x = d.raw([0, 1999])
    assert x.shape == (2, 96, 96, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def test_folder_dataset_and_batches(folder):
    d = load_dataset(str(folder), "train", image_size=32)
    assert d.class_names == ("cat", "dog") and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    chunks = list(d.batches(4))
    assert [len(i) for i, _ in chunks] == [4, 2] and chunks[0][1].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(d.subset([5, 0]).raw([0]), d.raw([5]))
    np.testing.assert_array_equal(d.cached().raw([2, 3]), d.raw([2, 3]))


def test_grayscale_and_rgba_become_rgb(tmp_path):
    _write(tmp_path / "train" / "a" / "g.png", mode="L", value=200)
    _write(tmp_path / "train" / "b" / "t.png", mode="RGBA", value=10)
    d = load_dataset(str(tmp_path), "train", image_size=32)
    x = d.raw([0, 1])
    assert x.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(x[0], 200 / 255, atol=1e-6)


def test_corrupt_file_names_the_file(folder):
    bad = folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    d = load_dataset(str(folder), "train", image_size=32)
    with pytest.raises(DatasetError, match="broken.jpg"):
        d.raw(np.arange(len(d)))


def test_missing_class_names_the_folder(folder):
    import shutil
    shutil.rmtree(folder / "test" / "dog")
    (folder / "test" / "other").mkdir()
    _write(folder / "test" / "other" / "x.png")
    with pytest.raises(DatasetError, match=r"missing class folder\(s\) \['dog'\]"):
        load_dataset(str(folder), "test", class_names=("cat", "dog"))


def test_empty_class_missing_split_single_class(folder, tmp_path):
    (folder / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*no images"):
        load_dataset(str(folder), "train")
    with pytest.raises(DatasetError, match="missing split 'val'"):
        load_dataset(str(folder), "val")
    one = tmp_path / "one"
    _write(one / "train" / "only" / "a.png")
    with pytest.raises(DatasetError, match="at least 2 class"):
        load_dataset(str(one), "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"), "train")


def test_tfds_source_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        d = load_dataset("tfds:cats_vs_dogs", "train", image_size=32)
        assert len(d) == 6 and d.class_names == ("cat", "dog")
        x = d.raw(np.arange(6))
        assert x.shape == (6, 32, 32, 3) and np.isfinite(x).all()
        assert set(d.labels.tolist()) <= {0, 1}


def test_seeded_sampling():
    labels = np.array([0] * 50 + [1] * 30)
    a = sample_per_class(labels, 10, seed=1)
    assert len(a) == 20 and np.array_equal(a, sample_per_class(labels, 10, seed=1))
    assert np.bincount(labels[a]).tolist() == [10, 10]
    assert len(sample_per_class(labels, 0, seed=1)) == 80
    assert len(sample_count(80, 25, seed=0)) == 25 and len(sample_count(80, 0, seed=0)) == 80
    rest, held = stratified_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(rest, held)) == 0 and len(rest) + len(held) == 80
    assert np.bincount(labels[held]).tolist() == [5, 3]


def test_tfds_set_without_test_split_is_carved_from_train():
    from types import SimpleNamespace

    from ri_jax.data import _tfds_split

    fake = SimpleNamespace(info=SimpleNamespace(splits={"train": None}))
    with pytest.warns(UserWarning, match="no 'test' split"):
        assert _tfds_split(fake, "cats_vs_dogs", "test") == "train[80%:]"
    with pytest.warns(UserWarning):
        assert _tfds_split(fake, "cats_vs_dogs", "train") == "train[:80%]"
    assert _tfds_split(fake, "cats_vs_dogs", "train[:10]") == "train[:10]"
