"""The audit's checks, each a function of plain arrays: duplicates and leakage, label
issues, the 2-D map and the label-budget curve. :func:`featx.audit` feeds them the
cached vectors, the folds and the out-of-fold probabilities."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InvalidDataError, MissingDependencyError
from ._neighbours import nearest

__all__ = ["near_copy", "Calibration", "calibrate", "CANDIDATE_QUANTILE", "duplicate_pairs", "relation",
           "label_issues", "project_2d", "label_budget"]

#: Quantile of the generated copies' scores used as a threshold: 98 % of copies made by
#: :func:`near_copy` from this dataset's own images score above it.
COPY_QUANTILE = 0.02
#: With pixel verification, the cosine threshold only picks the candidates to verify, so
#: it keeps 99.5 % of the copies; the pixels decide (see :mod:`featx.quality._verify`).
CANDIDATE_QUANTILE = 0.005
#: Most images whose nearest *distinct* image may pass the threshold. Where distinct
#: images score as high as copies (tiny or very uniform images), the threshold rises to
#: the 95th percentile of those scores, and the copy recall it keeps is reported. Without
#: pixel verification this guard is all that stands for precision, and it is not enough:
#: measured on 5,000 Fashion-MNIST images at 112 px with 50 injected copies, the copies'
#: 2 % cosine quantile (0.931) found every copy at precision 0.36 (distinct plain
#: trousers and boots score 0.93-0.96). Not lower than 5 %: the sample's nearest
#: "distinct" images include the dataset's own duplicates, which are what the check
#: looks for (at 1 %, 6 % of duplicates in a sample lifted the threshold above most).
MAX_DISTINCT_ABOVE = 0.05


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} needs the {module} package: pip install 'featx[audit]'") from exc


# ----------------------------------------------------------------- duplicates


def original_pixels(source) -> np.ndarray:
    """The image of a source (path or array) at full size, RGB uint8, EXIF-rotated.

    Decoded by :func:`featx.images.decode_image` (modes, transparency, EXIF and the
    size limits as the engine handles them) at the image's own size, so a
    calibration copy starts from the pixels the engine would see.
    """
    from ..images import decode_image, decode_image_with_info

    array = getattr(source, "array", source)  # a Source, or what one is made from
    if isinstance(array, np.ndarray):
        size = array.shape[:2]
    else:  # the header's size, turned as the EXIF orientation turns the pixels
        _, info = decode_image_with_info(source, (1, 1))
        size = info.stored_size[::-1] if info.orientation in (5, 6, 7, 8) else info.stored_size
    return decode_image(source, tuple(int(v) for v in size))


def near_copy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-duplicate of an image: cropped ≤ 5 %, resized ±10 %, JPEG quality 60–90.

    The kinds of copy that leak between splits when a dataset is assembled from
    several crawls or exports; :func:`calibrate` measures how similar a backbone
    finds them.

    Parameters
    ----------
    pixels : (h, w, 3) uint8
    rng : numpy.random.Generator

    Returns
    -------
    (h', w', 3) uint8, the decoded JPEG

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import near_copy
    >>> image = np.random.RandomState(0).randint(0, 255, (100, 120, 3)).astype(np.uint8)
    >>> copy = near_copy(image, np.random.default_rng(0))
    >>> 80 <= copy.shape[0] <= 110 and copy.dtype == np.uint8
    True
    """
    from PIL import Image

    h, w = pixels.shape[:2]
    crop_h, crop_w = (int(round(s * rng.uniform(0, 0.05))) for s in (h, w))
    top, left = int(rng.integers(0, crop_h + 1)), int(rng.integers(0, crop_w + 1))
    img = Image.fromarray(pixels[top:h - (crop_h - top), left:w - (crop_w - left)])
    scale = rng.uniform(0.9, 1.1)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
    buffer.seek(0)
    with Image.open(buffer) as copy:
        return np.asarray(copy.convert("RGB"))


_EMPTY = np.zeros(0)


