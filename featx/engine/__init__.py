"""The extraction engine: the one place where pixels meet a frozen model.

``Embedder.embed(sources)`` runs a reader → mapper → writer pipeline (the
shape of clip-retrieval's runner):

1. **read + key** (thread pool): each file is read once and keyed by the
   sha256 of its bytes (arrays: bytes + shape + dtype);
2. **dedup + lookup** (:func:`plan`, shared with the Dask driver): a key already
   seen in this call, in the process memo or in the store is never decoded nor
   forwarded again;
3. **decode** (:class:`DecodePool`: threads, or worker processes where threads
   stop scaling): the misses only, from the bytes already read, into
   fixed-shape uint8 batches (reused buffers);
4. **forward** (main thread, :class:`PaddedForward`): the family's
   preprocessing and ``model(x, training=False)`` inside one compiled function
   at one fixed batch shape (the last batch is padded), so nothing retraces and
   only uint8 crosses to the device;
5. **write**: each batch is appended to the store and committed before the
   next one, so a crash loses at most the batch in flight.

Rooms: ``_keys`` (content keys), ``_plan`` (dedup + lookup), ``_decode`` (the
one decode pool), ``_forward`` (the one padded forward), ``_memo`` (vectors
without a store), ``_embedder`` (the pipeline that joins them).

Steps 1–3 run in a producer thread, a bounded queue ahead of step 4, so
decoding overlaps the forward pass. They stream: reads run a bounded window
ahead, each group of finished reads is planned and its misses sent to the
decoders at once, and decoded images join the next batch as they arrive — no
step waits for a whole chunk. Vectors always come back in input order.
"""

from __future__ import annotations

from ._decode import POOLS, DecodePool, choose_pool, default_workers
from ._embedder import ON_ERROR, EmbedFailure, Embedder
from ._forward import (DevicePixels, InFlight, PaddedForward, compiled_forward,
                       default_batch_size)
from ._gpu_decode import DECODERS, GpuJpegDecoder, gpu_decoder_unavailable, resolve_decoder
from ._runtime import RUNTIMES, openvino_forward, resolve_runtime, runtime_unavailable
from ._keys import key_source, vector_fingerprint
from ._memo import clear_memo
from ._plan import Plan, plan

__all__ = ["DECODERS", "DecodePool", "DevicePixels", "EmbedFailure", "Embedder",
           "GpuJpegDecoder", "InFlight", "ON_ERROR", "POOLS", "PaddedForward", "Plan",
           "RUNTIMES", "choose_pool", "clear_memo", "compiled_forward", "default_batch_size",
           "default_workers", "gpu_decoder_unavailable", "key_source", "openvino_forward",
           "plan", "resolve_decoder", "resolve_runtime", "runtime_unavailable",
           "vector_fingerprint"]
