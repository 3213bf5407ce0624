"""The one decode pool (featx.engine.DecodePool): same pixels in threads and processes,
errors as results, and the engine's failure rules for worker processes — a crash fails
one image, close() is bounded, Ctrl-C reaches the parent only, no orphan survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import featx
from featx.engine import DecodePool, Embedder
from featx.errors import FeatxError, ImageDecodeError
from featx.images import decode_image

from _imagegen import make_jpegs

SIZE = (24, 24)
CHILD_TIMEOUT_S = 120


def _interruptible() -> None:
    """In a child before exec: the default SIGINT disposition, as under a terminal
    (pytest-xdist workers ignore SIGINT, and exec keeps an ignored signal ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, timeout_s=20.0) -> list:
    """Pids still alive after ``timeout_s`` (empty when all have exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)  # polling a process table; no order depends on it
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    paths = make_jpegs(folder, 9, size=(50, 37))
    with open(paths[0], "rb") as f:
        data = f.read()
    array = np.random.RandomState(3).randint(0, 255, (31, 17, 3)).astype(np.uint8)
    return [*paths, data, array, featx.images.Source(array=array, index=4)]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_pixels_equal_decode_image_in_input_order(inputs, kind):
    with DecodePool(SIZE, policy="crop", workers=2, kind=kind) as pool:
        results = list(pool.map(inputs))
    assert len(results) == len(inputs)
    for source, result in zip(inputs, results):
        assert result.error is None
        expected = decode_image(source, SIZE, policy="crop")
        np.testing.assert_array_equal(result.pixels, expected)
        assert result.seconds >= 0


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_bad_image_is_an_error_result_naming_it_and_the_rest_decode(inputs, kind, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with DecodePool(SIZE, workers=2, kind=kind) as pool:
        results = list(pool.map([inputs[0], str(bad), inputs[1]]))
    assert results[0].error is None and results[2].error is None
    assert isinstance(results[1].error, ImageDecodeError)
    assert "broken.jpg" in str(results[1].error)


class _KillsTheWorker:
    """Unpickling this in a worker process ends it at once, as a crash in a codec would."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_a_worker_that_dies_fails_only_its_image_and_is_replaced(inputs):
    with DecodePool(SIZE, workers=1, kind="processes") as pool:
        results = list(pool.map([inputs[0], _KillsTheWorker(), inputs[1]],
                                names=["first.jpg", "crasher.jpg", "third.jpg"]))
    assert results[0].error is None and results[2].error is None
    error = results[1].error
    assert isinstance(error, ImageDecodeError)
    assert "crasher.jpg" in str(error) and "decoder process died" in str(error)
    assert "exit code 3" in str(error)


def test_a_crash_inside_a_frame_of_several_images_fails_only_the_crasher(inputs):
    """Workers take several images per frame; a crash must still cost one image."""
    from concurrent.futures import Future

    with DecodePool(SIZE, workers=1, kind="processes") as pool:
        list(pool.map(inputs[:1]))  # the worker pool exists
        decoders = pool._procs
        jobs = [(inputs[0], SIZE, "squash", "first.jpg", None),
                (_KillsTheWorker(), SIZE, "squash", "crasher.jpg", None),
                (inputs[1], SIZE, "squash", "third.jpg", None)]
        frame = [(job, Future()) for job in jobs]
        for _, future in frame:
            future.set_running_or_notify_cancel()
        decoders._run((None, None), frame)  # one frame of three, as a busy queue gives
        results = [future.result(timeout=60) for _, future in frame]
    assert results[0].error is None and results[2].error is None
    np.testing.assert_array_equal(results[2].pixels, decode_image(inputs[1], SIZE))
    assert "crasher.jpg" in str(results[1].error) and "exit code 3" in str(results[1].error)


def test_close_is_bounded_and_ends_every_worker(inputs):
    pool = DecodePool(SIZE, workers=2, kind="processes")
    list(pool.map(inputs[:2]))  # both workers started
    pids = [p.pid for p in pool._procs.procs]
    assert len(pids) == 2
    pending = pool.map(inputs * 50)  # queued work that close() drops
    t = time.monotonic()
    pool.close(wait=False)
    assert time.monotonic() - t < 15  # bounded (generous: a hang would be forever)
    assert _wait_gone(pids) == []
    with pytest.raises(FeatxError, match="closed"):
        list(pending)


