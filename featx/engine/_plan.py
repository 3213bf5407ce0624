"""Key → dedup → store lookup, in one function for the engine and the Dask driver.

Given the content keys of a batch of inputs, :func:`plan` finds the unique
keys (in order of first appearance), which inputs share each one, and which
the store already holds — so nothing stored or repeated is decoded, forwarded
or sent to a worker. It works on numpy arrays of 32-byte digests, not dicts of
bytes, so planning ten million inputs stays within memory.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["Plan", "plan"]

KEY_BYTES = 32


@dataclasses.dataclass
class Plan:
    """What :func:`plan` found; positions ``u`` index the unique keys.

    Attributes
    ----------
    keys : numpy.ndarray of uint8, shape (u, 32)
        Unique keys in order of first appearance.
    first : numpy.ndarray of int
        Input index of each unique key's first appearance.
    stored : numpy.ndarray of bool, shape (u,)
        The key is in the store already.
    rows : numpy.ndarray of int
        Input indices that had a key (the others failed to read).
    group : numpy.ndarray of int
        For each of ``rows``, the position of its unique key.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.engine import plan
    >>> keys = [b"a" * 32, b"b" * 32, b"a" * 32]
    >>> todo = plan(keys, None, "fp")
    >>> len(todo.keys), todo.first.tolist(), todo.group.tolist()
    (2, [0, 1], [0, 1, 0])
    """

    keys: np.ndarray
    first: np.ndarray
    stored: np.ndarray
    rows: np.ndarray
    group: np.ndarray
    _members: Optional[List[List[int]]] = dataclasses.field(default=None, repr=False)

    @property
    def missing(self) -> np.ndarray:
        """Positions of the unique keys the store does not hold."""
        return np.flatnonzero(~self.stored)

    def key(self, u: int) -> bytes:
        """Unique key ``u`` as bytes."""
        return self.keys[u].tobytes()

    def members(self, u: int) -> List[int]:
        """Input indices whose key is unique key ``u``, in input order."""
        if self._members is None:  # all at once: one sort, not two searches per key
            sorter = np.argsort(self.group, kind="stable")
            bounds = np.searchsorted(self.group[sorter], np.arange(len(self.keys) + 1))
            ordered = self.rows[sorter].tolist()
            self._members = [ordered[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        return self._members[u]


def plan(keys: Sequence[Optional[bytes]], store=None, fingerprint: Optional[str] = None,
         *, fresh: bool = True) -> Plan:
    """Dedup ``keys`` and look the unique ones up in ``store``.

    Parameters
    ----------
    keys : sequence of bytes or None
        One 32-byte content key per input; None for inputs that could not be read.
    store : EmbeddingStore, optional
        Without one, nothing counts as stored.
    fingerprint : str, optional
        The backbone's fingerprint (required with a store).
    fresh : bool, default True
        True reads the store's key index under its lock (what other processes
        stored counts); False asks only this object's in-memory index, without
        touching the file — the engine's decode thread must not wait for the
        writer lock its own forward thread may hold.

    Returns
    -------
    Plan

    Examples
    --------
    >>> from featx.engine import plan
    >>> p = plan([b"a" * 32, b"b" * 32, None, b"a" * 32])
    >>> p.first.tolist(), p.members(0), p.stored.tolist()
    ([0, 1], [0, 3], [False, False])
    """
    rows = np.array([i for i, k in enumerate(keys) if k is not None], dtype=np.int64)
    if len(rows):
        digests = np.frombuffer(b"".join(keys[i] for i in rows), np.uint8)
        if len(digests) != KEY_BYTES * len(rows):
            raise ValueError(f"content keys must be {KEY_BYTES} bytes each")
        digests = digests.reshape(-1, KEY_BYTES)
    else:
        digests = np.empty((0, KEY_BYTES), np.uint8)
    _, first_pos, inverse = np.unique(digests.view(f"V{KEY_BYTES}").reshape(-1),
                                      return_index=True, return_inverse=True)
    order = np.argsort(first_pos, kind="stable")  # unique keys in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unique = digests[first_pos[order]]
    stored = np.zeros(len(unique), dtype=bool)
    if store is not None and len(unique):
        stored = (store.lookup(fingerprint, unique) >= 0) if fresh else \
            store.known(fingerprint, unique)
    return Plan(keys=unique, first=rows[first_pos[order]], stored=np.asarray(stored, bool),
                rows=rows, group=rank[inverse.reshape(-1)])
