"""The extraction engine: the one place where pixels meet a frozen model.

``Embedder.embed(sources)`` runs a reader → mapper → writer pipeline (the
shape of clip-retrieval's runner):

1. **read + key** (thread pool): each file is read once and keyed by the
   sha256 of its bytes (arrays: bytes + shape + dtype);
2. **dedup + lookup**: a key already seen in this call, in the process memo or
   in the store is never decoded nor forwarded again;
3. **decode** (thread pool, Pillow releases the GIL): the misses only, from
   the bytes already read, into fixed-shape uint8 batches, preprocessed;
4. **forward** (main thread): ``model(x, training=False)`` inside a compiled
   function at one fixed batch shape (the last batch is padded), so nothing
   retraces;
5. **write**: each batch is appended to the store and committed before the
   next one, so a crash loses at most the batch in flight.

Steps 1–3 run in a producer thread, a bounded queue ahead of step 4, so
decoding overlaps the forward pass.  Vectors always come back in input order.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._env import import_keras
from .backbones import Backbone, get_backbone
from .errors import EmbedInterrupted, FeatxError
from .images import Source, as_sources, decode_image, read_bytes, source_key
from .store import EmbeddingStore

__all__ = ["Embedder", "EmbedFailure", "clear_memo", "compiled_forward"]

log = logging.getLogger("featx")

ON_ERROR = ("raise", "skip")
POLICIES = ("squash", "crop", "pad")


@dataclasses.dataclass(frozen=True)
class EmbedFailure:
    """One input that could not be embedded (``on_error="skip"``)."""

    index: int
    source: str
    reason: str


# ----------------------------------------------------------------- process memo

class _Memo:
    """Vectors computed in this process, by (fingerprint, key), with a byte budget.

    With ``store=None`` this is what keeps a GridSearchCV in one process from
    re-embedding the same images for every candidate and fold.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._data: "collections.OrderedDict[Tuple[str, bytes], np.ndarray]" = collections.OrderedDict()
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


_MEMO = _Memo(int(float(os.environ.get("FEATX_MEMO_MB", "1024")) * 2**20))


def clear_memo() -> None:
    """Forget every vector the process memo holds (used when ``store=None``)."""
    _MEMO.clear()


# ----------------------------------------------------------------- content keys


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


_KEYS = _KeyCache()


# ----------------------------------------------------------------- forward pass


_FORWARD_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_forward(model, batch_shape: Tuple[int, ...], jit_compile: bool = False):
    """The compiled forward of ``model`` at ``batch_shape``, built once per model and shape.

    Many Embedders share one backbone in a grid search; compiling per Embedder
    would retrace the same graph for each.  The fine-tuner predicts through it
    too.  Inputs must have exactly ``batch_shape`` (pad the last batch).

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.engine import compiled_forward
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> forward = compiled_forward(bb.model, (2, 32, 32, 3))
    >>> forward(np.zeros((2, 32, 32, 3), np.float32)).shape
    (2, 1280)
    """
    per_model = _FORWARD_CACHE.setdefault(model, {})
    if (batch_shape, jit_compile) not in per_model:
        per_model[batch_shape, jit_compile] = _build_forward(model, batch_shape, jit_compile)
    return per_model[batch_shape, jit_compile]


def _build_forward(model, batch_shape: Tuple[int, ...], jit_compile: bool = False):
    """``x -> model(x, training=False)`` compiled once for one fixed input shape.

    ``jit_compile`` asks TensorFlow for XLA (JAX always compiles with XLA; the
    torch backend runs eagerly under ``no_grad``). Outputs are float32 whatever
    the compute dtype.
    """
    keras = import_keras()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                         reduce_retracing=True, jit_compile=bool(jit_compile),
                         input_signature=[tf.TensorSpec(batch_shape, tf.float32)])
        return lambda x: fn(x).numpy()
    if backend == "jax":
        import jax

        fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        # Variable values are read at each call, so a model trained after its first
        # forward (the fine-tuner) is never run with stale weights.
        return lambda x: np.asarray(fn([v.value for v in model.trainable_variables],
                                       [v.value for v in model.non_trainable_variables], x),
                                    dtype=np.float32)
    if backend == "torch":
        import torch

        def run(x):
            with torch.no_grad():
                out = model(x, training=False)
                return keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))

        return run
    return lambda x: keras.ops.convert_to_numpy(
        keras.ops.cast(model(x, training=False), "float32"))


