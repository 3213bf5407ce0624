"""``baseline()``: every backbone × head under one cross-validation, on cached vectors.

Each backbone runs once over the unique images (through the engine, so a store
makes a re-run free); each head is then a ``GridSearchCV`` over those vectors,
with the *same* folds for every row, so the rows compare. A raw-pixel logistic
regression is always on the board as the floor an embedding must beat.
"""

from __future__ import annotations

import logging
import os
import sys
import types
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV, StratifiedKFold, check_cv
from sklearn.pipeline import Pipeline

from .backbones.registry import get_spec
from .errors import (FeatxError, InvalidDataError, InvalidParameterError,
                     MissingDependencyError)
from .heads import GRIDS, make_head, resolve_kind
from .images import as_sources
from .sklearn import ImageEmbedder, RawPixels

__all__ = ["baseline", "Leaderboard", "RAW_PIXELS", "FINETUNE_DEFAULTS", "FINETUNE_PROTOCOL"]

log = logging.getLogger("featx")

#: The ``backbone`` value of the floor row (raw pixels at 32 × 32, logistic regression).
RAW_PIXELS = "raw_pixels_32"
_RAW_SIZE = 32


# ----------------------------------------------------------------- Leaderboard


class Leaderboard:
    """The result of :func:`baseline`: one row per (backbone, head), best first.

    Attributes
    ----------
    rows : list of dict
        Sorted by the primary metric (balanced accuracy by default), best
        first. Keys: ``rank``, ``backbone``, ``head``, ``n_features``, for each
        metric ``<metric>`` (mean over folds) and ``<metric>_std``; ``fit_s`` and
        ``predict_s`` (mean seconds per fold to fit, and to predict + score the
        held-out fold, of the best candidate), ``search_s`` (wall time of the
        row's whole grid search), ``n_candidates``, ``best_params``; with a
        test set, ``test_<metric>``.
    metrics : list of str
        Metric names; ``log_loss`` is reported positive (lower is better).
    scoring : dict
        Metric name → the scikit-learn scorer it was computed with.
    primary : str
        The metric that ranks rows and picks each search's refit candidate.
    splits : list of (train, test) index arrays
        The cross-validation folds, as positions in the caller's ``sources``;
        the same for every row.
    classes_ : ndarray
    estimators_ : dict
        ``(backbone, head)`` → the fitted full Pipeline ``[("embed", ...), ("clf", ...)]``.
    searches_ : dict
        ``(backbone, head)`` → the fitted ``GridSearchCV`` (``cv_results_`` etc.).
    dropped_ : list of (int, str)
        Inputs that could not be embedded and were left out: (position, source).
    dropped_reasons_ : dict
        Position → why that input could not be embedded (the engine's message).
    test_dropped_ : list of (int, str, str)
        With ``test=``: held-out inputs left out, as (position, source, reason).
    embed_stats_ : dict
        Backbone → the engine's counters for its one embedding pass.
    finetuned_ : dict
        With ``finetune=True``: ``(backbone, "fine-tuned")`` and
        ``(backbone, "scratch")`` → the fitted :class:`~featx.FineTuneClassifier`
        (trained on fold 0's training images only). Empty otherwise.
    histories_ : dict
        The same keys → that classifier's ``history_`` (per-epoch loss and
        accuracy, for training curves).

    Every row has a ``protocol``: ``"<k>-fold CV"`` for the grid-searched
    heads, ``"held-out fold 0"`` for the fine-tuning rows (one split: fine-tuning
    under full CV would cost k trainings). Scores of the two protocols estimate
    the same quantity on the same images but are not equally precise, so
    :attr:`best_` is chosen among the cross-validated rows only.

    Examples
    --------
    >>> import numpy as np, featx
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (30, 32, 32, 3)).astype(np.uint8)
    >>> y = np.repeat(["dark", "light"], 15)
    >>> images[15:] += 120
    >>> board = featx.baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                        weights=None, input_size=32, cv=3)
    >>> [(r["backbone"], r["head"]) for r in board.rows]  # doctest: +SKIP
    [('raw_pixels_32', 'logreg'), ('mobilenet_v2', 'logreg')]
    >>> board.best_estimator_.predict(images[:2]).tolist()
    ['dark', 'dark']
    """

    def __init__(self, rows: List[dict], *, metrics: Sequence[str], scoring: Dict[str, str],
                 primary: str, splits, classes, estimators: dict, searches: dict,
                 n_samples: int, dropped: List[Tuple[int, str]], embed_stats: dict,
                 cv_description: str, finetuned: Optional[dict] = None,
                 histories: Optional[dict] = None):
        self.metrics = list(metrics)
        self.scoring = dict(scoring)
        self.primary = primary
        self.splits = splits
        self.classes_ = classes
        self.estimators_ = estimators
        self.searches_ = searches
        self.n_samples = n_samples
        self.dropped_ = dropped
        self.dropped_reasons_: Dict[int, str] = {}
        self.test_dropped_: List[Tuple[int, str, str]] = []
        self.embed_stats_ = embed_stats
        self.cv_description = cv_description
        self.finetuned_ = dict(finetuned or {})
        self.histories_ = dict(histories or {})
        lower_better = primary == "log_loss"

        def order(row):
            v = row.get(primary, float("nan"))
            v = float("inf") if v != v else (v if lower_better else -v)  # NaN last
            tie = row.get("log_loss", 0.0)
            return (v, tie if tie == tie else float("inf"))

        self.rows = sorted(rows, key=order)
        for i, row in enumerate(self.rows, 1):
            row["rank"] = i

    # -- the winner -----------------------------------------------------------

    @property
    def best_(self) -> dict:
        """The top cross-validated row (the top row unless fine-tuning rows lead).

        Fine-tuning rows (``protocol == "held-out fold 0"``) are scored on one
        split and their models saw only that split's training images, so they
        are compared on the board but never picked as the refit winner.
        """
        for row in self.rows:
            if (row["backbone"], row["head"]) in self.estimators_:
                return row
        return self.rows[0]

    @property
    def best_estimator_(self) -> Pipeline:
        """The top row's full Pipeline, refit on every (kept) image.

        ``predict`` / ``predict_proba`` take image sources. Persist it with
        ``joblib.dump``; the backbone is rebuilt from its parameters on load,
        and with a store (``cache=``) the vectors of known images are read, not
        recomputed.
        """
        return self.estimators_[(self.best_["backbone"], self.best_["head"])]

    # -- views ----------------------------------------------------------------

    def out_of_fold_proba(self, sources, y) -> np.ndarray:
        """Out-of-fold class probabilities of :attr:`best_estimator_`, on the board's folds.

        Each fold refits a clone of the best pipeline; its embedding step reads the
        cached vectors (store or process memo), so no image is forwarded again. Images
        the board left out (:attr:`dropped_`) are in no fold: their rows are NaN, so
        the result still lines up with ``sources``.

        Parameters
        ----------
        sources : sequence
            The images the board was run on, in the same order.
        y : array-like
            Their labels.

        Returns
        -------
        numpy.ndarray, shape (n, n_classes)

        Examples
        --------
        >>> import numpy as np, featx
        >>> rng = np.random.RandomState(0)
        >>> images = rng.randint(0, 120, (24, 32, 32, 3)).astype(np.uint8)
        >>> images[12:] += 120
        >>> y = np.repeat(["dark", "light"], 12)
        >>> board = featx.baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
        ...                        weights=None, input_size=32, cv=3)
        >>> board.out_of_fold_proba(list(images), y).shape
        (24, 2)
        """
        from sklearn.model_selection import cross_val_predict

        n = len(sources)
        covered = np.unique(np.concatenate([np.asarray(te) for _, te in self.splits]))
        position = np.full(n, -1)
        position[covered] = np.arange(len(covered))
        splits = [(position[np.asarray(tr)], position[np.asarray(te)]) for tr, te in self.splits]
        data = np.empty(len(covered), dtype=object)
        data[:] = [sources[i] for i in covered]
        proba = cross_val_predict(self.best_estimator_, data, np.asarray(y)[covered],
                                  cv=splits, method="predict_proba")
        out = np.full((n, proba.shape[1]), np.nan)
        out[covered] = proba
        return out

    def _columns(self) -> List[str]:
        cols = ["rank", "backbone", "head"]
        ordered = [self.primary] + [m for m in self.metrics if m != self.primary]
        for m in ordered:
            cols += [m, f"{m}_std"]
        tests = [f"test_{m}" for m in ordered if any(f"test_{m}" in r for r in self.rows)]
        # protocol after the scores: the leading columns stay rank, backbone, head, metric.
        return cols + tests + ["protocol", "fit_s", "predict_s", "search_s", "n_features",
                               "n_candidates", "best_params"]

    def to_frame(self):
        """The board as a pandas DataFrame, best row first (index: rank).

        Returns
        -------
        pandas.DataFrame
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise MissingDependencyError("Leaderboard.to_frame needs pandas: pip install "
                                         "pandas (to_markdown() works without it)") from exc
        cols = self._columns()
        frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in self.rows], columns=cols)
        return frame.set_index("rank")

    def to_markdown(self, digits: int = 3) -> str:
        """The board as a plain-text (Markdown) table, ``mean ± std`` per metric.

        Parameters
        ----------
        digits : int, default 3

        Returns
        -------
        str
        """
        ordered = [self.primary] + [m for m in self.metrics if m != self.primary]
        tests = [m for m in ordered if any(f"test_{m}" in r for r in self.rows)]
        head = ["rank", "backbone", "head", *ordered, *[f"test {m}" for m in tests],
                "protocol", "fit s", "predict s", "features", "best params"]

        def num(v, d=digits):
            return "—" if v is None or v != v else f"{v:.{d}f}"

        lines = [
            f"featx baseline: {self.n_samples} images, {len(self.classes_)} classes, "
            f"{self.cv_description}; ranked by {self.primary}"
            + (f"; {len(self.dropped_)} images dropped (not decodable)" if self.dropped_ else ""),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        for r in self.rows:
            cells = [str(r["rank"]), r["backbone"], r["head"]]
            cells += [f"{num(r.get(m))} ± {num(r.get(m + '_std'))}" for m in ordered]
            cells += [num(r.get(f"test_{m}")) for m in tests]
            cells += [str(r.get("protocol", "—"))]
            cells += [num(r.get("fit_s"), 3), num(r.get("predict_s"), 3), str(r["n_features"]),
                      _params_text(r.get("best_params"))]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def __repr__(self) -> str:
        b = self.best_
        return (f"<Leaderboard: {len(self.rows)} rows, best {b['backbone']} × {b['head']} "
                f"{self.primary}={b.get(self.primary, float('nan')):.3f}>")

    def __len__(self) -> int:
        return len(self.rows)


def _params_text(params) -> str:
    if not params:
        return "—"
    return ", ".join(f"{k.split('__')[-1]}={v!r}" for k, v in sorted(params.items()))


# ----------------------------------------------------------------- helpers


def _sources_and_labels(sources, y):
    """Validated sources and a label array; ``y=None`` reads labels from a class-folder tree."""
    if y is None:
        if not isinstance(sources, (str, os.PathLike)) or not os.path.isdir(sources):
            raise InvalidDataError("baseline needs labels: pass y, or a folder of class folders "
                                   f"(root/<class>/<image>) as sources; got y=None and "
                                   f"{type(sources).__name__} sources")
        from .datasets import load_image_folder

        paths, labels, names = load_image_folder(sources)
        return as_sources(paths), np.asarray(names, dtype=object)[labels]
    items = as_sources(sources)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(items):
        raise InvalidDataError(f"y must be 1-D with one label per image: {len(items)} images, "
                               f"y of shape {y.shape}")
    return items, y


def _scoring(scoring, n_classes: int) -> Tuple[Dict[str, object], Dict[str, str], set]:
    """(name → scorer object, name → description, names reported negated back to positive)."""
    if scoring is None:
        spec = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy",
                "f1_macro": "f1_macro",
                "roc_auc": "roc_auc" if n_classes == 2 else "roc_auc_ovr",
                "log_loss": "neg_log_loss"}
    elif isinstance(scoring, str):
        spec = {scoring[4:] if scoring.startswith("neg_") else scoring: scoring}
    elif isinstance(scoring, (list, tuple)):
        spec = {(s[4:] if s.startswith("neg_") else s): s for s in scoring}
    elif isinstance(scoring, dict):
        spec = dict(scoring)
    else:
        raise InvalidParameterError(
            "scoring must be None, a scorer name, a list of names or a dict "
            f"name → scorer; got {type(scoring).__name__}")
    scorers, described, negated = {}, {}, set()
    for name, s in spec.items():
        try:
            scorers[name] = get_scorer(s) if isinstance(s, str) else s
        except ValueError as exc:
            raise FeatxError(f"scoring: {exc}") from exc
        described[name] = s if isinstance(s, str) else repr(s)
        if isinstance(s, str) and s.startswith("neg_"):
            negated.add(name)
    return scorers, described, negated


def _n_jobs(n_jobs) -> Tuple[Optional[int], int]:
    """(GridSearchCV workers, threads per head): their product stays within the cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    outer = effective_n_jobs(n_jobs) if n_jobs is not None else 1
    return n_jobs, max(1, cores // max(1, outer))


def _splits(cv, y: np.ndarray, random_state) -> Tuple[list, str]:
    if isinstance(cv, int):
        counts = {c: int((y == c).sum()) for c in np.unique(y)}
        small = {c: n for c, n in counts.items() if n < cv}
        if small:
            raise InvalidDataError(f"cv={cv} stratified folds need at least {cv} images per class; "
                                   f"too few for {small}. Lower cv or add images")
        splitter = StratifiedKFold(cv, shuffle=True, random_state=random_state)
        text = f"{cv}-fold stratified CV (same folds for every row)"
    else:
        splitter = check_cv(cv, y, classifier=True)
        text = f"{type(splitter).__name__} (same folds for every row)"
    dummy = np.zeros((len(y), 1))
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(dummy, y)], text