@dataclass
class Calibration:
    """How a backbone and the pixel verifier score generated near-copies of this dataset.

    A pair of images is a near duplicate when its cosine similarity reaches
    :attr:`threshold` and, with verification, its pixel copy score
    (:func:`~featx.quality.copy_score`) reaches :attr:`pixel_threshold`.

    Attributes
    ----------
    threshold : float
        Cosine similarity of a candidate pair. Verified: the
        :data:`CANDIDATE_QUANTILE` quantile of ``copies``. Unverified: the
        :data:`COPY_QUANTILE` quantile, raised to the ``1 - MAX_DISTINCT_ABOVE``
        quantile of ``nearest_distinct`` when that is higher.
    copies : ndarray
        Cosine similarity of each sampled image to its generated copy.
    nearest_distinct : ndarray
        Cosine similarity of each image to its most similar *other* image (exact
        copies excluded), over the whole set.
    given : bool
        True when the user fixed the cosine threshold.
    pixel_threshold : float or None
        Copy score a candidate must reach: the :data:`COPY_QUANTILE` quantile of
        ``pixel_copies``, raised as above by ``pixel_distinct``. None: pairs are
        not verified on pixels.
    pixel_copies, pixel_distinct : ndarray
        Copy scores of the sampled images with their copies, and with their
        nearest distinct images.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import Calibration
    >>> Calibration(0.9, np.array([0.95, 0.85]), np.array([0.5, 0.95])).copy_recall
    0.5
    >>> Calibration(0.9, np.array([0.95, 0.95]), np.array([0.5, 0.95]), pixel_threshold=0.99,
    ...             pixel_copies=np.array([0.995, 0.98])).copy_recall
    0.5
    """

    threshold: float
    copies: np.ndarray
    nearest_distinct: np.ndarray
    given: bool = False
    pixel_threshold: Optional[float] = None
    pixel_copies: np.ndarray = field(default_factory=lambda: _EMPTY)
    pixel_distinct: np.ndarray = field(default_factory=lambda: _EMPTY)

    @property
    def verified(self) -> bool:
        """True when candidate pairs are verified on pixels."""
        return self.pixel_threshold is not None

    @property
    def distinct_above(self) -> float:
        """Share of images whose nearest other image passes the cosine threshold."""
        if not len(self.nearest_distinct):
            return float("nan")
        return float(np.mean(self.nearest_distinct >= self.threshold))

    @property
    def copy_recall(self) -> float:
        """Share of the generated copies both thresholds find."""
        if not len(self.copies):
            return float("nan")
        found = self.copies >= self.threshold
        if self.verified and len(self.pixel_copies) == len(self.copies):
            found &= self.pixel_copies >= self.pixel_threshold
        return float(np.mean(found))

    @property
    def raised(self) -> bool:
        """True when distinct images forced a threshold above the copies' quantile."""
        if self.verified:
            return bool(len(self.pixel_copies)) and float(
                np.mean(self.pixel_copies >= self.pixel_threshold)) < 1 - COPY_QUANTILE - 1e-9
        return bool(len(self.copies)) and self.copy_recall < 1 - COPY_QUANTILE - 1e-9

    def summary(self) -> dict:
        q = (lambda a, p: float(np.quantile(a, p)) if len(a) else float("nan"))
        out = {"threshold": float(self.threshold), "given": self.given,
               "pairs": int(len(self.copies)), "copies_min": q(self.copies, 0.0),
               "copies_median": q(self.copies, 0.5), "copy_recall": self.copy_recall,
               "raised": self.raised,
               "nearest_distinct_median": q(self.nearest_distinct, 0.5),
               "nearest_distinct_above": self.distinct_above, "verified": self.verified}
        if self.verified:
            out.update(pixel_threshold=float(self.pixel_threshold),
                       pixel_copies_median=q(self.pixel_copies, 0.5),
                       pixel_distinct_median=q(self.pixel_distinct, 0.5),
                       pixel_distinct_above=float(np.mean(
                           self.pixel_distinct >= self.pixel_threshold))
                       if len(self.pixel_distinct) else float("nan"))
        return out


def _guarded(copies: np.ndarray, distinct: np.ndarray) -> float:
    """The copies' quantile, raised when too many distinct images reach it."""
    threshold = float(np.quantile(copies, COPY_QUANTILE, method="lower"))
    if len(distinct):
        guard = float(np.quantile(distinct, 1 - MAX_DISTINCT_ABOVE, method="higher"))
        threshold = max(threshold, float(np.nextafter(guard, 2.0)))
    return min(threshold, 0.9999)