# ----------------------------------------------------------------- the engine


@dataclasses.dataclass
class _Batch:
    keys: List[bytes]
    pixels: np.ndarray  # preprocessed float32, (len(keys), H, W, 3)


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
    batch_size : int, default 32
        Forward batch; every batch runs at this shape (the last is padded).
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
        Threads that read, hash and decode (default: CPU count, at least 2).
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

    Attributes
    ----------
    stats : dict
        Counters of the last ``embed`` call: images, unique, cache_hits,
        forwarded, failed, and seconds spent in read_s, decode_s (summed over
        threads), lookup_s, forward_s, write_s, lock_s (waiting for the store's
        writer lock), wait_s (forward waiting for decode), total_s.
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

    def __init__(self, backbone: Union[Backbone, str], store=None, batch_size: int = 32,
                 on_error: str = "raise", progress: Optional[bool] = None,
                 policy: str = "squash", workers: Optional[int] = None,
                 exclusive_forward: bool = True, jit_compile: bool = False):
        if isinstance(backbone, str):
            backbone = get_backbone(backbone)
        if not isinstance(backbone, Backbone):
            raise FeatxError(f"backbone must be a featx Backbone or a name, got "
                             f"{type(backbone).__name__}")
        if on_error not in ON_ERROR:
            raise FeatxError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if policy not in POLICIES:
            raise FeatxError(f"policy must be one of {POLICIES}, got {policy!r}")
        if int(batch_size) < 1:
            raise FeatxError(f"batch_size must be >= 1, got {batch_size!r}")
        self.backbone = backbone
        self.store = EmbeddingStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.batch_size = int(batch_size)
        self.on_error = on_error
        self.progress = progress
        self.policy = policy
        self.workers = int(workers or max(2, os.cpu_count() or 2))
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
        self.stats["total_s"] = time.perf_counter() - start
        self.failures_ = sorted(run.failures, key=lambda f: f.index)
        self.mask_ = run.mask
        if self.failures_:
            log.warning("featx: skipped %d of %d images (see Embedder.failures_); first: %s — %s",
                        len(self.failures_), len(items), self.failures_[0].source,
                        self.failures_[0].reason)
        return (run.out, run.mask) if return_mask else run.out

    # -- internals used by _Run ---------------------------------------------

    def _forward_batch(self, pixels: np.ndarray) -> np.ndarray:
        if self._forward is None:
            shape = (self.batch_size, *self.backbone.input_shape)
            self._forward = compiled_forward(self.backbone.model, shape, self.jit_compile)
        n = len(pixels)
        if n < self.batch_size:  # pad to the one compiled shape
            pad = np.zeros((self.batch_size - n, *pixels.shape[1:]), dtype=np.float32)
            pixels = np.concatenate([pixels, pad])
        return np.asarray(self._forward(pixels), dtype=np.float32)[:n]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_forward"] = None  # compiled functions do not pickle; rebuilt on first use
        return state


