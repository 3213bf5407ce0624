"""What a baseline run returns: the :class:`Leaderboard` and the :class:`BaselineResult`.

Plain data once the run is over: rows, folds, what was left out, the best
model's probabilities. The report and the model bundle read these; nothing
here runs a model again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from sklearn.metrics import get_scorer
from sklearn.pipeline import Pipeline

from ..errors import FeatxError, InvalidParameterError, MissingDependencyError

__all__ = ["Leaderboard", "BaselineResult", "Evaluation", "Scoring", "resolve_scoring"]


class Scoring(NamedTuple):
    """The metrics of a run: scorer objects, how they were named, which rank.

    ``negated`` holds the metrics scikit-learn reports negated (``neg_log_loss``),
    turned back to positive on the board.

    Examples
    --------
    >>> from featx.leaderboard import resolve_scoring
    >>> scoring = resolve_scoring(None, n_classes=3)
    >>> scoring.primary, sorted(scoring.negated), scoring.described["roc_auc"]
    ('balanced_accuracy', ['log_loss'], 'roc_auc_ovr')
    """

    scorers: Dict[str, object]
    described: Dict[str, str]
    negated: frozenset
    primary: str


def resolve_scoring(scoring, n_classes: int) -> Scoring:
    """The :class:`Scoring` of a run from ``baseline(scoring=...)`` (None: the five defaults).

    Examples
    --------
    >>> from featx.leaderboard import resolve_scoring
    >>> resolve_scoring(["accuracy", "neg_log_loss"], n_classes=2).described
    {'accuracy': 'accuracy', 'log_loss': 'neg_log_loss'}
    """
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
    primary = "balanced_accuracy" if "balanced_accuracy" in scorers else next(iter(scorers))
    return Scoring(scorers, described, frozenset(negated), primary)


def _ranked(rows: List[dict], primary: str) -> List[dict]:
    """``rows`` best first by ``primary`` (log loss breaks ties; NaN last), ``rank`` set."""
    lower_better = primary == "log_loss"

    def order(row):
        v = row.get(primary, float("nan"))
        v = float("inf") if v != v else (v if lower_better else -v)
        tie = row.get("log_loss", 0.0)
        return (v, tie if tie == tie else float("inf"))

    ranked = sorted(rows, key=order)
    for i, row in enumerate(ranked, 1):
        row["rank"] = i
    return ranked


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
    backbones_ : dict
        Backbone → its description (weights, input size, pooling, dtype,
        fingerprint: :meth:`featx.Backbone.describe`), for the report.
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

    def __init__(self, rows: List[dict], *, scoring: "Scoring", splits, classes,
                 estimators: dict, searches: dict, n_samples: int,
                 dropped: Sequence[Tuple[int, str, str]], embed_stats: dict,
                 cv_description: str, finetuned: Optional[dict] = None,
                 test_dropped: Sequence[Tuple[int, str, str]] = ()):
        self.metrics = list(scoring.scorers)
        self.scoring = dict(scoring.described)
        self.primary = primary = scoring.primary
        self.splits = splits
        self.classes_ = classes
        self.estimators_ = estimators
        self.searches_ = searches
        self.n_samples = n_samples
        self.dropped_ = [(int(i), src) for i, src, _ in dropped]
        self.dropped_reasons_: Dict[int, str] = {int(i): why for i, _, why in dropped}
        self.test_dropped_ = [tuple(t) for t in test_dropped]
        self.embed_stats_ = embed_stats
        self.backbones_: Dict[str, dict] = {}  # filled by run_baseline
        self.cv_description = cv_description
        self.finetuned_ = dict(finetuned or {})
        self.histories_ = {key: clf.history_ for key, clf in self.finetuned_.items()}
        self.rows = _ranked(rows, primary)

    def with_rows(self, rows: List[dict], finetuned: dict, note: str) -> "Leaderboard":
        """A copy with ``rows`` added (re-ranked) and ``finetuned`` models recorded.

        The fine-tuning step uses it: the cross-validated rows, folds and refit
        models are shared, not recomputed.
        """
        board = copy.copy(self)
        board.rows = _ranked([dict(r) for r in self.rows] + list(rows), self.primary)
        board.finetuned_ = {**self.finetuned_, **finetuned}
        board.histories_ = {key: clf.history_ for key, clf in board.finetuned_.items()}
        board.cv_description = self.cv_description + note
        return board

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

    def _columns(self) -> List[str]:
        cols = ["rank", "backbone", "head"]
        ordered = [self.primary] + [m for m in self.metrics if m != self.primary]
        for m in ordered:
            cols += [m, f"{m}_std"]
        tests = [f"test_{m}" for m in ordered if any(f"test_{m}" in r for r in self.rows)]
        # protocol after the scores: the leading columns stay rank, backbone, head, metric.
        return cols + tests + ["protocol", "fit_s", "predict_s", "search_s", "n_features",
                               "n_candidates", "best_params"]

    def to_records(self) -> List[dict]:
        """The rows as plain dicts with the board's columns, best first (no pandas needed).

        Returns
        -------
        list of dict
        """
        cols = self._columns()
        return [{c: r.get(c) for c in cols} for r in self.rows]

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
                                         "pandas (to_records() and to_markdown() work "
                                         "without it)") from exc
        return pd.DataFrame(self.to_records(), columns=self._columns()).set_index("rank")

    def display_table(self, digits: int = 3) -> Tuple[List[str], List[List[str]]]:
        """``(header, rows of cells)`` as people read the board: ``mean ± std`` in one
        cell per metric at one precision, ``—`` where there is no value (a
        one-split row has no spread). :meth:`to_markdown` and the HTML report
        both print it.

        Examples
        --------
        >>> import numpy as np, featx
        >>> rng = np.random.RandomState(0)
        >>> images = rng.randint(0, 255, (12, 32, 32, 3)).astype(np.uint8)
        >>> board = featx.baseline(images, np.repeat(["a", "b"], 6), backbones=["mobilenet_v2"],
        ...                        heads=["logreg"], weights=None, input_size=32, cv=2)
        >>> header, rows = board.display_table()
        >>> header[:4], " ± " in rows[0][3]
        (['rank', 'backbone', 'head', 'balanced_accuracy'], True)
        """
        ordered = [self.primary] + [m for m in self.metrics if m != self.primary]
        tests = [m for m in ordered if any(f"test_{m}" in r for r in self.rows)]
        header = ["rank", "backbone", "head", *ordered, *[f"test {m}" for m in tests],
                  "protocol", "fit s", "predict s", "features", "best params"]

        def num(v, d=digits):
            return "—" if v is None or v != v else f"{v:.{d}f}"

        def spread(mean, std):
            return num(mean) if std is None or std != std else f"{num(mean)} ± {num(std)}"

        rows = []
        for r in self.rows:
            cells = [str(r["rank"]), r["backbone"], r["head"]]
            cells += [spread(r.get(m), r.get(m + "_std")) for m in ordered]
            cells += [num(r.get(f"test_{m}")) for m in tests]
            cells += [str(r.get("protocol", "—"))]
            cells += [num(r.get("fit_s"), 3), num(r.get("predict_s"), 3), str(r["n_features"]),
                      _params_text(r.get("best_params"))]
            rows.append(cells)
        return header, rows

    def to_markdown(self, digits: int = 3) -> str:
        """The board as a plain-text (Markdown) table, ``mean ± std`` per metric.

        Parameters
        ----------
        digits : int, default 3

        Returns
        -------
        str
        """
        head, rows = self.display_table(digits)
        lines = [
            f"featx baseline: {self.n_samples} images, {len(self.classes_)} classes, "
            f"{self.cv_description}; ranked by {self.primary}"
            + (f"; {len(self.dropped_)} images dropped (not decodable)" if self.dropped_ else ""),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
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


@dataclass
class Evaluation:
    """The best model's class probabilities on a set of images, and which set it was.

    Attributes
    ----------
    sources : list
        The evaluated images (kept ones only): the out-of-fold images of the
        board's folds, or the held-out test split.
    y : numpy.ndarray
        Their labels.
    proba : numpy.ndarray, shape (n, n_classes)
        Columns in ``Leaderboard.classes_`` order.
    described : str
        Where ``proba`` comes from, in words (shown in the report).
    model : str, optional
        Which model made ``proba`` when it is not the board's best row (e.g. a
        fine-tuned network), in words.
    indices : numpy.ndarray, optional
        Positions of the evaluated images in ``BaselineResult.sources`` (out-of-fold
        evaluations; None for a test split).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.leaderboard import Evaluation
    >>> e = Evaluation(["a.png"], np.array(["cat"]), np.array([[0.7, 0.3]]), "a test")
    >>> e.proba.argmax(axis=1).tolist()
    [0]
    """

    sources: list
    y: np.ndarray
    proba: np.ndarray
    described: str
    model: Optional[str] = None
    indices: Optional[np.ndarray] = None


@dataclass
class BaselineResult:
    """Everything one :func:`~featx.run_baseline` run produced, as plain data.

    Attributes
    ----------
    board : Leaderboard
        The ranked rows, folds and refit models.
    evaluation : Evaluation
        The best cross-validated row's probabilities: out-of-fold on the board's
        folds (computed from the cached vectors, no image forwarded again) or,
        with a test split, on that split.
    sources : list
        Every input, as given (positions in :attr:`Leaderboard.splits` and
        ``Leaderboard.dropped_`` index it).
    y : numpy.ndarray
        Their labels.
    skipped : list of (str, str)
        Images left out because they could not be read or decoded, as
        (source, reason): training inputs first, then test inputs.
    test : (list, numpy.ndarray) or None
        The kept test images and labels, when a test split was given.
    settings : dict
        The run's embedding settings (``backbones``, ``weights``, ``input_size``,
        ``batch_size``, ``cache``, ``random_state``), for the steps that follow.
    seconds : float
        Wall time of the run.
    history : dict or None
        Training curves of the fine-tuned row, once :func:`~featx.add_finetune_rows`
        added it.

    Examples
    --------
    >>> import numpy as np, featx
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (24, 32, 32, 3)).astype(np.uint8)
    >>> images[12:] += 120
    >>> y = np.repeat(["dark", "light"], 12)
    >>> result = featx.run_baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                             weights=None, input_size=32, cv=3)
    >>> result.evaluation.proba.shape, result.skipped
    ((24, 2), [])
    """

    board: Leaderboard
    evaluation: Evaluation
    sources: list
    y: np.ndarray
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    test: Optional[Tuple[list, np.ndarray]] = None
    settings: dict = field(default_factory=dict)
    seconds: float = float("nan")
    history: Optional[Dict[str, list]] = None
