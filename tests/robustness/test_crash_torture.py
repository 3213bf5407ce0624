"""SIGKILL an extraction at random points, resume, and audit the store.

A child process embeds N images into a store; the parent kills it with SIGKILL
after a seeded random delay past its ``READY``, checks the store, and starts
the next child, which resumes. After the last kill a child runs to the end.
The store must then verify, hold every image exactly once, and the forward
work done in total (children's progress log) must be the number of images plus
at most one batch per kill; the store's own audit counter (``forwarded``,
advanced after each commit) lags the committed rows by at most one batch per kill.

``test_crash_resume_ci`` runs 4 kills; ``test_crash_resume_torture`` (slow) runs
``FEATX_TORTURE_KILLS`` (default 20) — ``make torture``.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import featx
from featx.store import EmbeddingStore

from _results import record

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_workers.py")
BATCH = 4
SLEEP = 0.04  # seconds per forward batch in the child: ~100 img/s


def _images(folder, n, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"{i:04d}.png")
        Image.fromarray(rng.randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def _start(store, listing, progress):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, WORKER, "embed", store, listing, progress,
                             str(BATCH), str(SLEEP)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_ready(proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == "READY":
                return
            if line == "":
                break
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child never became READY: {proc.stderr.read()[-3000:]}")


def _run(tmp_path, kills, seed=0):
    n_images = max(96, 28 * kills)
    paths = _images(str(tmp_path / "imgs"), n_images, seed)
    listing = str(tmp_path / "list.txt")
    with open(listing, "w", encoding="utf-8") as fh:
        fh.write("\n".join(paths))
    store_path = str(tmp_path / "emb.h5")
    progress = str(tmp_path / "progress.log")
    fp = featx.get_backbone("mobilenet_v2", weights=None, input_size=32).fingerprint
    rng = np.random.RandomState(seed)
    counts, landed_mid_run = [], 0
    started = time.monotonic()
    for _ in range(kills):
        proc = _start(store_path, listing, progress)
        _wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.6))  # a seeded random moment for the kill to land
        if proc.poll() is None:
            landed_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        store = EmbeddingStore(store_path)
        if os.path.exists(store_path) and os.path.getsize(store_path):
            store.verify()  # every kill leaves a store that verifies
        counts.append(store.count(fp))
        assert counts == sorted(counts), f"committed rows went down: {counts}"
    proc = _start(store_path, listing, progress)
    _wait_ready(proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

    store = EmbeddingStore(store_path)
    report = store.verify()
    assert report["backbones"][0]["rows"] == n_images
    stored = {bytes(k) for keys, _ in store.iter_rows(fp) for k in keys}
    expected = {hashlib.sha256(open(p, "rb").read()).digest() for p in paths}
    assert stored == expected  # every image exactly once (verify() also rules out duplicates)
    with open(progress) as fh:
        forwarded_by_children = sum(int(line) for line in fh if line.strip())
    audit = store.forwarded(fp)
    slack = kills * BATCH
    assert n_images <= forwarded_by_children <= n_images + slack, (forwarded_by_children,)
    assert n_images - slack <= audit <= n_images, (audit,)
    result = dict(kills=kills, kills_mid_run=landed_mid_run, images=n_images, batch=BATCH,
                  rows=report["backbones"][0]["rows"], duplicates=0,
                  forwarded_by_children=forwarded_by_children,
                  wasted_forwards=forwarded_by_children - n_images, audit_counter=audit,
                  rows_after_each_kill=counts, seconds=round(time.monotonic() - started, 1))
    record(f"crash_{kills}", result)
    return result


# 4 SIGKILLs (~40 s): make test-all and make torture (20 kills) run it; the default run
# keeps tests/test_engine.py's kill-and-resume test of the same property.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crash_resume_ci(tmp_path):
    result = _run(tmp_path, kills=4)
    assert result["kills_mid_run"] >= 1


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_crash_resume_torture(tmp_path):
    kills = int(os.environ.get("FEATX_TORTURE_KILLS", "20"))
    result = _run(tmp_path, kills=kills, seed=1)
    assert result["kills_mid_run"] >= kills // 2