def calibrate(copies_sim: np.ndarray, nearest_distinct: np.ndarray,
              pixel_copies: Optional[np.ndarray] = None,
              pixel_distinct: Optional[np.ndarray] = None,
              threshold: Optional[float] = None) -> Calibration:
    """The thresholds from generated copies and each image's nearest distinct neighbour.

    With ``pixel_copies`` (copy scores of the same copies), candidates are
    verified on pixels: the cosine threshold only needs to keep almost every
    copy, and the pixel threshold carries the precision. ``threshold`` fixes
    the cosine threshold (the user's).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import calibrate
    >>> cal = calibrate(np.linspace(0.95, 1.0, 100), np.linspace(0.5, 0.9, 100))
    >>> round(cal.threshold, 3), cal.copy_recall, cal.raised
    (0.951, 0.99, False)
    >>> calibrate(np.linspace(0.80, 0.99, 100), np.linspace(0.7, 0.95, 100)).raised
    True
    >>> cal = calibrate(np.linspace(0.80, 0.99, 100), np.linspace(0.7, 0.95, 100),
    ...                 pixel_copies=np.linspace(0.99, 1.0, 100),
    ...                 pixel_distinct=np.linspace(0.5, 0.98, 100))
    >>> round(cal.threshold, 3), round(cal.pixel_threshold, 4), cal.raised
    (0.8, 0.9901, False)
    """
    copies_sim = np.asarray(copies_sim, np.float64)
    nearest_distinct = np.asarray(nearest_distinct, np.float64)
    given = threshold is not None
    if not len(copies_sim) and not given:
        raise InvalidDataError("no generated copy could be embedded to calibrate the "
                               "near-duplicate threshold; pass threshold= explicitly")
    if pixel_copies is None:
        if given:
            return Calibration(float(threshold), copies_sim, nearest_distinct, given=True)
        return Calibration(_guarded(copies_sim, nearest_distinct), copies_sim, nearest_distinct)
    pixel_copies = np.asarray(pixel_copies, np.float64)
    pixel_distinct = np.asarray(_EMPTY if pixel_distinct is None else pixel_distinct,
                                np.float64)
    pixel_distinct = pixel_distinct[np.isfinite(pixel_distinct)]
    if not np.isfinite(pixel_copies).any():
        raise InvalidDataError("no generated copy could be compared on pixels to calibrate "
                               "the verification; pass verify=False")
    if not given:
        threshold = min(float(np.quantile(copies_sim, CANDIDATE_QUANTILE, method="lower")),
                        0.9999)
    pixel = _guarded(pixel_copies[np.isfinite(pixel_copies)], pixel_distinct)
    return Calibration(float(threshold), copies_sim, nearest_distinct,
                       given=given,
                       pixel_threshold=pixel, pixel_copies=pixel_copies,
                       pixel_distinct=pixel_distinct)


def relation(a: int, b: int, split: np.ndarray, fold: np.ndarray) -> str:
    """Where a duplicate pair sits: ``train/test`` and ``across folds`` leak.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import relation
    >>> split, fold = np.array(["train", "train", "test"]), np.array([0, 1, -1])
    >>> relation(0, 1, split, fold), relation(0, 2, split, fold)
    ('across folds', 'train/test')
    """
    if split[a] != split[b]:
        return "train/test"
    if split[a] == "test":
        return "within test"
    if fold[a] < 0 or fold[b] < 0:
        return "within set"
    return "same fold" if fold[a] == fold[b] else "across folds"


#: Relations that inflate a score: a copy of a held-out image was trained on.
LEAKING = ("train/test", "across folds")


#: Most candidate pairs verified on pixels (about a millisecond each), the most similar
#: first; the rest are counted in the audit's stats, not reported.
MAX_VERIFIED = 100_000