def _summarise(search: GridSearchCV, metrics: Sequence[str], negated: set) -> dict:
    res, i = search.cv_results_, search.best_index_
    row = {}
    for m in metrics:
        mean, std = float(res[f"mean_test_{m}"][i]), float(res[f"std_test_{m}"][i])
        row[m] = -mean if m in negated else mean
        row[f"{m}_std"] = std
    row["fit_s"] = float(res["mean_fit_time"][i])
    row["predict_s"] = float(res["mean_score_time"][i])
    row["n_candidates"] = len(res["params"])
    row["best_params"] = dict(search.best_params_)
    return row


def _test_scores(clf, X, y, scorers, negated) -> dict:
    out = {}
    for name, scorer in scorers.items():
        value = float(scorer(clf, X, y))
        out[f"test_{name}"] = -value if name in negated else value
    return out


# ----------------------------------------------------------------- fine-tuning rows

#: Defaults of the ``"fine-tuned"`` row (:class:`~featx.FineTuneClassifier` parameters).
#: Phase 1 trains the head on the vectors the board already embedded (so its 50 epochs,
#: early-stopped, cost seconds); phase 2 then fine-tunes the top 20 layers for 3 epochs
#: of augmented images at 1e-4, and is undone if it does not lower the validation loss.
#: Small on purpose: the rows are a comparison on one split, not a tuned model.
FINETUNE_DEFAULTS = dict(unfreeze=20, epochs=(50, 3), lr=(1e-3, 1e-4), phase1="vectors",
                         augment=("flip", "zoom", "contrast"))

