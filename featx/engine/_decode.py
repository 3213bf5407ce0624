"""The one decode pool: encoded images → fixed-size ``uint8`` pixels, in parallel.

Every path that turns images into pixels for a model or a head goes through
:class:`DecodePool` — the engine, :class:`featx.sklearn.RawPixels` and the
fine-tuner's batches — so the parallelism, the error policy and the shutdown
rules live in one place.

Two kinds of workers:

``"threads"`` (default)
    Pillow releases the GIL while it decodes and resizes, so threads overlap
    well on a few cores. They stop scaling at about two cores' worth of work
    (measured on a 16-core GPU host: 1,581 img/s in 16 threads against 4,341
    in 16 processes), because the Python glue around each image holds the GIL.
``"processes"``
    Worker interpreters running :mod:`featx._decode_worker`
    that import only Pillow and numpy (never TensorFlow), fed over their
    stdin/stdout pipes, several images per frame (up to
    :data:`FRAME_IMAGES`, fewer when the queue is short so every worker gets
    some). Encoded bytes go to the worker, and its pixels come back, through a
    memory slot the two processes share, never pickled or piped (files larger
    than :data:`INPUT_SLOT_BYTES` are read by the worker itself, which checks
    they still have the key the parent hashed). Not ``multiprocessing``: ``fork`` is unsafe once a
    framework has started its threads, and ``spawn``/``forkserver`` re-import
    the user's ``__main__`` (a script without ``if __name__ == "__main__"``
    would run again in every worker).

The failure rules of the engine hold for both kinds: every wait is bounded; a
decode error is an :class:`~featx.errors.ImageDecodeError` naming the image; a
worker process that dies (a crash inside a codec) fails only the image it was
decoding, with a message that says so, and is replaced; Ctrl-C reaches the
parent only (workers ignore SIGINT) and :meth:`DecodePool.close` ends them
within seconds; a parent that dies closes the pipes, and workers exit at
end-of-file, so none is ever orphaned.

Worker processes outlive the pool that started them when it finishes cleanly
(``close(wait=True)``): up to one per core wait, idle, for the next pool of
this process, since starting an interpreter costs about 0.2 s, which an engine
called in a loop (a notebook, a grid search on new images) would pay on every
call. An aborted pool (``close(wait=False)``: an error, Ctrl-C) ends its
workers; idle ones end at exit, or at end-of-file if this process dies.
"""

from __future__ import annotations

import atexit
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .._decode_worker import DecodeResult, decode_one, map_slot, read_frame, write_frame
from ..errors import FeatxError, ImageDecodeError, InvalidParameterError
from ..images import Source, check_decode_options

__all__ = ["DecodePool", "DecodeResult", "FRAME_IMAGES", "INPUT_SLOT_BYTES", "KINDS", "POOLS",
           "choose_pool", "default_workers"]

#: Worker kinds of :class:`DecodePool`.
KINDS = ("threads", "processes")

#: What a user may ask for: a kind, or ``"auto"`` (see :func:`choose_pool`).
POOLS = ("auto", *KINDS)

#: ``pool="auto"`` picks processes from this many decode workers (cores) up ...
AUTO_MIN_WORKERS = 4
#: ... for jobs of at least this many images (below, starting interpreters dominates).
AUTO_MIN_IMAGES = 256

#: Most images one worker process decodes per frame (one round trip, one slot).
FRAME_IMAGES = 8

#: Encoded bytes a frame may hand a worker through its shared slot (a frame takes fewer
#: images when theirs would not fit). Copying a 500 KB JPEG into it takes ~14 us;
#: piping it cost the parent ~600 us, and the worker's re-read and re-hash ~390 us.
INPUT_SLOT_BYTES = 8 << 20

_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.25
#: Put in the job queue by close(), once per feeder, so none waits out its poll.
_WAKE = object()

#: A worker's command. ``python -m`` would put the working folder first on
#: ``sys.path``, so a ``featx`` folder there (another checkout) would be imported
#: instead of the parent's and speak another protocol; ``-c`` puts ``''`` there,
#: which is dropped, and the parent's featx comes first on ``PYTHONPATH``.
_WORKER_MAIN = ("import sys; sys.path[:1] == [''] and sys.path.pop(0); "
                "from featx._decode_worker import main; main()")


