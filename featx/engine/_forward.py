"""The one compiled, fixed-shape forward pass, shared by the engine and the fine-tuner."""

from __future__ import annotations

import logging
import weakref
from typing import Tuple

import numpy as np

from .._env import accelerator, import_keras

__all__ = ["DevicePixels", "InFlight", "PaddedForward", "compiled_forward",
           "default_batch_size"]

log = logging.getLogger("featx")

#: Forward batch when none is given: on a CPU larger batches gain nothing and
#: cost memory; an accelerator needs hundreds of images per call to be busy.
CPU_BATCH, ACCELERATOR_BATCH = 32, 256


def default_batch_size() -> int:
    """The forward batch when the user gives none: 256 on an accelerator, 32 on a CPU.

    Examples
    --------
    >>> from featx.engine import default_batch_size
    >>> default_batch_size() in (32, 256)
    True
    """
    return ACCELERATOR_BATCH if accelerator() else CPU_BATCH


_XLA_WARNED = []


_FORWARD_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_forward(model, batch_shape: Tuple[int, ...], jit_compile: bool = False,
                     preprocessing=None, runtime: str = "keras", identity: str = ""):
    """The compiled forward of ``model`` at ``batch_shape``, built once per model and shape.

    Many Embedders share one backbone in a grid search; compiling per Embedder
    would retrace the same graph for each.  The fine-tuner predicts through it
    too.  Inputs must have exactly ``batch_shape`` (pad the last batch).

    With ``preprocessing`` (a :class:`~featx.backbones.Preprocessing`), the
    function takes **uint8** pixels and preprocesses them inside the compiled
    graph: a quarter of the bytes cross to the device, and the host does no
    float math (on a GPU the float32 batch transfer and the host-side
    arithmetic, not the forward, were the ceiling). Without it, it takes
    float32 input already preprocessed.

    ``runtime="openvino"`` (uint8 input only) runs the same graph converted by
    OpenVINO (:func:`~featx.engine.openvino_forward`); ``identity`` (the
    backbone's fingerprint) names its on-disk cache.

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
    key = (batch_shape, bool(jit_compile), preprocessing, runtime)
    if key not in per_model:
        if runtime.startswith("openvino"):
            if preprocessing is None:
                raise ValueError("the OpenVINO forward takes uint8 pixels: give preprocessing")
            from ._runtime import openvino_forward

            run = openvino_forward(model, batch_shape, preprocessing, identity,
                                   "bf16" if runtime == "openvino-bf16" else "f32")
            per_model[key] = _Compiled(run, _as_float32)  # synchronous: ready at launch
        else:
            per_model[key] = _build_forward(model, batch_shape, jit_compile, preprocessing)
    return per_model[key]


def _as_float32(out) -> np.ndarray:
    return np.asarray(out, dtype=np.float32)


class _Compiled:
    """A compiled forward split in two: ``launch(x)`` dispatches it and returns what
    the backend returns (a device array on JAX and torch, whose work may still be
    running); ``fetch(out)`` waits for it and converts it to float32 numpy.
    Calling it does both."""

    __slots__ = ("launch", "fetch", "asynchronous")

    def __init__(self, launch, fetch, asynchronous: bool = False):
        self.launch, self.fetch = launch, fetch
        # True where launch returns before the work is done (JAX; torch on CUDA):
        # only there is it worth keeping a batch in flight.
        self.asynchronous = bool(asynchronous)

    def __call__(self, x) -> np.ndarray:
        return self.fetch(self.launch(x))


def _build_forward(model, batch_shape: Tuple[int, ...], jit_compile: bool = False,
                   preprocessing=None) -> _Compiled:
    """``x -> model(prepare(x), training=False)`` compiled once for one fixed input shape.

    ``jit_compile`` asks TensorFlow for XLA (JAX always compiles with XLA; the
    torch backend runs eagerly under ``no_grad``). Outputs are float32 whatever
    the compute dtype.
    """
    keras = import_keras()
    backend = keras.backend.backend()
    if jit_compile and backend == "tensorflow" and accelerator() is None:
        # Measured on a 2-core CPU: XLA made the Lite0 forward 13-16x slower. Vectors
        # are the same to float tolerance, so falling back changes no fingerprint.
        if not _XLA_WARNED:
            _XLA_WARNED.append(True)
            log.warning("featx: jit_compile=True without an accelerator is 13-16x slower "
                        "on TensorFlow's CPU path; running the forward without XLA")
        jit_compile = False
    prepare = preprocessing.in_graph if preprocessing is not None else (lambda x: x)
    if backend == "tensorflow":
        import tensorflow as tf

        dtype = tf.uint8 if preprocessing is not None else tf.float32
        fn = tf.function(lambda x: tf.cast(model(prepare(x), training=False), tf.float32),
                         reduce_retracing=True, jit_compile=bool(jit_compile),
                         input_signature=[tf.TensorSpec(batch_shape, dtype)])
        return _Compiled(fn, lambda out: out.numpy())
    if backend == "jax":
        import jax

        fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, prepare(x),
                                                             training=False)[0])
        # Variable values are read at each call, so a model trained after its first
        # forward (the fine-tuner) is never run with stale weights. JAX dispatches
        # asynchronously: launch returns at once, fetch waits for the device.
        return _Compiled(lambda x: fn([v.value for v in model.trainable_variables],
                                      [v.value for v in model.non_trainable_variables], x),
                         _as_float32, asynchronous=True)
    if backend == "torch":
        import torch

        def launch(x):  # CUDA kernels are queued; the copy to the host waits for them
            with torch.no_grad():
                return keras.ops.cast(model(prepare(x), training=False), "float32")

        return _Compiled(launch, keras.ops.convert_to_numpy,
                         asynchronous=accelerator() is not None)
    return _Compiled(lambda x: keras.ops.cast(model(prepare(x), training=False), "float32"),
                     keras.ops.convert_to_numpy)


class PaddedForward:
    """``pixels -> float32 outputs`` at one compiled batch shape; short batches are padded.

    Every batch runs at ``(batch_size, *input_shape)`` so the compiled function
    never retraces; the padding rows are cut from the result. The engine's
    frozen forward and the fine-tuner's predictions both go through it.

    Parameters
    ----------
    model : keras.Model
    batch_size : int
    input_shape : tuple of int
        ``(height, width, channels)``.
    jit_compile : bool, default False
        XLA on the TensorFlow backend (see :func:`compiled_forward`).
    preprocessing : Preprocessing, optional
        Take uint8 pixels and preprocess inside the compiled function (see
        :func:`compiled_forward`); without it, float32 input already
        preprocessed.
    runtime : {"keras", "openvino", "openvino-bf16"}, default "keras"
        Resolved runtime (see :func:`~featx.engine.resolve_runtime`).
    identity : str
        The backbone's fingerprint (names the OpenVINO cache).

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.engine import PaddedForward
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> forward = PaddedForward(bb.model, 4, (32, 32, 3))
    >>> forward(np.zeros((3, 32, 32, 3), np.float32)).shape
    (3, 1280)
    """

    def __init__(self, model, batch_size: int, input_shape: Tuple[int, ...],
                 jit_compile: bool = False, preprocessing=None, runtime: str = "keras",
                 identity: str = ""):
        self.model = model
        self.runtime, self.identity = runtime, identity
        self.batch_size = int(batch_size)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.jit_compile = bool(jit_compile)
        self.preprocessing = preprocessing
        self.dtype = np.uint8 if preprocessing is not None else np.float32
        self._fn = None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.dispatch(pixels).result()

    def dispatch(self, pixels: np.ndarray) -> "InFlight":
        """Start the forward of ``pixels`` and return at once where the backend allows
        (JAX; torch on CUDA): the caller prepares or stores another batch meanwhile and
        collects this one with :meth:`InFlight.result`.

        The backend may read ``pixels`` until then: do not overwrite them before.
        """
        n = len(pixels)
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} exceeds the compiled batch size {self.batch_size}")
        if self._fn is None:
            self._fn = compiled_forward(self.model, (self.batch_size, *self.input_shape),
                                        self.jit_compile, self.preprocessing, self.runtime,
                                        self.identity)
        if isinstance(pixels, DevicePixels):  # already on the device: no host round trip
            if self.preprocessing is None or self.runtime != "keras":
                raise ValueError("device batches go to the Keras forward that takes uint8")
            pixels = pixels.padded(self.batch_size).for_backend()
        else:
            pixels = np.asarray(pixels, dtype=self.dtype)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n, *pixels.shape[1:]), dtype=self.dtype)
                pixels = np.concatenate([pixels, pad])
        fn = self._fn
        return InFlight(fn.launch(pixels), fn.fetch, n, fn.asynchronous)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fn"] = None  # compiled functions do not pickle; rebuilt on first use
        return state


class InFlight:
    """A forward started by :meth:`PaddedForward.dispatch`; :meth:`result` waits for it.

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.engine import PaddedForward
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> forward = PaddedForward(bb.model, 4, (32, 32, 3))
    >>> running = forward.dispatch(np.zeros((3, 32, 32, 3), np.float32))
    >>> running.result().shape
    (3, 1280)
    """

    __slots__ = ("_out", "_fetch", "n", "asynchronous")

    def __init__(self, out, fetch, n: int, asynchronous: bool = False):
        self._out, self._fetch, self.n = out, fetch, int(n)
        #: True when the backend may still be computing (JAX; torch on CUDA).
        self.asynchronous = bool(asynchronous)

    def result(self) -> np.ndarray:
        """float32 outputs of the rows that were given (padding cut)."""
        return np.asarray(self._fetch(self._out), dtype=np.float32)[:self.n]


class DevicePixels:
    """A batch of uint8 ``(n, H, W, 3)`` pixels that lives where it was decoded (the GPU).

    The GPU decoder (:class:`~featx.engine.GpuJpegDecoder`) fills batches on the
    device; :meth:`PaddedForward.dispatch` pads them there and hands them to the
    Keras backend through DLPack, so they never cross to the host and back.
    ``array`` is a torch tensor (on CUDA, in practice) or any array of the Python
    array API that exports DLPack (a JAX array; numpy, which stays on the host).

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.engine import DevicePixels, PaddedForward
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> forward = PaddedForward(bb.model, 4, (32, 32, 3), preprocessing=bb.preprocessing)
    >>> pixels = np.zeros((3, 32, 32, 3), np.uint8)
    >>> bool(np.allclose(forward.dispatch(DevicePixels(pixels)).result(), forward(pixels)))
    True
    """

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    @classmethod
    def stack(cls, images) -> "DevicePixels":
        """One batch of images that are each ``(H, W, 3)`` on the same device."""
        images = list(images)
        if _is_torch(images[0]):
            import torch

            return cls(torch.stack(images))
        return cls(_namespace(images[0]).stack(images))

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, rows) -> "DevicePixels":
        return self.take(rows)

    def take(self, rows) -> "DevicePixels":
        """The batch's ``rows`` (an index array), still on the device."""
        rows = np.asarray(rows, dtype=np.int64)
        if _is_torch(self.array):
            import torch

            index = torch.as_tensor(rows, device=self.array.device)
            return DevicePixels(self.array[index])
        xp = _namespace(self.array)
        return DevicePixels(xp.take(self.array, xp.asarray(rows), axis=0))

    def padded(self, size: int) -> "DevicePixels":
        """The batch with zero images appended up to ``size`` rows (on the device)."""
        extra = size - len(self)
        if extra <= 0:
            return self
        shape = (extra, *self.array.shape[1:])
        if _is_torch(self.array):
            import torch

            return DevicePixels(torch.cat([self.array, self.array.new_zeros(shape)]))
        xp = _namespace(self.array)
        return DevicePixels(xp.concat([self.array, xp.zeros(shape, dtype=self.array.dtype)]))

    def for_backend(self):
        """The same memory as the Keras backend's own array, through DLPack (numpy, on
        the host already, is passed as it is)."""
        if isinstance(self.array, np.ndarray):
            return self.array
        backend = import_keras().backend.backend()
        if backend == "jax":
            import jax.dlpack

            return jax.dlpack.from_dlpack(self.array)
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.experimental.dlpack.from_dlpack(self.array.__dlpack__())
        if backend == "torch":
            import torch

            return torch.from_dlpack(self.array)
        return self.to_host()  # a backend without DLPack: through the host

    def to_host(self) -> np.ndarray:
        """The pixels as numpy (one transfer)."""
        if _is_torch(self.array):
            return self.array.cpu().numpy()
        return np.asarray(self.array)


def _is_torch(array) -> bool:
    return type(array).__module__.startswith("torch")


def _namespace(array):
    """The Python array API namespace of ``array`` (numpy for numpy arrays)."""
    if isinstance(array, np.ndarray):
        return np
    return array.__array_namespace__()