def test_a_finished_pool_leaves_its_workers_to_the_next_and_an_aborted_one_ends_them(
        inputs, monkeypatch):
    from featx.engine._decode import IDLE_WORKERS

    IDLE_WORKERS.close()
    try:
        with DecodePool(SIZE, workers=2, kind="processes") as first:
            list(first.map(inputs[:4]))
            pids = sorted(p.pid for p in first._procs.procs)
        assert len(pids) == 2 and _wait_gone(pids, timeout_s=0.5) == pids  # still alive
        # The next pool (a larger size: a larger slot) takes them, no interpreter started.
        bigger = DecodePool((48, 40), workers=2, kind="processes")
        results = list(bigger.map(inputs))
        assert sorted(p.pid for p in bigger._procs.procs) == pids
        for source, result in zip(inputs, results):
            if result.error is None:
                np.testing.assert_array_equal(result.pixels, decode_image(source, (48, 40)))
        bigger.close(wait=False)  # aborted: its workers end instead of waiting
        assert _wait_gone(pids) == [] and IDLE_WORKERS.workers == []
        # Workers started under another environment are not reused (they decode by its rules).
        with DecodePool(SIZE, workers=1, kind="processes") as pool:
            list(pool.map(inputs[:1]))
            kept = [p.pid for p in pool._procs.procs]
        monkeypatch.setenv("FEATX_MAX_IMAGE_BYTES", "123456789")
        with DecodePool(SIZE, workers=1, kind="processes") as pool:
            list(pool.map(inputs[:1]))
            assert [p.pid for p in pool._procs.procs] != kept
    finally:
        IDLE_WORKERS.close()


def test_bad_arguments_are_refused_at_once():
    with pytest.raises(FeatxError, match="decode kind"):
        DecodePool(SIZE, kind="gpu")
    with pytest.raises(FeatxError, match="workers"):
        DecodePool(SIZE, workers=0)
    with pytest.raises(FeatxError, match="pool must be one of"):
        Embedder(featx.get_backbone("mobilenet_v2", weights=None, input_size=32),
                 pool="fibers")


ORPHAN_CHILD = textwrap.dedent("""
    import sys
    from featx.engine import DecodePool
    paths = sys.argv[1:]
    pool = DecodePool((24, 24), workers=2, kind="processes")
    list(pool.map(paths))
    print(" ".join(str(p.pid) for p in pool._procs.procs), flush=True)
    sys.stdin.read()  # wait to be killed
""")


def test_workers_exit_when_their_parent_is_killed(inputs, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), *inputs[:4]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the workers exist (or the child died)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        proc.kill()
        proc.wait(timeout=CHILD_TIMEOUT_S)
        assert _wait_gone(pids) == [], "decode workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_worker_that_cannot_start_fails_the_run_not_the_images(inputs, tmp_path,
                                                                 monkeypatch):
    # A worker that dies before it answers (a broken environment) is no image's fault:
    # the run stops with the reason, even where bad images would be skipped.
    import featx.engine._decode as decode

    monkeypatch.setattr(decode.IDLE_WORKERS, "take", lambda env: None)
    monkeypatch.setattr(decode, "_WORKER_MAIN", "raise SystemExit('no worker today')")
    t = time.monotonic()
    with DecodePool(SIZE, workers=2, kind="processes") as pool:
        with pytest.raises(FeatxError, match="could not start a decode worker process"):
            list(pool.map(inputs[:3]))
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    emb = Embedder(bb, batch_size=4, progress=False, pool="processes", workers=2,
                   on_error="skip")
    with pytest.raises(FeatxError, match="pool='threads'"):
        emb.embed(inputs[:3])
    assert time.monotonic() - t < 60


def _embed_with_worker_processes(paths):
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    emb = Embedder(bb, batch_size=4, progress=False, pool="processes", workers=2)
    return emb.embed(paths), emb.stats["pool"]


def test_worker_processes_start_from_a_process_made_by_spawn(inputs):
    # The pool starts interpreters itself (no multiprocessing), so a process started
    # with the spawn method (no fork, a fresh __main__) runs one like any other.
    import concurrent.futures
    import multiprocessing

    paths = inputs[:6]
    expected, _ = _embed_with_worker_processes(paths)
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as child:
        X, pool = child.submit(_embed_with_worker_processes, paths).result(
            timeout=CHILD_TIMEOUT_S)
    assert pool == "processes"
    np.testing.assert_allclose(X, expected, atol=1e-6)


