"""Preprocessing as data: each named mode is a channel order, a mean and a std.

Keras scatters preprocessing across ``keras.applications.<family>.preprocess_input``
functions; timm describes it as data.  featx does the latter, so the mode is part
of a backbone's fingerprint, is printed by ``featx backbones``, and can be applied
with numpy (engine, outside the model) or with ``keras.ops`` (inside a compiled
function) from one definition.  ``tests/test_backbones.py`` checks every mode
against Keras' own ``preprocess_input``.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["Preprocessing", "MODES", "get_preprocessing"]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """``(x[..., order] - mean) / std`` on float RGB input in [0, 255].

    Parameters
    ----------
    mode : str
        The mode's name.
    mean, std : tuple of 3 floats
        Per-channel, in the channel order *after* reordering.
    bgr : bool
        Reverse RGB to BGR first (the caffe mode).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.backbones.preprocessing import get_preprocessing
    >>> x = get_preprocessing("tf")(np.array([[[[0, 255, 127]]]], dtype=np.uint8))
    >>> [round(float(v), 3) for v in x.ravel()]
    [-1.0, 1.0, -0.004]
    """

    mode: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    bgr: bool = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Preprocess a uint8 (or float in [0, 255]) NHWC RGB batch → float32."""
        x = np.asarray(images, dtype=np.float32)
        if self.bgr:
            x = x[..., ::-1]
        if self.is_identity:
            return np.ascontiguousarray(x)
        x = x - np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return x

    def in_graph(self, x):
        """The same preprocessing with ``keras.ops``, for a uint8 tensor inside a
        compiled function: the host then sends uint8 (4× fewer bytes than float32)
        and does no float math. Same float32 operations in the same order as
        :meth:`__call__`, so the results agree to rounding.

        Examples
        --------
        >>> import numpy as np
        >>> from featx.backbones.preprocessing import get_preprocessing
        >>> x = np.array([[[[0, 255, 127]]]], dtype=np.uint8)
        >>> caffe = get_preprocessing("caffe")
        >>> np.allclose(np.asarray(caffe.in_graph(x)), caffe(x))
        True
        """
        from .._env import import_keras

        ops = import_keras().ops
        x = ops.cast(x, "float32")
        if self.bgr:
            x = ops.flip(x, axis=-1)
        if self.is_identity:
            return x
        x = ops.subtract(x, np.asarray(self.mean, dtype=np.float32))
        return ops.divide(x, np.asarray(self.std, dtype=np.float32))

    @property
    def is_identity(self) -> bool:
        """True when the model normalises inside itself (mode ``raw``)."""
        return not self.bgr and self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def to_dict(self) -> dict:
        """JSON-ready description (goes into the backbone spec)."""
        return dataclasses.asdict(self)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

MODES: Dict[str, Preprocessing] = {
    "caffe": Preprocessing("caffe", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True),
    "tf": Preprocessing("tf", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "torch": Preprocessing("torch", tuple(255.0 * m for m in _IMAGENET_MEAN),
                           tuple(255.0 * s for s in _IMAGENET_STD)),
    "raw": Preprocessing("raw", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "lite": Preprocessing("lite", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
}


def get_preprocessing(mode: str) -> Preprocessing:
    """The :class:`Preprocessing` for a mode name (``caffe``, ``tf``, ``torch``, ``raw``, ``lite``).

    Examples
    --------
    >>> from featx.backbones.preprocessing import get_preprocessing
    >>> get_preprocessing("caffe").bgr
    True
    """
    try:
        return MODES[mode]
    except KeyError:
        raise InvalidParameterError(
            f"unknown preprocessing mode {mode!r}; expected one of {sorted(MODES)}") from None
