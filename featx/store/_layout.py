"""The file layout of a store, written down once: open, create, read rows, append rows.

The schema table :func:`group_datasets` is the one place that says which datasets a
backbone group holds; creating a group, appending to it and ``verify`` all read it.
These functions take an open ``h5py`` file or group and the store's path (for messages);
locking and the commit order around them belong to :class:`~featx.store.EmbeddingStore`.
"""

from __future__ import annotations

import json
import os
import uuid

import h5py
import numpy as np

from featx.errors import StoreError

from ._sources import create_sources
from ._format import (_GAP_BYTES, _METADATA_SLACK, _RDCC_BYTES, _READ_BLOCK_BYTES, _ROOT,
                      KEY_BYTES, STORE_VERSION, _chunk_rows, _featx_version, _grown_capacity,
                      _now_iso, _round_up, _row_crcs, _runs)


def group_datasets(dim: int, dtype: str) -> tuple:
    """``(name, row shape, dtype)`` of each dataset of a backbone group: the schema."""
    return (
        ("keys", (KEY_BYTES,), np.dtype(np.uint8)),
        ("vectors", (dim,), np.dtype(dtype)),
        ("crc", (), np.dtype(np.uint32)),
    )


def open_file(path: str, mode: str) -> h5py.File:
    """The store file opened in ``mode``, its format version checked."""
    try:
        f = h5py.File(path, mode, locking=False, rdcc_nbytes=_RDCC_BYTES)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot open {path!r} as an HDF5 embedding store: {exc}") from exc
    try:
        check_version(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_version(f: h5py.File, path: str) -> int:
    """The file's ``featx_store_version``; raises if absent, malformed or too new."""
    try:
        v = f.attrs.get("featx_store_version", None)
    except Exception as exc:  # damaged attribute storage
        raise StoreError(f"{path!r}: cannot read the store attributes: {exc}") from exc
    if v is None:
        raise StoreError(
            f"{path!r} is an HDF5 file but not a featx embedding store "
            "(it has no 'featx_store_version' attribute)"
        )
    try:
        v = int(np.asarray(v).item())
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path!r}: featx_store_version is not an integer: {v!r}") from exc
    if v > STORE_VERSION:
        raise StoreError(
            f"{path!r} was written by a newer featx (format {v}), this featx reads "
            f"≤ {STORE_VERSION}; upgrade featx to read it"
        )
    if v < 1:
        raise StoreError(f"{path!r}: invalid featx_store_version {v}")
    return v


def migrate(f: h5py.File) -> None:
    """Bring a file open for writing to the current format (a no-op when it is).

    Format 1 -> 2 adds the empty ``/sources`` path table; nothing else changed, so
    the file stays readable by this featx throughout and the upgrade is one flush.
    """
    if int(np.asarray(f.attrs["featx_store_version"]).item()) >= STORE_VERSION:
        return
    create_sources(f)
    f.attrs.modify("featx_store_version", np.int64(STORE_VERSION))
    f.flush()


def create_file(path: str) -> None:
    """An empty store file, created atomically (readers see no file or a complete one)."""
    real = os.path.realpath(path)  # through a link: create the target, keep the link
    tmp = f"{real}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with h5py.File(tmp, "w-", locking=False) as f:
            f.attrs["featx_store_version"] = np.int64(STORE_VERSION)
            f.attrs["featx_version"] = _featx_version()
            f.create_group(_ROOT)
            create_sources(f)
        os.replace(tmp, real)
    except OSError as exc:
        raise StoreError(f"cannot create the store file {path!r}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def group(f: h5py.File | None, fp: str) -> h5py.Group | None:
    """The group of fingerprint ``fp``, or None."""
    if f is None:
        return None
    g = f.get(f"{_ROOT}/{fp}")  # one path lookup: this runs on every read
    return g if isinstance(g, h5py.Group) else None


def read_meta(g: h5py.Group, path: str, known: dict | None = None) -> dict:
    """``dim, dtype, committed, token (uid, created), spec`` of a group.

    ``known``: this group's meta as read before. Only ``dim``, ``dtype`` and ``spec``
    are fixed for a token (a re-created group gets a new one), so when the token is
    unchanged they are taken from it and only the token and ``committed`` are read:
    h5py takes ~50 µs per attribute, which the engine's all-cached path pays per call.
    """
    a = g.attrs
    try:
        token = (str(a.get("uid", "")), str(a.get("created", "")))
        committed = int(a["committed"])
        if known is not None and known["token"] == token:
            return dict(known, committed=committed)
        return {
            "dim": int(a["dim"]),
            "dtype": str(a["dtype"]),
            "committed": committed,
            "token": token,
            "spec": str(a["spec"]),
        }
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise StoreError(f"{path!r}: group {g.name} is damaged (attributes: {exc})") from exc


def read_spec(meta: dict, fp: str, path: str):
    """The group's backbone spec, parsed from its JSON attribute."""
    try:
        return json.loads(meta["spec"])
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path!r}: the spec of group {fp} is not valid JSON: {exc}") from exc


