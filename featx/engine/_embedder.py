"""``Embedder``: the engine's pipeline (see :mod:`featx.engine`)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..backbones import Backbone, get_backbone
from ..errors import EmbedInterrupted, FeatxError, InvalidParameterError
from ..images import RESIZE_POLICIES, Source, as_sources
from ..store import EmbeddingStore
from ._decode import POOLS, DecodePool, choose_pool, default_workers
from ._forward import DevicePixels, InFlight, PaddedForward, default_batch_size
from ._gpu_decode import DECODERS, GPU_DECODER_ID, GpuJpegDecoder, resolve_decoder
from ._runtime import RUNTIMES, resolve_runtime
from ._keys import KEYS, key_source, vector_fingerprint
from ._memo import MEMO
from ._plan import plan

__all__ = ["Embedder", "EmbedFailure", "ON_ERROR"]

log = logging.getLogger("featx")

#: What to do with an image that cannot be read or decoded.
ON_ERROR = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class EmbedFailure:
    """One input that could not be embedded (``on_error="skip"``).

    Examples
    --------
    >>> import numpy as np, featx
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> emb = featx.Embedder(bb, on_error="skip", progress=False)
    >>> X = emb.embed(["no/such/file.jpg"])
    >>> emb.failures_[0].index, emb.failures_[0].source
    (0, 'no/such/file.jpg')
    """

    index: int
    source: str
    reason: str


# ----------------------------------------------------------------- the engine


@dataclasses.dataclass
class _Batch:
    keys: List[bytes]
    pixels: Union[np.ndarray, DevicePixels]  # decoded uint8 (len(keys), H, W, 3), on the
    # host or (GPU decoder) on the device; preprocessed inside the forward


class _Pending:
    """Decoded images filling a batch, written straight into a reused batch buffer.

    Fresh arrays per batch cost a page fault per 4 KB on first touch (``np.stack``
    of 256 images took 36 ms); a ring of buffers is touched once. A buffer is
    reused only after every batch that could still be queued or forwarded from
    it is done: at most ``_QUEUE_ITEMS`` wait in the queue, one is in flight (its
    forward dispatched, its result not yet collected), one is forwarded and one is
    filled; the ring has one more to spare.
    """

    def __init__(self, size: int, image_shape: Tuple[int, int, int], emit):
        self.size, self.image_shape, self.emit = size, image_shape, emit
        self.ring: List[Optional[np.ndarray]] = [None] * (_QUEUE_ITEMS + 4)
        self.turn = 0
        self.keys: List[bytes] = []
        self.buffer: Optional[np.ndarray] = None

    def add(self, key: bytes, pixels: np.ndarray) -> None:
        if self.buffer is None:
            slot = self.turn % len(self.ring)
            if self.ring[slot] is None:
                self.ring[slot] = np.empty((self.size, *self.image_shape), np.uint8)
            self.buffer, self.turn = self.ring[slot], self.turn + 1
        self.buffer[len(self.keys)] = pixels
        self.keys.append(key)
        if len(self.keys) == self.size:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            self.emit(self.keys, self.buffer[:len(self.keys)])
            self.keys, self.buffer = [], None


class _DevicePending:
    """GPU-decoded images filling a batch on the device (see :class:`DevicePixels`)."""

    def __init__(self, size: int, emit):
        self.size, self.emit = size, emit
        self.keys: List[bytes] = []
        self.images: list = []

    def add(self, key: bytes, image) -> None:
        self.keys.append(key)
        self.images.append(image)
        if len(self.keys) == self.size:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            self.emit(self.keys, DevicePixels.stack(self.images))
            self.keys, self.images = [], []


@dataclasses.dataclass
class _Hits:
    items: Dict[bytes, Tuple[Source, Optional[bytes]]]  # key -> (source, bytes read)


class Embedder:
    """Embed images with a frozen backbone, once per image, ever.

    Parameters
    ----------
    backbone : Backbone or str
        A :class:`~featx.Backbone`, or a name (built with ``weights="packaged"``).
    store : EmbeddingStore, str or None
        Where vectors persist (an HDF5 path or a store object).  None keeps
        them in a per-process memo only.  A store opened with ``readonly=True``
        serves the vectors it holds; the others are computed and kept in the memo.
    batch_size : int, optional
        Forward batch; every batch runs at this shape (the last is padded).
        Default: :func:`~featx.engine.default_batch_size` — 32 on a CPU, 256 on
        an accelerator.
    on_error : {"raise", "skip"}, default "raise"
        ``"raise"``: the first bad image raises a :class:`~featx.errors.FeatxError`
        subclass naming it; batches committed before stay.  ``"skip"``: bad
        images become NaN rows, are counted in ``stats["failed"]`` and listed
        in ``failures_``.
    progress : bool or None
        tqdm bar on stderr; None (default) shows it only on a terminal.
    policy : {"squash", "crop", "pad"}
        How images are fitted to the input size (see :func:`featx.images.decode_image`).
    workers : int, optional
        Decoders running at once, and threads that read and hash (default: CPU
        count, at least 2).
    pool : {"auto", "threads", "processes"}, default "auto"
        Where images are read and decoded (see :class:`~featx.engine.DecodePool`):
        threads suit a few cores; worker processes keep scaling where threads
        stop (many cores feeding an accelerator). ``"auto"`` picks by cores and
        job size (:func:`~featx.engine.choose_pool`); ``stats["pool"]`` says
        which ran.
    exclusive_forward : bool, default True
        With a store: hold its writer lock from the re-check of a batch's keys to
        their ``put``, so processes sharing one store never forward the same image
        twice (a grid search with ``n_jobs > 1``).  On one machine this costs
        little — one forward already uses every core.  False lets processes
        forward in parallel at the price of possible duplicate work.
    jit_compile : bool, default False
        Compile the forward pass with XLA on the TensorFlow backend (worth it
        on GPUs; JAX always uses XLA; ignored on torch). Vectors equal the
        non-XLA ones to float tolerance, so they share the backbone's fingerprint.
    decoder : {"cpu", "gpu", "auto"}, default "cpu"
        ``"gpu"`` decodes JPEGs with nvJPEG and fits them on the GPU
        (:class:`~featx.engine.GpuJpegDecoder`; needs torch + torchvision with
        CUDA); other images still decode on the CPU. Its pixels differ from
        Pillow's, so its vectors get their own fingerprint. ``"auto"`` takes the
        GPU decoder where it can run.
    runtime : {"keras", "openvino", "openvino-bf16", "auto"}, default "keras"
        What runs the forward: Keras, or the same graph compiled by OpenVINO
        (CPU, TensorFlow backend, ``featx[openvino]``; measured 1.3-1.8x faster
        on CPUs, vectors equal to 1e-4 so they share the fingerprint). ``"auto"``
        takes OpenVINO on a CPU where it is installed and falls back to Keras
        if a model does not convert. ``"openvino-bf16"`` (opt-in, never chosen by
        ``"auto"``) runs OpenVINO in bfloat16 where the CPU has it: about twice
        OpenVINO f32's speed on an AVX-512 bf16 CPU, vectors within cosine ~0.996 of
        f32, stored under their own fingerprint. ``stats["runtime"]`` says which ran.

    Attributes
    ----------
    fingerprint : str
        The identity the vectors are stored under: the backbone's fingerprint,
        or, for ``policy`` other than ``"squash"``, one derived from it.
    stats : dict
        Counters of the last ``embed`` call: images, unique, cache_hits,
        forwarded, failed, and seconds spent in read_s, decode_s (summed over
        threads), lookup_s, forward_s, write_s, lock_s (waiting for the store's
        writer lock), wait_s (forward waiting for decode), total_s; ``pool``
        (``"none"`` when every vector was served from the memo or the store
        without reading a file: the keys were known from earlier calls) and
        ``decoder``.
    failures_ : list of EmbedFailure
        Inputs skipped by the last call (``on_error="skip"``).
    mask_ : numpy.ndarray of bool
        True for rows of the last call that hold a vector.

    Examples
    --------
    >>> import numpy as np, featx
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> emb = featx.Embedder(bb, batch_size=4, progress=False)
    >>> images = np.random.RandomState(0).randint(0, 255, (6, 40, 40, 3)).astype(np.uint8)
    >>> X = emb.embed(np.concatenate([images, images[:2]]))
    >>> X.shape, emb.stats["unique"], emb.stats["forwarded"] <= 6
    ((8, 1280), 6, True)
    """

    def __init__(self, backbone: Union[Backbone, str], store=None,
                 batch_size: Optional[int] = None,
                 on_error: str = "raise", progress: Optional[bool] = None,
                 policy: str = "squash", workers: Optional[int] = None,
                 exclusive_forward: bool = True, jit_compile: bool = False,
                 pool: str = "auto", decoder: str = "cpu", runtime: str = "keras"):
        if on_error not in ON_ERROR:
            raise InvalidParameterError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if policy not in RESIZE_POLICIES:
            raise InvalidParameterError(f"policy must be one of {RESIZE_POLICIES}, got {policy!r}")
        if pool not in POOLS:
            raise InvalidParameterError(f"pool must be one of {POOLS}, got {pool!r}")
        if decoder not in DECODERS:
            raise InvalidParameterError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if runtime not in RUNTIMES:
            raise InvalidParameterError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if batch_size is not None and int(batch_size) < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {batch_size!r}")
        if isinstance(backbone, str):  # after the cheap checks: building costs seconds
            backbone = get_backbone(backbone)
        if not isinstance(backbone, Backbone):
            raise InvalidParameterError(f"backbone must be a featx Backbone or a name, got "
                                        f"{type(backbone).__name__}")
        self.backbone = backbone
        self.store = EmbeddingStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size()
        self.decoder = decoder
        self.runtime = runtime
        self.on_error = on_error
        self.progress = progress
        self.policy = policy
        self.workers = int(workers or default_workers())
        self.pool = pool
        self.stats: Dict[str, float] = {}
        self.failures_: List[EmbedFailure] = []
        self.mask_ = np.zeros(0, dtype=bool)
        self.exclusive_forward = bool(exclusive_forward)
        self.jit_compile = bool(jit_compile)
        self._forward = None

    # -- public -------------------------------------------------------------

    def embed(self, sources, *, return_mask: bool = False):
        """Vectors for ``sources`` in input order, (n, dim) float32.

        Parameters
        ----------
        sources : folder, path, list of paths, pandas Series or uint8 array(s)
            Anything :func:`featx.images.as_sources` accepts.
        return_mask : bool
            Also return the boolean mask of rows that hold a vector.

        Returns
        -------
        X : numpy.ndarray, float32, shape (n, dim)
            Failed rows (``on_error="skip"``) are NaN.
        mask : numpy.ndarray of bool, only with ``return_mask=True``
        """
        start = time.perf_counter()
        items = as_sources(sources)
        cached = self._serve_cached(items)
        if cached is not None:
            cached, keys = cached
            self._remember_paths((key, item.path) for key, item in zip(keys, items))
            self.stats["total_s"] = time.perf_counter() - start
            self.failures_, self.mask_ = [], np.ones(len(items), dtype=bool)
            return (cached, self.mask_) if return_mask else cached
        run = _Run(self, items)
        try:
            run.execute()
        except KeyboardInterrupt as exc:
            # What was put before the interrupt is committed (each batch commits on its
            # own); say how much, so the user knows a re-run resumes from there.
            self.stats = run.stats
            raise EmbedInterrupted(run.committed(), getattr(self.store, "path", None)) from exc
        finally:
            run.close()
        self.stats = run.stats
        self._remember_paths((key, items[i].path) for key, i in run.done.items())
        self.stats["runtime"] = self.runtime_
        self.stats["total_s"] = time.perf_counter() - start
        self.failures_ = sorted(run.failures, key=lambda f: f.index)
        self.mask_ = run.mask
        if self.failures_:
            log.warning("featx: skipped %d of %d images (see Embedder.failures_); first: %s — %s",
                        len(self.failures_), len(items), self.failures_[0].source,
                        self.failures_[0].reason)
        return (run.out, run.mask) if return_mask else run.out

    @property
    def fingerprint(self) -> str:
        """The identity this embedder's vectors are stored under.

        The backbone's fingerprint for the default ``policy="squash"`` and CPU
        decoder; another resize policy or the GPU decoder gives other vectors, so
        they get their own (see :func:`~featx.engine.vector_fingerprint`).
        """
        return vector_fingerprint(self.backbone.fingerprint, self.policy,
                                  resolve_decoder(self.decoder), self._precision)

    @property
    def _precision(self) -> str:
        return "bf16" if self.runtime == "openvino-bf16" else "f32"

    # -- internals used by _Run ---------------------------------------------

    def _remember_paths(self, pairs) -> None:
        """Record in the store where each file's vector came from (for search and audit).

        Best effort: the vectors are what the call promised, so a store that cannot
        take the paths (locked past its timeout, read-only) costs a warning, not them.
        """
        store = self.store
        if store is None or store.readonly:
            return
        pairs = [(key, path) for key, path in pairs if path is not None]
        if not pairs:
            return
        try:
            store.remember_paths([k for k, _ in pairs], [p for _, p in pairs])
        except FeatxError as exc:
            log.warning("featx: the vectors are stored, but not the paths of their images in "
                        "%s: %s", store.path, exc)

    def _group(self, decoder: str) -> Tuple[str, dict]:
        """The store group's fingerprint and spec for the resolved ``decoder``."""
        fp = vector_fingerprint(self.backbone.fingerprint, self.policy, decoder,
                                self._precision)
        spec = self.backbone.describe()
        if fp != self.backbone.fingerprint:  # another policy, decoder or precision: own group
            spec.update(fingerprint=fp, backbone_fingerprint=self.backbone.fingerprint,
                        resize_policy=self.policy)
            if decoder == "gpu":
                spec.update(decoder=GPU_DECODER_ID)
            if self._precision != "f32":
                spec.update(inference_precision=self._precision, runtime=self.runtime)
        return fp, spec

    def _serve_cached(self, items: Sequence[Source]) -> Optional[Tuple[np.ndarray, list]]:
        """Every vector and each input's key, when this process already knows each
        input's key and the memo or the store holds every one of them; else None (the
        full pipeline runs).

        A grid search calls the engine once per fold and candidate on images it
        has embedded before: starting reader threads, a producer and a queue for
        them cost ~8 ms + 85 µs per image. Here: a stat per file, one store read
        (the group's spec checked in the same open).
        """
        decoder = resolve_decoder(self.decoder)
        fp, spec = self._group(decoder)
        store = self.store
        writable = store is not None and not store.readonly

        def known(key: bytes) -> bool:  # from memory only; the store read below decides
            if not writable and MEMO.get(fp, key) is not None:
                return True
            return store is not None and bool(store.known(fp, [key])[0])

        keys: List[Optional[bytes]] = [None] * len(items)
        for i, item in enumerate(items):  # files first: a stat each, nothing hashed
            if item.array is None:
                keys[i] = KEYS.get(KEYS.signature(item.path))
                if keys[i] is None:  # never read in this process: the pipeline reads it
                    return None
        for i, item in enumerate(items):  # arrays must be hashed: stop at the first miss
            if item.array is not None:
                keys[i] = key_source(item)[0]
                if not known(keys[i]):
                    return None
        todo = plan(keys)
        if writable:
            vectors, found = store.get(fp, todo.keys, spec=spec, dim=self.backbone.dim)
            if not found.all():
                return None
        else:
            unique = [todo.key(u) for u in range(len(todo.keys))]
            vectors = [MEMO.get(fp, key) for key in unique]
            if store is not None and any(v is None for v in vectors):
                stored, found = store.get(fp, unique, spec=spec, dim=self.backbone.dim)
                vectors = [stored[i] if v is None and found[i] else v
                           for i, v in enumerate(vectors)]
            if any(v is None for v in vectors):
                return None
            vectors = np.stack(vectors) if vectors else np.empty((0, self.backbone.dim))
        out = np.empty((len(items), self.backbone.dim), np.float32)
        out[todo.rows] = np.asarray(vectors, np.float32)[todo.group]
        self.stats = dict(_new_stats(len(items)), unique=len(todo.keys),
                          cache_hits=len(todo.keys), pool="none", decoder=decoder)
        return out, keys

    def _forward_batch(self, pixels: Union[np.ndarray, DevicePixels]):
        """Start the forward of one batch: an :class:`~featx.engine.InFlight` (collected
        after the next batch is dispatched), or the vectors themselves."""
        if self._forward is None:
            self._forward = self._make_forward(resolve_runtime(self.runtime))
        try:
            return self._forward.dispatch(pixels)
        except FeatxError as exc:
            if self.runtime != "auto" or self._forward.runtime == "keras":
                raise
            # "auto" promised the fastest runtime that works, not OpenVINO at any price.
            log.warning("featx: %s; running %s on Keras instead", exc, self.backbone.name)
            self._forward = self._make_forward("keras")
            return self._forward.dispatch(pixels)

    def _make_forward(self, runtime: str) -> PaddedForward:
        # uint8 in, the family's preprocessing inside the compiled function.
        return PaddedForward(self.backbone.model, self.batch_size, self.backbone.input_shape,
                             self.jit_compile, self.backbone.preprocessing, runtime,
                             self.backbone.fingerprint)

    @property
    def runtime_(self) -> Optional[str]:
        """The runtime the forward ran on (None before the first forward)."""
        return None if self._forward is None else self._forward.runtime

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_forward"] = None  # compiled functions do not pickle; rebuilt on first use
        return state


