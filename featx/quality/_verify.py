"""Pixel-level verification of near-duplicate candidates.

A backbone's vectors rank an image's copies among its nearest neighbours, but
they cannot tell a copy from a distinct image of the same kind: on Fashion-MNIST
two plain trousers score as high as a trouser and its recompressed crop. Copy
detection therefore verifies each candidate pair on the pixels (retrieve, then
verify): a copy is one image's pixels again after a slight crop, a resize and a
recompression, so the two must correlate almost perfectly once the crop is
undone. Two distinct photos of similar things do not, however similar their
vectors. The search over crops is small and exhaustive: both images as
thumbnails, each crop of either thumbnail on a grid resampled by one matrix
product per axis.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ImageDecodeError

log = logging.getLogger("featx")

__all__ = ["VERIFY_SIZE", "MAX_CROP", "TEMPLATE_NEIGHBOURS", "PARALLEL_PAIRS", "copy_score",
           "thumbnail", "PixelVerifier", "verify_pairs"]

#: Side of the square grid two candidates are compared on.
VERIFY_SIZE = 32
#: Largest share of a side a copy may have lost to cropping (both ends together).
MAX_CROP = 0.06
#: Crop shares tried per axis, each placed at the start, the middle and the end.
_CROP_STEPS = (0.0, 0.02, 0.04, MAX_CROP)
#: Thumbnails are decoded at twice the compared size, so a crop of 2 % is a pixel.
_SOURCE_SIZE = 2 * VERIFY_SIZE
#: The best crop is searched for on a coarser grid (the crops are shares of a side, the
#: same at any size): 16 × 16 costs a sixth of the search at 32 × 32.
_SEARCH_SIZE = VERIFY_SIZE // 2


@lru_cache(maxsize=None)
def _crop_matrices(n_in: int = _SOURCE_SIZE, n_out: int = VERIFY_SIZE) -> np.ndarray:
    """(crops, n_out, n_in) area-resampling matrices, one per crop of a side.

    Row i of a matrix averages the source interval that output pixel i covers
    after cutting ``lo`` from the start and ``hi`` from the end of the side.
    """
    crops = sorted({(round(c * at, 4), round(c * (1 - at), 4))
                    for c in _CROP_STEPS for at in (0.0, 0.5, 1.0)})
    edges = np.arange(n_in + 1, dtype=np.float64)
    out = np.zeros((len(crops), n_out, n_in))
    for m, (lo, hi) in enumerate(crops):
        start, stop = lo * n_in, n_in * (1 - hi)
        bounds = start + (stop - start) * np.arange(n_out + 1) / n_out
        left, right = bounds[:-1, None], bounds[1:, None]
        overlap = np.clip(np.minimum(right, edges[None, 1:]) - np.maximum(left, edges[None, :-1]),
                          0, None)
        out[m] = overlap / overlap.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


def thumbnail(source) -> np.ndarray:
    """An image squashed to the verifier's grid, float32 (h, w, 3).

    Decoded by :func:`featx.images.decode_image` (EXIF, modes and size limits as
    the engine handles them; a JPEG decodes at a reduced scale), so a 12 MP
    photo costs a fraction of a full decode.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import thumbnail
    >>> thumbnail(np.zeros((100, 80, 3), np.uint8)).shape
    (64, 64, 3)
    """
    from ..images import decode_image

    return decode_image(source, (_SOURCE_SIZE, _SOURCE_SIZE)).astype(np.float32)


def _standardised(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) centred and scaled to unit norm: correlation is then a dot."""
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _every_crop(grey: np.ndarray) -> np.ndarray:
    """(crops², _SEARCH_SIZE²) every crop of a grey thumbnail on the search grid, standardised.

    ``grey`` is the thumbnail halved (VERIFY_SIZE square).
    """
    mats = _crop_matrices(VERIFY_SIZE, _SEARCH_SIZE)
    k, n, src = mats.shape
    by_rows = (mats.reshape(k * n, src) @ grey).reshape(k, n, src)
    both = by_rows.reshape(k * n, src) @ mats.reshape(k * n, src).T  # (k·y, l·x)
    return _standardised(both.reshape(k, n, k, n).transpose(0, 2, 1, 3).reshape(k * k, n * n))