_DONE = object()
_JOIN_TIMEOUT_S = 5.0


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
        self.stats = dict(images=n, unique=0, cache_hits=0, forwarded=0, failed=0,
                          read_s=0.0, decode_s=0.0, forward_s=0.0, write_s=0.0,
                          lookup_s=0.0, lock_s=0.0, wait_s=0.0)
        self.queue: "queue.Queue" = queue.Queue(maxsize=3)
        self.stop = threading.Event()
        self.finished = False  # the forward loop consumed every batch
        self.rows_at_start: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.pool = ThreadPoolExecutor(max_workers=embedder.workers,
                                       thread_name_prefix="featx-decode")
        self.bar = self._make_bar(n)
        self.spec = self.bb.describe()
        self.size = (self.bb.input_size, self.bb.input_size)
        self.lock = threading.Lock()

    def _make_bar(self, n):
        show = self.e.progress
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=n, desc=f"embed {self.bb.name}", unit="img", file=sys.stderr)

    def close(self):
        self.stop.set()
        # After a failure or an interrupt, do not wait for reads still in flight: each
        # is bounded (regular files only, a byte cap), and the result is thrown away.
        self.pool.shutdown(wait=self.finished, cancel_futures=True)
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

    def _fail(self, indices: Sequence[int], error: BaseException, key: Optional[bytes] = None) -> None:
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

    def _read_and_key(self, item: Source):
        t = time.perf_counter()
        try:
            if item.array is not None:
                return source_key(item), None, None, time.perf_counter() - t
            signature = _KEYS.signature(item.path)
            key = _KEYS.get(signature)
            if key is not None:  # decode reads the file again only if it is a miss
                return key, None, None, time.perf_counter() - t
            data = read_bytes(item.path)
            key = source_key(item, data=data)
            _KEYS.put(signature, key)
            return key, data, None, time.perf_counter() - t
        except FeatxError as exc:
            return None, None, exc, time.perf_counter() - t

    def _decode(self, item: Source, data):
        t = time.perf_counter()
        try:
            pixels = decode_image(data if data is not None else item, self.size,
                                  policy=self.e.policy, name=item.describe())
            return pixels, None, time.perf_counter() - t
        except FeatxError as exc:
            return None, exc, time.perf_counter() - t

    def produce(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # handed to the forward loop, which re-raises
            self.error = exc
        finally:
            # Never a blocking put: when the forward loop has stopped (it raised, or
            # was interrupted) the queue may stay full forever.
            self._put_item(_DONE)

    def _lookup(self, keys: List[bytes]) -> Tuple[Dict[bytes, np.ndarray], List[bytes]]:
        """(vectors found in the memo, keys the store already holds).

        Stored keys are only *recognised* here, from the store's in-memory index,
        without touching the file: the forward thread may hold the store's writer
        lock, and waiting for it would stall decoding. Their vectors are read by
        the forward thread (a ``_Hits`` item); keys other processes stored
        meanwhile are caught by its re-check under the lock.
        """
        fp = self.bb.fingerprint
        store = self.e.store
        found: Dict[bytes, np.ndarray] = {}
        if store is None or store.readonly:
            # With a writable store, the store is the memory: it must receive every vector.
            for key in keys:
                vec = _MEMO.get(fp, key)
                if vec is not None:
                    found[key] = vec
            if store is None:
                return found, []
            keys = [key for key in keys if key not in found]
        if not keys:
            return found, []
        t = time.perf_counter()
        known = store.known(fp, keys)
        self.stats["lookup_s"] += time.perf_counter() - t
        return found, [key for key, hit in zip(keys, known) if hit]

    def _produce(self) -> None:
        chunk = max(self.e.batch_size * 4, 64)
        pending_keys: List[bytes] = []
        pending_pixels: List[np.ndarray] = []
        for start in range(0, len(self.items), chunk):
            if self.stop.is_set():
                return
            part = self.items[start:start + chunk]
            keyed = list(self.pool.map(self._read_and_key, part))
            fresh: Dict[bytes, Tuple[Source, Optional[bytes]]] = {}
            for item, (key, data, error, seconds) in zip(part, keyed):
                self.stats["read_s"] += seconds
                if error is not None:
                    self._fail([item.index], error)
                    continue
                if not self._claim(key, item.index):
                    continue
                self.stats["unique"] += 1
                fresh[key] = (item, data)
            found, stored = self._lookup(list(fresh))
            for key, vec in found.items():
                self.stats["cache_hits"] += 1
                fresh.pop(key)
                self._deliver(key, vec)
            if stored:
                self._put_item(_Hits({key: fresh.pop(key) for key in stored}))
            decoded = self.pool.map(lambda kv: (kv[0], *self._decode(*kv[1])), fresh.items())
            for key, pixels, error, seconds in decoded:
                self.stats["decode_s"] += seconds
                if error is not None:
                    with self.lock:
                        indices = self.waiting.pop(key, [])
                    self._fail(indices, error, key=key)
                    continue
                pending_keys.append(key)
                pending_pixels.append(pixels)
                if len(pending_keys) == self.e.batch_size:
                    self._emit(pending_keys, pending_pixels)
                    pending_keys, pending_pixels = [], []
        if pending_keys:
            self._emit(pending_keys, pending_pixels)

    def _emit(self, keys: List[bytes], pixels: List[np.ndarray]) -> None:
        self._put_item(_Batch(keys, self.bb.preprocess(np.stack(pixels))))

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
            self.e.store.check_compatible(self.bb.fingerprint, self.spec, self.bb.dim)
            # Read the store's key index now, before the forward thread can hold the
            # writer lock: the producer then recognises stored keys from memory.
            self.e.store.lookup(self.bb.fingerprint, [])
            self.rows_at_start = self.e.store.count(self.bb.fingerprint)
        producer = threading.Thread(target=self.produce, name="featx-producer", daemon=True)
        producer.start()
        try:
            while True:
                t = time.perf_counter()
                batch = self._next_item(producer)
                self.stats["wait_s"] += time.perf_counter() - t
                if batch is _DONE:
                    self.finished = True
                    break
                if isinstance(batch, _Hits):
                    self._read_hits(batch)
                    continue
                store = self.e.store
                if store is None:
                    self._forward_and_deliver(batch.keys, batch.pixels)
                elif self.e.exclusive_forward and not store.readonly:
                    t = time.perf_counter()
                    with store.exclusive():
                        self.stats["lock_s"] += time.perf_counter() - t
                        self._forward_missing(batch)
                else:
                    self._forward_missing(batch)
        finally:
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
            return max(0, quick.count(self.bb.fingerprint) - self.rows_at_start)
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
        vectors, found = self.e.store.get(self.bb.fingerprint, keys)
        self.stats["lookup_s"] += time.perf_counter() - t
        missing = []
        for key, vec, ok in zip(keys, vectors, found):
            if ok:
                self.stats["cache_hits"] += 1
                self._deliver(key, vec)
            else:  # the file was replaced since the index was read: decode it here
                missing.append(key)
        for start in range(0, len(missing), self.e.batch_size):
            chunk, pixels = [], []
            for key in missing[start:start + self.e.batch_size]:
                image, error, _ = self._decode(*hits.items[key])
                if error is not None:
                    with self.lock:
                        indices = self.waiting.pop(key, [])
                    self._fail(indices, error, key=key)
                    continue
                chunk.append(key)
                pixels.append(image)
            if chunk:
                self._forward_missing(_Batch(chunk, self.bb.preprocess(np.stack(pixels))))

    def _forward_missing(self, batch: _Batch) -> None:
        """Re-check the store (another process may have stored some keys since the
        lookup), forward the rest, put them."""
        store, fp = self.e.store, self.bb.fingerprint
        t = time.perf_counter()
        vectors, found = store.get(fp, batch.keys)
        self.stats["lookup_s"] += time.perf_counter() - t
        keys, pixels = batch.keys, batch.pixels
        if found.any():
            for key, vec, hit in zip(keys, vectors, found):
                if hit:
                    self.stats["cache_hits"] += 1
                    self._deliver(key, vec)
            keep = np.flatnonzero(~found)
            keys, pixels = [keys[i] for i in keep], pixels[keep]
        if keys:
            self._forward_and_deliver(keys, pixels)

    def _forward_and_deliver(self, keys: List[bytes], pixels: np.ndarray) -> None:
        t = time.perf_counter()
        vectors = self.e._forward_batch(pixels)
        self.stats["forward_s"] += time.perf_counter() - t
        if not np.all(np.isfinite(vectors)):
            bad = int((~np.isfinite(vectors).all(axis=1)).sum())
            raise FeatxError(f"{self.bb.name} produced non-finite vectors for {bad} "
                             "image(s); nothing of this batch was stored")
        fp, store = self.bb.fingerprint, self.e.store
        if store is None or store.readonly:  # a read-only store is looked up, never written
            for key, vec in zip(keys, vectors):
                _MEMO.put(fp, key, vec)
        else:
            t = time.perf_counter()
            store.put(fp, keys, vectors, spec=self.spec, forwarded=len(keys))
            self.stats["write_s"] += time.perf_counter() - t
        self.stats["forwarded"] += len(keys)
        for key, vec in zip(keys, vectors):
            self._deliver(key, vec)
