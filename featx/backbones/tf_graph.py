"""Read TF1 frozen graphs (``GraphDef`` ``.pb`` files) without TensorFlow.

Some pretrained weights reach featx only inside a TensorFlow 1 *frozen graph*:
a serialized ``tensorflow.GraphDef`` protocol buffer whose variables were
turned into ``Const`` nodes.  featx converts such weights into an unmodified
``keras.applications`` model, and that conversion must also run under the JAX
or torch backend, where TensorFlow (and its protobuf classes) may be absent.
So this module decodes the protobuf *wire format* itself -- it is small:

* every field is a varint *tag* ``field_number << 3 | wire_type`` followed by
  a varint (wire type 0), 8 bytes (1), a varint length plus that many bytes
  (2: strings, sub-messages, packed repeated scalars) or 4 bytes (5);
* a map is a repeated sub-message of ``key = 1`` and ``value = 2``.

Only the path to the constants is decoded, every other field is skipped::

    GraphDef     node = 1 (repeated NodeDef)
    NodeDef      name = 1, op = 2, attr = 5 (map<string, AttrValue>)
    AttrValue    tensor = 8 (TensorProto)
    TensorProto  dtype = 1, tensor_shape = 2, tensor_content = 4,
                 float_val = 5, double_val = 6, int_val = 7, string_val = 8,
                 scomplex_val = 9, int64_val = 10, bool_val = 11,
                 dcomplex_val = 12, half_val = 13, uint32_val = 16,
                 uint64_val = 17
    TensorShapeProto  dim = 2 (Dim: size = 1), unknown_rank = 3

The values follow ``tf.make_ndarray`` exactly (the tests compare the two on
every constant of a real graph): ``tensor_content`` is the raw little-endian
buffer; otherwise the repeated ``*_val`` field holds the values, and when it
holds fewer than the shape needs the last one is repeated (one value is the
common "fill" case), none at all meaning zeros.

:func:`convert_mobilenet_v1_graph` then maps the constants of a TF-slim
MobileNet v1 1.0/224 graph onto the layer names of
``keras.applications.MobileNet``.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from featx.errors import FeatxError, WeightsMismatchError

__all__ = ["read_graphdef_constants", "convert_mobilenet_v1_graph"]


class _WireError(Exception):
    """Malformed protobuf bytes; turned into a FeatxError naming the file by the caller."""


# Wire types of the protobuf encoding.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

# TensorProto.dtype (tensorflow/core/framework/types.proto) -> (numpy dtype of
# the result, field number of its repeated ``*_val``, how that field is encoded).
# Quantized types come back as their plain integer type (TF's numpy view of
# them is a one-field structured dtype); bfloat16 is widened to float32 since
# numpy has no bfloat16.
_DTYPES: Dict[int, Tuple[np.dtype, int, str]] = {
    1: (np.dtype("float32"), 5, "<f4"),        # DT_FLOAT      float_val
    2: (np.dtype("float64"), 6, "<f8"),        # DT_DOUBLE     double_val
    3: (np.dtype("int32"), 7, "varint"),       # DT_INT32      int_val
    4: (np.dtype("uint8"), 7, "varint"),       # DT_UINT8
    5: (np.dtype("int16"), 7, "varint"),       # DT_INT16
    6: (np.dtype("int8"), 7, "varint"),        # DT_INT8
    7: (np.dtype("object"), 8, "bytes"),       # DT_STRING     string_val
    8: (np.dtype("complex64"), 9, "<f4"),      # DT_COMPLEX64  scomplex_val (re, im pairs)
    9: (np.dtype("int64"), 10, "varint"),      # DT_INT64      int64_val
    10: (np.dtype("bool"), 11, "varint"),      # DT_BOOL       bool_val
    11: (np.dtype("int8"), 7, "varint"),       # DT_QINT8
    12: (np.dtype("uint8"), 7, "varint"),      # DT_QUINT8
    13: (np.dtype("int32"), 7, "varint"),      # DT_QINT32
    14: (np.dtype("float32"), 13, "varint"),   # DT_BFLOAT16   half_val (bit patterns)
    15: (np.dtype("int16"), 7, "varint"),      # DT_QINT16
    16: (np.dtype("uint16"), 7, "varint"),     # DT_QUINT16
    17: (np.dtype("uint16"), 7, "varint"),     # DT_UINT16
    18: (np.dtype("complex128"), 12, "<f8"),   # DT_COMPLEX128 dcomplex_val
    19: (np.dtype("float16"), 13, "varint"),   # DT_HALF       half_val (bit patterns)
    22: (np.dtype("uint32"), 16, "varint"),    # DT_UINT32     uint32_val
    23: (np.dtype("uint64"), 17, "varint"),    # DT_UINT64     uint64_val
}
_DT_STRING, _DT_BFLOAT16, _DT_HALF = 7, 14, 19
# Raw layout of tensor_content where it differs from the result dtype.
_CONTENT_DTYPES = {_DT_BFLOAT16: np.dtype("<u2")}


# --------------------------------------------------------------------------- wire format


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    """Decode one varint at ``pos``; return (value as unsigned 64-bit, next position)."""
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise _WireError(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _WireError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview):
    """Yield ``(field_number, wire_type, value)`` for each field of one message.

    ``value`` is an int for varints, a memoryview slice for the other wire
    types (no copy: tensor contents are sliced straight out of the file).
    """
    pos, end = 0, len(buf)
    while pos < end:
        tag_at = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _WireError(f"field number 0 at byte {tag_at}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if length > end - pos:
                raise _WireError(
                    f"field {number} at byte {tag_at} claims {length} bytes, only {end - pos} remain")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if size > end - pos:
                raise _WireError(f"truncated fixed-width field {number} at byte {tag_at}")
            value, pos = buf[pos:pos + size], pos + size
        else:
            # 3/4 are proto2 groups (never used by TensorFlow), 6/7 do not exist:
            # either way this is not a GraphDef.
            raise _WireError(f"invalid wire type {wire} (field {number}) at byte {tag_at}")
        yield number, wire, value


def _expect(wire: int, wanted: int, what: str) -> None:
    if wire != wanted:
        raise _WireError(f"{what} has wire type {wire}, expected {wanted}")


def _packed_varints(data: memoryview) -> np.ndarray:
    """Decode packed varints into uint64, vectorised (a ``*_val`` may hold millions)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, np.uint64)
    if raw[-1] >= 0x80:
        raise _WireError("truncated packed varint")
    ends = np.flatnonzero(raw < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= 10:
        raise _WireError("packed varint longer than 10 bytes")
    # Byte k of a varint carries bits 7k..7k+6; shifts past 63 cannot occur
    # (at most 10 bytes) and uint64 wrap-around is exactly protobuf's truncation.
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    position = np.arange(raw.size) - starts[group]
    parts = (raw & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(parts, starts)


def _repeated(values: list, wire: int, data, encoding: str) -> None:
    """Append one occurrence of a repeated scalar field, packed or not, to ``values``."""
    if encoding == "bytes":
        _expect(wire, _LEN, "string_val")
        values.append(bytes(data))
    elif encoding == "varint":
        if wire == _LEN:
            values.append(_packed_varints(data))
        else:
            _expect(wire, _VARINT, "integer *_val")
            values.append(np.array([data], np.uint64))
    else:  # fixed-width little-endian floats
        if wire == _LEN:
            if len(data) % np.dtype(encoding).itemsize:
                raise _WireError("packed float field of odd length")
        else:
            _expect(wire, _FIXED32 if encoding == "<f4" else _FIXED64, "float *_val")
        values.append(np.frombuffer(data, dtype=encoding))


# --------------------------------------------------------------------------- TensorProto


def _shape(buf: memoryview) -> Tuple[int, ...]:
    dims: List[int] = []
    for number, wire, value in _fields(buf):
        if number == 2:  # dim
            _expect(wire, _LEN, "TensorShapeProto.dim")
            size = 0
            for n, w, v in _fields(value):
                if n == 1:
                    _expect(w, _VARINT, "Dim.size")
                    size = v - (1 << 64) if v >= 1 << 63 else v
            if size < 0:
                raise _WireError(f"constant with unknown dimension {size}")
            dims.append(size)
        elif number == 3 and value:  # unknown_rank
            raise _WireError("constant with unknown rank")
    return tuple(dims)


def _tensor(buf: memoryview) -> np.ndarray:
    """A TensorProto as ``tf.make_ndarray`` would return it."""
    dtype_enum, shape, content = 0, (), None
    chunks: list = []
    fields = list(_fields(buf))
    for number, wire, value in fields:
        if number == 1:
            _expect(wire, _VARINT, "TensorProto.dtype")
            dtype_enum = value
        elif number == 2:
            _expect(wire, _LEN, "TensorProto.tensor_shape")
            shape = _shape(value)
        elif number == 4:
            _expect(wire, _LEN, "TensorProto.tensor_content")
            content = value
    if dtype_enum not in _DTYPES:
        raise _WireError(f"unsupported tensor dtype enum {dtype_enum} (see TensorFlow's types.proto)")
    dtype, val_field, encoding = _DTYPES[dtype_enum]
    count = int(np.prod(shape, dtype=np.int64))

    if content is not None and len(content):
        if dtype_enum == _DT_STRING:
            raise _WireError("string tensor with tensor_content")
        raw_dtype = _CONTENT_DTYPES.get(dtype_enum, dtype.newbyteorder("<"))
        if len(content) != count * raw_dtype.itemsize:
            raise _WireError(
                f"tensor_content has {len(content)} bytes, shape {shape} of {dtype} needs "
                f"{count * raw_dtype.itemsize}")
        flat = np.frombuffer(content, dtype=raw_dtype)
    else:
        for number, wire, value in fields:
            if number == val_field:
                _repeated(chunks, wire, value, encoding)
        if not chunks:  # TF: no values at all means zeros
            return np.zeros(shape, dtype) if dtype_enum != _DT_STRING else np.full(shape, b"", object)
        if encoding == "bytes":
            flat = np.empty(len(chunks), dtype=object)
            flat[:] = chunks
        else:
            flat = np.concatenate(chunks)
        if encoding == "varint" and dtype_enum in (_DT_HALF, _DT_BFLOAT16):
            flat = flat.astype(np.uint16)  # bit patterns of 16-bit floats
        if dtype_enum in (8, 18):  # complex: (re, im) pairs
            if flat.size % 2:
                raise _WireError("complex *_val with an odd number of parts")
            flat = flat.reshape(-1, 2)
            flat = flat[:, 0] + 1j * flat[:, 1]
        if flat.size > count:
            raise _WireError(f"{flat.size} values for shape {shape}")
        if flat.size == 0:
            return np.zeros(shape, dtype)
        if flat.size < count:
            # TF's rule: the last value fills the rest (one value = fill).
            flat = np.concatenate([flat, np.repeat(flat[-1:], count - flat.size)])

    if dtype_enum == _DT_BFLOAT16:
        # bfloat16 is the top half of a float32.
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    elif dtype_enum == _DT_HALF:
        flat = flat.view(np.float16) if flat.dtype.itemsize == 2 else flat
    elif flat.dtype != dtype and dtype.kind in "iub":
        # Varints arrive as uint64; a negative int32 is its sign-extended
        # two's complement, so a wrapping cast recovers it.
        flat = flat.astype(dtype)
    # Always copy: the result must not pin the whole file's bytes in memory.
    return np.array(flat, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- GraphDef


def _const_value(node: memoryview) -> Optional[Tuple[str, Optional[memoryview]]]:
    """``(name, raw TensorProto of attr 'value')`` for a Const NodeDef, None for other ops."""
    name, op, tensor = "", "", None
    for number, wire, value in _fields(node):
        if number == 1:
            _expect(wire, _LEN, "NodeDef.name")
            name = bytes(value).decode("utf-8", "replace")
        elif number == 2:
            _expect(wire, _LEN, "NodeDef.op")
            op = bytes(value).decode("utf-8", "replace")
        elif number == 5:  # attr map entry; decode only 'value' (op may come later, so keep it)
            _expect(wire, _LEN, "NodeDef.attr")
            key, attr = b"", None
            for n, w, v in _fields(value):
                if n == 1:
                    key = bytes(v)
                elif n == 2:
                    attr = v
            if key == b"value" and attr is not None:
                for n, w, v in _fields(attr):
                    if n == 8:
                        _expect(w, _LEN, "AttrValue.tensor")
                        tensor = v
    if op != "Const":
        return None
    return name, tensor


def read_graphdef_constants(path) -> Dict[str, np.ndarray]:
    """Read the values of all ``Const`` nodes of a binary TF1 frozen GraphDef.

    Pure Python and numpy: TensorFlow is not imported, so weight conversions
    built on this run under any Keras backend.  Values equal
    ``tf.make_ndarray`` of each node's ``value`` attribute, except that
    quantized dtypes come back as plain integers and bfloat16 as float32.
    Functions in the graph's library are not searched.

    Parameters
    ----------
    path : str or os.PathLike
        A binary ``GraphDef`` file (``.pb``), as written by
        ``tf.io.write_graph(..., as_text=False)`` or TF1's freeze_graph.

    Returns
    -------
    dict[str, numpy.ndarray]
        Node name to value, in graph order.

    Raises
    ------
    FeatxError
        The file is empty, truncated, not a binary GraphDef (e.g. a text
        ``.pbtxt`` or a SavedModel), or holds a constant of an unsupported
        dtype. The message names the file and, where known, the node.

    Examples
    --------
    >>> import importlib.util, os
    >>> pb = os.path.join(importlib.util.find_spec("nudity").submodule_search_locations[0],
    ...                   "files", "retrained_graph.pb")                 # doctest: +SKIP
    >>> consts = read_graphdef_constants(pb)                            # doctest: +SKIP
    >>> consts["MobilenetV1/Conv2d_0/weights"].shape                    # doctest: +SKIP
    (3, 3, 3, 32)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FeatxError(f"{path}: cannot read the GraphDef file: {exc}") from exc
    if not data:
        raise FeatxError(f"{path}: empty file, expected a binary TensorFlow GraphDef (.pb)")

    constants: Dict[str, np.ndarray] = {}
    node_name = None
    try:
        for number, wire, value in _fields(memoryview(data)):
            if number != 1:  # versions, library, ...: not needed
                continue
            _expect(wire, _LEN, "GraphDef.node")
            node_name = None
            found = _const_value(value)
            if found is None:
                continue
            node_name, tensor = found
            if tensor is None:
                raise _WireError("Const node without a 'value' tensor")
            if node_name in constants:
                raise _WireError("duplicate node name")
            constants[node_name] = _tensor(tensor)
    except _WireError as exc:
        where = f" (node '{node_name}')" if node_name else ""
        raise FeatxError(
            f"{path}: not a valid binary TensorFlow GraphDef{where}: {exc}. "
            "The file may be truncated, a text .pbtxt, or another format.") from None
    return constants


# --------------------------------------------------------------------------- MobileNet v1

# Output channels of keras.applications.MobileNet(alpha=1.0): conv1, then the
# pointwise conv of each depthwise-separable block 1..13.
_MOBILENET_V1_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
# keras.applications.MobileNet builds every BatchNormalization with Keras'
# default epsilon; TF-slim's MobileNet uses the same value by default.
_KERAS_BN_EPSILON = 1e-3


def _find_scope(constants: Dict[str, np.ndarray]) -> str:
    """The name prefix in front of ``MobilenetV1/`` (empty in the slim graphs; 'module/' in hub exports)."""
    anchor = "MobilenetV1/Conv2d_0/weights"
    prefixes = sorted(name[: -len(anchor)] for name in constants if name.endswith(anchor))
    if not prefixes:
        return ""  # the lookup of the first node then reports what is missing
    return prefixes[0]


def convert_mobilenet_v1_graph(path) -> Dict[str, List[np.ndarray]]:
    """Convert a TF-slim MobileNet v1 1.0/224 frozen graph to Keras layer weights.

    The result fits an unmodified ``keras.applications.MobileNet(alpha=1.0,
    include_top=True, weights=None)`` (with ``classifier_activation=None``
    for logits): TF-slim kernels are already HWIO (and depthwise ``H W C 1``),
    so nothing is transposed; the 1001-way TF-slim classifier loses its class
    0 (background) to become Keras' 1000 ImageNet classes.  BatchNorm
    statistics are taken unfolded; a missing ``gamma`` (``scale=False``)
    becomes ones, and where the graph stores its BatchNorm epsilon as a
    constant that differs from Keras' 1e-3, the difference is moved into
    ``moving_variance`` so that inference is unchanged.

    Parameters
    ----------
    path : str or os.PathLike
        Binary frozen GraphDef containing ``MobilenetV1/Conv2d_0/weights``,
        ``MobilenetV1/Conv2d_{i}_depthwise/...``, ``.../Conv2d_{i}_pointwise/...``
        (i = 1..13) and ``MobilenetV1/Logits/Conv2d_1c_1x1/{weights,biases}``,
        possibly under one common prefix.  Other nodes (e.g. a retrained head)
        are ignored.

    Returns
    -------
    dict[str, list[numpy.ndarray]]
        Keras layer name (``conv1``, ``conv1_bn``, ``conv_dw_1``,
        ``conv_dw_1_bn``, ``conv_pw_1``, ``conv_pw_1_bn``, ...,
        ``conv_preds``) to float32 arrays in that layer's ``layer.weights``
        order.  Pass it to ``featx.backbones._assign.assign_weights_by_name``.

    Raises
    ------
    FeatxError
        The file is not a readable GraphDef.
    WeightsMismatchError
        A needed node is missing or has an unexpected shape (e.g. another
        width multiplier than 1.0).

    Examples
    --------
    >>> import importlib.util, os, keras                                # doctest: +SKIP
    >>> from featx.backbones._assign import assign_weights_by_name
    >>> pb = os.path.join(importlib.util.find_spec("nudity").submodule_search_locations[0],
    ...                   "files", "retrained_graph.pb")                 # doctest: +SKIP
    >>> weights = convert_mobilenet_v1_graph(pb)                        # doctest: +SKIP
    >>> weights["conv_preds"][0].shape                                  # doctest: +SKIP
    (1, 1, 1024, 1000)
    >>> model = keras.applications.MobileNet(weights=None, classifier_activation=None)  # doctest: +SKIP
    >>> assign_weights_by_name(model, weights, source=str(pb))          # doctest: +SKIP
    """
    path = os.fspath(path)
    constants = read_graphdef_constants(path)
    scope = _find_scope(constants) + "MobilenetV1/"

    def get(name: str, shape: Tuple[int, ...]) -> np.ndarray:
        full = scope + name
        if full not in constants:
            stem = full.rsplit("/", 1)[0]
            near = sorted(n for n in constants if n.startswith(stem))[:8]
            raise WeightsMismatchError(
                f"{path}: MobileNet v1 graph has no constant '{full}'"
                + (f"; nodes under '{stem}': {near}" if near else ""))
        value = constants[full]
        if value.shape != shape:
            raise WeightsMismatchError(
                f"{path}: '{full}' has shape {value.shape}, MobileNet v1 1.0 expects {shape}")
        return np.ascontiguousarray(value, dtype=np.float32)

    def batchnorm(layer_scope: str, channels: int) -> List[np.ndarray]:
        bn = f"{layer_scope}/BatchNorm/"
        shape = (channels,)
        gamma = (get(bn + "gamma", shape) if scope + bn + "gamma" in constants
                 else np.ones(shape, np.float32))  # slim batch_norm(scale=False)
        variance = get(bn + "moving_variance", shape)
        # Non-fused slim batch norm computes rsqrt(variance + eps) with eps as
        # a constant named '<op scope>/<layer>/BatchNorm/batchnorm/add/y' (the
        # op scope repeats 'MobilenetV1/'); fused graphs keep it in an attr.
        eps_suffix = f"{layer_scope}/BatchNorm/batchnorm/add/y"
        eps_nodes = [n for n in constants if n.endswith("/" + eps_suffix) and constants[n].size == 1]
        if eps_nodes:
            eps = float(constants[eps_nodes[0]].reshape(()))
            if abs(eps - _KERAS_BN_EPSILON) > 1e-9:
                variance = variance + np.float32(eps - _KERAS_BN_EPSILON)
        return [gamma, get(bn + "beta", shape), get(bn + "moving_mean", shape), variance]

    c = _MOBILENET_V1_CHANNELS
    weights: Dict[str, List[np.ndarray]] = {
        "conv1": [get("Conv2d_0/weights", (3, 3, 3, c[0]))],
        "conv1_bn": batchnorm("Conv2d_0", c[0]),
    }
    for i in range(1, 14):
        dw, pw = f"Conv2d_{i}_depthwise", f"Conv2d_{i}_pointwise"
        weights[f"conv_dw_{i}"] = [get(f"{dw}/depthwise_weights", (3, 3, c[i - 1], 1))]
        weights[f"conv_dw_{i}_bn"] = batchnorm(dw, c[i - 1])
        weights[f"conv_pw_{i}"] = [get(f"{pw}/weights", (1, 1, c[i - 1], c[i]))]
        weights[f"conv_pw_{i}_bn"] = batchnorm(pw, c[i])
    # TF-slim's class 0 is "background"; Keras' 1000 classes are slim's 1..1000.
    kernel = get("Logits/Conv2d_1c_1x1/weights", (1, 1, c[-1], 1001))
    bias = get("Logits/Conv2d_1c_1x1/biases", (1001,))
    weights["conv_preds"] = [np.ascontiguousarray(kernel[..., 1:]), np.ascontiguousarray(bias[1:])]
    return weights
