"""``FineTuneClassifier`` and its helpers (see :mod:`featx.finetune`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import type_of_target

from .._env import import_keras
from .._params import image_input_tags
from ..errors import FeatxError, InvalidDataError, InvalidParameterError
from ..images import RESIZE_POLICIES, as_sources
from ._trainer import Trainer, class_weights, split_validation, sub_seed, unfreeze_candidates

__all__ = ["FineTuneClassifier", "AUGMENTATIONS", "custom_objects", "load", "unfreeze_candidates"]

log = logging.getLogger("featx")

#: Names accepted in ``augment`` and the Keras layer each one adds (factor 0.1:
#: ±10 % zoom/contrast/translation/brightness, ±0.1 turn = ±36° rotation, shear
#: up to 0.1 on each axis; "flip" mirrors left-right, "vflip" top-bottom).
AUGMENTATIONS = ("flip", "rotate", "zoom", "contrast", "translate", "brightness", "shear",
                 "vflip")

#: What phase 1 trains the head on: augmented images through the frozen base
#: (the tutorials' way), or the base's pooled vectors, embedded once by
#: :class:`featx.Embedder` (Keras' guide's "feature extraction" variant).
PHASE1_INPUTS = ("images", "vectors")

#: Epochs without a better ``val_loss`` before a phase stops (``early_stopping=True``).
DEFAULT_PATIENCE = 3

# ----------------------------------------------------------------- Keras classes


@functools.lru_cache(maxsize=None)
def _classes():
    """The Keras classes of fine-tuning (``featx/finetune/_keras.py``), imported on first use.

    Keras is imported lazily throughout featx (``featx backbones`` works without a
    backend); importing ``_keras`` imports it and registers the classes as
    ``featx>…``, so a ``.keras`` file loads once this has run (:func:`load` and
    unpickling call it).
    """
    from . import _keras

    return dict(ImagePreprocessing=_keras.ImagePreprocessing, InferenceBase=_keras.InferenceBase,
                ImageBatches=_keras.ImageBatches, VectorBatches=_keras.VectorBatches)


def custom_objects() -> Dict[str, type]:
    """The Keras classes a fine-tuned ``.keras`` file needs, registered as ``featx>…``.

    Calling this (or importing :func:`load`) before ``keras.saving.load_model``
    is enough; the dict is for an explicit ``custom_objects=`` argument.

    Examples
    --------
    >>> from featx.finetune import custom_objects
    >>> sorted(custom_objects())
    ['ImagePreprocessing', 'InferenceBase']
    """
    c = _classes()
    return {"ImagePreprocessing": c["ImagePreprocessing"], "InferenceBase": c["InferenceBase"]}


# ----------------------------------------------------------------- helpers


def _pair(value, name: str, kind):
    """``x`` → ``(x, x)``; a pair stays a pair; anything else is refused."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return (value, value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number or a pair (phase 1, phase 2); "
                                    f"got {value!r}") from None
    return first, second


def _seed_from(random_state) -> Optional[int]:
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31 - 1))
    raise InvalidParameterError(f"random_state must be None, an int or a numpy RandomState; "
                                f"got {random_state!r}")


def _augmentation_layers(augment, seed):
    keras = import_keras()
    if augment is None:
        return []
    names = (augment,) if isinstance(augment, str) else tuple(augment)
    makers = {
        "flip": lambda s: keras.layers.RandomFlip("horizontal", seed=s, name="flip"),
        "rotate": lambda s: keras.layers.RandomRotation(0.1, seed=s, name="rotate"),
        "zoom": lambda s: keras.layers.RandomZoom(0.1, seed=s, name="zoom"),
        "contrast": lambda s: keras.layers.RandomContrast(0.1, seed=s, name="contrast"),
        "translate": lambda s: keras.layers.RandomTranslation(0.1, 0.1, seed=s,
                                                              name="translate"),
        "brightness": lambda s: keras.layers.RandomBrightness(0.1, value_range=(0, 255),
                                                              seed=s, name="brightness"),
        "shear": lambda s: keras.layers.RandomShear(0.1, 0.1, seed=s, name="shear"),
        "vflip": lambda s: keras.layers.RandomFlip("vertical", seed=s, name="vflip"),
    }
    layers = []
    for k, name in enumerate(names):
        if name not in makers:
            raise InvalidParameterError(
                f"augment: unknown augmentation {name!r}; expected names from "
                f"{AUGMENTATIONS} or None")
        if name in names[:k]:
            raise InvalidParameterError(f"augment: {name!r} is listed twice")
        layers.append(makers[name](sub_seed(seed, k + 1)))
    return layers


