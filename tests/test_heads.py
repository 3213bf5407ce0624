"""Heads: every kind fits, predicts and gives probabilities; grids fit their pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx.errors import FeatxError
from featx.heads import GRIDS, HEADS, CalibratedSVC, HeadError, XGBoostHead, list_heads, make_head

KINDS = list_heads()
#: (kind, first step name): the preprocessing each head is documented to get.
STEPS = {"logreg": "scale", "linear_svm": "scale", "svm": "norm", "knn": "norm",
         "xgboost": "clf", "random_forest": "clf"}


def blobs(n_per_class=30, n_classes=2, dim=8, seed=0, labels=None):
    rng = np.random.RandomState(seed)
    X = np.concatenate([rng.normal(2.0 * k, 1.0, (n_per_class, dim)) for k in range(n_classes)])
    y = np.repeat(np.arange(n_classes) if labels is None else np.asarray(labels), n_per_class)
    return X.astype(np.float32), y


def test_table_and_grids_cover_the_same_kinds():
    assert set(HEADS) == set(GRIDS) == set(STEPS)
    assert KINDS == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_classes,labels", [(2, ["cat", "dog"]), (3, None)])
def test_each_head_fits_predicts_and_gives_probabilities(kind, n_classes, labels):
    X, y = blobs(n_classes=n_classes, labels=labels)
    head = make_head(kind, n_jobs=1)
    assert head.steps[0][0] == STEPS[kind] and head.steps[-1][0] == "clf"
    head.fit(X, y)
    pred = head.predict(X)
    proba = head.predict_proba(X)
    assert set(pred) <= set(y)
    assert proba.shape == (len(y), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    # predict agrees with the probabilities, so log loss and accuracy tell one story
    np.testing.assert_array_equal(pred, head.classes_[proba.argmax(axis=1)])
    assert (pred == y).mean() > 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_default_grid_is_valid_for_its_pipeline(kind):
    head = make_head(kind)
    params = head.get_params()
    for point in ParameterGrid(GRIDS[kind]):
        assert set(point) <= set(params), (kind, point)
        clone(head).set_params(**point)  # every value is accepted


@pytest.mark.parametrize("kind", ["logreg", "xgboost", "svm"])
def test_grid_search_with_the_default_grid(kind):
    X, y = blobs(n_per_class=20)
    search = GridSearchCV(make_head(kind, n_jobs=1), GRIDS[kind], cv=3,
                          scoring=["balanced_accuracy", "neg_log_loss", "roc_auc"],
                          refit="balanced_accuracy", error_score="raise").fit(X, y)
    assert search.best_score_ > 0.9


def test_unknown_kind_names_close_matches():
    with pytest.raises(FeatxError, match=r"unknown head 'xgbost'.*Did you mean: xgboost"):
        make_head("xgbost")
    with pytest.raises(HeadError, match="random_forest"):
        make_head("random_forrest")
    with pytest.raises(HeadError, match="must be a string, one of"):
        make_head(42)


@pytest.mark.parametrize("alias,kind", [("XGB", "xgboost"), ("rf", "random_forest"),
                                        ("linear-svm", "linear_svm"),
                                        ("LogisticRegression", "logreg")])
def test_aliases(alias, kind):
    assert type(make_head(alias)[-1]) is type(make_head(kind)[-1])


def test_params_go_to_the_classifier_and_bad_ones_are_named():
    head = make_head("logreg", C=0.5, scale__with_mean=False)
    assert head.named_steps["clf"].C == 0.5
    assert head.named_steps["scale"].with_mean is False
    with pytest.raises(HeadError, match=r"no parameter 'max_iters'.*Did you mean: max_iter"):
        make_head("logreg", max_iters=1)


def test_class_weight_and_threads_reach_the_estimator():
    assert make_head("random_forest", class_weight="balanced", n_jobs=3)[-1].n_jobs == 3
    assert make_head("xgboost", class_weight="balanced", n_jobs=1)[-1].class_weight == "balanced"
    assert make_head("svm", class_weight="balanced")[-1].class_weight == "balanced"
    with pytest.raises(HeadError, match="knn head has no class weights"):
        make_head("knn", class_weight="balanced")


def test_balanced_class_weight_helps_the_minority_class():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(0, 1, (90, 4)), rng.normal(1.0, 1, (10, 4))]
    y = np.r_[np.zeros(90, int), np.ones(10, int)]
    plain = make_head("xgboost", n_jobs=1).fit(X, y).predict(X)
    balanced = make_head("xgboost", n_jobs=1, class_weight="balanced").fit(X, y).predict(X)
    assert (balanced[y == 1] == 1).sum() >= (plain[y == 1] == 1).sum()


def test_svm_subsamples_and_keeps_every_class():
    X, y = blobs(n_per_class=100, n_classes=3)
    clf = CalibratedSVC(max_samples=60).fit(X, y)
    assert clf.n_samples_fit_ <= 63 and set(clf.classes_) == {0, 1, 2}
    assert clf.predict_proba(X).shape == (300, 3)


def test_svm_needs_two_samples_per_class():
    X = np.arange(10, dtype=float).reshape(5, 2)
    with pytest.raises(HeadError, match="at least 2 samples of every class"):
        CalibratedSVC().fit(X, [0, 0, 0, 0, 1])


def test_xgboost_early_stops_on_a_holdout_and_can_go_without():
    X, y = blobs(n_per_class=60)
    stopped = XGBoostHead(n_estimators=300, n_jobs=1).fit(X, y)
    assert stopped.n_trees_ < 300  # easy data: the hold-out loss stops improving early
    full = XGBoostHead(n_estimators=15, early_stopping_rounds=None, n_jobs=1).fit(X, y)
    assert full.n_trees_ == 15
    assert full.feature_importances_.shape == (X.shape[1],)


#: Checks the wrappers fail by design, with the reason.
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data":
        "rows are split (calibration folds, early-stopping hold-out) before weighting, so a "
        "row of weight 2 and two copies of it land in different splits",
}


@parametrize_with_checks(
    [CalibratedSVC(), CalibratedSVC(kernel="linear"), XGBoostHead(n_estimators=10, n_jobs=1)],
    expected_failed_checks=lambda est: EXPECTED_FAILURES,
)
def test_wrappers_pass_sklearn_checks(estimator, check):
    check(estimator)


def test_xgboost_probabilities_sum_to_one_so_log_loss_does_not_warn():
    """Issue 14: every default baseline printed sklearn's "y_prob values do not sum to
    one" five times: XGBoost's float32 probabilities, cast to float64, sum to 1 only
    within float32 rounding."""
    import warnings

    from sklearn.metrics import log_loss

    from featx.heads import XGBoostHead

    rng = np.random.RandomState(0)
    X = rng.randn(400, 50).astype(np.float32)
    y = (X[:, 0] + rng.randn(400) > 0).astype(int)
    proba = XGBoostHead(n_estimators=50, n_jobs=1).fit(X, y).predict_proba(X)
    assert proba.dtype == np.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_loss(y, proba)