#: Held-out protocol of the fine-tuning rows (see :class:`Leaderboard`).
FINETUNE_PROTOCOL = "held-out fold 0"


class _Scored(ClassifierMixin, BaseEstimator):
    """Probabilities computed once, served to every scorer.

    scikit-learn scorers call ``predict`` / ``predict_proba`` themselves; a
    fine-tuned CNN would then run over the held-out images once per metric.
    ``X`` is ignored: the instance only ever scores the images it was made for.
    """

    def __init__(self, classes, proba):
        self.classes = classes
        self.proba = proba
        self.classes_ = np.asarray(classes)

    def predict_proba(self, X):
        return self.proba

    def predict(self, X):
        return self.classes_[np.argmax(self.proba, axis=1)]


def _finetune_configs(backbone: str, weights, input_size, batch_size, random_state,
                      finetune_params, cache=None) -> Dict[str, dict]:
    """``{"fine-tuned": params, "scratch": params}`` for :class:`~featx.FineTuneClassifier`.

    The scratch model gets as many passes over the images as the fine-tuned
    model's base saw (phase 2, plus phase 1 when phase 1 ran on images), at
    least one.
    """
    params = dict(finetune_params or {})
    scratch_extra = params.pop("scratch", None) or {}
    if not isinstance(scratch_extra, dict):
        raise InvalidParameterError(
            f"finetune_params['scratch'] must be a dict of FineTuneClassifier "
            f"parameters; got {type(scratch_extra).__name__}")
    common = dict(backbone=backbone, input_size=input_size, batch_size=batch_size,
                  random_state=random_state, cache=cache)
    tuned = {**common, "weights": weights, **FINETUNE_DEFAULTS, **params}
    e = tuned["epochs"]
    head_epochs, top_epochs = (e, e) if isinstance(e, (int, np.integer)) else e
    image_epochs = int(top_epochs) + (0 if tuned.get("phase1") == "vectors" else int(head_epochs))
    total = max(1, image_epochs)
    # Scratch: the same passes over the images, all in phase 2 (phase 1 would train a
    # head on a random frozen base), at a learning rate that can move random weights
    # (a fine-tuning rate of 1e-4 or 1e-5 cannot).
    scratch = {**tuned, "epochs": (0, total), "lr": (1e-3, 1e-3), **scratch_extra,
               "weights": None, "unfreeze": "all"}
    return {"fine-tuned": tuned, "scratch": scratch}


