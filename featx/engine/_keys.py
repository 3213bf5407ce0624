"""Content keys: sha256 of a file's bytes (arrays: bytes + shape + dtype), cached per file."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Dict, Optional, Tuple

from ..images import Source, read_bytes, source_key

__all__ = ["KEYS", "key_source", "vector_fingerprint"]


class _KeyCache:
    """Content keys of files already hashed in this process, by (path, size, mtime, inode).

    A grid search calls the engine once per fold and candidate on the same
    files; re-reading and re-hashing them each time dominated an all-cached
    call.  A file rewritten in place changes its mtime (nanoseconds) or size,
    so it is read and hashed again.
    """

    def __init__(self, max_entries: int = 500_000):
        self.max_entries = max_entries
        self._keys: Dict[tuple, bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def signature(path: str) -> Optional[tuple]:
        try:
            st = os.stat(path)
        except OSError:
            return None  # read_bytes gives the proper error
        return (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def get(self, signature: Optional[tuple]) -> Optional[bytes]:
        return None if signature is None else self._keys.get(signature)

    def put(self, signature: Optional[tuple], key: bytes) -> None:
        if signature is None:
            return
        with self._lock:
            if len(self._keys) >= self.max_entries:
                self._keys.clear()  # crude but bounded; refilled by the next pass
            self._keys[signature] = key


KEYS = _KeyCache()


def key_source(item: Source) -> Tuple[bytes, Optional[bytes]]:
    """``(key, bytes read)`` of one source; bytes are None when no read was needed.

    A file whose (path, size, mtime, inode) was keyed before in this process is
    not read again. Raises :class:`~featx.errors.ImageDecodeError` (naming the
    file) when it cannot be read.

    Examples
    --------
    >>> import numpy as np
    >>> key, data = key_source(Source(array=np.zeros((4, 4), np.uint8)))
    >>> len(key), data is None
    (32, True)
    """
    if item.array is not None:
        return source_key(item), None
    signature = KEYS.signature(item.path)
    key = KEYS.get(signature)
    if key is not None:  # a decode reads the file again only if the key is a miss
        return key, None
    data = read_bytes(item.path)
    key = source_key(item, data=data)
    KEYS.put(signature, key)
    return key, data


def vector_fingerprint(backbone_fingerprint: str, policy: str = "squash",
                       decoder: str = "cpu", precision: str = "f32") -> str:
    """The identity vectors are stored and memoised under: the backbone's, plus the
    resize policy that fitted the pixels to it, the decoder that made them and the
    precision of an inexact forward.

    Two policies, or Pillow against the GPU decoder, give different vectors from
    the same image and backbone, so they must never share a store group. The
    defaults (``"squash"``, ``"cpu"``) keep the backbone's own fingerprint, so
    every store written before policy and decoder joined the identity stays valid.

    Examples
    --------
    >>> from featx.engine import vector_fingerprint
    >>> vector_fingerprint("ab12", "squash")
    'ab12'
    >>> vector_fingerprint("ab12", "crop") == vector_fingerprint("ab12", "pad")
    False
    >>> vector_fingerprint("ab12", "squash", "gpu") == vector_fingerprint("ab12")
    False
    >>> vector_fingerprint("ab12", precision="bf16") == vector_fingerprint("ab12")
    False
    """
    if decoder not in ("cpu", "gpu"):
        raise ValueError(f"decoder must be 'cpu' or 'gpu' (resolved), got {decoder!r}")
    if policy == "squash" and decoder == "cpu" and precision == "f32":
        return backbone_fingerprint
    identity = f"{backbone_fingerprint}|resize={policy}"
    if decoder == "gpu":
        from ._gpu_decode import GPU_DECODER_ID

        identity += f"|decoder={GPU_DECODER_ID}"
    if precision != "f32":  # a forward that is not exact (OpenVINO bf16)
        identity += f"|inference={precision}"
    return hashlib.sha256(identity.encode()).hexdigest()
