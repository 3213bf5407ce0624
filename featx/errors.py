"""Every error featx raises on purpose derives from :class:`FeatxError`.

Messages say what was expected, what was received, and — where a file is
involved — which file, so that a user can act without reading a traceback.
"""

from __future__ import annotations


class FeatxError(Exception):
    """Base class of all errors featx raises deliberately.

    Examples
    --------
    >>> import featx
    >>> from featx.errors import InvalidDataError
    >>> issubclass(InvalidDataError, featx.FeatxError)
    True
    """


class InvalidParameterError(FeatxError, ValueError):
    """A parameter value featx cannot use (as scikit-learn's ``InvalidParameterError``).

    Subclasses ``ValueError``, so code written for scikit-learn estimators
    (``except ValueError``) catches featx's parameter errors too.

    Examples
    --------
    >>> from featx.images import check_decode_options
    >>> try:
    ...     check_decode_options((224, 224), policy="stretch")
    ... except ValueError as exc:
    ...     print(type(exc).__name__)
    InvalidParameterError
    """


class InvalidDataError(FeatxError, ValueError):
    """Labels or inputs that cannot be used as given (too few classes, mismatched lengths).

    Subclasses ``ValueError``, as scikit-learn raises for bad ``X`` or ``y``.
    """


class UnknownBackboneError(FeatxError, KeyError):
    """A backbone name that is not in the registry.

    Subclasses ``KeyError`` too, so ``except KeyError`` around a lookup keeps
    working. ``str()`` gives the plain message (``KeyError`` would quote it).
    """

    def __str__(self) -> str:  # KeyError.__str__ adds quotes; keep the message readable
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(FeatxError, ImportError):
    """An optional package is needed for what was asked; the message names the install command."""


class WeightsUnavailableError(FeatxError):
    """Pretrained weights cannot be obtained (no network, no cache, package not installed)."""


class WeightsMismatchError(FeatxError, ValueError):
    """A weights file does not fit the architecture; the message names the first mismatching layer."""


class UnsafePickleError(FeatxError):
    """A pickle stream asked for a global outside the reader's allow-list; nothing was executed."""


class ImageDecodeError(InvalidDataError):
    """An image file or array could not be turned into pixels; the message names the source.

    An :class:`InvalidDataError` (and so a ``ValueError``): the input, not featx,
    is what has to change."""


class HeadError(FeatxError, ValueError):
    """A head cannot be built or fitted as asked (unknown kind, bad parameter, too few samples).

    Examples
    --------
    >>> from featx.heads import make_head
    >>> from featx.errors import HeadError
    >>> try:
    ...     make_head("not-a-head")
    ... except HeadError as exc:
    ...     print(type(exc).__name__, isinstance(exc, ValueError))
    HeadError True
    """


class StoreError(FeatxError):
    """The HDF5 embedding store is damaged, locked, of another format version, or misused."""


class FingerprintMismatchError(StoreError):
    """Vectors of one backbone fingerprint were about to be mixed with another's."""


class EmbedInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) stopped an ``embed`` call; what it committed stays stored.

    Subclasses ``KeyboardInterrupt`` so code that handles interrupts keeps doing
    so. ``committed`` counts the vectors this call stored before it stopped;
    ``store`` is the store's path (None without a store).
    """

    def __init__(self, committed: int, store: "str | None" = None):
        self.committed = int(committed)
        self.store = store
        where = f" to {store}" if store else ""
        super().__init__(f"interrupted; {self.committed} vectors committed{where}")