def _finetune_rows(items, y, split, configs: Dict[str, dict], scorers, metrics, negated,
                   test_items=None, test_y=None):
    """Train each config on ``split``'s training part, score on its test part.

    Returns (rows, {head: fitted classifier}).
    """
    from .finetune import FineTuneClassifier

    train, held = split
    tr_items, te_items = [items[i] for i in train], [items[i] for i in held]
    rows, fitted = [], {}
    n_classes = len(np.unique(y[train]))
    for head, params in configs.items():
        frac = params.get("validation_fraction", 0.1)
        n_val = int(np.ceil(float(frac or 0) * len(train)))
        if frac and (n_val < n_classes or len(train) - n_val < n_classes):
            # Too few images for a stratified validation split (FineTuneClassifier
            # would refuse): train on all of fold 0's training part, no early stopping.
            log.warning("featx baseline: %d training images are too few for a stratified "
                        "validation_fraction=%s; fine-tuning without validation", len(train),
                        frac)
            params = {**params, "validation_fraction": 0}
        try:
            clf = FineTuneClassifier(**params)
        except TypeError as exc:
            raise FeatxError(f"finetune_params: {exc}") from exc
        t = time.perf_counter()
        clf.fit(tr_items, y[train])
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        proba = clf.predict_proba(te_items)
        scored = _Scored(clf.classes_, proba)
        row = {"backbone": params["backbone"], "head": head, "protocol": FINETUNE_PROTOCOL,
               "n_features": int(clf.backbone_info_.get("dim", 0))}
        for name in metrics:
            value = float(scorers[name](scored, te_items, y[held]))
            row[name] = -value if name in negated else value
            row[f"{name}_std"] = float("nan")  # one split: no spread to report
        row["predict_s"] = time.perf_counter() - t
        row["fit_s"] = fit_s
        row["search_s"] = fit_s + row["predict_s"]
        row["n_candidates"] = 1
        row["best_params"] = {k: params[k] for k in ("weights", "unfreeze", "epochs", "lr")
                              if k in params}
        row["epochs_run"] = [ph["epochs_run"] for ph in clf.phases_]
        if test_items is not None and len(test_items):
            t_proba = _Scored(clf.classes_, clf.predict_proba(test_items))
            for name in metrics:
                value = float(scorers[name](t_proba, test_items, test_y))
                row[f"test_{name}"] = -value if name in negated else value
        rows.append(row)
        fitted[head] = clf
        log.info("featx baseline: %s %s on %s: %d train / %d held-out images, %.1f s",
                 params["backbone"], head, FINETUNE_PROTOCOL, len(train), len(held),
                 row["search_s"])
    return rows, fitted


