"""fsck and summary of a store file: the bodies of ``EmbeddingStore.verify`` and ``info``."""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from featx.errors import StoreError

from . import _layout
from ._sources import SOURCES, verify_sources
from ._format import _FP_RE, _READ_BLOCK_BYTES, _ROOT, _VOID, SUPPORTED_DTYPES, _row_crcs, _void


def verify_group(root: h5py.Group, name: str, problems: list[str]) -> dict | None:
    """Check one backbone group of a store file; append what is wrong to ``problems``.

    Returns the group's summary for :meth:`EmbeddingStore.verify`, or None when the
    group is too damaged to summarise. Reads every committed row, in blocks.
    """
    where = f"group {name}"
    if not _FP_RE.match(name):
        problems.append(f"{where}: name is not a 64-hex fingerprint")
    g = root[name]
    if not isinstance(g, h5py.Group):
        problems.append(f"{where}: is not a group")
        return None
    a = g.attrs
    missing = [k for k in ("spec", "dim", "dtype", "committed") if k not in a]
    if missing:
        problems.append(f"{where}: missing attributes {missing}")
        return None
    spec = None
    try:
        spec = json.loads(str(a["spec"]))
        if not isinstance(spec, dict):
            problems.append(f"{where}: spec is not a JSON object")
    except json.JSONDecodeError as exc:
        problems.append(f"{where}: spec is not valid JSON ({exc})")
    dim, dtype, committed = int(a["dim"]), str(a["dtype"]), int(a["committed"])
    # Robustness fix (tests/robustness): a spec that names another fingerprint or
    # width than its group holds is a foreign or hand-edited group; report it.
    if isinstance(spec, dict):
        if "fingerprint" in spec and spec["fingerprint"] != name:
            problems.append(
                f"{where}: its spec names fingerprint {spec['fingerprint']!r}; the group "
                "holds vectors of another backbone than its spec says"
            )
        if "dim" in spec and spec["dim"] != dim:
            problems.append(f"{where}: spec says dim {spec['dim']!r}, the group stores {dim}")
    if dtype not in SUPPORTED_DTYPES:
        problems.append(f"{where}: dtype attribute {dtype!r} is not one of {SUPPORTED_DTYPES}")
        return None
    dsets = {}
    for dname, want_tail, want_dtype in _layout.group_datasets(dim, dtype):
        ds = g.get(dname)
        if not isinstance(ds, h5py.Dataset):
            problems.append(f"{where}: dataset {dname!r} missing")
            continue
        if ds.dtype != want_dtype or ds.shape[1:] != want_tail:
            problems.append(
                f"{where}/{dname}: expected dtype {want_dtype} and rows of shape {want_tail}, "
                f"found {ds.dtype} {ds.shape}"
            )
            continue
        dsets[dname] = ds
    if len(dsets) < 3:
        return None
    lengths = {k: d.shape[0] for k, d in dsets.items()}
    allocated = min(lengths.values())
    if len(set(lengths.values())) != 1:
        problems.append(f"{where}: datasets have different allocated lengths {lengths}")
    if committed < 0 or committed > allocated:
        problems.append(
            f"{where}: committed = {committed} but only {allocated} rows are allocated"
        )
        return None
    # committed rows, in blocks: finite vectors, matching CRCs; collect keys for uniqueness
    row_bytes = dim * np.dtype(dtype).itemsize
    block = max(1, _READ_BLOCK_BYTES // max(1, row_bytes))
    all_keys = np.empty(committed, _VOID)
    nonfinite = bad_crc = 0
    first_nonfinite = first_bad_crc = None
    for lo in range(0, committed, block):
        hi = min(committed, lo + block)
        k, v, c = dsets["keys"][lo:hi], dsets["vectors"][lo:hi], dsets["crc"][lo:hi]
        all_keys[lo:hi] = _void(k)
        nf = np.flatnonzero(~np.isfinite(v).all(axis=1))
        if len(nf):
            nonfinite += len(nf)
            first_nonfinite = (
                first_nonfinite if first_nonfinite is not None else lo + int(nf[0])
            )
        bc = np.flatnonzero(_row_crcs(k, v) != c)
        if len(bc):
            bad_crc += len(bc)
            first_bad_crc = first_bad_crc if first_bad_crc is not None else lo + int(bc[0])
    if nonfinite:
        problems.append(
            f"{where}: {nonfinite} committed rows hold NaN or inf (first row {first_nonfinite})"
        )
    if bad_crc:
        problems.append(
            f"{where}: {bad_crc} committed rows fail their checksum (first row {first_bad_crc})"
        )
    if committed > 1:
        s = np.sort(all_keys)
        dup = int(np.count_nonzero(s[1:] == s[:-1]))
        if dup:
            problems.append(
                f"{where}: {dup} duplicate keys among the {committed} committed rows"
            )
    return {
        "fingerprint": name,
        "name": spec.get("name") if isinstance(spec, dict) else None,
        "dim": dim,
        "dtype": dtype,
        "rows": committed,
        "allocated": allocated,
        "bytes": int(sum(d.id.get_storage_size() for d in dsets.values())),
    }


def store_info(store) -> dict:
    """The summary ``EmbeddingStore.info`` returns (one shared-lock read)."""
    out: dict[str, Any] = {
        "path": store.path,
        "exists": False,
        "size_bytes": 0,
        "store_version": None,
        "featx_version": None,
        "backbones": [],
    }
    with store._reading() as f:
        if f is None:
            return out
        out["exists"] = True
        out["size_bytes"] = os.path.getsize(store.path)
        out["store_version"] = int(np.asarray(f.attrs["featx_store_version"]).item())
        fv = f.attrs.get("featx_version")
        out["featx_version"] = None if fv is None else str(fv)
        table = f.get(SOURCES)
        out["paths"] = int(table.attrs.get("committed", 0)) if table is not None else 0
        root = f.get(_ROOT)
        for fp in sorted(root.keys()) if root is not None else []:
            g = _layout.group(f, fp)
            if g is None:
                continue
            meta = store._meta(g)
            try:
                spec = json.loads(meta["spec"])
            except json.JSONDecodeError:
                spec = None
            facts = spec if isinstance(spec, dict) else {}
            out["backbones"].append(
                {
                    "fingerprint": fp,
                    "name": facts.get("name"),
                    # What tells two groups of one backbone apart.
                    "weights": facts.get("weights_kind"),
                    "input_size": facts.get("input_size"),
                    "pooling": facts.get("pooling"),
                    "compute_dtype": facts.get("dtype"),
                    "resize_policy": facts.get("resize_policy", "squash"),
                    "dim": meta["dim"],
                    "dtype": meta["dtype"],
                    "rows": meta["committed"],
                    "forwarded": int(g.attrs.get("forwarded", 0)),
                    "allocated": int(g["vectors"].shape[0]) if "vectors" in g else 0,
                    "created": meta["token"][1],
                    "spec": spec,
                }
            )
    return out


def verify_store(store) -> dict:
    """Check a whole store file under the shared lock; see ``EmbeddingStore.verify``."""
    if not store._exists():
        raise StoreError(f"{store.path!r}: no store file to verify (missing or empty)")
    problems: list[str] = []
    report: dict[str, Any] = {"path": store.path, "ok": True, "backbones": []}
    with store._mutex, store._lock(exclusive=False):
        f = store._open("r")
        try:
            report["store_version"] = _layout.check_version(f, store.path)
            report["size_bytes"] = os.path.getsize(store.path)
            try:
                root = f.get(_ROOT)
                if not isinstance(root, h5py.Group):
                    problems.append(f"no /{_ROOT} group")
                    names: list[str] = []
                else:
                    names = sorted(root.keys())
                for name in names:
                    try:
                        entry = verify_group(root, name, problems)
                    except StoreError:
                        raise
                    except Exception as exc:  # h5py read errors on damaged metadata/data
                        problems.append(
                            f"group {name}: cannot be read ({type(exc).__name__}: {exc})"
                        )
                        continue
                    if entry is not None:
                        report["backbones"].append(entry)
                report["paths"] = verify_sources(f, problems)
            except StoreError:
                raise
            except Exception as exc:
                problems.append(f"cannot be read ({type(exc).__name__}: {exc})")
        finally:
            f.close()
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; … {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise StoreError(f"{store.path!r} is damaged: {shown}")
    return report