def _model_to_bytes(model) -> bytes:
    keras = import_keras()
    with tempfile.TemporaryDirectory(prefix="featx-ft-") as tmp:
        path = os.path.join(tmp, "model.keras")
        keras.saving.save_model(model, path)
        with open(path, "rb") as handle:
            return handle.read()


def _load_model_file(path: str):
    keras = import_keras()
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects(), compile=False)
    except (OSError, ValueError) as exc:
        raise FeatxError(f"cannot load fine-tuned model {path!r}: {exc}; expected a .keras "
                         "file written by FineTuneClassifier.save") from exc


def _model_from_bytes(data: bytes):
    with tempfile.TemporaryDirectory(prefix="featx-ft-") as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        return _load_model_file(path)


def _stem(path) -> str:
    text = os.fspath(path)
    for suffix in (".keras", ".joblib"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


# ----------------------------------------------------------------- the estimator


class FineTuneClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a featx backbone on labelled images (scikit-learn classifier).

    Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the
    top of the backbone and continues at a small learning rate. Images are
    decoded with featx's own decoder, batch by batch; augmentation and
    preprocessing live inside the Keras model.

    Parameters
    ----------
    backbone : str, default "efficientnet_lite0"
        A name from :func:`featx.list_backbones`.
    weights : {"packaged", "imagenet"}, path or None, default "packaged"
        As in :func:`featx.get_backbone`. None starts from a random
        initialisation (seeded by ``random_state``).
    input_size : int, optional
        Square input side; the family's pretrained size by default.
    head : tuple of int, default (256,)
        Widths of the hidden ReLU layers of the head; ``()`` for a linear head.
    dropout : float, default 0.5
        Dropout rate after the pooled features and after each hidden layer.
    unfreeze : int or "all", default 0
        Phase 2 unfreezes the top ``unfreeze`` weight-bearing, non-BN layers of
        the base (see the module docstring for exactly what is counted);
        ``"all"`` the whole base; ``0`` skips phase 2. BatchNormalization
        layers stay frozen and in inference mode, except when training from
        scratch (``weights=None`` with ``unfreeze="all"``).
    epochs : int or (int, int), default (5, 5)
        Epochs of phase 1 and phase 2 (an int: the same for both). Early
        stopping may end a phase sooner.
    lr : float or (float, float), default (1e-3, 1e-5)
        Adam learning rates of the two phases.
    augment : tuple of str or None, default ("flip", "rotate", "zoom", "contrast")
        Random augmentations during training, from :data:`AUGMENTATIONS`.
    class_weight : None, "balanced" or dict, default None
        ``"balanced"``: weights ``n / (k * count)`` from
        :func:`sklearn.utils.class_weight.compute_class_weight` on the training
        split; a dict maps original labels to weights.
    validation_fraction : float, default 0.1
        Stratified share of the images held out for ``val_loss``; ``0`` trains
        on everything (and disables early stopping).
    early_stopping : bool or int, default True
        Stop a phase when ``val_loss`` has not improved for ``DEFAULT_PATIENCE``
        epochs (an int: that patience) and restore that phase's best weights;
        if phase 2's best ``val_loss`` is not below phase 1's, go back to the
        weights phase 1 ended with.
    batch_size : int, default 32
    random_state : int, RandomState or None, default 0
        Seeds the split, the shuffling, the head's initialisation, dropout,
        augmentation and (``weights=None``) the backbone's initialisation.
    policy : {"squash", "crop", "pad"}, default "squash"
        How images are fitted to the input size (:func:`featx.images.decode_image`).
    phase1 : {"images", "vectors"}, default "images"
        What phase 1 trains the head on. ``"images"``: every epoch runs the
        (augmented) images through the frozen base, as the Keras tutorials do.
        ``"vectors"``: each image is embedded once by :class:`featx.Embedder`
        (through ``cache``), and the head trains on the pooled vectors —
        epochs then cost next to nothing, so phase 1 can run to convergence,
        but without augmentation (phase 2 still augments). The head learns
        the same function either way: the base is frozen and in inference
        mode in phase 1, so its output on an unaugmented image is the vector.
    cache : str, path or EmbeddingStore, optional
        Store that ``phase1="vectors"`` reads and writes (as
        :class:`featx.ImageEmbedder`'s ``cache``); vectors a baseline already
        stored for this backbone are not forwarded again.
    verbose : int, default 0
        Keras' ``fit`` verbosity; 0 prints nothing.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The labels, sorted; columns of :meth:`predict_proba`.
    model_ : keras.Model
        Raw pixels (float32 in [0, 255], ``(n, s, s, 3)``) → class probabilities.
    history_ : dict of list
        Per epoch, both phases in order: ``loss``, ``accuracy``, ``val_loss``,
        ``val_accuracy`` (NaN without validation) and ``phase`` (1 or 2).
    phases_ : list of dict
        Per phase that ran: ``phase``, ``lr``, ``epochs`` (asked), ``epochs_run``,
        ``trainable_weights``, ``trainable_params``, ``trained_on`` ("images"
        or "vectors"), ``best_val_loss`` (NaN without validation) and ``kept``
        (False when early stopping reverted phase 2).
    unfrozen_layers_ : list of str
        Names of the base layers phase 2 trained.
    input_size_ : int
        Side of the images the model takes.
    backbone_info_ : dict
        :meth:`featx.Backbone.describe` of the starting backbone.

    Examples
    --------
    >>> import numpy as np
    >>> from featx import FineTuneClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 60, (16, 32, 32, 3)).astype(np.uint8)
    >>> X[8:, :, :, 0] += 180                        # the second class is red
    >>> y = np.array(["gray"] * 8 + ["red"] * 8)
    >>> clf = FineTuneClassifier("mobilenet_v2", weights=None, input_size=32, head=(),
    ...                          epochs=(2, 1), unfreeze=2, lr=(1e-2, 1e-4), augment=None,
    ...                          validation_fraction=0, batch_size=8)
    >>> clf = clf.fit(X, y)
    >>> clf.predict_proba(X[:2]).shape, clf.classes_.tolist(), clf.history_["phase"]
    ((2, 2), ['gray', 'red'], [1, 1, 2])
    >>> clf.unfrozen_layers_
    ['block_16_project', 'Conv_1']
    """

    def __init__(self, backbone="efficientnet_lite0", weights="packaged", input_size=None,
                 head=(256,), dropout=0.5, unfreeze=0, epochs=(5, 5), lr=(1e-3, 1e-5),
                 augment=("flip", "rotate", "zoom", "contrast"), class_weight=None,
                 validation_fraction=0.1, early_stopping=True, batch_size=32, random_state=0,
                 policy="squash", phase1="images", cache=None, verbose=0):
        self.backbone = backbone
        self.weights = weights
        self.input_size = input_size
        self.head = head
        self.dropout = dropout
        self.unfreeze = unfreeze
        self.epochs = epochs
        self.lr = lr
        self.augment = augment
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.batch_size = batch_size
        self.random_state = random_state
        self.policy = policy
        self.phase1 = phase1
        self.cache = cache
        self.verbose = verbose

    # -- checks --------------------------------------------------------------

    def _checked_params(self) -> dict:
        epochs = _pair(self.epochs, "epochs", numbers.Integral)
        if any(not isinstance(e, numbers.Integral) or e < 0 for e in epochs):
            raise InvalidParameterError(f"epochs must be non-negative ints; got {self.epochs!r}")
        lr = _pair(self.lr, "lr", numbers.Real)
        if any(not isinstance(r, numbers.Real) or not r > 0 for r in lr):
            raise InvalidParameterError(f"lr must be positive numbers; got {self.lr!r}")
        unfreeze = self.unfreeze
        if not (unfreeze == "all" or (isinstance(unfreeze, numbers.Integral)
                                      and not isinstance(unfreeze, bool) and unfreeze >= 0)):
            raise InvalidParameterError(
                f"unfreeze must be 0, a positive int or 'all'; got {unfreeze!r}")
        head = (self.head,) if isinstance(self.head, numbers.Integral) else tuple(self.head or ())
        if any(not isinstance(h, numbers.Integral) or h < 1 for h in head):
            raise InvalidParameterError(f"head must be a tuple of positive ints; got {self.head!r}")
        if not 0 <= float(self.dropout) < 1:
            raise InvalidParameterError(f"dropout must be in [0, 1); got {self.dropout!r}")
        if not 0 <= float(self.validation_fraction) < 1:
            raise InvalidParameterError(f"validation_fraction must be in [0, 1); got "
                                        f"{self.validation_fraction!r}")
        if int(self.batch_size) < 1:
            raise InvalidParameterError(f"batch_size must be >= 1; got {self.batch_size!r}")
        if self.policy not in RESIZE_POLICIES:
            raise InvalidParameterError(
                f"policy must be one of {RESIZE_POLICIES}; got {self.policy!r}")
        if self.phase1 not in PHASE1_INPUTS:
            raise InvalidParameterError(
                f"phase1 must be one of {PHASE1_INPUTS}; got {self.phase1!r}")
        if not (self.class_weight is None or self.class_weight == "balanced"
                or isinstance(self.class_weight, dict)):
            raise InvalidParameterError(f"class_weight must be None, 'balanced' or a dict; got "
                                        f"{self.class_weight!r}")
        patience = self.early_stopping
        if isinstance(patience, bool):
            patience = DEFAULT_PATIENCE if patience else 0
        elif not isinstance(patience, numbers.Integral) or patience < 1:
            raise InvalidParameterError(
                f"early_stopping must be a bool or a positive int (patience); "
                f"got {self.early_stopping!r}")
        return dict(epochs=tuple(int(e) for e in epochs), lr=tuple(float(r) for r in lr),
                    unfreeze=unfreeze if unfreeze == "all" else int(unfreeze), head=head,
                    patience=int(patience), seed=_seed_from(self.random_state))

    # -- building ------------------------------------------------------------

    def _build(self, bb, n_classes: int, p: dict, from_scratch: bool):
        keras = import_keras()
        from ..backbones.weights import seeded_init

        c = _classes()
        seed = p["seed"]
        size = bb.input_size
        base = bb.model
        base.trainable = True  # ours alone: get_backbone builds a fresh model per call
        context = seeded_init(seed) if seed is not None else contextlib.nullcontext()
        with context:
            inputs = keras.Input((size, size, 3), name="pixels")
            x = inputs
            aug = _augmentation_layers(self.augment, seed)
            if aug:
                x = keras.Sequential(aug, name="augment")(x)
            pre = bb.preprocessing
            x = c["ImagePreprocessing"](pre.mean, pre.std, pre.bgr, name="preprocess")(x)
            x = c["InferenceBase"](base, inference=not from_scratch, name="base")(x)
            k = 100
            if self.dropout:
                x = keras.layers.Dropout(float(self.dropout), seed=sub_seed(seed, k),
                                         name="head_dropout")(x)
            for i, width in enumerate(p["head"], start=1):
                x = keras.layers.Dense(int(width), activation="relu", name=f"head_dense_{i}")(x)
                if self.dropout:
                    x = keras.layers.Dropout(float(self.dropout), seed=sub_seed(seed, k + i),
                                             name=f"head_dropout_{i}")(x)
            outputs = keras.layers.Dense(n_classes, activation="softmax", name="classifier")(x)
        return keras.Model(inputs, outputs, name=f"featx_finetune_{bb.name}")

    # -- fitting -------------------------------------------------------------

    def fit(self, sources, y, validation_data=None):
        """Train phase 1 (head) and, if asked, phase 2 (top of the backbone).

        Parameters
        ----------
        sources : folder, paths or uint8 arrays
            Anything :func:`featx.images.as_sources` accepts.
        y : array-like of shape (n,)
            Labels of any type (strings, ints).
        validation_data : (sources, y), optional
            An explicit validation set (e.g. the split another experiment used);
            replaces the ``validation_fraction`` split.

        Returns
        -------
        self

        Raises
        ------
        FeatxError
            Invalid parameters; labels that do not match the images; an image
            that cannot be read or decoded (:class:`~featx.errors.ImageDecodeError`,
            naming it).
        """
        keras = import_keras()
        from ..backbones import get_backbone

        p = self._checked_params()
        items = as_sources(sources)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(items):
            raise InvalidDataError(f"y must be 1-D with one label per image; got shape {y.shape} "
                                   f"for {len(items)} images")
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise InvalidDataError(
                f"y looks {kind} ({len(np.unique(y))} distinct values, e.g. "
                f"{np.unique(y)[:3].tolist()}); a classifier needs class labels: strings or "
                "integers, one per image")
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise InvalidDataError(
                f"need at least 2 classes to train a classifier; got {list(encoder.classes_)}")
        split = split_validation(items, encoder.transform(y).astype(np.int32), encoder=encoder,
                                 validation_data=validation_data,
                                 fraction=self.validation_fraction, seed=p["seed"])
        weights = class_weights(self.class_weight, split.train_y, encoder)
        from_scratch = self.weights is None and p["unfreeze"] == "all"
        bb = get_backbone(self.backbone, weights=self.weights, input_size=self.input_size,
                          pooling="avg", seed=p["seed"] if p["seed"] is not None else 0)
        model = self._build(bb, len(encoder.classes_), p, from_scratch)
        history, phases, unfrozen = Trainer(self, model, bb, p, from_scratch).run(split, weights)
        # A fresh, unbuilt optimizer: Adam's moments are not kept, so saved models
        # and pickles carry weights only (continuing training starts Adam anew).
        model.compile(optimizer=keras.optimizers.Adam(p["lr"][-1]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.model_ = model
        self.classes_ = encoder.classes_
        self.history_ = history
        self.phases_ = phases
        self.unfrozen_layers_ = unfrozen
        self.input_size_ = bb.input_size
        self.backbone_info_ = bb.describe()
        self.__dict__.pop("_model_file", None)
        return self

    # -- prediction ----------------------------------------------------------

    def __sklearn_tags__(self):
        return image_input_tags(super().__sklearn_tags__())

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["1darray", "3darray", "string"]}

    def _check_fitted(self):
        if getattr(self, "model_", None) is None:
            if getattr(self, "_model_file", None):
                raise NotFittedError(
                    f"this FineTuneClassifier was loaded without its Keras model "
                    f"({self._model_file!r}); load it with FineTuneClassifier.load(path)")
            raise NotFittedError("this FineTuneClassifier is not fitted yet; call fit first")

    def predict_proba(self, sources) -> np.ndarray:
        """Class probabilities, ``(n, len(classes_))`` float32, in input order.

        Images stream through the same decoder and batches as training, and
        the model runs with ``training=False`` (no augmentation, no dropout).
        """
        from ..engine import PaddedForward

        self._check_fitted()
        items = as_sources(sources)
        bs = int(self.batch_size)
        ds = _classes()["ImageBatches"](items, None, size=self.input_size_, batch_size=bs,
                                        policy=self.policy,
                                        threads=max(2, min(8, os.cpu_count() or 2)))
        # The engine's compiled forward at one batch shape (the last batch padded).
        forward = PaddedForward(self.model_, bs, (self.input_size_, self.input_size_, 3))
        out = np.empty((len(items), len(self.classes_)), dtype=np.float32)
        # Decode batch i + 1 while batch i runs through the model.
        with ThreadPoolExecutor(1, thread_name_prefix="featx-finetune-prefetch") as prefetch:
            try:
                pending = prefetch.submit(ds.pixels, 0)
                for i in range(len(ds)):
                    x = pending.result()
                    if i + 1 < len(ds):
                        pending = prefetch.submit(ds.pixels, i + 1)
                    out[i * bs:i * bs + len(x)] = forward(x)
            finally:
                ds.close()
        return out

    def predict(self, sources) -> np.ndarray:
        """The most probable label of each image (values of ``classes_``)."""
        proba = self.predict_proba(sources)  # first: it raises NotFittedError before fit
        return self.classes_[np.argmax(proba, axis=1)]

    # -- persistence ---------------------------------------------------------

    def __getstate__(self):
        # BaseEstimator's state adds the scikit-learn version (checked on load).
        # (It may be the instance's own __dict__ on Python >= 3.11: copy before popping.)
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        if model is not None:
            # A Keras model does not pickle reliably (backend tensors, compiled
            # functions); its .keras file does.
            state["_model_keras_bytes"] = _model_to_bytes(model)
        return state

    def __setstate__(self, state):
        state = dict(state)
        data = state.pop("_model_keras_bytes", None)
        super().__setstate__(state)
        if data is not None:
            self.model_ = _model_from_bytes(data)

    def save(self, path) -> str:
        """Write ``<path>.keras`` (the model) and ``<path>.joblib`` (this wrapper).

        The ``.joblib`` file holds the parameters, ``classes_``, ``history_``
        and the other fitted attributes, not the model; load both with
        :meth:`load`. A trailing ``.keras`` or ``.joblib`` on ``path`` is
        ignored. The ``.keras`` file alone is a plain Keras model (raw pixels
        in, probabilities out) once :func:`custom_objects` is registered.

        Returns
        -------
        str
            The stem both files share.

        Examples
        --------
        >>> import os, tempfile
        >>> clf = FineTuneClassifier()
        >>> clf.save(os.path.join(tempfile.mkdtemp(), "m"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sklearn.exceptions.NotFittedError: this FineTuneClassifier is not fitted yet; ...
        """
        import joblib

        self._check_fitted()
        stem = _stem(path)
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        keras = import_keras()
        keras.saving.save_model(self.model_, stem + ".keras")
        # A shell without the model (copy.copy would go through __getstate__ and
        # serialise the model a second time).
        shell = self.__class__.__new__(self.__class__)
        shell.__dict__.update({k: v for k, v in self.__dict__.items() if k != "model_"})
        shell._model_file = os.path.basename(stem) + ".keras"
        joblib.dump(shell, stem + ".joblib")
        return stem

    @classmethod
    def load(cls, path) -> "FineTuneClassifier":
        """Read what :meth:`save` wrote (``path`` with or without a suffix).

        Only load files you trust: ``.joblib`` is a pickle.
        """
        import joblib

        stem = _stem(path)
        if not os.path.isfile(stem + ".joblib"):
            raise FeatxError(f"{stem + '.joblib'!r} does not exist; expected the files "
                             "FineTuneClassifier.save wrote (<path>.joblib and <path>.keras)")
        est = joblib.load(stem + ".joblib")
        if not isinstance(est, cls):
            raise FeatxError(f"{stem + '.joblib'!r} holds a {type(est).__name__}, expected a "
                             f"{cls.__name__}")
        model_file = est.__dict__.pop("_model_file", None) or os.path.basename(stem) + ".keras"
        est.model_ = _load_model_file(os.path.join(os.path.dirname(stem + ".joblib"),
                                                   model_file))
        return est


def load(path) -> FineTuneClassifier:
    """:meth:`FineTuneClassifier.load`.

    Examples
    --------
    >>> from featx.finetune import load
    >>> model = load("model.keras")  # doctest: +SKIP
    """
    return FineTuneClassifier.load(path)
