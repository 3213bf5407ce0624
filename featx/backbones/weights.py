"""Weights resolution: ``"imagenet"`` | ``"packaged"`` | a file path | ``None``.

Every choice ends in the same two facts: weights assigned into a Keras model,
and a digest that identifies them (it goes into the backbone fingerprint, so
vectors computed with different weights can never be mixed in a store).

``"imagenet"``
    Keras' own download into ``$KERAS_HOME/models`` (``~/.keras/models``).
    With no network this fails within seconds with
    :class:`~featx.errors.WeightsUnavailableError`, naming the file Keras
    wanted and the two ways out.
``"packaged"``
    Real ImageNet weights that arrive by pip (see :mod:`featx.backbones.packaged`).
a path
    ``.weights.h5`` (Keras 3), legacy ``.h5`` (Keras 2 / keras-applications
    files) or ``.keras``.  Shapes are checked layer by layer first, so a wrong
    file is refused naming the first layer that does not fit.
``None``
    Random initialisation from a seed; reproducible, and fingerprinted by the
    seed plus a hash of the initial values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import random
import re
import socket
import threading
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .._env import import_keras, sha256_file
from ..errors import InvalidParameterError, WeightsMismatchError, WeightsUnavailableError
from ._assign import assign_weights_by_name

__all__ = [
    "ResolvedWeights",
    "describe_weights_choice",
    "keras_downloads",
    "read_weights_file",
    "load_weights_file",
    "seeded_init",
    "random_weights_digest",
    "fix_efficientnet_normalization",
]

#: How long one socket operation of a Keras download may block before we give up.
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0

_PATCH_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights came from.

    Attributes
    ----------
    kind : {"imagenet", "packaged", "file", "random"}
    digest : str
        sha256 of the weights file (for ``file`` and ``imagenet``), of the pip
        package's source file (``packaged``), or ``random:<seed>:<value hash>``.
    source : str
        The file the weights were read from, or ``random:<seed>``.

    Examples
    --------
    >>> import featx
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> bb.weights.kind, bb.weights.source
    ('random', 'random:0')
    """

    kind: str
    digest: str
    source: str


def describe_weights_choice(weights) -> str:
    """Normalise the user's ``weights`` argument to a kind name, or raise a clear error.

    Examples
    --------
    >>> from featx.backbones.weights import describe_weights_choice
    >>> [describe_weights_choice(w) for w in (None, "packaged", "w.weights.h5")]
    ['random', 'packaged', 'file']
    """
    if weights is None:
        return "random"
    if isinstance(weights, os.PathLike):
        return "file"
    if isinstance(weights, str):
        if weights in ("imagenet", "packaged", "auto"):
            return weights
        return "file"
    raise InvalidParameterError(
        "weights must be 'auto', 'imagenet', 'packaged', None (random init) or a path to a "
        f".weights.h5 / .h5 / .keras file; got {type(weights).__name__}: {weights!r}")


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


@contextlib.contextmanager
def keras_downloads(model_label: str, timeout: float = DOWNLOAD_SOCKET_TIMEOUT_S):
    """Watch the files Keras fetches while building a model with ``weights="imagenet"``.

    Yields a list that receives the local path of every file Keras obtained
    (from its cache or the network).  A failed fetch becomes
    :class:`~featx.errors.WeightsUnavailableError` with the file name, the
    URL and the two ways out, and every socket operation is bounded by
    ``timeout`` so a black-holed network fails fast instead of hanging.

    Examples
    --------
    >>> from featx.backbones.weights import keras_downloads
    >>> with keras_downloads("ResNet50") as fetched:
    ...     pass  # keras.applications.ResNet50(weights="imagenet") would go here
    >>> fetched
    []
    """
    import_keras()
    from keras.src.utils import file_utils  # the module keras.applications calls

    original = file_utils.get_file
    fetched: List[str] = []

    def watched_get_file(fname=None, origin=None, *args, **kwargs):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            path = original(fname, origin, *args, **kwargs)
        except Exception as exc:  # Keras raises a bare Exception for URL failures
            name = fname or (origin or "").rsplit("/", 1)[-1]
            subdir = kwargs.get("cache_subdir", "datasets")
            target = _keras_home() / subdir / name
            raise WeightsUnavailableError(
                f"ImageNet weights for {model_label} are not available: Keras could not "
                f"download {name!r} from {origin} ({_short_reason(exc)}). Ways out: "
                f"(1) on a machine with network, download that URL and place the file at "
                f"{target} (set KERAS_HOME to use another folder) — Keras then uses it "
                f"without downloading; or (2) pass weights='/path/to/{name}'. With no "
                f"network at all, weights='packaged' gives real ImageNet weights for "
                f"efficientnet_lite0/1/2 and mobilenet."
            ) from exc
        finally:
            socket.setdefaulttimeout(previous)
        fetched.append(str(path))
        return path

    with _PATCH_LOCK:
        file_utils.get_file = watched_get_file
        try:
            yield fetched
        finally:
            file_utils.get_file = original


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^URL fetch failure on \S+:\s*", "", text)
    return text[:200]


