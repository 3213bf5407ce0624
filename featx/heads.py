"""Classifier heads for frozen-backbone vectors, and grids sized for a baseline.

``make_head(kind)`` returns a :class:`~sklearn.pipeline.Pipeline` whose last
step is named ``"clf"``, so every grid in :data:`GRIDS` uses ``clf__<param>``
keys and plugs straight into ``GridSearchCV(make_head(kind), GRIDS[kind])``.

Scaling, per head, as measured (5-fold balanced accuracy on Lite0 vectors of
the LFW subset / 600 digits):

* ``"scale"`` — :class:`~sklearn.preprocessing.StandardScaler` before the
  linear heads (logreg, linear_svm): as good as unscaled (LFW 0.990 / digits
  0.90–0.91) and it makes lbfgs and liblinear converge in few iterations.
* ``"norm"`` — L2 :class:`~sklearn.preprocessing.Normalizer` before the
  distance-based heads (svm, knn). Per-feature standardisation *hurts* them on
  CNN vectors: many of the 1280 ReLU6 features are almost always ~0, and
  scaling each to unit variance turns their noise into distance. RBF SVC
  (C=10): standardised 0.930 / 0.818, L2-normalised 0.990 / 0.924; k-NN (k=5):
  standardised 0.990 / 0.835, L2-normalised 0.985 / 0.876. L2 normalisation
  is the usual choice for CNN descriptors (cosine geometry) and keeps
  ``gamma="scale"`` meaningful across backbones.
* none — trees (xgboost, random_forest) are invariant to feature scaling.

Every head has ``predict_proba``: the leaderboard's log loss and ROC AUC need
probabilities. Two heads need a small wrapper for that:

* :class:`CalibratedSVC` (``svm``, ``linear_svm``) — an SVM whose probabilities
  come from ``CalibratedClassifierCV(..., ensemble=False)``. Not
  ``SVC(probability=True)``: that runs libsvm's internal 5-fold Platt scaling
  (6 fits per fit), its ``predict_proba`` can disagree with its ``predict``, and
  scikit-learn 1.9 deprecates it in favour of exactly this calibration. Here
  calibration costs ``cv`` (default 3) fits on 2/3 of the data plus one final
  fit, and ``predict`` is the argmax of ``predict_proba``, so they agree. The
  RBF kernel costs O(n²): the ``svm`` head fits on a stratified subsample of at
  most ``max_samples`` (3,000) rows.
* :class:`XGBoostHead` (``xgboost``) — ``xgboost.XGBClassifier`` with labels
  encoded (XGBoost wants ``0..K-1``), ``hist`` trees, capped at 200 and early
  stopped on a 10 % stratified hold-out.

Grid sizes follow the costs measured on the 2-core reference machine
(DESIGN.md; 20k × 1280 vectors): lbfgs logistic regression ≈ 8 s a fit,
LinearSVC ≈ 26 s, RBF SVC on 5k ≈ 27 s, XGBoost 100 trees ≈ 140 s. A 5-fold
baseline of the three default heads (3 + 2 + 1 candidates) then runs in
minutes, not hours, at that size; on a few hundred images it takes seconds.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from .errors import HeadError, MissingDependencyError

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(est, X, y="no_validation", reset=True, **kw):
        return est._validate_data(X, y, reset=reset, **kw)

__all__ = ["HEADS", "GRIDS", "ALIASES", "HeadError", "CalibratedSVC", "XGBoostHead",
           "make_head", "list_heads"]


# ----------------------------------------------------------------- wrappers


def _stratified_subsample(y_idx: np.ndarray, n_classes: int, max_samples: int,
                          random_state) -> np.ndarray:
    """Sorted row indices: about ``max_samples`` rows, each class in proportion (≥ 2 kept)."""
    rng = np.random.RandomState(random_state)
    frac = max_samples / len(y_idx)
    parts = []
    for k in range(n_classes):
        members = np.flatnonzero(y_idx == k)
        take = min(len(members), max(2, int(round(len(members) * frac))))
        parts.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(parts))


def _check_two_classes(est, y) -> np.ndarray:
    check_classification_targets(y)
    est.classes_, y_idx = np.unique(y, return_inverse=True)
    if len(est.classes_) < 2:
        raise HeadError(f"{type(est).__name__} needs samples of at least 2 classes; "
                        f"got only one class: {est.classes_[0]!r}")
    return y_idx


def _weights(class_weight, y, sample_weight, X):
    """Per-row weights from ``class_weight`` (keyed by the original labels) × ``sample_weight``."""
    weights = None
    if class_weight is not None:
        weights = compute_sample_weight(class_weight, y)
    if sample_weight is not None:
        sw = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        weights = sw if weights is None else weights * sw
    return weights


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """An SVM with calibrated probabilities, ``predict`` consistent with ``predict_proba``.

    ``CalibratedClassifierCV(SVC | LinearSVC, ensemble=False)``: the SVM's
    out-of-fold decision values (``cv`` folds) fit a sigmoid (or isotonic)
    calibrator, then one SVM is fitted on all (sub-sampled) rows.

    ``class_weight`` becomes sample weights seen by both the SVM and the
    calibrator. Given to the SVM alone, it would shift the margin, and the
    calibrator, fitted on unweighted rows, would shift the probabilities back to
    the training prior: ``predict`` would ignore the class weights.

    Parameters
    ----------
    kernel : {"rbf", "linear", "poly", "sigmoid"}, default "rbf"
        ``"linear"`` uses :class:`~sklearn.svm.LinearSVC` (liblinear, linear in n);
        the others :class:`~sklearn.svm.SVC` (libsvm, about quadratic in n).
    C : float, default 1.0
    gamma : {"scale", "auto"} or float, default "scale"
        Kernel coefficient (ignored by ``"linear"``).
    class_weight : dict, "balanced" or None
    method : {"sigmoid", "isotonic"}, default "sigmoid"
    cv : int or cross-validation splitter, default 3
        Calibration folds. An int is a shuffled ``StratifiedKFold``, lowered to
        the smallest class count (at least 2).
    max_samples : int, optional
        Fit on a stratified subsample of at most this many rows (bounds the
        O(n²) cost of kernel SVMs). None uses every row.
    n_jobs : int, optional
        Parallel calibration folds.
    random_state : int, default 0
        Seeds the subsample, the calibration folds and LinearSVC.

    Attributes
    ----------
    classes_ : ndarray
    calibrated_ : CalibratedClassifierCV
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from featx.heads import CalibratedSVC
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (30, 4)), rng.normal(2, 1, (30, 4))]
    >>> y = np.repeat(["a", "b"], 30)
    >>> clf = CalibratedSVC(C=1.0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape, clf.score(X, y) > 0.8
    ((2, 2), True)
    """

    def __init__(self, kernel="rbf", C=1.0, gamma="scale", class_weight=None,
                 method="sigmoid", cv=3, max_samples=None, n_jobs=None, random_state=0):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.method = method
        self.cv = cv
        self.max_samples = max_samples
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        """Fit the SVM and its calibrator. Returns self."""
        X, y = _validate_data(self, X, y)
        y_idx = _check_two_classes(self, y)
        weights = _weights(self.class_weight, y, sample_weight, X)
        if self.max_samples is not None and len(y_idx) > int(self.max_samples):
            rows = _stratified_subsample(y_idx, len(self.classes_), int(self.max_samples),
                                         self.random_state)
            X, y_idx = X[rows], y_idx[rows]
            weights = None if weights is None else weights[rows]
        if isinstance(self.cv, (int, np.integer)):
            smallest = int(np.bincount(y_idx, minlength=len(self.classes_)).min())
            n_cv = min(int(self.cv), smallest)
            if n_cv < 2:
                raise HeadError(f"CalibratedSVC needs at least 2 samples of every class to "
                                f"calibrate probabilities; the smallest class has {smallest}")
            folds = StratifiedKFold(n_cv, shuffle=True, random_state=self.random_state)
        else:  # a splitter or an iterable of (train, test) pairs, as CalibratedClassifierCV takes
            folds = self.cv
        if self.kernel == "linear":
            svm = LinearSVC(C=self.C, dual="auto", max_iter=5000,
                            random_state=self.random_state)
        else:
            svm = SVC(kernel=self.kernel, C=self.C, gamma=self.gamma)
        self.calibrated_ = CalibratedClassifierCV(svm, method=self.method, cv=folds,
                                                  ensemble=False, n_jobs=self.n_jobs)
        self.calibrated_.fit(X, y_idx, sample_weight=weights)
        self.n_samples_fit_ = len(y_idx)
        return self

    def predict_proba(self, X):
        """Calibrated class probabilities, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False)
        return self.calibrated_.predict_proba(X)

    def predict(self, X):
        """The most probable class (the argmax of :meth:`predict_proba`)."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class XGBoostHead(ClassifierMixin, BaseEstimator):
    """``xgboost.XGBClassifier`` for any labels, early stopped on a stratified hold-out.

    XGBoost wants integer labels ``0..K-1``; this wrapper encodes them (``classes_``
    maps back), turns ``class_weight`` into sample weights, and holds out
    ``validation_fraction`` of the rows (stratified) to stop adding trees once
    the hold-out log loss has not improved for ``early_stopping_rounds`` rounds.
    With too few rows for a hold-out, it fits the capped ``n_estimators`` trees.

    Parameters
    ----------
    n_estimators : int, default 200
        Upper bound on boosting rounds.
    learning_rate : float, default 0.1
    max_depth : int, default 4
    subsample : float, default 0.8
    colsample_bytree : float, default 0.5
        Half the columns per tree: CNN vectors are wide and redundant, and it halves the cost.
    min_child_weight : float, default 1.0
    reg_lambda : float, default 1.0
    early_stopping_rounds : int or None, default 20
    validation_fraction : float, default 0.1
    class_weight : dict, "balanced" or None
    tree_method : str, default "hist"
    n_jobs : int, optional
        XGBoost threads (None: XGBoost's default, all cores or ``OMP_NUM_THREADS``).
    random_state : int, default 0

    Attributes
    ----------
    classes_ : ndarray
    model_ : xgboost.XGBClassifier
    n_trees_ : int
        Rounds kept (the best iteration + 1 when early stopped).
    feature_importances_ : ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from featx.heads import XGBoostHead
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(3, 1, (40, 3))]
    >>> y = np.repeat(["cat", "dog"], 40)
    >>> clf = XGBoostHead(n_estimators=20, n_jobs=1).fit(X, y)
    >>> clf.predict(X[:1]).tolist(), clf.predict_proba(X).shape
    (['cat'], (80, 2))
    """

    def __init__(self, n_estimators=200, learning_rate=0.1, max_depth=4, subsample=0.8,
                 colsample_bytree=0.5, min_child_weight=1.0, reg_lambda=1.0,
                 early_stopping_rounds=20, validation_fraction=0.1, class_weight=None,
                 tree_method="hist", n_jobs=None, random_state=0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.tree_method = tree_method
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _holdout(self, y_idx: np.ndarray, n_classes: int):
        """Train/validation rows for early stopping, or None when the data is too small."""
        if not self.early_stopping_rounds or not self.validation_fraction:
            return None
        n = len(y_idx)
        n_val = int(math.ceil(n * float(self.validation_fraction)))
        counts = np.bincount(y_idx, minlength=n_classes)
        if n_val < n_classes or n - n_val < n_classes or counts.min() < 2:
            return None
        split = StratifiedShuffleSplit(1, test_size=n_val, random_state=self.random_state)
        return next(split.split(np.zeros((n, 1)), y_idx))

    def fit(self, X, y, sample_weight=None):
        """Fit the boosted trees. Returns self."""
        try:
            from xgboost import XGBClassifier
        except ImportError as exc:
            raise MissingDependencyError(
                "the xgboost head needs XGBoost: pip install xgboost-cpu (Linux) or "
                "xgboost") from exc
        X, y = _validate_data(self, X, y, dtype=np.float32)
        y_idx = _check_two_classes(self, y)
        n_classes = len(self.classes_)
        weights = _weights(self.class_weight, y, sample_weight, X)
        split = self._holdout(y_idx, n_classes)
        model = XGBClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate,
            max_depth=self.max_depth, subsample=self.subsample,
            colsample_bytree=self.colsample_bytree, min_child_weight=self.min_child_weight,
            reg_lambda=self.reg_lambda, tree_method=self.tree_method, n_jobs=self.n_jobs,
            random_state=self.random_state, verbosity=0,
            eval_metric="logloss" if n_classes == 2 else "mlogloss",
            early_stopping_rounds=self.early_stopping_rounds if split is not None else None)
        if split is None:
            model.fit(X, y_idx, sample_weight=weights, verbose=False)
            self.n_trees_ = int(self.n_estimators)
        else:
            tr, va = split
            model.fit(X[tr], y_idx[tr], sample_weight=None if weights is None else weights[tr],
                      eval_set=[(X[va], y_idx[va])],
                      sample_weight_eval_set=None if weights is None else [weights[va]],
                      verbose=False)
            self.n_trees_ = int(model.best_iteration) + 1
        self.model_ = model
        return self

    def predict_proba(self, X):
        """Class probabilities, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=np.float32)
        proba = np.asarray(self.model_.predict_proba(X), dtype=np.float64)
        # XGBoost's float32 rows sum to 1 only within float32 rounding, which scikit-learn's
        # log_loss reports as "y_prob values do not sum to one": renormalise in float64.
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X):
        """The most probable class."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @property
    def feature_importances_(self):
        """XGBoost's feature importances (``importance_type`` of the fitted model)."""
        check_is_fitted(self)
        return self.model_.feature_importances_


