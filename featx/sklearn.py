"""The scikit-learn face of featx: image sources in, feature matrices out.

:class:`ImageEmbedder` is a stateless transformer over :class:`featx.Embedder`:
``transform(X)`` runs the engine, which forwards an image only when neither the
store (``cache=``) nor, without a store, this process's memo holds its vector.
So ``Pipeline([("embed", ImageEmbedder(cache="emb.h5")), ("clf", ...)])`` can sit
inside ``GridSearchCV`` and each unique image goes through each backbone once,
across every candidate, fold and worker process.

The Keras model is never an attribute of an estimator: it is built on first use
and kept in a per-process cache keyed by what decides it (backbone, weights,
input size, pooling, dtype), so clones and grid-search candidates share one
model and an estimator pickles to its parameters.

:class:`RawPixels` is the floor every baseline is measured against: the same
decoder, no network, pixels flattened.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .backbones import DTYPES, POOLINGS, Backbone, BackboneConfig, clear_config_cache
from .backbones.registry import get_spec
from .errors import FeatxError, ImageDecodeError, InvalidParameterError
from ._params import Interval, Options, check_params, image_input_tags
from .engine import (DECODERS, ON_ERROR, POOLS, RUNTIMES, DecodePool, EmbedFailure,
                     default_workers)
from .images import RESIZE_POLICIES, as_sources, check_decode_options
from .store import EmbeddingStore

__all__ = ["ImageEmbedder", "RawPixels", "clear_backbone_cache", "NOT_APPLICABLE_CHECKS"]

log = logging.getLogger("featx")

# ----------------------------------------------------------------- process caches

def clear_backbone_cache() -> None:
    """Forget the Keras models (and store handles) that ImageEmbedders built in this process.

    Examples
    --------
    >>> from featx.sklearn import clear_backbone_cache
    >>> clear_backbone_cache()
    """
    from .store import forget_shared_stores

    clear_config_cache()
    forget_shared_stores()


# ----------------------------------------------------------------- input handling


def _unwrap_column(X) -> Tuple[Any, Optional[np.ndarray]]:
    """Accept one column of paths as a 1-column DataFrame or (n, 1) object array.

    A ColumnTransformer hands ``["path"]`` selections over as such a frame;
    returns the column and its name(s) for ``feature_names_in_``.
    """
    if hasattr(X, "tocsr") and hasattr(X, "nnz"):
        return as_sources(X), None  # refused there, with the one message for sparse input
    if type(X).__name__ == "DataFrame" and hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise ImageDecodeError(
                f"input: received a DataFrame with {X.shape[1]} columns; expected the one "
                "column that holds image paths (df['path'] or df[['path']])")
        names = np.asarray([str(c) for c in X.columns], dtype=object)
        return X.iloc[:, 0], names
    if (isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1
            and (X.dtype == object or X.dtype.kind in "US")):
        return X[:, 0], None
    return X, None


def _images(X) -> list:
    """``X`` as a list of :class:`~featx.images.Source`, validated, nothing decoded yet."""
    column, _ = _unwrap_column(X)
    return as_sources(column)


def _feature_names(prefix: str, n: int) -> np.ndarray:
    width = max(4, len(str(max(n - 1, 0))))
    return np.asarray([f"{prefix}_{i:0{width}d}" for i in range(n)], dtype=object)


class _ImageInputMixin:
    """Tags and fit bookkeeping shared by the image transformers."""

    def __sklearn_tags__(self):
        tags = image_input_tags(super().__sklearn_tags__())
        tags.requires_fit = False  # transform needs only the parameters
        tags.transformer_tags.preserves_dtype = []  # always float32 out
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["1darray", "3darray", "string"], "requires_fit": False,
                "stateless": True, "preserves_dtype": []}

    def _record_input(self, X) -> list:
        """Record sklearn's input bookkeeping; return ``X`` as validated sources."""
        column, names = _unwrap_column(X)
        for attr in ("feature_names_in_", "n_features_in_"):
            if attr in self.__dict__:
                delattr(self, attr)
        if names is not None:
            self.feature_names_in_ = names
        if column is not X:
            self.n_features_in_ = 1
        return as_sources(column)


