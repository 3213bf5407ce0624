"""The :class:`EmbeddingStore`: a path, a lock and the commit protocol (see :mod:`featx.store`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from featx.errors import FingerprintMismatchError, StoreError

from ._format import (_FP_RE, _GAP_BYTES, _KEY_READ_ROWS, _METADATA_SLACK, _RDCC_BYTES,
                      _READ_BLOCK_BYTES, _ROOT, KEY_BYTES, STORE_VERSION, _as_keys,
                      _canonical_spec, _check_fp, _chunk_rows, _featx_version,
                      _grown_capacity, _normalize_dtype, _now_iso, _round_up, _row_crcs,
                      _runs, _spec_diff, _void)
from ._fsck import verify_group
from ._index import _KeyIndex
from ._lock import _FileLock


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
                            entry = verify_group(root, name, problems)
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
