"""Datasets: folder trees, CSV listings, and real datasets that arrive offline.

Every loader returns ``(sources, y, class_names)``: ``sources`` a list of image
file paths, ``y`` an int64 array indexing ``class_names``.  Datasets that ship
as arrays (Fashion-MNIST, the LFW subset, TFDS) are written once as PNG files
under ``$FEATX_HOME/datasets/<name>/<split>/<class>/`` so that the same
path-based flow, and the content-hash cache, apply to them as to a user's folder.

Examples
--------
>>> from featx.datasets import load_lfw_subset
>>> sources, y, names = load_lfw_subset()  # scikit-image ships it: works offline
>>> len(sources), names
(200, ['face', 'non-face'])
"""

from __future__ import annotations

import csv
import io
import gzip
import importlib.util
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._env import featx_home, file_lock
from .errors import FeatxError, InvalidParameterError, MissingDependencyError
from .images import IMAGE_EXTENSIONS, list_images

__all__ = [
    "Dataset",
    "DATASETS",
    "find_splits",
    "load_image_folder",
    "load_csv",
    "load_paths",
    "load_source",
    "load_elpv",
    "load_fashion_mnist",
    "load_lfw_subset",
    "load_tfds",
    "load_dataset",
]

Dataset = Tuple[List[str], np.ndarray, List[str]]

#: Folder names recognised as the training and test halves of a split tree.
TRAIN_NAMES = ("train", "training", "training-data", "training_data", "training_set")
TEST_NAMES = ("test", "testing", "testing-data", "testing_data", "test_set", "val",
              "valid", "validation")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


# --------------------------------------------------------------------------- folders


def find_splits(root) -> Dict[str, Path]:
    """``{"train": path, "test": path}`` when ``root`` holds a train/test split tree, else ``{}``.

    Recognises the Keras tutorials' names (``training-data`` / ``testing-data``)
    as well as ``train`` / ``test`` / ``val``.

    Examples
    --------
    >>> import tempfile, os
    >>> from featx.datasets import find_splits
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "training-data", "a"))
    >>> os.makedirs(os.path.join(root, "testing-data", "a"))
    >>> sorted(find_splits(root))
    ['test', 'train']
    """
    root = Path(root)
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    train = next((children[n] for n in TRAIN_NAMES if n in children), None)
    test = next((children[n] for n in TEST_NAMES if n in children), None)
    return {"train": train, "test": test} if train is not None and test is not None else {}


def load_image_folder(root, *, split: Optional[str] = None,
                      class_names: Optional[Sequence[str]] = None) -> Dataset:
    """Images of a class-folder tree ``root/<class>/**/<image>``.

    Parameters
    ----------
    root : path
        The tree's root.  If it holds a split tree (see :func:`find_splits`),
        ``split`` picks ``"train"`` or ``"test"``.
    split : {"train", "test"}, optional
    class_names : sequence of str, optional
        Fix the class order (e.g. the training split's, for a test split);
        default: the sorted folder names.

    Raises
    ------
    FeatxError
        ``root`` is missing or not a folder, a class folder holds no image, or
        there is no class folder at all.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from featx.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, cls))
    ...     Image.new("RGB", (8, 8)).save(os.path.join(root, cls, "1.png"))
    >>> sources, y, names = load_image_folder(root)
    >>> names, y.tolist()
    (['cat', 'dog'], [0, 1])
    """
    root = Path(root)
    if not root.exists():
        raise FeatxError(f"{root}: no such folder (expected a folder of class folders)")
    if not root.is_dir():
        raise FeatxError(f"{root}: not a folder (expected a folder of class folders)")
    splits = find_splits(root)
    if split is not None:
        if split not in ("train", "test"):
            raise InvalidParameterError(f"split must be 'train' or 'test', got {split!r}")
        if not splits:
            raise FeatxError(f"{root}: no train/test split folders (looked for "
                             f"{TRAIN_NAMES[:3]} and {TEST_NAMES[:3]})")
        root = splits[split]
    elif splits:
        raise FeatxError(f"{root} holds a train/test split tree ({splits['train'].name}, "
                         f"{splits['test'].name}); pass split='train' or split='test'")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(class_names) if class_names is not None else found
    if not names:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise FeatxError(f"{root}: no class folders{hint}; expected {root}/<class>/<image>")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise FeatxError(f"{root}: class folders {unknown} are not among the known classes "
                         f"{names}")
    sources: List[str] = []
    labels: List[int] = []
    for index, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue  # a test split may lack a class; the caller decides if that matters
        paths = list_images(folder)
        if not paths:
            raise FeatxError(f"{folder}: class {name!r} holds no image files "
                             f"(expected {', '.join(sorted(IMAGE_EXTENSIONS))})")
        sources.extend(paths)
        labels.extend([index] * len(paths))
    return sources, np.asarray(labels, dtype=np.int64), names


