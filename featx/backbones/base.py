"""``get_backbone``: one builder signature for every family, like keras.applications.

A :class:`Backbone` bundles the frozen Keras model, its preprocessing (as data)
and a fingerprint that changes whenever anything that changes the vectors
changes: name, weights, input size, pooling, preprocessing mode, dtype.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from .._env import accelerator, import_keras, sha256_file
from ..errors import FeatxError, InvalidParameterError, WeightsUnavailableError
from . import packaged
from ._assign import assign_weights_by_name
from .preprocessing import Preprocessing, get_preprocessing
from .registry import BackboneSpec, get_spec, split_constructor
from .weights import (
    ResolvedWeights,
    describe_weights_choice,
    fix_efficientnet_normalization,
    keras_downloads,
    load_weights_file,
    random_weights_digest,
    seeded_init,
)

__all__ = ["Backbone", "get_backbone", "POOLINGS", "DTYPES", "imagenet_class_names",
           "decode_predictions", "offline_available", "resolve_weights"]

POOLINGS = ("avg", "max", "gem")
#: Compute dtypes → Keras dtype policies. Variables stay float32 in every case (so
#: weights load and assign the same way); "bfloat16" is Keras' mixed_bfloat16.
DTYPES = {"float32": "float32", "mixed_float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
#: Bumped when the fingerprint recipe changes, so old store groups are not reused.
FINGERPRINT_VERSION = 1

_BUILD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _gem_layer_class():
    keras = import_keras()

    @keras.saving.register_keras_serializable(package="featx")
    class GeneralizedMeanPooling2D(keras.layers.Layer):
        """GeM pooling, ``mean(x ** p) ** (1 / p)`` over H and W (Radenović et al.).

        ``p = 1`` is average pooling and ``p → ∞`` max pooling; ``p = 3`` is the
        usual choice for retrieval features.
        """

        def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
            super().__init__(**kwargs)
            self.p = float(p)
            self.eps = float(eps)

        def call(self, inputs):
            ops = keras.ops
            x = ops.maximum(inputs, self.eps)
            return ops.power(ops.mean(ops.power(x, self.p), axis=(1, 2)), 1.0 / self.p)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "p": self.p, "eps": self.eps}

    return GeneralizedMeanPooling2D


def _pooling_layer(pooling: str, name: str):
    keras = import_keras()
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name)
    return _gem_layer_class()(name=name)


class Backbone:
    """A frozen, pretrained CNN with its preprocessing and fingerprint.

    Build one with :func:`get_backbone`; the engine (:class:`featx.Embedder`)
    is what runs it on images.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"efficientnet_lite0"``.
    spec : BackboneSpec
        The registry row.
    input_size : int
        Square input side the model runs at.
    dim : int
        Width of the model's output vector (pooled features, or 1000 logits
        with ``include_top=True``).
    pooling : str or None
        ``"avg"``, ``"max"``, ``"gem"``; None with ``include_top=True``.
    dtype : str
    weights : ResolvedWeights
        Kind, digest and source of the weights.
    preprocessing : Preprocessing
        The family's own preprocessing, applied by :meth:`preprocess`.
    fingerprint : str
        Hex sha256 identifying every input to the vectors.
    model : keras.Model
        Frozen (``trainable=False``) model from preprocessed float input to vectors.

    Examples
    --------
    >>> import numpy as np, featx
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> (bb.name, bb.input_size, bb.dim, len(bb.fingerprint))
    ('mobilenet_v2', 32, 1280, 64)
    >>> float(bb.preprocess(np.zeros((1, 32, 32, 3), np.uint8)).min())
    -1.0
    """

    def __init__(self, spec: BackboneSpec, model, weights: ResolvedWeights, *,
                 input_size: int, pooling: Optional[str], dtype: str, include_top: bool):
        self.spec = spec
        self.name = spec.name
        self.model = model
        self.weights = weights
        self.input_size = int(input_size)
        self.pooling = pooling
        self.dtype = dtype
        self.include_top = bool(include_top)
        self.preprocessing: Preprocessing = get_preprocessing(spec.preprocessing)
        self.dim = int(model.output_shape[-1])
        self.fingerprint = hashlib.sha256(
            json.dumps(self._identity(), sort_keys=True).encode("utf8")).hexdigest()

    def _identity(self) -> dict:
        return {
            "fingerprint_version": FINGERPRINT_VERSION,
            "name": self.name,
            "weights": self.weights.digest,
            "input_size": self.input_size,
            "pooling": self.pooling,
            "include_top": self.include_top,
            "preprocessing": self.preprocessing.mode,
            "dtype": self.dtype,
        }

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(input_size, input_size, 3)``."""
        return (self.input_size, self.input_size, 3)

    def preprocess(self, images) -> np.ndarray:
        """The family's own preprocessing of a uint8 NHWC RGB batch → float32."""
        return self.preprocessing(images)

    def describe(self) -> dict:
        """JSON-ready description; stored beside the vectors in an EmbeddingStore.

        Only facts that decide the vectors go in (no local file paths), so the
        same backbone built on two machines describes itself identically.
        """
        return {
            **self._identity(),
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "weights_kind": self.weights.kind,
            "family": self.spec.family,
            "preprocessing_params": self.preprocessing.to_dict(),
        }

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, weights={self.weights.kind}, "
                f"input_size={self.input_size}, pooling={self.pooling!r}, dim={self.dim}, "
                f"fingerprint={self.fingerprint[:12]}…)")