def create_group(f: h5py.File, fp: str, spec_json: str, dim: int, need: int,
                 dtype: str) -> h5py.Group:
    """A new, empty group for ``need`` rows, its datasets allocated up front."""
    root = f.require_group(_ROOT)
    row_bytes = dim * np.dtype(dtype).itemsize
    chunk = _chunk_rows(row_bytes)
    cap = _round_up(max(need, chunk), chunk)
    g = root.create_group(fp)
    for name, shape, ds_dtype in group_datasets(dim, dtype):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # chunks allocated at create/resize
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # no fill writes; rows ≥ committed are garbage
        g.create_dataset(name, shape=(cap, *shape), maxshape=(None, *shape),
                         chunks=(chunk, *shape), dtype=ds_dtype, dcpl=dcpl)
    g.attrs["spec"] = spec_json
    g.attrs["dim"] = np.int64(dim)
    g.attrs["dtype"] = dtype
    g.attrs["committed"] = np.int64(0)
    g.attrs["created"] = _now_iso()
    g.attrs["uid"] = uuid.uuid4().hex
    f.flush()
    return g


def append_rows(f: h5py.File, g: h5py.Group, meta: dict, keys: np.ndarray,
                stored: np.ndarray, path: str) -> int:
    """Write rows after ``committed``, flush, then advance ``committed``: the commit protocol."""
    m = len(keys)
    c = meta["committed"]
    kds, vds, cds = g["keys"], g["vectors"], g["crc"]
    cap = min(kds.shape[0], vds.shape[0], cds.shape[0])
    if c > cap:
        raise StoreError(f"{path!r}: group {g.name} claims {c} committed rows but only {cap} "
                         "are allocated")
    row_bytes = stored.shape[1] * stored.dtype.itemsize
    if c + m > cap:
        new_cap = _grown_capacity(cap, c + m, vds.chunks[0], row_bytes)
        for ds in (kds, vds, cds):
            ds.resize(new_cap, axis=0)
        f.flush()
    check_free_space(path, m, row_bytes, vds.chunks[0], c)
    crc = _row_crcs(keys, stored)
    kds[c:c + m] = keys
    vds[c:c + m] = stored
    cds[c:c + m] = crc
    f.flush()  # rows are durable before they are committed
    g.attrs.modify("committed", np.int64(c + m))  # in place: no attribute delete/recreate
    f.flush()
    return m


def check_free_space(path: str, rows: int, row_bytes: int, chunk_rows: int,
                     committed: int) -> None:
    """Refuse a write the file system cannot hold, before HDF5 starts it.

    HDF5 does not recover from ENOSPC in the middle of a flush: it raised twice,
    then crashed the interpreter at exit (tests/robustness/test_failure_paths.py).
    Needed: the rows, with keys and CRCs, plus a partly filled chunk at each end
    and room for metadata.
    """
    need = (rows + 2 * chunk_rows) * (row_bytes + KEY_BYTES + 4) + _METADATA_SLACK
    folder = os.path.dirname(os.path.realpath(path)) or "."
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # cannot tell; the write itself will say
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise StoreError(
            f"no space left on {folder!r} for {rows} new vectors (about "
            f"{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free); "
            f"{committed} vectors committed in {path!r} stay intact")


def read_rows(g: h5py.Group, fp: str, meta: dict, rows: np.ndarray, verify: bool,
              path: str, index=None) -> np.ndarray:
    """float32 vectors of sorted unique committed ``rows``, CRC-checked if ``verify``.

    With ``index`` (the group's :class:`~featx.store._index._KeyIndex`), rows it
    has seen verified are not checked again, and rows verified here are marked.
    """
    dim = meta["dim"]
    vds = g["vectors"]
    kds = cds = None  # opened only if a row needs its checksum verified
    row_bytes = dim * vds.dtype.itemsize
    out = np.empty((len(rows), dim), np.float32)
    gap = max(1, _GAP_BYTES // row_bytes)
    max_rows = max(1, _READ_BLOCK_BYTES // row_bytes)
    bad: list[int] = []
    unchecked = index.unchecked(rows) if (verify and index is not None) else None
    for lo, hi, i0, i1 in _runs(rows, gap, max_rows):
        sel = None if (i1 - i0) == (hi - lo) else rows[i0:i1] - lo
        block = vds[lo:hi]
        if sel is not None:
            block = block[sel]
        if verify and (unchecked is None or unchecked[i0:i1].any()):
            if kds is None:
                kds, cds = g["keys"], g["crc"]
            kb = kds[lo:hi]
            cb = cds[lo:hi]
            if sel is not None:
                kb, cb = kb[sel], cb[sel]
            mismatch = np.flatnonzero(_row_crcs(kb, block) != cb)
            if len(mismatch):
                bad.extend(rows[i0:i1][mismatch][:5].tolist())
            elif index is not None:
                index.checked[rows[i0:i1]] = True
        out[i0:i1] = block
    if bad:
        raise StoreError(
            f"{path!r}: checksum mismatch in committed rows of backbone {fp} "
            f"(rows {bad[:5]}): the file is damaged; run verify(), then restore it or "
            "delete the group and re-embed"
        )
    return out
