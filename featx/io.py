"""The model bundle: a fitted image classifier, its class names and where its cache is.

One format, written and read here for the CLI (``featx baseline`` writes it,
``featx predict`` reads it) and for the Python API alike. The training cache is
recorded relative to the bundle, so the pair moves together, and a loaded
model opens it read-only: predicting never writes into a training cache.
"""

from __future__ import annotations

import os

from .errors import FeatxError
from .sklearn import ImageEmbedder, RawPixels
from .store import EmbeddingStore

__all__ = ["BUNDLE_FORMAT", "save_bundle", "load_bundle"]

#: Format of the files :func:`save_bundle` writes (1: featx 0.x CLI, cache path as given).
BUNDLE_FORMAT = 2


def save_bundle(path, pipeline, class_names, cache=None) -> str:
    """Save a fitted image classifier with its class names, ready for ``featx predict``.

    The training cache is recorded *relative to the bundle file*, so the bundle
    and its cache can move together (or the bundle be used from any working
    folder). The file is written to a temporary name and renamed: a failed save
    never leaves half a model.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.joblib`` file to write.
    pipeline : estimator
        A fitted featx pipeline (``ImageEmbedder`` or ``RawPixels`` first) or
        :class:`~featx.FineTuneClassifier`.
    class_names : sequence of str
        Names of the classes, indexed by the model's ``classes_``.
    cache : str or os.PathLike, optional
        The HDF5 store the vectors were cached in during training.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from featx.sklearn import RawPixels
    >>> from featx.io import save_bundle, load_bundle
    >>> images = np.random.RandomState(0).randint(0, 255, (6, 8, 8)).astype(np.uint8)
    >>> model = make_pipeline(RawPixels(size=8), LogisticRegression()).fit(images, [0, 1] * 3)
    >>> path = save_bundle(os.path.join(tempfile.mkdtemp(), "m.joblib"), model, ["a", "b"])
    >>> load_bundle(path)[1]
    ['a', 'b']
    """
    import joblib

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    cache_path = getattr(cache, "path", cache)  # a store object or a path
    cache_rel = (None if cache_path is None
                 else os.path.relpath(os.path.abspath(os.fspath(cache_path)), folder))
    bundle = {"featx_model_bundle": BUNDLE_FORMAT, "pipeline": pipeline,
              "class_names": [str(c) for c in class_names], "cache": cache_rel}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        joblib.dump(bundle, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _image_front(model):
    """The featx step that turns images into features, or None for a numeric-only model."""
    steps = getattr(model, "steps", None)
    first = steps[0][1] if steps else model
    if isinstance(first, (ImageEmbedder, RawPixels)):
        return first
    if type(first).__module__.startswith("featx."):  # FineTuneClassifier takes images itself
        return first
    return None


def load_bundle(path, cache=None):
    """Load a model saved by :func:`save_bundle` (or ``featx baseline``): ``(model, class_names)``.

    The training cache is found relative to the bundle file and opened
    **read-only**: vectors it holds are reused, new images are embedded in
    memory and never written into it. Pass ``cache=`` to keep new vectors in a
    store of your choice.

    Only load files you trust: joblib runs pickle.

    Parameters
    ----------
    path : str or os.PathLike
    cache : str or os.PathLike, optional
        A store to read *and write* while predicting.

    Returns
    -------
    model : estimator with ``predict_proba``
    class_names : list of str or None

    Raises
    ------
    FeatxError
        The file is not a joblib/pickle file, is truncated, or holds something
        that is not an image classifier (for example a model trained on
        numeric features).

    Examples
    --------
    >>> # see save_bundle
    """
    import joblib

    path = os.fspath(path)
    try:
        bundle = joblib.load(path)
    except MemoryError:
        raise
    except Exception as exc:  # pickle raises many kinds on a damaged or foreign file
        raise FeatxError(f"{path}: not a model file featx can load ({type(exc).__name__}: "
                         f"{str(exc)[:120] or 'no detail'}); expected a .joblib file written "
                         "by featx baseline") from None
    if isinstance(bundle, dict) and "pipeline" in bundle:
        model, names = bundle["pipeline"], bundle.get("class_names")
    else:
        model, names = bundle, None
    if not hasattr(model, "predict_proba"):
        raise FeatxError(f"{path} holds a {type(model).__name__}, not a classifier with "
                         "predict_proba; expected a model written by featx baseline")
    front = _image_front(model)
    if front is None:
        raise FeatxError(
            f"{path} holds a {type(model).__name__} that expects numeric features, not "
            "images; expected a model whose first step is featx's ImageEmbedder (as "
            "featx baseline writes)")
    if isinstance(front, ImageEmbedder):
        front.set_params(cache=_prediction_store(path, bundle, front, cache))
    return model, (list(names) if names is not None else None)


def _prediction_store(path: str, bundle, front: "ImageEmbedder", cache):
    """The store a loaded model predicts with: the user's, else its training cache read-only."""
    if cache is not None:
        return EmbeddingStore(cache)
    folder = os.path.dirname(os.path.abspath(path))
    candidates = []
    if isinstance(bundle, dict) and bundle.get("cache"):
        candidates.append(os.path.join(folder, bundle["cache"]))
    saved = front.cache.path if hasattr(front.cache, "path") else front.cache
    if saved:  # format-1 bundles: the path as given at training, maybe relative to a cwd
        saved = os.fspath(saved)
        candidates += [saved] if os.path.isabs(saved) else [
            os.path.join(folder, os.path.basename(saved)), saved]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return EmbeddingStore(candidate, readonly=True)
    return None  # no cache beside the model: embed in memory
