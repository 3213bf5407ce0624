"""``run_baseline()``: every backbone × head under one cross-validation, on cached vectors.

Each backbone runs once over the unique images (through the engine, so a store
makes a re-run free); each head is then a ``GridSearchCV`` over those vectors,
with the *same* folds for every row, so the rows compare. A raw-pixel logistic
regression is always on the board as the floor an embedding must beat. The best
row's out-of-fold probabilities come from the same cached vectors, so the report
that follows runs no model.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from joblib import effective_n_jobs
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, check_cv
from sklearn.pipeline import Pipeline

from ..backbones import get_spec
from ..errors import InvalidDataError, InvalidParameterError
from ..heads import GRIDS, make_head, resolve_kind
from ..images import as_sources
from ..sklearn import ImageEmbedder, RawPixels
from ._finetune import add_finetune_rows
from ._result import BaselineResult, Evaluation, Leaderboard, Scoring, resolve_scoring

__all__ = ["baseline", "run_baseline", "RAW_PIXELS"]

log = logging.getLogger("featx")

#: The ``backbone`` value of the floor row (raw pixels at 32 × 32, logistic regression).
RAW_PIXELS = "raw_pixels_32"
_RAW_SIZE = 32
#: The floor is one setting, not a search: the three-point logreg grid over 3,072 pixel
#: features cost 5–9× the Lite0 row, and picked C = 0.01 on ELPV anyway.
FLOOR_GRID = {"clf__C": [0.01]}


# ----------------------------------------------------------------- helpers


def sources_and_labels(sources, y):
    """Validated sources and a label array; ``y=None`` reads labels from a class-folder tree."""
    if y is None:
        if not isinstance(sources, (str, os.PathLike)) or not os.path.isdir(sources):
            raise InvalidDataError("baseline needs labels: pass y, or a folder of class folders "
                                   f"(root/<class>/<image>) as sources; got y=None and "
                                   f"{type(sources).__name__} sources")
        from ..datasets import load_image_folder

        paths, labels, names = load_image_folder(sources)
        return as_sources(paths), np.asarray(names, dtype=object)[labels]
    items = as_sources(sources)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(items):
        raise InvalidDataError(f"y must be 1-D with one label per image: {len(items)} images, "
                               f"y of shape {y.shape}")
    return items, y


def _n_jobs(n_jobs) -> Tuple[Optional[int], int]:
    """(GridSearchCV workers, threads per head): their product stays within the cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    outer = effective_n_jobs(n_jobs) if n_jobs is not None else 1
    return n_jobs, max(1, cores // max(1, outer))


def cv_splits(cv, y: np.ndarray, random_state) -> Tuple[list, str]:
    if isinstance(cv, int):
        counts = {c: int((y == c).sum()) for c in np.unique(y)}
        small = ", ".join(f"{c} ({n})" for c, n in counts.items() if n < cv)
        if small:
            raise InvalidDataError(f"cv={cv} stratified folds need at least {cv} images per class; "
                                   f"too few in: {small}. Lower cv or add images")
        splitter = StratifiedKFold(cv, shuffle=True, random_state=random_state)
        text = f"{cv}-fold stratified CV (same folds for every row)"
    else:
        splitter = check_cv(cv, y, classifier=True)
        text = f"{type(splitter).__name__} (same folds for every row)"
    dummy = np.zeros((len(y), 1))
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(dummy, y)], text


def _summarise(search: GridSearchCV, scoring: Scoring) -> dict:
    res, i = search.cv_results_, search.best_index_
    row = {}
    for m in scoring.scorers:
        mean, std = float(res[f"mean_test_{m}"][i]), float(res[f"std_test_{m}"][i])
        row[m] = -mean if m in scoring.negated else mean
        row[f"{m}_std"] = std
    row["fit_s"] = float(res["mean_fit_time"][i])
    row["predict_s"] = float(res["mean_score_time"][i])
    row["n_candidates"] = len(res["params"])
    row["best_params"] = dict(search.best_params_)
    return row


def _test_scores(clf, X, y, scoring: Scoring) -> dict:
    out = {}
    for name, scorer in scoring.scorers.items():
        value = float(scorer(clf, X, y))
        out[f"test_{name}"] = -value if name in scoring.negated else value
    return out


# ----------------------------------------------------------------- the steps


