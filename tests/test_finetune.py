"""FineTuneClassifier: which layers each phase trains, BatchNorm, persistence, augmentation.

Everything runs at 32 px on a few dozen images for one or two epochs, with
random or file weights (MobileNetV2) except the one learning test, which uses
the pip-packaged EfficientNet-Lite0 (a randomly initialised MobileNetV2 pools
to features of about 1e-13: there is nothing for a head to learn from).

Keras traces a train step once per phase, and on 2 cores tracing MobileNetV2's
costs 4 s (head only) to 19 s (whole base, BN training) of CPU for a handful of
steps. Tests about *which* weights train therefore run Keras eagerly
(:func:`eager`): trainability, BN mode and the ``training`` flag are decided in
Python and behave the same in both modes. The ``learned`` fixture takes the
compiled path users take, and every prediction runs compiled.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss
from PIL import Image
from sklearn.base import clone

import featx
import featx.finetune._estimator as finetune  # private helpers are tested directly
from featx._env import import_keras
from featx.errors import FeatxError, ImageDecodeError
from featx.finetune import FineTuneClassifier, unfreeze_candidates
from featx.finetune._trainer import _set_phase

SIZE = 32
NAME = "mobilenet_v2"
TINY = dict(backbone=NAME, input_size=SIZE, head=(8,), augment=None, batch_size=8,
            validation_fraction=0, early_stopping=False)
#: MobileNetV2's last five convolutions: what unfreeze=5 must train (bottom to top).
AUGMENT_DEFAULT = ("flip", "rotate", "zoom", "contrast")
TOP5 = ["block_15_project", "block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"]


def _bn(layer):
    return isinstance(layer, import_keras().layers.BatchNormalization)


def _base(model):
    return model.get_layer("base").base


def _images(n, cls, seed):
    """Class 0: bright red discs on dark gray; class 1: dark blue fields with darker blobs."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        cy, cx, r = rng.randint(8, 24), rng.randint(8, 24), rng.randint(5, 10)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        if cls == 0:
            img = rng.randint(20, 70, (SIZE, SIZE, 3))
            img[disc] = [rng.randint(200, 256), rng.randint(0, 60), rng.randint(0, 60)]
        else:
            img = np.stack([rng.randint(0, 40, (SIZE, SIZE)), rng.randint(0, 40, (SIZE, SIZE)),
                            rng.randint(70, 140, (SIZE, SIZE))], axis=-1)
            img[disc] //= 2
        out[i] = img
    return out


def _two_classes(n_per_class, seed):
    x = np.concatenate([_images(n_per_class, 0, seed), _images(n_per_class, 1, seed + 1)])
    y = np.array(["red"] * n_per_class + ["blue"] * n_per_class)
    return x, y


def _write_pngs(folder, images):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(folder, f"{i:03d}.png")
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _weights_by_layer(model):
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers
            if layer.weights}


@contextlib.contextmanager
def _eager_keras():
    keras = import_keras()
    original = keras.Model.compile

    def compile_eagerly(self, *args, **kwargs):
        kwargs["run_eagerly"] = True
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "compile", compile_eagerly)
        yield


@pytest.fixture
def eager():
    """Keras runs train steps eagerly inside the test (see the module docstring)."""
    with _eager_keras():
        yield


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A MobileNetV2 weights file standing in for pretrained weights (weights=path).

    featx applies the pretrained-base rules (BN frozen, in inference mode) to
    any weights that are not None; a file keeps the tests offline and fast.
    """
    bb = featx.get_backbone(NAME, weights=None, input_size=SIZE, seed=3)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2_32.weights.h5")
    bb.model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Lite0 (packaged ImageNet weights) fitted on 48 PNG files of two colour classes,
    through the compiled path, with augmentation, a validation split and early stopping;
    and 24 held-out images."""
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged EfficientNet-Lite0 weights are not installed")
    root = tmp_path_factory.mktemp("colours")
    x_train, y_train = _two_classes(24, seed=0)
    x_test, y_test = _two_classes(12, seed=100)
    paths = _write_pngs(str(root / "train"), x_train)
    clf = FineTuneClassifier("efficientnet_lite0", weights="packaged", input_size=SIZE,
                             head=(16,), epochs=(6, 0), lr=(3e-3, 1e-5),
                             validation_fraction=0.25, batch_size=8, random_state=0)
    clf.fit(paths, y_train)
    return clf, x_test, y_test