# ----------------------------------------------------------------- ImageEmbedder


_TABULAR = "feeds a float (n_samples, n_features) matrix, which is not an image batch"

#: scikit-learn estimator checks that cannot apply to :class:`ImageEmbedder` (and
#: :class:`RawPixels`), with the reason; each is refused with an ``ImageDecodeError``.
NOT_APPLICABLE_CHECKS: Dict[str, str] = {
    **{name: _TABULAR for name in (
        "check_fit_score_takes_y",
        "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit",
        "check_estimators_dtypes",
        "check_estimators_empty_data_messages",
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformers_unfitted_stateless",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_fit2d_1sample",
        "check_fit2d_1feature",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit_check_is_fitted",
        "check_n_features_in",
        "check_fit2d_predict1d",
    )},
    "check_complex_data": "feeds complex numbers: refused as non-uint8 pixels, not with "
                          "sklearn's 'Complex data not supported' wording",
    "check_dtype_object": "feeds an object array of numbers, which are neither paths nor images",
    "check_array_api_input": "feeds array-API float matrices, not images",
}


class ImageEmbedder(_ImageInputMixin, TransformerMixin, BaseEstimator):
    """Images → frozen-backbone vectors, as a scikit-learn transformer.

    A thin face over :class:`featx.Embedder`: ``transform(X)`` embeds ``X`` with
    the engine, which dedups by content, serves known images from the store
    (``cache``) or — without a store — from the process memo, and forwards the
    rest once. Nothing is learnt: ``fit`` only records what the backbone is.

    Parameters
    ----------
    backbone : str, default "efficientnet_lite0"
        A name from :func:`featx.list_backbones`.
    weights : {"packaged", "imagenet"}, path or None, default "packaged"
        See :func:`featx.get_backbone`; None is a seeded random initialisation.
    input_size : int, optional
        Square input side; None is the family's pretrained size.
    pooling : {"avg", "max", "gem"}, default "avg"
    cache : str or os.PathLike, optional
        Path of an HDF5 :class:`~featx.EmbeddingStore`. Keep a path here, not an
        open handle: the estimator pickles to its parameters. With a store,
        processes (``GridSearchCV(n_jobs=k)``) share vectors and never forward
        an image twice. None keeps vectors in a per-process memo, which avoids
        re-embedding within one process only.
    batch_size : int, default 32
    dtype : {"float32"}, default "float32"
        Compute dtype of the backbone.
    on_error : {"raise", "skip"}, default "raise"
        ``"skip"``: an image that cannot be read or decoded becomes a row of NaN
        (logged). Whether to impute (``SimpleImputer``) or drop those rows
        downstream is the user's choice; most heads refuse NaN.
    progress : bool, default False
        tqdm bar on stderr while forwarding.
    policy : {"squash", "crop", "pad"}, default "squash"
        How images are fitted to the input size (:func:`featx.images.decode_image`).
    pool : {"auto", "threads", "processes"}, default "auto"
        Where the engine reads and decodes images (see :class:`~featx.Embedder`);
        ``stats_["pool"]`` says which ran. Vectors do not depend on it.
    decoder : {"cpu", "gpu", "auto"}, default "cpu"
        ``"gpu"``: JPEGs decoded with nvJPEG on the GPU (see :class:`~featx.Embedder`);
        its vectors have their own fingerprint and are cached apart.
    runtime : {"keras", "openvino", "openvino-bf16", "auto"}, default "keras"
        What runs the forward (see :class:`~featx.Embedder`); vectors do not
        depend on it.

    Attributes
    ----------
    n_features_out_ : int
        Width of the vectors.
    backbone_name_ : str
        Canonical backbone name (aliases resolved).
    backbone_fingerprint_ : str
        The backbone's fingerprint; ``transform`` refuses to run if the backbone
        it builds later has another one (e.g. the weights file changed).
    input_size_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a one-column DataFrame (e.g. inside a ColumnTransformer).
    n_features_in_ : int
        1, only when fitted on a one-column DataFrame or ``(n, 1)`` array of paths.
    mask_ : ndarray of bool
        Of the last ``transform``: True for rows that hold a vector.
    failures_ : list of featx.engine.EmbedFailure
        Of the last ``transform``: inputs skipped with ``on_error="skip"``.
    stats_ : dict
        Of the last ``transform``: the engine's counters and timings
        (:attr:`featx.Embedder.stats`).

    Notes
    -----
    ``X`` may be a list, tuple, 1-D array or pandas Series of image paths, a
    one-column DataFrame of paths, a folder, or a ``uint8`` image batch
    ``(N, H, W)`` / ``(N, H, W, C)``. Output: ``(n, n_features_out_)`` float32,
    rows in input order (pandas with ``set_output(transform="pandas")``).

    scikit-learn's estimator checks that apply, and pass
    (``tests/test_sklearn.py``): ``check_estimator_cloneable``,
    ``check_estimator_tags_renamed``, ``check_valid_tag_types``,
    ``check_estimator_repr``, ``check_no_attributes_set_in_init``,
    ``check_do_not_raise_errors_in_init_or_set_params``, ``check_mixin_order``,
    ``check_estimator_sparse_tag``, ``check_estimator_sparse_array``,
    ``check_estimator_sparse_matrix``, ``check_transformer_n_iter``,
    ``check_parameters_default_constructible``, ``check_get_params_invariance``,
    ``check_set_params`` and ``check_fit1d``. The others cannot apply, and
    ImageEmbedder refuses their input with an :class:`~featx.errors.ImageDecodeError`.
    Each of these feeds a float ``(n_samples, n_features)`` matrix, which is not
    an image batch: ``check_fit_score_takes_y``,
    ``check_estimators_overwrite_params``, ``check_dont_overwrite_parameters``,
    ``check_estimators_fit_returns_self``, ``check_readonly_memmap_input``,
    ``check_n_features_in_after_fitting``, ``check_positive_only_tag_during_fit``,
    ``check_estimators_dtypes``, ``check_estimators_empty_data_messages``,
    ``check_pipeline_consistency``, ``check_estimators_nan_inf``,
    ``check_estimators_pickle``, ``check_f_contiguous_array_estimator``,
    ``check_transformer_data_not_an_array``, ``check_transformer_general``,
    ``check_transformers_unfitted_stateless``,
    ``check_methods_sample_order_invariance``, ``check_methods_subset_invariance``,
    ``check_fit2d_1sample``, ``check_fit2d_1feature``, ``check_dict_unchanged``,
    ``check_fit_idempotent``, ``check_fit_check_is_fitted``,
    ``check_n_features_in`` and ``check_fit2d_predict1d``. ``check_complex_data``
    feeds complex numbers, ``check_dtype_object`` an object array of numbers, and
    ``check_array_api_input`` array-API float matrices. What those
    checks guard (pickling, ``set_output``, feature names, sample-order
    invariance, fit idempotence) is tested on images instead. The same list,
    with reasons, is :data:`NOT_APPLICABLE_CHECKS`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from featx import ImageEmbedder
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 255, (12, 40, 40, 3)).astype(np.uint8)
    >>> y = np.arange(12) % 2
    >>> emb = ImageEmbedder("mobilenet_v2", weights=None, input_size=32)
    >>> emb.fit_transform(images).shape
    (12, 1280)
    >>> emb.get_feature_names_out()[:2].tolist()
    ['mobilenet_v2_0000', 'mobilenet_v2_0001']
    >>> model = make_pipeline(emb, LogisticRegression(max_iter=200)).fit(images, y)
    >>> model.predict(images[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        "backbone": [str],
        "input_size": [None, Interval(int, 1)],
        "pooling": [Options(POOLINGS)],
        "cache": [None, "path", EmbeddingStore],
        "batch_size": [Interval(int, 1)],
        "dtype": [Options(DTYPES)],
        "on_error": [Options(ON_ERROR)],
        "progress": [bool, None],
        "policy": [Options(RESIZE_POLICIES)],
        "pool": [Options(POOLS)],
        "decoder": [Options(DECODERS)],
        "runtime": [Options(RUNTIMES)],
    }

    def __init__(self, backbone="efficientnet_lite0", weights="packaged", input_size=None,
                 pooling="avg", cache=None, batch_size=32, dtype="float32", on_error="raise",
                 progress=False, policy="squash", pool="auto", decoder="cpu", runtime="keras"):
        self.backbone = backbone
        self.weights = weights
        self.input_size = input_size
        self.pooling = pooling
        self.cache = cache
        self.batch_size = batch_size
        self.dtype = dtype
        self.on_error = on_error
        self.progress = progress
        self.policy = policy
        self.pool = pool
        self.decoder = decoder
        self.runtime = runtime

    # -- the backbone, from the process cache --------------------------------

    def load_backbone(self) -> Backbone:
        """The :class:`featx.Backbone` these parameters describe (built once per process).

        Returns
        -------
        featx.Backbone

        Examples
        --------
        >>> from featx import ImageEmbedder
        >>> bb = ImageEmbedder("mobilenet_v2", weights=None, input_size=32).load_backbone()
        >>> bb.name, bb.dim
        ('mobilenet_v2', 1280)
        """
        if not isinstance(self.backbone, str):
            raise InvalidParameterError(
                f"backbone must be a name from featx.list_backbones(); got "
                f"{type(self.backbone).__name__}: {self.backbone!r}")
        config = BackboneConfig(self.backbone, weights=self.weights,
                                input_size=self.input_size, pooling=self.pooling,
                                dtype=self.dtype)
        return config.get()[0]

    def _embedder(self, bb: Backbone):
        from .engine import Embedder

        from .store import shared_store

        return Embedder(bb, store=shared_store(self.cache), batch_size=self.batch_size,
                        on_error=self.on_error, progress=self.progress, policy=self.policy,
                        pool=self.pool, decoder=self.decoder, runtime=self.runtime)

    def __setstate__(self, state):
        state.setdefault("pool", "auto")  # models saved before these parameters existed
        state.setdefault("decoder", "cpu")
        state.setdefault("runtime", "keras")
        super().__setstate__(state)

    def _embed(self, sources: list):
        """Vectors, mask and engine stats of ``sources`` (a list of Source)."""
        bb = self.load_backbone()
        fitted = self.__dict__.get("backbone_fingerprint_")
        if fitted is not None and fitted != bb.fingerprint:
            raise FeatxError(
                f"ImageEmbedder was fitted with backbone fingerprint {fitted[:12]}… but its "
                f"parameters now build {bb.name} with fingerprint {bb.fingerprint[:12]}… "
                "(changed parameters or weights file); vectors would not match what the "
                "downstream model learnt from. Fit again.")
        emb = self._embedder(bb)
        X, mask = emb.embed(sources, return_mask=True)
        # Which inputs were skipped and why (on_error="skip"), for reports.
        self.failures_, self.mask_, self.stats_ = emb.failures_, mask, dict(emb.stats)
        log.debug("featx ImageEmbedder(%s): %s", bb.name, emb.stats)
        return X, mask, emb.stats

    # -- sklearn API ----------------------------------------------------------

    def fit(self, X, y=None):
        """Check the input and the parameters, build (or reuse) the backbone.

        No image is embedded: the transformer learns nothing from data.

        Parameters
        ----------
        X : image sources
            Validated (types, array shapes) but not read.
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def _fit(self, X) -> list:
        check_params(self, self._parameter_constraints)
        sources = self._record_input(X)
        self.__dict__.pop("backbone_fingerprint_", None)  # a refit may change the backbone
        bb = self.load_backbone()
        self.backbone_name_ = bb.name
        self.backbone_fingerprint_ = bb.fingerprint
        self.input_size_ = bb.input_size
        self.n_features_out_ = bb.dim
        return sources

    def transform(self, X):
        """Embed ``X``: ``(n, n_features_out_)`` float32 in input order.

        Parameters
        ----------
        X : image sources
            Paths (list, array, Series, one-column DataFrame), a folder, or a
            uint8 batch ``(N, H, W[, C])``.

        Returns
        -------
        numpy.ndarray of float32
            With ``on_error="skip"``, rows of images that failed are NaN.
        """
        X, _, _ = self._embed(_images(X))
        return X

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X).transform(X)``, validating ``X`` once."""
        out, _, _ = self._embed(self._fit(X))
        return out

    def get_feature_names_out(self, input_features=None):
        """``<backbone>_0000``, ``<backbone>_0001``, … (at least four digits).

        Parameters
        ----------
        input_features : ignored
            Image columns have no per-feature input names.

        Returns
        -------
        ndarray of str
        """
        if "n_features_out_" in self.__dict__:
            name, dim = self.backbone_name_, self.n_features_out_
        else:  # not fitted: the registry knows the name and width without a model
            spec = get_spec(self.backbone)
            name, dim = spec.name, spec.dim
        return _feature_names(name, dim)


# ----------------------------------------------------------------- RawPixels


class RawPixels(_ImageInputMixin, TransformerMixin, BaseEstimator):
    """Images → flattened pixels in [0, 1]: the floor a learnt embedding must beat.

    Decodes with :func:`featx.images.decode_image` (the same decoder as the
    engine), resizes to ``size × size`` and flattens to float32 / 255.

    Parameters
    ----------
    size : int, default 32
        Square side the images are resized to.
    gray : bool, default False
        Luma only (ITU-R 601-2, as Pillow's ``"L"``): ``size²`` features instead of ``3·size²``.
    policy : {"squash", "crop", "pad"}, default "squash"
    on_error : {"raise", "skip"}, default "raise"
        ``"skip"``: undecodable images become NaN rows.

    Attributes
    ----------
    n_features_out_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from featx.sklearn import RawPixels
    >>> images = np.full((2, 50, 60, 3), 255, np.uint8)
    >>> X = RawPixels(size=8, gray=True).fit_transform(images)
    >>> X.shape, float(X.max())
    ((2, 64), 1.0)
    """

    _parameter_constraints = {
        "size": [Interval(int, 1)],
        "gray": [bool],
        "policy": [Options(RESIZE_POLICIES)],
        "on_error": [Options(ON_ERROR)],
    }

    def __init__(self, size=32, gray=False, policy="squash", on_error="raise"):
        self.size = size
        self.gray = gray
        self.policy = policy
        self.on_error = on_error

    def _n_features(self) -> int:
        return int(self.size) ** 2 * (1 if self.gray else 3)

    def fit(self, X, y=None):
        """Check the input and parameters; nothing is learnt. Returns self."""
        self._fit(X)
        return self

    def _fit(self, X) -> list:
        check_params(self, self._parameter_constraints)
        check_decode_options((self.size, self.size), self.policy)
        sources = self._record_input(X)
        self.n_features_out_ = self._n_features()
        return sources

    def _decode(self, sources: list) -> np.ndarray:
        size = check_decode_options((int(self.size), int(self.size)), self.policy)
        if self.on_error not in ("raise", "skip"):
            raise InvalidParameterError(
                f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        out = np.full((len(sources), self._n_features()), np.nan, np.float32)
        failed = []
        workers = min(8, default_workers(), max(1, len(sources)))
        with DecodePool(size, self.policy, workers) as pool:
            for i, (px, exc, _) in enumerate(pool.map(sources)):
                if exc is not None:
                    if self.on_error == "raise":
                        raise exc
                    failed.append((i, exc))
                    continue
                if self.gray:  # Pillow's "L" weights, on the decoded RGB
                    px = px.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                out[i] = np.asarray(px, np.float32).reshape(-1) / 255.0
        # What was skipped, as ImageEmbedder records it (for reports and featx predict).
        self.failures_ = [EmbedFailure(i, sources[i].describe(), str(exc)) for i, exc in failed]
        self.mask_ = np.isfinite(out).all(axis=1)
        if failed:
            log.warning("featx RawPixels: skipped %d of %d images; first: %s", len(failed),
                        len(sources), failed[0][1])
        return out

    def transform(self, X):
        """Flattened float32 pixels in [0, 1], ``(n, size²·channels)``."""
        return self._decode(_images(X))

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X).transform(X)``, validating ``X`` once."""
        return self._decode(self._fit(X))

    def get_feature_names_out(self, input_features=None):
        """``rawpx_0000``, ``rawpx_0001``, …"""
        return _feature_names("rawpx", self._n_features())