@dataclass
class _Embedded:
    """Each backbone's vectors of one set of images, and which images failed."""

    features: Dict[str, np.ndarray] = field(default_factory=dict)
    fronts: Dict[str, object] = field(default_factory=dict)
    stats: Dict[str, dict] = field(default_factory=dict)
    described: Dict[str, dict] = field(default_factory=dict)
    reasons: Dict[int, str] = field(default_factory=dict)
    failed: Optional[np.ndarray] = None

    def add(self, name: str, front, X: np.ndarray) -> None:
        """``front`` just transformed the images into ``X`` (its ``mask_``/``failures_``)."""
        self.features[name], self.fronts[name] = X, front
        self.failed = ~front.mask_ if self.failed is None else self.failed | ~front.mask_
        for failure in front.failures_:
            self.reasons.setdefault(failure.index, failure.reason)

    def dropped(self, items) -> List[Tuple[int, str, str]]:
        return [(int(i), items[i].describe(), self.reasons.get(int(i), "not decodable"))
                for i in np.flatnonzero(self.failed)]


def _embed(items, backbone_names, settings: dict, progress) -> _Embedded:
    """Every backbone once over ``items`` (failures skipped and recorded), then raw pixels."""
    done = _Embedded()
    for name in backbone_names:
        front = image_front(name, settings).set_params(on_error="skip", progress=progress)
        done.add(name, front, front.transform(items))
        stats = done.stats[name] = front.stats_
        done.described[name] = front.load_backbone().describe()  # the process cache: no build
        log.info("featx baseline: %s embedded %d images (%d forwarded, %d from cache) in %.1f s",
                 name, len(items), stats.get("forwarded", 0), stats.get("cache_hits", 0),
                 stats.get("total_s", float("nan")))
    t = time.perf_counter()
    raw = image_front(RAW_PIXELS, settings).set_params(on_error="skip")
    done.add(RAW_PIXELS, raw, raw.transform(items))
    done.stats[RAW_PIXELS] = {"total_s": time.perf_counter() - t}
    return done


def _embed_test(test, fronts: Dict[str, object]):
    """The held-out split through the same fronts: (kept features by name, kept set, dropped)."""
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise InvalidParameterError(f"test must be a (sources, y) pair; got {type(test).__name__}")
    items, y = sources_and_labels(*test)
    done = _Embedded()
    for name, front in fronts.items():
        done.add(name, front, front.transform(items))
    dropped = done.dropped(items)
    if dropped:
        log.warning("featx baseline: dropped %d of %d test images that could not be embedded",
                    len(dropped), len(items))
    keep = ~done.failed
    features = {name: (X[keep], y[keep]) for name, X in done.features.items()}
    kept = [s for s, failed in zip(plain_sources(items), done.failed) if not failed]
    return features, (kept, y[keep]), dropped


def plain_sources(items) -> list:
    """The caller's own values (paths stay paths), not the engine's Source wrappers."""
    return [s.path if s.path is not None else s.array for s in items]


def image_front(name: str, settings: dict):
    """The unfitted image front end of a row: raw pixels or the backbone's embedder."""
    if name == RAW_PIXELS:
        return RawPixels(size=_RAW_SIZE)
    return ImageEmbedder(backbone=name, weights=settings["weights"],
                         input_size=settings["input_size"], cache=settings["cache"],
                         batch_size=settings["batch_size"], pool=settings["pool"],
                         runtime=settings.get("runtime", "keras"))