# ----------------------------------------------------------------- baseline


def baseline(sources, y=None, backbones=("efficientnet_lite0",), heads=("logreg", "svm", "xgboost"),
             cv=5, scoring=None, cache=None, random_state=0, n_jobs=None, weights="packaged",
             input_size=None, batch_size=32, progress=False, test=None, finetune=False,
             finetune_params=None) -> Leaderboard:
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

    Returns
    -------
    Leaderboard

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
    start = time.perf_counter()
    items, y = _sources_and_labels(sources, y)
    if isinstance(backbones, str):
        backbones = [backbones]
    if isinstance(heads, str):
        heads = [heads]
    # Validate names before any model is built or image read.
    backbone_names = list(dict.fromkeys(get_spec(b).name for b in backbones))
    kinds = list(dict.fromkeys(resolve_kind(h) for h in heads))
    if not kinds:
        raise InvalidParameterError("heads is empty; pass at least one of featx.heads.list_heads()")
    classes = np.unique(y)
    if len(classes) < 2:
        raise InvalidDataError(
            f"baseline needs at least 2 classes; y holds only {classes.tolist()}")
    scorers, described, negated = _scoring(scoring, len(classes))
    metrics = list(scorers)
    primary = "balanced_accuracy" if "balanced_accuracy" in scorers else metrics[0]
    outer, inner = _n_jobs(n_jobs)

    # 1. Features: each backbone once over all images (the engine dedups by content).
    features: Dict[str, np.ndarray] = {}
    makers: Dict[str, object] = {}
    embed_stats: Dict[str, dict] = {}
    failed = np.zeros(len(items), bool)
    reasons: Dict[int, str] = {}
    for name in backbone_names:
        embedder = ImageEmbedder(backbone=name, weights=weights, input_size=input_size,
                                 cache=cache, batch_size=batch_size, on_error="skip",
                                 progress=progress)
        X = embedder.transform(items)
        stats = embedder.stats_
        features[name], makers[name], embed_stats[name] = X, embedder, stats
        failed |= ~embedder.mask_
        for failure in embedder.failures_:
            reasons.setdefault(failure.index, failure.reason)
        log.info("featx baseline: %s embedded %d images (%d forwarded, %d from cache) in %.1f s",
                 name, len(items), stats.get("forwarded", 0), stats.get("cache_hits", 0),
                 stats.get("total_s", float("nan")))
    t = time.perf_counter()
    raw = RawPixels(size=_RAW_SIZE, on_error="skip")
    features[RAW_PIXELS] = raw.transform(items)
    makers[RAW_PIXELS] = raw
    embed_stats[RAW_PIXELS] = {"total_s": time.perf_counter() - t}
    failed |= ~np.isfinite(features[RAW_PIXELS]).all(axis=1)

    kept = np.flatnonzero(~failed)
    dropped = [(int(i), items[i].describe()) for i in np.flatnonzero(failed)]
    if dropped:
        log.warning("featx baseline: dropped %d of %d images that could not be embedded "
                    "(first: %s)", len(dropped), len(items), dropped[0][1])
    y_kept = y[kept]
    if len(np.unique(y_kept)) < 2:
        raise InvalidDataError("fewer than 2 classes left after dropping undecodable images")
    splits, cv_text = _splits(cv, y_kept, random_state)
    protocol = f"{cv}-fold CV" if isinstance(cv, int) else cv_text.split(" (")[0]
    kept_items = [items[i] for i in kept]
    ft_configs = (_finetune_configs(backbone_names[0], weights, input_size, batch_size,
                                    random_state, finetune_params, cache) if finetune else {})

    # Optional held-out set: embedded once per backbone, like the training images.
    test_features: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    test_kept = (None, None)
    test_dropped: List[Tuple[int, str, str]] = []
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise InvalidParameterError(
                f"test must be a (sources, y) pair; got {type(test).__name__}")
        t_items, t_y = _sources_and_labels(*test)
        t_fail = np.zeros(len(t_items), bool)
        t_X = {}
        t_reasons: Dict[int, str] = {}
        for name, maker in makers.items():
            if name == RAW_PIXELS:
                Xt = maker.transform(t_items)
                t_fail |= ~np.isfinite(Xt).all(axis=1)
            else:
                Xt = maker.transform(t_items)
                t_fail |= ~maker.mask_
                for failure in maker.failures_:
                    t_reasons.setdefault(failure.index, failure.reason)
            t_X[name] = Xt
        test_dropped = [(int(i), t_items[i].describe(), t_reasons.get(int(i), "not decodable"))
                        for i in np.flatnonzero(t_fail)]
        if t_fail.any():
            log.warning("featx baseline: dropped %d of %d test images that could not be "
                        "embedded", int(t_fail.sum()), len(t_items))
        t_keep = ~t_fail
        test_features = {name: (Xt[t_keep], t_y[t_keep]) for name, Xt in t_X.items()}
        test_kept = ([t_items[i] for i in np.flatnonzero(t_keep)], np.asarray(t_y)[t_keep])

    # 2. Heads: one grid search per (backbone, head) on the cached vectors, same folds.
    plan = [(name, kind) for name in backbone_names for kind in kinds] + [(RAW_PIXELS, "logreg")]
    rows, estimators, searches = [], {}, {}
    for name, kind in plan:
        X = features[name][kept]
        search = GridSearchCV(make_head(kind, n_jobs=inner, random_state=random_state),
                              GRIDS[kind], scoring=scorers, refit=primary, cv=splits,
                              n_jobs=outer, error_score=np.nan)
        t = time.perf_counter()
        search.fit(X, y_kept)
        row = {"backbone": name, "head": kind, "protocol": protocol,
               "n_features": int(X.shape[1]),
               **_summarise(search, metrics, negated), "search_s": time.perf_counter() - t}
        if name in test_features:
            Xt, yt = test_features[name]
            row.update(_test_scores(search.best_estimator_, Xt, yt, scorers, negated))
        if name == RAW_PIXELS:
            front = RawPixels(size=_RAW_SIZE)
        else:
            front = ImageEmbedder(backbone=name, weights=weights, input_size=input_size,
                                  cache=cache, batch_size=batch_size)
        # The head was refit on every kept image's vector by the search; fitting the
        # front end only records what it is (its vectors are the ones just used).
        front.fit(kept_items)
        estimators[(name, kind)] = Pipeline([("embed", front), ("clf", search.best_estimator_)])
        searches[(name, kind)] = search
        rows.append(row)
        log.info("featx baseline: %s × %s: %s %.3f ± %.3f (%d candidates, %.1f s)", name, kind,
                 primary, row.get(primary, float("nan")), row.get(f"{primary}_std", float("nan")),
                 row["n_candidates"], row["search_s"])

    # 3. Optional fine-tuning rows: one held-out split (fold 0), same images as the folds.
    finetuned, histories = {}, {}
    if ft_configs:
        ft_rows, fitted = _finetune_rows(kept_items, y_kept, splits[0], ft_configs, scorers,
                                         metrics, negated, *test_kept)
        rows.extend(ft_rows)
        for head, clf in fitted.items():
            finetuned[(backbone_names[0], head)] = clf
            histories[(backbone_names[0], head)] = clf.history_
        cv_text += f"; fine-tuning rows: trained on fold 0's training part, scored on its " \
                   f"held-out part ({len(splits[0][1])} images)"

    board = Leaderboard(rows, metrics=metrics, scoring=described, primary=primary,
                        splits=[(kept[tr], kept[te]) for tr, te in splits], classes=classes,
                        estimators=estimators, searches=searches, n_samples=len(kept),
                        dropped=dropped, embed_stats=embed_stats, cv_description=cv_text,
                        finetuned=finetuned, histories=histories)
    board.dropped_reasons_ = {i: reasons.get(i, "not decodable") for i, _ in dropped}
    board.test_dropped_ = test_dropped
    log.info("featx baseline: %d rows in %.1f s; best %s × %s", len(rows),
             time.perf_counter() - start, board.best_["backbone"], board.best_["head"])
    return board


class _CallableModule(types.ModuleType):
    """``featx.baseline`` is both this module and the function (DESIGN.md's contract).

    Importing ``featx.baseline`` makes the import system bind the *module* to the
    package attribute ``featx.baseline``, hiding the lazily exported function; a
    callable module keeps ``featx.baseline(sources, y)`` working either way.
    """

    def __call__(self, *args, **kwargs):
        return baseline(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
