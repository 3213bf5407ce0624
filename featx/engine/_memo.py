"""The process memo: vectors computed in this process when there is no store to keep them."""

from __future__ import annotations

import collections
import os
import threading
from typing import Optional, Tuple

import numpy as np

__all__ = ["MEMO", "clear_memo"]


class _Memo:
    """Vectors computed in this process, by (fingerprint, key), with a byte budget.

    With ``store=None`` this is what keeps a GridSearchCV in one process from
    re-embedding the same images for every candidate and fold.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._data: "collections.OrderedDict[Tuple[str, bytes], np.ndarray]" = \
            collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, fingerprint: str, key: bytes) -> Optional[np.ndarray]:
        with self._lock:
            vec = self._data.get((fingerprint, key))
            if vec is not None:
                self._data.move_to_end((fingerprint, key))
            return vec

    def put(self, fingerprint: str, key: bytes, vector: np.ndarray) -> None:
        if self.max_bytes <= 0:
            return
        with self._lock:
            item = (fingerprint, key)
            if item in self._data:
                return
            self._data[item] = vector
            self._bytes += vector.nbytes
            while self._bytes > self.max_bytes and self._data:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


MEMO = _Memo(int(float(os.environ.get("FEATX_MEMO_MB", "1024")) * 2**20))


def clear_memo() -> None:
    """Forget every vector the process memo holds (used when ``store=None``).

    Examples
    --------
    >>> from featx.engine import clear_memo
    >>> clear_memo()
    """
    MEMO.clear()