@pytest.fixture(scope="module")
def fitted():
    """A tiny MobileNetV2 classifier with the default augmentation, fitted eagerly, and
    12 images to predict."""
    x, y = _two_classes(8, seed=11)
    clf = FineTuneClassifier(**{**TINY, "weights": None, "augment": AUGMENT_DEFAULT,
                                "epochs": (1, 0), "validation_fraction": 0.25,
                                "early_stopping": True, "class_weight": "balanced"})
    with _eager_keras():
        clf.fit(x, y)
    return clf, _two_classes(6, seed=12)[0]


# ----------------------------------------------------------------- phases


@pytest.fixture(scope="module")
def built():
    """One classifier graph (head of 8) around a MobileNetV2; phases only flip flags."""
    bb = featx.get_backbone(NAME, weights=None, input_size=SIZE)
    clf = FineTuneClassifier(**{**TINY, "weights": None})
    return clf._build(bb, 3, clf._checked_params(), from_scratch=False)


def _head_weights(model):
    return [w for name in ("head_dense_1", "classifier") for w in model.get_layer(name).weights]


@pytest.mark.parametrize("unfreeze", [0, 5, "all"])
@pytest.mark.parametrize("from_scratch", [False, True], ids=["pretrained", "scratch"])
def test_phases_make_exactly_the_asked_layers_trainable(built, unfreeze, from_scratch):
    head = {id(w) for w in _head_weights(built)}
    assert len(head) == 4  # two Dense layers: kernel + bias each

    assert _set_phase(built, 1, unfreeze, from_scratch) == []
    assert {id(w) for w in built.trainable_weights} == head

    names = _set_phase(built, 2, unfreeze, from_scratch)
    base_layers = _base(built).layers
    convs = [layer for layer in base_layers if layer.weights and not _bn(layer)]
    if unfreeze == 0:
        expected = []
    elif unfreeze == 5:
        expected = convs[-5:]
        assert [layer.name for layer in expected] == TOP5
    elif from_scratch:  # weights=None + "all": BN trains too
        expected = [layer for layer in base_layers if layer.weights]
    else:
        expected = convs
    assert names == [layer.name for layer in expected]
    expected_weights = {id(w) for layer in expected for w in layer.trainable_weights}
    assert {id(w) for w in built.trainable_weights} == head | expected_weights
    bn_gamma_beta_trainable = any(
        layer.trainable_weights for layer in base_layers if _bn(layer))
    assert bn_gamma_beta_trainable == (unfreeze == "all" and from_scratch)


def test_unfreeze_counts_weighted_non_bn_layers_and_clips():
    bb = featx.get_backbone(NAME, weights=None, input_size=SIZE)
    candidates = unfreeze_candidates(bb.model)
    assert [layer.name for layer in candidates[-5:]] == TOP5
    assert len(candidates) == 52  # MobileNetV2: 52 convolutions, 52 BN, 155 layers in all
    clf = FineTuneClassifier(**{**TINY, "weights": None})
    model = clf._build(bb, 2, clf._checked_params(), from_scratch=False)
    assert len(_set_phase(model, 2, 10_000, False)) == 52


def test_fit_trains_only_the_head_then_the_top_layers(weights_file, eager):
    x, y = _two_classes(8, seed=5)
    initial = _weights_by_layer(featx.get_backbone(NAME, weights=weights_file,
                                                   input_size=SIZE).model)
    clf = FineTuneClassifier(**{**TINY, "weights": weights_file, "unfreeze": 5,
                                "epochs": (1, 1), "lr": (1e-2, 1e-2)})
    clf.fit(x, y, validation_data=(x[::4], y[::4]))
    assert not np.isnan(clf.history_["val_loss"]).any()

    assert [p["trainable_weights"] for p in clf.phases_] == [4, 4 + 5]
    assert clf.unfrozen_layers_ == TOP5
    assert clf.history_["phase"] == [1, 2]
    after = _weights_by_layer(_base(clf.model_))
    for name, arrays in initial.items():
        changed = any(not np.array_equal(a, b) for a, b in zip(arrays, after[name]))
        # Frozen layers — BN moving statistics included — are bit-for-bit untouched.
        assert changed == (name in TOP5), name