def _new_stats(n: int) -> Dict[str, float]:
    return dict(images=n, unique=0, cache_hits=0, forwarded=0, failed=0, read_s=0.0,
                decode_s=0.0, forward_s=0.0, write_s=0.0, lookup_s=0.0, lock_s=0.0, wait_s=0.0)


def _progress_bar(show: Optional[bool], n: int, desc: str):
    """A tqdm bar on stderr (``show=None``: only on a terminal), or None."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, desc=desc, unit="img", file=sys.stderr)


_DONE = object()
_JOIN_TIMEOUT_S = 5.0
_QUEUE_ITEMS = 3  # batches decoded ahead of the forward
_OVERLAP_BATCHES = 16  # most consecutive batches one writer-lock hold spans


class _Run:
    """One ``embed`` call: state shared by the producer thread and the forward loop."""

    def __init__(self, embedder: Embedder, items: Sequence[Source]):
        self.e = embedder
        self.bb = embedder.backbone
        self.items = items
        n = len(items)
        self.out = np.full((n, self.bb.dim), np.nan, dtype=np.float32)
        self.mask = np.zeros(n, dtype=bool)
        self.failures: List[EmbedFailure] = []
        # key -> input indices waiting for that key's vector
        self.waiting: Dict[bytes, List[int]] = {}
        self.done: Dict[bytes, int] = {}  # key -> an input row that holds its vector
        self.failed_keys: Dict[bytes, BaseException] = {}
        self.stats = _new_stats(n)
        self.queue: "queue.Queue" = queue.Queue(maxsize=_QUEUE_ITEMS)
        self.stop = threading.Event()
        self.finished = False  # the forward loop consumed every batch
        self.rows_at_start: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.size = (self.bb.input_size, self.bb.input_size)
        kind = choose_pool(embedder.pool, n, embedder.workers)
        self.stats["pool"] = kind
        self.pool = DecodePool(self.size, embedder.policy, embedder.workers, kind)
        self.bar = _progress_bar(embedder.progress, n, f"embed {self.bb.name}")
        decoder = resolve_decoder(embedder.decoder)
        self.stats["decoder"] = decoder
        self.gpu = GpuJpegDecoder(self.size, embedder.policy) if decoder == "gpu" else None
        # GPU-decoded images stay on the device in their own batches, handed to the
        # forward through DLPack; only the OpenVINO runtime (CPU) needs them on the host.
        self.on_device = self.gpu is not None and resolve_runtime(embedder.runtime) == "keras"
        self.fp, self.spec = embedder._group(decoder)
        self.lock = threading.Lock()

    def close(self):
        self.stop.set()
        # After a failure or an interrupt, do not wait for reads still in flight: each
        # is bounded (regular files only, a byte cap), and the result is thrown away.
        self.pool.close(wait=self.finished)
        if self.bar is not None:
            self.bar.close()

    # -- bookkeeping ---------------------------------------------------------

    def _deliver(self, key: bytes, vector: np.ndarray) -> None:
        # Under the lock, so a duplicate arriving now copies a written row, never NaN.
        with self.lock:
            indices = self.waiting.pop(key, [])
            if indices:
                self.done[key] = indices[0]
            for i in indices:
                self.out[i] = vector
                self.mask[i] = True
        if self.bar is not None and indices:
            self.bar.update(len(indices))

    def _fail(self, indices: Sequence[int], error: BaseException,
              key: Optional[bytes] = None) -> None:
        if self.e.on_error == "raise":
            raise error
        with self.lock:
            if key is not None:
                self.failed_keys[key] = error
            for i in indices:
                self.failures.append(EmbedFailure(i, self.items[i].describe(), str(error)))
            self.stats["failed"] += len(indices)
        if self.bar is not None:
            self.bar.update(len(indices))

    def _claim(self, key: bytes, index: int) -> bool:
        """Register input ``index`` for ``key``; True when the key is new to this call."""
        with self.lock:
            if key in self.done:  # an identical image already has its vector
                self.out[index] = self.out[self.done[key]]
                self.mask[index] = True
                if self.bar is not None:
                    self.bar.update(1)
                return False
            if key in self.waiting:  # identical image already on its way
                self.waiting[key].append(index)
                return False
            error = self.failed_keys.get(key)
            if error is None:
                self.waiting[key] = [index]
                return True
        self._fail([index], error)
        return False

    # -- producer: read + key → dedup → lookup → decode ---------------------

    @staticmethod
    def _read_and_key(item: Source):
        t = time.perf_counter()
        try:
            key, data = key_source(item)
            return key, data, None, time.perf_counter() - t
        except FeatxError as exc:
            return None, None, exc, time.perf_counter() - t

    def _decode_all(self, fresh: Dict[bytes, Tuple[Source, Optional[bytes]]]):
        """``(key, pixels, error, seconds)`` per fresh key, decoded from the bytes already read."""
        if self.gpu is not None:
            decoded: Dict[bytes, np.ndarray] = {}
            fresh = self._decode_on_gpu(fresh, decoded.__setitem__)
            for key, pixels in decoded.items():
                yield key, pixels, None, 0.0
        sources = [data if data is not None else item for item, data in fresh.values()]
        names = [item.describe() for item, _ in fresh.values()]
        for key, result in zip(fresh, self.pool.map(sources, names)):
            yield (key, *result)

    def produce(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # handed to the forward loop, which re-raises
            self.error = exc
        finally:
            # Never a blocking put: when the forward loop has stopped (it raised, or
            # was interrupted) the queue may stay full forever.
            self._put_item(_DONE)

    def _produce(self) -> None:
        """Stream: reads run ahead in a bounded window; each group of finished reads is
        deduplicated, looked up and sent to the decoders at once; decoded images join
        the next batch as they arrive. No phase waits for a whole chunk."""
        window = max(self.e.batch_size, 8 * self.pool.workers, 64)
        items = iter(self.items)
        reads: "deque" = deque()  # (item, future of _read_and_key), input order
        decodes: "deque" = deque()  # (key, future of DecodeResult)
        pending = _Pending(self.e.batch_size, (*self.size, 3), self._emit)
        on_device = _DevicePending(self.e.batch_size, self._emit)
        take_gpu = on_device.add if self.on_device else pending.add

        def read_ahead():
            for item in itertools.islice(items, window - len(reads)):
                reads.append((item, self.pool.submit_io(self._read_and_key, item)))

        read_ahead()
        while reads or decodes:
            if self.stop.is_set():
                return
            if reads:
                item, future = reads.popleft()
                group = [(item, self.pool.result(future, self.stop))]
                while reads and reads[0][1].done() and len(group) < window:
                    item, future = reads.popleft()
                    group.append((item, future.result()))
                read_ahead()
                fresh = self._route(group)
                if self.gpu is not None:
                    fresh = self._decode_on_gpu(fresh, take_gpu, on_device=self.on_device)
                for key, (item, data) in fresh.items():
                    # Read and keyed here: the pool decodes exactly those bytes.
                    read = {} if data is None else dict(key=key, data=data)
                    decodes.append((key, self.pool.submit(item, item.describe(), **read)))
            # Take decoded images that are ready; wait for the oldest only when too many
            # are in flight or nothing is left to read.
            while decodes and (not reads or len(decodes) > window or decodes[0][1].done()):
                key, future = decodes.popleft()
                self._take_decoded(key, self.pool.result(future, self.stop), pending)
        pending.flush()
        on_device.flush()

    def _route(self, group) -> Dict[bytes, Tuple[Source, Optional[bytes]]]:
        """Dedup and look up one group of read results: vectors the memo holds are
        delivered, stored keys go to the forward thread as a :class:`_Hits`; the
        keys to decode are returned."""
        for item, (_, _, error, seconds) in group:
            self.stats["read_s"] += seconds
            if error is not None:
                self._fail([item.index], error)
        fp, store = self.fp, self.e.store
        # Stored keys are only *recognised* here, from the store's in-memory index
        # (fresh=False): the forward thread may hold the writer lock, and waiting for
        # it would stall decoding. Their vectors are read by the forward thread (a
        # _Hits item); keys other processes stored meanwhile are caught by its
        # re-check under the lock.
        t = time.perf_counter()
        group_plan = plan([keyed[0] for _, keyed in group], store, fp, fresh=False)
        self.stats["lookup_s"] += time.perf_counter() - t
        fresh: Dict[bytes, Tuple[Source, Optional[bytes]]] = {}
        hits: Dict[bytes, Tuple[Source, Optional[bytes]]] = {}
        for u in range(len(group_plan.keys)):
            key = group_plan.key(u)
            claimed = [local for local in group_plan.members(u)
                       if self._claim(key, group[local][0].index)]
            if not claimed:
                continue
            self.stats["unique"] += 1
            item, data = group[claimed[0]][0], group[claimed[0]][1][1]
            vec = None
            # With a writable store, the store is the memory: it must receive every vector.
            if store is None or store.readonly:
                vec = MEMO.get(fp, key)
            if vec is not None:
                self.stats["cache_hits"] += 1
                self._deliver(key, vec)
            else:
                (hits if group_plan.stored[u] else fresh)[key] = (item, data)
        if hits:
            self._put_item(_Hits(hits))
        return fresh

    def _decode_on_gpu(self, fresh, take, on_device: bool = False):
        """:meth:`GpuJpegDecoder.decode_jpegs` of ``fresh``, its seconds counted."""
        t = time.perf_counter()
        rest = self.gpu.decode_jpegs(fresh, take, on_device=on_device)
        self.stats["decode_s"] += time.perf_counter() - t
        return rest

    def _take_decoded(self, key: bytes, result, pending: "_Pending") -> None:
        pixels, error, seconds = result
        self.stats["decode_s"] += seconds
        if error is not None:
            with self.lock:
                indices = self.waiting.pop(key, [])
            self._fail(indices, error, key=key)
        else:
            pending.add(key, pixels)

    def _emit(self, keys: List[bytes], pixels: np.ndarray) -> None:
        self._put_item(_Batch(keys, pixels))

    def _put_item(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- consumer: forward + write ------------------------------------------

    def execute(self) -> None:
        if self.e.store is not None:
            # Robustness fix (tests/robustness): refuse a group stored under this
            # fingerprint with another spec or dim before serving any vector from it
            # (reads never compared specs; another dim crashed inside numpy).
            self.e.store.check_compatible(self.fp, self.spec, self.bb.dim)
            # Read the store's key index now, before the forward thread can hold the
            # writer lock: the producer then recognises stored keys from memory.
            self.e.store.lookup(self.fp, [])
            self.rows_at_start = self.e.store.count(self.fp)
        producer = threading.Thread(target=self.produce, name="featx-producer", daemon=True)
        producer.start()
        store = self.e.store
        exclusive = store is not None and self.e.exclusive_forward and not store.readonly
        # Where the backend dispatches asynchronously (JAX; torch on CUDA), one batch
        # stays in flight while the next is dispatched: the device computes batch n+1
        # while batch n is converted, stored and delivered. The writer lock is held
        # from a batch's re-check to its put, so it is kept across consecutive batches
        # while more are queued (at most _OVERLAP_BATCHES, so other processes get
        # their turn) and released otherwise. Synchronous forwards (TensorFlow,
        # OpenVINO) land at once: a kill then wastes at most the batch being computed.
        held = contextlib.ExitStack()
        in_flight, held_batches = None, 0
        try:
            while True:
                t = time.perf_counter()
                batch = self._next_item(producer)
                self.stats["wait_s"] += time.perf_counter() - t
                if batch is _DONE:
                    self._land(in_flight)
                    in_flight = None
                    self.finished = True
                    break
                if isinstance(batch, _Hits):
                    self._read_hits(batch)
                    continue
                if exclusive and not held_batches:
                    t = time.perf_counter()
                    held.enter_context(store.exclusive())
                    self.stats["lock_s"] += time.perf_counter() - t
                launched = self._launch(batch)
                self._land(in_flight)
                in_flight, held_batches = launched, held_batches + 1
                keep = launched is not None and getattr(launched[1], "asynchronous", False)
                if not keep or (exclusive and (self.queue.empty()
                                               or held_batches >= _OVERLAP_BATCHES)):
                    self._land(in_flight)
                    in_flight, held_batches = None, 0
                    held.close()
        finally:
            held.close()
            self.stop.set()
            # Bounded: the producer checks ``stop`` between items and never blocks on
            # the queue; a thread still inside one read is a daemon and is left behind.
            producer.join(timeout=_JOIN_TIMEOUT_S)
        if self.error is not None:
            raise self.error

    def committed(self) -> int:
        """New vectors the store holds since this call started (0 without a store).

        Read from the store, not from a counter: an interrupt can land between a
        ``put`` returning and a counter moving.
        """
        if self.e.store is None or self.rows_at_start is None:
            return 0
        try:
            # A short lock wait: after Ctrl-C nobody should wait behind another writer.
            quick = EmbeddingStore(self.e.store.path, readonly=True, lock_timeout=2.0)
            return max(0, quick.count(self.fp) - self.rows_at_start)
        except FeatxError:
            return int(self.stats["forwarded"])

    def _next_item(self, producer: threading.Thread):
        """The next queue item; short waits, so Ctrl-C is seen and a dead producer noticed."""
        while True:
            try:
                return self.queue.get(timeout=0.25)
            except queue.Empty:
                if not producer.is_alive() and self.queue.empty():
                    return _DONE  # it ended without its sentinel (cannot happen; never hang)

    def _read_hits(self, hits: "_Hits") -> None:
        """Vectors of keys the store's index knew; anything no longer there is embedded."""
        keys = list(hits.items)
        t = time.perf_counter()
        vectors, found = self.e.store.get(self.fp, keys)
        self.stats["lookup_s"] += time.perf_counter() - t
        missing = []
        for key, vec, ok in zip(keys, vectors, found):
            if ok:
                self.stats["cache_hits"] += 1
                self._deliver(key, vec)
            else:  # the file was replaced since the index was read: decode it here
                missing.append(key)
        if not missing:
            return
        # Forwarded as each batch fills, in this thread: a buffer is free again at once.
        pending = _Pending(self.e.batch_size, (*self.size, 3),
                           lambda keys, pixels: self._forward_missing(_Batch(keys, pixels)))
        for key, *result in self._decode_all({key: hits.items[key] for key in missing}):
            self._take_decoded(key, result, pending)
        pending.flush()

    def _forward_missing(self, batch: _Batch) -> None:
        """Re-check the store, forward the rest and put them, before returning."""
        self._land(self._launch(batch))

    def _launch(self, batch: _Batch):
        """Re-check the store (another process may have stored some keys since the
        lookup) and dispatch the forward of the rest: ``(keys, in flight)``, or None
        when every key was found."""
        store, fp = self.e.store, self.fp
        keys, pixels = batch.keys, batch.pixels
        if store is not None:
            t = time.perf_counter()
            vectors, found = store.get(fp, batch.keys)
            self.stats["lookup_s"] += time.perf_counter() - t
            if found.any():
                for key, vec, hit in zip(keys, vectors, found):
                    if hit:
                        self.stats["cache_hits"] += 1
                        self._deliver(key, vec)
                keep = np.flatnonzero(~found)
                keys = [keys[i] for i in keep]
                pixels = pixels[keep]  # numpy, or DevicePixels filtered on the device
        if not keys:
            return None
        t = time.perf_counter()
        launched = (keys, self.e._forward_batch(pixels))
        self.stats["forward_s"] += time.perf_counter() - t
        return launched

    def _land(self, launched) -> None:
        """Collect a launched forward's vectors, check them, put them, deliver them."""
        if launched is None:
            return
        keys, running = launched
        t = time.perf_counter()
        # A test or subclass may return the vectors themselves rather than an InFlight.
        vectors = running.result() if isinstance(running, InFlight) else running
        vectors = np.asarray(vectors, dtype=np.float32)
        self.stats["forward_s"] += time.perf_counter() - t
        if not np.all(np.isfinite(vectors)):
            bad = int((~np.isfinite(vectors).all(axis=1)).sum())
            raise FeatxError(f"{self.bb.name} produced non-finite vectors for {bad} "
                             "image(s); nothing of this batch was stored")
        fp, store = self.fp, self.e.store
        if store is None or store.readonly:  # a read-only store is looked up, never written
            for key, vec in zip(keys, vectors):
                MEMO.put(fp, key, vec)
        else:
            t = time.perf_counter()
            store.put(fp, keys, vectors, spec=self.spec, forwarded=len(keys))
            self.stats["write_s"] += time.perf_counter() - t
        self.stats["forwarded"] += len(keys)
        for key, vec in zip(keys, vectors):
            self._deliver(key, vec)