def _construct(spec: BackboneSpec, input_size: int, include_top: bool, keras_weights):
    keras = import_keras()
    kind, target = split_constructor(spec)
    shape = (input_size, input_size, 3)
    if kind == "featx":
        from .efficientnet_lite import build_efficientnet_lite

        return build_efficientnet_lite(spec.name, input_shape=shape, include_top=include_top)
    constructor = getattr(keras.applications, target)
    kwargs = dict(include_top=include_top, weights=keras_weights, input_shape=shape)
    if include_top:
        kwargs["classifier_activation"] = None  # logits, uniformly across families
    try:
        return constructor(**kwargs)
    except WeightsUnavailableError:
        raise
    except ValueError as exc:
        raise InvalidParameterError(f"cannot build {spec.name} with input_size={input_size}, "
                                    f"include_top={include_top}: {exc}") from exc


@contextlib.contextmanager
def _dtype_policy(policy: str):
    keras = import_keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def default_compute_dtype() -> str:
    """The compute dtype when the user gives none: ``"bfloat16"`` on an accelerator
    (1.47x the float32 forward on an H200), ``"float32"`` on a CPU (where reduced
    precision is slower). The dtype is part of the fingerprint either way.

    Examples
    --------
    >>> from featx.backbones import default_compute_dtype
    >>> default_compute_dtype() in ("float32", "bfloat16")
    True
    """
    return "bfloat16" if accelerator() else "float32"