def load_csv(path, *, path_column: str = "path", label_column: str = "label",
             class_names: Optional[Sequence[str]] = None) -> Dataset:
    """Images listed in a CSV with ``path,label`` columns.

    Relative paths resolve against the CSV's own folder, so a dataset folder
    can be moved as a whole.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from featx.datasets import load_csv
    >>> root = tempfile.mkdtemp(); Image.new("RGB", (8, 8)).save(os.path.join(root, "a.png"))
    >>> _ = open(os.path.join(root, "list.csv"), "w").write("path,label\\na.png,cat\\n")
    >>> sources, y, names = load_csv(os.path.join(root, "list.csv"))
    >>> os.path.basename(sources[0]), names
    ('a.png', ['cat'])
    """
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"{path}: no such CSV file")
    rows = _read_listing(path, path_column, label_column)
    if not rows:
        raise FeatxError(f"{path}: the CSV lists no images")
    names = (list(class_names) if class_names is not None
             else sorted({label for _, _, label in rows}))
    index = {name: i for i, name in enumerate(names)}
    sources, labels = [], []
    first_seen: dict = {}  # image -> (line, label)
    for line, image, label in rows:
        if label not in index:
            raise FeatxError(f"{path}:{line}: label {label!r} is not among {names}")
        full = Path(image) if os.path.isabs(image) else path.parent / image
        resolved = os.path.normpath(str(full))
        if resolved in first_seen:
            seen_line, seen_label = first_seen[resolved]
            if seen_label != label:
                raise FeatxError(
                    f"{path}:{line}: {image!r} is labelled {label!r} here and {seen_label!r} "
                    f"on line {seen_line}; expected one label per image")
        else:
            first_seen[resolved] = (line, label)
        sources.append(str(full))
        labels.append(index[label])
    return sources, np.asarray(labels, dtype=np.int64), names


def load_paths(path, *, path_column: str = "path") -> List[str]:
    """Image paths listed in a file, for prediction: no labels needed.

    A ``.csv`` needs a ``path`` column (others, such as ``label``, are ignored);
    a ``.txt`` has one path per line (blank lines and ``#`` comments skipped).
    Relative paths resolve against the listing's own folder.

    Examples
    --------
    >>> import os, tempfile
    >>> from featx.datasets import load_paths
    >>> root = tempfile.mkdtemp()
    >>> _ = open(os.path.join(root, "new.txt"), "w").write("a.png\\n\\n# later\\nb/c.jpg\\n")
    >>> [os.path.relpath(p, root) for p in load_paths(os.path.join(root, "new.txt"))]
    ['a.png', 'b/c.jpg']
    """
    path = Path(path)
    if path.suffix.lower() == ".txt":
        text = _listing_text(path)
        images = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
                  if line.strip() and not line.strip().startswith("#")]
    else:
        images = [(line, image) for line, image, _ in _read_listing(path, path_column, None)]
    if not images:
        raise FeatxError(f"{path}: the listing names no images")
    return [image if os.path.isabs(image) else str(path.parent / image) for _, image in images]


