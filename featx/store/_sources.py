"""Where the images behind the keys were seen: one path per content key.

Vectors are keyed by content, so a store alone cannot say which file a vector came
from. Similar-image search and the audit's findings must answer with paths, so
format 2 adds one table shared by every backbone group::

    /sources/keys   (A, 32) uint8     content key
    /sources/paths  (A,) str (UTF-8)  absolute path where the engine last read it
    /sources        attrs: committed

Rows are appended with the store's commit protocol (write, flush, then advance
``committed``); a key seen again at another path gets a new row, and the last row of
a key wins, so a moved folder is followed. A format-1 file is read as a store with no
paths, and its first write adds the table and sets format 2 (see
:func:`~featx.store._layout.migrate`).
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from featx.errors import StoreError

from ._format import KEY_BYTES, _as_keys, _round_up

SOURCES = "sources"
_CHUNK = 1024


def create_sources(f: h5py.File) -> h5py.Group:
    """The empty ``/sources`` table (idempotent)."""
    g = f.get(SOURCES)
    if isinstance(g, h5py.Group):
        return g
    g = f.create_group(SOURCES)
    g.create_dataset("keys", shape=(0, KEY_BYTES), maxshape=(None, KEY_BYTES),
                     chunks=(_CHUNK, KEY_BYTES), dtype=np.uint8)
    g.create_dataset("paths", shape=(0,), maxshape=(None,), chunks=(_CHUNK,),
                     dtype=h5py.string_dtype("utf-8"))
    g.attrs["committed"] = np.int64(0)
    return g


def read_sources(f: Optional[h5py.File], path: str) -> Dict[bytes, str]:
    """Key -> last path recorded (empty for a format-1 file or no file)."""
    g = None if f is None else f.get(SOURCES)
    if not isinstance(g, h5py.Group):
        return {}
    try:
        n = int(g.attrs["committed"])
        keys = g["keys"][:n]
        paths = g["paths"][:n]
    except (KeyError, OSError, ValueError) as exc:
        raise StoreError(f"{path!r}: the /sources table is damaged ({exc})") from exc
    if len(keys) != n or len(paths) != n:
        raise StoreError(f"{path!r}: /sources claims {n} rows but holds "
                         f"{len(keys)} keys and {len(paths)} paths")
    return {k.tobytes(): p.decode("utf-8") if isinstance(p, bytes) else str(p)
            for k, p in zip(keys, paths)}


def append_sources(f: h5py.File, rows: List[Tuple[bytes, str]]) -> int:
    """Append ``(key, path)`` rows and commit them; returns the count."""
    g = create_sources(f)
    n = int(g.attrs["committed"])
    m = len(rows)
    if not m:
        return 0
    need = _round_up(n + m, _CHUNK)
    for name in ("keys", "paths"):
        if g[name].shape[0] < n + m:
            g[name].resize(need, axis=0)
    g["keys"][n:n + m] = np.frombuffer(b"".join(k for k, _ in rows), np.uint8).reshape(m, -1)
    g["paths"][n:n + m] = np.array([p for _, p in rows], dtype=object)
    f.flush()  # rows are durable before they are committed
    g.attrs.modify("committed", np.int64(n + m))
    f.flush()
    return m


def verify_sources(f: h5py.File, problems: List[str]) -> int:
    """Check the table's shape; append problems; return its committed row count."""
    g = f.get(SOURCES)
    if g is None:
        return 0
    if not isinstance(g, h5py.Group) or "committed" not in g.attrs:
        problems.append(f"/{SOURCES}: not a group with a 'committed' attribute")
        return 0
    n = int(g.attrs["committed"])
    keys, paths = g.get("keys"), g.get("paths")
    if not isinstance(keys, h5py.Dataset) or keys.shape[1:] != (KEY_BYTES,):
        problems.append(f"/{SOURCES}/keys: missing or not ({KEY_BYTES},) rows")
        return 0
    if not isinstance(paths, h5py.Dataset) or paths.ndim != 1:
        problems.append(f"/{SOURCES}/paths: missing or not one string per row")
        return 0
    if n < 0 or n > min(keys.shape[0], paths.shape[0]):
        problems.append(f"/{SOURCES}: committed = {n} but {keys.shape[0]} keys and "
                        f"{paths.shape[0]} paths are allocated")
    return n


