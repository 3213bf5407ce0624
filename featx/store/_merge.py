"""Merging one store file into another (shards of a distributed run, or a colleague's cache)."""

from __future__ import annotations

import os

from featx.errors import StoreError

from . import _layout


def merge_into(store, other, batch: int = 8192) -> dict:
    """Copy every backbone's rows ``store`` lacks from ``other``; see ``EmbeddingStore.merge_from``.

    Every group of ``other`` is checked against ``store`` before any row moves, so an
    incompatible file copies nothing; then rows go in committed blocks of ``batch``,
    so an interrupted merge can be re-run.
    """
    src = other if hasattr(other, "iter_rows") else type(store)(
        other, readonly=True, lock_timeout=store.lock_timeout, verify_reads=store.verify_reads)
    if store.readonly:
        raise StoreError(
            f"{store.path!r} was opened with readonly=True; refusing to merge into it"
        )
    if not src._exists():
        raise StoreError(
            f"cannot merge from {src.path!r}: no such store file (missing or empty)"
        )
    if store._exists() and os.path.samefile(src.path, store.path):
        raise StoreError(f"cannot merge {store.path!r} into itself")
    plan = []
    for fp in src.fingerprints():
        spec = src.spec(fp)
        with src._reading() as f:
            g = _layout.group(f, fp)
            src_dim = src._meta(g)["dim"]
        with store._reading() as f:
            g = _layout.group(f, fp)
            if g is not None:
                store._check_compatible(g, fp, spec if isinstance(spec, dict) else {}, src_dim)
        plan.append((fp, spec if isinstance(spec, dict) else {}))
    counts: dict[str, int] = {}
    for fp, spec in plan:
        n = 0
        for keys, vectors in src.iter_rows(fp, batch=batch):
            n += store.put(fp, keys, vectors, spec=spec)
        counts[fp] = n
        if n:
            # Carry the shard's forward audit over (once: a re-merge appends nothing), so
            # forwarded() == count() still proves "each image forwarded once" after a merge.
            store._add_forwarded(fp, src.forwarded(fp))
    # Where the shard's images were read (format 2): similar() and the audit answer with it.
    known = src.paths_of_all()
    if known:
        store.remember_paths(list(known), list(known.values()))
    return counts