DECOY_CHILD = textwrap.dedent("""
    import sys
    from featx.engine import DecodePool
    with DecodePool((24, 24), workers=1, kind="processes") as pool:
        errors = [r.error for r in pool.map(sys.argv[1:])]
    print("ERRORS", errors, flush=True)
""")


def test_workers_import_the_parents_featx_not_one_in_the_working_folder(inputs, tmp_path):
    # `python -m` would import a featx folder in the working directory (another
    # checkout, an older version) into the worker, whatever the parent runs.
    decoy = tmp_path / "elsewhere" / "featx"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('a decoy featx was imported')\n")
    script = tmp_path / "parent.py"
    script.write_text(DECOY_CHILD)
    done = subprocess.run([sys.executable, str(script), *inputs[:2]], cwd=decoy.parent,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "ERRORS [None, None]" in done.stdout, done.stdout + done.stderr


CTRL_C_CHILD = textwrap.dedent("""
    import sys, time
    import featx
    from featx.engine import Embedder
    from featx.errors import EmbedInterrupted
    paths = open(sys.argv[1]).read().split()
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    emb = Embedder(bb, batch_size=4, progress=False, pool="processes", workers=2)
    import featx.engine._decode as decode
    original = decode._ProcessDecoders._start
    def start(self):  # tells the parent each worker's pid
        proc, slot = original(self)
        print("WORKER", proc.pid, flush=True)
        return proc, slot
    decode._ProcessDecoders._start = start
    def forward(self, pixels):  # the first forward tells the parent to press Ctrl-C
        print("FORWARD", flush=True)
        time.sleep(60)  # a long forward pass; the parent's Ctrl-C interrupts it
        raise SystemExit("no Ctrl-C arrived")
    Embedder._forward_batch = forward
    try:
        emb.embed(paths)
    except EmbedInterrupted as exc:
        print("INTERRUPTED", exc, flush=True)
        sys.exit(130)
    print("FINISHED", flush=True)
""")


def test_ctrl_c_reaches_the_parent_and_ends_the_workers(tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 400, size=(64, 48))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths))
    script = tmp_path / "child.py"
    script.write_text(CTRL_C_CHILD)
    # Its own process group, as a terminal's foreground job: Ctrl-C goes to every member.
    proc = subprocess.Popen([sys.executable, str(script), str(listing)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_interruptible)
    pids = []
    try:
        for line in proc.stdout:
            if line.startswith("WORKER"):
                pids.append(int(line.split()[1]))
            if line.startswith("FORWARD"):
                break
        assert pids, "no decode worker started"
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=CHILD_TIMEOUT_S)[0]
        assert proc.returncode == 130, rest
        assert "INTERRUPTED interrupted;" in rest
        assert _wait_gone(pids) == []
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("slot_bytes", [None, 2500, 1], ids=["all-fit", "some-fit", "none-fit"])
def test_encoded_bytes_reach_workers_through_their_slot_frames_sized_to_fit(
        inputs, tmp_path, monkeypatch, slot_bytes):
    # Encoded images are copied into the worker's shared slot; a frame takes no more
    # bytes than it holds, and an image too large for it is piped instead.
    import featx.engine._decode as decode

    if slot_bytes is not None:
        monkeypatch.setattr(decode, "INPUT_SLOT_BYTES", slot_bytes)
    blobs = [open(p, "rb").read() for p in inputs[:9]]
    assert 1 < max(len(b) for b in blobs) < 2500 < sum(len(b) for b in blobs)
    frames = []
    original = decode._inputs_to_slot

    def spy(jobs, slot, start):
        sent = original(jobs, slot, start)
        frames.append([s[0] if isinstance(s, tuple) else "piped" for s, *_ in sent])
        return sent

    monkeypatch.setattr(decode, "_inputs_to_slot", spy)
    with DecodePool(SIZE, workers=1, kind="processes") as pool:
        results = list(pool.map(blobs * 3, names=[f"b{i}" for i in range(27)]))
    for blob, result in zip(blobs * 3, results):
        assert result.error is None
        np.testing.assert_array_equal(result.pixels, decode_image(blob, SIZE))
    sent = [how for frame in frames for how in frame]
    assert len(sent) == 27
    if slot_bytes is None:
        assert set(sent) == {"slot"} and max(map(len, frames)) > 1
    elif slot_bytes == 2500:  # a frame stops before the image that would overfill it
        assert set(sent) == {"slot"} and max(map(len, frames)) < 3
    else:
        assert set(sent) == {"piped"} and set(map(len, frames)) == {1}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see a file's folder")