# --------------------------------------------------------------------------- files


def _snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case`` (``Conv2D`` → ``conv2d``), the key of its h5 layout."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_local_names(model) -> List[str]:
    """The names Keras 3 gives a Functional model's layers inside a ``.weights.h5``.

    Keras addresses layers by class name plus a per-container counter, not by
    ``layer.name`` (those are auto-generated and differ between instances).
    """
    used: Dict[str, int] = {}
    names = []
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        if base in used:
            used[base] += 1
            names.append(f"{base}_{used[base]}")
        else:
            used[base] = 0
            names.append(base)
    return names


def _read_keras3_layout(h5file, model, source: str) -> Dict[str, List[np.ndarray]]:
    layers_group = h5file["layers"]
    out: Dict[str, List[np.ndarray]] = {}
    for layer, local in zip(model.layers, _keras3_local_names(model)):
        if not layer.weights:
            continue
        group = layers_group.get(local)
        if group is None or "vars" not in group:
            raise WeightsMismatchError(
                f"{source}: the file has no weights for layer {layer.name!r} "
                f"(expected an entry 'layers/{local}/vars'); it was saved from another "
                "architecture or another input configuration")
        var_group = group["vars"]
        keys = sorted(var_group.keys(), key=int)
        out[layer.name] = [np.asarray(var_group[k]) for k in keys]
    return out


def _read_legacy_layout(root, model, source: str) -> Dict[str, List[np.ndarray]]:
    def _decode(values):
        return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]

    file_layers = []
    for lname in _decode(root.attrs["layer_names"]):
        group = root[lname]
        wnames = _decode(group.attrs.get("weight_names", []))
        if wnames:
            file_layers.append((lname, [np.asarray(group[w]) for w in wnames]))
    model_layers = [layer for layer in model.layers if layer.weights]
    if len(file_layers) == len(model_layers):
        # Keras' own rule for legacy files: weighted layers match by order.
        return {layer.name: arrays for layer, (_, arrays) in zip(model_layers, file_layers)}
    # Different counts (a with-top file into a no-top model): match by layer name.
    by_name = dict(file_layers)
    out = {}
    for layer in model_layers:
        if layer.name not in by_name:
            raise WeightsMismatchError(
                f"{source}: the file has no weights for layer {layer.name!r} "
                f"({len(file_layers)} weighted layers in the file, {len(model_layers)} in "
                "the model, and the names do not line up)")
        out[layer.name] = by_name[layer.name]
    return out


