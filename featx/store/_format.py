"""The store file format: its constants and the pure helpers on keys, rows and specs.

Nothing here opens a file or takes a lock; see :mod:`featx.store` for the layout.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import zlib
from typing import Any, Mapping

import numpy as np

from featx.errors import StoreError

#: Store format written by this featx; files with a larger ``featx_store_version`` are refused.
#: 2 added the ``/sources`` path table; a format-1 file is migrated by its first write.
STORE_VERSION = 2
#: Length of a key: a sha256 digest.
KEY_BYTES = 32
#: Storage dtypes a group may have.
SUPPORTED_DTYPES = ("float32", "float16")
#: Free-form spec fields: ignored when a later ``put`` compares its spec with the stored one.
SPEC_FREE_FIELDS = frozenset({"description", "notes", "featx_version", "created"})

_ROOT = "backbones"
_FP_RE = re.compile(r"[0-9a-f]{64}\Z")
_VOID = np.dtype(f"V{KEY_BYTES}")
_CHUNK_BYTES = 1 << 20  # target bytes of one vectors chunk
_MIN_CHUNK_ROWS = 16
_MAX_CHUNK_ROWS = 1024
_GEOMETRIC_LIMIT = 256 << 20  # below this size a dataset doubles; above it grows by 25 %
_READ_BLOCK_BYTES = 64 << 20  # largest slab read in one h5py call
_GAP_BYTES = 256 << 10  # requested rows closer than this are read as one slab
_KEY_READ_ROWS = 1 << 20  # rows of keys read per call when (re)building the index
_RDCC_BYTES = 16 << 20  # HDF5 raw-data chunk cache per open file
_MISSING = object()
_METADATA_SLACK = 1 << 20  # bytes kept free beyond the rows of a write


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _featx_version() -> str:
    try:
        from importlib.metadata import version

        return version("featx")
    except Exception:  # not installed (source checkout)
        import sys

        return str(getattr(sys.modules.get("featx"), "__version__", "unknown"))


def _normalize_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise StoreError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}") from exc
    if name not in SUPPORTED_DTYPES:
        raise StoreError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return name


def _check_fp(fingerprint: Any) -> str:
    if not isinstance(fingerprint, str) or not _FP_RE.match(fingerprint):
        raise StoreError(
            "a backbone fingerprint must be a sha256 hex digest (64 lowercase hex characters), "
            f"got {fingerprint!r}"
        )
    return fingerprint


def _as_keys(keys: Any) -> np.ndarray:
    """Return keys as a C-contiguous ``(n, 32)`` uint8 array."""
    if isinstance(keys, np.ndarray):
        if keys.dtype == np.uint8 and keys.ndim == 2 and keys.shape[1] == KEY_BYTES:
            return np.ascontiguousarray(keys)
        if keys.dtype.kind in "SV" and keys.dtype.itemsize == KEY_BYTES and keys.ndim == 1:
            return np.frombuffer(np.ascontiguousarray(keys).tobytes(), np.uint8).reshape(
                -1, KEY_BYTES
            )
        if keys.size == 0:
            return np.empty((0, KEY_BYTES), np.uint8)
        raise StoreError(
            f"keys must be an (n, {KEY_BYTES}) uint8 array or a sequence of {KEY_BYTES}-byte "
            f"digests, got an array of dtype {keys.dtype} and shape {keys.shape}"
        )
    if isinstance(keys, (bytes, bytearray, memoryview, str)):
        raise StoreError(
            f"keys must be a sequence of {KEY_BYTES}-byte digests, got a single "
            f"{type(keys).__name__}; wrap one key in a list"
        )
    try:
        keys = list(keys)
    except TypeError as exc:
        raise StoreError(
            f"keys must be a sequence of {KEY_BYTES}-byte digests, got {type(keys).__name__}"
        ) from exc
    if not keys:
        return np.empty((0, KEY_BYTES), np.uint8)
    bad = [
        i
        for i, k in enumerate(keys)
        if not isinstance(k, (bytes, bytearray, memoryview)) or len(k) != KEY_BYTES
    ]
    if bad:
        k = keys[bad[0]]
        got = (
            f"{len(k)} bytes" if isinstance(k, (bytes, bytearray, memoryview)) else type(k).__name__
        )
        raise StoreError(
            f"{len(bad)} of {len(keys)} keys are not {KEY_BYTES}-byte digests (first: index "
            f"{bad[0]}, {got})"
        )
    return np.frombuffer(b"".join(keys), np.uint8).reshape(-1, KEY_BYTES)


def _void(keys_u8: np.ndarray) -> np.ndarray:
    """View ``(n, 32)`` uint8 keys as ``(n,)`` V32 (memcmp-ordered, hashable-free, sortable)."""
    return np.ascontiguousarray(keys_u8).view(_VOID).reshape(-1)


def _row_crcs(keys_u8: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's 32 key bytes followed by its stored vector bytes."""
    keys_u8 = np.ascontiguousarray(keys_u8)
    stored = np.ascontiguousarray(stored)
    n = len(keys_u8)
    kb = memoryview(keys_u8).cast("B")
    vb = memoryview(stored.view(np.uint8)).cast("B")
    rb = stored.shape[1] * stored.dtype.itemsize
    crc32 = zlib.crc32
    return np.fromiter(
        (
            crc32(vb[i * rb : (i + 1) * rb], crc32(kb[i * KEY_BYTES : (i + 1) * KEY_BYTES]))
            for i in range(n)
        ),
        dtype=np.uint32,
        count=n,
    )


