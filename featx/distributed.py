"""Scale-out on Dask: sharded extraction into per-shard stores, merged by the driver.

The flow of :func:`embed_distributed`::

    driver                                   workers (each builds the backbone once)
    ------                                   ---------------------------------------
    as_sources → keys (sha256, driver or workers)
    dedup; keys already in the main store are dropped
    missing keys → shards of ``shard_size`` ──▶ Embedder(bb, store=<shard file>).embed()
                                           ◀───── shard file path + stats
    merge each shard as it completes (EmbeddingStore.merge_from), delete it
    read the vectors back from the main store, in input order

Design choices (measured numbers are in ``docs/benchmarks.md``; the reasoning in
``docs/scaling.md``):

* **Pixels meet the model only in** :class:`featx.Embedder`. A shard task is one
  ``Embedder.embed`` call on a worker; nothing here batches, decodes or caches.
* **Keys are computed before anything is sent out** (``hash_on="driver"``: a thread
  pool on the driver reads and hashes every file; ``hash_on="workers"``: chunks of paths
  are hashed on the workers and only the 32-byte digests come back). Either way the
  driver knows every key, so it drops keys already stored and duplicates *before*
  dispatch: a re-run sends no shard task at all. The price is one extra read of each
  new file (the shard's Embedder reads it again to decode it).
* **One backbone per worker process**: :func:`worker_backbone` caches built backbones
  by their spec in the worker's module state; :class:`BackbonePlugin`, a Dask
  ``WorkerPlugin``, fills that cache on every worker at registration (and on workers
  that join or are restarted later), so tasks never pay for a build.
* **Shard files are named by content** (``<store>.shards/<fp[:12]>-<sha256 of the
  shard's keys>.h5``). A retried task — after an exception (``retries=``) or after its
  worker died (the scheduler reschedules it) — opens the same file, finds the committed
  prefix as cache hits and forwards only the rest. Merging dedups by key, so nothing is
  duplicated or lost.
* **Merge by copy** (:meth:`EmbeddingStore.merge_from`). An HDF5 virtual dataset over the
  shard files would make "merging" nearly free, but the store's format (one resizable,
  pre-allocated dataset per group with a ``committed`` attribute and per-row CRCs) and
  its commit protocol would need a second, read-only layout; it is measured in
  ``benchmarks/bench_distributed.py`` only (see ``docs/scaling.md``).

Sources must be paths that every worker can read (a shared file system) or ``uint8``
arrays, which travel inside the tasks (fine for small sets).

``import featx.distributed`` works without Dask installed; its functions then raise
:class:`~featx.errors.MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import (FeatxError, FingerprintMismatchError, InvalidParameterError,
                     MissingDependencyError, StoreError)
from .backbones import BackboneConfig
from .engine import key_source, plan, vector_fingerprint
from .images import Source, as_sources
from .store import EmbeddingStore

try:  # a real WorkerPlugin when Dask is installed; the module still imports without it
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - dask not installed
    _WorkerPluginBase = object

__all__ = [
    "BackbonePlugin",
    "DistributedEmbedder",
    "backbone_spec",
    "worker_backbone",
    "worker_env",
    "source_keys",
    "embed_distributed",
    "embed_with_cluster",
    "merge_shards",
    "shard_dir",
    "dask_search_backend",
    "dask_vectors",
    "make_dask_xgboost",
]

log = logging.getLogger("featx")

SHARD_TASK_PREFIX = "featx-shard-"
HASH_TASK_PREFIX = "featx-hash-"
HASH_ON = ("driver", "workers")
MERGES = ("copy",)
_HASH_CHUNK = 512  # paths per hashing task: big enough to amortise a task (~1 ms)

# --------------------------------------------------------------------------- dask import


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            "featx.distributed needs Dask's distributed scheduler: pip install 'featx[dask]' "
            f"(dask[distributed]); importing it failed: {exc}") from exc
    return distributed


def _client(client):
    """The given client, else the current default one (``distributed.get_client``)."""
    if client is not None:
        return client
    distributed = _distributed()
    try:
        return distributed.get_client()
    except ValueError as exc:
        raise FeatxError(
            "no Dask client: pass client=, create one first (distributed.Client(...)), or use "
            "featx.distributed.embed_with_cluster(..., workers=N | scheduler=ADDRESS)") from exc


# --------------------------------------------------------------------------- backbone specs


def backbone_spec(backbone, *, weights="packaged", input_size=None, pooling="avg",
                  dtype="float32", include_top=False, seed=0) -> Tuple[dict, Optional[str]]:
    """The build arguments of a backbone as a JSON-ready dict, and its fingerprint if known.

    Workers rebuild the backbone from this spec (``featx.get_backbone(**spec)``) instead
    of receiving a pickled Keras model.

    Parameters
    ----------
    backbone : str, dict or Backbone
        A name (built with the keyword arguments below), a dict of
        :func:`featx.get_backbone` arguments, or a built :class:`featx.Backbone` (its
        build arguments are recovered; its fingerprint becomes the one every worker must
        reproduce).
    weights, input_size, pooling, dtype, include_top, seed
        As in :func:`featx.get_backbone`; used when ``backbone`` is a name.

    Returns
    -------
    spec : dict
        Keys ``name, weights, input_size, pooling, dtype, include_top, seed``.
    fingerprint : str or None
        The expected fingerprint when ``backbone`` was a built Backbone, else None.

    Examples
    --------
    >>> from featx.distributed import backbone_spec
    >>> spec, fp = backbone_spec("mobilenet_v2", weights=None, input_size=32)
    >>> spec["name"], spec["weights"], spec["input_size"], fp
    ('mobilenet_v2', None, 32, None)
    """
    config, fingerprint = BackboneConfig.of(
        backbone, weights=weights, input_size=input_size, pooling=pooling, dtype=dtype,
        include_top=include_top, seed=seed)
    return config.to_dict(), fingerprint


# The per-process backbone cache is BackboneConfig's: on a Dask worker it is what makes
# "build once per worker" true, since tasks and the plugin all go through
# worker_backbone().


def worker_backbone(spec: Mapping) -> Tuple[Any, bool]:
    """The backbone for ``spec`` in this process, built on first use and then cached.

    Parameters
    ----------
    spec : dict
        From :func:`backbone_spec`.

    Returns
    -------
    backbone : featx.Backbone
    built : bool
        True when this call built it (False: it came from the cache).

    Examples
    --------
    >>> from featx.distributed import backbone_spec, worker_backbone
    >>> spec, _ = backbone_spec("mobilenet_v2", weights=None, input_size=32)
    >>> bb, built = worker_backbone(spec)
    >>> bb2, built2 = worker_backbone(spec)
    >>> bb is bb2, built2
    (True, False)
    """
    return BackboneConfig(**spec).get()


def _build_count(spec: Mapping) -> int:
    """How many times this process built ``spec`` (1 when the cache works)."""
    return BackboneConfig(**spec).build_count()


class BackbonePlugin(_WorkerPluginBase):
    """A Dask ``WorkerPlugin`` that builds a backbone once on every worker.

    Registered by :func:`embed_distributed` (``prewarm=True``): ``setup`` runs on each
    current worker at registration — all in parallel, before any shard is sent — and on
    every worker that joins later or is restarted by its nanny. It fills the same cache
    that tasks read (:func:`worker_backbone`), so a task never builds a model; without
    the plugin the first task on each worker builds it, still once per worker.

    Parameters
    ----------
    spec : dict
        From :func:`backbone_spec`.

    Examples
    --------
    >>> from featx.distributed import BackbonePlugin, backbone_spec
    >>> spec, _ = backbone_spec("mobilenet_v2", weights=None, input_size=32)
    >>> plugin = BackbonePlugin(spec)
    >>> plugin.name.startswith("featx-backbone-"), plugin.idempotent
    (True, True)
    >>> client.register_plugin(plugin)  # doctest: +SKIP
    """

    #: Registering the same spec again (a re-run) does not re-run ``setup``.
    idempotent = True

    def __init__(self, spec: Mapping):
        self.spec = dict(spec)
        self.name = f"featx-backbone-{BackboneConfig(**spec).id()}"

    def setup(self, worker=None):
        worker_backbone(self.spec)


def worker_env(threads: int = 1) -> Dict[str, str]:
    """Environment for Dask worker processes so that one worker uses ``threads`` cores.

    TensorFlow sizes its thread pools from the machine, not from Dask's
    ``threads_per_worker``: without these, every worker spreads each forward pass over
    all cores and two workers on two cores fight instead of adding up.
    ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` are read by TensorFlow when
    it starts, which in a worker is the first task; the BLAS/OpenMP variables cover
    numpy and XGBoost.

    Parameters
    ----------
    threads : int, default 1

    Returns
    -------
    dict of str to str
        Pass as ``LocalCluster(env=...)`` / ``Nanny(env=...)``, or export before
        ``dask worker``.

    Examples
    --------
    >>> from featx.distributed import worker_env
    >>> worker_env(1)["TF_NUM_INTRAOP_THREADS"]
    '1'
    """
    t = str(int(threads))
    return {"TF_NUM_INTRAOP_THREADS": t, "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


# --------------------------------------------------------------------------- keys


def _key_one(item: Union[str, np.ndarray]) -> Tuple[Optional[bytes], Optional[str]]:
    try:
        source = Source(array=item) if isinstance(item, np.ndarray) else Source(path=item)
        return key_source(source)[0], None
    except FeatxError as exc:
        return None, str(exc)


def _key_chunk(paths: Sequence[str], threads: int = 4
               ) -> List[Tuple[Optional[bytes], Optional[str]]]:
    """Keys of a chunk of paths; runs on a worker with ``hash_on="workers"``."""
    # File reads and sha256 release the GIL: a few threads overlap I/O latency.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(_key_one, paths))


def _payload(item: Source):
    # Absolute: a worker's working directory is not the driver's.
    return item.array if item.array is not None else os.path.abspath(item.path)


def _keys(items: Sequence[Source], client, hash_on: str, threads: Optional[int]
          ) -> Tuple[List[Optional[bytes]], Dict[int, str], int]:
    """Keys of ``items`` (None where reading failed), errors by index, tasks sent."""
    n = len(items)
    keys: List[Optional[bytes]] = [None] * n
    errors: Dict[int, str] = {}
    paths = [i for i, it in enumerate(items) if it.array is None]
    arrays = [i for i, it in enumerate(items) if it.array is not None]
    threads = threads or min(8, max(2, os.cpu_count() or 2))
    tasks = 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # Arrays are in the driver's memory already: hashing them here costs no I/O.
        for i, (k, err) in zip(arrays, pool.map(_key_one, [items[i].array for i in arrays])):
            keys[i] = k
            if err is not None:
                errors[i] = err
        if hash_on == "driver" or not paths:
            results = pool.map(_key_one, [items[i].path for i in paths])
        else:
            chunks = [paths[a:a + _HASH_CHUNK] for a in range(0, len(paths), _HASH_CHUNK)]
            token = uuid.uuid4().hex[:8]
            futures = [client.submit(_key_chunk, [_payload(items[i]) for i in c],
                                     key=f"{HASH_TASK_PREFIX}{token}-{j}", pure=False,
                                     retries=2)
                       for j, c in enumerate(chunks)]
            tasks = len(futures)
            results = [r for chunk in client.gather(futures) for r in chunk]
        for i, (k, err) in zip(paths, results):
            keys[i] = k
            if err is not None:
                errors[i] = err
    return keys, errors, tasks


def source_keys(sources, client=None, *, hash_on: str = "driver", on_error: str = "raise",
                threads: Optional[int] = None) -> List[Optional[bytes]]:
    """The content keys (sha256 digests) of ``sources``, in input order.

    The same keys the engine and the store use (:func:`featx.images.source_key`), for
    looking vectors up later (:func:`dask_vectors`, ``EmbeddingStore.get``).

    Parameters
    ----------
    sources : folder, list of paths, or uint8 arrays
        Anything :func:`featx.images.as_sources` accepts.
    client : distributed.Client, optional
        Needed for ``hash_on="workers"`` (default client if None).
    hash_on : {"driver", "workers"}, default "driver"
        Where files are read and hashed. Arrays are always hashed on the driver.
    on_error : {"raise", "skip"}, default "raise"
        A file that cannot be read raises, or gets the key None.
    threads : int, optional
        Driver threads that read and hash (default: cores, 2 to 8).

    Returns
    -------
    list of bytes or None

    Examples
    --------
    >>> import numpy as np
    >>> from featx.distributed import source_keys
    >>> keys = source_keys(np.zeros((2, 8, 8, 3), np.uint8))
    >>> len(keys), len(keys[0]), keys[0] == keys[1]
    (2, 32, True)
    """
    if hash_on not in HASH_ON:
        raise InvalidParameterError(f"hash_on must be one of {HASH_ON}, got {hash_on!r}")
    items = as_sources(sources)
    if hash_on == "workers":
        client = _client(client)
    keys, errors, _ = _keys(items, client, hash_on, threads)
    if errors and on_error == "raise":
        i = min(errors)
        raise FeatxError(errors[i])
    return keys


# --------------------------------------------------------------------------- shards


def shard_dir(store_path: Union[str, os.PathLike, EmbeddingStore]) -> str:
    """Folder of a store's shard files: ``<store path>.shards`` (next to the store).

    Examples
    --------
    >>> from featx.distributed import shard_dir
    >>> shard_dir("/data/emb.h5")
    '/data/emb.h5.shards'
    """
    path = store_path.path if isinstance(store_path, EmbeddingStore) else os.fspath(store_path)
    return path + ".shards"


def _shard_name(fingerprint: str, keys: np.ndarray) -> str:
    # Named by content, not by worker or attempt: a retried task, or a re-run after the
    # driver died, finds the rows an earlier attempt committed and forwards the rest.
    h = hashlib.sha256(fingerprint.encode())
    h.update(np.ascontiguousarray(keys, np.uint8).tobytes())
    return f"{fingerprint[:12]}-{h.hexdigest()[:20]}.h5"


def _remove_store_files(path: str) -> None:
    for p in (path, path + ".lock", path + ".lock.gate"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def _embed_shard(spec: dict, fingerprint: str, payload: list, shard_path: str,
                 dtype: str, batch_size: int, policy: str,
                 decode_threads: Optional[int]) -> dict:
    """One shard task, run on a worker: embed ``payload`` into the shard store file."""
    t0 = time.perf_counter()
    bb, built = worker_backbone(spec)
    build_s = time.perf_counter() - t0
    if bb.fingerprint != fingerprint:
        # The same spec built with other bytes (another weights file, another Keras):
        # mixing its vectors with the others' would be silent corruption.
        raise FingerprintMismatchError(
            f"worker pid {os.getpid()} built {spec['name']} with fingerprint "
            f"{bb.fingerprint[:12]}…, the run expects {fingerprint[:12]}…: the workers do not "
            "see the same weights/software; check the weights path and versions on every node")
    from .engine import Embedder

    os.makedirs(os.path.dirname(shard_path), exist_ok=True)
    store = EmbeddingStore(shard_path, dtype=dtype)
    # on_error="skip" always: a bad image is a fact about the data, not a reason to retry
    # the task; the driver applies the caller's on_error when the result comes back.
    emb = Embedder(bb, store=store, batch_size=batch_size, on_error="skip", progress=False,
                   policy=policy, workers=decode_threads)
    emb.embed(payload)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except Exception:  # run outside a worker (tests, debugging)
        worker = "local"
    return dict(path=shard_path, worker=worker, pid=os.getpid(), built=built,
                build_s=build_s if built else 0.0, rows=store.count(emb.fingerprint),
                forwarded=int(emb.stats["forwarded"]), resumed=int(emb.stats["cache_hits"]),
                failures=[(f.index, f.reason) for f in emb.failures_],
                embed_s=float(emb.stats["total_s"]), forward_s=float(emb.stats["forward_s"]),
                decode_s=float(emb.stats["decode_s"]), write_s=float(emb.stats["write_s"]))


def _describe(spec: dict) -> dict:
    bb, built = worker_backbone(spec)
    return dict(bb.describe(), built=built)


def merge_shards(store_path: Union[str, os.PathLike, EmbeddingStore], *,
                 remove: bool = True) -> Dict[str, int]:
    """Merge every shard file left in ``<store>.shards/`` into the store.

    For recovery: :func:`embed_distributed` merges and deletes its shards itself, but
    if the *driver* dies, completed shards stay on disk. Merging is by key (idempotent),
    so this is always safe to run — but not while another run is still writing shards
    of the same store (it would delete files under it).

    Parameters
    ----------
    store_path : str, os.PathLike or EmbeddingStore
    remove : bool, default True
        Delete each shard file (and its lock sidecars) once merged.

    Returns
    -------
    dict
        Shard file name → rows it added to the store.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.store import EmbeddingStore
    >>> from featx.distributed import merge_shards, shard_dir
    >>> main = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> os.makedirs(shard_dir(main))
    >>> shard = EmbeddingStore(os.path.join(shard_dir(main), "left-over.h5"))
    >>> _ = shard.put("ab" * 32, [b"a" * 32], np.ones((1, 2), np.float32), spec={})
    >>> merge_shards(main)
    {'left-over.h5': 1}
    >>> EmbeddingStore(main).count("ab" * 32)
    1
    """
    store = store_path if isinstance(store_path, EmbeddingStore) else EmbeddingStore(store_path)
    folder = shard_dir(store)
    out: Dict[str, int] = {}
    if not os.path.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".h5"):
            continue
        path = os.path.join(folder, name)
        shard = EmbeddingStore(path, readonly=True, dtype=store.dtype)
        out[name] = sum(store.merge_from(shard).values()) if shard.fingerprints() else 0
        if remove:
            _remove_store_files(path)
    if remove:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    return out


# --------------------------------------------------------------------------- the driver


class DistributedEmbedder:
    """Embed sources on a Dask cluster into one store: the :class:`~featx.Embedder` of a cluster.

    The driver keys every source, drops what the store already holds (and
    duplicates), sends the rest out in shards — each one :class:`~featx.Embedder`
    call on a worker that built the backbone once — merges each shard as it lands,
    then reads the vectors back in input order.

    Parameters
    ----------
    backbone : str, dict, BackboneConfig or featx.Backbone
        What to build on the workers: a name (default build arguments), a dict or
        :class:`~featx.backbones.BackboneConfig` of :func:`featx.get_backbone`
        arguments, or a built Backbone (its arguments are recovered and its
        fingerprint is checked on every worker). Workers build it once each
        (:class:`BackbonePlugin`, :func:`worker_backbone`), never per task.
    store : str, os.PathLike or EmbeddingStore
        The main store. Shard files go to ``<store>.shards/`` next to it, so the
        store's folder must be on the shared file system too. Pass an
        ``EmbeddingStore`` to choose its storage dtype (float16 shards are cast on
        the workers).
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    shard_size : int, default 256
        Missing images per task. A killed task redoes at most one store batch of it.
    batch_size : int, default 32
        Forward batch of each worker's Embedder.
    on_error : {"raise", "skip"}, default "raise"
        A bad image raises :class:`~featx.errors.FeatxError` naming it (shards that
        completed are merged first), or becomes a NaN row listed in
        ``stats["failures"]``.
    policy : {"squash", "crop", "pad"}, default "squash"
        The workers' resize policy (part of the vectors' identity).
    decode_threads : int, optional
        Read/decode threads of each worker's Embedder (Embedder's default if None).
    hash_on : {"driver", "workers"}, default "driver"
        Where files are read and hashed to get their keys before dispatch.
    retries : int, default 2
        Dask retries of a shard task that raised. A task whose worker *died* is
        rescheduled by the scheduler regardless (up to
        ``distributed.scheduler.allowed-failures``).
    prewarm : bool, default True
        Register :class:`BackbonePlugin` so every worker builds the backbone at
        once, before shards are sent (and workers that join later, too).
    keep_shards : bool, default False
        Keep shard files after merging (for inspection).

    Attributes
    ----------
    stats : dict
        Of the last call: ``images, unique, cache_hits`` (unique keys already
        stored), ``missing``, ``shards``, ``tasks`` (shard tasks sent),
        ``forwarded``, ``resumed`` (rows a retried task found in its shard file),
        ``failed``, ``failures`` (list of ``(index, source, reason)``), ``merged``
        (rows added to the store), ``backbone_builds`` (shard tasks that had to
        build a model), ``workers`` (addresses that ran shards), ``hash_on``,
        ``hash_tasks``, seconds ``hash_s, lookup_s, compute_s`` (first dispatch to
        last result), ``merge_s, read_s, total_s``, ``fingerprint`` (the vectors'
        store group), ``dim`` and ``shard_stats`` (one dict per shard).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from featx.distributed import DistributedEmbedder
    >>> images = np.random.RandomState(0).randint(0, 255, (6, 40, 40, 3)).astype(np.uint8)
    >>> store = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> spec = {"name": "mobilenet_v2", "weights": None, "input_size": 32}
    >>> with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
    ...                   dashboard_address=":0") as cluster, Client(cluster) as client:
    ...     embedder = DistributedEmbedder(spec, store, client, shard_size=4)
    ...     X = embedder.embed(images)
    ...     first = dict(embedder.stats)
    ...     X2 = embedder.embed(images)
    >>> X.shape, first["shards"], embedder.stats["tasks"], np.array_equal(X, X2)
    ((6, 1280), 2, 0, True)
    """

    def __init__(self, backbone, store, client=None, *, shard_size: int = 256,
                 batch_size: int = 32, on_error: str = "raise", policy: str = "squash",
                 decode_threads: Optional[int] = None, hash_on: str = "driver",
                 retries: int = 2, prewarm: bool = True, keep_shards: bool = False):
        if on_error not in ("raise", "skip"):
            raise InvalidParameterError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if hash_on not in HASH_ON:
            raise InvalidParameterError(f"hash_on must be one of {HASH_ON}, got {hash_on!r}")
        if int(shard_size) < 1 or int(batch_size) < 1:
            raise InvalidParameterError(f"shard_size and batch_size must be >= 1, got "
                                        f"{shard_size}, {batch_size}")
        self.config, self.expected_fingerprint = BackboneConfig.of(backbone)
        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        self.client = client
        self.shard_size, self.batch_size = int(shard_size), int(batch_size)
        self.on_error, self.policy, self.decode_threads = on_error, policy, decode_threads
        self.hash_on, self.retries = hash_on, int(retries)
        self.prewarm, self.keep_shards = bool(prewarm), bool(keep_shards)
        self.stats: Dict[str, Any] = {}

    def embed(self, sources) -> np.ndarray:
        """Vectors of ``sources`` in input order, read back from the store (NaN: failed).

        Returns
        -------
        numpy.ndarray of float32, shape (n, dim)
        """
        return _ShardRun(self, sources).run(read_vectors=True)

    def fill(self, sources) -> dict:
        """Put the vectors of ``sources`` into the store without reading them back.

        For runs whose vectors do not fit in the driver's memory: every key is
        still checked to have arrived (a file edited between hashing and
        embedding gets another key).

        Returns
        -------
        dict
            :attr:`stats`.
        """
        _ShardRun(self, sources).run(read_vectors=False)
        return self.stats


class _ShardRun:
    """One call of a :class:`DistributedEmbedder`: prepare → plan → dispatch → read back."""

    def __init__(self, owner: DistributedEmbedder, sources):
        self.owner, self.store = owner, owner.store
        self.start = time.perf_counter()
        self.items = as_sources(sources)
        self.failures: Dict[int, str] = {}
        self.stats: Dict[str, Any] = dict(
            images=len(self.items), unique=0, cache_hits=0, missing=0, shards=0, tasks=0,
            forwarded=0, resumed=0, failed=0, failures=[], merged=0, backbone_builds=0,
            workers=[], hash_on=owner.hash_on, hash_tasks=0, hash_s=0.0, lookup_s=0.0,
            compute_s=0.0, merge_s=0.0, read_s=0.0, total_s=0.0, shard_stats=[])
        owner.stats = self.stats

    def run(self, read_vectors: bool) -> Optional[np.ndarray]:
        self.client = _client(self.owner.client)
        self.spec = self.owner.config.to_dict()
        self._prepare()
        self._plan()
        self._dispatch()
        X = self._read_back(read_vectors)
        self.stats["failures"] = [(i, self.items[i].describe(), self.failures[i])
                                  for i in sorted(self.failures)]
        self.stats["failed"] = len(self.failures)
        self.stats["total_s"] = time.perf_counter() - self.start
        if self.failures:
            log.warning("featx: skipped %d of %d images; first: %s", len(self.failures),
                        len(self.items), self.stats["failures"][0][1])
        return X

    def fail(self, indices, reason: str) -> None:
        if self.owner.on_error == "raise":
            i = int(min(indices))
            item = self.items[i]
            raise FeatxError(f"{item.describe()}: {reason}" if item.array is not None
                             else reason)
        for i in indices:
            self.failures[int(i)] = reason

    def _prepare(self) -> None:
        """The backbone on the workers, built once each, in parallel, before any shard."""
        if self.owner.prewarm:
            plugin = BackbonePlugin(self.spec)
            self.client.register_plugin(plugin, name=plugin.name)
        info = self.client.submit(_describe, self.spec, pure=False,
                                  key=f"featx-describe-{uuid.uuid4().hex[:8]}").result()
        self.backbone_fp, self.dim = info["fingerprint"], int(info["dim"])
        expected = self.owner.expected_fingerprint
        if expected is not None and self.backbone_fp != expected:
            raise FingerprintMismatchError(
                f"the workers build {self.spec['name']} into fingerprint "
                f"{self.backbone_fp[:12]}…, the Backbone passed in has {expected[:12]}…: its "
                "weights or software differ on the workers")
        self.fp = vector_fingerprint(self.backbone_fp, self.owner.policy)  # the shards' group
        self.stats.update(fingerprint=self.fp, dim=self.dim)
        if self.fp in self.store.fingerprints():
            # Fail before the cluster works for nothing: merge_from would refuse at the end.
            group = next(b for b in self.store.info()["backbones"]
                         if b["fingerprint"] == self.fp)
            if group["dtype"] != self.store.dtype:
                raise StoreError(
                    f"{self.store.path!r} stores {self.spec['name']} as {group['dtype']}, but "
                    f"the store object has dtype={self.store.dtype!r}; pass EmbeddingStore("
                    f"{self.store.path!r}, dtype={group['dtype']!r})")

    def _plan(self) -> None:
        """Keys, then dedup and lookup: what is stored (or repeated) is never sent out."""
        t = time.perf_counter()
        keys, errors, self.stats["hash_tasks"] = _keys(self.items, self.client,
                                                       self.owner.hash_on, None)
        self.stats["hash_s"] = time.perf_counter() - t
        for i in sorted(errors):
            self.fail([i], errors[i])
        t = time.perf_counter()
        self.todo = plan(keys, self.store, self.fp)
        self.stats["lookup_s"] = time.perf_counter() - t
        self.stats.update(unique=len(self.todo.keys), cache_hits=int(self.todo.stored.sum()),
                          missing=len(self.todo.missing))

    def _submit_shards(self, folder: str) -> dict:
        owner, todo = self.owner, self.todo
        token = uuid.uuid4().hex[:8]  # task keys are unique per run: no stale result reuse
        futures = {}
        for a in range(0, len(todo.missing), owner.shard_size):
            shard_keys = todo.missing[a:a + owner.shard_size]  # positions into todo.keys
            path = os.path.join(folder, _shard_name(self.fp, todo.keys[shard_keys]))
            payload = [_payload(self.items[i]) for i in todo.first[shard_keys]]
            fut = self.client.submit(
                _embed_shard, self.spec, self.backbone_fp, payload, path, self.store.dtype,
                owner.batch_size, owner.policy, owner.decode_threads, retries=owner.retries,
                pure=False, key=f"{SHARD_TASK_PREFIX}{token}-{a // owner.shard_size:06d}")
            futures[fut] = shard_keys
        self.stats["shards"] = self.stats["tasks"] = len(futures)
        return futures

    def _dispatch(self) -> None:
        """Shards of missing images to the workers; each result is merged as it lands."""
        distributed = _distributed()
        folder = os.path.abspath(shard_dir(self.store))
        futures = self._submit_shards(folder)
        workers = set()
        t_compute = time.perf_counter()
        try:
            for fut in distributed.as_completed(list(futures)):
                workers.add(self._merge(fut, futures[fut], folder))
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self.stats["compute_s"] = time.perf_counter() - t_compute - self.stats["merge_s"]
        self.stats["workers"] = sorted(workers)
        if not self.owner.keep_shards:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty: another run's shards stay

    def _merge(self, fut, shard_keys, folder: str) -> str:
        """One finished shard into the main store; its failures recorded. Its worker."""
        try:
            res = fut.result()
        except FingerprintMismatchError:
            raise
        except Exception as exc:
            first = self.items[self.todo.first[shard_keys[0]]].describe()
            raise FeatxError(
                f"shard task {fut.key} ({len(shard_keys)} images, first {first!r}) failed "
                f"after {self.owner.retries} retries: {type(exc).__name__}: {exc}. Shards that "
                f"completed are merged; unmerged shard files stay in {folder!r} "
                "(merge_shards() keeps their rows); re-run to embed the rest") from exc
        fut.release()
        stats = self.stats
        if os.path.exists(res["path"]):  # absent when every image of the shard failed
            t = time.perf_counter()
            stats["merged"] += sum(self.store.merge_from(res["path"]).values())
            stats["merge_s"] += time.perf_counter() - t
        if not self.owner.keep_shards:
            _remove_store_files(res["path"])
        for name in ("forwarded", "resumed"):
            stats[name] += res[name]
        stats["backbone_builds"] += int(res["built"])
        stats["shard_stats"].append({k: v for k, v in res.items() if k != "failures"})
        for local, reason in res["failures"]:
            self.fail(self.todo.members(int(shard_keys[local])), reason)
        return res["worker"]

    def _read_back(self, read_vectors: bool) -> Optional[np.ndarray]:
        """Vectors from the main store in input order (or, without them, a check that
        every key arrived: a file edited between hashing and embedding got another key)."""
        t = time.perf_counter()
        todo, n = self.todo, len(self.items)
        X = np.full((n, self.dim), np.nan, np.float32) if read_vectors else None
        failed = np.fromiter(self.failures, np.int64, len(self.failures))
        ok = todo.rows[~np.isin(todo.rows, failed)]
        okkeys = todo.keys[todo.group[np.searchsorted(todo.rows, ok)]]
        if len(ok):
            if read_vectors:
                vectors, found = self.store.get(self.fp, okkeys)
                X[ok] = vectors
            else:
                found = self.store.lookup(self.fp, okkeys) >= 0
            if not found.all():
                self.fail(ok[~found].tolist(), "its vector is not in the store after the run: "
                          "the file changed between hashing and embedding (or a shard was "
                          "deleted)")
                if X is not None:
                    X[ok[~found]] = np.nan
        self.stats["read_s"] = time.perf_counter() - t
        return X


# get_backbone's build arguments: BackboneConfig's fields besides the name.
_BUILD_ARGS = tuple(f.name for f in dataclasses.fields(BackboneConfig) if f.name != "name")


def embed_distributed(sources, backbone, store_path, client=None, *, merge: str = "copy",
                      return_vectors: bool = True, **options) -> Tuple[Optional[np.ndarray], dict]:
    """Embed ``sources`` on a Dask cluster into one store: ``(vectors or None, stats)``.

    The one-call form of :class:`DistributedEmbedder` (which ``featx embed
    --workers N`` uses).

    Parameters
    ----------
    sources : folder, list of paths, or uint8 arrays
        Paths must be readable by every worker (shared file system); arrays are
        shipped inside the tasks (fine for small sets).
    backbone, store_path, client
        As ``backbone``, ``store`` and ``client`` of :class:`DistributedEmbedder`.
    merge : {"copy"}, default "copy"
        How shards reach the main store: ``merge_from`` copies their rows.
        ("virtual", an HDF5 virtual dataset, is measured in the benchmark only:
        see ``docs/scaling.md``.)
    return_vectors : bool, default True
        False puts the vectors into the store without reading them back
        (:meth:`DistributedEmbedder.fill`); the first return value is then None.
    **options
        :func:`featx.get_backbone` arguments when ``backbone`` is a name
        (``weights``, ``input_size``, ``pooling``, ``dtype``, ``include_top``,
        ``seed``), and :class:`DistributedEmbedder`'s keyword parameters.

    Returns
    -------
    X : numpy.ndarray of float32, shape (n, dim), or None
    stats : dict
        :attr:`DistributedEmbedder.stats`.

    Raises
    ------
    FeatxError
        Bad arguments, a bad image with ``on_error="raise"``, a shard that failed
        after its retries, or a file that changed between hashing and embedding.
    FingerprintMismatchError
        A worker built the spec into another fingerprint than expected.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from featx.distributed import embed_distributed
    >>> images = np.random.RandomState(0).randint(0, 255, (6, 40, 40, 3)).astype(np.uint8)
    >>> store = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
    ...                   dashboard_address=":0") as cluster, Client(cluster) as client:
    ...     X, stats = embed_distributed(images, "mobilenet_v2", store, client,
    ...                                  weights=None, input_size=32, shard_size=4)
    >>> X.shape, stats["shards"]
    ((6, 1280), 2)
    """
    if merge == "virtual":
        raise FeatxError(
            "merge='virtual' is not a store layout featx writes: a virtual dataset cannot "
            "take the store's crash-safe appends. Its cost is measured in "
            "benchmarks/bench_distributed.py; see docs/scaling.md. Use merge='copy'")
    if merge not in MERGES:
        raise InvalidParameterError(f"merge must be one of {MERGES}, got {merge!r}")
    build = {k: options.pop(k) for k in _BUILD_ARGS if k in options}
    if isinstance(backbone, (str, Mapping)):  # a built Backbone or a config is complete
        backbone = BackboneConfig.of(backbone, **build)[0]
    embedder = DistributedEmbedder(backbone, store_path, client, **options)
    if not return_vectors:
        return None, embedder.fill(sources)
    X = embedder.embed(sources)
    return X, embedder.stats


def embed_with_cluster(sources, backbone, store_path, *, workers: Optional[int] = None,
                       scheduler: Optional[str] = None, threads_per_worker: int = 1,
                       cluster_kwargs: Optional[dict] = None, **kwargs
                       ) -> Tuple[Optional[np.ndarray], dict]:
    """Connect to a scheduler, or start a local cluster, and run :func:`embed_distributed`.

    What ``featx embed --workers N`` / ``--scheduler ADDRESS`` call.

    Parameters
    ----------
    sources, backbone, store_path
        As in :func:`embed_distributed`.
    workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker *processes*, with
        :func:`worker_env` so each uses ``threads_per_worker`` cores.
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); its workers must have
        featx installed and see the same files. Exactly one of ``workers`` and
        ``scheduler``.
    threads_per_worker : int, default 1
    cluster_kwargs : dict, optional
        More ``LocalCluster`` arguments.
    **kwargs
        Passed to :func:`embed_distributed`.

    Returns
    -------
    X, stats
        As :func:`embed_distributed`; the cluster started here is closed again.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.distributed import embed_with_cluster
    >>> images = np.random.RandomState(0).randint(0, 255, (4, 40, 40, 3)).astype(np.uint8)
    >>> store = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> X, stats = embed_with_cluster(images, "mobilenet_v2", store, workers=1,
    ...                               cluster_kwargs=dict(processes=False),
    ...                               weights=None, input_size=32)  # doctest: +SKIP
    """
    if (workers is None) == (scheduler is None):
        raise InvalidParameterError("give exactly one of workers=N (start a local cluster) and "
                                    f"scheduler=ADDRESS; received workers={workers!r}, "
                                    f"scheduler={scheduler!r}")
    distributed = _distributed()
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            return embed_distributed(sources, backbone, store_path, client, **kwargs)
    if int(workers) < 1:
        raise InvalidParameterError(f"workers must be >= 1, got {workers!r}")
    options = dict(n_workers=int(workers), threads_per_worker=int(threads_per_worker),
                   processes=True, env=worker_env(threads_per_worker),
                   dashboard_address=":0")
    options.update(cluster_kwargs or {})
    if not options.get("processes", True):
        options.pop("env", None)  # thread workers share this process's environment
    with distributed.LocalCluster(**options) as cluster, distributed.Client(cluster) as client:
        return embed_distributed(sources, backbone, store_path, client, **kwargs)


# --------------------------------------------------------------------------- searches, heads


@contextlib.contextmanager
def dask_search_backend(client=None, **backend_kwargs) -> Iterator[Any]:
    """Run joblib-parallel work (``GridSearchCV(n_jobs=-1)``) on a Dask cluster.

    Wraps joblib's ``"dask"`` backend: each candidate × fold fit becomes a Dask task.
    Searches run on cached vectors, so what travels is a vector matrix, not images:
    pass ``scatter=[X, y]`` to send them to the workers once instead of with every task.

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the current client.
    **backend_kwargs
        Passed to joblib's Dask backend (``scatter=``, ``wait_for_workers_timeout=``, or
        Dask ``submit`` arguments such as ``resources=``).

    Yields
    ------
    distributed.Client

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GridSearchCV
    >>> from featx.distributed import dask_search_backend
    >>> X = np.random.RandomState(0).randn(40, 5); y = (X[:, 0] > 0).astype(int)
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as c, \\
    ...         Client(c) as client, dask_search_backend(client, scatter=[X, y]):
    ...     search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2,
    ...                           n_jobs=-1).fit(X, y)
    >>> sorted(search.best_params_)
    ['C']
    """
    import joblib

    client = _client(client)
    config = getattr(joblib, "parallel_config", None)  # joblib >= 1.3; parallel_backend before
    if config is not None:
        with config(backend="dask", client=client, **backend_kwargs):
            yield client
    else:  # pragma: no cover - old joblib
        with joblib.parallel_backend("dask", client=client, **backend_kwargs):
            yield client


def dask_vectors(store_path: Union[str, os.PathLike, EmbeddingStore], fingerprint: str,
                 keys: Sequence[bytes], *, chunk_rows: int = 65536):
    """A lazy ``dask.array`` of stored vectors, read block by block on the workers.

    For training on more vectors than fit in one machine's memory
    (:func:`make_dask_xgboost`): each block is an ``EmbeddingStore.get`` of
    ``chunk_rows`` keys, run where the task runs, so the store must be on the shared
    file system. Missing keys give NaN rows.

    Parameters
    ----------
    store_path : str, os.PathLike or EmbeddingStore
    fingerprint : str
        The vectors' fingerprint (``stats["fingerprint"]`` of a run: the backbone's own
        for ``policy="squash"``).
    keys : sequence of 32-byte bytes
        In the row order wanted (:func:`source_keys`).
    chunk_rows : int, default 65536

    Returns
    -------
    dask.array.Array of float32, shape (len(keys), dim)

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.store import EmbeddingStore
    >>> from featx.distributed import dask_vectors
    >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
    >>> keys = [bytes([i]) * 32 for i in range(5)]
    >>> _ = store.put("ab" * 32, keys, np.arange(10, dtype=np.float32).reshape(5, 2), spec={})
    >>> X = dask_vectors(store, "ab" * 32, keys[::-1], chunk_rows=2)
    >>> X.chunks[0], X.compute(scheduler="sync")[0].tolist()
    ((2, 2, 1), [8.0, 9.0])
    """
    import dask
    import dask.array as da

    store = store_path if isinstance(store_path, EmbeddingStore) else EmbeddingStore(store_path)
    info = next((b for b in store.info()["backbones"] if b["fingerprint"] == fingerprint), None)
    if info is None:
        raise StoreError(f"{store.path!r} holds no vectors of backbone {fingerprint[:12]}…")
    dim = int(info["dim"])
    keys = list(keys)
    blocks = []
    for a in range(0, len(keys), int(chunk_rows)):
        part = keys[a:a + int(chunk_rows)]
        block = dask.delayed(_read_block)(store, fingerprint, part)
        blocks.append(da.from_delayed(block, shape=(len(part), dim), dtype=np.float32))
    if not blocks:
        return da.zeros((0, dim), dtype=np.float32)
    return da.concatenate(blocks, axis=0)


def _read_block(store: EmbeddingStore, fingerprint: str, keys: Sequence[bytes]) -> np.ndarray:
    return store.get(fingerprint, keys)[0]


def make_dask_xgboost(client=None, **params):
    """An ``xgboost.dask.DaskXGBClassifier`` bound to ``client``, with featx's defaults.

    For vector sets that do not fit in one machine's memory: XGBoost trains on the
    workers' partitions (``X`` a ``dask.array``, e.g. :func:`dask_vectors`). For sets
    that fit, ``featx.make_head("xgboost")`` is simpler and early-stops.

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the current client.
    **params
        XGBoost parameters; defaults ``tree_method="hist"``, ``n_estimators=200``,
        ``max_depth=6``, ``learning_rate=0.1``.

    Returns
    -------
    xgboost.dask.DaskXGBClassifier

    Raises
    ------
    MissingDependencyError
        ``xgboost.dask`` cannot be imported (it needs ``dask[dataframe]``, hence pyarrow).

    Examples
    --------
    >>> from featx.distributed import make_dask_xgboost
    >>> clf = make_dask_xgboost(client, n_estimators=20)  # doctest: +SKIP
    >>> clf.fit(X_dask, y_dask).predict(X_dask).compute()  # doctest: +SKIP
    """
    try:
        from xgboost import dask as dxgb
    except ImportError as exc:
        raise MissingDependencyError(
            "make_dask_xgboost needs xgboost.dask, which imports dask.dataframe (pyarrow): "
            f"pip install 'dask[dataframe]' xgboost-cpu; importing it failed: {exc}") from exc
    options = dict(tree_method="hist", n_estimators=200, max_depth=6, learning_rate=0.1)
    options.update(params)
    model = dxgb.DaskXGBClassifier(**options)
    model.client = _client(client)
    return model
