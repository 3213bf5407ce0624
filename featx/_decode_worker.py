"""A decode worker process of :class:`featx.engine.DecodePool` (``kind="processes"``).

Started by the pool (``_WORKER_MAIN`` in :mod:`featx.engine._decode`), or by hand
with ``python -m featx._decode_worker``: it reads frames of jobs ``("jobs",
[(source, size, policy, name, key), ...], pixel_bytes)`` as length-prefixed pickles on stdin and
answers each frame with one list of ``(pixels, error, seconds)`` on stdout,
until stdin closes. Several images per frame keep the worker busy while the
parent copies the last frame's pixels out, and cost the parent one round trip
for all of them. It imports only
Pillow and numpy (through :mod:`featx.images`), never a deep-learning
framework, so it starts in well under a second.

Neither pixels nor encoded bytes travel through the pipe: the parent first
sends ``("map", path, nbytes)``, a file (in ``/dev/shm`` where there is one)
that both sides map. Its first ``pixel_bytes`` hold the frame's decoded pixels,
which the worker writes one after another, answering ``(("slot", offset,
shape), error, seconds)`` per image; the rest holds the frame's encoded images,
which the parent copies in and names by ``("slot", offset, nbytes)`` in place of
the bytes. The parent deletes the file once both have mapped it, so nothing is
left behind whatever happens to either process.

It lives outside :mod:`featx.engine` so that starting it does not import the
engine (h5py, the store, the backbones).
"""

from __future__ import annotations

import mmap
import pickle
import signal
import struct
import sys
import time
from typing import NamedTuple, Optional

import numpy as np

from .errors import FeatxError, ImageDecodeError
from .images import decode_image, read_bytes, source_key

_HEADER = struct.Struct(">Q")


class DecodeResult(NamedTuple):
    """One decoded image: ``pixels`` uint8 ``(H, W, 3)``, or None with ``error`` set."""

    pixels: Optional[np.ndarray]
    error: Optional[FeatxError]
    seconds: float


def decode_one(source, size, policy, name, key: Optional[bytes] = None) -> DecodeResult:
    """Decode in this process; a FeatxError becomes the result's error, not a raise.

    With ``key`` (a path source only), the file is read here and must still have
    the content the caller keyed: a worker process reads a file too large for its
    shared input slot itself rather than receive its bytes through a pipe, and
    the check keeps every vector stored under the digest of the very bytes it
    was computed from.
    """
    t = time.perf_counter()
    try:
        if key is not None:
            data = read_bytes(source)
            if source_key(source, data=data) != key:
                raise ImageDecodeError(
                    f"{name or source}: the file changed while it was being embedded (its "
                    "bytes no longer match the ones that were hashed); embed it again")
            source = data
        pixels = decode_image(source, size, policy=policy, name=name)
        return DecodeResult(pixels, None, time.perf_counter() - t)
    except FeatxError as exc:
        return DecodeResult(None, exc, time.perf_counter() - t)


def write_frame(stream, obj) -> None:
    """One length-prefixed pickle frame (the worker pipe protocol)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream):
    """The next frame; ``EOFError`` when the other end has closed."""
    header = _read_exactly(stream, _HEADER.size)
    return pickle.loads(_read_exactly(stream, _HEADER.unpack(header)[0]))


def _read_exactly(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("decode worker pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def map_slot(path: str, nbytes: int) -> mmap.mmap:
    """Map the shared pixel slot file at ``path`` (both processes call it)."""
    with open(path, "r+b") as handle:
        return mmap.mmap(handle.fileno(), nbytes)


def main() -> None:
    # Ctrl-C is the parent's to handle: it closes the pool, which ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt the reply stream
    slot: Optional[mmap.mmap] = None
    while True:
        try:
            job = read_frame(requests)
        except EOFError:  # the parent closed the pool, or died
            return
        if job[0] == "map":  # ("map", path, nbytes)
            slot = map_slot(job[1], job[2])
            write_frame(replies, ("mapped",))
            continue
        write_frame(replies, _decode_frame(job[1], slot, job[2]))


def _decode_frame(jobs, slot: Optional[mmap.mmap], pixel_bytes: int) -> list:
    """Decode each job; pixels go into the first ``pixel_bytes`` of ``slot`` back to
    back while they fit, encoded inputs named ``("slot", offset, nbytes)`` are read
    from it."""
    replies, offset = [], 0
    for source, size, policy, name, key in jobs:
        if isinstance(source, tuple):  # ("slot", offset, nbytes): the parent copied it in
            source = slot[source[1]:source[1] + source[2]]
        result = decode_one(source, size, policy, name, key)
        error = None if result.error is None else (type(result.error).__name__,
                                                   str(result.error))
        pixels = None if result.pixels is None else np.ascontiguousarray(result.pixels)
        if pixels is not None and slot is not None and offset + pixels.nbytes <= pixel_bytes:
            np.frombuffer(slot, np.uint8, count=pixels.nbytes, offset=offset)[:] = \
                pixels.reshape(-1)
            pixels, offset = ("slot", offset, pixels.shape), offset + pixels.nbytes
        replies.append((pixels, error, result.seconds))
    return replies


if __name__ == "__main__":
    main()