def get_backbone(name: str, weights: Union[str, Path, None] = "packaged", input_size: Optional[int] = None,
                 pooling: str = "avg", *, include_top: bool = False, dtype: str = "float32",
                 seed: int = 0) -> Backbone:
    """Build a frozen backbone by name.

    Parameters
    ----------
    name : str
        A name from :func:`featx.list_backbones` (aliases and case variants accepted).
    weights : {"auto", "packaged", "imagenet"}, path or None, default "packaged"
        ``"auto"``: ``"packaged"`` where installed, else ``"imagenet"``
        (:func:`resolve_weights`); ``"packaged"``: real ImageNet weights from
        pip (Lite0/1/2, MobileNet v1);
        ``"imagenet"``: Keras' download; a ``.weights.h5`` / ``.h5`` / ``.keras``
        path; None: random initialisation from ``seed``.
    input_size : int, optional
        Square input side; defaults to the family's pretrained size.
    pooling : {"avg", "max", "gem"}, default "avg"
        How the last feature map becomes a vector.
    include_top : bool, default False
        Keep the ImageNet classifier: the model then outputs 1000 logits.
    dtype : {"float32", "mixed_float16", "bfloat16", "auto"}
        Compute dtype. The reduced ones are for accelerators (on a CPU they are
        slower); variables stay float32, vectors come back as float32, and the
        dtype is part of the fingerprint, so their vectors never mix with
        float32 ones. ``"auto"``: :func:`default_compute_dtype` (bfloat16 on an
        accelerator, float32 on a CPU); ``Backbone.dtype`` says which.
    seed : int, default 0
        Seed of the random initialisation when ``weights=None``.

    Returns
    -------
    Backbone

    Raises
    ------
    UnknownBackboneError
        For a name not in the table (the message lists close matches).
    WeightsUnavailableError
        When the weights asked for cannot be had offline, with the way out.
    WeightsMismatchError
        When a weights file does not fit, naming the first layer.

    Examples
    --------
    >>> import featx
    >>> bb = featx.get_backbone("resnet50v2", weights=None, input_size=64, pooling="gem")
    >>> bb.dim, bb.pooling
    (2048, 'gem')
    """
    spec = get_spec(name)
    choice = describe_weights_choice(resolve_weights(name, weights))
    if pooling not in POOLINGS:
        raise InvalidParameterError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if dtype == "auto":
        dtype = default_compute_dtype()
    if dtype not in DTYPES:
        raise InvalidParameterError(f"dtype must be one of {sorted(DTYPES)} or 'auto', "
                                    f"got {dtype!r}")
    size = int(input_size or spec.input_size)
    if size < spec.min_size:
        raise InvalidParameterError(f"{spec.name} needs input_size >= {spec.min_size}, got {size}")
    if choice == "packaged" and not packaged.is_available(spec.packaged):
        # Raise before building anything: the message says which pip install helps.
        packaged.load_packaged(spec.packaged, spec.name)

    keras = import_keras()
    # Keras layers take the global dtype policy when they are created: set it for the
    # build only. Keras' name counters and our download watch are process-wide too.
    with _BUILD_LOCK, _dtype_policy(DTYPES[dtype]):
        if choice == "random":
            with seeded_init(seed):
                core = _construct(spec, size, include_top, None)
            resolved = ResolvedWeights("random", random_weights_digest(core, seed), f"random:{seed}")
        elif choice == "imagenet":
            if spec.keras_name is None:
                raise WeightsUnavailableError(
                    f"{spec.name} is not part of keras.applications, so Keras has no "
                    f"'imagenet' download for it; use weights='packaged'.")
            with keras_downloads(spec.name) as fetched:
                core = _construct(spec, size, include_top, "imagenet")
            resolved = ResolvedWeights("imagenet", sha256_file(fetched[-1]) if fetched else "imagenet",
                                       fetched[-1] if fetched else "imagenet")
        elif choice == "packaged":
            core = _construct(spec, size, include_top, None)
            arrays, digest, source = packaged.load_packaged(spec.packaged, spec.name)
            assign_weights_by_name(core, arrays, source=source)
            resolved = ResolvedWeights("packaged", digest, source)
        else:
            core = _construct(spec, size, include_top, None)
            resolved = load_weights_file(core, weights)
            if spec.keras_imagenet_rescale_fix:
                fix_efficientnet_normalization(core)
        if include_top:
            model = core
        else:
            features = _pooling_layer(pooling, "featx_pool")(core.output)
            model = keras.Model(core.input, features, name=f"featx_{spec.name}")
    model.trainable = False
    return Backbone(spec, model, resolved, input_size=size,
                    pooling=None if include_top else pooling, dtype=dtype,
                    include_top=include_top)


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet class names in index order (shipped with featx; no download).

    Examples
    --------
    >>> from featx.backbones import imagenet_class_names
    >>> imagenet_class_names()[285]
    'Egyptian cat'
    """
    path = Path(__file__).with_name("imagenet_classes.txt")
    names = path.read_text(encoding="utf8").splitlines()
    if len(names) != 1000:
        raise FeatxError(f"{path} should list 1000 class names, found {len(names)}")
    return names


def decode_predictions(logits, top: int = 5) -> List[List[Tuple[str, float]]]:
    """Top-``top`` ``(class name, probability)`` per row of ImageNet logits.

    Keras' ``decode_predictions`` downloads its class index at run time; this
    uses the list shipped with featx.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.backbones import decode_predictions
    >>> logits = np.zeros((1, 1000)); logits[0, 285] = 10.0
    >>> decode_predictions(logits, top=1)[0][0][0]
    'Egyptian cat'
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 1000:
        raise FeatxError(f"expected logits of shape (n, 1000), got {logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    names = imagenet_class_names()
    order = np.argsort(-probs, axis=1)[:, :top]
    return [[(names[i], float(p[i])) for i in row] for p, row in zip(probs, order)]


def resolve_weights(name: str, weights):
    """``weights`` with ``"auto"`` resolved: ``"packaged"`` where featx has pip-packaged
    ImageNet weights for ``name`` installed, else ``"imagenet"`` (Keras' download).

    Examples
    --------
    >>> from featx.backbones import resolve_weights
    >>> resolve_weights("resnet50", "auto"), resolve_weights("resnet50", None)
    ('imagenet', None)
    """
    if isinstance(weights, str) and weights == "auto":
        return "packaged" if offline_available(name) else "imagenet"
    return weights


def offline_available(name: str) -> bool:
    """True when ``weights="packaged"`` works for ``name`` on this machine.

    Examples
    --------
    >>> from featx.backbones import offline_available
    >>> offline_available("resnet50")  # no pip package carries its weights
    False
    """
    return packaged.is_available(get_spec(name).packaged)

