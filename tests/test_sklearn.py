"""ImageEmbedder / RawPixels: sklearn conventions, grid searches, forward-once via the store."""

from __future__ import annotations

import logging
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_checks

import featx
from featx.engine import clear_memo
from featx.errors import FeatxError, ImageDecodeError
from featx.sklearn import NOT_APPLICABLE_CHECKS, ImageEmbedder, RawPixels
from featx.store import EmbeddingStore

SIZE = 32
SMALL = dict(backbone="mobilenet_v2", weights=None, input_size=SIZE)


def make_tree(root, n_per_class=20, n_copies=0, seed=0):
    """``root/<stripes|checks>/*.jpg``: two classes of distinct colour patterns, tiny JPEGs.

    Every image carries its own noise, so all are distinct; ``n_copies`` extra files per
    class are byte copies of earlier ones (same content, new name). Returns (paths, labels).
    """
    rng = np.random.RandomState(seed)
    paths, labels = [], []
    yy, xx = np.mgrid[:40, :40]
    for cls in ("stripes", "checks"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n_per_class):
            if cls == "stripes":
                mask = ((yy + rng.randint(8)) // 4) % 2 == 0
                a, b = (220, 30, 30), (30, 30, 220)
            else:
                mask = ((yy // 8) + (xx // 8) + rng.randint(2)) % 2 == 0
                a, b = (30, 200, 30), (230, 230, 40)
            img = np.where(mask[..., None], a, b).astype(np.int16)
            img += rng.randint(-20, 21, img.shape)
            path = os.path.join(root, cls, f"{i:03d}.jpg")
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
            labels.append(cls)
        for j in range(n_copies):
            src = paths[-n_per_class + j]
            dst = os.path.join(root, cls, f"copy_{j}.jpg")
            shutil.copyfile(src, dst)
            paths.append(dst)
            labels.append(cls)
    return paths, np.asarray(labels)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    return make_tree(str(root), n_per_class=6)


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).randint(0, 256, (5, 36, 36, 3)).astype(np.uint8)


# ----------------------------------------------------------------- the headline guarantee


def test_grid_search_forwards_each_unique_image_once_per_backbone(tmp_path):
    """6 candidates × 5 folds × 2 worker processes, two backbones: each unique image is
    forwarded exactly once per backbone, proven by the store's own counters."""
    paths, y = make_tree(str(tmp_path / "imgs"), n_per_class=20, n_copies=2)  # 44 files
    unique = 40
    store_path = str(tmp_path / "emb.h5")
    pipe = Pipeline([("embed", ImageEmbedder(weights=None, input_size=SIZE, cache=store_path)),
                     ("clf", LogisticRegression())])
    grid = {"embed__backbone": ["mobilenet_v2", "mobilenet_v3_small"],
            "clf": [LogisticRegression(max_iter=200), KNeighborsClassifier(3),
                    RandomForestClassifier(20)]}
    search = GridSearchCV(pipe, grid, cv=5, n_jobs=2).fit(paths, y)
    assert search.best_score_ > 0.9
    assert search.predict(paths[:4]).tolist() == y[:4].tolist()

    store = EmbeddingStore(store_path)
    fingerprints = {name: ImageEmbedder(**{**SMALL, "backbone": name}).load_backbone().fingerprint
                    for name in grid["embed__backbone"]}
    assert sorted(store.fingerprints()) == sorted(fingerprints.values())
    for name, fp in fingerprints.items():
        assert store.count(fp) == unique, name
        # Forward-once across candidates, folds and the two worker processes: the store
        # counts every vector any process forwarded and put.
        assert store.forwarded(fp) == unique, name


def test_cache_none_uses_the_process_memo(tree):
    paths, _ = tree
    clear_memo()
    emb = ImageEmbedder(**SMALL)
    _, _, first = emb._embed(featx.images.as_sources(paths))
    _, _, again = emb._embed(featx.images.as_sources(list(reversed(paths))))
    assert first["forwarded"] == len(paths)
    assert again["forwarded"] == 0 and again["cache_hits"] == len(paths)


# ----------------------------------------------------------------- scikit-learn conventions


def test_init_stores_params_only_and_get_set_params_round_trip():
    emb = ImageEmbedder(**SMALL, cache="x.h5", batch_size=8)
    params = emb.get_params()
    assert params == {"backbone": "mobilenet_v2", "weights": None, "input_size": SIZE,
                      "pooling": "avg", "cache": "x.h5", "batch_size": 8, "dtype": "float32",
                      "on_error": "raise", "progress": False, "policy": "squash",
                      "pool": "auto", "decoder": "cpu",
                      "runtime": "keras"}
    assert [k for k in vars(emb) if k.endswith("_")] == []
    emb.set_params(pooling="gem", cache=None)
    assert emb.pooling == "gem" and emb.cache is None
    # Bad values are not checked in __init__/set_params (sklearn rule) but at fit.
    bad = ImageEmbedder(backbone="no_such_net")
    with pytest.raises(FeatxError, match="unknown backbone"):
        bad.fit(["a.jpg"])


def test_clone_shares_the_process_model_and_pickles_to_params(tree, images):
    paths, _ = tree
    emb = ImageEmbedder(**SMALL).fit(paths)
    twin = clone(emb)
    assert twin.get_params() == emb.get_params() and "n_features_out_" not in vars(twin)
    assert twin.load_backbone() is emb.load_backbone()  # one Keras model per process
    blob = pickle.dumps(emb)
    assert len(blob) < 4096  # parameters and fitted facts, no Keras model
    loaded = pickle.loads(blob)
    assert loaded.backbone_fingerprint_ == emb.backbone_fingerprint_
    np.testing.assert_array_equal(loaded.transform(images), emb.transform(images))


def test_fit_records_what_the_backbone_is(tree):
    paths, _ = tree
    emb = ImageEmbedder(**SMALL).fit(paths)
    bb = emb.load_backbone()
    assert emb.n_features_out_ == bb.dim == 1280
    assert emb.backbone_fingerprint_ == bb.fingerprint
    assert emb.backbone_name_ == "mobilenet_v2" and emb.input_size_ == SIZE
    assert not hasattr(emb, "n_features_in_")  # a list of paths has no feature columns


def test_feature_names_out():
    names = ImageEmbedder(**SMALL).get_feature_names_out()  # works unfitted (registry width)
    assert names.shape == (1280,) and names[0] == "mobilenet_v2_0000"
    assert names[-1] == "mobilenet_v2_1279"
    alias = ImageEmbedder(backbone="MobileNetV2", weights=None, input_size=SIZE)
    assert alias.get_feature_names_out()[1] == "mobilenet_v2_0001"
    assert RawPixels(4).get_feature_names_out().tolist()[:2] == ["rawpx_0000", "rawpx_0001"]


def test_set_output_pandas_keeps_the_index_and_names(tree):
    pd = pytest.importorskip("pandas")
    paths, _ = tree
    series = pd.Series(paths, index=[f"img{i}" for i in range(len(paths))], name="path")
    emb = ImageEmbedder(**SMALL).set_output(transform="pandas")
    frame = emb.fit_transform(series)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == list(series.index)
    assert list(frame.columns) == list(emb.get_feature_names_out())
    np.testing.assert_array_equal(frame.to_numpy(), ImageEmbedder(**SMALL).transform(paths))


def test_input_forms_give_the_same_vectors(tree, images):
    pd = pytest.importorskip("pandas")
    paths, _ = tree
    emb = ImageEmbedder(**SMALL)
    ref = emb.transform(paths)
    for form in (np.asarray(paths), tuple(paths), pd.Series(paths),
                 np.asarray(paths, dtype=object)[:, None]):
        np.testing.assert_array_equal(emb.transform(form), ref)
    fitted = clone(emb).fit(pd.DataFrame({"path": paths}))
    assert fitted.feature_names_in_.tolist() == ["path"] and fitted.n_features_in_ == 1
    with pytest.raises(ImageDecodeError, match="2 columns"):
        emb.transform(pd.DataFrame({"path": paths, "label": 0}))
    # uint8 batches, colour and gray
    assert emb.transform(images).shape == (5, 1280)
    gray = images[..., 0]
    as_rgb = np.repeat(gray[..., None], 3, -1)
    np.testing.assert_allclose(emb.transform(gray), emb.transform(as_rgb), atol=1e-5)
    with pytest.raises(ImageDecodeError, match="uint8"):
        emb.transform(images.astype(np.float32))


def test_on_error_skip_gives_nan_rows_raise_names_the_file(tree, tmp_path, caplog):
    paths, _ = tree
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    mixed = [paths[0], str(broken), paths[1]]
    with caplog.at_level(logging.WARNING, logger="featx"):
        X = ImageEmbedder(**SMALL, on_error="skip").transform(mixed)
    assert np.isnan(X[1]).all() and np.isfinite(X[[0, 2]]).all()
    assert "skipped 1 of 3" in caplog.text
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        ImageEmbedder(**SMALL).transform(mixed)
    R = RawPixels(8, on_error="skip").transform(mixed)
    assert np.isnan(R[1]).all() and np.isfinite(R[[0, 2]]).all()


def test_transform_refuses_a_backbone_other_than_the_fitted_one(tree):
    paths, _ = tree
    emb = ImageEmbedder(**SMALL).fit(paths)
    emb.set_params(input_size=48)
    with pytest.raises(FeatxError, match="Fit again"):
        emb.transform(paths[:2])
    assert emb.fit(paths).transform(paths[:2]).shape == (2, 1280)


@pytest.mark.parametrize("estimator, name", [
    (ImageEmbedder(**{**SMALL, "batch_size": 0}), "batch_size"),
    (ImageEmbedder(**{**SMALL, "on_error": "ignore"}), "on_error"),
    (ImageEmbedder(**{**SMALL, "policy": "stretch"}), "policy"),
    (ImageEmbedder(**{**SMALL, "progress": "yes"}), "progress"),
    (ImageEmbedder(**{**SMALL, "pooling": "mean"}), "pooling"),
    (RawPixels(on_error="ignore"), "on_error"),
    (RawPixels(size=0), "size"),
    (RawPixels(gray="no"), "gray"),
])
def test_bad_parameters_are_refused_at_fit_as_value_errors(estimator, name, images):
    """As scikit-learn does: parameters are checked by fit, before any work, and the error
    is a ValueError naming the parameter (was: accepted by fit, refused by transform)."""
    with pytest.raises(ValueError, match=name) as info:
        estimator.fit(images[:2])
    assert isinstance(info.value, FeatxError)


def test_raw_pixels_values_and_shapes():
    white = np.full((3, 20, 30, 3), 255, np.uint8)
    X = RawPixels(size=8).fit_transform(white)
    assert X.shape == (3, 192) and X.dtype == np.float32 and np.all(X == 1.0)
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    g = RawPixels(size=8, gray=True).fit(red)
    np.testing.assert_allclose(g.transform(red), 0.299, atol=1e-6)
    assert g.n_features_out_ == 64


# ----------------------------------------------------------------- sklearn's own checks

APPLICABLE_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_estimator_sparse_tag",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_transformer_n_iter",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_fit1d",
]


# sklearn cannot build the 1-D sparse input these two would need for an image
# transformer's tags; they run, and pass, in the full run further down.
_TABULAR_TAGS_ONLY = {"check_estimator_sparse_array", "check_estimator_sparse_matrix"}


@pytest.mark.parametrize("estimator", [ImageEmbedder(**SMALL), RawPixels(),
                                       featx.FineTuneClassifier(**SMALL, epochs=(1, 1))],
                         ids=["ImageEmbedder", "RawPixels", "FineTuneClassifier"])
@pytest.mark.parametrize("check_name",
                         [c for c in APPLICABLE_CHECKS if c not in _TABULAR_TAGS_ONLY])
def test_sklearn_checks_that_apply(estimator, check_name):
    check = getattr(estimator_checks, check_name)
    check(type(estimator).__name__, estimator)


def test_not_applicable_checks_are_real_names_and_documented():
    """The docstring's list names real sklearn checks; none of them is also claimed to apply."""
    doc = ImageEmbedder.__doc__
    for name in [*NOT_APPLICABLE_CHECKS, *APPLICABLE_CHECKS]:
        assert hasattr(estimator_checks, name), name
        assert f"``{name}``" in doc, name
    assert not set(NOT_APPLICABLE_CHECKS) & set(APPLICABLE_CHECKS)


def test_every_check_sklearn_would_run_is_classified():
    """Ask sklearn for its full check list (as if the input were tabular) and run it:
    the applicable ones pass, the others fail only because a float matrix is not an image."""
    class Tabular(ImageEmbedder):
        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.input_tags.two_d_array = True
            tags.input_tags.one_d_array = tags.input_tags.three_d_array = False
            tags.input_tags.string = False
            return tags

    results = estimator_checks.check_estimator(
        Tabular(**SMALL), expected_failed_checks=NOT_APPLICABLE_CHECKS, on_fail=None,
        on_skip=None)
    by_status = {}
    for r in results:
        by_status.setdefault(r["status"], []).append(r["check_name"])
    ran = {r["check_name"] for r in results}
    assert ran <= set(NOT_APPLICABLE_CHECKS) | set(APPLICABLE_CHECKS), ran - set(
        NOT_APPLICABLE_CHECKS) - set(APPLICABLE_CHECKS)
    assert not by_status.get("failed"), by_status.get("failed")
    unexpectedly_passing = set(by_status.get("passed", [])) & set(NOT_APPLICABLE_CHECKS)
    assert not unexpectedly_passing, unexpectedly_passing
