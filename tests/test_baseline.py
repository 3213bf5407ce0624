"""baseline(): one embedding pass per backbone, the same folds for every row, a raw-pixel floor."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from PIL import Image

import featx
from featx.leaderboard import RAW_PIXELS, Leaderboard
from featx.errors import FeatxError
from featx.heads import HeadError
from featx.sklearn import ImageEmbedder
from featx.store import EmbeddingStore

SMALL = dict(backbones=["mobilenet_v2"], weights=None, input_size=32)
METRICS = ["balanced_accuracy", "accuracy", "f1_macro", "roc_auc", "log_loss"]


def make_tree(root, n_per_class=12, classes=("stripes", "checks"), seed=0):
    """``root/<class>/*.jpg``: distinct colour patterns per class, each image noisy."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:40, :40]
    patterns = {
        "stripes": (lambda: ((yy + rng.randint(8)) // 4) % 2 == 0, (220, 30, 30), (30, 30, 220)),
        "checks": (lambda: ((yy // 8) + (xx // 8) + rng.randint(2)) % 2 == 0, (30, 200, 30),
                   (230, 230, 40)),
        "rings": (lambda: (np.hypot(yy - 20, xx - 20).astype(int) // 5) % 2 == 0, (240, 240, 240),
                  (10, 10, 10)),
    }
    paths, labels = [], []
    for cls in classes:
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        mask_fn, a, b = patterns[cls]
        for i in range(n_per_class):
            img = np.where(mask_fn()[..., None], a, b).astype(np.int16)
            img += rng.randint(-20, 21, img.shape)
            path = os.path.join(root, cls, f"{i:03d}.jpg")
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
            labels.append(cls)
    return paths, np.asarray(labels)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(str(tmp_path_factory.mktemp("tree")))


@pytest.fixture(scope="module")
def board_and_store(tree, tmp_path_factory):
    paths, y = tree
    store_path = str(tmp_path_factory.mktemp("store") / "emb.h5")
    board = featx.baseline(paths, y, heads=["logreg", "knn"], cv=4, cache=store_path, **SMALL)
    return board, store_path


def test_rows_columns_and_ranking(board_and_store):
    board, _ = board_and_store
    assert isinstance(board, Leaderboard) and len(board) == 3
    assert {(r["backbone"], r["head"]) for r in board.rows} == {
        ("mobilenet_v2", "logreg"), ("mobilenet_v2", "knn"), (RAW_PIXELS, "logreg")}
    for r in board.rows:
        for m in METRICS:
            assert 0.0 <= r[m] and (m == "log_loss" or r[m] <= 1.0), (m, r[m])
            assert r[f"{m}_std"] >= 0.0
        assert r["fit_s"] > 0 and r["predict_s"] > 0 and r["n_candidates"] >= 1
        assert set(r["best_params"]) <= set(featx.heads.GRIDS[r["head"]])
    floor = next(r for r in board.rows if r["backbone"] == RAW_PIXELS)
    assert floor["n_features"] == 3072
    # Issue 14: the floor cost 5-9x the Lite0 row; it is one setting, not a search.
    assert floor["n_candidates"] == 1 and floor["best_params"] == {"clf__C": 0.01}
    scores = [r["balanced_accuracy"] for r in board.rows]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in board.rows] == [1, 2, 3]
    assert board.best_ is board.rows[0]
    assert board.scoring["log_loss"] == "neg_log_loss" and board.scoring["roc_auc"] == "roc_auc"
    assert board.classes_.tolist() == ["checks", "stripes"]


def test_every_row_used_the_same_folds(board_and_store, tree):
    board, _ = board_and_store
    paths, y = tree
    assert len(board.splits) == 4
    test_parts = np.sort(np.concatenate([te for _, te in board.splits]))
    np.testing.assert_array_equal(test_parts, np.arange(len(paths)))  # a partition
    for search in board.searches_.values():
        assert len(search.cv) == 4
        for (tr, te), (tr0, te0) in zip(search.cv, board.splits):
            np.testing.assert_array_equal(tr, tr0)  # no image dropped: positions coincide
            np.testing.assert_array_equal(te, te0)


def test_frame_and_text(board_and_store):
    pd = pytest.importorskip("pandas")
    board, _ = board_and_store
    frame = board.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 3
    assert frame.index.name == "rank"
    assert list(frame.columns[:4]) == ["backbone", "head", "balanced_accuracy",
                                       "balanced_accuracy_std"]
    assert frame["balanced_accuracy"].is_monotonic_decreasing
    text = board.to_markdown()
    assert str(board) == text
    assert "| rank | backbone | head | balanced_accuracy |" in text
    assert " ± " in text and RAW_PIXELS in text
    assert "4-fold stratified CV" in text
    assert "Leaderboard" in repr(board)


def test_each_backbone_is_forwarded_once_and_refits_reuse_the_store(board_and_store, tree):
    board, store_path = board_and_store
    paths, y = tree
    embedder = ImageEmbedder(backbone="mobilenet_v2", weights=None, input_size=32)
    fp = embedder.load_backbone().fingerprint
    store = EmbeddingStore(store_path)
    assert store.count(fp) == len(paths) and store.forwarded(fp) == len(paths)
    assert board.embed_stats_["mobilenet_v2"]["forwarded"] == len(paths)
    # predicting with the refit pipeline, and a second baseline, read the store only
    model = board.estimators_[("mobilenet_v2", "logreg")]
    assert (model.predict(paths) == y).mean() > 0.9
    again = featx.baseline(paths, y, heads=["logreg"], cv=4, cache=store_path, **SMALL)
    assert again.embed_stats_["mobilenet_v2"]["forwarded"] == 0
    assert store.forwarded(fp) == len(paths)


def test_best_estimator_is_a_full_pipeline_on_images(board_and_store, tree):
    board, store_path = board_and_store
    paths, y = tree
    best = board.best_estimator_
    assert [name for name, _ in best.steps] == ["embed", "clf"]
    assert best is board.estimators_[(board.best_["backbone"], board.best_["head"])]
    proba = best.predict_proba(paths[:5])
    assert proba.shape == (5, 2)
    model = board.estimators_[("mobilenet_v2", "logreg")]
    assert model.named_steps["embed"].cache == store_path
    assert model.named_steps["embed"].on_error == "raise"


def test_joblib_round_trip_in_a_fresh_process(board_and_store, tree, tmp_path):
    board, store_path = board_and_store
    paths, _ = tree
    models = {"best": board.best_estimator_,
              "backbone": board.estimators_[("mobilenet_v2", "logreg")]}
    expected = {}
    for name, model in models.items():
        joblib.dump(model, tmp_path / f"{name}.joblib")
        expected[name] = (model.predict(paths).tolist(), model.predict_proba(paths))
    fp = models["backbone"].named_steps["embed"].backbone_fingerprint_
    before = EmbeddingStore(store_path).forwarded(fp)
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import joblib
        paths = json.load(open(sys.argv[1]))
        out = {}
        for name in ("best", "backbone"):
            model = joblib.load(sys.argv[2] + "/" + name + ".joblib")
            out[name] = [model.predict(paths).tolist(), model.predict_proba(paths).tolist()]
        print("RESULT" + json.dumps(out))
    """))
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))
    done = subprocess.run([sys.executable, str(script), str(listing), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT"))
    got = json.loads(line[len("RESULT"):])
    for name, (labels, proba) in expected.items():
        assert got[name][0] == labels, name
        np.testing.assert_array_equal(np.asarray(got[name][1]), proba)  # identical, not close
    assert EmbeddingStore(store_path).forwarded(fp) == before  # served by the store


def test_multiclass_held_out_test_and_dropped_images(tmp_path, caplog):
    paths, y = make_tree(str(tmp_path / "imgs"), n_per_class=10,
                         classes=("stripes", "checks", "rings"))
    broken = tmp_path / "imgs" / "rings" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    sources = paths + [str(broken)]
    labels = np.r_[y, ["rings"]]
    train = np.r_[np.arange(0, 7), np.arange(10, 17), np.arange(20, 27), [30]]
    test = np.setdiff1d(np.arange(30), train)
    with caplog.at_level(logging.WARNING, logger="featx"):
        board = featx.baseline([sources[i] for i in train], labels[train], heads=["logreg"],
                               cv=3, test=([sources[i] for i in test], labels[test]), **SMALL)
    assert "dropped 1 of 22 images" in caplog.text
    assert board.dropped_ == [(21, str(broken))] and board.n_samples == 21
    assert board.scoring["roc_auc"] == "roc_auc_ovr"
    assert all(i != 21 for tr, te in board.splits for i in np.r_[tr, te])
    for r in board.rows:
        assert 0.0 <= r["test_balanced_accuracy"] <= 1.0 and r["test_log_loss"] >= 0.0
    assert "test balanced_accuracy" in board.to_markdown()
    # pandas is a test dependency (featx[dev]): to_frame must work, not be skipped.
    assert board.to_frame()["test_accuracy"].notna().all()


def test_uint8_arrays_and_labels_from_a_folder(tree, tmp_path):
    paths, y = tree
    root = os.path.dirname(os.path.dirname(paths[0]))
    board = featx.baseline(root, heads=["logreg"], cv=3, **SMALL)
    assert sorted(board.classes_.tolist()) == ["checks", "stripes"]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    arr_board = featx.baseline(images, y, heads=["logreg"], cv=3, **SMALL)
    assert arr_board.best_estimator_.predict(images[:3]).tolist() == y[:3].tolist()


def test_bad_arguments_fail_before_any_embedding(tree):
    paths, y = tree
    with pytest.raises(HeadError, match="Did you mean: xgboost"):
        featx.baseline(paths, y, heads=["xgbost"], **SMALL)
    with pytest.raises(FeatxError, match="unknown backbone"):
        featx.baseline(paths, y, backbones=["resnet_51"])
    with pytest.raises(FeatxError, match="cv=20 stratified folds need at least 20 images"):
        featx.baseline(paths, y, heads=["logreg"], cv=20, **SMALL)
    with pytest.raises(FeatxError, match="one label per image"):
        featx.baseline(paths, y[:-1], **SMALL)
    with pytest.raises(FeatxError, match="at least 2 classes"):
        featx.baseline(paths, np.zeros(len(paths)), **SMALL)


def test_featx_baseline_is_the_function_whatever_was_imported_first():
    import importlib
    import types

    import featx.leaderboard as room

    assert isinstance(featx.baseline, types.FunctionType) and featx.baseline is room.baseline
    assert featx.Leaderboard is Leaderboard and featx.run_baseline is room.run_baseline
    with pytest.raises(ModuleNotFoundError):  # no module shadows the function any more
        importlib.import_module("featx.baseline")


def test_run_baseline_out_of_fold_proba_equals_refitting_the_pipeline_on_images(tree):
    """The result's probabilities come from the cached vectors; they are exactly what
    cross_val_predict of the refit image pipeline gives on the same folds."""
    from sklearn.model_selection import cross_val_predict

    paths, y = tree
    result = featx.run_baseline(paths, y, heads=["logreg"], cv=3, **SMALL)
    board, evaluation = result.board, result.evaluation
    assert evaluation.described == "out-of-fold predictions of the same 3 folds"
    assert len(evaluation.sources) == len(paths) and result.skipped == []
    images = np.empty(len(paths), dtype=object)
    images[:] = paths
    by_pipeline = cross_val_predict(board.best_estimator_, images, y, cv=board.splits,
                                    method="predict_proba")
    np.testing.assert_allclose(evaluation.proba, by_pipeline, atol=1e-12)
    assert list(evaluation.y) == list(y)


def _has_pandas():
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------- real weights


@pytest.mark.realweights
def test_lfw_subset_backbone_rows_beat_raw_pixels(tmp_path):
    """Packaged EfficientNet-Lite0 (ImageNet) at 128 px on scikit-image's LFW subset:
    every backbone row beats the raw-pixel logistic regression on balanced accuracy."""
    pytest.importorskip("skimage")
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged EfficientNet-Lite0 weights not installed (featx[weights])")
    from featx.datasets import load_lfw_subset

    sources, y, names = load_lfw_subset()
    labels = np.asarray(names, dtype=object)[y]
    board = featx.baseline(sources, labels, backbones=["efficientnet_lite0"],
                           heads=["logreg", "svm", "xgboost"], cv=5, input_size=128,
                           cache=str(tmp_path / "lfw.h5"))
    print()
    print(board)
    floor = next(r for r in board.rows if r["backbone"] == RAW_PIXELS)
    learnt = [r for r in board.rows if r["backbone"] != RAW_PIXELS]
    assert len(learnt) == 3 and floor["head"] == "logreg"
    for r in learnt:
        assert r["balanced_accuracy"] > floor["balanced_accuracy"], (r, floor)
    assert board.best_["backbone"] == "efficientnet_lite0"


# ----------------------------------------------------------------- finetune=True (issue 6)

#: The cheapest fine-tuning that still runs both kinds of row end to end.
TINY_FT = dict(epochs=(1, 0), augment=None, validation_fraction=0, batch_size=8)


@pytest.fixture(scope="module")
def ft_board(tree):
    paths, y = tree
    return featx.baseline(paths, y, heads=["logreg"], cv=3, finetune=True,
                          finetune_params=TINY_FT, **SMALL)


# Both fine-tuning-row tests train two CNNs (~35 s): make test-all runs them;
# tests/test_finetune.py keeps FineTuneClassifier itself in the default run.
@pytest.mark.slow
def test_finetune_rows_are_held_out_fold_0_with_the_same_metrics(ft_board):
    board = ft_board
    by_head = {r["head"]: r for r in board.rows}
    assert {"fine-tuned", "scratch"} <= set(by_head)
    cv_rows = [r for r in board.rows if r["head"] not in ("fine-tuned", "scratch")]
    assert {r["protocol"] for r in cv_rows} == {"3-fold CV"}
    for head in ("fine-tuned", "scratch"):
        row = by_head[head]
        assert row["backbone"] == "mobilenet_v2"
        assert row["protocol"] == "held-out fold 0"
        for m in METRICS:
            assert 0.0 <= row[m] or m == "log_loss"
            assert np.isnan(row[f"{m}_std"])  # one split: no spread
    # fine-tuned keeps the board's weights (None here) and unfreezes 20 by default;
    # scratch is always weights=None, unfreeze="all", all epochs in phase 2.
    assert by_head["fine-tuned"]["best_params"]["unfreeze"] == 20
    assert by_head["scratch"]["best_params"]["unfreeze"] == "all"
    assert by_head["scratch"]["best_params"]["epochs"] == (0, 1)
    assert "protocol" in board.to_markdown() and "held-out fold 0" in board.to_markdown()
    assert "protocol" in board.to_frame().columns


@pytest.mark.slow
def test_finetune_histories_and_models_are_kept_and_best_is_a_cv_row(ft_board, tree):
    board = ft_board
    key = ("mobilenet_v2", "fine-tuned")
    assert set(board.histories_) == {key, ("mobilenet_v2", "scratch")}
    assert board.histories_[key]["phase"] == [1]
    clf = board.finetuned_[key]
    assert isinstance(clf, featx.FineTuneClassifier)
    # Trained on fold 0's training part only.
    train, held = board.splits[0]
    assert len(train) + len(held) == len(tree[0])
    # best_ is always a cross-validated, refit row with a pipeline.
    assert (board.best_["backbone"], board.best_["head"]) in board.estimators_
    assert board.best_["protocol"] == "3-fold CV"


def test_finetune_is_off_by_default_and_params_are_checked(board_and_store, tree):
    board, _ = board_and_store
    assert board.finetuned_ == {} and board.histories_ == {}
    assert all(r["protocol"] != "held-out fold 0" for r in board.rows)
    paths, y = tree
    with pytest.raises(FeatxError, match="finetune_params"):
        featx.baseline(paths, y, heads=["logreg"], cv=2, finetune=True,
                       finetune_params={"not_a_param": 1}, **SMALL)