@pytest.mark.parametrize("weights", ["file", None], ids=["pretrained", "scratch"])
def test_batchnorm_stays_in_inference_mode_unless_training_from_scratch(weights, weights_file,
                                                                         eager):
    weights = weights_file if weights == "file" else weights
    x, y = _two_classes(8, seed=6)
    initial = featx.get_backbone(NAME, weights=weights, input_size=SIZE, seed=0).model
    bn_before = {layer.name: [w.numpy() for w in layer.weights]
                 for layer in initial.layers if _bn(layer)}
    clf = FineTuneClassifier(**{**TINY, "weights": weights, "unfreeze": "all",
                                "epochs": (0, 1), "lr": (1e-3, 1e-2), "random_state": 0})
    clf.fit(x, y)
    base = _base(clf.model_)
    bns = [layer for layer in base.layers if _bn(layer)]
    assert len(bns) == len(bn_before) == 52
    convs_changed = [not np.array_equal(layer.weights[0].numpy(),
                                        initial.get_layer(layer.name).weights[0].numpy())
                     for layer in unfreeze_candidates(base)]
    assert all(convs_changed)  # phase 2 did train the whole base
    moved = [any(not np.array_equal(w.numpy(), b) for w, b in zip(layer.weights,
                                                                    bn_before[layer.name]))
             for layer in bns]
    if weights is None:
        # From scratch: BN normalises with batch statistics and learns its averages.
        assert clf.model_.get_layer("base").inference is False
        assert all(layer.trainable for layer in bns) and all(moved)
    else:
        # Pretrained: gamma, beta, moving mean and variance all exactly as loaded.
        assert clf.model_.get_layer("base").inference is True
        assert not any(layer.trainable for layer in bns) and not any(moved)


def test_base_runs_in_inference_mode_even_inside_a_training_call():
    """Keras 3 overrides a nested model's recorded training=False (keras#20285); the
    wrapper must not let it: the base's output is the same in training and inference."""
    keras = import_keras()
    inp = keras.Input((4,))
    inner = keras.Model(inp, keras.layers.Dropout(0.9, seed=1)(inp))
    outer_in = keras.Input((4,))
    wrapped = finetune._classes()["InferenceBase"](inner, inference=True)(outer_in)
    model = keras.Model(outer_in, wrapped)
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(np.asarray(model(x, training=True)), x)
    free = keras.Model(outer_in, finetune._classes()["InferenceBase"](inner, inference=False)(
        outer_in))
    assert not np.array_equal(np.asarray(free(x, training=True)), x)


# ----------------------------------------------------------------- learning


