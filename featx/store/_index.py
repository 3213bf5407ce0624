"""The in-memory key → row index of one store group."""

from __future__ import annotations

import numpy as np

from ._format import _VOID, KEY_BYTES


# --------------------------------------------------------------------------------------
# key index
# --------------------------------------------------------------------------------------


class _KeyIndex:
    """key → row for the committed rows of one group.

    A sorted ``V32`` array (memory: 40 bytes a key) plus a small dict for recent appends,
    merged into the array when it outgrows ``max(16384, n / 8)`` entries.
    """

    __slots__ = ("token", "n", "keys", "rows", "delta", "checked")

    def __init__(self, token: tuple):
        self.token = token
        self.n = 0
        self.keys = np.empty(0, _VOID)
        self.rows = np.empty(0, np.int64)
        self.delta: dict[bytes, int] = {}
        # Rows whose checksum this object has verified. Committed rows are never
        # rewritten under one token (a replaced group gets a new token, hence a new
        # index), so a grid search re-reading the same vectors per fold checks each once.
        self.checked = np.zeros(0, dtype=bool)

    def unchecked(self, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` (sorted, committed) have not had their checksum verified here."""
        if len(self.checked) < self.n:
            self.checked = np.concatenate(
                [self.checked, np.zeros(self.n - len(self.checked), dtype=bool)])
        return ~self.checked[rows]

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

    def contains(self, q: np.ndarray) -> np.ndarray:
        """Which of the ``V32`` keys ``q`` the index holds; safe while a thread extends it.

        Reads each attribute once: ``extend`` replaces the sorted array whole and the
        delta dict is copied atomically, so the answer comes from one consistent state.
        """
        out = np.zeros(len(q), dtype=bool)
        if len(q) == 0:
            return out
        sorted_keys, delta = self.keys, self.delta.copy()
        if len(sorted_keys):
            pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
            out |= sorted_keys[pos] == q
        if delta:
            raw = q.tobytes()
            out |= np.fromiter((raw[i:i + KEY_BYTES] in delta
                                for i in range(0, len(raw), KEY_BYTES)), bool, len(q))
        return out
