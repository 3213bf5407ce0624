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
from functools import lru_cache
from typing import Callable, Dict, Optional

import numpy as np

from ..errors import ImageDecodeError

log = logging.getLogger("featx")

__all__ = ["VERIFY_SIZE", "MAX_CROP", "copy_score", "thumbnail", "PixelVerifier"]

#: Side of the square grid two candidates are compared on.
VERIFY_SIZE = 32
#: Largest share of a side a copy may have lost to cropping (both ends together).
MAX_CROP = 0.06
#: Crop shares tried per axis, each placed at the start, the middle and the end.
_CROP_STEPS = (0.0, 0.02, 0.04, MAX_CROP)
#: Thumbnails are decoded at twice the compared size, so a crop of 2 % is a pixel.
_SOURCE_SIZE = 2 * VERIFY_SIZE


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

    if getattr(source, "array", None) is not None:
        source = source.array
    elif getattr(source, "path", None) is not None:
        source = source.path
    return decode_image(source, (_SOURCE_SIZE, _SOURCE_SIZE)).astype(np.float32)


def _standardised(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) centred and scaled to unit norm: correlation is then a dot."""
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _resampled(thumb: np.ndarray, k: int, m: int) -> np.ndarray:
    """``thumb`` (h, w, ...) cut by crop ``k`` of its rows and ``m`` of its columns, on the grid."""
    mats = _crop_matrices()
    return np.tensordot(np.tensordot(mats[k], thumb, axes=(1, 0)), mats[m], axes=(1, 1))


def _every_crop(grey: np.ndarray) -> np.ndarray:
    """(crops², VERIFY_SIZE²) every grid crop of a grey thumbnail, standardised."""
    mats = _crop_matrices()
    k, n, src = mats.shape
    by_rows = (mats.reshape(k * n, src) @ grey).reshape(k, n, src)
    both = by_rows.reshape(k * n, src) @ mats.reshape(k * n, src).T  # (k·y, l·x)
    return _standardised(both.reshape(k, n, k, n).transpose(0, 2, 1, 3).reshape(k * k, n * n))


class _Prepared:
    """One image's thumbnail, its grey crops and its uncropped grids (grey and colour)."""

    __slots__ = ("colour", "crops", "grey_whole", "colour_whole")

    def __init__(self, thumb: np.ndarray):
        grey = thumb @ np.array([0.299, 0.587, 0.114], np.float32)
        self.colour = thumb
        self.crops = _every_crop(grey)
        self.grey_whole = _standardised(_resampled(grey, 0, 0).reshape(-1))
        self.colour_whole = _resampled(thumb, 0, 0).transpose(0, 2, 1).reshape(-1)


def _match(a: _Prepared, b: _Prepared) -> float:
    """Best crop of either image found on grey pixels, then scored on colour pixels."""
    best, best_crop, cropped, whole = -2.0, 0, a, b
    for x, y in ((a, b), (b, a)):
        scores = x.crops @ y.grey_whole
        top = int(np.argmax(scores))
        if scores[top] > best:
            best, best_crop, cropped, whole = float(scores[top]), top, x, y
    k, m = divmod(best_crop, len(_crop_matrices()))
    return _concordance(_resampled(cropped.colour, k, m).transpose(0, 2, 1).reshape(-1),
                        whole.colour_whole)


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
        return _match(_Prepared(a), _Prepared(b))


class PixelVerifier:
    """Copy scores of candidate pairs, each image's thumbnail decoded once.

    Parameters
    ----------
    load : callable
        ``load(i)`` returns image ``i``'s source (path or array); an image that
        no longer decodes gets the score NaN.

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

    def __init__(self, load: Callable[[int], object]):
        self.load = load
        self._thumbs: Dict[int, Optional[_Prepared]] = {}
        self.failed = 0

    def _prepared(self, i: int):
        if i not in self._thumbs:
            try:
                self._thumbs[i] = _Prepared(thumbnail(self.load(i)))
            except (ImageDecodeError, OSError) as exc:  # gone or changed since it was embedded
                log.warning("featx audit: cannot verify the pixels of image %d: %s", i, exc)
                self.failed += 1
                self._thumbs[i] = None
        return self._thumbs[i]

    def score(self, i: int, j: int) -> float:
        """:func:`copy_score` of images ``i`` and ``j``; NaN when either does not decode."""
        return self.scores([(i, j)])[0]

    def scores(self, pairs) -> np.ndarray:
        """:func:`copy_score` of each ``(i, j)`` in ``pairs`` (NaN where one does not decode)."""
        from threadpoolctl import threadpool_limits

        out = np.full(len(pairs), np.nan)
        # Matrices of a few thousand numbers: a threaded BLAS spends 10x longer syncing.
        with threadpool_limits(limits=1, user_api="blas"):
            for n, (i, j) in enumerate(pairs):
                a, b = self._prepared(int(i)), self._prepared(int(j))
                if a is not None and b is not None:
                    out[n] = _match(a, b)
        return out
