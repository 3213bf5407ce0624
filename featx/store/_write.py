"""Writing a store: the checked, deduplicated append (``put``) and merging.

:class:`StoreWrites` is one half of :class:`~featx.store.EmbeddingStore` (the other is
:class:`~featx.store._read.StoreReads`); every write runs inside the store's
``_writing()`` context: exclusive lock, file open read-write, ENOSPC handled.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from featx.errors import FingerprintMismatchError, StoreError

from . import _layout
from ._format import _as_keys, _canonical_spec, _check_fp, _spec_diff, _void
from ._merge import merge_into


class StoreWrites:
    """The write operations of :class:`~featx.store.EmbeddingStore` (exclusive lock)."""

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
                g = _layout.create_group(f, fp, spec_json, v.shape[1], len(k), self.dtype)
            else:
                self._check_compatible(g, fp, spec_obj, v.shape[1])
            meta = self._meta(g)
            idx = self._index(g, fp, meta)
            absent = idx.lookup(_void(k)) < 0
            appended = 0
            if absent.any():
                if not absent.all():
                    k, stored = k[absent], stored[absent]
                appended = _layout.append_rows(f, g, meta, k, stored, self.path)
                idx.extend(_void(k), meta["committed"])
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
        check_dtype: bool = True, meta: dict | None = None,
    ) -> None:
        meta = self._meta(g) if meta is None else meta
        if spec_obj is not None:
            stored = _layout.read_spec(meta, fp, self.path)
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

    def merge_from(
        self, other: "str | os.PathLike | StoreWrites", batch: int = 8192
    ) -> dict[str, int]:
        """Copy every backbone's rows that this store lacks from another store file,
        and the paths it recorded (the other file's win: it was written later).

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
        return merge_into(self, other, batch)

    def drop(self, fingerprint: str) -> int:
        """Delete one group — its vectors, keys and spec; returns the rows it held.

        For a group that is damaged or no longer wanted (another resize policy,
        an old weights file). Other processes notice at their next read: the
        group is gone, or was re-created with a new token. HDF5 does not shrink
        the file; ``h5repack`` does, if the space matters.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={})
        >>> store.drop("ab" * 32), store.fingerprints()
        (1, [])
        """
        fp = _check_fp(fingerprint)
        with self._writing() as f:
            g = self._group(f, fp)
            if g is None:
                raise StoreError(f"{self.path!r} holds no group {fp}")
            rows = int(self._meta(g)["committed"])
            del f[g.name]
            f.flush()
        self._indexes.pop(fp, None)
        return rows

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
