"""``featx.audit()`` and ``featx.similar()``: data checks on the vectors already cached.

The images go through the engine once (a warm cache forwards none); every check
then works on vectors, folds and out-of-fold probabilities: exact and near
duplicates and where they leak, label-issue candidates, a 2-D map and a
label-budget curve.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from ..errors import InvalidDataError, InvalidParameterError
from ..images import as_sources
from ._checks import (LEAKING, Calibration, calibrate, duplicate_pairs, label_budget,
                      label_issues, near_copy, original_pixels, project_2d)
from ._neighbours import nearest, neighbour_backend, unit_rows
from ._verify import PixelVerifier, verify_pairs

__all__ = ["audit", "audit_baseline", "AuditResult", "similar", "Match", "CHECKS"]

log = logging.getLogger("featx")

#: Every check :func:`audit` can run.
CHECKS = ("duplicates", "labels", "map", "budget")
#: Training images from which the audit fits its folds in parallel processes by default.
PARALLEL_FROM = 5000


def _pandas():
    from ._checks import _require

    return _require("pandas", "featx.audit's result tables")


@dataclass
class AuditResult:
    """What :func:`featx.audit` found, as pandas DataFrames and plain data.

    Attributes
    ----------
    sources : list
        Every audited image (train first, then test), as given.
    labels : ndarray or None
        Class name of each source (None: unlabelled).
    split : ndarray of str
        ``"train"`` or ``"test"`` per source.
    fold : ndarray of int
        The cross-validation fold holding each training image out (-1: none).
    duplicates : DataFrame
        One row per duplicate pair: ``kind`` (exact | near), ``relation``
        (train/test, across folds, same fold, within test, within set),
        ``similarity`` (cosine of the vectors), ``pixel_score`` (the verifier's
        copy score; NaN where unverified), ``a``/``b`` (source indices),
        ``source_a``/``source_b``, ``label_a``/``label_b``. Leaking pairs first.
    label_issues : DataFrame
        ``index``, ``source``, ``given``, ``suggested``, ``self_confidence``;
        most likely mislabelled first.
    map : DataFrame
        ``index``, ``x``, ``y``, ``source``, ``label``, ``prediction`` and
        ``flag`` (duplicate, label issue, misclassified or "") of the mapped sample.
    budget : DataFrame
        ``fraction``, ``n_train``, ``balanced_accuracy``, ``std``.
    calibration : Calibration or None
    skipped : list of (source, reason)
    stats : dict
        Images, forwarded and cached counts, seconds per step, the neighbour backend.

    Examples
    --------
    >>> import numpy as np, featx
    >>> images = np.random.RandomState(1).randint(0, 255, (10, 32, 32, 3)).astype(np.uint8)
    >>> result = featx.audit(images, backbone="mobilenet_v2", weights=None, input_size=32,
    ...                      checks=["duplicates"], threshold=0.9999)
    >>> list(result.duplicates.columns[:3]), result.labels is None
    (['kind', 'relation', 'similarity'], True)
    """

    sources: list
    labels: Optional[np.ndarray]
    split: np.ndarray
    fold: np.ndarray
    duplicates: object
    label_issues: object
    map: object
    budget: object
    calibration: Optional[Calibration]
    skipped: List[tuple] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    backbone: str = ""

    def summary(self) -> dict:
        """The headline counts (what ``featx baseline``'s "data checks" section shows).

        Examples
        --------
        >>> import numpy as np, featx
        >>> images = np.random.RandomState(0).randint(0, 255, (12, 32, 32, 3)).astype(np.uint8)
        >>> images[11] = images[0]
        >>> result = featx.audit(images, backbone="mobilenet_v2", weights=None, input_size=32,
        ...                      checks=["duplicates"], threshold=0.9999)
        >>> result.summary()["exact_pairs"]
        1
        """
        d = self.duplicates
        leaking = d[d["relation"].isin(LEAKING)] if len(d) else d
        return {
            "images": int(len(self.sources) - len(self.skipped)),
            "skipped": len(self.skipped),
            "exact_pairs": int((d["kind"] == "exact").sum()) if len(d) else 0,
            "near_pairs": int((d["kind"] == "near").sum()) if len(d) else 0,
            "leaking_pairs": int(len(leaking)),
            "train_test_pairs": int((d["relation"] == "train/test").sum()) if len(d) else 0,
            "label_issues": int(len(self.label_issues)),
            "threshold": None if self.calibration is None else self.calibration.threshold,
            "pixel_threshold": None if self.calibration is None
            else self.calibration.pixel_threshold,
        }

    def to_json(self) -> dict:
        """Findings with their paths, JSON-serialisable (``featx audit --json``)."""
        def records(frame, columns):
            if frame is None or not len(frame):
                return []
            return [{c: _plain_value(r[c]) for c in columns} for _, r in frame.iterrows()]

        return {
            "backbone": self.backbone,
            "summary": self.summary(),
            "calibration": None if self.calibration is None else self.calibration.summary(),
            "duplicates": records(self.duplicates, ["kind", "relation", "similarity",
                                                    "pixel_score", "source_a", "source_b", "label_a",
                                                    "label_b"]),
            "label_issues": records(self.label_issues, ["source", "given", "suggested",
                                                        "self_confidence"]),
            "budget": records(self.budget, ["fraction", "n_train", "balanced_accuracy", "std"]),
            "skipped": [{"source": str(s), "reason": r} for s, r in self.skipped],
            "stats": {k: _plain_value(v) for k, v in self.stats.items()},
        }


def _plain_value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return f"<array {v.shape}>"
    return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "describe", lambda: "<array>")()


def _labelled(sources, y):
    """(Source list, labels or None): labels from ``y`` or a class-folder tree, else none."""
    from ..leaderboard import sources_and_labels

    if y is not None:
        return sources_and_labels(sources, y)
    if isinstance(sources, (str, os.PathLike)) and os.path.isdir(sources):
        try:
            return sources_and_labels(sources, None)
        except InvalidDataError:  # a flat folder: audit it unlabelled
            pass
    return as_sources(sources), None


def _local_splits(cv, labels, kept_train: np.ndarray, n_train: int, random_state):
    """Folds over the kept training images' positions (0..len(kept_train)-1)."""
    from ..leaderboard import cv_splits

    if isinstance(cv, int):
        return cv_splits(cv, labels, random_state)[0]
    position = np.full(n_train, -1)
    position[kept_train] = np.arange(len(kept_train))
    out = []
    for train, held in cv:  # index pairs over the caller's sources
        train, held = position[np.asarray(train)], position[np.asarray(held)]
        out.append((train[train >= 0], held[held >= 0]))
    return out


def audit(sources, y=None, *, test=None, backbone: str = "efficientnet_lite0", cache=None,
          cv=5, random_state: int = 0, weights="packaged", input_size=None,
          batch_size: Optional[int] = 32, pool: str = "auto", runtime: str = "keras",
          head="logreg", proba=None, threshold: Optional[float] = None,
          verify: bool = True, checks: Sequence[str] = CHECKS, calibration_pairs: int = 200,
          map_points: int = 2000, k: int = 10, n_jobs=None,
          progress: bool = False) -> AuditResult:
    """Check a dataset before trusting a score on it: duplicates and leakage, label issues,
    an embedding map and a label-budget curve, from one backbone's cached vectors.

    Parameters
    ----------
    sources : image sources
        As :func:`~featx.baseline` takes them; with ``y=None`` a class-folder
        tree gives labels and any other input is audited unlabelled (duplicates
        and the map only).
    y : array-like, optional
    test : (sources, y), optional
        A held-out split: duplicates across it are the leakage that matters most.
    backbone, weights, input_size, batch_size, pool, runtime
        The embedding, as for :func:`~featx.baseline`; ``cache`` makes a re-run
        forward nothing.
    cv : int or list of (train, held) index arrays, default 5
        The folds (``baseline``'s, for the same ``random_state``): duplicates in
        different folds leak into cross-validation.
    head : str or estimator, default "logreg"
        The classifier behind the out-of-fold probabilities and the label-budget curve.
    proba : (n_train, K) array, optional
        Out-of-fold probabilities already computed (NaN rows: not judged);
        skips refitting ``head`` for the label check.
    threshold : float, optional
        Cosine similarity of a near-duplicate candidate. Default: calibrated on
        ``calibration_pairs`` generated copies of this dataset's own images
        (cropped ≤ 5 %, resized ±10 %, JPEG quality 60–90; see
        :class:`~featx.quality.Calibration`).
    verify : bool, default True
        Verify each candidate on pixels (:func:`~featx.quality.copy_score`, its
        threshold calibrated on the same copies): vectors find copies, but also
        score distinct look-alikes as high (on Fashion-MNIST at 112 px, 0.57
        precision without, 1.0 with; see docs/audit.md). About a millisecond per
        candidate; the images must still be readable.
    checks : subset of {"duplicates", "labels", "map", "budget"}
    map_points : int, default 2000
        Most points on the map (flagged images first, then a random sample):
        t-SNE on 20,000 points took 112 s here, on 3,000 about 12 s.
    k : int, default 10
        Neighbours examined per image for near duplicates.
    n_jobs : int, optional
        Worker processes for the out-of-fold and label-budget fits and the pixel
        verification. Default: every core from :data:`PARALLEL_FROM` training
        images on, one process below (starting workers costs more than small
        fits); the verification takes every core from
        :data:`~featx.quality.PARALLEL_PAIRS` candidates on.

    Returns
    -------
    AuditResult

    Examples
    --------
    >>> import numpy as np, featx
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (40, 32, 32, 3)).astype(np.uint8)
    >>> images[20:] += 120
    >>> y = np.repeat(["dark", "light"], 20)
    >>> images[39] = images[0]                  # a copy of a dark image, labelled light
    >>> result = featx.audit(images, y, backbone="mobilenet_v2", weights=None,
    ...                      input_size=32, cv=4, checks=["duplicates", "labels"])
    >>> result.summary()["exact_pairs"], result.duplicates.loc[0, "relation"]
    (1, 'across folds')
    """
    pd = _pandas()
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise InvalidParameterError(f"unknown checks {sorted(unknown)}; choose from {CHECKS}")
    started = time.perf_counter()
    settings = dict(weights=weights, input_size=input_size, cache=cache, batch_size=batch_size,
                    pool=pool, runtime=runtime)
    a = _embed_step(sources, y, test, backbone, settings, cv, random_state, progress)

    # Duplicates: exact by content key, near by calibrated cosine similarity.
    calibration, pairs = None, []
    if "duplicates" in checks:
        t = time.perf_counter()
        calibration, pairs = _duplicates_step(a, threshold, verify, k, calibration_pairs,
                                              random_state, -1 if n_jobs is None else n_jobs)
        a.seconds["duplicates"] = time.perf_counter() - t

    # Out-of-fold probabilities (given, or from `head` on the same folds), label issues.
    issues, predicted, full = [], np.full(len(a.items), -1), None
    estimator = None if a.splits is None else _audit_head(head, random_state)
    if n_jobs is None:
        n_jobs = -1 if len(a.kept_train) >= PARALLEL_FROM else 1
    if estimator is not None and ("labels" in checks or "map" in checks):
        t = time.perf_counter()
        issues, predicted, full = _labels_step(a, estimator, proba, "labels" in checks,
                                               n_jobs)
        a.seconds["labels"] = time.perf_counter() - t

    map_rows = []  # flagged images first, then a random sample, up to map_points
    if "map" in checks and len(a.kept) >= 5:
        t = time.perf_counter()
        map_rows = _map_rows(a.X, a.kept, pairs, issues, predicted, a.labels, a.classes,
                             a.plain, map_points, random_state)
        a.seconds["map"] = time.perf_counter() - t

    budget = []  # the head on 5-100 % of each fold's training labels
    if "budget" in checks and estimator is not None:
        t = time.perf_counter()
        budget = label_budget(estimator, a.X[a.kept_train], a.codes, a.splits,
                              random_state=random_state, n_jobs=n_jobs, full=full)
        a.seconds["budget"] = time.perf_counter() - t

    stats = {"images": len(a.items), "embedded": int(len(a.kept)),
             "forwarded": int(a.embed_stats.get("forwarded", 0)),
             "cache_hits": int(a.embed_stats.get("cache_hits", 0)),
             "calibration_forwarded": int(a.embed_stats.get("calibration_forwarded", 0)),
             "neighbours": neighbour_backend(), "runtime": a.embed_stats.get("runtime"),
             **{k: int(v) for k, v in a.embed_stats.items() if k.startswith("duplicate_")},
             **{f"{step}_s": s for step, s in a.seconds.items()},
             "total_s": time.perf_counter() - started}
    log.info("featx audit: %d images, %d duplicate pairs, %d label issues in %.1f s",
             len(a.items), len(pairs), len(issues), stats["total_s"])
    return AuditResult(
        sources=a.plain, labels=a.labels, split=a.split, fold=a.fold,
        duplicates=_pairs_frame(pd, a, pairs), label_issues=_issues_frame(pd, a, issues),
        map=pd.DataFrame(map_rows, columns=["index", "x", "y", "source", "label",
                                            "prediction", "flag"]),
        budget=pd.DataFrame(budget, columns=["fraction", "n_train", "balanced_accuracy", "std"]),
        calibration=calibration, skipped=a.skipped, stats=stats, backbone=a.front.backbone)


@dataclass
class _Audited:
    """The images of one audit after the engine: vectors, labels, splits and folds."""

    items: list
    plain: list
    labels: Optional[np.ndarray]
    n_train: int
    split: np.ndarray
    fold: np.ndarray
    front: object
    X: np.ndarray
    kept: np.ndarray
    kept_train: np.ndarray
    keys: list
    unit: np.ndarray
    skipped: list
    embed_stats: dict
    seconds: dict
    codes: Optional[np.ndarray] = None
    classes: Optional[np.ndarray] = None
    splits: Optional[list] = None


def _embed_step(sources, y, test, backbone, settings, cv, random_state, progress) -> _Audited:
    """Every image (train, then test) through the engine once; labels, folds and keys."""
    from ..engine import key_source
    from ..leaderboard import image_front, plain_sources

    items, labels = _labelled(sources, y)
    n_train, test_labels = len(items), None
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise InvalidParameterError("test must be a (sources, y) pair; got "
                                        f"{type(test).__name__}")
        test_items, test_labels = _labelled(*test)
        items = items + test_items
    n_test = len(items) - n_train
    all_labels = None
    if labels is not None:
        tail = test_labels if test_labels is not None else [None] * n_test
        all_labels = np.concatenate([np.asarray(labels, dtype=object),
                                     np.asarray(tail, dtype=object)])
    t = time.perf_counter()
    front = image_front(backbone, settings).set_params(on_error="skip", progress=progress)
    X = front.transform(items)
    kept = np.flatnonzero(front.mask_)
    a = _Audited(
        items=items, plain=plain_sources(items), labels=all_labels, n_train=n_train,
        split=np.array(["train"] * n_train + ["test"] * n_test, dtype=object),
        fold=np.full(len(items), -1), front=front, X=X, kept=kept,
        kept_train=kept[kept < n_train],
        keys=[key_source(items[i])[0] for i in kept],  # in-process key cache: no re-read
        unit=unit_rows(X[kept]), skipped=[(f.source, f.reason) for f in front.failures_],
        embed_stats=dict(front.stats_), seconds={"embed": time.perf_counter() - t})
    if labels is not None:
        a.classes = np.unique(np.asarray(labels)[a.kept_train])
        a.codes = np.searchsorted(a.classes, np.asarray(labels)[a.kept_train])
        if len(a.classes) >= 2:
            # The labels themselves, as baseline splits them: the same folds, and an error
            # about too few images names the class.
            a.splits = _local_splits(cv, np.asarray(labels)[a.kept_train], a.kept_train,
                                     n_train, random_state)
            for f, (_, held) in enumerate(a.splits):
                a.fold[a.kept_train[held]] = f
    return a


class _Loader:
    """Image ``p`` of the embedded ones (a position in ``kept``): picklable, for workers."""

    def __init__(self, items, kept):
        self.items, self.kept = items, kept

    def __call__(self, p: int):
        return self.items[int(self.kept[p])]


def _duplicates_step(a: _Audited, threshold, verify, k, calibration_pairs, random_state,
                     n_jobs):
    """(Calibration, pairs with source indices) of the exact and near duplicates."""
    sims, idx = nearest(a.unit, k)
    verifier = PixelVerifier(_Loader(a.items, a.kept), neighbours=idx) if verify else None
    if threshold is None or verifier is not None:
        calibration, copy_stats = _calibrate(a, sims, idx, calibration_pairs, random_state,
                                             verifier, threshold)
        a.embed_stats["calibration_forwarded"] = copy_stats.get("forwarded", 0)
    else:
        calibration = Calibration(float(threshold), np.zeros(0), np.zeros(0), given=True)
    counts: dict = {}
    pairs = duplicate_pairs(a.keys, a.unit, calibration.threshold, a.split[a.kept],
                            a.fold[a.kept], k, neighbours=(sims, idx),
                            verify=None if verifier is None
                            else (lambda pairs: verify_pairs(verifier, pairs, n_jobs)),
                            pixel_threshold=calibration.pixel_threshold, stats=counts)
    a.embed_stats.update({f"duplicate_{name}": n for name, n in counts.items()})
    if counts.get("beyond_verify_limit"):
        log.warning("featx audit: %d near-duplicate candidates were not verified (the %d most "
                    "similar were); pass a higher threshold= to verify fewer",
                    counts["beyond_verify_limit"], counts["verified"])
    for p in pairs:
        p["a"], p["b"] = int(a.kept[p["a"]]), int(a.kept[p["b"]])
    return calibration, pairs


def _audit_head(head, random_state):
    """The classifier behind the audit's probabilities and curve.

    ``"logreg"`` is the baseline's head with lbfgs stopped at tol 1e-3 instead of
    1e-4: on 16,000 × 1,280 Fashion-MNIST vectors it converged in 59 iterations
    instead of 183 (2.9 s against 9.0 s a fit), and the audit fits it 5 + 25 times.
    It is regularised ten times more (C=0.1): its out-of-fold probabilities judge
    the labels it was trained on, so it must not learn the flipped ones. On 4,040
    Fashion-MNIST training images with 2 % of labels flipped, the flips among the
    80 most likely issues went from 47 to 53 at 112 px and from 51 to 54 at 28 px,
    and the out-of-fold accuracy rose by about a point.
    """
    from ..heads import make_head

    if not isinstance(head, str):
        return head
    estimator = make_head(head, random_state=random_state)
    if head == "logreg":
        estimator.set_params(clf__tol=1e-3, clf__C=0.1)
    return estimator


def _labels_step(a: _Audited, estimator, proba, find_issues: bool, n_jobs):
    """(label issues, predicted class code per source or -1) from out-of-fold probabilities."""
    from ..leaderboard import out_of_fold

    if proba is None:
        oof = out_of_fold(estimator, a.X[a.kept_train], a.codes, a.splits,
                          np.arange(len(a.classes)), n_jobs=n_jobs)
    else:
        oof = np.asarray(proba, np.float64)
        if oof.shape[0] == a.n_train:
            oof = oof[a.kept_train]
        if oof.shape != (len(a.kept_train), len(a.classes)):
            raise InvalidDataError(f"proba must have one row per training image and one "
                                   f"column per class ({len(a.kept_train)} × "
                                   f"{len(a.classes)}); got {np.shape(proba)}")
    predicted = np.full(len(a.items), -1)
    covered = np.isfinite(oof).all(axis=1)
    predicted[a.kept_train[covered]] = np.argmax(oof[covered], axis=1)
    issues = label_issues(a.codes, oof) if find_issues else []
    for issue in issues:
        issue["index"] = int(a.kept_train[issue["index"]])
    full = None  # the curve's 100 % point: these very fits, when they are the head's own
    if proba is None:
        from sklearn.metrics import balanced_accuracy_score

        full = [balanced_accuracy_score(a.codes[held], np.argmax(oof[held], axis=1))
                for _, held in a.splits]
    return issues, predicted, full


def _class_name(a: _Audited, code: int):
    return None if a.classes is None or code < 0 else str(a.classes[code])


def _pairs_frame(pd, a: _Audited, pairs):
    return pd.DataFrame([{
        "kind": p["kind"], "relation": p["relation"], "similarity": p["similarity"],
        "pixel_score": p.get("pixel_score", np.nan), "a": p["a"], "b": p["b"], "source_a": _describe(a.plain[p["a"]]),
        "source_b": _describe(a.plain[p["b"]]),
        "label_a": None if a.labels is None else a.labels[p["a"]],
        "label_b": None if a.labels is None else a.labels[p["b"]]} for p in pairs],
        columns=["kind", "relation", "similarity", "pixel_score", "a", "b", "source_a",
                 "source_b", "label_a", "label_b"])


def _issues_frame(pd, a: _Audited, issues):
    return pd.DataFrame([{
        "index": i["index"], "source": _describe(a.plain[i["index"]]),
        "given": _class_name(a, i["given"]), "suggested": _class_name(a, i["suggested"]),
        "self_confidence": i["self_confidence"]} for i in issues],
        columns=["index", "source", "given", "suggested", "self_confidence"])


def audit_baseline(result, *, class_names=None, checks=("duplicates", "labels"),
                   progress: bool = False) -> AuditResult:
    """The audit of a :func:`~featx.run_baseline` run, reusing what it computed.

    Same images, same cache, the board's folds and the best row's out-of-fold
    probabilities (when the board evaluated out of fold), on the first
    backbone of the board: no image is forwarded again except the calibration
    copies, once per cache. ``featx baseline`` puts its summary in the report's
    "data checks" section.

    Parameters
    ----------
    result : BaselineResult
    class_names : sequence of str, optional
        Names of integer labels (as ``featx baseline`` trains on indices).
    checks : subset of :data:`CHECKS`, default ("duplicates", "labels")

    Returns
    -------
    AuditResult

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.quality import audit_baseline
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (24, 32, 32, 3)).astype(np.uint8)
    >>> images[12:] += 120
    >>> images[23] = images[0]
    >>> y = np.repeat(["dark", "light"], 12)
    >>> result = featx.run_baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                             weights=None, input_size=32, cv=3)
    >>> audit_baseline(result).summary()["exact_pairs"]
    1
    """
    board, settings = result.board, result.settings
    names = None if class_names is None else np.asarray(class_names, dtype=object)

    def named(y):
        return y if names is None else names[np.asarray(y, dtype=int)]

    labels = named(result.y)
    proba = None
    evaluation = result.evaluation
    if evaluation.indices is not None and evaluation.model is None:
        classes = np.asarray(board.classes_)
        # Columns from the board's class order to the audit's (sorted label text).
        order = np.argsort(np.asarray([str(c) for c in named(classes)], dtype=object),
                           kind="stable")
        proba = np.full((len(result.sources), len(classes)), np.nan)
        proba[evaluation.indices] = np.asarray(evaluation.proba)[:, order]
        present = np.unique(labels[np.isfinite(proba).all(axis=1)])
        if len(present) != len(classes):
            proba = None  # a class left with no image: let the audit refit on its own
    test = None
    if result.test is not None:
        test = (result.test[0], named(result.test[1]))
    backbone = settings["backbones"][0]
    return audit(result.sources, labels, test=test, backbone=backbone,
                 cache=settings.get("cache"), cv=board.splits,
                 random_state=settings.get("random_state", 0), weights=settings["weights"],
                 input_size=settings["input_size"], batch_size=settings["batch_size"],
                 pool=settings["pool"], runtime=settings.get("runtime", "keras"), proba=proba,
                 checks=checks, progress=progress)


def _calibrate(a: _Audited, sims, idx, n_pairs, random_state, verifier=None,
               threshold=None):
    """Generated copies of a sample of training images, scored as pairs are scored.

    The copies go through the same front as the images (cached, so a re-run
    forwards none of them) unless the user fixed the cosine threshold; with a
    verifier, each copy and each sampled image's nearest distinct image are
    scored on pixels too.
    """
    rng = np.random.default_rng(random_state)
    pool = a.kept_train if len(a.kept_train) else a.kept
    position = {int(i): p for p, i in enumerate(a.kept)}
    sample = rng.choice(pool, size=min(n_pairs, len(pool)), replace=False)
    copies, originals, pixel_copies = [], [], []
    for i in sample:
        try:
            original = original_pixels(a.items[i])
            copy = near_copy(original, rng)
        except (OSError, ValueError) as exc:  # unreadable now: skip it as a pair
            log.debug("featx audit: no calibration copy of %s: %s", a.items[i].describe(), exc)
            continue
        copies.append(copy)
        originals.append(position[int(i)])
        if verifier is not None:
            pixel_copies.append(verifier.copy_scores(position[int(i)], [copy])[0])
    # Every image's most similar image with other content (position in a.kept, or -1).
    distinct = np.full(len(a.keys), -1)
    distinct_sim = np.full(len(a.keys), np.nan)
    for p in range(len(a.keys)):
        for s, j in zip(sims[p], idx[p]):
            if j >= 0 and a.keys[j] != a.keys[p]:
                distinct[p], distinct_sim[p] = j, s
                break
    copy_stats, copy_sims = {}, np.zeros(0)
    if threshold is None:
        copy_front = a.front.set_params(progress=False)
        vectors = (copy_front.transform(copies) if copies
                   else np.zeros((0, a.unit.shape[1])))
        ok = np.isfinite(vectors).all(axis=1)
        copy_sims = np.einsum("ij,ij->i", a.unit[np.asarray(originals, int)[ok]],
                              unit_rows(vectors[ok]))
        pixel_copies = np.asarray(pixel_copies)[ok] if verifier is not None else None
        copy_stats = dict(copy_front.stats_)
    pixel_distinct = None
    if verifier is not None:
        mine = [position[int(i)] for i in sample]
        pixel_distinct = verifier.scores([(p, distinct[p]) for p in mine if distinct[p] >= 0])
        pixel_copies = np.asarray(pixel_copies, np.float64)
    return calibrate(copy_sims, distinct_sim[np.isfinite(distinct_sim)], pixel_copies,
                     pixel_distinct, threshold), copy_stats


def _map_rows(X, kept, pairs, issues, predicted, labels, classes, plain, limit, random_state):
    flag = {}
    for p in pairs:
        for i in (p["a"], p["b"]):
            flag.setdefault(i, "duplicate")
    for issue in issues:
        flag[issue["index"]] = "label issue"
    if labels is not None and classes is not None:
        for i in kept:
            if predicted[i] >= 0 and str(classes[predicted[i]]) != str(labels[i]):
                flag.setdefault(int(i), "misclassified")
    rng = np.random.default_rng(random_state)
    flagged = [i for i in kept if int(i) in flag]
    chosen = list(rng.permutation(flagged)[: limit // 2]) if len(flagged) > limit // 2 \
        else flagged
    rest = np.setdiff1d(kept, chosen)
    chosen = np.sort(np.concatenate([np.asarray(chosen, int),
                                     rng.permutation(rest)[: max(0, limit - len(chosen))]]))
    coords = project_2d(X[chosen], random_state)
    return [{"index": int(i), "x": float(x), "y": float(yv), "source": _describe(plain[i]),
             "label": None if labels is None else labels[i],
             "prediction": None if predicted[i] < 0 or classes is None
             else str(classes[predicted[i]]),
             "flag": flag.get(int(i), "")} for i, (x, yv) in zip(chosen, coords)]


class Match(NamedTuple):
    """One answer of :func:`similar`.

    Examples
    --------
    >>> from featx.quality import Match
    >>> Match("/data/cat.jpg", 0.97, b"k" * 32).path
    '/data/cat.jpg'
"""

    path: Optional[str]
    similarity: float
    key: bytes


def similar(query, cache, *, backbone: str = "efficientnet_lite0", k: int = 10,
            weights="packaged", input_size=None, runtime: str = "keras") -> List[Match]:
    """The ``k`` cached images most similar to ``query``, with their paths.

    The query is embedded (the store is only read: it does not join the
    collection) and compared with every vector of ``backbone``'s group in the
    store by cosine similarity. Paths are where the engine last read each image
    (stores of format 2, written by this featx; vectors without a known path
    are left out).

    Parameters
    ----------
    query : image path or array
    cache : path of an :class:`~featx.EmbeddingStore`
    backbone, weights, input_size
        Must describe the backbone the collection was embedded with.
    k : int, default 10

    Returns
    -------
    list of Match
        ``(path, similarity, key)``, most similar first.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, featx
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.RandomState(0)
    >>> for i in range(4):
    ...     Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)).save(
    ...         os.path.join(folder, f"{i}.png"))
    >>> cache = os.path.join(folder, "emb.h5")
    >>> _ = featx.ImageEmbedder("mobilenet_v2", weights=None, input_size=32,
    ...                         cache=cache).fit_transform(folder)
    >>> best = featx.similar(os.path.join(folder, "2.png"), cache, backbone="mobilenet_v2",
    ...                      weights=None, input_size=32, k=2)
    >>> os.path.basename(best[0].path), round(best[0].similarity, 3)
    ('2.png', 1.0)
    """
    from ..sklearn import ImageEmbedder
    from ..store import EmbeddingStore
    from ..errors import StoreError

    if int(k) < 1:
        raise InvalidParameterError(f"k must be >= 1, got {k!r}")
    if not os.path.isfile(os.fspath(cache)):
        raise StoreError(f"{os.fspath(cache)}: no such cache file")
    store = EmbeddingStore(cache, readonly=True)
    bb = ImageEmbedder(backbone, weights=weights, input_size=input_size).load_backbone()
    from ..engine import Embedder

    engine = Embedder(bb, store=store, runtime=runtime, progress=False)
    fp = engine.fingerprint
    if fp not in store.fingerprints():
        groups = "; ".join(f"{(store.spec(g) or {}).get('name', '?')} {g[:16]}"
                           for g in store.fingerprints()) or "none"
        raise StoreError(f"{store.path}: no vectors of {bb.name} at {bb.input_size} px with "
                         f"these weights (fingerprint {fp[:16]}); groups: {groups}. Embed the "
                         "collection first (featx embed SRC --cache F -b BACKBONE)")
    vector = engine.embed([query] if not isinstance(query, np.ndarray) or query.ndim == 3
                          else query)[:1]
    keys, vectors = [], []
    for block_keys, block in store.iter_rows(fp):
        keys.append(block_keys)
        vectors.append(block)
    keys = np.concatenate(keys) if keys else np.zeros((0, 32), np.uint8)
    paths = store.paths_of(keys)
    with_path = np.flatnonzero([p is not None for p in paths])
    if not len(with_path):
        return []
    base = unit_rows(np.concatenate(vectors)[with_path])
    sims, idx = nearest(base, int(k), queries=unit_rows(vector))
    return [Match(paths[with_path[j]], float(s), keys[with_path[j]].tobytes())
            for s, j in zip(sims[0], idx[0]) if j >= 0]