# ----------------------------------------------------------------- the table


def _logreg(class_weight, n_jobs, random_state):
    return LogisticRegression(C=1.0, max_iter=2000, class_weight=class_weight,
                              random_state=random_state)


# The SVMs ignore n_jobs: libsvm/liblinear are single-threaded, and parallel calibration
# folds would start joblib worker processes, which costs more than the folds themselves
# at the sizes a baseline grid search sees (CalibratedSVC(n_jobs=k) is there to ask).
def _svm(class_weight, n_jobs, random_state):
    return CalibratedSVC(kernel="rbf", C=1.0, gamma="scale", class_weight=class_weight,
                         max_samples=3000, random_state=random_state)


def _linear_svm(class_weight, n_jobs, random_state):
    return CalibratedSVC(kernel="linear", C=0.1, class_weight=class_weight,
                         random_state=random_state)


def _xgboost(class_weight, n_jobs, random_state):
    return XGBoostHead(class_weight=class_weight, n_jobs=n_jobs, random_state=random_state)


def _knn(class_weight, n_jobs, random_state):
    if class_weight is not None:
        raise HeadError("the knn head has no class weights (k-nearest neighbours votes by "
                        f"distance); got class_weight={class_weight!r}. Use None, or another head")
    return KNeighborsClassifier(n_neighbors=5, weights="distance", n_jobs=n_jobs)


