"""Dataset loaders: folder trees, split trees, CSV, and the offline datasets."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from featx import datasets
from featx.errors import FeatxError


def _tree(root, spec):
    """spec: {class: n_images}; returns root."""
    for cls, n in spec.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(os.path.join(root, cls, f"{i}.png"))
    return root


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    _tree(tmp_path, {"dog": 2, "cat": 3})
    sources, y, names = datasets.load_image_folder(tmp_path)
    assert names == ["cat", "dog"]
    assert y.tolist() == [0, 0, 0, 1, 1]
    assert all(os.path.isfile(p) for p in sources)


def test_split_tree_in_the_tutorials_layout(tmp_path):
    _tree(tmp_path / "training-data", {"normal": 2, "pneumonia": 2})
    _tree(tmp_path / "testing-data", {"normal": 1, "pneumonia": 1})
    with pytest.raises(FeatxError, match="split"):
        datasets.load_image_folder(tmp_path)
    train = datasets.load_image_folder(tmp_path, split="train")
    test = datasets.load_image_folder(tmp_path, split="test", class_names=train[2])
    assert len(train[0]) == 4 and len(test[0]) == 2 and test[2] == train[2]


@pytest.mark.parametrize("case,expected", [
    ("missing", "no such folder"),
    ("empty_class", "holds no image"),
    ("no_classes", "no class folders"),
])
def test_bad_folders_are_named(tmp_path, case, expected):
    if case == "empty_class":
        _tree(tmp_path, {"a": 1})
        os.makedirs(tmp_path / "b")
    elif case == "no_classes":
        Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    root = tmp_path / "nope" if case == "missing" else tmp_path
    with pytest.raises(FeatxError, match=expected) as info:
        datasets.load_image_folder(root)
    assert str(root) in str(info.value) or str(tmp_path) in str(info.value)


def test_csv_paths_resolve_against_the_csv_folder(tmp_path):
    _tree(tmp_path / "imgs", {"x": 2})
    (tmp_path / "list.csv").write_text("path,label\nimgs/x/0.png,cat\nimgs/x/1.png,dog\n")
    sources, y, names = datasets.load_source(tmp_path / "list.csv")
    assert names == ["cat", "dog"] and y.tolist() == [0, 1]
    assert sources[0] == str(tmp_path / "imgs" / "x" / "0.png")
    (tmp_path / "bad.csv").write_text("file,class\na.png,b\n")
    with pytest.raises(FeatxError, match="missing column"):
        datasets.load_csv(tmp_path / "bad.csv")


def test_lfw_subset_is_materialised_once(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("FEATX_HOME", str(tmp_path))
    sources, y, names = datasets.load_lfw_subset()
    assert len(sources) == 200 and names == ["face", "non-face"]
    assert y[:100].sum() == 0 and y[100:].sum() == 100
    first = os.path.getmtime(sources[0])
    again, _, _ = datasets.load_lfw_subset()
    assert again == sources and os.path.getmtime(again[0]) == first
    with Image.open(sources[0]) as im:
        assert im.size == (25, 25)


def test_a_dataset_another_process_is_writing_is_waited_for_not_deleted(tmp_path, monkeypatch):
    """Two processes materialising one dataset: the second waits, then uses the first's
    folder. Before, it removed that folder (which the first was already reading) and
    wrote its own."""
    import fcntl
    import threading

    monkeypatch.setenv("FEATX_HOME", str(tmp_path))
    images = np.zeros((4, 8, 8), np.uint8)
    y = np.array([0, 1, 0, 1])
    target = tmp_path / "datasets" / "demo" / "all"
    target.parent.mkdir(parents=True)
    lock = open(target.parent / ".all.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is writing the dataset
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        paths=datasets._materialise("demo", "all", images, y, ["a", "b"])))
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive(), "did not wait for the dataset lock"
    # The other process finishes: its complete folder, with a file of its own.
    (target / "a").mkdir(parents=True)
    (target / "b").mkdir()
    for i, label in enumerate("abab"):
        Image.fromarray(images[i]).save(target / label / f"{i}.png")
    (target / "theirs.txt").write_text("written by the other process")
    (target / "COMPLETE").write_text("4")
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert (target / "theirs.txt").exists(), "the other process's folder was replaced"
    assert result["paths"][0] == str(target / "a" / "0.png")


def test_fashion_mnist_from_the_debian_files(tmp_path, monkeypatch):
    if not os.path.isdir(datasets.FASHION_MNIST_DIR):
        pytest.skip("dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("FEATX_HOME", str(tmp_path))
    sources, y, names = datasets.load_fashion_mnist("test", limit=50)
    assert len(sources) == 50 and np.bincount(y).tolist() == [5] * 10
    assert names[0] == "T-shirt/top"
    with Image.open(sources[0]) as im:
        assert im.size == (28, 28)


def test_fashion_mnist_absent_says_how_to_install(tmp_path):
    with pytest.raises(FeatxError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist(root=str(tmp_path))


def test_elpv_binary_task():
    pytest.importorskip("elpv_dataset")
    sources, y, names = datasets.load_elpv()
    assert len(sources) == 2624 and names == ["functional", "defective"]
    assert abs((y == 0).mean() - 0.687) < 0.01
    small, ys, _ = datasets.load_elpv("levels", limit=40)
    assert np.bincount(ys).tolist() == [10, 10, 10, 10]


def test_tfds_without_the_package_is_explained():
    try:
        import tensorflow_datasets  # noqa: F401
        pytest.skip("tensorflow_datasets installed")
    except ImportError:
        pass
    with pytest.raises(FeatxError, match="tensorflow-datasets"):
        datasets.load_dataset("tfds:beans")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(FeatxError, match="elpv"):
        datasets.load_dataset("imagenet")