@pytest.mark.realweights
def test_learns_two_colour_classes_well_above_chance(learned):
    clf, x_test, y_test = learned
    assert clf.classes_.tolist() == ["blue", "red"]
    assert clf.score(x_test, y_test) > 0.8
    proba = clf.predict_proba(x_test)
    assert proba.shape == (24, 2) and proba.dtype == np.float32
    assert (proba.argmax(axis=1) == (y_test == "red")).mean() > 0.8  # column 1 is "red"
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    history = clf.history_
    n = len(history["phase"])
    assert 1 <= n <= 6 and set(history["phase"]) == {1}
    assert all(len(history[key]) == n
               for key in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert not np.isnan(history["val_loss"]).any()


def test_preprocessing_inside_the_model_equals_the_backbones():
    bb = featx.get_backbone("resnet50", weights=None, input_size=SIZE)  # caffe: BGR + means
    layer = finetune._classes()["ImagePreprocessing"](bb.preprocessing.mean,
                                                      bb.preprocessing.std, bb.preprocessing.bgr)
    x = np.random.RandomState(0).randint(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(layer(x.astype(np.float32))), bb.preprocess(x),
                               atol=1e-5)


def test_augmentation_acts_only_in_training(fitted):
    clf, x_test = fitted
    x = x_test[:8].astype(np.float32)
    model = clf.model_
    first = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(first, np.asarray(model(x, training=False)))
    np.testing.assert_allclose(first, clf.predict_proba(x_test[:8]), atol=1e-5)
    augment = model.get_layer("augment")
    assert [layer.name for layer in augment.layers] == ["flip", "rotate", "zoom", "contrast"]
    np.testing.assert_array_equal(np.asarray(augment(x, training=False)), x)
    assert not np.allclose(np.asarray(augment(x, training=True)), x)


@pytest.mark.parametrize("name", finetune.AUGMENTATIONS)
def test_each_augmentation_changes_pixels_only_in_training(name):
    (layer,) = finetune._augmentation_layers((name,), seed=3)
    assert layer.name == name
    x = _two_classes(4, seed=13)[0].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    # A random draw may be the identity for one image (a flip's coin), not for all eight.
    assert not np.allclose(np.asarray(layer(x, training=True)), x)


# ----------------------------------------------------------------- phase 1 on vectors


def test_phase1_on_vectors_trains_the_head_on_the_engines_vectors(weights_file, tmp_path):
    """The head is trained on the Embedder's vectors, through the store, and the full
    model then computes exactly head(vector) for every image; the base is untouched."""
    x, y = _two_classes(8, seed=21)
    store_path = str(tmp_path / "vectors.h5")
    params = {**TINY, "weights": weights_file, "epochs": (3, 0), "lr": (1e-2, 1e-5),
              "phase1": "vectors", "cache": store_path, "validation_fraction": 0.25,
              "early_stopping": True}
    clf = FineTuneClassifier(**params).fit(x, y)
    assert clf.phases_[0]["trained_on"] == "vectors"
    assert 1 <= clf.phases_[0]["epochs_run"] <= 3
    assert clf.history_["phase"] == [1] * clf.phases_[0]["epochs_run"]
    assert not np.isnan(clf.history_["val_loss"]).any()

    bb = featx.get_backbone(NAME, weights=weights_file, input_size=SIZE)
    store = featx.EmbeddingStore(store_path)
    assert store.count(bb.fingerprint) == 16 and store.forwarded(bb.fingerprint) == 16
    before = _weights_by_layer(bb.model)
    after = _weights_by_layer(_base(clf.model_))
    assert all(np.array_equal(a, b) for name in before
               for a, b in zip(before[name], after[name]))

    vectors = featx.Embedder(bb).embed(x)
    keras = import_keras()
    head_in = keras.Input((vectors.shape[1],))
    h = head_in
    for name in ("head_dropout", "head_dense_1", "head_dropout_1", "classifier"):
        h = clf.model_.get_layer(name)(h)
    expected = np.asarray(keras.Model(head_in, h)(vectors, training=False))
    np.testing.assert_allclose(clf.predict_proba(x), expected, atol=1e-5)

    # A second fit reads every vector from the store: nothing is forwarded again, and the
    # same random_state (split, shuffling, initialisation, dropout) gives the same model.
    again = FineTuneClassifier(**params).fit(x, y)
    assert store.forwarded(bb.fingerprint) == 16
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    assert again.history_ == clf.history_


def test_phase1_on_vectors_then_phase2_on_augmented_images(weights_file, eager):
    x, y = _two_classes(8, seed=22)
    clf = FineTuneClassifier(**{**TINY, "weights": weights_file, "unfreeze": 5,
                                "epochs": (2, 1), "lr": (1e-2, 1e-2), "phase1": "vectors",
                                "augment": ("flip", "shear")}).fit(x, y)
    assert [p["trained_on"] for p in clf.phases_] == ["vectors", "images"]
    assert clf.history_["phase"] == [1, 1, 2]
    assert clf.unfrozen_layers_ == TOP5


def test_phase2_that_validates_worse_than_phase1_is_undone(weights_file, eager):
    x, y = _two_classes(8, seed=23)
    initial = _weights_by_layer(featx.get_backbone(NAME, weights=weights_file,
                                                   input_size=SIZE).model)
    params = {**TINY, "weights": weights_file, "unfreeze": 5, "epochs": (4, 1),
              "phase1": "vectors", "early_stopping": True}
    # A learning rate that wrecks the top of the base: phase 2 cannot validate better.
    clf = FineTuneClassifier(**{**params, "lr": (1e-2, 1e3)}).fit(
        x, y, validation_data=(x[::2], y[::2]))
    assert [p["kept"] for p in clf.phases_] == [True, False]
    assert not clf.phases_[1]["best_val_loss"] < clf.phases_[0]["best_val_loss"]
    after = _weights_by_layer(_base(clf.model_))
    assert all(np.array_equal(a, b) for name in TOP5
               for a, b in zip(initial[name], after[name]))
    assert len(clf.history_["phase"]) == clf.phases_[0]["epochs_run"] + 1  # the curve stays


@pytest.mark.realweights
def test_phase2_that_validates_better_is_kept(eager):
    """The other branch, on real (packaged) features: the random MobileNetV2 above gives
    vectors of ~1e-13, on which no head learns, so nothing could improve there. The
    expectation is computed apart from the code under test: each phase's best val_loss
    from the per-epoch history, and the loss of the weights the fitted model holds."""
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged EfficientNet-Lite0 weights are not installed")
    x, y = _two_classes(8, seed=23)
    x_val, y_val = x[::2], y[::2]
    # Phase 1 barely moves (lr 1e-6); phase 2 trains the head and the top for 5 epochs.
    clf = FineTuneClassifier("efficientnet_lite0", weights="packaged", input_size=SIZE,
                             head=(8,), augment=None, batch_size=8, unfreeze=5,
                             epochs=(1, 5), lr=(1e-6, 3e-3), phase1="vectors",
                             early_stopping=True, random_state=0).fit(
        x, y, validation_data=(x_val, y_val))
    phase = np.asarray(clf.history_["phase"])
    val_loss = np.asarray(clf.history_["val_loss"], dtype=float)
    best1, best2 = val_loss[phase == 1].min(), val_loss[phase == 2].min()
    assert best2 < best1 - 0.01, (best1, best2)  # phase 2 clearly validates better
    assert [p["kept"] for p in clf.phases_] == [True, True]
    held = log_loss(y_val, clf.predict_proba(x_val), labels=clf.classes_)
    assert held == pytest.approx(best2, abs=1e-3)  # phase 2's best weights, not phase 1's


# ----------------------------------------------------------------- persistence


def test_clone_pickle_joblib_and_save_round_trip(fitted, tmp_path):
    clf, x_test = fitted
    expected = clf.predict_proba(x_test)

    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params() and not hasattr(fresh, "model_")

    state = clf.__getstate__()
    assert "model_" not in state and state["_model_keras_bytes"][:2] == b"PK"  # a .keras zip
    for restored in (pickle.loads(pickle.dumps(clf)),
                     joblib.load(joblib.dump(clf, tmp_path / "clf.joblib")[0])):
        assert restored.classes_.tolist() == clf.classes_.tolist()
        assert restored.history_ == clf.history_
        np.testing.assert_array_equal(restored.predict_proba(x_test), expected)

    stem = clf.save(tmp_path / "saved" / "model")
    assert os.path.isfile(stem + ".keras") and os.path.isfile(stem + ".joblib")
    loaded = FineTuneClassifier.load(stem + ".keras")
    np.testing.assert_array_equal(loaded.predict_proba(x_test), expected)
    with pytest.raises(NotFittedError, match="FineTuneClassifier.load"):
        joblib.load(stem + ".joblib").predict(x_test)


@pytest.mark.slow  # a second interpreter imports TensorFlow: ~8 s of CPU on 2 cores
def test_fresh_interpreter_unpickles_and_predicts(fitted, tmp_path):
    """The custom layers must register themselves when a pickle is loaded elsewhere."""
    clf, x_test = fitted
    expected = clf.predict_proba(x_test)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.save(tmp_path / "x.npy", x_test)
    code = textwrap.dedent(f"""
        import joblib, numpy as np
        clf = joblib.load({str(tmp_path / "clf.joblib")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "p.npy")!r}, clf.predict_proba(x))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-6)


# ----------------------------------------------------------------- bad input


def test_unreadable_file_raises_featx_error_naming_it(fitted, tmp_path):
    clf, x_test = fitted
    good = _write_pngs(str(tmp_path / "ok"), x_test[:3])
    bad = str(tmp_path / "broken.jpg")
    with open(bad, "wb") as handle:
        handle.write(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        clf.predict_proba([*good, bad])
    unfitted = FineTuneClassifier(**{**TINY, "weights": None, "epochs": (1, 0),
                                     "batch_size": 16})
    with pytest.raises(FeatxError, match="broken.jpg"):  # decoded when Keras peeks batch 0
        unfitted.fit([*good, bad], ["a", "b", "a", "b"])


def test_decode_error_inside_keras_training_loop_comes_back_as_featx_error(monkeypatch,
                                                                           tmp_path, eager):
    """A file that breaks after Keras' first look: the error surfaces from tf.data's
    thread, where TF would turn it into its own error type; fit gives back ours."""
    x, y = _two_classes(6, seed=9)
    paths = _write_pngs(str(tmp_path / "imgs"), x)
    target, calls = paths[0], []
    import featx._decode_worker as decoder  # what the decode pool's threads call
    real = decoder.decode_image

    def flaky(source, size, **kwargs):
        if getattr(source, "path", None) == target:
            calls.append(1)
            if len(calls) > 1:
                raise ImageDecodeError(f"{target}: truncated (simulated)")
        return real(source, size, **kwargs)

    monkeypatch.setattr(decoder, "decode_image", flaky)
    clf = FineTuneClassifier(**{**TINY, "weights": None, "epochs": (1, 0), "batch_size": 12})
    with pytest.raises(ImageDecodeError, match="simulated"):
        clf.fit(paths, y)
    assert len(calls) == 2  # once in Keras' peek (fine), once in the training thread


@pytest.mark.parametrize("kwargs, message", [
    (dict(unfreeze=-1), "unfreeze"),
    (dict(unfreeze="top"), "unfreeze"),
    (dict(epochs=(1,)), "epochs"),
    (dict(lr=(1e-3, 0)), "lr"),
    (dict(augment=("flip", "blur")), "blur"),
    (dict(class_weight="auto"), "class_weight"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(policy="stretch"), "policy"),
    (dict(head=(0,)), "head"),
    (dict(phase1="features"), "phase1"),
])
def test_bad_parameters_are_refused_before_any_work(kwargs, message):
    x, y = _two_classes(2, seed=0)
    with pytest.raises(FeatxError, match=message):
        FineTuneClassifier(**{**TINY, "weights": None, **kwargs}).fit(x, y)


def test_bad_labels_are_refused():
    x, y = _two_classes(2, seed=0)
    with pytest.raises(FeatxError, match="one label per image"):
        FineTuneClassifier(**{**TINY, "weights": None}).fit(x, y[:3])
    with pytest.raises(FeatxError, match="at least 2 classes"):
        FineTuneClassifier(**{**TINY, "weights": None}).fit(x, ["a"] * 4)
    with pytest.raises(FeatxError, match="class_weight"):
        FineTuneClassifier(**{**TINY, "weights": None, "class_weight": {"green": 2.0}}).fit(x, y)
    with pytest.raises(FeatxError, match="stratified"):
        FineTuneClassifier(**{**TINY, "weights": None, "validation_fraction": 0.2}).fit(
            x, ["a", "a", "a", "b"])


def test_predict_before_fit_and_continuous_labels_are_clear_errors():
    """Issue 14: predict before fit raised AttributeError (classes_); a continuous y got
    as far as a stratification error about "12 classes"."""
    clf = FineTuneClassifier(backbone="mobilenet_v2", weights=None, input_size=32)
    images = np.random.RandomState(0).randint(0, 255, (12, 32, 32, 3)).astype(np.uint8)
    with pytest.raises(NotFittedError):
        clf.predict(images)
    with pytest.raises(featx.errors.InvalidDataError, match="continuous"):
        clf.fit(images, np.linspace(0.0, 1.0, 12))
