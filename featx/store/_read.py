"""Reading a store: fingerprints, specs, counts, key lookups and vectors.

:class:`StoreReads` is one half of :class:`~featx.store.EmbeddingStore` (the other is
:class:`~featx.store._write.StoreWrites`); it relies on the store's ``path``,
``verify_reads``, key indexes and ``_reading()`` lock context.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

from featx.errors import StoreError

from . import _layout
from ._format import _FP_RE, _KEY_READ_ROWS, _ROOT, _as_keys, _canonical_spec, _check_fp, _void
from ._index import _KeyIndex


class StoreReads:
    """The read operations of :class:`~featx.store.EmbeddingStore` (shared lock, or none)."""

    _group = staticmethod(_layout.group)

    def _meta(self, g: h5py.Group) -> dict:
        # The fixed attributes of a group are read once per token (see read_meta).
        self._metas[g.name] = _layout.read_meta(g, self.path, self._metas.get(g.name))
        return self._metas[g.name]

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

    def _read_rows(self, g: h5py.Group, fp: str, meta: dict, rows: np.ndarray,
                   index: _KeyIndex | None = None) -> np.ndarray:
        return _layout.read_rows(g, fp, meta, rows, self.verify_reads, self.path, index)

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
            return _layout.read_spec(self._meta(g), fp, self.path)

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
        q = _void(_as_keys(keys))
        idx = self._indexes.get(_check_fp(fingerprint))
        return np.zeros(len(q), dtype=bool) if idx is None else idx.contains(q)

    def get(
        self, fingerprint: str, keys: Sequence[bytes] | np.ndarray,
        spec: Mapping[str, Any] | None = None, dim: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``keys`` as float32, NaN rows where a key is absent.

        Parameters
        ----------
        fingerprint : str
            Backbone fingerprint.
        keys : sequence of 32-byte bytes, or (n, 32) uint8 array
        spec, dim : optional
            When given, the group is checked as :meth:`check_compatible` checks it,
            in the same read (one file open instead of two: the engine's all-hit
            path reads a cached set this way once per call).

        Returns
        -------
        vectors : numpy.ndarray of float32, shape (n, dim)
            In input order; ``dim`` is 0 when the backbone has no group in the file.
        found : numpy.ndarray of bool, shape (n,)

        Raises
        ------
        StoreError
            If a row's checksum does not match (``verify_reads=True``) or the file is damaged.
        FingerprintMismatchError
            With ``spec``: the group was stored with another spec or ``dim``.

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
            if spec is not None:
                self._check_compatible(g, fp, _canonical_spec(spec)[0], dim, check_dtype=False,
                                       meta=meta)
            index = self._index(g, fp, meta)
            rows = index.lookup(kv)
            found = rows >= 0
            if not found.any():
                return np.full((n, meta["dim"]), np.nan, np.float32), found
            urows, inverse = np.unique(rows[found], return_inverse=True)
            vals = self._read_rows(g, fp, meta, urows, index)
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
