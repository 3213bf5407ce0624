"""Process-level facts featx needs in one place: where its cache lives, and Keras.

Keras (and through it the backend) is imported lazily, so ``featx backbones``,
the store and the decoder work — and fail with a useful message — on a
machine where no backend is installed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

from .errors import FeatxError, MissingDependencyError

__all__ = ["accelerator", "featx_home", "file_lock", "import_keras", "sha256_file"]

_BACKEND_EXTRAS = {
    "tensorflow": "pip install 'featx[cpu]'   (tensorflow-cpu; or 'featx[gpu]' for CUDA)",
    "jax": "pip install 'featx[jax]'",
    "torch": "pip install 'featx[torch]'",
}


def featx_home() -> Path:
    """featx's cache folder: ``$FEATX_HOME``, else ``~/.cache/featx``; created on demand.

    Examples
    --------
    >>> from featx._env import featx_home
    >>> featx_home().is_dir()
    True
    """
    root = Path(os.environ.get("FEATX_HOME") or Path.home() / ".cache" / "featx").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


@functools.lru_cache(maxsize=None)
def import_keras():
    """Import Keras 3, or say which extra installs a backend for it.

    TensorFlow's C++ start-up chatter is silenced unless the user set
    ``TF_CPP_MIN_LOG_LEVEL`` themselves.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "keras"
        hint = _BACKEND_EXTRAS.get(backend, _BACKEND_EXTRAS["tensorflow"])
        raise MissingDependencyError(
            f"featx needs Keras 3 with a backend (KERAS_BACKEND={backend!r}); "
            f"importing it failed on {missing!r}. Install one: {hint}") from exc
    major = int(keras.__version__.split(".")[0])
    if major < 3:
        raise MissingDependencyError(
            f"featx needs Keras >= 3, found {keras.__version__}: pip install 'keras>=3'")
    return keras


@functools.lru_cache(maxsize=1)
def accelerator():
    """The accelerator Keras' backend computes on, e.g. ``"gpu NVIDIA H200"``; None on a CPU.

    Asked of the backend itself (JAX's devices, TensorFlow's GPUs, torch's CUDA),
    so ``CUDA_VISIBLE_DEVICES=""`` or ``JAX_PLATFORMS=cpu`` count as no accelerator.

    Examples
    --------
    >>> from featx._env import accelerator
    >>> accelerator() is None or isinstance(accelerator(), str)
    True
    """
    backend = import_keras().backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return None if device.platform == "cpu" else f"{device.platform} {device.device_kind}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu {gpus[0].name}" if gpus else None
        if backend == "torch":
            import torch

            return f"gpu {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else None
    except Exception:  # a broken driver is "no accelerator", not a crash
        return None
    return None


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path, timeout: float = 600.0, what: str = "a featx cache folder") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent), waiting at most ``timeout``.

    For caches several processes may fill at once (a materialised dataset): the
    second waits for the first and then uses its result. Polls, so the wait is
    bounded and Ctrl-C is seen.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.lock")
    >>> with file_lock(path):
    ...     pass
    """
    import fcntl

    deadline = time.monotonic() + timeout
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FeatxError(f"waited {timeout:g} s for the lock {path} of {what}; "
                                     "another featx process holds it") from None
                time.sleep(0.05)  # polling the lock; the wait is bounded by the deadline
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