def _random_forest(class_weight, n_jobs, random_state):
    return RandomForestClassifier(n_estimators=300, max_features="sqrt",
                                  class_weight=class_weight, n_jobs=n_jobs,
                                  random_state=random_state)


#: kind → (builder, preprocessing step: "scale" | "norm" | None, one-line description).
HEADS: Dict[str, Tuple[Any, Optional[str], str]] = {
    "logreg": (_logreg, "scale", "StandardScaler + L2 logistic regression (lbfgs)"),
    "svm": (_svm, "norm", "L2 normalise + RBF SVC, sigmoid-calibrated, ≤ 3,000 rows"),
    "linear_svm": (_linear_svm, "scale", "StandardScaler + LinearSVC, sigmoid-calibrated"),
    "xgboost": (_xgboost, None, "XGBoost hist trees, ≤ 200, early stopped"),
    "knn": (_knn, "norm", "L2 normalise + k-nearest neighbours (distance-weighted)"),
    "random_forest": (_random_forest, None, "random forest, 300 trees"),
}

_PRE = {"scale": StandardScaler, "norm": Normalizer}

#: Default search grids, keyed like ``make_head(kind).get_params()``. Small on purpose:
#: a 5-fold baseline of logreg + svm + xgboost must finish in minutes on 2 cores.
GRIDS: Dict[str, Dict[str, list]] = {
    "logreg": {"clf__C": [0.01, 0.1, 1.0]},  # 3 × ~8 s per fold at 20k × 1280
    "svm": {"clf__C": [1.0, 10.0]},  # 2 × 4 fits on ≤ 3,000 rows
    "linear_svm": {"clf__C": [0.01, 0.1]},  # 2 × 4 LinearSVC fits (~26 s each at 20k)
    "xgboost": {"clf__max_depth": [4]},  # one point: ~100 s per fold at 20k
    "knn": {"clf__n_neighbors": [5, 15], "clf__weights": ["uniform", "distance"]},
    "random_forest": {"clf__min_samples_leaf": [1, 3]},
}