def test_a_full_shared_memory_folder_moves_the_slot_to_the_temporary_folder(
        inputs, monkeypatch):
    # Writing through a mapping into a full tmpfs is a SIGBUS, not an error: the slot's
    # pages are reserved up front, and where /dev/shm has no room it goes elsewhere.
    import errno
    import tempfile

    import featx.engine._decode as decode

    reserve, folders = os.posix_fallocate, []

    def no_room_in_shm(fd, offset, length):
        folders.append(os.path.dirname(os.readlink(f"/proc/self/fd/{fd}")))
        if folders[-1] == "/dev/shm":
            raise OSError(errno.ENOSPC, "No space left on device")
        return reserve(fd, offset, length)

    monkeypatch.setattr(decode.IDLE_WORKERS, "take", lambda env: None)  # a new slot
    monkeypatch.setattr(os, "posix_fallocate", no_room_in_shm)
    with DecodePool(SIZE, workers=1, kind="processes") as pool:
        result = pool.result(pool.submit(inputs[0]))
    np.testing.assert_array_equal(result.pixels, decode_image(inputs[0], SIZE))
    assert folders[-1] == os.path.realpath(tempfile.gettempdir())
    if os.access("/dev/shm", os.W_OK):
        assert folders[0] == "/dev/shm"


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_file_decoded_by_path_must_still_have_the_content_that_was_keyed(inputs, kind,
                                                                           tmp_path):
    # A worker process re-reads large files instead of receiving their bytes: the
    # key the engine computed travels with the job, and a file that changed since
    # is refused rather than decoded under the old key.
    path = tmp_path / "moving.jpg"
    path.write_bytes(open(inputs[0], "rb").read())
    key = featx.images.source_key(str(path))
    with DecodePool(SIZE, workers=1, kind=kind) as pool:
        same = pool.result(pool.submit(str(path), "moving.jpg", key=key))
        path.write_bytes(open(inputs[1], "rb").read())
        changed = pool.result(pool.submit(str(path), "moving.jpg", key=key))
        with pytest.raises(featx.errors.InvalidParameterError, match="file sources"):
            pool.submit(inputs[-2], key=key)  # an array has no file to re-read
    np.testing.assert_array_equal(same.pixels, decode_image(inputs[0], SIZE))
    assert changed.pixels is None and isinstance(changed.error, ImageDecodeError)
    assert "moving.jpg" in str(changed.error) and "changed while" in str(changed.error)


@pytest.mark.parametrize("slot_bytes", [None, 0], ids=["bytes-in-slot", "files-reread"])
def test_threads_and_processes_give_the_same_vectors_order_failures_and_counts(
        tmp_path, monkeypatch, slot_bytes):
    if slot_bytes is not None:  # every file re-read by its worker, not only large ones
        monkeypatch.setattr(featx.engine._decode, "INPUT_SLOT_BYTES", slot_bytes)
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    paths = make_jpegs(tmp_path / "imgs", 12, size=(50, 37))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    sources = paths[6:] + [str(broken)] + paths[:6] + [paths[0], str(tmp_path / "gone.jpg")]
    runs = {}
    for kind in ("threads", "processes"):
        featx.engine.clear_memo()
        emb = Embedder(bb, batch_size=4, progress=False, pool=kind, workers=2, on_error="skip")
        X = emb.embed(sources)
        runs[kind] = (X, [(f.index, f.source) for f in emb.failures_], emb.stats)
    (X_t, fail_t, stats_t), (X_p, fail_p, stats_p) = runs["threads"], runs["processes"]
    np.testing.assert_array_equal(X_p, X_t)  # NaN rows in the same places too
    assert fail_p == fail_t and [i for i, _ in fail_t] == [6, 14]
    for counter in ("images", "unique", "cache_hits", "forwarded", "failed"):
        assert stats_p[counter] == stats_t[counter], counter
    assert (stats_t["pool"], stats_p["pool"]) == ("threads", "processes")
    assert stats_t["forwarded"] == 12


def test_auto_pool_takes_threads_for_a_small_job_on_few_cores(tmp_path):
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    emb = Embedder(bb, batch_size=4, progress=False, workers=2)
    emb.embed(make_jpegs(tmp_path / "imgs", 3, size=(40, 30)))
    assert emb.pool == "auto" and emb.stats["pool"] == "threads"
