"""Child processes of the crash and concurrency tests (run as ``python _workers.py MODE ...``).

* ``embed STORE LIST PROGRESS BATCH SLEEP``: embed the files listed in LIST with the CI
  backbone into STORE. After each forward pass (before its ``put``) the number of rows
  forwarded is appended to PROGRESS, so a parent that SIGKILLs this process knows how
  much forward work was done. ``READY`` is printed once the model is built and traced.
* ``writer STORE SEED LO HI BATCH [MODE]``: put keys ``LO..HI`` (shuffled by SEED) with
  their reference vectors; MODE ``exclusive`` (default) the engine's way (under
  ``exclusive()``: look up, put the missing), ``put`` with bare ``put`` calls.
* ``reader STORE UNIVERSE STOP OUT``: read in a loop until the file STOP exists; every
  row seen must equal its reference vector, the count must never decrease. Writes a
  JSON summary to OUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

FP = hashlib.sha256(b"featx robustness concurrency").hexdigest()
SPEC = {"name": "reference", "dim": 24}
DIM = 24


def key_of(i: int) -> bytes:
    return hashlib.sha256(f"image-{i}".encode()).digest()


def reference(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def _embed(store_path, list_path, progress_path, batch, sleep):
    import featx
    from featx.engine import Embedder

    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    paths = open(list_path, encoding="utf-8").read().splitlines()
    fd = os.open(progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    real = Embedder._forward_batch

    def forward_and_log(self, pixels):
        time.sleep(sleep)  # a slower model: lets the parent's kill land mid-forward
        out = real(self, pixels)
        os.write(fd, f"{len(pixels)}\n".encode())  # O_APPEND: one atomic line
        return out

    Embedder._forward_batch = forward_and_log
    emb = Embedder(bb, store=store_path, batch_size=batch, progress=False)
    real(emb, np.zeros((1, 32, 32, 3), np.float32))  # trace before READY
    print("READY", flush=True)
    emb.embed(paths)
    print(json.dumps({k: emb.stats[k] for k in ("images", "cache_hits", "forwarded")}),
          flush=True)


def _writer(store_path, seed, lo, hi, batch, mode="exclusive"):
    from featx.store import EmbeddingStore

    store = EmbeddingStore(store_path, lock_timeout=120)
    ids = np.random.default_rng(seed).permutation(np.arange(lo, hi))
    appended = 0
    for s in range(0, len(ids), batch):
        part = ids[s:s + batch].tolist()
        keys = [key_of(i) for i in part]
        if mode == "put":  # no check-then-put: put() alone must still store each key once
            appended += store.put(FP, keys, np.stack([reference(i) for i in part]), spec=SPEC,
                                  forwarded=len(keys))
            time.sleep(0.002)  # pacing only: lets the other writers interleave
            continue
        with store.exclusive():
            missing = [j for j, row in enumerate(store.lookup(FP, keys)) if row < 0]
            if missing:
                vecs = np.stack([reference(part[j]) for j in missing])
                appended += store.put(FP, [keys[j] for j in missing], vecs, spec=SPEC,
                                      forwarded=len(missing))
        time.sleep(0.002)  # pacing only: lets the other writers interleave
    print(json.dumps({"appended": appended}), flush=True)


def _reader(store_path, universe, stop_path, out_path):
    from featx.store import EmbeddingStore

    store = EmbeddingStore(store_path, lock_timeout=120)
    n = int(universe)
    keys = [key_of(i) for i in range(n)]
    refs = np.stack([reference(i) for i in range(n)])
    last_count = last_found = 0
    reads = rows_checked = 0
    problems = []
    while True:
        stopping = os.path.exists(stop_path)
        count = store.count(FP)
        if count < last_count:
            problems.append(f"count went down: {last_count} -> {count}")
        last_count = max(last_count, count)
        vecs, found = store.get(FP, keys)
        reads += 1
        nf = int(found.sum())
        if nf < last_found:
            problems.append(f"found went down: {last_found} -> {nf}")
        last_found = max(last_found, nf)
        if found.any():
            seen = vecs[found]
            if not np.isfinite(seen).all():
                problems.append("a row seen is not finite")
            wrong = np.flatnonzero(~(seen == refs[found]).all(axis=1))
            if len(wrong):
                problems.append(f"{len(wrong)} rows differ from their reference vector")
            rows_checked += nf
        if stopping:
            break
    with open(out_path, "w") as fh:
        json.dump({"reads": reads, "rows_checked": rows_checked, "last_count": last_count,
                   "problems": problems[:20]}, fh)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "embed":
        _embed(args[0], args[1], args[2], int(args[3]), float(args[4]))
    elif mode == "writer":
        _writer(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), *args[5:])
    elif mode == "reader":
        _reader(*args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
