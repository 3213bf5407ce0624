"""Shared plumbing of the ``examples/seed_*.py`` scripts (not an example itself).

Each seed script re-does one public Keras transfer-learning tutorial with
featx. They share the same command line, the same data handling and the same
``--quick`` self-check, kept here so that every script shows only what its
tutorial is about:

* ``--data FOLDER``: the tutorial's real dataset as a class-folder tree
  (``root/<class>/<image>``; a stratified 25 % is held out) or a split tree
  (``root/training-data/<class>/…`` + ``root/testing-data/<class>/…``; the test
  half is the evaluation set). Without it, an offline stand-in (ELPV solar cells
  or Fashion-MNIST, both installed by a package manager — see OFFLINE.md).
* ``--weights``: ``packaged`` (default; the ImageNet weights that arrive by pip),
  ``imagenet`` (Keras' download — needs network) or ``none``. When the
  tutorial's family has no packaged weights, :func:`resolve_backbone` swaps in
  the closest packaged family and prints the substitution.
* ``--quick``: a tiny subset, 64 px inputs, a few epochs (5 head epochs, 1
  fine-tuning epoch: one head epoch on ~150 images is not enough for a dense
  head to beat the majority rate reliably), and an exit code of 1
  when the script's headline result is not above the majority-class rate of its
  evaluation set (:func:`finish`). ``tests/test_examples.py`` runs every script
  this way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# Before TensorFlow is imported (by featx, lazily): no C++ start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

#: Input side used by ``--quick`` (small enough for < 1 minute on 2 CPU cores).
QUICK_SIZE = 64

#: Tutorial family → closest family with pip-packaged ImageNet weights (OFFLINE.md).
#: MobileNet v2 → MobileNet v1 (same depthwise-separable design, same 224 input);
#: everything else → EfficientNet-Lite0 (the cheapest packaged ImageNet model).
OFFLINE_SUBSTITUTE = {"mobilenet_v2": "mobilenet"}
DEFAULT_SUBSTITUTE = "efficientnet_lite0"


def parser(description: str, stand_in: str) -> argparse.ArgumentParser:
    """The command line every seed script shares (add script-specific flags to it)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="FOLDER",
                   help="the tutorial's dataset: root/<class>/<image>, or a split tree "
                        "root/training-data/<class>/… + root/testing-data/<class>/… "
                        f"(default: offline stand-in, {stand_in})")
    p.add_argument("--weights", default="packaged", choices=["packaged", "imagenet", "none"],
                   help="packaged: pip-installed ImageNet weights (offline; the closest "
                        "packaged family replaces one that has none); imagenet: Keras' "
                        "download of the tutorial's own family (needs network); none: random")
    p.add_argument("--quick", action="store_true",
                   help="tiny subset, 64 px, 5+1 epochs (< 1 minute); exit 1 unless the result "
                        "beats the majority-class rate")
    p.add_argument("--limit", type=int, help="use at most LIMIT training images (stratified)")
    p.add_argument("--input-size", type=int, help="square input side (default: the family's)")
    p.add_argument("--out", help="folder for files the script writes (default: a temp folder)")
    return p


def say(*parts) -> None:
    print(*parts, flush=True)


def resolve_backbone(family: str, weights: str) -> Tuple[str, object]:
    """(backbone name, weights argument) for the tutorial's ``family``.

    ``packaged`` weights exist only for a few families (``featx backbones``
    lists them as offline). For any other family the closest packaged one is
    used instead, and the substitution is printed: a user who has network
    passes ``--weights imagenet`` to keep the tutorial's family.
    """
    from featx.backbones import offline_available

    if weights == "none":
        return family, None
    if weights == "imagenet":
        return family, "imagenet"
    if offline_available(family):
        return family, "packaged"
    substitute = OFFLINE_SUBSTITUTE.get(family, DEFAULT_SUBSTITUTE)
    say(f"NOTE: no offline (pip-packaged) ImageNet weights for {family}; using "
        f"{substitute} with packaged weights instead. Run with --weights imagenet (needs "
        f"network) to use {family} as the tutorial does.")
    return substitute, "packaged"