#: Other spellings accepted by :func:`make_head`.
ALIASES: Dict[str, str] = {
    "lr": "logreg", "logistic": "logreg", "logistic_regression": "logreg",
    "logisticregression": "logreg",
    "svc": "svm", "rbf_svm": "svm", "kernel_svm": "svm",
    "linearsvc": "linear_svm", "linear_svc": "linear_svm", "linsvm": "linear_svm",
    "xgb": "xgboost", "xgbclassifier": "xgboost", "gradient_boosting": "xgboost",
    "rf": "random_forest", "randomforest": "random_forest", "forest": "random_forest",
    "kneighbors": "knn", "k_nearest_neighbors": "knn", "nearest_neighbors": "knn",
}


def list_heads():
    """Head kinds :func:`make_head` builds, sorted.

    Examples
    --------
    >>> from featx.heads import list_heads
    >>> list_heads()
    ['knn', 'linear_svm', 'logreg', 'random_forest', 'svm', 'xgboost']
    """
    return sorted(HEADS)


def resolve_kind(kind) -> str:
    """The canonical head name for ``kind`` (aliases, case and ``-`` accepted).

    Raises
    ------
    HeadError
        With the closest known names.

    Examples
    --------
    >>> from featx.heads import resolve_kind
    >>> resolve_kind("XGB"), resolve_kind("linear-svm")
    ('xgboost', 'linear_svm')
    """
    if not isinstance(kind, str):
        raise HeadError(f"head kind must be a string, one of {list_heads()}; "
                        f"got {type(kind).__name__}: {kind!r}")
    key = kind.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key in HEADS:
        return key
    close = difflib.get_close_matches(key, list(HEADS) + list(ALIASES), n=3, cutoff=0.6)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise HeadError(f"unknown head {kind!r}.{hint} Known heads: {', '.join(list_heads())}.")