def _listing_text(path: Path) -> str:
    """A listing's text: UTF-8 (with or without a BOM), or an error naming the line."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise FeatxError(
            f"{path}:{line}: not UTF-8 (byte {path.read_bytes()[exc.start]:#04x}); expected a "
            "UTF-8 CSV — re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as exc:
        raise FeatxError(f"{path}: cannot read the listing: {exc.strerror or exc}") from None


def _read_listing(path: Path, path_column: str, label_column: Optional[str]
                  ) -> List[Tuple[int, str, Optional[str]]]:
    """(line, image, label) rows of a CSV listing, every row checked (no labels when
    ``label_column`` is None).

    The encoding is UTF-8 (with or without a BOM); a file in another encoding is
    refused with the line that is not UTF-8, rather than read as mojibake paths.
    """
    text = _listing_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise FeatxError(f"{path}: the CSV is empty; expected a header "
                         f"'{','.join(c for c in (path_column, label_column) if c)}'") from None
    header = [h.strip() for h in header]
    wanted = [c for c in (path_column, label_column) if c is not None]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise FeatxError(f"{path}: missing column(s) {missing}; found {header} "
                         f"(expected a header '{','.join(wanted)}')")
    at_path = header.index(path_column)
    at_label = header.index(label_column) if label_column is not None else None
    rows = []
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank lines
        if len(fields) != len(header):
            raise FeatxError(f"{path}:{line}: {len(fields)} field(s), expected {len(header)} "
                             f"({', '.join(header)})")
        image = fields[at_path].strip()
        label = fields[at_label].strip() if at_label is not None else None
        if not image:
            raise FeatxError(f"{path}:{line}: empty {path_column!r}; expected an image path")
        if at_label is not None and not label:
            raise FeatxError(f"{path}:{line}: empty {label_column!r} for {image!r}; expected a "
                             "class name (remove unlabelled images from a training listing)")
        rows.append((line, image, label))
    return rows


def load_source(source, *, split: Optional[str] = None, limit: Optional[int] = None) -> Dataset:
    """A folder tree or a CSV, whichever ``source`` is (what the CLI's SRC accepts).

    ``limit`` keeps the first ``limit // n_classes`` images of each class.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from featx.datasets import load_source
    >>> root = tempfile.mkdtemp()
    >>> for label in ("cat", "dog"):
    ...     os.mkdir(os.path.join(root, label))
    ...     for i in range(3):
    ...         Image.new("RGB", (8, 8)).save(os.path.join(root, label, f"{i}.png"))
    >>> sources, y, names = load_source(root, limit=4)
    >>> len(sources), y.tolist(), names
    (4, [0, 0, 1, 1], ['cat', 'dog'])
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in (".csv", ".tsv", ".txt"):
        sources, y, names = load_csv(source)
    else:
        sources, y, names = load_image_folder(source, split=split)
    if limit:
        keep = _stratified_first(y, limit, len(names))
        sources, y = [sources[i] for i in keep], y[keep]
    return sources, y, names


# --------------------------------------------------------------------------- materialising


def _materialise(name: str, split: str, images: np.ndarray, y: np.ndarray,
                 class_names: Sequence[str]) -> List[str]:
    """Write array images once as PNG files under FEATX_HOME; return their paths in order.

    A folder is trusted only once its ``COMPLETE`` marker (with the count) is
    written; it is built in a temporary sibling and renamed, so an interrupted
    run never leaves a half dataset that a later run would use.
    """
    target = featx_home() / "datasets" / name / split
    marker = target / "COMPLETE"
    width = len(str(max(len(images) - 1, 0)))
    paths = [str(target / _safe(class_names[label]) / f"{i:0{width}d}.png")
             for i, label in enumerate(y)]
    if _complete(marker, len(images)):
        return paths
    target.parent.mkdir(parents=True, exist_ok=True)
    # Another process may be writing the same dataset: wait for it, then use its folder
    # (replacing it would pull files from under a reader).
    with file_lock(target.parent / f".{split}.lock", what=f"dataset {name}/{split}"):
        if not _complete(marker, len(images)):
            _write_split(target, images, y, class_names, width)
    return paths


def _complete(marker: Path, count: int) -> bool:
    try:
        return marker.read_text().strip() == str(count)
    except OSError:
        return False


def _write_split(target: Path, images: np.ndarray, y: np.ndarray,
                 class_names: Sequence[str], width: int) -> None:
    """Write the PNGs in a temporary sibling, then rename it into place."""
    from PIL import Image

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for i, (image, label) in enumerate(zip(images, y)):
            folder = staging / _safe(class_names[label])
            folder.mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:0{width}d}.png", optimize=False)
        (staging / "COMPLETE").write_text(str(len(images)))
        if target.exists():  # an incomplete folder from an interrupted run
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _safe(name: str) -> str:
    """A class name usable as one folder name ("T-shirt/top" → "T-shirt_top")."""
    return name.replace("/", "_").replace("\\", "_").replace("\0", "_") or "_"