def _split_hold_out(sources, y, fraction=0.25, seed=0):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(sources))
    tr, te = train_test_split(idx, test_size=fraction, stratify=y, random_state=seed)
    return ([sources[i] for i in tr], y[tr], [sources[i] for i in te], y[te])


def _subset(sources, y, limit: Optional[int], n_classes: int):
    if not limit or limit >= len(sources):
        return sources, y
    from featx.datasets import _stratified_first

    keep = _stratified_first(np.asarray(y), limit, n_classes)
    return [sources[i] for i in keep], np.asarray(y)[keep]


class Data:
    """Train and evaluation images of one run, and where they came from."""

    def __init__(self, train, y_train, test, y_test, names, described):
        self.train, self.y_train = list(train), np.asarray(y_train)
        self.test, self.y_test = list(test), np.asarray(y_test)
        self.names = list(names)
        self.described = described

    @property
    def majority_rate(self) -> float:
        """Accuracy of always predicting the evaluation set's most frequent class."""
        return float(np.bincount(self.y_test).max() / len(self.y_test))

    def summary(self) -> str:
        counts = ", ".join(f"{n}: {c}" for n, c in
                           zip(self.names, np.bincount(self.y_train, minlength=len(self.names))))
        return (f"data: {self.described}\n      {len(self.train)} training images ({counts}); "
                f"{len(self.test)} evaluation images, majority-class rate "
                f"{self.majority_rate:.3f}")


def load_folder(root: str, limit: Optional[int] = None, test_limit: Optional[int] = None) -> Data:
    """A class-folder tree (25 % held out, stratified) or a training/testing split tree."""
    from featx import datasets

    if not os.path.isdir(root):
        sys.exit(f"--data {root}: not a folder")
    splits = datasets.find_splits(root)
    if splits:
        train, y, names = datasets.load_image_folder(root, split="train")
        test, y_test, _ = datasets.load_image_folder(root, split="test", class_names=names)
        train, y = _subset(train, y, limit, len(names))
        test, y_test = _subset(test, y_test, test_limit, len(names))
        return Data(train, y, test, y_test, names,
                    f"{root} (train: {splits['train'].name}, test: {splits['test'].name})")
    sources, y, names = datasets.load_image_folder(root)
    sources, y = _subset(sources, y, None if limit is None else int(limit / 0.75), len(names))
    return Data(*_split_hold_out(sources, y), names,
                f"{root} (stratified 75/25 split, random_state=0)")


def load_elpv(task: str = "binary", limit: Optional[int] = None) -> Data:
    """ELPV solar cells (pip ``elpv-dataset``), a stratified 75/25 split (random_state=0)."""
    from featx.datasets import load_elpv as _load

    sources, y, names = _load(task, limit=None if limit is None else int(limit / 0.75))
    what = f"ELPV solar cells, task {task!r}" + (
        f", first {len(sources)} images (stratified)" if limit else ", all images")
    return Data(*_split_hold_out(sources, y), names,
                f"offline stand-in: {what}; stratified 75/25 split, random_state=0")