def make_head(kind, *, class_weight=None, n_jobs=None, random_state=0, **params) -> Pipeline:
    """A classifier for embedding vectors, as a Pipeline ending in a step ``"clf"``.

    Parameters
    ----------
    kind : {"logreg", "svm", "linear_svm", "xgboost", "knn", "random_forest"}
        Aliases such as ``"xgb"``, ``"rf"``, ``"svc"`` are accepted.
    class_weight : dict, "balanced" or None
        Passed to heads that weight classes (all but knn, which refuses it).
    n_jobs : int, optional
        Threads *inside* the head (xgboost, random_forest, knn; the SVMs are
        single-threaded). When a ``GridSearchCV`` around it runs ``n_jobs > 1``
        itself, give each head ``cores // n_jobs`` (``featx.baseline`` does) so the
        two levels do not oversubscribe the cores.
    random_state : int, default 0
    **params
        Classifier parameters (``C=10``); keys with ``__`` set pipeline
        parameters (``scale__with_mean=False``).

    Returns
    -------
    sklearn.pipeline.Pipeline
        ``[("scale", StandardScaler()), ("clf", ...)]`` for logreg and
        linear_svm, ``[("norm", Normalizer()), ("clf", ...)]`` for svm and knn
        (see the module notes for why), ``[("clf", ...)]`` for xgboost and
        random_forest. :data:`GRIDS` ``[kind]`` is a valid grid for it.

    Raises
    ------
    HeadError
        Unknown kind (with close matches) or an invalid parameter.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from featx import make_head
    >>> from featx.heads import GRIDS
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.normal(size=(40, 5)), np.repeat([0, 1], 20)
    >>> X[y == 1] += 1.5
    >>> head = make_head("logreg", C=0.5)
    >>> [name for name, _ in head.steps], head.named_steps["clf"].C
    (['scale', 'clf'], 0.5)
    >>> search = GridSearchCV(head, GRIDS["logreg"], cv=3).fit(X, y)
    >>> sorted(search.best_params_)
    ['clf__C']
    >>> make_head("xgbost")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    featx.errors.HeadError: unknown head 'xgbost'. Did you mean: xgboost? ...
    """
    name = resolve_kind(kind)
    builder, pre, _ = HEADS[name]
    clf = builder(class_weight, n_jobs, random_state)
    steps = ([(pre, _PRE[pre]())] if pre else []) + [("clf", clf)]
    pipe = Pipeline(steps)
    clf_params = {k: v for k, v in params.items() if "__" not in k}
    pipe_params = {k: v for k, v in params.items() if "__" in k}
    valid = clf.get_params()
    unknown = sorted(set(clf_params) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(valid), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise HeadError(f"{name} head ({type(clf).__name__}) has no parameter "
                        f"{', '.join(map(repr, unknown))}.{hint} Valid: {', '.join(sorted(valid))}")
    clf.set_params(**clf_params)
    if pipe_params:
        valid_pipe = pipe.get_params()
        bad = sorted(set(pipe_params) - set(valid_pipe))
        if bad:
            raise HeadError(f"{name} head pipeline has no parameter {', '.join(map(repr, bad))}; "
                            f"steps are {[s for s, _ in steps]}")
        pipe.set_params(**pipe_params)
    return pipe
