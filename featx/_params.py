"""Parameter constraints declared per estimator and checked once, at ``fit``.

The idea of scikit-learn's ``_parameter_constraints``: each estimator lists what
each ``__init__`` parameter may be, and ``fit`` checks them all before any work,
raising :class:`~featx.errors.InvalidParameterError` (a ``ValueError``) that names
the parameter, the value and what was expected. (scikit-learn's own validator is
private API; this is the small part featx needs.)
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Dict, Sequence

from .errors import InvalidParameterError

__all__ = ["Interval", "Options", "check_params", "image_input_tags"]


def image_input_tags(tags):
    """scikit-learn tags of an estimator whose input is images, not a feature matrix.

    A list/Series of paths (1-D, strings) or a uint8 batch (N, H, W[, C]); with
    ``two_d_array`` off, ``check_estimator`` skips the tabular checks that
    would feed it random floats.
    """
    tags.input_tags.two_d_array = False
    tags.input_tags.one_d_array = True
    tags.input_tags.three_d_array = True
    tags.input_tags.string = True
    return tags


class Options:
    """One of a fixed set of values (strings, usually)."""

    def __init__(self, values: Sequence[Any]):
        self.values = tuple(values)

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


class Interval:
    """An int (``kind=int``) or real number in ``[low, high]``; None means unbounded."""

    def __init__(self, kind: type, low=None, high=None):
        self.kind, self.low, self.high = kind, low, high

    def accepts(self, value) -> bool:
        number = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number):
            return False
        above_low = self.low is None or value >= self.low
        return above_low and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        what = "an int" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"{what} >= {self.low}"
        return what if self.high is None else f"{what} <= {self.high}"


def _accepts(constraint, value) -> bool:
    if constraint is None:
        return value is None
    if constraint is bool:
        return isinstance(value, bool)
    if constraint == "path":
        return isinstance(value, (str, os.PathLike))
    if isinstance(constraint, type):
        return isinstance(value, constraint) and not isinstance(value, bool)
    return constraint.accepts(value)


def _describe(constraint) -> str:
    if constraint is None:
        return "None"
    if constraint is bool:
        return "True or False"
    if constraint == "path":
        return "a path"
    if isinstance(constraint, type):
        return f"a {constraint.__name__}"
    return str(constraint)


def check_params(estimator, constraints: Dict[str, Sequence[Any]]) -> None:
    """Raise :class:`~featx.errors.InvalidParameterError` for the first parameter that
    fits none of its constraints.

    Examples
    --------
    >>> from featx.sklearn import RawPixels
    >>> check_params(RawPixels(size=0), {"size": [Interval(int, 1)]})
    Traceback (most recent call last):
    ...
    featx.errors.InvalidParameterError: RawPixels: size must be an int >= 1; got 0
    """
    for name, allowed in constraints.items():
        value = getattr(estimator, name)
        if not any(_accepts(c, value) for c in allowed):
            raise InvalidParameterError(
                f"{type(estimator).__name__}: {name} must be "
                f"{' or '.join(_describe(c) for c in allowed)}; got {value!r}")