def load_fashion_mnist(limit: Optional[int] = None, test_limit: Optional[int] = None,
                       classes: Optional[Sequence[int]] = None) -> Data:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``): official train/test splits."""
    from featx.datasets import load_fashion_mnist as _load

    train, y, names = _load("train", limit=limit)
    test, y_test, _ = _load("test", limit=test_limit)
    if classes is not None:
        # Keep a few classes, relabelled 0..k-1 in the given order.
        remap = {c: i for i, c in enumerate(classes)}
        keep = [i for i, v in enumerate(y) if v in remap]
        keep_t = [i for i, v in enumerate(y_test) if v in remap]
        train, y = [train[i] for i in keep], np.array([remap[v] for v in y[keep]])
        test, y_test = [test[i] for i in keep_t], np.array([remap[v] for v in y_test[keep_t]])
        names = [names[c] for c in classes]
    return Data(train, y, test, y_test, names,
                f"offline stand-in: Fashion-MNIST ({len(names)} classes), official train/test "
                f"splits, first {len(train)} / {len(test)} images (stratified)")


def out_dir(args, script: str) -> str:
    path = args.out or tempfile.mkdtemp(prefix=f"featx-{script}-")
    os.makedirs(path, exist_ok=True)
    return path


# ------------------------------------------------------------------ running rows


def score(y_true, y_pred) -> Dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}


def finetune_row(label: str, data: Data, **params) -> Tuple[dict, object]:
    """Fit a FineTuneClassifier on the training images, score it on the evaluation set."""
    from featx import FineTuneClassifier

    clf = FineTuneClassifier(**params)
    t = time.perf_counter()
    clf.fit(data.train, data.y_train)
    fit_s = time.perf_counter() - t
    pred = clf.predict(data.test)
    row = {"model": label, **score(data.y_test, pred), "fit_s": fit_s,
           "epochs": "+".join(str(p["epochs_run"]) for p in clf.phases_)}
    return row, clf


def embedding_rows(data: Data, backbone: str, weights, input_size, heads=("logreg",),
                   cache: Optional[str] = None) -> List[dict]:
    """Frozen vectors (embedded once) + scikit-learn heads: the featx baseline path."""
    from featx import ImageEmbedder, make_head

    emb = ImageEmbedder(backbone=backbone, weights=weights, input_size=input_size, cache=cache)
    t = time.perf_counter()
    X_train = emb.fit_transform(data.train)
    X_test = emb.transform(data.test)
    embed_s = time.perf_counter() - t
    rows = []
    for kind in heads:
        t = time.perf_counter()
        head = make_head(kind, random_state=0).fit(X_train, data.y_train)
        fit_s = time.perf_counter() - t
        rows.append({"model": f"{backbone} vectors + {kind}",
                     **score(data.y_test, head.predict(X_test)),
                     "fit_s": fit_s + embed_s / len(heads), "epochs": "—"})
    return rows


def print_table(rows: List[dict], title: str) -> None:
    """Rows as a fixed-width text table (accuracy, balanced accuracy, fit seconds)."""
    say("")
    say(title)
    cols = [("model", "model"), ("accuracy", "accuracy"), ("balanced_accuracy", "bal. acc."),
            ("fit_s", "fit s"), ("epochs", "epochs")]
    cells = [[r["model"], f"{r['accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}",
              f"{r['fit_s']:.1f}", str(r.get("epochs", "—"))] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    say(fmt.format(*[h for _, h in cols]))
    say("  ".join("-" * w for w in widths))
    for c in cells:
        say(fmt.format(*c))


def finish(args, data: Data, headline: dict, started: float) -> int:
    """Print the verdict; with ``--quick``, 1 unless ``headline`` beats the majority rate."""
    rate = data.majority_rate
    ok = headline["accuracy"] > rate
    say(f"\nheadline: {headline['model']}: accuracy {headline['accuracy']:.3f} vs "
        f"majority-class rate {rate:.3f} → {'above' if ok else 'NOT above'}; "
        f"{time.perf_counter() - started:.0f} s in all")
    if args.quick and not ok:
        say("FAILED: --quick check (result not above the majority-class rate)")
        return 1
    return 0


#: ``--quick`` epochs (head phase, fine-tuning phase); each is ~1 s at 64 px here.
QUICK_EPOCHS = (5, 1)


def quick_settings(args, default_epochs) -> Tuple[Optional[int], object]:
    """(input size, epochs): 64 px and :data:`QUICK_EPOCHS` under ``--quick``."""
    if args.quick:
        return args.input_size or QUICK_SIZE, QUICK_EPOCHS
    return args.input_size, default_epochs


def run(main: Callable[[], int]) -> None:
    sys.exit(main())