def _canonical_spec(spec: Any) -> tuple[dict, str]:
    if not isinstance(spec, Mapping):
        raise StoreError(f"spec must be a dict describing the backbone, got {type(spec).__name__}")
    try:
        text = json.dumps(dict(spec), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"spec must be JSON-serializable (str/int/float/bool/None/list/dict): {exc}"
        ) from exc
    return json.loads(text), text


def _spec_diff(stored: dict, given: dict) -> list[str]:
    fields = sorted((set(stored) | set(given)) - SPEC_FREE_FIELDS)
    out = []
    for k in fields:
        a, b = stored.get(k, _MISSING), given.get(k, _MISSING)
        if a != b:
            a = "<absent>" if a is _MISSING else repr(a)
            b = "<absent>" if b is _MISSING else repr(b)
            out.append(f"{k}: stored {a}, given {b}")
    return out


def _chunk_rows(row_bytes: int) -> int:
    rows = max(1, _CHUNK_BYTES // max(1, row_bytes))
    rows = 1 << (rows.bit_length() - 1)  # power of two, ≤ 1 MiB per chunk
    return int(min(_MAX_CHUNK_ROWS, max(_MIN_CHUNK_ROWS, rows)))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _grown_capacity(cap: int, need: int, chunk: int, row_bytes: int) -> int:
    if cap * row_bytes < _GEOMETRIC_LIMIT:
        target = max(need, 2 * cap, chunk)
    else:
        target = max(need, cap + cap // 4)
    return _round_up(target, chunk)


def _runs(rows: np.ndarray, gap: int, max_rows: int) -> list[tuple[int, int, int, int]]:
    """Split sorted unique rows into slabs ``(lo, hi, i0, i1)``.

    Read ``[lo, hi)``, use ``rows[i0:i1]``.

    Rows at most ``gap`` apart share a slab; a slab spans at most ``max_rows`` rows.
    """
    n = len(rows)
    if n == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > gap) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [n])).tolist()
    out = []
    for a, b in zip(starts, ends):
        lo, last = int(rows[a]), int(rows[b - 1])
        if last - lo < max_rows:
            out.append((lo, last + 1, a, b))
            continue
        while a < b:  # a long run: slabs of at most max_rows rows
            lo = int(rows[a])
            c = a + int(np.searchsorted(rows[a:b], lo + max_rows))
            out.append((lo, int(rows[c - 1]) + 1, a, c))
            a = c
    return out


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