class StoreSources:
    """The path table of :class:`~featx.store.EmbeddingStore` (format 2)."""

    def remember_paths(self, keys: Sequence[bytes] | np.ndarray,
                       paths: Iterable[str | os.PathLike]) -> int:
        """Record where the images of ``keys`` were read; return how many rows were new.

        Paths are stored absolute. A ``(key, path)`` pair the file already holds
        as the key's latest path costs nothing but a lookup (this object
        remembers what it read), so the engine calls this after every embed.

        Parameters
        ----------
        keys : sequence of 32-byte digests or (n, 32) uint8 array
        paths : sequence of str, one per key

        Returns
        -------
        int
            Rows appended.

        Examples
        --------
        >>> import os, tempfile
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> store.remember_paths([b"a" * 32], ["/data/cat.jpg"])
        1
        >>> store.remember_paths([b"a" * 32], ["/data/cat.jpg"])
        0
        >>> store.paths_of([b"a" * 32, b"b" * 32])
        ['/data/cat.jpg', None]
        """
        if isinstance(keys, list) and all(isinstance(k, bytes) for k in keys):
            key_list = keys  # the engine's own: no array round trip
        else:
            key_list = [k.tobytes() for k in _as_keys(keys)]
        paths = [os.fspath(p) for p in paths]
        if len(paths) != len(key_list):
            raise StoreError(f"remember_paths: {len(key_list)} keys but {len(paths)} paths")
        # Pairs this object already recorded, as given, cost a set lookup: a grid search
        # hands the same files over once per fold and candidate (normalising their paths
        # again took 1.5 of 8.5 ms of an all-cached engine call on 400 files).
        seen = self.__dict__.setdefault("_pairs_recorded", set())
        fresh = [(k, p) for k, p in zip(key_list, paths) if (k, p) not in seen]
        if not fresh:
            return 0
        known = self._known_paths(refresh=False)
        wanted: Dict[bytes, str] = {}
        for k, p in fresh:
            full = os.path.abspath(p)
            if known.get(k) != full:
                wanted[k] = full
        if not wanted:
            seen.update(fresh)
            return 0
        with self._writing() as f:
            current = read_sources(f, self.path)  # another process may have written
            rows = [(k, p) for k, p in wanted.items() if current.get(k) != p]
            written = append_sources(f, rows)
            current.update(rows)
            self._sources_memo = current
        seen.update(fresh)
        return written

    def paths_of(self, keys: Sequence[bytes] | np.ndarray) -> List[Optional[str]]:
        """The last recorded path of each key (None where none was recorded).

        Examples
        --------
        >>> import os, tempfile
        >>> from featx.store import EmbeddingStore
        >>> EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5")).paths_of([b"x" * 32])
        [None]
        """
        known = self._known_paths(refresh=True)
        return [known.get(k.tobytes()) for k in _as_keys(keys)]

    def paths_of_all(self) -> Dict[bytes, str]:
        """Every key with a recorded path, and that path.

        Examples
        --------
        >>> import os, tempfile
        >>> from featx.store import EmbeddingStore
        >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> _ = store.remember_paths([b"a" * 32], ["/data/cat.jpg"])
        >>> store.paths_of_all() == {b"a" * 32: "/data/cat.jpg"}
        True
        """
        return dict(self._known_paths(refresh=True))

    def _known_paths(self, refresh: bool) -> Dict[bytes, str]:
        memo = getattr(self, "_sources_memo", None)
        if memo is None or refresh:
            with self._reading() as f:
                memo = read_sources(f, self.path)
            self._sources_memo = memo
        return memo
