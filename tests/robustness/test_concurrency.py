"""Four writer processes append overlapping key sets to one store while a reader
process reads in a loop: no torn or uncommitted row is ever seen, counts never go
down, nothing is stored twice, and nothing is forwarded twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from featx.store import EmbeddingStore

from _results import record
from _workers import FP, key_of, reference

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_workers.py")
WRITERS = 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["exclusive", "put"])
def test_four_writers_and_a_reader(tmp_path, mode):
    per_writer = int(os.environ.get("FEATX_CONCURRENCY_KEYS", "160"))
    step = per_writer // 2  # writer i covers [i*step, i*step + per_writer): half overlaps
    universe = step * (WRITERS - 1) + per_writer
    store_path = str(tmp_path / "shared.h5")
    stop, summary = str(tmp_path / "stop"), str(tmp_path / "reader.json")
    started = time.monotonic()
    reader = subprocess.Popen([sys.executable, WORKER, "reader", store_path, str(universe),
                               stop, summary], stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, WORKER, "writer", store_path, str(i),
                                 str(i * step), str(i * step + per_writer), "8", mode],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(WRITERS)]
    appended = []
    for w in writers:
        out, err = w.communicate(timeout=240)
        assert w.returncode == 0, err[-3000:]
        appended.append(json.loads(out.splitlines()[-1])["appended"])
    open(stop, "w").close()
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    seen = json.load(open(summary))

    assert seen["problems"] == []
    assert seen["reads"] >= 2 and seen["last_count"] == universe
    store = EmbeddingStore(store_path)
    report = store.verify()  # CRCs, finiteness and key uniqueness of every committed row
    assert report["backbones"][0]["rows"] == universe == sum(appended)
    if mode == "exclusive":
        assert store.forwarded(FP) == universe  # check-then-put under the lock: no waste
    else:
        # every offer is counted, each key stored once
        assert store.forwarded(FP) == WRITERS * per_writer
    vecs, found = store.get(FP, [key_of(i) for i in range(universe)])
    assert found.all()
    np.testing.assert_array_equal(vecs, np.stack([reference(i) for i in range(universe)]))
    record(f"concurrency_{mode}", dict(mode=mode, writers=WRITERS, readers=1,
                               keys_per_writer=per_writer, distinct_keys=universe, offered=WRITERS * per_writer,
                               rows=report["backbones"][0]["rows"],
                               appended_per_writer=appended, duplicates=0,
                               forwarded=store.forwarded(FP), reader_reads=seen["reads"],
                               reader_rows_checked=seen["rows_checked"],
                               reader_problems=len(seen["problems"]),
                               seconds=round(time.monotonic() - started, 1)))
