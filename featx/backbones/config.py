"""``BackboneConfig``: the build arguments of a backbone as one frozen, JSON-ready value.

One value says which backbone to build — in this process (the scikit-learn
estimators), or on a Dask worker that receives it as a plain dict — and one
process-wide cache builds each configuration once, keyed by one identity
(canonical name, the weights *file's* size and mtime when it is a path, the
resolved input size, pooling, dtype, top, seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import FeatxError, InvalidParameterError
from .base import Backbone, default_compute_dtype, get_backbone, resolve_weights
from .registry import get_spec

__all__ = ["BackboneConfig", "clear_config_cache"]


@dataclass(frozen=True)
class BackboneConfig:
    """How to build a frozen backbone: :func:`featx.get_backbone`'s arguments as a value.

    Parameters
    ----------
    name : str
    weights : {"packaged", "imagenet"}, path or None, default "packaged"
    input_size : int, optional
    pooling : str, default "avg"
    dtype : str, default "float32"
    include_top : bool, default False
    seed : int, default 0

    Examples
    --------
    >>> from featx.backbones import BackboneConfig
    >>> config = BackboneConfig("mobilenet_v2", weights=None, input_size=32)
    >>> config.to_dict()["input_size"], BackboneConfig(**config.to_dict()) == config
    (32, True)
    >>> backbone, built = config.get()
    >>> config.get()[0] is backbone
    True
    """

    name: str
    weights: Any = "packaged"
    input_size: Optional[int] = None
    pooling: str = "avg"
    dtype: str = "float32"
    include_top: bool = False
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise InvalidParameterError(
                f"a backbone name must be a str, got {type(self.name).__name__}")
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None and not isinstance(self.weights, str):
            raise InvalidParameterError(
                f"weights must be 'packaged', 'imagenet', a file path or None; "
                f"got {type(self.weights).__name__}: {self.weights!r}")
        if self.input_size is not None:
            object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "include_top", bool(self.include_top))
        object.__setattr__(self, "seed", int(self.seed))

    # -- conversions ----------------------------------------------------------

    @classmethod
    def of(cls, backbone, **defaults) -> Tuple["BackboneConfig", Optional[str]]:
        """A config from a name, a dict, a config or a built Backbone; and its fingerprint.

        Parameters
        ----------
        backbone : str, dict, BackboneConfig or Backbone
            A name is built with ``defaults``; a dict's keys override them; a
            built :class:`~featx.Backbone` gives back its own arguments, and its
            fingerprint (which a rebuild elsewhere must reproduce).
        **defaults
            Any field but ``name``.

        Returns
        -------
        config : BackboneConfig
        fingerprint : str or None
            Only when ``backbone`` was built.

        Examples
        --------
        >>> from featx.backbones import BackboneConfig
        >>> BackboneConfig.of({"name": "resnet50", "input_size": 64}, weights=None)[0].weights is None
        True
        """
        if isinstance(backbone, Backbone):
            return cls._of_backbone(backbone), backbone.fingerprint
        if isinstance(backbone, BackboneConfig):
            return backbone, None
        if isinstance(backbone, Mapping):
            known = {f.name for f in fields(cls)}
            if "name" not in backbone or set(backbone) - known:
                raise FeatxError(
                    f"a backbone spec is a dict with 'name' and optionally "
                    f"{sorted(known - {'name'})}; received keys {sorted(backbone)}")
            return cls(**{**defaults, **backbone}), None
        if isinstance(backbone, str):
            return cls(backbone, **defaults), None
        raise InvalidParameterError(
            f"backbone must be a name, a spec dict, a BackboneConfig or a featx Backbone; "
            f"received {type(backbone).__name__}")

    @classmethod
    def _of_backbone(cls, backbone: Backbone) -> "BackboneConfig":
        w, seed = backbone.weights, 0
        if w.kind == "random":
            weights, seed = None, int(w.source.split(":", 1)[1])
        elif w.kind == "file":
            weights = w.source  # the resolved path: another process must see the same file
        else:
            weights = w.kind  # "packaged" | "imagenet"
        return cls(backbone.name, weights=weights, input_size=backbone.input_size,
                   pooling=backbone.pooling or "avg", dtype=backbone.dtype,
                   include_top=backbone.include_top, seed=seed)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-ready dict (``BackboneConfig(**d)`` rebuilds it)."""
        return asdict(self)

    def identity(self) -> tuple:
        """What decides the built model: aliases, a default input size and an edited
        weights file are resolved, so equal models share one cache entry."""
        spec = get_spec(self.name)
        size = self.input_size if self.input_size is not None else spec.input_size
        weights = resolve_weights(spec.name, self.weights)  # "auto" is what it resolves to
        dtype = default_compute_dtype() if self.dtype == "auto" else self.dtype
        return (spec.name, _weights_identity(weights), size, self.pooling, dtype,
                self.include_top, self.seed)

    def id(self) -> str:
        """A short stable hex id of :meth:`to_dict` (names a Dask plugin)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- building -------------------------------------------------------------

    def build(self) -> Backbone:
        """A new :class:`~featx.Backbone` (seconds: prefer :meth:`get`)."""
        return get_backbone(**self.to_dict())

    def get(self) -> Tuple[Backbone, bool]:
        """The process-wide backbone of this config, built on first use.

        Returns
        -------
        backbone : Backbone
        built : bool
            True when this call built it.
        """
        key = self.identity()
        backbone = _BUILT.get(key)
        if backbone is not None:
            return backbone, False
        # One lock for all configs: a process builds one model at a time, and two
        # threads asking for the same config must not both build it.
        with _LOCK:
            backbone = _BUILT.get(key)
            if backbone is not None:
                return backbone, False
            backbone = self.build()
            _BUILT[key] = backbone
            _BUILDS[key] = _BUILDS.get(key, 0) + 1
            return backbone, True

    def build_count(self) -> int:
        """How many times this process built this config (1 while the cache holds)."""
        return _BUILDS.get(self.identity(), 0)


_BUILT: Dict[tuple, Backbone] = {}
_BUILDS: Dict[tuple, int] = {}
_LOCK = threading.Lock()


def clear_config_cache() -> None:
    """Forget every backbone :meth:`BackboneConfig.get` built in this process.

    Examples
    --------
    >>> from featx.backbones import clear_config_cache
    >>> clear_config_cache()
    """
    with _LOCK:
        _BUILT.clear()


def _weights_identity(weights) -> Any:
    """A file by its path, size and mtime, so an edited weights file is rebuilt."""
    if weights is None or weights in ("auto", "packaged", "imagenet"):
        return weights
    path = os.path.abspath(weights)
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, None, None)  # get_backbone raises the useful message
