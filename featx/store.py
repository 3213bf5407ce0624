"""Crash-safe HDF5 store of embedding vectors, keyed by image content × backbone fingerprint.

Layout of a store file (format version :data:`STORE_VERSION`)::

    /                              attrs: featx_store_version=1, featx_version
    /backbones/<fingerprint>/      one group per backbone fingerprint (64 lowercase hex chars)
        keys     (A, 32) uint8     sha256 digests of image content, one row per vector
        vectors  (A, dim) f4 | f2  the embeddings, in the storage dtype of the group
        crc      (A,) uint32       CRC-32 of each row's key bytes, then its stored vector bytes
        attrs: spec (JSON of the backbone spec), dim, dtype ("float32" | "float16"),
               committed (rows a reader may trust), created (ISO-8601 UTC), uid (random hex)

``A`` is the *allocated* length. The three datasets are chunked, resizable and created
with HDF5's ``H5D_ALLOC_TIME_EARLY`` (and ``H5D_FILL_TIME_NEVER``), and they grow
geometrically (×2 until a dataset holds 256 MiB, then ×1.25), so most appends write raw
chunk data only and touch no HDF5 metadata except the ``committed`` attribute.

Commit protocol: under an exclusive lock, rows are written into
``[committed, committed + n)``, the file is flushed, then ``committed`` is advanced in place
(``attrs.modify``) and the file is flushed again. Readers trust only rows ``< committed``;
a process killed mid-batch loses that batch and never corrupts committed rows (the next
append overwrites the uncommitted tail).

Concurrency: the HDF5 file is opened per operation (``h5py.File(..., locking=False)``) and
closed at its end, so an :class:`EmbeddingStore` holds a path and a few parameters and
pickles. A sidecar ``<path>.lock`` file is locked with :func:`fcntl.flock`: exclusive for
writers (:meth:`~EmbeddingStore.put`, :meth:`~EmbeddingStore.merge_from`), shared for
readers. A second sidecar, ``<path>.lock.gate``, is a turnstile that a waiting writer
holds, so a stream of readers cannot starve it. ``flock`` is advisory and works on local
file systems; on NFS it depends on the mount (Linux ≥ 2.6.12 emulates it with POSIX
byte-range locks). Within one process, store objects on the same path exclude each other
the same way (each operation opens its own lock descriptors); one object serialises its
own operations with a thread lock.

This module never imports TensorFlow or Keras.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from featx.errors import FingerprintMismatchError, StoreError

log = logging.getLogger("featx")

__all__ = [
    "STORE_VERSION",
    "KEY_BYTES",
    "SUPPORTED_DTYPES",
    "SPEC_FREE_FIELDS",
    "EmbeddingStore",
]

#: Store format written by this featx; files with a larger ``featx_store_version`` are refused.
STORE_VERSION = 1
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
_SAY_WAITING_AFTER_S = 1.0  # a lock wait longer than this is announced once
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


# --------------------------------------------------------------------------------------
# locking
# --------------------------------------------------------------------------------------


class _FileLock:
    """A writer-preferring readers-writer lock on one store *file*, whatever its name.

    ``<real path>.lock`` is the lock proper: shared for readers, exclusive for writers.
    ``<real path>.lock.gate`` is a turnstile: a writer holds it exclusively while it waits
    for the lock; readers pass through it (shared, released at once) before taking their
    shared lock. So a waiting writer stops new readers and gets in as soon as the current
    ones finish, instead of starving behind readers that keep overlapping.

    One file, one lock: the sidecars sit beside the *resolved* path, so a symlink and its
    target share them, and once the store file exists it is ``flock``-ed too, which covers
    hard links (``flock`` belongs to the inode). A lock keyed on the name given let three
    names of one file write at once and damage it (tests/robustness/test_failure_paths.py).

    Locks are polled (non-blocking ``flock``) until ``timeout`` seconds have passed; the OS
    drops the locks of a process that dies. A writer records its PID and start time in the
    lock file, so a process kept waiting can say, once, whom it waits for.
    """

    def __init__(self, lock_path: str, data_path: str, exclusive: bool, timeout: float):
        self.lock_path = lock_path
        self.gate_path = lock_path + ".gate"
        self.data_path = data_path
        self.exclusive = exclusive
        self.timeout = timeout
        self.fd: int | None = None
        self.data_fd: int | None = None
        self._said_waiting = False
        self._started = 0.0
        self._recorded = False

    def _open(self, path: str) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if self.exclusive:
                raise StoreError(
                    f"cannot create the lock file {path!r} for writing to "
                    f"{self.data_path!r}: {exc.strerror or exc}"
                ) from exc
        try:  # a reader on read-only media: use an existing lock file if there is one
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # nobody can write there either: read without a lock

    def _holder(self) -> str:
        """``"PID 123 since 12:00:01 UTC"`` from the lock file, or a vaguer phrase."""
        try:
            with open(self.lock_path, "rb") as fh:
                pid, since = fh.read(200).decode("ascii", "replace").split()[:2]
            os.kill(int(pid), 0)  # a writer killed with -9 leaves its record behind
            when = _dt.datetime.fromtimestamp(float(since), _dt.timezone.utc)
            return f"PID {int(pid)} since {when:%Y-%m-%d %H:%M:%S} UTC"
        except (OSError, ValueError, OverflowError):
            return "another process"

    def _say_waiting(self) -> None:
        if self._said_waiting:
            return
        self._said_waiting = True
        kind = "exclusive" if self.exclusive else "shared"
        log.warning("featx: waiting for the %s lock on %s, held by %s (up to %g s; a "
                    "stopped or hung process holds it until it ends)", kind, self.data_path,
                    self._holder(), self.timeout)

    def _acquire(self, fd: int, op: int, deadline: float, what: str) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot lock {what!r}: {exc.strerror or exc}") from exc
            now = time.monotonic()
            if now - self._started >= _SAY_WAITING_AFTER_S:
                self._say_waiting()
            left = deadline - now
            if left <= 0:
                kind = "exclusive" if self.exclusive else "shared"
                who = "is reading or writing" if self.exclusive else "is writing to"
                raise StoreError(
                    f"timed out after {self.timeout:g} s waiting for the {kind} lock on "
                    f"{what!r}: {self._holder()} {who} {self.data_path!r}. Wait for it "
                    "to finish, or pass a larger lock_timeout to EmbeddingStore (a lock held by "
                    "a dead process is released by the OS)."
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def __enter__(self) -> "_FileLock":
        self._started = time.monotonic()
        deadline = self._started + self.timeout
        op = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        self.fd = self._open(self.lock_path)
        gate = None if self.fd is None else self._open(self.gate_path)
        try:
            if gate is not None:
                self._acquire(gate, op, deadline, self.gate_path)
                if not self.exclusive:
                    os.close(gate)  # a reader only passes through the turnstile
                    gate = None
            if self.fd is not None:
                self._acquire(self.fd, op, deadline, self.lock_path)
            # The store file itself, for other names of it (hard links) with other sidecars.
            try:
                self.data_fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.data_fd = None  # not created yet: only a holder of our sidecar creates it
            if self.data_fd is not None:
                self._acquire(self.data_fd, op, deadline, self.data_path)
            if self.exclusive and self.fd is not None:
                record = f"{os.getpid()} {time.time():.3f}\n".encode()
                try:
                    os.ftruncate(self.fd, 0)
                    os.pwrite(self.fd, record, 0)
                    self._recorded = True
                except OSError:
                    pass  # only the waiting message loses its PID
        except BaseException:
            self._close()
            raise
        finally:
            if gate is not None:
                os.close(gate)  # a writer holding the lock lets readers queue behind it again
        return self

    def _close(self) -> None:
        if self.data_fd is not None:
            os.close(self.data_fd)
            self.data_fd = None
        if self.fd is not None:
            if self.exclusive and self._recorded:
                try:
                    os.ftruncate(self.fd, 0)  # the record names the holder only while it holds
                except OSError:
                    pass
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
            self._recorded = False

    def __exit__(self, *exc: Any) -> None:
        self._close()


# --------------------------------------------------------------------------------------
# key index
# --------------------------------------------------------------------------------------


class _KeyIndex:
    """key → row for the committed rows of one group.

    A sorted ``V32`` array (memory: 40 bytes a key) plus a small dict for recent appends,
    merged into the array when it outgrows ``max(16384, n / 8)`` entries.
    """

    __slots__ = ("token", "n", "keys", "rows", "delta")

    def __init__(self, token: tuple):
        self.token = token
        self.n = 0
        self.keys = np.empty(0, _VOID)
        self.rows = np.empty(0, np.int64)
        self.delta: dict[bytes, int] = {}

    def extend(self, kv: np.ndarray, start: int) -> None:
        m = len(kv)
        if m == 0:
            return
        assert start == self.n, (start, self.n)
        new_rows = np.arange(start, start + m, dtype=np.int64)
        if len(self.delta) + m > max(16384, len(self.keys) // 8):
            if self.delta:
                dk = np.frombuffer(b"".join(self.delta.keys()), _VOID)
                dr = np.fromiter(self.delta.values(), np.int64, len(self.delta))
                kv = np.concatenate([dk, kv])
                new_rows = np.concatenate([dr, new_rows])
                self.delta = {}
            order = np.argsort(kv, kind="stable")
            kv, new_rows = kv[order], new_rows[order]
            if len(self.keys):
                pos = np.searchsorted(self.keys, kv)
                self.keys = np.insert(self.keys, pos, kv)
                self.rows = np.insert(self.rows, pos, new_rows)
            else:
                self.keys, self.rows = kv.copy(), new_rows
        else:
            b = kv.tobytes()
            self.delta.update(
                zip((b[i : i + KEY_BYTES] for i in range(0, len(b), KEY_BYTES)), new_rows.tolist())
            )
        self.n = start + m

    def lookup(self, q: np.ndarray) -> np.ndarray:
        out = np.full(len(q), -1, np.int64)
        if len(q) == 0:
            return out
        if len(self.keys):
            pos = np.searchsorted(self.keys, q)
            np.minimum(pos, len(self.keys) - 1, out=pos)
            hit = self.keys[pos] == q
            out[hit] = self.rows[pos[hit]]
        if self.delta:
            miss = np.flatnonzero(out < 0)
            if len(miss):
                b = q[miss].tobytes()
                get = self.delta.get
                out[miss] = [get(b[i : i + KEY_BYTES], -1) for i in range(0, len(b), KEY_BYTES)]
        return out


# --------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------


class EmbeddingStore:
    """An HDF5 file of embedding vectors for one or more backbones, safe to share between processes.

    Vectors are stored per backbone *fingerprint* (a sha256 hex string that identifies the
    weights, input size, pooling and preprocessing) and per *key* (the 32-byte sha256
    digest of an image's content). Appends are crash-safe (a killed writer loses at most
    the batch it was writing); readers see only committed rows. Nothing stays open between
    operations: the object holds a path and a few parameters, so it pickles, and several
    processes may use the same file (writers take turns through ``<path>.lock``).

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file. It (and the sidecars ``<path>.lock``, ``<path>.lock.gate``) is
        created by the first write; reading a missing file creates nothing.
    dtype : {"float32", "float16"}, default "float32"
        Storage dtype of groups this object creates. float16 halves the file and keeps
        about 3 significant digits (relative error ≤ 4.9e-4 for 6.1e-5 ≤ |x| ≤ 65504;
        absolute error ≤ 3e-8 below that). Appending to an existing
        group of another dtype raises :class:`~featx.errors.StoreError`; reading any group
        returns float32.
    readonly : bool, default False
        Refuse writes (:meth:`put`, :meth:`merge_from` raise ``StoreError``).
    lock_timeout : float, default 600.0
        Seconds to wait for another process's lock before raising ``StoreError``.
    verify_reads : bool, default True
        Check each row's CRC-32 when reading vectors (:meth:`get`, :meth:`iter_rows`), so
        bit rot surfaces as a ``StoreError`` instead of wrong vectors. CRC-32 runs at about
        2.5 GB/s: it roughly doubles the time of a read served from the page cache.

    Attributes
    ----------
    path : str
        The file path, as given.

    See Also
    --------
    featx.Embedder : computes missing vectors and writes them here.

    Notes
    -----
    File layout: ``/backbones/<fingerprint>/{keys (A,32) uint8, vectors (A,dim) f4|f2,
    crc (A,) uint32}``; group attrs ``spec`` (JSON), ``dim``, ``dtype``, ``committed``,
    ``created``, ``uid``; file attrs ``featx_store_version`` and ``featx_version``. The
    allocated length ``A`` grows ahead of ``committed`` and is never shrunk; HDF5 does not
    return freed space, use ``h5repack`` to compact a file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.store import EmbeddingStore
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> fp = "0f" * 32                                  # a backbone fingerprint
    >>> keys = [bytes([i]) * 32 for i in range(3)]      # sha256 digests of images
    >>> with EmbeddingStore(path) as store:
    ...     store.put(fp, keys, np.eye(3, 4, dtype=np.float32), spec={"name": "demo"})
    ...     vectors, found = store.get(fp, [keys[2], b"\\x09" * 32])
    3
    >>> found
    array([ True, False])
    >>> vectors[0]
    array([0., 0., 1., 0.], dtype=float32)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dtype: str = "float32",
        readonly: bool = False,
        lock_timeout: float = 600.0,
        verify_reads: bool = True,
    ):
        self.path = os.fspath(path)
        self.dtype = _normalize_dtype(dtype)
        self.readonly = bool(readonly)
        self.lock_timeout = float(lock_timeout)
        self.verify_reads = bool(verify_reads)
        self._mutex = threading.RLock()
        self._indexes: dict[str, _KeyIndex] = {}
        self._held_by: int | None = None  # thread holding exclusive() — its ops skip the flock

    # -- plumbing ------------------------------------------------------------------------

    def __repr__(self) -> str:
        extra = "".join(
            [
                f", dtype={self.dtype!r}" if self.dtype != "float32" else "",
                ", readonly=True" if self.readonly else "",
                f", lock_timeout={self.lock_timeout:g}" if self.lock_timeout != 600.0 else "",
                ", verify_reads=False" if not self.verify_reads else "",
            ]
        )
        return f"EmbeddingStore({self.path!r}{extra})"

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "dtype": self.dtype,
            "readonly": self.readonly,
            "lock_timeout": self.lock_timeout,
            "verify_reads": self.verify_reads,
        }

    def __setstate__(self, state: dict) -> None:
        path = state.pop("path")
        self.__init__(path, **state)

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Drop the in-memory key index. No file is held open between operations.

        The store stays usable; the next operation re-reads what it needs.

        Examples
        --------
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore("never-written.h5")
        >>> store.close()
        """
        with self._mutex:
            self._indexes.clear()

    @property
    def lock_path(self) -> str:
        """The sidecar lock file, ``<path>.lock`` beside the resolved path.

        Symlinks resolve to their target, so every name of one file shares one
        lock (hard links share the ``flock`` on the file itself).
        """
        return os.path.realpath(self.path) + ".lock"

    def _exists(self) -> bool:
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    def _lock(self, exclusive: bool) -> _FileLock:
        return _FileLock(self.lock_path, self.path, exclusive, self.lock_timeout)

    def _open(self, mode: str) -> h5py.File:
        try:
            f = h5py.File(self.path, mode, locking=False, rdcc_nbytes=_RDCC_BYTES)
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"cannot open {self.path!r} as an HDF5 embedding store: {exc}"
            ) from exc
        try:
            self._check_version(f)
        except BaseException:
            f.close()
            raise
        return f

    def _check_version(self, f: h5py.File) -> int:
        try:
            v = f.attrs.get("featx_store_version", None)
        except Exception as exc:  # damaged attribute storage
            raise StoreError(f"{self.path!r}: cannot read the store attributes: {exc}") from exc
        if v is None:
            raise StoreError(
                f"{self.path!r} is an HDF5 file but not a featx embedding store "
                "(it has no 'featx_store_version' attribute)"
            )
        try:
            v = int(np.asarray(v).item())
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"{self.path!r}: featx_store_version is not an integer: {v!r}"
            ) from exc
        if v > STORE_VERSION:
            raise StoreError(
                f"{self.path!r} was written by a newer featx (format {v}), this featx reads "
                f"≤ {STORE_VERSION}; upgrade featx to read it"
            )
        if v < 1:
            raise StoreError(f"{self.path!r}: invalid featx_store_version {v}")
        return v

    def _holding(self) -> bool:
        return self._held_by == threading.get_ident()

    @contextmanager
    def exclusive(self) -> Iterator["EmbeddingStore"]:
        """Hold the writer lock across several operations (check, compute, put).

        Other processes (and threads) can neither read nor write meanwhile; this
        thread's own ``lookup``/``get``/``put`` calls inside the block run under the
        held lock.  The engine uses it so that concurrent processes never forward
        the same image twice: re-check which keys are stored, forward the rest,
        put, release.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> with store.exclusive():
        ...     missing = store.lookup("ab" * 32, [b"k" * 32]) < 0
        ...     store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={})
        1
        """
        if self.readonly:
            raise StoreError(f"{self.path!r} was opened with readonly=True; refusing to write")
        if self._holding():
            yield self
            return
        with self._mutex, self._lock(exclusive=True):
            self._held_by = threading.get_ident()
            try:
                yield self
            finally:
                self._held_by = None

    @contextmanager
    def _reading(self) -> Iterator[h5py.File | None]:
        """Shared lock + the file open read-only; ``None`` when there is no store file yet."""
        with self._mutex:
            if not self._exists():
                yield None
                return
            if self._holding():
                f = self._open("r")
                try:
                    yield f
                finally:
                    f.close()
                return
            with self._lock(exclusive=False):
                if not self._exists():
                    yield None
                    return
                f = self._open("r")
                try:
                    yield f
                finally:
                    f.close()

    @contextmanager
    def _writing(self) -> Iterator[h5py.File]:
        """Exclusive lock + the file open read-write (created atomically if absent)."""
        if self.readonly:
            raise StoreError(f"{self.path!r} was opened with readonly=True; refusing to write")
        with self._mutex, (contextlib.nullcontext() if self._holding()
                           else self._lock(exclusive=True)):
            if not self._exists():
                self._create_file()
            f = self._open("r+")
            no_space = False
            try:
                yield f
            except (OSError, RuntimeError) as exc:
                no_space = "No space left" in str(exc) or getattr(exc, "errno", 0) == errno.ENOSPC
                if not no_space:
                    f.close()
                    raise
                with contextlib.suppress(Exception):
                    f.close()  # fails again: HDF5 cannot flush its metadata either
            except BaseException:
                f.close()
                raise
            else:
                f.close()
            if no_space:
                error = StoreError(f"no space left on the disk of {self.path!r}; the vectors "
                                   "committed before this write stay intact")
                # HDF5 keeps the file open internally after a failed flush and crashes
                # when the interpreter shuts it down; featx's CLI then exits without that
                # teardown. The committed rows are safe on disk either way.
                error.hdf5_left_open = True
                raise error

    def _create_file(self) -> None:
        real = os.path.realpath(self.path)  # through a link: create the target, keep the link
        tmp = f"{real}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with h5py.File(tmp, "w-", locking=False) as f:
                f.attrs["featx_store_version"] = np.int64(STORE_VERSION)
                f.attrs["featx_version"] = _featx_version()
                f.create_group(_ROOT)
            os.replace(tmp, real)  # readers see no file or a complete one
        except OSError as exc:
            raise StoreError(f"cannot create the store file {self.path!r}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _group(f: h5py.File | None, fp: str) -> h5py.Group | None:
        if f is None:
            return None
        root = f.get(_ROOT)
        if root is None:
            return None
        g = root.get(fp)
        return g if isinstance(g, h5py.Group) else None

    def _meta(self, g: h5py.Group) -> dict:
        a = g.attrs
        try:
            return {
                "dim": int(a["dim"]),
                "dtype": str(a["dtype"]),
                "committed": int(a["committed"]),
                "token": (str(a.get("uid", "")), str(a.get("created", ""))),
                "spec": str(a["spec"]),
            }
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise StoreError(
                f"{self.path!r}: group {g.name} is damaged (attributes: {exc})"
            ) from exc

    def _index(self, g: h5py.Group, fp: str, meta: dict) -> _KeyIndex:
        """The key index of ``fp``, brought up to the committed count (reads only new keys)."""
        n = meta["committed"]
        idx = self._indexes.get(fp)
        if idx is None or idx.token != meta["token"] or idx.n > n:
            idx = self._indexes[fp] = _KeyIndex(meta["token"])
        if idx.n < n:
            ds = g["keys"]
            if n > ds.shape[0]:
                raise StoreError(
                    f"{self.path!r}: group {fp} claims {n} committed rows but only {ds.shape[0]} "
                    "are allocated"
                )
            for lo in range(idx.n, n, _KEY_READ_ROWS):
                hi = min(n, lo + _KEY_READ_ROWS)
                idx.extend(_void(ds[lo:hi]), lo)
        return idx

    def _read_rows(self, g: h5py.Group, fp: str, meta: dict, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of sorted unique committed ``rows``, CRC-checked if ``verify_reads``."""
        dim = meta["dim"]
        vds, kds, cds = g["vectors"], g["keys"], g["crc"]
        row_bytes = dim * vds.dtype.itemsize
        out = np.empty((len(rows), dim), np.float32)
        gap = max(1, _GAP_BYTES // row_bytes)
        max_rows = max(1, _READ_BLOCK_BYTES // row_bytes)
        bad: list[int] = []
        for lo, hi, i0, i1 in _runs(rows, gap, max_rows):
            sel = None if (i1 - i0) == (hi - lo) else rows[i0:i1] - lo
            block = vds[lo:hi]
            if sel is not None:
                block = block[sel]
            if self.verify_reads:
                kb = kds[lo:hi]
                cb = cds[lo:hi]
                if sel is not None:
                    kb, cb = kb[sel], cb[sel]
                mismatch = np.flatnonzero(_row_crcs(kb, block) != cb)
                if len(mismatch):
                    bad.extend(rows[i0:i1][mismatch][:5].tolist())
            out[i0:i1] = block
        if bad:
            raise StoreError(
                f"{self.path!r}: checksum mismatch in committed rows of backbone {fp} "
                f"(rows {bad[:5]}): the file is damaged; run verify(), then restore it or "
                "delete the group and re-embed"
            )
        return out

    # -- reading -------------------------------------------------------------------------

    def fingerprints(self) -> list[str]:
        """Fingerprints of the backbones stored in the file, sorted.

        Returns
        -------
        list of str
            Empty when the file does not exist yet.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> store.fingerprints()
        []
        >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={})
        >>> store.fingerprints() == ["ab" * 32]
        True
        """
        with self._reading() as f:
            if f is None or _ROOT not in f:
                return []
            return sorted(k for k in f[_ROOT].keys() if _FP_RE.match(k))

    def spec(self, fingerprint: str) -> dict | None:
        """The backbone spec stored with ``fingerprint``, or ``None`` if it has no group.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={"name": "m"})
        >>> store.spec("ab" * 32)
        {'name': 'm'}
        >>> store.spec("cd" * 32) is None
        True
        """
        fp = _check_fp(fingerprint)
        with self._reading() as f:
            g = self._group(f, fp)
            if g is None:
                return None
            try:
                return json.loads(self._meta(g)["spec"])
            except json.JSONDecodeError as exc:
                raise StoreError(
                    f"{self.path!r}: the spec of group {fp} is not valid JSON: {exc}"
                ) from exc

    def count(self, fingerprint: str) -> int:
        """Number of committed rows stored for ``fingerprint`` (0 if none).

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> store.count("ab" * 32)
        0
        >>> _ = store.put("ab" * 32, [b"k" * 32, b"l" * 32], np.ones((2, 2), np.float32), spec={})
        >>> store.count("ab" * 32)
        2
        """
        fp = _check_fp(fingerprint)
        with self._reading() as f:
            g = self._group(f, fp)
            return 0 if g is None else self._meta(g)["committed"]

    def lookup(self, fingerprint: str, keys: Sequence[bytes] | np.ndarray) -> np.ndarray:
        """Row of each key in the group of ``fingerprint``, ``-1`` where absent.

        Parameters
        ----------
        fingerprint : str
            Backbone fingerprint (64 hex characters).
        keys : sequence of 32-byte bytes, or (n, 32) uint8 array
            Content digests, in any order, duplicates allowed.

        Returns
        -------
        numpy.ndarray of int64, shape (n,)
            In input order. Rows are positions in the file; only their sign is meant for
            callers (``rows >= 0`` is "cached").

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
        >>> _ = store.put("ab" * 32, [a, b], np.ones((2, 2), np.float32), spec={})
        >>> store.lookup("ab" * 32, [b, c, a])
        array([ 1, -1,  0])
        """
        fp = _check_fp(fingerprint)
        kv = _void(_as_keys(keys))
        with self._reading() as f:
            g = self._group(f, fp)
            if g is None:
                return np.full(len(kv), -1, np.int64)
            return self._index(g, fp, self._meta(g)).lookup(kv)

    def known(self, fingerprint: str, keys: Sequence[bytes] | np.ndarray) -> np.ndarray:
        """Which keys this object's in-memory index already holds — no file access, no lock.

        The index is as of this object's last read or write of the group, so keys
        that other processes appended since may show as unknown (never the other
        way round). The engine's decode thread uses it to skip decoding stored
        images without waiting for the writer lock the forward thread holds; the
        forward thread re-checks under that lock.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"a" * 32], np.ones((1, 2), np.float32), spec={})
        >>> store.known("ab" * 32, [b"a" * 32, b"b" * 32]).tolist()
        [True, False]
        """
        fp = _check_fp(fingerprint)
        q = _void(_as_keys(keys))
        out = np.zeros(len(q), dtype=bool)
        idx = self._indexes.get(fp)
        if idx is None or len(q) == 0:
            return out
        # Read each attribute once: another thread may be extending the index, and each
        # attribute is replaced whole (never mutated in place), so a snapshot is consistent.
        sorted_keys, delta = idx.keys, idx.delta.copy()
        if len(sorted_keys):
            pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            out |= sorted_keys[pos] == q
        if delta:
            raw = q.tobytes()
            out |= np.fromiter((raw[i:i + KEY_BYTES] in delta
                                for i in range(0, len(raw), KEY_BYTES)), bool, len(q))
        return out

    def get(
        self, fingerprint: str, keys: Sequence[bytes] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``keys`` as float32, NaN rows where a key is absent.

        Parameters
        ----------
        fingerprint : str
            Backbone fingerprint.
        keys : sequence of 32-byte bytes, or (n, 32) uint8 array

        Returns
        -------
        vectors : numpy.ndarray of float32, shape (n, dim)
            In input order; ``dim`` is 0 when the backbone has no group in the file.
        found : numpy.ndarray of bool, shape (n,)

        Raises
        ------
        StoreError
            If a row's checksum does not match (``verify_reads=True``) or the file is damaged.

        Notes
        -----
        Requested rows are sorted and read as contiguous slabs (rows closer than ~256 KiB
        share a slab, indexed in numpy), which is many times faster than h5py fancy
        indexing. float16 groups are converted to float32.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"), dtype="float16")
        >>> _ = store.put("ab" * 32, [b"a" * 32], np.array([[0.5, 2.0]], np.float32), spec={})
        >>> vectors, found = store.get("ab" * 32, [b"a" * 32, b"z" * 32])
        >>> vectors
        array([[0.5, 2. ],
               [nan, nan]], dtype=float32)
        >>> found
        array([ True, False])
        """
        fp = _check_fp(fingerprint)
        kv = _void(_as_keys(keys))
        n = len(kv)
        with self._reading() as f:
            g = self._group(f, fp)
            if g is None:
                return np.full((n, 0), np.nan, np.float32), np.zeros(n, bool)
            meta = self._meta(g)
            rows = self._index(g, fp, meta).lookup(kv)
            found = rows >= 0
            if not found.any():
                return np.full((n, meta["dim"]), np.nan, np.float32), found
            urows, inverse = np.unique(rows[found], return_inverse=True)
            vals = self._read_rows(g, fp, meta, urows)
        if len(urows) == n and np.array_equal(rows, urows):
            return vals, found  # every key found, already in row order
        out = np.empty((n, meta["dim"]), np.float32)
        out[~found] = np.nan
        out[found] = vals[inverse]
        return out, found

    def iter_rows(
        self, fingerprint: str, batch: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the committed rows of ``fingerprint`` in blocks, for merging or export.

        The committed count is read once at the start; each block is read under its own
        shared lock, so writers are not held up between blocks.

        Parameters
        ----------
        fingerprint : str
        batch : int, default 8192
            Rows per block.

        Yields
        ------
        keys : numpy.ndarray of uint8, shape (m, 32)
        vectors : numpy.ndarray of float32, shape (m, dim)

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> keys = [bytes([i]) * 32 for i in range(5)]
        >>> _ = store.put("ab" * 32, keys, np.zeros((5, 3), np.float32), spec={})
        >>> [len(k) for k, v in store.iter_rows("ab" * 32, batch=2)]
        [2, 2, 1]
        """
        fp = _check_fp(fingerprint)
        batch = int(batch)
        if batch < 1:
            raise StoreError(f"batch must be a positive number of rows, got {batch}")
        with self._reading() as f:
            g = self._group(f, fp)
            if g is None:
                return
            meta0 = self._meta(g)
        total = meta0["committed"]
        for lo in range(0, total, batch):
            hi = min(total, lo + batch)
            with self._reading() as f:
                g = self._group(f, fp)
                meta = None if g is None else self._meta(g)
                if meta is None or meta["token"] != meta0["token"] or meta["committed"] < hi:
                    raise StoreError(
                        f"{self.path!r}: the group {fp} was replaced while it was being read"
                    )
                keys = g["keys"][lo:hi]
                vectors = self._read_rows(g, fp, meta, np.arange(lo, hi))
            yield keys, vectors

    def info(self) -> dict:
        """A summary of the file: path, size, format version and one entry per backbone.

        Returns
        -------
        dict
            ``path``, ``exists``, ``size_bytes``, ``store_version``, ``featx_version`` and
            ``backbones``: a list of dicts with ``fingerprint``, ``name`` (``spec['name']``
            if present), ``dim``, ``dtype``, ``rows``, ``allocated``, ``created`` and ``spec``.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> spec = {"name": "demo"}
        >>> _ = store.put("ab" * 32, [b"a" * 32], np.ones((1, 4), np.float32), spec=spec)
        >>> b = store.info()["backbones"][0]
        >>> b["name"], b["dim"], b["dtype"], b["rows"]
        ('demo', 4, 'float32', 1)
        """
        out: dict[str, Any] = {
            "path": self.path,
            "exists": False,
            "size_bytes": 0,
            "store_version": None,
            "featx_version": None,
            "backbones": [],
        }
        with self._reading() as f:
            if f is None:
                return out
            out["exists"] = True
            out["size_bytes"] = os.path.getsize(self.path)
            out["store_version"] = int(np.asarray(f.attrs["featx_store_version"]).item())
            fv = f.attrs.get("featx_version")
            out["featx_version"] = None if fv is None else str(fv)
            root = f.get(_ROOT)
            for fp in sorted(root.keys()) if root is not None else []:
                g = self._group(f, fp)
                if g is None:
                    continue
                meta = self._meta(g)
                try:
                    spec = json.loads(meta["spec"])
                except json.JSONDecodeError:
                    spec = None
                out["backbones"].append(
                    {
                        "fingerprint": fp,
                        "name": spec.get("name") if isinstance(spec, dict) else None,
                        "dim": meta["dim"],
                        "dtype": meta["dtype"],
                        "rows": meta["committed"],
                        "allocated": int(g["vectors"].shape[0]) if "vectors" in g else 0,
                        "created": meta["token"][1],
                        "spec": spec,
                    }
                )
        return out

    def verify(self) -> dict:
        """Check the whole file; raise :class:`~featx.errors.StoreError` listing any damage.

        Checks: the file opens as HDF5; ``featx_store_version`` is present and ≤
        :data:`STORE_VERSION`; per group: the name is a 64-hex fingerprint, the spec is a
        JSON object, the three datasets have the right dtypes and shapes and equal allocated
        lengths, ``committed ≤ allocated``, and among committed rows the keys are unique,
        the vectors finite and every row's CRC-32 matches (read in blocks).

        Returns
        -------
        dict
            ``path``, ``ok`` (True), ``size_bytes``, ``store_version`` and ``backbones``:
            per group ``fingerprint``, ``name``, ``dim``, ``dtype``, ``rows``, ``allocated``,
            ``bytes`` (storage of its datasets).

        Raises
        ------
        StoreError
            If the file is missing, not HDF5, truncated, of a newer format, or damaged.

        Notes
        -----
        Holds the shared lock while it reads every committed row (about 1 GB/s here), so
        writers wait for it; size ``lock_timeout`` of concurrent writers accordingly. Rows
        beyond ``committed`` (an interrupted batch) are not damage and are not read.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"a" * 32], np.ones((1, 4), np.float32), spec={})
        >>> report = store.verify()
        >>> report["ok"], report["backbones"][0]["rows"]
        (True, 1)
        """
        if not self._exists():
            raise StoreError(f"{self.path!r}: no store file to verify (missing or empty)")
        problems: list[str] = []
        report: dict[str, Any] = {"path": self.path, "ok": True, "backbones": []}
        with self._mutex, self._lock(exclusive=False):
            f = self._open("r")
            try:
                report["store_version"] = self._check_version(f)
                report["size_bytes"] = os.path.getsize(self.path)
                try:
                    root = f.get(_ROOT)
                    if not isinstance(root, h5py.Group):
                        problems.append(f"no /{_ROOT} group")
                        names: list[str] = []
                    else:
                        names = sorted(root.keys())
                    for name in names:
                        try:
                            entry = self._verify_group(root, name, problems)
                        except StoreError:
                            raise
                        except Exception as exc:  # h5py read errors on damaged metadata/data
                            problems.append(
                                f"group {name}: cannot be read ({type(exc).__name__}: {exc})"
                            )
                            continue
                        if entry is not None:
                            report["backbones"].append(entry)
                except StoreError:
                    raise
                except Exception as exc:
                    problems.append(f"cannot be read ({type(exc).__name__}: {exc})")
            finally:
                f.close()
        if problems:
            shown = "; ".join(problems[:10]) + (
                f"; … {len(problems) - 10} more" if len(problems) > 10 else ""
            )
            raise StoreError(f"{self.path!r} is damaged: {shown}")
        return report

    def _verify_group(self, root: h5py.Group, name: str, problems: list[str]) -> dict | None:
        where = f"group {name}"
        if not _FP_RE.match(name):
            problems.append(f"{where}: name is not a 64-hex fingerprint")
        g = root[name]
        if not isinstance(g, h5py.Group):
            problems.append(f"{where}: is not a group")
            return None
        a = g.attrs
        missing = [k for k in ("spec", "dim", "dtype", "committed") if k not in a]
        if missing:
            problems.append(f"{where}: missing attributes {missing}")
            return None
        spec = None
        try:
            spec = json.loads(str(a["spec"]))
            if not isinstance(spec, dict):
                problems.append(f"{where}: spec is not a JSON object")
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: spec is not valid JSON ({exc})")
        dim, dtype, committed = int(a["dim"]), str(a["dtype"]), int(a["committed"])
        # Robustness fix (tests/robustness): a spec that names another fingerprint or
        # width than its group holds is a foreign or hand-edited group; report it.
        if isinstance(spec, dict):
            if "fingerprint" in spec and spec["fingerprint"] != name:
                problems.append(
                    f"{where}: its spec names fingerprint {spec['fingerprint']!r}; the group "
                    "holds vectors of another backbone than its spec says"
                )
            if "dim" in spec and spec["dim"] != dim:
                problems.append(f"{where}: spec says dim {spec['dim']!r}, the group stores {dim}")
        if dtype not in SUPPORTED_DTYPES:
            problems.append(f"{where}: dtype attribute {dtype!r} is not one of {SUPPORTED_DTYPES}")
            return None
        dsets = {}
        for dname, want_dtype, want_tail in (
            ("keys", np.dtype(np.uint8), (KEY_BYTES,)),
            ("vectors", np.dtype(dtype), (dim,)),
            ("crc", np.dtype(np.uint32), ()),
        ):
            ds = g.get(dname)
            if not isinstance(ds, h5py.Dataset):
                problems.append(f"{where}: dataset {dname!r} missing")
                continue
            if ds.dtype != want_dtype or ds.shape[1:] != want_tail:
                problems.append(
                    f"{where}/{dname}: expected dtype {want_dtype} and rows of shape {want_tail}, "
                    f"found {ds.dtype} {ds.shape}"
                )
                continue
            dsets[dname] = ds
        if len(dsets) < 3:
            return None
        lengths = {k: d.shape[0] for k, d in dsets.items()}
        allocated = min(lengths.values())
        if len(set(lengths.values())) != 1:
            problems.append(f"{where}: datasets have different allocated lengths {lengths}")
        if committed < 0 or committed > allocated:
            problems.append(
                f"{where}: committed = {committed} but only {allocated} rows are allocated"
            )
            return None
        # committed rows, in blocks: finite vectors, matching CRCs; collect keys for uniqueness
        row_bytes = dim * np.dtype(dtype).itemsize
        block = max(1, _READ_BLOCK_BYTES // max(1, row_bytes))
        all_keys = np.empty(committed, _VOID)
        nonfinite = bad_crc = 0
        first_nonfinite = first_bad_crc = None
        for lo in range(0, committed, block):
            hi = min(committed, lo + block)
            k, v, c = dsets["keys"][lo:hi], dsets["vectors"][lo:hi], dsets["crc"][lo:hi]
            all_keys[lo:hi] = _void(k)
            nf = np.flatnonzero(~np.isfinite(v).all(axis=1))
            if len(nf):
                nonfinite += len(nf)
                first_nonfinite = (
                    first_nonfinite if first_nonfinite is not None else lo + int(nf[0])
                )
            bc = np.flatnonzero(_row_crcs(k, v) != c)
            if len(bc):
                bad_crc += len(bc)
                first_bad_crc = first_bad_crc if first_bad_crc is not None else lo + int(bc[0])
        if nonfinite:
            problems.append(
                f"{where}: {nonfinite} committed rows hold NaN or inf (first row {first_nonfinite})"
            )
        if bad_crc:
            problems.append(
                f"{where}: {bad_crc} committed rows fail their checksum (first row {first_bad_crc})"
            )
        if committed > 1:
            s = np.sort(all_keys)
            dup = int(np.count_nonzero(s[1:] == s[:-1]))
            if dup:
                problems.append(
                    f"{where}: {dup} duplicate keys among the {committed} committed rows"
                )
        return {
            "fingerprint": name,
            "name": spec.get("name") if isinstance(spec, dict) else None,
            "dim": dim,
            "dtype": dtype,
            "rows": committed,
            "allocated": allocated,
            "bytes": int(sum(d.id.get_storage_size() for d in dsets.values())),
        }

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        fingerprint: str,
        keys: Sequence[bytes] | np.ndarray,
        vectors: np.ndarray,
        *,
        spec: Mapping[str, Any],
        forwarded: int = 0,
    ) -> int:
        """Append the rows whose keys are not stored yet; return how many were appended.

        Parameters
        ----------
        fingerprint : str
            Backbone fingerprint (64 lowercase hex characters).
        keys : sequence of 32-byte bytes, or (n, 32) uint8 array
            Content digests. A key repeated within the call is stored once (first row wins);
            a key already in the file is skipped (its stored vector is kept). Presence is
            re-checked under the exclusive lock, so concurrent writers store each key once.
        vectors : array-like of float, shape (n, dim)
            Converted to float32, then to the storage dtype (float16 groups: a numpy cast,
            never h5py's conversion).
        spec : dict
            JSON-serializable description of the backbone. Stored when the group is created;
            later puts must give an equal spec, except for the free-form fields in
            :data:`SPEC_FREE_FIELDS`. A ``"fingerprint"`` field, if present, must equal
            ``fingerprint``.
        forwarded : int, default 0
            How many of these vectors a forward pass computed just now; added to the
            group's audit counter (:meth:`forwarded`), so that "each image was forwarded
            once" can be checked across processes: the counter equals :meth:`count`.

        Returns
        -------
        int
            Rows appended.

        Raises
        ------
        StoreError
            NaN/inf rows (nothing is stored), values beyond float16 range in a float16 group,
            malformed keys or shapes, ``readonly=True``, a storage dtype that differs from
            the existing group's, or a lock timeout.
        FingerprintMismatchError
            The spec differs from the stored one, or ``dim`` differs from the group's.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> keys = [b"a" * 32, b"b" * 32]
        >>> store.put("ab" * 32, keys, np.ones((2, 3), np.float32), spec={"name": "m"})
        2
        >>> store.put("ab" * 32, keys, np.ones((2, 3), np.float32), spec={"name": "m"})
        0
        """
        fp = _check_fp(fingerprint)
        k = _as_keys(keys)
        v = self._as_vectors(vectors, len(k))
        spec_obj, spec_json = _canonical_spec(spec)
        if "fingerprint" in spec_obj and spec_obj["fingerprint"] != fp:
            raise FingerprintMismatchError(
                f"spec['fingerprint'] = {spec_obj['fingerprint']!r} but the vectors are being "
                f"stored under {fp!r}"
            )
        if len(k) == 0:
            return 0
        kv = _void(k)
        _, first = np.unique(kv, return_index=True)
        if len(first) < len(kv):
            first.sort()
            k, v = k[first], v[first]
        stored = self._to_storage(v)
        with self._writing() as f:
            g = self._group(f, fp)
            if g is None:
                g = self._create_group(f, fp, spec_json, v.shape[1], len(k))
            else:
                self._check_compatible(g, fp, spec_obj, v.shape[1])
            meta = self._meta(g)
            idx = self._index(g, fp, meta)
            absent = idx.lookup(_void(k)) < 0
            appended = 0
            if absent.any():
                if not absent.all():
                    k, stored = k[absent], stored[absent]
                appended = self._append(f, g, idx, meta, k, stored)
        if forwarded:
            # After the commit: a crash in between under-counts, never over-counts.
            self._add_forwarded(fp, forwarded)
        return appended

    def forwarded(self, fingerprint: str) -> int:
        """Total vectors that forward passes offered to :meth:`put` for ``fingerprint``.

        Equal to :meth:`count` when no image was ever forwarded twice (by any
        process); larger by the number of wasted duplicate forwards otherwise.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={}, forwarded=1)
        >>> store.forwarded("ab" * 32), store.count("ab" * 32)
        (1, 1)
        """
        fp = _check_fp(fingerprint)
        with self._reading() as f:
            g = self._group(f, fp)
            return 0 if g is None else int(g.attrs.get("forwarded", 0))

    def _as_vectors(self, vectors: Any, n: int) -> np.ndarray:
        v = np.asarray(vectors)
        if v.dtype.kind not in "fiub":
            raise StoreError(f"vectors must be a real float array, got dtype {v.dtype}")
        if v.ndim != 2:
            raise StoreError(f"vectors must be 2-D (n, dim), got shape {v.shape}")
        if v.shape[0] != n:
            raise StoreError(f"got {n} keys but {v.shape[0]} vector rows")
        if v.shape[1] < 1:
            raise StoreError(f"vectors must have at least one column, got shape {v.shape}")
        v = np.ascontiguousarray(v, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
        if len(bad):
            raise StoreError(
                f"{len(bad)} of {n} vector rows contain NaN or inf (first: row {int(bad[0])}); "
                "nothing was stored"
            )
        return v

    def _to_storage(self, v: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return v
        # Cast in numpy: h5py 3.14's own float32 -> 'f2' conversion stores wrong values.
        with np.errstate(over="ignore"):  # overflow becomes inf, reported below
            h = v.astype(np.float16)
        bad = np.flatnonzero(~np.isfinite(h).all(axis=1))
        if len(bad):
            raise StoreError(
                f"{len(bad)} of {len(v)} vector rows exceed the float16 range (|x| > 65504; "
                f"first: row {int(bad[0])}); store them with dtype='float32'. Nothing was stored"
            )
        return h

    def check_compatible(
        self, fingerprint: str, spec: Mapping[str, Any], dim: int | None = None
    ) -> None:
        """Raise if the group of ``fingerprint`` was stored with another spec or ``dim``.

        Reading vectors never compared specs, so a group written under a backbone's
        fingerprint with another backbone's spec or width (a hand-edited or foreign file)
        was served silently -- or, with another ``dim``, crashed deep inside numpy.
        Robustness fix (tests/robustness): the engine calls this once per ``embed``,
        before it reads any vector. Nothing happens when the group does not exist.

        Raises
        ------
        FingerprintMismatchError
            The stored spec differs (free-form fields aside) or the dim differs.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={"name": "m"})
        >>> store.check_compatible("ab" * 32, {"name": "m"}, 2)
        >>> store.check_compatible("ab" * 32, {"name": "n"}, 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        featx.errors.FingerprintMismatchError: ...differing fields: name: stored 'm', given 'n'...
        """
        fp = _check_fp(fingerprint)
        spec_obj, _ = _canonical_spec(spec)
        with self._reading() as f:
            g = self._group(f, fp)
            if g is not None:
                self._check_compatible(g, fp, spec_obj, dim, check_dtype=False)

    def _check_compatible(
        self, g: h5py.Group, fp: str, spec_obj: dict | None, dim: int | None,
        check_dtype: bool = True,
    ) -> None:
        meta = self._meta(g)
        if spec_obj is not None:
            try:
                stored = json.loads(meta["spec"])
            except json.JSONDecodeError as exc:
                raise StoreError(
                    f"{self.path!r}: the spec of group {fp} is not valid JSON: {exc}"
                ) from exc
            diff = _spec_diff(stored if isinstance(stored, dict) else {}, spec_obj)
            if diff:
                raise FingerprintMismatchError(
                    f"{self.path!r}: backbone {fp} was stored with another spec; differing fields: "
                    + "; ".join(diff)
                    + ". Same fingerprint, different spec: the fingerprint does not identify "
                    "the backbone"
                )
        if dim is not None and dim != meta["dim"]:
            raise FingerprintMismatchError(
                f"{self.path!r}: backbone {fp} stores {meta['dim']}-dimensional vectors, got "
                f"{dim}-dimensional ones"
            )
        if check_dtype and meta["dtype"] != self.dtype:
            raise StoreError(
                f"{self.path!r}: backbone {fp} is stored as {meta['dtype']}, but this "
                f"EmbeddingStore was created with dtype={self.dtype!r}; vectors are not "
                f"converted silently. Open it with EmbeddingStore({self.path!r}, "
                f"dtype={meta['dtype']!r}) to append, or use another file"
            )

    def _create_group(
        self, f: h5py.File, fp: str, spec_json: str, dim: int, need: int
    ) -> h5py.Group:
        root = f.require_group(_ROOT)
        row_bytes = dim * np.dtype(self.dtype).itemsize
        chunk = _chunk_rows(row_bytes)
        cap = _round_up(max(need, chunk), chunk)
        g = root.create_group(fp)
        for name, shape, dtype in (
            ("keys", (KEY_BYTES,), np.uint8),
            ("vectors", (dim,), np.dtype(self.dtype)),
            ("crc", (), np.uint32),
        ):
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # chunks allocated at create/resize
            dcpl.set_fill_time(
                h5py.h5d.FILL_TIME_NEVER
            )  # no fill writes; rows ≥ committed are garbage
            g.create_dataset(
                name,
                shape=(cap, *shape),
                maxshape=(None, *shape),
                chunks=(chunk, *shape),
                dtype=dtype,
                dcpl=dcpl,
            )
        g.attrs["spec"] = spec_json
        g.attrs["dim"] = np.int64(dim)
        g.attrs["dtype"] = self.dtype
        g.attrs["committed"] = np.int64(0)
        g.attrs["created"] = _now_iso()
        g.attrs["uid"] = uuid.uuid4().hex
        f.flush()
        return g

    def _append(
        self,
        f: h5py.File,
        g: h5py.Group,
        idx: _KeyIndex,
        meta: dict,
        k: np.ndarray,
        stored: np.ndarray,
    ) -> int:
        m = len(k)
        c = meta["committed"]
        kds, vds, cds = g["keys"], g["vectors"], g["crc"]
        cap = min(kds.shape[0], vds.shape[0], cds.shape[0])
        if c > cap:
            raise StoreError(
                f"{self.path!r}: group {g.name} claims {c} committed rows but only {cap} are "
                "allocated"
            )
        if c + m > cap:
            new_cap = _grown_capacity(
                cap, c + m, vds.chunks[0], stored.shape[1] * stored.dtype.itemsize
            )
            for ds in (kds, vds, cds):
                ds.resize(new_cap, axis=0)
            f.flush()
        self._check_free_space(m, stored.shape[1] * stored.dtype.itemsize, vds.chunks[0], c)
        crc = _row_crcs(k, stored)
        kds[c : c + m] = k
        vds[c : c + m] = stored
        cds[c : c + m] = crc
        f.flush()  # rows are durable before they are committed
        g.attrs.modify("committed", np.int64(c + m))  # in place: no attribute delete/recreate
        f.flush()
        idx.extend(_void(k), c)
        return m

    def _check_free_space(self, rows: int, row_bytes: int, chunk_rows: int,
                          committed: int) -> None:
        """Refuse a write the file system cannot hold, before HDF5 starts it.

        HDF5 does not recover from ENOSPC in the middle of a flush: it raised twice,
        then crashed the interpreter at exit (tests/robustness/test_failure_paths.py).
        Needed: the rows, with keys and CRCs, plus a partly filled chunk at each end
        and room for metadata.
        """
        need = (rows + 2 * chunk_rows) * (row_bytes + KEY_BYTES + 4) + _METADATA_SLACK
        folder = os.path.dirname(os.path.realpath(self.path)) or "."
        try:
            st = os.statvfs(folder)
        except OSError:
            return  # cannot tell; the write itself will say
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise StoreError(
                f"no space left on {folder!r} for {rows} new vectors (about "
                f"{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free); "
                f"{committed} vectors committed in {self.path!r} stay intact")

    def merge_from(
        self, other: "str | os.PathLike | EmbeddingStore", batch: int = 8192
    ) -> dict[str, int]:
        """Copy every backbone's rows that this store lacks from another store file.

        All of the other file's groups are checked first (same spec, dim and storage dtype
        as groups already here); nothing is copied if one is incompatible. Rows are copied
        in blocks of ``batch``, each committed on its own, so an interrupted merge can be
        re-run.

        Parameters
        ----------
        other : str, os.PathLike or EmbeddingStore
            The source (opened read-only when a path).
        batch : int, default 8192

        Returns
        -------
        dict
            fingerprint → rows appended here.

        Raises
        ------
        FingerprintMismatchError
            A group exists in both files with different specs or dims.
        StoreError
            The source is missing or damaged, is this very file, or storage dtypes differ.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> d = tempfile.mkdtemp()
        >>> shard = EmbeddingStore(os.path.join(d, "shard0.h5"))
        >>> _ = shard.put("ab" * 32, [b"a" * 32, b"b" * 32], np.ones((2, 3), np.float32), spec={})
        >>> main = EmbeddingStore(os.path.join(d, "main.h5"))
        >>> main.merge_from(shard) == {"ab" * 32: 2}
        True
        """
        src = (
            other
            if isinstance(other, EmbeddingStore)
            else EmbeddingStore(
                other, readonly=True, lock_timeout=self.lock_timeout, verify_reads=self.verify_reads
            )
        )
        if self.readonly:
            raise StoreError(
                f"{self.path!r} was opened with readonly=True; refusing to merge into it"
            )
        if not src._exists():
            raise StoreError(
                f"cannot merge from {src.path!r}: no such store file (missing or empty)"
            )
        if self._exists() and os.path.samefile(src.path, self.path):
            raise StoreError(f"cannot merge {self.path!r} into itself")
        plan = []
        for fp in src.fingerprints():
            spec = src.spec(fp)
            with src._reading() as f:
                g = self._group(f, fp)
                src_dim = src._meta(g)["dim"]
            with self._reading() as f:
                g = self._group(f, fp)
                if g is not None:
                    self._check_compatible(g, fp, spec if isinstance(spec, dict) else {}, src_dim)
            plan.append((fp, spec if isinstance(spec, dict) else {}))
        counts: dict[str, int] = {}
        for fp, spec in plan:
            n = 0
            for keys, vectors in src.iter_rows(fp, batch=batch):
                n += self.put(fp, keys, vectors, spec=spec)
            counts[fp] = n
            if n:
                # Carry the shard's forward audit over (once: a re-merge appends nothing), so
                # forwarded() == count() still proves "each image forwarded once" after a merge.
                self._add_forwarded(fp, src.forwarded(fp))
        return counts

    def _add_forwarded(self, fp: str, n: int) -> None:
        if not n:
            return
        with self._writing() as f:
            g = self._group(f, fp)
            if g is None:
                return
            total = int(g.attrs.get("forwarded", 0)) + int(n)
            if "forwarded" in g.attrs:
                g.attrs.modify("forwarded", np.int64(total))
            else:
                g.attrs["forwarded"] = np.int64(total)
            f.flush()
