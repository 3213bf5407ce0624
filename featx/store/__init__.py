"""Crash-safe HDF5 store of embedding vectors, keyed by image content × backbone fingerprint.

Layout of a store file (format version :data:`STORE_VERSION`)::

    /                              attrs: featx_store_version=2, featx_version
    /backbones/<fingerprint>/      one group per backbone fingerprint (64 lowercase hex chars)
        keys     (A, 32) uint8     sha256 digests of image content, one row per vector
        vectors  (A, dim) f4 | f2  the embeddings, in the storage dtype of the group
        crc      (A,) uint32       CRC-32 of each row's key bytes, then its stored vector bytes
        attrs: spec (JSON of the backbone spec), dim, dtype ("float32" | "float16"),
               committed (rows a reader may trust), created (ISO-8601 UTC), uid (random hex)
    /sources/                      where the engine read each key (format 2): the last row
        keys     (A, 32) uint8     of a key wins; attrs: committed
        paths    (A,) str          absolute paths, UTF-8

Format 1 (no ``/sources``) is read as a store without paths; its first write adds the
table and sets format 2.

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

import os
import threading

from featx.errors import InvalidParameterError

from ._export import EXPORT_FORMATS, export_vectors, find_group
from ._format import KEY_BYTES, SPEC_FREE_FIELDS, STORE_VERSION, SUPPORTED_DTYPES
from ._store import EmbeddingStore

_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_store(cache):
    """This process's one :class:`EmbeddingStore` for ``cache`` (a path, a store, or None).

    Every estimator and fine-tuner that names the same file gets the same object,
    so the in-memory key index is built once and survives the many ``transform``
    calls of a grid search.

    Examples
    --------
    >>> import os, tempfile
    >>> from featx.store import shared_store
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> shared_store(path) is shared_store(path), shared_store(None)
    (True, None)
    """
    if cache is None or isinstance(cache, EmbeddingStore):
        return cache
    if not isinstance(cache, (str, os.PathLike)):
        raise InvalidParameterError(
            f"cache must be a path to an HDF5 store (or None); "
            f"got {type(cache).__name__}: {cache!r}")
    path = os.path.abspath(os.fspath(cache))
    with _SHARED_LOCK:
        store = _SHARED.get(path)
        if store is None:
            store = _SHARED[path] = EmbeddingStore(path)
        return store


def forget_shared_stores() -> None:
    """Drop the handles :func:`shared_store` keeps (their indexes are rebuilt on next use).

    Examples
    --------
    >>> from featx.store import forget_shared_stores
    >>> forget_shared_stores()
    """
    with _SHARED_LOCK:
        _SHARED.clear()

__all__ = [
    "STORE_VERSION",
    "KEY_BYTES",
    "SUPPORTED_DTYPES",
    "SPEC_FREE_FIELDS",
    "EmbeddingStore",
    "EXPORT_FORMATS",
    "export_vectors",
    "find_group",
    "forget_shared_stores",
    "shared_store",
]
