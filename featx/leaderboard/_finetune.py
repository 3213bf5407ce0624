"""The fine-tuning rows: a step on a finished :class:`BaselineResult`, not part of the search.

Two :class:`~featx.FineTuneClassifier` rows for the first backbone — the
pretrained base fine-tuned, and the same network trained from scratch — on
fold 0 of the board's own folds, so they compare with the cross-validated rows
on the same images.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Dict, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..errors import FeatxError, InvalidParameterError
from ._result import BaselineResult, Evaluation, Scoring, resolve_scoring

__all__ = ["FINETUNE_DEFAULTS", "FINETUNE_PROTOCOL", "add_finetune_rows", "finetune_configs"]

log = logging.getLogger("featx")

#: Defaults of the ``"fine-tuned"`` row (:class:`~featx.FineTuneClassifier` parameters).
#: Phase 1 trains the head on the vectors the board already embedded (so its 50 epochs,
#: early-stopped, cost seconds); phase 2 then fine-tunes the top 20 layers for 3 epochs
#: of augmented images at 1e-4, and is undone if it does not lower the validation loss.
#: Small on purpose: the rows are a comparison on one split, not a tuned model.
FINETUNE_DEFAULTS = dict(unfreeze=20, epochs=(50, 3), lr=(1e-3, 1e-4), phase1="vectors",
                         augment=("flip", "zoom", "contrast"))

#: Held-out protocol of the fine-tuning rows (see :class:`~featx.Leaderboard`).
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


def finetune_configs(settings: dict, finetune_params: Optional[dict] = None) -> Dict[str, dict]:
    """``{"fine-tuned": params, "scratch": params}`` for :class:`~featx.FineTuneClassifier`.

    The scratch model gets as many passes over the images as the fine-tuned
    model's base saw (phase 2, plus phase 1 when phase 1 ran on images), at
    least one.

    Parameters
    ----------
    settings : dict
        ``BaselineResult.settings``: the first of ``backbones`` is fine-tuned
        with the run's ``weights``, ``input_size``, ``batch_size``, ``cache``
        and ``random_state``.
    finetune_params : dict, optional
        FineTuneClassifier parameters overriding :data:`FINETUNE_DEFAULTS` in
        both rows; a nested ``"scratch"`` dict overrides the scratch row only.

    Returns
    -------
    dict

    Examples
    --------
    >>> from featx.leaderboard import finetune_configs
    >>> settings = dict(backbones=["mobilenet_v2"], weights=None, input_size=32,
    ...                 batch_size=8, cache=None, random_state=0)
    >>> configs = finetune_configs(settings, {"epochs": (2, 1)})
    >>> configs["scratch"]["epochs"], configs["scratch"]["unfreeze"]
    ((0, 1), 'all')
    """
    params = dict(finetune_params or {})
    scratch_extra = params.pop("scratch", None) or {}
    if not isinstance(scratch_extra, dict):
        raise InvalidParameterError(
            f"finetune_params['scratch'] must be a dict of FineTuneClassifier "
            f"parameters; got {type(scratch_extra).__name__}")
    common = {"backbone": settings["backbones"][0],
              **{k: settings.get(k) for k in ("input_size", "batch_size", "random_state",
                                               "cache")}}
    tuned = {**common, "weights": settings.get("weights"), **FINETUNE_DEFAULTS, **params}
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


def _scores(clf, proba, sources, y, scoring: Scoring, prefix: str = "") -> dict:
    scored = _Scored(clf.classes_, proba)
    out = {}
    for name, scorer in scoring.scorers.items():
        value = float(scorer(scored, sources, y))
        out[prefix + name] = -value if name in scoring.negated else value
    return out


def _validation_fraction(params: dict, n_train: int, n_classes: int) -> dict:
    frac = params.get("validation_fraction", 0.1)
    n_val = int(np.ceil(float(frac or 0) * n_train))
    if frac and (n_val < n_classes or n_train - n_val < n_classes):
        # Too few images for a stratified validation split (FineTuneClassifier
        # would refuse): train on all of fold 0's training part, no early stopping.
        log.warning("featx fine-tuning: %d training images are too few for a stratified "
                    "validation_fraction=%s; fine-tuning without validation", n_train, frac)
        return {**params, "validation_fraction": 0}
    return params


def _train_and_score(params: dict, train, held, scoring: Scoring, test):
    """One fitted classifier and its row: trained on ``train``, scored on ``held`` (and test)."""
    from ..finetune import FineTuneClassifier

    (tr_items, tr_y), (te_items, te_y) = train, held
    params = _validation_fraction(params, len(tr_items), len(np.unique(tr_y)))
    try:
        clf = FineTuneClassifier(**params)
    except TypeError as exc:
        raise FeatxError(f"finetune_params: {exc}") from exc
    t = time.perf_counter()
    clf.fit(tr_items, tr_y)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    held_proba = clf.predict_proba(te_items)
    row = {"backbone": params["backbone"], "protocol": FINETUNE_PROTOCOL,
           "n_features": int(clf.backbone_info_.get("dim", 0)),
           **_scores(clf, held_proba, te_items, te_y, scoring)}
    row.update({f"{m}_std": float("nan") for m in scoring.scorers})  # one split: no spread
    row["predict_s"] = time.perf_counter() - t
    row.update(fit_s=fit_s, search_s=fit_s + row["predict_s"], n_candidates=1,
               best_params={k: params[k] for k in ("weights", "unfreeze", "epochs", "lr")
                            if k in params},
               epochs_run=[ph["epochs_run"] for ph in clf.phases_])
    if test is not None and len(test[0]):
        row.update(_scores(clf, clf.predict_proba(test[0]), test[0], test[1], scoring,
                           prefix="test_"))
    return clf, row, held_proba


def add_finetune_rows(result: BaselineResult, finetune_params: Optional[dict] = None,
                      scoring: Optional[Scoring] = None, *,
                      evaluate_finetuned: bool = False) -> BaselineResult:
    """Add the ``"fine-tuned"`` and ``"scratch"`` rows of the first backbone to a result.

    Both are trained on fold 0's training images and scored on fold 0's held-out
    images (``protocol`` ``"held-out fold 0"``): a CNN per fold would cost k
    trainings. The fine-tuned row keeps the run's ``weights`` and
    :data:`FINETUNE_DEFAULTS`; the scratch row has ``weights=None``,
    ``unfreeze="all"`` and as many epochs over the images as the fine-tuned base
    saw, at lr 1e-3. Their ``history_`` is in ``board.histories_`` and the
    fine-tuned one in ``result.history``.

    Parameters
    ----------
    result : BaselineResult
        A finished :func:`~featx.run_baseline`.
    finetune_params : dict, optional
        See :func:`finetune_configs`.
    scoring : Scoring, optional
        The run's metrics (default: rebuilt from ``result.board.scoring``).
    evaluate_finetuned : bool, default False
        Make ``result.evaluation`` the fine-tuned network's probabilities on
        fold 0's held-out images (the ones its row was scored on) instead of
        the best cross-validated row's: what ``featx finetune`` reports.

    Returns
    -------
    BaselineResult
        A new result whose board has the two rows added.

    Examples
    --------
    >>> # trains two CNNs: see tests/test_baseline.py (make test-all) and
    >>> # `featx baseline DIR --finetune`
    """
    board = result.board
    scoring = scoring or resolve_scoring(board.scoring, len(board.classes_))
    configs = finetune_configs(result.settings, finetune_params)
    train, held = board.splits[0]
    y = np.asarray(result.y)

    def part(positions):
        return [result.sources[i] for i in positions], y[positions]

    rows, fitted, held_proba = [], {}, {}
    for head, params in configs.items():
        clf, row, held_proba[head] = _train_and_score(params, part(train), part(held),
                                                      scoring, result.test)
        rows.append({**row, "head": head})
        fitted[(params["backbone"], head)] = clf
        log.info("featx baseline: %s %s on %s: %d train / %d held-out images, %.1f s",
                 params["backbone"], head, FINETUNE_PROTOCOL, len(train), len(held),
                 row["search_s"])
    note = (f"; fine-tuning rows: trained on fold 0's training part, scored on its "
            f"held-out part ({len(held)} images)")
    new_board = board.with_rows(rows, fitted, note)
    name = configs["fine-tuned"]["backbone"]
    tuned = fitted[(name, "fine-tuned")]
    result = dataclasses.replace(result, board=new_board, history=tuned.history_)
    if evaluate_finetuned:
        order = [list(tuned.classes_).index(c) for c in board.classes_]
        held_sources, held_y = part(held)
        result = dataclasses.replace(result, evaluation=Evaluation(
            held_sources, held_y, held_proba["fine-tuned"][:, order],
            f"fold 0's {len(held)} held-out images (the network never trained on them)",
            model=f"{name} fine-tuned"))
    return result