def _stratified_first(y: np.ndarray, limit: Optional[int], n_classes: int) -> np.ndarray:
    """Indices of the first ``limit // n_classes`` items of each class, in original order."""
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    if limit < n_classes:
        raise InvalidParameterError(
            f"limit={limit} is smaller than the number of classes ({n_classes})")
    per_class = limit // n_classes
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(n_classes)])
    return np.sort(keep)


# --------------------------------------------------------------------------- offline datasets


def load_elpv(task: str = "binary", *, limit: Optional[int] = None) -> Dataset:
    """ELPV solar cells: 2,624 electroluminescence photos, 300×300 gray (Deitsch et al. 2019).

    The PNG files inside the ``elpv-dataset`` package are used in place.

    Parameters
    ----------
    task : {"binary", "levels", "type"}
        ``binary``: defective = defect probability ≥ 0.5 (classes
        ``functional``, ``defective``; majority rate 0.687); ``levels``: the four
        probabilities 0, 1/3, 2/3, 1; ``type``: ``mono`` vs ``poly`` module.
    limit : int, optional
        Keep the first ``limit // n_classes`` images of each class.

    Raises
    ------
    MissingDependencyError
        When ``elpv-dataset`` is not installed (the message gives the pip command).

    Examples
    --------
    >>> from featx.datasets import load_elpv
    >>> sources, y, names = load_elpv(limit=4)
    >>> len(sources), names
    (4, ['functional', 'defective'])
    """
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the ELPV dataset comes from the pip package 'elpv-dataset': "
            "pip install elpv-dataset   (or: pip install 'featx[datasets]')")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    labels_csv = data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise FeatxError(f"{labels_csv}: missing from the installed elpv-dataset package")
    table = np.genfromtxt(labels_csv, dtype=["|S19", "<f8", "|S4"],
                          names=["path", "probability", "type"])
    paths = [str(data_dir / p) for p in np.char.decode(table["path"])]
    probs = table["probability"]
    if task == "binary":
        names = ["functional", "defective"]
        y = (probs >= 0.5).astype(np.int64)
    elif task == "levels":
        names = ["0", "1/3", "2/3", "1"]
        y = np.rint(probs * 3).astype(np.int64)
    elif task == "type":
        names = ["mono", "poly"]
        y = (np.char.decode(table["type"]) == "poly").astype(np.int64)
    else:
        raise InvalidParameterError(f"task must be 'binary', 'levels' or 'type', got {task!r}")
    keep = _stratified_first(y, limit, len(names))
    return [paths[i] for i in keep], y[keep], names


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic, = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise FeatxError(f"{path}: truncated IDX file ({data.size} values for shape {dims})")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "train", *, limit: Optional[int] = None,
                       root: str = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST (Zalando): 60,000 train / 10,000 test, 28×28 gray, 10 balanced classes.

    Read from the Debian package ``dataset-fashion-mnist`` (IDX files under
    ``/usr/share/datasets/fashion-mnist``), materialised once as PNG files.

    Parameters
    ----------
    split : {"train", "test"}
    limit : int, optional
        Keep the first ``limit // 10`` images of each class.

    Examples
    --------
    >>> from featx.datasets import load_fashion_mnist
    >>> sources, y, names = load_fashion_mnist("test", limit=20)  # doctest: +SKIP
    >>> len(sources), names[:2]  # doctest: +SKIP
    (20, ['T-shirt/top', 'Trouser'])
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise InvalidParameterError(f"split must be 'train' or 'test', got {split!r}")
    images_path = Path(root) / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = Path(root) / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise MissingDependencyError(
            f"Fashion-MNIST files not found in {root}; install them with: "
            "sudo apt-get install dataset-fashion-mnist")
    images = _read_idx(images_path)
    y = _read_idx(labels_path).astype(np.int64)
    keep = _stratified_first(y, limit, 10)
    name = "fashion-mnist" if limit is None else f"fashion-mnist-{limit}"
    paths = _materialise(name, split, images[keep], y[keep], FASHION_MNIST_CLASSES)
    return paths, y[keep], list(FASHION_MNIST_CLASSES)