class _Prepared:
    """One image's thumbnail (uint8) and its uncropped grids: grey on the search grid and
    on the full grid (standardised), colour on the full grid; its grey crops are
    computed on demand (0.1 MB each, so :class:`PixelVerifier` keeps a few hundred)."""

    __slots__ = ("thumb", "grey_whole", "grey_full", "colour_whole")

    def __init__(self, thumb: np.ndarray):
        self.thumb = np.clip(np.rint(thumb), 0, 255).astype(np.uint8)
        whole = _crop_matrices()[0]  # the uncropped crop sorts first
        self.colour_whole = self.colour_crop(0, 0)
        search = _crop_matrices(VERIFY_SIZE, _SEARCH_SIZE)[0]
        grey = self.grey()
        self.grey_whole = _standardised((search @ _halved(grey) @ search.T).reshape(-1))
        self.grey_full = _standardised((whole @ grey @ whole.T).reshape(-1))

    def grey(self) -> np.ndarray:
        return self.thumb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)

    def crops(self) -> np.ndarray:
        return _every_crop(_halved(self.grey()))

    def colour_crop(self, k: int, m: int) -> np.ndarray:
        """Crop ``k`` of the rows and ``m`` of the columns, channel by channel, flat."""
        mats = _crop_matrices()
        colour = self.thumb.astype(np.float32)
        return np.stack([mats[k] @ colour[:, :, c] @ mats[m].T for c in range(3)]).reshape(-1)


def _halved(grey: np.ndarray) -> np.ndarray:
    n = grey.shape[0] // 2
    return grey.reshape(n, 2, n, 2).mean(axis=(1, 3))


#: Best crops of the coarse search re-scored on the full grid, per direction.
_REFINE = 4


def _match(a: _Prepared, b: _Prepared, crops_a: np.ndarray, crops_b: np.ndarray,
           template: Optional[np.ndarray] = None) -> float:
    """Best crop of either image found on grey pixels (coarse grid, then the few best on
    the full grid), then scored on colour pixels (less ``template``, what the two
    images' look-alikes share, when given)."""
    mats = _crop_matrices()
    best, best_crop, cropped, whole = -2.0, (0, 0), a, b
    for x, crops, y in ((a, crops_a, b), (b, crops_b, a)):
        coarse = crops @ y.grey_whole
        grey = x.grey()
        for top in np.argpartition(-coarse, _REFINE)[:_REFINE]:
            k, m = divmod(int(top), len(mats))
            v = (mats[k] @ grey @ mats[m].T).reshape(-1)
            v = v - v.mean()
            score = float(v @ y.grey_full) / max(float(np.sqrt(v @ v)), 1e-6)
            if score > best:
                best, best_crop, cropped, whole = score, (k, m), x, y
    x, y = cropped.colour_crop(*best_crop), whole.colour_whole
    if template is not None:
        x, y = x - template, y - template
    return _concordance(x, y)


