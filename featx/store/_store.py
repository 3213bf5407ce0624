"""The :class:`EmbeddingStore`: a path, its locks, and the read and write halves joined.

Rooms of the store: ``_format`` (constants, key and spec helpers), ``_layout`` (the
file layout: one schema table, open, create, append, read rows), ``_index`` (the
in-memory key index), ``_lock`` (the file lock and turnstile), ``_read`` and
``_write`` (the public operations), ``_merge``, ``_fsck`` (``verify``, ``info``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import h5py

from featx.errors import StoreError

from . import _layout
from ._format import _normalize_dtype
from ._fsck import store_info, verify_store
from ._index import _KeyIndex
from ._lock import _FileLock
from ._read import StoreReads
from ._sources import StoreSources
from ._write import StoreWrites


# --------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------


class EmbeddingStore(StoreReads, StoreWrites, StoreSources):
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
        Each row is checked the first time this object reads it (committed rows are
        never rewritten; a re-created group is checked afresh), so a grid search that
        re-reads the same vectors per fold pays once; :meth:`verify` checks every row.

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
    crc (A,) uint32}`` and ``/sources/{keys (A,32) uint8, paths (A,) str}`` (the last
    path each key was read from: :meth:`remember_paths`, :meth:`paths_of`); group attrs ``spec`` (JSON), ``dim``, ``dtype``, ``committed``,
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
        self._metas: dict[str, dict] = {}  # group name -> its attributes (see read_meta)
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
            self._metas.clear()

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
        return _layout.open_file(self.path, mode)

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
                _layout.create_file(self.path)
            f = self._open("r+")
            no_space = False
            try:
                _layout.migrate(f)
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

    # -- the whole file ------------------------------------------------------------------

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
        return store_info(self)

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
        return verify_store(self)
