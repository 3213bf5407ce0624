"""Where the frozen forward runs: Keras itself, or the model compiled by OpenVINO.

The Keras model stays the source of truth (built and loaded as always). With
``runtime="openvino"`` the engine's one compiled forward — the family's
preprocessing on uint8 pixels, then the model — is traced once as a TensorFlow
concrete function, converted by ``openvino.convert_model`` and compiled for the
CPU. On the 2-core AVX-512 machine this was measured on, OpenVINO f32 ran
EfficientNet-Lite0 at 1.36x the CPU-efficiency of TensorFlow's own forward,
with vectors equal to 1.2e-5. The converted model is cached under
``$FEATX_HOME/runtime/`` by what decides it (backbone fingerprint, batch shape,
preprocessing, OpenVINO version), so a second process loads it in a fraction
of the conversion time.

Float32 OpenVINO vectors share the Keras fingerprint: a table-driven test over
every backbone with offline weights and a sample of other families holds them
to max |Δ| ≤ 1e-4 on real images. Conversion goes through TensorFlow, so the
runtime needs the TensorFlow backend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Optional, Tuple

import numpy as np

from .._env import accelerator, featx_home, file_lock, import_keras
from ..errors import FeatxError, InvalidParameterError, MissingDependencyError

__all__ = ["RUNTIMES", "openvino_forward", "resolve_runtime", "runtime_unavailable"]

log = logging.getLogger("featx")

#: What ``runtime=`` accepts. ``"openvino-bf16"`` runs OpenVINO in bfloat16 where the CPU
#: has it: not exact, so its vectors are stored under their own fingerprint
#: (:func:`~featx.engine.vector_fingerprint`).
RUNTIMES = ("keras", "openvino", "openvino-bf16", "auto")
#: OpenVINO's inference precision per runtime.
_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}


def runtime_unavailable(runtime: str) -> Optional[str]:
    """Why ``runtime`` cannot run in this process; None when it can.

    Examples
    --------
    >>> from featx.engine import runtime_unavailable
    >>> runtime_unavailable("keras") is None
    True
    """
    if runtime == "keras":
        return None
    if runtime not in _PRECISION:
        raise InvalidParameterError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (pip install 'featx[openvino]')"
    backend = import_keras().backend.backend()
    if backend != "tensorflow":
        return (f"the OpenVINO runtime converts through TensorFlow; Keras runs on {backend} "
                "(KERAS_BACKEND=tensorflow)")
    return None


def resolve_runtime(runtime: str) -> str:
    """``"keras"`` or ``"openvino"``: what a run uses for ``runtime``.

    ``"auto"`` takes OpenVINO on a CPU where it is installed (it is faster there
    and exact to 1e-4), Keras on an accelerator or without OpenVINO;
    ``"openvino"`` where it cannot run is refused with the reason.

    Examples
    --------
    >>> from featx.engine import resolve_runtime
    >>> resolve_runtime("keras"), resolve_runtime("auto") in ("keras", "openvino")
    ('keras', True)
    """
    if runtime not in RUNTIMES:
        raise InvalidParameterError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "keras":
        return "keras"
    if runtime == "auto":
        if accelerator() is not None or runtime_unavailable("openvino") is not None:
            return "keras"
        return "openvino"
    reason = runtime_unavailable(runtime)
    if reason is not None:
        raise MissingDependencyError(f"runtime={runtime!r} cannot run here: {reason}. Use "
                                     "runtime='keras', or 'auto' to take it where it can run.")
    return runtime


def openvino_forward(model, batch_shape: Tuple[int, ...], preprocessing, identity: str,
                     precision: str = "f32"):
    """``uint8 pixels -> float32 outputs`` through OpenVINO, converted once and cached on disk.

    Parameters
    ----------
    model : keras.Model
    batch_shape : tuple of int
        The one input shape, ``(batch, height, width, 3)``.
    preprocessing : Preprocessing
        Applied inside the converted graph, as in the Keras forward.
    identity : str
        What decides the model's outputs (the backbone's fingerprint): part of
        the cache file name, so a changed model is converted again.
    precision : {"f32", "bf16"}, default "f32"
        OpenVINO's inference precision. The converted model is the same; bf16 is
        chosen when it is compiled (CPUs without bf16 run f32).

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.engine import openvino_forward, runtime_unavailable
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> if runtime_unavailable("openvino") is None:
    ...     run = openvino_forward(bb.model, (2, 32, 32, 3), bb.preprocessing, bb.fingerprint)
    ...     print(run(np.zeros((2, 32, 32, 3), np.uint8)).shape)
    ... else:
    ...     print((2, 1280))
    (2, 1280)
    """
    import openvino as ov

    if precision == "bf16" and "BF16" not in ov.Core().get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"):
        log.warning("featx: this CPU has no bfloat16 support, so runtime='openvino-bf16' runs "
                    "in float32 here; its vectors stay stored apart from the exact runtimes'")
    key = hashlib.sha256("|".join([identity, "x".join(map(str, batch_shape)),
                                   preprocessing.mode, ov.__version__]).encode()
                         ).hexdigest()[:32]
    folder = featx_home() / "runtime" / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.xml"
    core = ov.Core()
    with file_lock(folder / f"{key}.lock", what="an OpenVINO model cache"):
        if not path.is_file():
            converted = _convert(model, batch_shape, preprocessing)
            # Written under a temporary name, then renamed: a reader never sees half a model.
            tmp = tempfile.mkdtemp(prefix=".convert-", dir=folder)
            try:
                ov.save_model(converted, os.path.join(tmp, "model.xml"), compress_to_fp16=False)
                os.replace(os.path.join(tmp, "model.bin"), folder / f"{key}.bin")
                os.replace(os.path.join(tmp, "model.xml"), path)
            finally:
                for name in os.listdir(tmp):
                    os.unlink(os.path.join(tmp, name))
                os.rmdir(tmp)
        # f32 unless asked: OpenVINO would run bf16 on CPUs that have it, which is not exact.
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[0], dtype=np.float32, copy=True)

    return run


def _convert(model, batch_shape, preprocessing):
    import openvino as ov
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(batch_shape, tf.uint8)])
    def forward(x):
        return tf.cast(model(preprocessing.in_graph(x), training=False), tf.float32)

    try:
        return ov.convert_model(forward.get_concrete_function())
    except Exception as exc:  # the converter's errors are many and undocumented
        raise FeatxError(f"OpenVINO could not convert {model.name}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300]}; use runtime='keras'") from exc