def _concordance(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation: Pearson's, lowered by any change of brightness or
    contrast (a copy keeps both; a look-alike photographed lighter does not)."""
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    denominator = float(dx @ dx + dy @ dy) + len(x) * float(mx - my) ** 2
    return 2.0 * float(dx @ dy) / denominator if denominator > 0 else 0.0


def copy_score(a: np.ndarray, b: np.ndarray) -> float:
    """How well one image matches a slight crop of the other: the best correlation of pixels.

    Both images are thumbnails from :func:`thumbnail`. Every crop of up to
    :data:`MAX_CROP` per side (at its start, middle or end) of either one is
    resampled to a ``VERIFY_SIZE`` grid and correlated with the other one,
    uncropped, on grey pixels; the best crop is then scored on all three colour
    channels together, so a recoloured image is not a copy. A copy that was
    cropped, resized and recompressed scores close to 1, distinct images of
    the same kind lower.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> from featx.quality import copy_score, thumbnail
    >>> rng = np.random.RandomState(0)
    >>> def pattern():
    ...     small = rng.randint(0, 255, (24, 24, 3)).astype(np.uint8)
    ...     return np.asarray(Image.fromarray(small).resize((96, 96)))
    >>> image, other = pattern(), pattern()
    >>> cropped = image[3:, :-2]                  # 3 % off the top, 2 % off one side
    >>> copy_score(thumbnail(image), thumbnail(cropped)) > 0.95
    True
    >>> copy_score(thumbnail(image), thumbnail(other)) < 0.5
    True
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        pa, pb = _Prepared(a), _Prepared(b)
        return _match(pa, pb, pa.crops(), pb.crops())


#: Look-alikes averaged into the template a pair is compared against.
TEMPLATE_NEIGHBOURS = 10
#: Images whose grey crops are kept between pairs (0.1 MB each).
_CROPS_KEPT = 256
#: Images whose neighbours' summed grids are kept between pairs (12 KB each).
_SUMS_KEPT = 4096


class PixelVerifier:
    """Copy scores of candidate pairs, each image's thumbnail decoded once.

    With ``neighbours``, a pair is compared *less what its look-alikes share*:
    the mean of the two images' nearest neighbours (up to
    :data:`TEMPLATE_NEIGHBOURS`, the pair itself left out) is subtracted from
    both before the colour score. A copy still matches its original in what
    sets it apart; two distinct solar cells or two plain trousers share mostly
    the layout their neighbours share too. On the nearest distinct neighbours of
    150 ELPV cells, 37 % reached the 2 % quantile of generated copies' scores
    without the template and 10 % with it (Fashion-MNIST at 28 px: 4.7 %
    and 0.7 %).

    Parameters
    ----------
    load : callable
        ``load(i)`` returns image ``i``'s source (path or array); an image that
        no longer decodes gets the score NaN.
    neighbours : (n, k) int array, optional
        Each image's nearest neighbours by vector (-1: none), as
        :func:`~featx.quality.nearest` gives them.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import PixelVerifier
    >>> from PIL import Image
    >>> rng = np.random.RandomState(0)
    >>> def pattern():
    ...     small = rng.randint(0, 255, (16, 16, 3)).astype(np.uint8)
    ...     return np.asarray(Image.fromarray(small).resize((80, 80)))
    >>> image = pattern()
    >>> images = [image, image[2:, 1:], pattern()]   # an image, its crop, another one
    >>> copy, other = PixelVerifier(images.__getitem__).scores([(0, 1), (0, 2)])
    >>> bool(copy > 0.95), bool(other < 0.5)
    (True, True)
    """

    def __init__(self, load: Callable[[int], object], neighbours: Optional[np.ndarray] = None):
        self.load = load
        self.neighbours = neighbours
        self._thumbs: Dict[int, Optional[_Prepared]] = {}
        self._crops: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._sums: "OrderedDict[int, Tuple[np.ndarray, List[int]]]" = OrderedDict()
        self.failed = 0

    def _prepared(self, i: int) -> Optional[_Prepared]:
        if i not in self._thumbs:
            try:
                self._thumbs[i] = _Prepared(thumbnail(self.load(i)))
            except (ImageDecodeError, OSError) as exc:  # gone or changed since it was embedded
                log.warning("featx audit: cannot verify the pixels of image %d: %s", i, exc)
                self.failed += 1
                self._thumbs[i] = None
        return self._thumbs[i]

    def _crops_of(self, i: int, prepared: _Prepared) -> np.ndarray:
        crops = self._crops.pop(i, None)
        if crops is None:
            crops = prepared.crops()
        self._crops[i] = crops
        if len(self._crops) > _CROPS_KEPT:
            self._crops.popitem(last=False)
        return crops

    def _neighbourhood(self, i: int) -> Tuple[np.ndarray, List[int]]:
        """Sum of the colour grids of ``i``'s decodable neighbours, and who they are."""
        kept = self._sums.pop(i, None)
        if kept is None:
            ids, total = [], np.zeros(3 * VERIFY_SIZE ** 2, np.float32)
            for j in map(int, self.neighbours[i]):
                prepared = self._prepared(j) if j >= 0 and j != i else None
                if prepared is not None:
                    ids.append(j)
                    total += prepared.colour_whole
                    if len(ids) == TEMPLATE_NEIGHBOURS:
                        break
            kept = (total, ids)
        self._sums[i] = kept
        if len(self._sums) > _SUMS_KEPT:
            self._sums.popitem(last=False)
        return kept

    def template(self, members: Sequence[int]) -> Optional[np.ndarray]:
        """Mean colour grid of up to :data:`TEMPLATE_NEIGHBOURS` of the members' nearest
        neighbours (the first member's first, topped up from the others'), the members
        left out."""
        if self.neighbours is None:
            return None
        members = [int(m) for m in members]
        total, ids = self._neighbourhood(members[0])
        left_out = [j for j in ids if j in members]
        ids = [j for j in ids if j not in members]
        if left_out:
            total = total - sum(self._thumbs[j].colour_whole for j in left_out)
        for m in members[1:]:
            for j in self._neighbourhood(m)[1]:
                if len(ids) >= TEMPLATE_NEIGHBOURS:
                    break
                if j not in members and j not in ids:
                    ids.append(j)
                    total = total + self._thumbs[j].colour_whole
        return total / len(ids) if ids else None

    def score(self, i: int, j: int) -> float:
        """The copy score of images ``i`` and ``j``; NaN when either does not decode."""
        return self.scores([(i, j)])[0]

    def scores(self, pairs) -> np.ndarray:
        """The copy score of each ``(i, j)`` in ``pairs`` (NaN where one does not decode)."""
        from threadpoolctl import threadpool_limits

        out = np.full(len(pairs), np.nan)
        # Matrices of a few thousand numbers: a threaded BLAS spends 10x longer syncing.
        with threadpool_limits(limits=1, user_api="blas"):
            for n in sorted(range(len(pairs)), key=lambda n: tuple(pairs[n])):  # crops reused
                i, j = int(pairs[n][0]), int(pairs[n][1])
                a, b = self._prepared(i), self._prepared(j)
                if a is not None and b is not None:
                    out[n] = _match(a, b, self._crops_of(i, a), self._crops_of(j, b),
                                    self.template((i, j)))
        return out

    def copy_scores(self, i: int, copies: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of image ``i`` against generated ``copies`` of it (pixel arrays), as a
        pair of ``i`` and a copy would be scored: the calibration's positives."""
        from threadpoolctl import threadpool_limits

        out = np.full(len(copies), np.nan)
        with threadpool_limits(limits=1, user_api="blas"):
            a = self._prepared(int(i))
            if a is None:
                return out
            template = self.template((int(i),))
            for n, pixels in enumerate(copies):
                b = _Prepared(thumbnail(pixels))
                out[n] = _match(a, b, self._crops_of(int(i), a), b.crops(), template)
        return out


#: Candidates from which :func:`verify_pairs` spreads the work over processes: below,
#: starting workers (and decoding thumbnails in each) costs more than it saves.
PARALLEL_PAIRS = 5000


def _score_chunk(load, neighbours, pairs) -> np.ndarray:
    return PixelVerifier(load, neighbours).scores(pairs)


def verify_pairs(verifier: PixelVerifier, pairs, n_jobs=1) -> np.ndarray:
    """``verifier.scores(pairs)``, in ``n_jobs`` worker processes (joblib) from
    :data:`PARALLEL_PAIRS` pairs on.

    The pairs are sorted and cut into one contiguous run per worker, and each worker
    builds its own verifier from ``verifier.load`` and ``verifier.neighbours``, so it
    decodes the thumbnails of its own stretch of images. An image that does not decode
    scores NaN as it would in one process (its warning is logged by the worker).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.quality import PixelVerifier, verify_pairs
    >>> images = [np.random.RandomState(i).randint(0, 255, (40, 40, 3)).astype(np.uint8)
    ...           for i in range(3)]
    >>> scores = verify_pairs(PixelVerifier(images.__getitem__), [(0, 0), (0, 1)])
    >>> bool(scores[0] > 0.99), bool(scores[1] < 0.5)
    (True, True)
    """
    from joblib import Parallel, delayed, effective_n_jobs

    pairs = [(int(i), int(j)) for i, j in pairs]
    workers = effective_n_jobs(n_jobs)
    if workers <= 1 or len(pairs) < PARALLEL_PAIRS:
        return verifier.scores(pairs)
    order = sorted(range(len(pairs)), key=pairs.__getitem__)
    runs = [run for run in np.array_split(np.asarray(order), workers) if len(run)]
    scored = Parallel(n_jobs=workers)(
        delayed(_score_chunk)(verifier.load, verifier.neighbours, [pairs[n] for n in run])
        for run in runs)
    out = np.full(len(pairs), np.nan)
    for run, scores in zip(runs, scored):
        out[run] = scores
    return out