def duplicate_pairs(keys: Sequence[bytes], unit: np.ndarray, threshold: float,
                    split: np.ndarray, fold: np.ndarray, k: int = 10,
                    neighbours=None, verify=None, pixel_threshold: Optional[float] = None,
                    stats: Optional[dict] = None) -> List[dict]:
    """Exact (same content key) and near (cosine ≥ ``threshold``) duplicate pairs.

    Each exact group is reported as pairs of its first member with each other
    one; near pairs come from each image's ``k`` nearest neighbours (or the
    ``(similarity, index)`` of :func:`~featx.quality.nearest` already computed), so an
    image with more than ``k`` near copies lists its ``k`` closest.

    ``verify``, when given, scores candidate pairs on pixels (``verify(pairs)``
    returns a copy score per ``(a, b)``, as :meth:`~featx.quality.PixelVerifier.scores`
    does); a pair is then reported only when its score reaches
    ``pixel_threshold``, or when it cannot be verified (score NaN: an image no
    longer decodes). At most :data:`MAX_VERIFIED` candidates are verified, the
    most similar first. ``stats`` receives the counts.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import duplicate_pairs, unit_rows
    >>> unit = unit_rows([[1, 0], [1, 0.01], [0, 1]])
    >>> split, fold = np.array(["train", "test", "train"]), np.array([0, -1, 1])
    >>> [(p["a"], p["b"], p["relation"]) for p in duplicate_pairs(
    ...     [b"a", b"b", b"c"], unit, 0.99, split, fold)]
    [(0, 1, 'train/test')]
    >>> duplicate_pairs([b"a", b"b", b"c"], unit, 0.99, split, fold,
    ...                 verify=lambda pairs: np.array([0.5] * len(pairs)), pixel_threshold=0.9)
    []
    """
    pairs: Dict[tuple, dict] = {}
    first: Dict[bytes, int] = {}
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            pairs[(j, i)] = {"a": j, "b": i, "kind": "exact", "similarity": 1.0,
                             "pixel_score": 1.0}
    candidates: Dict[tuple, float] = {}
    if len(unit) > 1:
        sims, idx = neighbours if neighbours is not None else nearest(unit, k)
        for a, b in zip(*np.nonzero(sims >= threshold)):
            j = int(idx[a, b])
            if j < 0:
                continue
            pair = (int(min(a, j)), int(max(a, j)))
            if pair not in pairs and keys[pair[0]] != keys[pair[1]]:
                candidates[pair] = max(candidates.get(pair, -1.0), float(sims[a, b]))
    ranked = sorted(candidates, key=candidates.get, reverse=True)
    scores = np.full(len(ranked), np.nan)
    if verify is not None:
        checked = ranked[:MAX_VERIFIED]
        scores[:len(checked)] = verify(checked) if checked else []
        ranked = checked
    for pair, score in zip(ranked, scores):
        if verify is not None and score < pixel_threshold:  # NaN (unverifiable) is kept
            continue
        pairs[pair] = {"a": pair[0], "b": pair[1], "kind": "near",
                       "similarity": candidates[pair], "pixel_score": float(score)}
    if stats is not None:
        stats.update(candidates=len(candidates),
                     verified=int(np.isfinite(scores).sum()) if verify is not None else 0,
                     unverifiable=int(np.isnan(scores).sum()) if verify is not None else 0,
                     beyond_verify_limit=max(0, len(candidates) - MAX_VERIFIED)
                     if verify is not None else 0)
    out = list(pairs.values())
    for p in out:
        p["relation"] = relation(p["a"], p["b"], split, fold)
    out.sort(key=lambda p: (p["relation"] not in LEAKING, -p["similarity"]))
    return out


# ----------------------------------------------------------------- labels


def label_issues(codes: np.ndarray, proba: np.ndarray) -> List[dict]:
    """Images whose given label the out-of-fold probabilities contradict, most likely first.

    Confident learning (cleanlab's ``find_label_issues``, ranked by self-confidence):
    the probability the model gives the *given* label, judged against per-class
    thresholds learnt from the same probabilities.

    Parameters
    ----------
    codes : (n,) int labels 0..K-1
    proba : (n, K) out-of-fold probabilities; rows with NaN (in no held-out fold)
        are not judged.

    Returns
    -------
    list of dict
        ``index``, ``given`` and ``suggested`` (label codes), ``self_confidence``.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import label_issues
    >>> codes = np.repeat([0, 1], 10)
    >>> proba = np.where(codes[:, None] == [0, 1], 0.9, 0.1)
    >>> codes[3] = 1                                  # image 3 is labelled 1, looks like 0
    >>> [(i["index"], i["given"], i["suggested"]) for i in label_issues(codes, proba)]
    [(3, 1, 0)]
    """
    filt = _require("cleanlab", "finding label issues").filter
    codes = np.asarray(codes)
    proba = np.asarray(proba, np.float64)
    judged = np.flatnonzero(np.isfinite(proba).all(axis=1))
    present = np.unique(codes[judged])
    if len(judged) < 10 or len(present) < 2:
        return []
    p = proba[judged][:, present]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    local = np.searchsorted(present, codes[judged])
    ranked = filt.find_label_issues(labels=local, pred_probs=p,
                                    return_indices_ranked_by="self_confidence")
    return [{"index": int(judged[r]), "given": int(codes[judged[r]]),
             "suggested": int(present[np.argmax(p[r])]),
             "self_confidence": float(p[r, local[r]])} for r in ranked]