def choose_pool(pool: str, n_images: int, workers: int) -> str:
    """The pool kind a job runs on: ``pool`` itself, or for ``"auto"`` the measured choice.

    Threads decode in parallel only while Pillow holds no GIL, and stop scaling at
    about two cores (16 cores: 1,581 img/s in threads, 4,341 in processes); on two
    cores processes cost ~15 % (pipes, start-up). So ``"auto"`` takes processes
    with at least :data:`AUTO_MIN_WORKERS` workers and :data:`AUTO_MIN_IMAGES`
    images, threads otherwise.

    Examples
    --------
    >>> from featx.engine import choose_pool
    >>> choose_pool("auto", 10_000, 16), choose_pool("auto", 10_000, 2), choose_pool("auto", 10, 16)
    ('processes', 'threads', 'threads')
    """
    if pool not in POOLS:
        raise InvalidParameterError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool != "auto":
        return pool
    big = workers >= AUTO_MIN_WORKERS and n_images >= AUTO_MIN_IMAGES
    return "processes" if big else "threads"


def default_workers() -> int:
    """Decode workers when none are asked for: the CPU count, at least 2.

    Examples
    --------
    >>> default_workers() >= 2
    True
    """
    return max(2, os.cpu_count() or 2)


class DecodePool:
    """Decode images to ``uint8`` pixels of one size, in threads or worker processes.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)`` of every result.
    policy : {"squash", "crop", "pad"}, default "squash"
        Resize policy of :func:`featx.images.decode_image`.
    workers : int, optional
        Decoders running at once (default: :func:`default_workers`).
    kind : {"threads", "processes"}, default "threads"
        See the module docstring for when processes pay.

    Notes
    -----
    :meth:`submit_io` runs I/O-bound callables (reading, hashing) on the pool's
    threads whatever ``kind`` is: they release the GIL, and their results stay
    in this process.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.engine import DecodePool
    >>> images = [np.full((40, 60, 3), v, np.uint8) for v in (0, 128, 255)]
    >>> with DecodePool((16, 16), workers=2) as pool:
    ...     results = list(pool.map(images))
    >>> [r.pixels[0, 0].tolist() for r in results]
    [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    >>> with DecodePool((16, 16), kind="processes", workers=1) as pool:
    ...     bad = list(pool.map([b"not an image"], names=["notes.jpg"]))[0]
    >>> type(bad.error).__name__, "notes.jpg" in str(bad.error)
    ('ImageDecodeError', True)
    """

    def __init__(self, size: Tuple[int, int], policy: str = "squash",
                 workers: Optional[int] = None, kind: str = "threads"):
        if kind not in KINDS:
            raise InvalidParameterError(f"decode kind must be one of {KINDS}, got {kind!r}")
        self.size = check_decode_options(size, policy)
        self.policy = policy
        self.workers = int(workers) if workers is not None else default_workers()
        if self.workers < 1:
            raise InvalidParameterError(f"decode workers must be >= 1, got {workers!r}")
        self.kind = kind
        self._threads = ThreadPoolExecutor(max_workers=self.workers,
                                           thread_name_prefix="featx-decode")
        self._procs: Optional[_ProcessDecoders] = None
        self._closed = False

    # -- public -------------------------------------------------------------

    def map(self, sources: Iterable, names: Optional[Sequence[Optional[str]]] = None
            ) -> Iterator[DecodeResult]:
        """Decode each source (a :class:`~featx.images.Source`, path, bytes or uint8 array).

        Results come back in input order, one :class:`DecodeResult` per source;
        a bad image gives a result with ``error`` set, never a raise.
        """
        sources = list(sources)
        if names is None:
            names = [None] * len(sources)
        futures = [self.submit(s, name) for s, name in zip(sources, names)]
        return (self.result(f) for f in futures)

    def submit(self, source, name: Optional[str] = None, key: Optional[bytes] = None,
               data: Optional[bytes] = None) -> Future:
        """Queue one decode at once; a :class:`~concurrent.futures.Future` of its
        :class:`DecodeResult` (read it with :meth:`result`).

        ``key``, for a file source: the content key (:func:`~featx.images.source_key`)
        its bytes had when the caller read them, and ``data`` those bytes if the caller
        still holds them. The image decoded is exactly what was keyed: ``data`` where
        it can be handed over (to a thread; to a worker process through its shared
        slot, up to :data:`INPUT_SLOT_BYTES`), else the file, read again where it is
        decoded, and an image whose bytes no longer match fails with an
        :class:`~featx.errors.ImageDecodeError` instead of being decoded.
        """
        if name is None and isinstance(source, Source):
            name = source.describe()
        payload = _payload(source)
        if key is not None and not isinstance(payload, str):
            raise InvalidParameterError("key= is for file sources (a path) only")
        if data is not None and (self.kind == "threads" or len(data) <= INPUT_SLOT_BYTES):
            source, key = data, None  # the very bytes that were keyed
        elif key is not None:
            source = payload  # too large for the slot: the worker reads and checks the file
        if self.kind == "threads":
            return self._threads.submit(decode_one, source, self.size, self.policy, name, key)
        if self._procs is None:
            self._procs = _ProcessDecoders(self.workers, self.size[0] * self.size[1] * 3)
        return self._procs.submit((_payload(source), self.size, self.policy, name, key))

    def submit_io(self, fn: Callable[[Any], Any], item) -> Future:
        """``fn(item)`` on the pool's threads (reads, hashes: they release the GIL)."""
        return self._threads.submit(fn, item)

    def result(self, future: Future, stop: Optional[threading.Event] = None):
        """A future's result, waited for in short steps: Ctrl-C is seen at once, and
        a closed pool or a set ``stop`` event ends the wait with a FeatxError."""
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except TimeoutError:
                if self._closed or (stop is not None and stop.is_set()):
                    raise FeatxError("the decode pool was closed while images were queued")
            except CancelledError:
                raise FeatxError("the decode pool was closed while images were queued")

    def close(self, wait: bool = True) -> None:
        """Stop the workers. ``wait=False`` drops queued work and returns within seconds."""
        if self._closed:
            return
        self._closed = True
        self._threads.shutdown(wait=wait, cancel_futures=not wait)
        if self._procs is not None:
            self._procs.close(keep=wait)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close(wait=exc[0] is None)

    def __del__(self):  # a pool dropped without close() must not leave workers behind
        try:
            if not self._closed and self._procs is not None:
                self._procs.close()
        except Exception:
            pass