def read_weights_file(path, model) -> Dict[str, List[np.ndarray]]:
    """Read a weights file into ``{model layer name: [arrays]}`` for ``model``.

    Understands Keras 3 ``.weights.h5``, legacy Keras 2 ``.h5`` (also full-model
    files with a ``model_weights`` group) and ``.keras`` archives.

    Raises
    ------
    WeightsUnavailableError
        The file does not exist or cannot be read.
    WeightsMismatchError
        The file lacks weights for a layer of ``model``.

    Examples
    --------
    >>> import keras, tempfile, os
    >>> from featx.backbones.weights import read_weights_file
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> p = os.path.join(tempfile.mkdtemp(), "m.weights.h5"); m.save_weights(p)
    >>> [a.shape for a in read_weights_file(p, m)["d"]]
    [(4, 2), (2,)]
    """
    import h5py

    source = str(path)
    if not os.path.isfile(source):
        raise WeightsUnavailableError(
            f"weights file {source!r} does not exist (expected a .weights.h5, .h5 or "
            ".keras file)")
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise WeightsMismatchError(
                        f"{source}: a zip archive without model.weights.h5 — not a .keras file")
                payload = io.BytesIO(archive.read("model.weights.h5"))
            with h5py.File(payload, "r") as handle:
                return _read_keras3_layout(handle, model, source)
        with h5py.File(source, "r") as handle:
            if "layer_names" in handle.attrs:
                return _read_legacy_layout(handle, model, source)
            if "model_weights" in handle and "layer_names" in handle["model_weights"].attrs:
                return _read_legacy_layout(handle["model_weights"], model, source)
            if "layers" in handle:
                return _read_keras3_layout(handle, model, source)
            raise WeightsMismatchError(
                f"{source}: an HDF5 file in no Keras weights layout featx knows "
                "(expected a 'layers' group or a 'layer_names' attribute)")
    except (OSError, zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(
            f"cannot read weights file {source!r}: {exc} (expected a .weights.h5, .h5 or "
            ".keras file)") from exc


def load_weights_file(model, path) -> ResolvedWeights:
    """Check every layer's shapes against ``path``, then assign; returns the file's identity.

    Examples
    --------
    >>> import os, tempfile, featx
    >>> from featx.backbones.weights import load_weights_file
    >>> source = featx.get_backbone("mobilenet_v2", weights=None, input_size=32, seed=1)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.weights.h5")
    >>> source.model.save_weights(path)
    >>> target = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> load_weights_file(target.model, path).kind
    'file'
    """
    weights = read_weights_file(path, model)
    assign_weights_by_name(model, weights, source=str(path))
    return ResolvedWeights("file", sha256_file(path), str(Path(path).resolve()))


# --------------------------------------------------------------------------- random init


@contextlib.contextmanager
def seeded_init(seed: int):
    """Make Keras' initialisers deterministic for ``seed`` without leaking global state.

    ``keras.utils.set_random_seed`` reseeds Python, numpy and the backend; the
    Python and numpy states are restored afterwards so building a backbone does
    not change a caller's random streams.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.backbones.weights import seeded_init
    >>> state = np.random.get_state()[1][:3].tolist()
    >>> with seeded_init(7):
    ...     pass  # build a Keras model here
    >>> np.random.get_state()[1][:3].tolist() == state
    True
    """
    keras = import_keras()
    py_state = random.getstate()
    np_state = np.random.get_state()
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def random_weights_digest(model, seed: int, sample: int = 4096) -> str:
    """``random:<seed>:<hash of the initial values>``.

    The value hash makes the fingerprint honest even if a backend's initialisers
    were not reproducible: a store then misses instead of mixing vectors.  The
    first ``sample`` values of every tensor (plus all shapes) are enough to tell
    two initialisations apart and keep this cheap for 100M-parameter models.

    Examples
    --------
    >>> import featx
    >>> from featx.backbones.weights import random_weights_digest
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> random_weights_digest(bb.model, 0) == bb.weights.digest
    True
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        values = np.asarray(weight)
        digest.update(repr(values.shape).encode())
        digest.update(np.ascontiguousarray(values.reshape(-1)[:sample]).tobytes())
    return f"random:{int(seed)}:{digest.hexdigest()[:16]}"


# --------------------------------------------------------------------------- family fixes

_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def fix_efficientnet_normalization(model) -> bool:
    """Square the Normalization variance when a file stored the ImageNet std there.

    Keras' EfficientNet B0–B7 weight files carry the ImageNet *std* in the
    Normalization layer's variance slot; Keras compensates with an extra
    Rescaling layer only when it downloads the weights itself (keras issue
    49930).  Weights loaded from a path need the same correction, applied here
    only when the stored values are exactly that std, so other files are left
    alone.  Returns whether the fix was applied.

    Examples
    --------
    >>> import featx
    >>> from featx.backbones.weights import fix_efficientnet_normalization
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> fix_efficientnet_normalization(bb.model)  # no Normalization layer: left alone
    False
    """
    keras = import_keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            mean, variance = (np.asarray(w) for w in layer.get_weights()[:2])
            rest = layer.get_weights()[2:]
            if variance.shape == (3,) and np.allclose(variance, _IMAGENET_STD, atol=1e-4):
                layer.set_weights([mean, variance ** 2, *rest])
                return True
            return False
    return False


def resolve_packaged(key: Optional[str], backbone_name: str):
    """Weights dict and identity for the pip-packaged source ``key`` (lazy import)."""
    from . import packaged

    return packaged.load_packaged(key, backbone_name)