def _single_threaded_blas():
    """BLAS on one thread while heads fit on cached vectors.

    Their matrices are small (hundreds to thousands of rows): threaded OpenBLAS
    spent more time synchronising than computing, and far more when the cores
    were busy. Measured on 2 cores: a logistic regression on 240 x 3,072 took
    0.10 s on one thread against 0.78-0.96 s on the default pool, and 0.10
    against 0.33 s on 2,624 x 1,280. XGBoost's and libsvm's own threads are
    not BLAS and stay as they are.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _search_row(X, y, kind: str, splits, scoring: Scoring, settings: dict, grid=None):
    """One ``GridSearchCV`` of head ``kind`` on vectors ``X``: (fitted search, row)."""
    outer, inner = _n_jobs(settings["n_jobs"])
    search = GridSearchCV(make_head(kind, n_jobs=inner, random_state=settings["random_state"]),
                          grid or GRIDS[kind], scoring=scoring.scorers, refit=scoring.primary,
                          cv=splits, n_jobs=outer, error_score=np.nan)
    t = time.perf_counter()
    with _single_threaded_blas():
        search.fit(X, y)
    row = {"head": kind, "n_features": int(X.shape[1]), **_summarise(search, scoring),
           "search_s": time.perf_counter() - t}
    return search, row


def _fold_proba(estimator, X, y, train, held):
    with _single_threaded_blas():
        fitted = clone(estimator).fit(X[train], y[train])
        return fitted.classes_, fitted.predict_proba(X[held])


def out_of_fold(estimator, X, y, splits, classes, n_jobs=None) -> np.ndarray:
    """Each fold's held-out probabilities from a clone fitted on its training part.

    The same fits as ``cross_val_predict``, written out so that folds that are not
    a partition (``ShuffleSplit``) work too: images in no held-out part stay NaN.
    ``n_jobs`` fits folds in parallel worker processes (joblib); each fit keeps
    BLAS on one thread, so the two levels do not oversubscribe the cores.
    """
    from joblib import Parallel, delayed

    out = np.full((len(y), len(classes)), np.nan)
    fits = Parallel(n_jobs=n_jobs)(delayed(_fold_proba)(estimator, X, y, train, held)
                                   for train, held in splits)
    for (fitted_classes, proba), (_, held) in zip(fits, splits):
        out[np.ix_(held, np.searchsorted(classes, fitted_classes))] = proba
    return out


def _evaluation(board: Leaderboard, features, kept, kept_items, y_kept, local_splits,
                test) -> Evaluation:
    """The best cross-validated row's probabilities: on the test split, else out of fold."""
    best = board.best_
    search = board.searches_[(best["backbone"], best["head"])]
    if test is not None:
        test_features, (items, y) = test
        proba = search.best_estimator_.predict_proba(test_features[best["backbone"]][0])
        return Evaluation(items, y, proba, f"the held-out test split ({len(items)} images)")
    proba = out_of_fold(search.best_estimator_, features[best["backbone"]], y_kept,
                         local_splits, board.classes_)
    covered = np.flatnonzero(np.isfinite(proba).all(axis=1))
    return Evaluation([kept_items[i] for i in covered], y_kept[covered], proba[covered],
                      f"out-of-fold predictions of the same {len(local_splits)} folds",
                      indices=kept[covered])