def _payload(source):
    """What a worker process decodes: a path (it reads the file itself), bytes or an array."""
    if isinstance(source, Source):
        return source.path if source.path is not None else source.array
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    return source


# ----------------------------------------------------------------- worker processes


class _IdleWorkers:
    """Worker processes kept between pools, ready for the next one of this process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.workers: List[tuple] = []  # (pid of this process, env, proc, slot)

    def put(self, env: dict, proc: subprocess.Popen, slot) -> bool:
        """Keep an idle worker (False: enough are kept, or it has died; the caller ends it)."""
        with self.lock:
            if proc.poll() is not None or len(self.workers) >= max(1, default_workers()):
                return False
            self.workers.append((os.getpid(), env, proc, slot))
            return True

    def take(self, env: dict):
        """``(proc, slot)`` of a live idle worker started with ``env``, or None."""
        with self.lock:
            for n, (pid, kept_env, proc, slot) in enumerate(self.workers):
                # A forked child must not share its parent's pipes; another env (say
                # FEATX_MAX_IMAGE_BYTES) would decode by other rules.
                if pid == os.getpid() and kept_env == env and proc.poll() is None:
                    del self.workers[n]
                    return proc, slot
        return None

    def close(self) -> None:
        with self.lock:
            workers, self.workers = self.workers, []
        for pid, _, proc, _ in workers:
            if pid == os.getpid():
                _stop(proc)


#: Idle worker processes of this process (see the module docstring).
IDLE_WORKERS = _IdleWorkers()
atexit.register(IDLE_WORKERS.close)


class _ProcessDecoders:
    """Worker interpreters fed over pipes; one feeder thread per worker in this process.

    A feeder takes a frame of queued jobs (up to :data:`FRAME_IMAGES`, a fair
    share when the queue is short, and no more encoded bytes than
    :data:`INPUT_SLOT_BYTES`), copies their bytes into the worker's shared slot,
    sends the frame in one message, and copies the pixels the worker wrote there
    before the next frame: no image is pickled or pushed through a pipe.
    """

    def __init__(self, n: int, image_bytes: int):
        self.n = n
        self.pixel_bytes = int(image_bytes) * FRAME_IMAGES  # the slot's first part ...
        self.slot_bytes = self.pixel_bytes + INPUT_SLOT_BYTES  # ... then encoded inputs
        self.jobs: "queue.Queue" = queue.Queue()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.procs: List[subprocess.Popen] = []
        self.keep = False  # set by close(keep=True): idle workers go to IDLE_WORKERS
        env = dict(os.environ)
        # The worker must find this featx, also when it runs from a source tree.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.env = env
        self.feeders = [threading.Thread(target=self._feed, name=f"featx-decode-proc-{i}",
                                         daemon=True) for i in range(n)]
        for thread in self.feeders:
            thread.start()

    def submit(self, job) -> Future:
        future: Future = Future()
        self.jobs.put((job, future))
        return future

    def _start(self):
        """A worker and its slot: an idle one kept from an earlier pool, or a new one."""
        kept = IDLE_WORKERS.take(self.env)
        if kept is not None:
            proc, slot = kept
        else:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=self.env, close_fds=True)
        with self.lock:
            if self.stopping.is_set():
                proc.kill()
            self.procs.append(proc)
        if kept is None or len(slot) < self.slot_bytes:
            try:
                slot = self._share_slot(proc)
            except BaseException:
                _stop(proc)
                raise
        return proc, slot

    def _share_slot(self, proc: subprocess.Popen):
        """A file both processes map, deleted at once: it outlives neither of them."""
        fd, path = _reserved_file(self.slot_bytes)
        try:
            os.close(fd)
            slot = map_slot(path, self.slot_bytes)
            write_frame(proc.stdin, ("map", path, self.slot_bytes))
            read_frame(proc.stdout)  # ("mapped",)
        finally:
            os.unlink(path)
        return slot

    def _take_frame(self, first=None) -> Tuple[list, Any]:
        """The next frame of ``(job, future)`` pairs, each future marked running, and
        the pair taken that would have overfilled the slot (the next frame's first).

        ``first``: the pair the last frame left over, else the queue's next.
        """
        if first is None:
            try:
                first = self.jobs.get(timeout=_POLL_S)
            except queue.Empty:
                return [], None
            if first is _WAKE:  # close(): stop waiting for work
                return [], None
        frame, left = [first], None
        share = min(FRAME_IMAGES, max(1, -(-(self.jobs.qsize() + 1) // self.n)))
        room = INPUT_SLOT_BYTES - _encoded_bytes(first[0][0])
        while len(frame) < share:
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                break
            if item is _WAKE:  # another feeder's: hand it on
                self.jobs.put(_WAKE)
                break
            room -= _encoded_bytes(item[0][0])
            if room < 0:  # its bytes would not fit the slot: it starts the next frame
                left = item
                break
            frame.append(item)
        return ([(job, future) for job, future in frame
                 if future.set_running_or_notify_cancel()], left)

    def _feed(self) -> None:
        worker, left = (None, None), None  # (process, slot); a pair for the next frame
        while not self.stopping.is_set():
            frame, left = self._take_frame(left)
            if frame:
                worker = self._run(worker, frame)
        if left is not None and left[1].set_running_or_notify_cancel():
            left[1].set_exception(FeatxError("the decode pool was closed"))
        proc, slot = worker
        if proc is None:
            return
        # Between frames here, so the worker is idle: keep it when the pool finished.
        if self.keep and IDLE_WORKERS.put(self.env, proc, slot):
            with self.lock:
                self.procs.remove(proc)
        else:
            _stop(proc)

    def _run(self, worker, frame):
        """Decode one frame on ``worker`` (started if needed); the worker in use after."""
        proc, slot = worker
        if proc is None or proc.poll() is not None:
            try:
                proc, slot = self._start()
            except Exception as exc:  # not the images' fault: their callers get the error
                why = ("the decode pool was closed" if self.stopping.is_set() else
                       f"could not start a decode worker process ({type(exc).__name__}: "
                       f"{exc}; its own error output, if any, went to stderr); "
                       "pool='threads' decodes without worker processes")
                for _, future in frame:
                    future.set_exception(FeatxError(why))
                return None, None
        try:
            jobs = [job for job, _ in frame]
            for (_, future), result in zip(frame, self._ask(proc, slot, jobs, self.pixel_bytes)):
                future.set_result(result)
            return proc, slot
        except BaseException as exc:  # the worker died or the pipe broke
            if proc is not None:
                _stop(proc)
            if self.stopping.is_set():
                for _, future in frame:
                    future.set_exception(FeatxError("the decode pool was closed"))
                return None, None
            if len(frame) > 1:  # find the image that killed it: one per fresh worker
                worker = (None, None)
                for pair in frame:
                    worker = self._run(worker, [pair])
                return worker
            job, future = frame[0]
            name = job[3] or _describe_payload(job[0])
            future.set_result(DecodeResult(None, ImageDecodeError(
                f"{name}: the decoder process died while decoding it "
                f"({_how_it_ended(proc)}; a crash inside the image codec); "
                f"other images are unaffected ({type(exc).__name__})"), 0.0))
            return None, None

    @staticmethod
    def _ask(proc: subprocess.Popen, slot, jobs, pixel_bytes: int) -> List[DecodeResult]:
        write_frame(proc.stdin, ("jobs", _inputs_to_slot(jobs, slot, pixel_bytes), pixel_bytes))
        results = []
        for pixels, error, seconds in read_frame(proc.stdout):
            if isinstance(pixels, tuple):  # ("slot", offset, shape): copied before the next frame
                _, offset, shape = pixels
                pixels = np.frombuffer(slot, np.uint8, count=int(np.prod(shape)),
                                       offset=offset).reshape(shape).copy()
            if error is not None:
                error = _rebuild_error(*error)
            results.append(DecodeResult(pixels, error, seconds))
        return results

    def close(self, keep: bool = False) -> None:
        """Stop feeding; ``keep``: idle workers wait for the next pool instead of ending."""
        self.keep = keep
        self.stopping.set()
        while True:  # fail what is still queued, so no caller waits for it
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                break
            if item is _WAKE:
                continue
            _, future = item
            if future.set_running_or_notify_cancel():
                future.set_exception(FeatxError("the decode pool was closed"))
        for _ in self.feeders:  # a feeder waiting for work sees the stop at once, not in 0.25 s
            self.jobs.put(_WAKE)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for thread in self.feeders:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            for proc in self.procs:
                _stop(proc)


def _encoded_bytes(payload) -> int:
    """Bytes a job's payload takes in the shared slot (a path or an array: none)."""
    return len(payload) if isinstance(payload, (bytes, bytearray)) else 0


def _inputs_to_slot(jobs, slot, start: int) -> list:
    """``jobs`` with each encoded source that fits copied into ``slot`` from ``start`` on
    and named ``("slot", offset, nbytes)``; the rest (paths, arrays) go as they are.
    The jobs themselves are left alone: a frame retried on a new worker is copied again."""
    sent, offset = [], start
    for source, *rest in jobs:
        n = _encoded_bytes(source)
        if n and offset + n <= len(slot):
            slot[offset:offset + n] = source
            source, offset = ("slot", offset, n), offset + n
        sent.append((source, *rest))
    return sent


def _reserved_file(nbytes: int) -> Tuple[int, str]:
    """``(fd, path)`` of a new file of ``nbytes`` whose pages are allocated now, in
    ``/dev/shm`` while it has room, else the temporary folder.

    Reserved, because a write through a mapping into a full tmpfs (a container's
    64 MB ``/dev/shm``) kills the process with SIGBUS instead of raising.
    """
    if os.access("/dev/shm", os.W_OK):
        fd, path = tempfile.mkstemp(prefix="featx-pixels-", dir="/dev/shm")
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return fd, path
        except OSError:  # no room: the temporary folder's page cache serves as well
            os.close(fd)
            os.unlink(path)
    fd, path = tempfile.mkstemp(prefix="featx-pixels-")
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def _stop(proc: subprocess.Popen) -> None:
    """End a worker: close its stdin (it exits at EOF), then kill if it lingers."""
    for pipe in (proc.stdin, proc.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_STOP_TIMEOUT_S)


def _how_it_ended(proc: Optional[subprocess.Popen]) -> str:
    if proc is None:
        return "it did not start"
    try:
        code = proc.wait(timeout=2.0)  # its pipe closed: it is exiting, or has
    except subprocess.TimeoutExpired:
        return "it stopped answering"
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _describe_payload(payload) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, np.ndarray):
        return f"<array {payload.shape}>"
    return "<bytes>"


def _rebuild_error(cls_name: str, message: str) -> FeatxError:
    """The worker's error as the same featx class (classes are looked up, never unpickled)."""
    from .. import errors

    cls = getattr(errors, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, FeatxError)):
        cls = ImageDecodeError
    try:
        return cls(message)
    except TypeError:
        return ImageDecodeError(message)