# ----------------------------------------------------------------- the map


def project_2d(X: np.ndarray, random_state: int = 0) -> np.ndarray:
    """A 2-D t-SNE map of vectors (after PCA to 50 dimensions).

    t-SNE rather than UMAP: on 2 cores umap-learn took 52 s for 5,000 points
    in a fresh process (numba compiling) against t-SNE's 22 s, and would add
    numba and llvmlite to the install (``benchmarks/bench_audit.py``). Callers
    sample large sets first (:func:`featx.audit` maps at most ``map_points``).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import project_2d
    >>> project_2d(np.random.RandomState(0).randn(40, 8)).shape
    (40, 2)
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(X)
    if n < 5:
        return np.zeros((n, 2))
    reduced = PCA(min(50, n - 1, X.shape[1]), random_state=random_state).fit_transform(X)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(2, init="pca", perplexity=perplexity, random_state=random_state,
                learning_rate="auto").fit_transform(reduced)


# ----------------------------------------------------------------- label budget


def _budget_score(estimator, X, codes, part, held):
    from sklearn.base import clone
    from sklearn.metrics import balanced_accuracy_score
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        fitted = clone(estimator).fit(X[part], codes[part])
        return balanced_accuracy_score(codes[held], fitted.predict(X[held]))


def label_budget(estimator, X: np.ndarray, codes: np.ndarray, splits,
                 fractions: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0),
                 random_state: int = 0, n_jobs=None,
                 full: Optional[Sequence[float]] = None) -> List[dict]:
    """Balanced accuracy of ``estimator`` trained on a share of each fold's training labels.

    Each fraction keeps that share of every class in the fold's training part
    (at least one image per class), scores on the fold's full held-out part,
    and averages over folds: a curve still rising at 100 % says more labels
    would pay. ``n_jobs`` fits in parallel worker processes (joblib). ``full``:
    each fold's score at 100 % already known (the out-of-fold fits of the same
    estimator), so those fits are not repeated.

    Returns
    -------
    list of dict
        ``fraction``, ``n_train`` (mean over folds), ``balanced_accuracy`` and ``std``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import StratifiedKFold
    >>> from featx.quality import label_budget
    >>> rng = np.random.RandomState(0)
    >>> codes = np.repeat([0, 1], 40)
    >>> X = rng.randn(80, 4) + codes[:, None] * 3
    >>> splits = list(StratifiedKFold(4).split(X, codes))
    >>> curve = label_budget(LogisticRegression(), X, codes, splits, fractions=(0.1, 1.0))
    >>> [(row["fraction"], row["balanced_accuracy"] > 0.9) for row in curve]
    [(0.1, True), (1.0, True)]
    """
    from joblib import Parallel, delayed

    rng = np.random.default_rng(random_state)
    tasks = []  # (fraction, training part, held-out part): drawn here, so n_jobs changes nothing
    for frac in fractions:
        for train, held in splits:
            if frac >= 1.0 and full is not None:
                continue
            chosen = []
            for c in np.unique(codes[train]):
                members = train[codes[train] == c]
                take = max(1, int(round(frac * len(members))))
                chosen.append(rng.permutation(members)[:take])
            part = np.concatenate(chosen)
            if len(np.unique(codes[part])) >= 2:
                tasks.append((frac, part, held))
    scores = Parallel(n_jobs=n_jobs)(delayed(_budget_score)(estimator, X, codes, part, held)
                                     for _, part, held in tasks)
    if full is not None and any(frac >= 1.0 for frac in fractions):
        tasks += [(1.0, train, held) for train, held in splits]
        scores = list(scores) + list(full)
    out = []
    for frac in fractions:
        mine = [(score, len(part)) for (f, part, _), score in zip(tasks, scores) if f == frac]
        if mine:
            values = [score for score, _ in mine]
            out.append({"fraction": float(frac), "n_train": float(np.mean([n for _, n in mine])),
                        "balanced_accuracy": float(np.mean(values)),
                        "std": float(np.std(values))})
    return out