def _rows_bar(n_rows: int, progress):
    """A progress bar over the board's grid searches (one step per row), or None."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n_rows, desc="grid search", unit="row", file=sys.stderr)


def _check_names(backbones, heads) -> Tuple[List[str], List[str]]:
    """Canonical backbone names and head kinds, checked before any model is built."""
    backbones = [backbones] if isinstance(backbones, str) else backbones
    heads = [heads] if isinstance(heads, str) else heads
    names = list(dict.fromkeys(get_spec(b).name for b in backbones))
    kinds = list(dict.fromkeys(resolve_kind(h) for h in heads))
    if not kinds:
        raise InvalidParameterError("heads is empty; pass at least one of featx.heads.list_heads()")
    return names, kinds


# ----------------------------------------------------------------- the run


def run_baseline(sources, y=None, *, backbones=("efficientnet_lite0",),
                 heads=("logreg", "svm", "xgboost"), cv=5, scoring=None, cache=None,
                 random_state=0, n_jobs=None, weights="packaged", input_size=None,
                 batch_size=32, progress=False, test=None, pool="auto",
                 runtime="keras") -> BaselineResult:
    """Cross-validate every backbone × head on frozen vectors; return a :class:`BaselineResult`.

    The parameters are those of :func:`~featx.baseline` (without fine-tuning:
    :func:`~featx.add_finetune_rows` is a step on the result). Besides the
    :class:`Leaderboard`, the result holds the best row's out-of-fold (or
    test-split) probabilities, computed from the cached vectors, and the images
    that were left out with the reason — everything a report or a saved model
    needs, as plain data.

    Returns
    -------
    BaselineResult

    Examples
    --------
    >>> import numpy as np, featx
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (30, 32, 32, 3)).astype(np.uint8)
    >>> images[15:] += 120
    >>> y = np.repeat(["dark", "light"], 15)
    >>> result = featx.run_baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                             weights=None, input_size=32, cv=3)
    >>> result.board.best_["balanced_accuracy"], result.evaluation.described
    (1.0, 'out-of-fold predictions of the same 3 folds')
    """
    start = time.perf_counter()
    items, y = sources_and_labels(sources, y)
    backbone_names, kinds = _check_names(backbones, heads)
    classes = np.unique(y)
    if len(classes) < 2:
        raise InvalidDataError(
            f"baseline needs at least 2 classes; y holds only {classes.tolist()}")
    scoring = resolve_scoring(scoring, len(classes))
    settings = dict(backbones=backbone_names, weights=weights, input_size=input_size,
                    batch_size=batch_size, cache=cache, random_state=random_state,
                    n_jobs=n_jobs, pool=pool, runtime=runtime)

    # 1. Features: each backbone once over all images (the engine dedups by content).
    embedded = _embed(items, backbone_names, settings, progress)
    dropped = embedded.dropped(items)
    kept = np.flatnonzero(~embedded.failed)
    if dropped:
        log.warning("featx baseline: dropped %d of %d images that could not be embedded "
                    "(first: %s)", len(dropped), len(items), dropped[0][1])
    y_kept = y[kept]
    if len(np.unique(y_kept)) < 2:
        raise InvalidDataError("fewer than 2 classes left after dropping undecodable images")
    splits, cv_text = cv_splits(cv, y_kept, random_state)
    protocol = f"{cv}-fold CV" if isinstance(cv, int) else cv_text.split(" (")[0]
    kept_items = [items[i] for i in kept]
    plain = plain_sources(items)  # what the result hands on
    test_features, test_kept, test_dropped = (_embed_test(test, embedded.fronts)
                                              if test is not None else ({}, None, []))

    # 2. Heads: one grid search per (backbone, head) on the cached vectors, same folds.
    features = {name: X[kept] for name, X in embedded.features.items()}
    rows, estimators, searches = [], {}, {}
    plan = [(n, k) for n in backbone_names for k in kinds] + [(RAW_PIXELS, "logreg")]
    bar = _rows_bar(len(plan), progress)
    for name, kind in plan:
        if bar is not None:
            bar.set_postfix_str(f"{name} × {kind}")
        search, row = _search_row(features[name], y_kept, kind, splits, scoring, settings,
                                  FLOOR_GRID if name == RAW_PIXELS else None)
        row.update(backbone=name, protocol=protocol)
        if name in test_features:
            row.update(_test_scores(search.best_estimator_, *test_features[name], scoring))
        # The head was refit on every kept image's vector by the search; fitting the
        # front end only records what it is (its vectors are the ones just used).
        front = image_front(name, settings).fit(kept_items)
        estimators[(name, kind)] = Pipeline([("embed", front), ("clf", search.best_estimator_)])
        searches[(name, kind)] = search
        rows.append(row)
        landed = (f"{name} × {kind}: {scoring.primary} {row.get(scoring.primary, np.nan):.3f} ± "
                  f"{row.get(f'{scoring.primary}_std', np.nan):.3f} ({row['n_candidates']} "
                  f"candidates, {row['search_s']:.1f} s)")
        log.info("featx baseline: %s", landed)
        if bar is not None:
            bar.write(landed, file=sys.stderr)  # each row's result as it lands, above the bar
            bar.update(1)
    if bar is not None:
        bar.close()

    board = Leaderboard(rows, scoring=scoring, splits=[(kept[tr], kept[te]) for tr, te in splits],
                        classes=classes, estimators=estimators, searches=searches,
                        n_samples=len(kept), dropped=dropped, embed_stats=embedded.stats,
                        cv_description=cv_text, test_dropped=test_dropped)
    board.backbones_ = dict(embedded.described)
    # 3. The best row's probabilities, from the same vectors: no image forwarded again.
    evaluation = _evaluation(board, features, kept, [plain[i] for i in kept], y_kept, splits,
                             (test_features, test_kept) if test is not None else None)
    skipped = [(src, why) for _, src, why in dropped + test_dropped]
    log.info("featx baseline: %d rows in %.1f s; best %s × %s", len(rows),
             time.perf_counter() - start, board.best_["backbone"], board.best_["head"])
    return BaselineResult(board=board, evaluation=evaluation, sources=plain, y=y,
                          skipped=skipped, test=test_kept, settings=settings,
                          seconds=time.perf_counter() - start)


def baseline(sources, y=None, *, backbones=("efficientnet_lite0",),
             heads=("logreg", "svm", "xgboost"), cv=5, scoring=None, cache=None, random_state=0,
             n_jobs=None, weights="packaged", input_size=None, batch_size=32, progress=False,
             test=None, finetune=False, finetune_params=None, pool="auto",
             runtime="keras") -> Leaderboard:
    """Cross-validate every backbone × head on frozen vectors; return a :class:`Leaderboard`.

    Each backbone embeds all unique images once, through the engine (with
    ``cache=`` the vectors persist, so a re-run or another head forwards
    nothing). Each head is a ``GridSearchCV(make_head(kind), GRIDS[kind])`` over
    those vectors, with the same stratified folds for every row, refit on all
    images with the primary metric. A raw-pixel logistic regression
    (``RawPixels(32)`` + ``logreg``) is always added as the floor.

    Parameters
    ----------
    sources : image sources
        Paths (list, array, Series), a folder, or a uint8 batch; with ``y=None``
        a folder of class folders (``root/<class>/<image>``).
    y : array-like, optional
        One label per image.
    backbones : list of str, default ["efficientnet_lite0"]
    heads : list of str, default ["logreg", "svm", "xgboost"]
        Kinds of :func:`featx.make_head`.
    cv : int or splitter, default 5
        An int is ``StratifiedKFold(cv, shuffle=True, random_state=random_state)``.
    scoring : None, str, list or dict, optional
        None: accuracy, balanced_accuracy, f1_macro, roc_auc (``roc_auc_ovr``
        with more than two classes) and log_loss (from ``neg_log_loss``,
        reported positive). Rows are ranked by balanced accuracy when it is
        scored, else by the first metric.
    cache : str, optional
        Path of the HDF5 :class:`~featx.EmbeddingStore`. None keeps vectors in
        this process's memo only.
    random_state : int, default 0
        Seeds the folds and the heads.
    n_jobs : int, optional
        Parallel grid-search workers. Heads then get ``cores // n_jobs``
        threads each, so the two levels do not oversubscribe the cores.
    weights : {"packaged", "imagenet"}, path or None, default "packaged"
    input_size : int, optional
        Input side for every backbone (None: each family's own).
    batch_size : int, default 32
    progress : bool, default False
    test : (sources, y), optional
        A held-out set: each row's refit model is scored on it once
        (``test_<metric>`` columns).
    finetune : bool, default False
        Also train two :class:`~featx.FineTuneClassifier` rows for the first
        backbone: ``"fine-tuned"`` (``weights``; the head trained on the board's
        own vectors, up to 50 early-stopped epochs; then the top 20 layers
        unfrozen for 3 epochs of augmented images at lr 1e-4, undone if the
        validation loss does not improve: :data:`FINETUNE_DEFAULTS`) and
        ``"scratch"`` (``weights=None``, ``unfreeze="all"``, as many epochs over
        the images as the fine-tuned base saw, at lr 1e-3). Training a CNN per
        fold would cost k trainings, so both are trained on fold 0's training images and scored on
        fold 0's held-out images — the ``protocol`` column says so. Their
        ``history_`` is kept in ``Leaderboard.histories_``.
    finetune_params : dict, optional
        FineTuneClassifier parameters overriding the defaults of both rows
        (``epochs``, ``input_size``, ``augment`` …); a nested ``"scratch"`` dict
        overrides the scratch row only. The scratch row always has
        ``weights=None, unfreeze="all"``.
    pool : {"auto", "threads", "processes"}, default "auto"
        Where images are read and decoded (see :class:`~featx.Embedder`).
    runtime : {"keras", "openvino", "openvino-bf16", "auto"}, default "keras"
        What runs the frozen forward (see :class:`~featx.Embedder`); the
        vectors, and so the board, do not depend on it.

    Returns
    -------
    Leaderboard
        ``run_baseline(...).board`` (with the fine-tuning rows when asked for).
        :func:`~featx.run_baseline` returns the whole :class:`BaselineResult`:
        the board, the best row's out-of-fold probabilities and what was left
        out.

    Notes
    -----
    Images that cannot be read or decoded are dropped from every row (the
    count is logged; see ``Leaderboard.dropped_``). ``best_estimator_`` is the
    winning ``Pipeline([("embed", ImageEmbedder(...)), ("clf", head)])``; its
    head was refit on the cached vectors of all kept images.

    Examples
    --------
    >>> import numpy as np, featx
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (30, 32, 32, 3)).astype(np.uint8)
    >>> images[15:] += 120
    >>> y = np.repeat(["dark", "light"], 15)
    >>> board = featx.baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                        weights=None, input_size=32, cv=3)
    >>> len(board.rows), sorted({r["backbone"] for r in board.rows})
    (2, ['mobilenet_v2', 'raw_pixels_32'])
    >>> board.best_["balanced_accuracy"]
    1.0
    """
    result = run_baseline(sources, y, backbones=backbones, heads=heads, cv=cv, scoring=scoring,
                          cache=cache, random_state=random_state, n_jobs=n_jobs, weights=weights,
                          input_size=input_size, batch_size=batch_size, progress=progress,
                          test=test, pool=pool, runtime=runtime)
    if finetune:
        result = add_finetune_rows(result, finetune_params)
    return result.board
