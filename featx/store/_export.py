"""One group of a store out to a file other tools read: ``.npz``, ``.csv`` or ``.parquet``.

The store keys vectors by content (sha256 of the image bytes), not by path, so
an export carries the key and, when the caller says which files to match
(``paths_by_key``), every path seen with that content.
"""

from __future__ import annotations

import csv
import os
import tempfile
from typing import Dict, List, Mapping, Optional

import numpy as np

from featx.errors import InvalidParameterError, MissingDependencyError, StoreError

__all__ = ["EXPORT_FORMATS", "export_vectors", "find_group"]

#: File suffixes :func:`export_vectors` writes.
EXPORT_FORMATS = (".npz", ".csv", ".parquet")


def find_group(store, *, backbone: Optional[str] = None,
               fingerprint: Optional[str] = None) -> str:
    """The one fingerprint in ``store`` a user means by a backbone name or a fingerprint prefix.

    Raises a :class:`~featx.errors.StoreError` that lists the groups when none or
    several match.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.store import EmbeddingStore, find_group
    >>> store = EmbeddingStore(os.path.join(tempfile.mkdtemp(), "emb.h5"))
    >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={"name": "m"})
    >>> find_group(store, backbone="m") == "ab" * 32, find_group(store, fingerprint="abababab")[:8]
    (True, 'abababab')
    """
    if (backbone is None) == (fingerprint is None):
        raise InvalidParameterError("give a backbone name or a fingerprint (prefix), not both")
    groups = {fp: (store.spec(fp) or {}) for fp in store.fingerprints()}
    if fingerprint is not None:
        if len(fingerprint) < 8:
            raise InvalidParameterError(f"a fingerprint prefix needs at least 8 characters, "
                                        f"got {fingerprint!r}")
        matches = [fp for fp in groups if fp.startswith(fingerprint.lower())]
        what = f"fingerprint {fingerprint}"
    else:  # the registry's name (the CLI resolves aliases before it asks)
        matches = [fp for fp, spec in groups.items() if spec.get("name") == backbone]
        what = f"backbone {backbone}"
    if len(matches) == 1:
        return matches[0]
    listing = "; ".join(f"{spec.get('name', '?')} {fp[:16]} "
                        f"({spec.get('input_size', '?')} px, {spec.get('resize_policy', 'squash')})"
                        for fp, spec in groups.items()) or "none"
    if not matches:
        raise StoreError(f"{store.path}: no group for {what}. Groups: {listing}")
    raise StoreError(f"{store.path}: {len(matches)} groups match {what}; name one with "
                     f"--fingerprint. Groups: {listing}")


def export_vectors(store, fingerprint: str, out, *,
                   paths_by_key: Optional[Mapping[bytes, List[str]]] = None) -> Dict:
    """Write the vectors of one group to ``out`` (its suffix picks the format).

    Parameters
    ----------
    store : EmbeddingStore
    fingerprint : str
        The group (see :func:`find_group`).
    out : str or os.PathLike
        ``.npz`` (arrays ``keys`` hex, ``paths``, ``vectors``), ``.csv`` (columns
        ``key, paths, v0 … v{dim-1}``) or ``.parquet`` (``key``, ``paths`` list,
        ``vector`` list; needs pyarrow). Written to a temporary file and renamed,
        so a failed export leaves no half file.
    paths_by_key : mapping, optional
        Content key → paths with that content; paths of one key are joined with
        ``;`` in CSV and NPZ.

    Returns
    -------
    dict
        ``rows``, ``dim``, ``with_paths`` (rows that got at least one path), ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from featx.store import EmbeddingStore, export_vectors
    >>> d = tempfile.mkdtemp()
    >>> store = EmbeddingStore(os.path.join(d, "emb.h5"))
    >>> _ = store.put("ab" * 32, [b"k" * 32], np.ones((1, 2), np.float32), spec={})
    >>> export_vectors(store, "ab" * 32, os.path.join(d, "v.npz"))["rows"]
    1
    >>> np.load(os.path.join(d, "v.npz"))["vectors"].tolist()
    [[1.0, 1.0]]
    """
    out = os.fspath(out)
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in EXPORT_FORMATS:
        raise InvalidParameterError(f"{out}: export writes {', '.join(EXPORT_FORMATS)}; "
                                    f"got {suffix or 'no suffix'}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("writing .parquet needs pyarrow: pip install pyarrow "
                                         "(or export to .npz or .csv)") from exc
    if store.spec(fingerprint) is None:
        raise StoreError(f"{store.path}: no group {fingerprint[:16]}")
    blocks = list(store.iter_rows(fingerprint))
    keys = np.concatenate([k for k, _ in blocks]) if blocks else np.empty((0, 32), np.uint8)
    dim = blocks[0][1].shape[1] if blocks else 0
    vectors = (np.concatenate([v for _, v in blocks]) if blocks
               else np.empty((0, dim), np.float32))
    hex_keys = [k.tobytes().hex() for k in keys]
    paths = [list((paths_by_key or {}).get(k.tobytes(), [])) for k in keys]
    folder = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".featx-export-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        if suffix == ".npz":
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, keys=np.array(hex_keys, dtype=str),
                                    paths=np.array([";".join(p) for p in paths], dtype=str),
                                    vectors=vectors, fingerprint=np.array(fingerprint))
        elif suffix == ".csv":
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["key", "paths", *(f"v{j}" for j in range(dim))])
                for key, seen, vector in zip(hex_keys, paths, vectors):
                    writer.writerow([key, ";".join(seen), *(f"{x:.9g}" for x in vector)])
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({"key": hex_keys, "paths": paths,
                              "vector": pa.array(list(vectors), pa.list_(pa.float32()))})
            pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {"rows": len(keys), "dim": int(dim), "with_paths": sum(1 for p in paths if p),
            "path": out}