def load_lfw_subset() -> Dataset:
    """scikit-image's LFW subset: 200 25×25 gray images, 100 faces then 100 non-faces.

    Examples
    --------
    >>> from featx.datasets import load_lfw_subset
    >>> sources, y, names = load_lfw_subset()  # doctest: +SKIP
    >>> len(sources), names  # doctest: +SKIP
    (200, ['face', 'non-face'])
    """
    try:
        from skimage import data
    except ImportError as exc:
        raise MissingDependencyError(
            "the LFW subset ships with scikit-image: pip install scikit-image") from exc
    images = np.clip(np.rint(data.lfw_subset() * 255), 0, 255).astype(np.uint8)
    y = np.repeat(np.array([0, 1], dtype=np.int64), 100)
    names = ["face", "non-face"]
    return _materialise("lfw-subset", "all", images, y, names), y, names


def load_tfds(name: str, *, split: str = "train", limit: Optional[int] = None,
              data_dir: Optional[str] = None) -> Dataset:
    """A TensorFlow Datasets image-classification set (e.g. ``beans``, ``malaria``, ``cats_vs_dogs``).

    Needs ``tensorflow_datasets`` and either the prepared data in ``data_dir``
    or network access to download it; otherwise the error says which.
    Images are written once as PNG files under ``$FEATX_HOME/datasets/tfds-<name>/``.

    Examples
    --------
    >>> from featx.datasets import load_tfds
    >>> sources, y, names = load_tfds("beans", limit=30)  # doctest: +SKIP
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise MissingDependencyError(
            f"tfds:{name} needs tensorflow_datasets: pip install tensorflow-datasets") from exc
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=split, as_supervised=True)
    except Exception as exc:  # tfds raises many types; the message is what matters
        raise FeatxError(
            f"tfds:{name} is not available here ({type(exc).__name__}: {str(exc)[:200]}). "
            "It needs network access to download, or the prepared data under data_dir "
            "(default ~/tensorflow_datasets).") from exc
    class_names = builder.info.features["label"].names
    images, labels = [], []
    for image, label in tfds.as_numpy(dataset):
        if limit is not None and len(images) >= limit:
            break
        images.append(np.asarray(image))
        labels.append(int(label))
    y = np.asarray(labels, dtype=np.int64)
    paths = _materialise(f"tfds-{name}", split, images, y, class_names)
    return paths, y, list(class_names)


#: Names accepted by ``featx baseline --dataset`` and :func:`load_dataset`.
DATASETS = {
    "elpv": lambda **kw: load_elpv("binary", **kw),
    "elpv-levels": lambda **kw: load_elpv("levels", **kw),
    "elpv-type": lambda **kw: load_elpv("type", **kw),
    "fashion-mnist": lambda **kw: load_fashion_mnist("train", **kw),
    "fashion-mnist-test": lambda **kw: load_fashion_mnist("test", **kw),
    "lfw-subset": lambda **kw: load_lfw_subset(),
}


def load_dataset(name: str, *, limit: Optional[int] = None) -> Dataset:
    """Load a named offline dataset, or ``tfds:<name>``.

    Examples
    --------
    >>> from featx.datasets import DATASETS
    >>> sorted(DATASETS)[:3]
    ['elpv', 'elpv-levels', 'elpv-type']
    """
    if name.startswith("tfds:"):
        return load_tfds(name[5:], limit=limit)
    if name not in DATASETS:
        raise InvalidParameterError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, "
            "or tfds:<name>")
    if name == "lfw-subset":
        return DATASETS[name]()
    return DATASETS[name](limit=limit)
