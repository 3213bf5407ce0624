"""Tests of featx.store.EmbeddingStore: round trips, identity, damage detection, concurrency."""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import pytest

from featx.errors import FingerprintMismatchError, StoreError
from featx.store import STORE_VERSION, EmbeddingStore
from featx.store._format import _void
from featx.store._index import _KeyIndex

try:
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover
    HAVE_HYPOTHESIS = False

FP = "ab" * 32
FP2 = "cd" * 32
SPEC = {"name": "toy", "weights_sha256": "00" * 32, "input_size": 64, "pooling": "avg"}


def rand_keys(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def vectors_for(keys, dim=16):
    """Deterministic vectors from keys, so any process can say what a key's vector must be."""
    keys = np.asarray(keys, np.uint8)
    reps = -(-dim // 32)
    return (np.tile(keys, reps)[:, :dim].astype(np.float32) - 127.5) / 64.0


def group_path(fp=FP):
    return f"backbones/{fp}"


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "emb.h5")


# ----------------------------------------------------------------------------- round trips


def test_round_trip_float32_exact(path):
    keys = rand_keys(50)
    vecs = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    store = EmbeddingStore(path)
    assert store.put(FP, keys, vecs, spec=SPEC) == 50
    order = np.random.default_rng(2).permutation(50)
    absent = rand_keys(3, seed=99)
    query = np.concatenate([keys[order], absent])
    got, found = EmbeddingStore(path).get(FP, query)
    assert got.dtype == np.float32 and got.shape == (53, 16)
    np.testing.assert_array_equal(found, [True] * 50 + [False] * 3)
    np.testing.assert_array_equal(got[:50], vecs[order])
    assert np.isnan(got[50:]).all()
    assert store.count(FP) == 50
    assert store.fingerprints() == [FP]
    assert store.spec(FP) == SPEC


def test_float16_half_size_and_accurate(tmp_path):
    rng = np.random.default_rng(3)
    n, dim = 4000, 1280
    keys = rand_keys(n, seed=4)
    # values over six decades, both signs, within float16 range
    vecs = (rng.standard_normal((n, dim)) * 10.0 ** rng.uniform(-3, 3, (n, 1))).astype(np.float32)
    p32, p16 = str(tmp_path / "f32.h5"), str(tmp_path / "f16.h5")
    EmbeddingStore(p32).put(FP, keys, vecs, spec=SPEC)
    s16 = EmbeddingStore(p16, dtype="float16")
    s16.put(FP, keys, vecs, spec=SPEC)

    ratio = os.path.getsize(p16) / os.path.getsize(p32)
    assert 0.45 < ratio < 0.56, ratio

    # what is on disk is exactly numpy's float16 cast (not h5py's faulty f4 -> f2 conversion)
    with h5py.File(p16, "r") as f:
        raw = f[group_path()]["vectors"][:n]
        assert raw.dtype == np.float16
    np.testing.assert_array_equal(raw, vecs.astype(np.float16))

    got, found = s16.get(FP, keys)
    assert found.all() and got.dtype == np.float32
    rel = np.abs(got - vecs) / np.maximum(np.abs(vecs), 1e-3)
    assert rel.max() <= 1e-3, rel.max()  # float16 keeps 11 significant bits: ≤ 4.9e-4 relative
    assert s16.verify()["backbones"][0]["dtype"] == "float16"


def test_float16_overflow_refused(path):
    store = EmbeddingStore(path, dtype="float16")
    vecs = np.ones((3, 4), np.float32)
    vecs[1, 2] = 1e6
    with pytest.raises(StoreError, match="float16 range"):
        store.put(FP, rand_keys(3), vecs, spec=SPEC)
    assert store.count(FP) == 0


def test_put_is_idempotent_and_dedups_within_call(path):
    store = EmbeddingStore(path)
    keys = rand_keys(20)
    vecs = vectors_for(keys)
    assert store.put(FP, keys, vecs, spec=SPEC) == 20
    assert store.put(FP, keys, vecs + 1, spec=SPEC) == 0
    assert store.count(FP) == 20
    np.testing.assert_array_equal(store.get(FP, keys)[0], vecs)  # first vectors kept

    k2 = rand_keys(5, seed=7)
    dup = np.concatenate([k2, k2[:3]])
    v2 = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    assert store.put(FP, dup, v2, spec=SPEC) == 5
    np.testing.assert_array_equal(store.get(FP, k2)[0], v2[:5])  # first occurrence wins
    assert store.verify()["backbones"][0]["rows"] == 25


def test_overlapping_puts_store_each_key_once(path):
    keys = rand_keys(300)
    a, b = keys[:200], keys[100:]
    s1, s2 = EmbeddingStore(path), EmbeddingStore(path)  # two objects, two index caches
    assert s1.put(FP, a, vectors_for(a), spec=SPEC) == 200
    assert s2.put(FP, b, vectors_for(b), spec=SPEC) == 100
    assert s1.put(FP, keys, vectors_for(keys), spec=SPEC) == 0
    assert s1.count(FP) == 300
    rows = s1.lookup(FP, keys)
    assert sorted(rows.tolist()) == list(range(300))
    s1.verify()


def test_lookup_order_and_absent(path):
    store = EmbeddingStore(path)
    keys = [bytes([i]) * 32 for i in range(5)]
    store.put(FP, keys, np.ones((5, 4), np.float32), spec=SPEC)
    missing = b"\xff" * 32
    q = [keys[3], missing, keys[0], keys[3], keys[4]]
    np.testing.assert_array_equal(store.lookup(FP, q), [3, -1, 0, 3, 4])
    np.testing.assert_array_equal(store.lookup(FP2, q), [-1] * 5)  # unknown backbone
    assert store.lookup(FP, []).shape == (0,)


def test_key_formats_are_equivalent(path):
    store = EmbeddingStore(path)
    keys = rand_keys(6)
    keys[0, -4:] = 0  # trailing NULs must survive (an 'S32' dtype would strip them)
    store.put(FP, [bytes(k) for k in keys], vectors_for(keys), spec=SPEC)
    as_list = store.lookup(FP, [bytes(k) for k in keys])
    np.testing.assert_array_equal(as_list, np.arange(6))
    np.testing.assert_array_equal(store.lookup(FP, keys), as_list)
    np.testing.assert_array_equal(store.lookup(FP, keys.view("S32").ravel()), as_list)
    with pytest.raises(StoreError, match="32-byte"):
        store.lookup(FP, [b"short"])
    with pytest.raises(StoreError, match="single bytes"):
        store.lookup(FP, b"x" * 32)
    with pytest.raises(StoreError, match="fingerprint"):
        store.lookup("not-a-fingerprint", keys)


def test_get_unknown_backbone_and_missing_file(path):
    store = EmbeddingStore(path)
    vecs, found = store.get(FP, rand_keys(3))
    assert vecs.shape == (3, 0) and not found.any()
    assert store.fingerprints() == [] and store.count(FP) == 0 and store.spec(FP) is None
    assert store.info()["exists"] is False
    assert not os.path.exists(path)  # reading creates nothing
    with pytest.raises(StoreError, match="no store file"):
        store.verify()


def test_iter_rows_and_info(path):
    store = EmbeddingStore(path)
    keys = rand_keys(25)
    store.put(FP, keys, vectors_for(keys), spec=SPEC)
    store.put(FP2, keys[:5], vectors_for(keys[:5], dim=8), spec={"name": "other"})
    blocks = list(store.iter_rows(FP, batch=10))
    assert [len(k) for k, _ in blocks] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([k for k, _ in blocks]), keys)
    np.testing.assert_array_equal(np.concatenate([v for _, v in blocks]), vectors_for(keys))
    info = store.info()
    assert info["store_version"] == STORE_VERSION and info["size_bytes"] == os.path.getsize(path)
    by_fp = {b["fingerprint"]: b for b in info["backbones"]}
    assert by_fp[FP]["name"] == "toy" and by_fp[FP]["rows"] == 25 and by_fp[FP]["dim"] == 16
    assert (
        by_fp[FP2]["name"] == "other"
        and by_fp[FP2]["dim"] == 8
        and by_fp[FP2]["spec"] == {"name": "other"}
    )
    with h5py.File(path, "r") as f:
        g = f[group_path()]
        assert g["keys"].dtype == np.uint8 and g["keys"].shape[1] == 32
        assert g["vectors"].id.get_create_plist().get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY
        assert g["vectors"].chunks is not None and g["vectors"].maxshape == (None, 16)
        assert int(g.attrs["committed"]) == 25 and json.loads(g.attrs["spec"]) == SPEC
        assert int(f.attrs["featx_store_version"]) == STORE_VERSION and "featx_version" in f.attrs


def test_capacity_grows_geometrically(path):
    store = EmbeddingStore(path)
    allocated = []
    for i in range(40):
        k = rand_keys(100, seed=1000 + i)
        store.put(FP, k, vectors_for(k, dim=8), spec=SPEC)
        allocated.append(store.info()["backbones"][0]["allocated"])
    assert store.count(FP) == 4000
    assert len(set(allocated)) <= 4  # 1024 → 2048 → 4096: few resizes for 40 appends


# ----------------------------------------------------------------------------- refusals


def test_spec_mismatch_refused(path):
    store = EmbeddingStore(path)
    k = rand_keys(4)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    other = dict(SPEC, input_size=96)
    k2 = rand_keys(4, seed=5)
    with pytest.raises(FingerprintMismatchError, match="input_size: stored 64, given 96"):
        store.put(FP, k2, vectors_for(k2), spec=other)
    with pytest.raises(FingerprintMismatchError, match="pooling"):
        store.put(FP, k2, vectors_for(k2), spec={k: v for k, v in SPEC.items() if k != "pooling"})
    # free-form fields do not count
    assert store.put(FP, k2, vectors_for(k2), spec=dict(SPEC, description="re-run")) == 4
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        store.put(FP, k2, vectors_for(k2), spec=dict(SPEC, fingerprint=FP2))
    assert store.count(FP) == 8


def test_dim_mismatch_refused(path):
    store = EmbeddingStore(path)
    k = rand_keys(4)
    store.put(FP, k, vectors_for(k, dim=16), spec=SPEC)
    k2 = rand_keys(4, seed=8)
    with pytest.raises(FingerprintMismatchError, match="16-dimensional.*8-dimensional"):
        store.put(FP, k2, vectors_for(k2, dim=8), spec=SPEC)
    assert store.count(FP) == 4


def test_a_read_given_the_spec_refuses_a_foreign_group_in_the_same_open(path):
    store = EmbeddingStore(path)
    k = rand_keys(4)
    store.put(FP, k, vectors_for(k, dim=16), spec=SPEC)
    vectors, found = store.get(FP, k, spec=SPEC, dim=16)
    assert found.all() and vectors.shape == (4, 16)
    with pytest.raises(FingerprintMismatchError, match="input_size: stored 64, given 96"):
        store.get(FP, k, spec=dict(SPEC, input_size=96), dim=16)
    with pytest.raises(FingerprintMismatchError, match="16-dimensional.*8-dimensional"):
        store.get(FP, k, spec=SPEC, dim=8)
    assert store.get(FP2, k, spec=SPEC, dim=16)[1].sum() == 0  # no group: nothing to refuse


def test_storage_dtype_mismatch_refused(path):
    k = rand_keys(4)
    EmbeddingStore(path, dtype="float16").put(FP, k, vectors_for(k), spec=SPEC)
    k2 = rand_keys(4, seed=9)
    with pytest.raises(StoreError, match="stored as float16.*dtype='float16'"):
        EmbeddingStore(path).put(FP, k2, vectors_for(k2), spec=SPEC)
    # reading does not care
    assert EmbeddingStore(path).get(FP, k)[1].all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_vectors_refused(path, bad):
    store = EmbeddingStore(path)
    k = rand_keys(10)
    v = vectors_for(k)
    v[2, 3] = bad
    v[7, 0] = bad
    with pytest.raises(StoreError, match="2 of 10 vector rows contain NaN or inf"):
        store.put(FP, k, v, spec=SPEC)
    assert store.count(FP) == 0


def test_bad_shapes_refused(path):
    store = EmbeddingStore(path)
    with pytest.raises(StoreError, match="3 keys but 2 vector rows"):
        store.put(FP, rand_keys(3), np.ones((2, 4), np.float32), spec=SPEC)
    with pytest.raises(StoreError, match="2-D"):
        store.put(FP, rand_keys(3), np.ones(3, np.float32), spec=SPEC)
    with pytest.raises(StoreError, match="JSON"):
        store.put(FP, rand_keys(3), np.ones((3, 4), np.float32), spec={"f": object()})
    with pytest.raises(StoreError, match="dtype"):
        EmbeddingStore(path, dtype="int8")


def test_readonly_refuses_writes(path):
    k = rand_keys(3)
    EmbeddingStore(path).put(FP, k, vectors_for(k), spec=SPEC)
    ro = EmbeddingStore(path, readonly=True)
    with pytest.raises(StoreError, match="readonly"):
        ro.put(FP, rand_keys(3, seed=1), vectors_for(k), spec=SPEC)
    assert ro.get(FP, k)[1].all()


def test_lock_timeout_names_lock_file(path):
    k = rand_keys(3)
    EmbeddingStore(path).put(FP, k, vectors_for(k), spec=SPEC)
    fd = os.open(path + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" writing
        store = EmbeddingStore(path, lock_timeout=0.2)
        t0 = time.perf_counter()
        with pytest.raises(StoreError, match=r"emb\.h5\.lock.*another process is writing"):
            store.get(FP, k)
        assert 0.15 < time.perf_counter() - t0 < 5
        with pytest.raises(StoreError, match="another process"):
            store.put(FP, rand_keys(2, seed=3), vectors_for(k[:2]), spec=SPEC)
    finally:
        os.close(fd)
    assert EmbeddingStore(path, lock_timeout=0.2).get(FP, k)[1].all()


def test_waiting_writer_is_not_starved_by_new_readers(path):
    import threading

    k = rand_keys(3)
    EmbeddingStore(path).put(FP, k, vectors_for(k), spec=SPEC)
    fd = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a long-running reader
    result = {}
    k2 = rand_keys(2, seed=4)

    def write():
        result["n"] = EmbeddingStore(path, lock_timeout=10).put(FP, k2, vectors_for(k2), spec=SPEC)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        _wait_until_gate_is_held(path + ".lock.gate", writer)
        with pytest.raises(StoreError, match="timed out"):
            EmbeddingStore(path, lock_timeout=0.2).count(FP)  # a new reader queues behind it
    finally:
        os.close(fd)  # the long reader finishes
    writer.join(10)
    assert result == {"n": 2}
    assert EmbeddingStore(path).count(FP) == 5


def _wait_until_gate_is_held(gate_path, writer, timeout=30.0):
    """Return once another holder has the turnstile exclusively: the order is observed,
    not hoped for after a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and writer.is_alive():
        if os.path.exists(gate_path):
            fd = os.open(gate_path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                return  # the writer holds the gate
            finally:
                os.close(fd)
        time.sleep(0.001)  # polling a condition, not a guess at how long it takes
    pytest.fail("the writer never reached the turnstile")


# ----------------------------------------------------------------------------- pickling, index


def test_pickle_round_trip(path):
    store = EmbeddingStore(path, dtype="float16", lock_timeout=30)
    k = rand_keys(10)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    store.lookup(FP, k)  # populate the index cache
    blob = pickle.dumps(store)
    assert len(blob) < 500  # a path and parameters, no index, no handle
    clone = pickle.loads(blob)
    assert (clone.path, clone.dtype, clone.lock_timeout, clone.readonly) == (
        path,
        "float16",
        30.0,
        False,
    )
    np.testing.assert_array_equal(clone.get(FP, k)[0], store.get(FP, k)[0])
    with clone:
        assert clone.count(FP) == 10
    assert clone.count(FP) == 10  # still usable after close


def test_lookup_100k_keys(path):
    # Correctness at scale only; its speed is measured by benchmarks/bench_extract.py.
    n = 100_000
    keys = rand_keys(n, seed=11)
    EmbeddingStore(path).put(FP, keys, np.zeros((n, 8), np.float32), spec=SPEC)
    order = np.random.default_rng(0).permutation(n)
    query = [bytes(k) for k in keys[order]]
    fresh = EmbeddingStore(path)  # includes building the index from the file
    rows = fresh.lookup(FP, query)
    np.testing.assert_array_equal(rows, order)  # row i holds key i


def test_index_follows_other_writers(path):
    a, b = EmbeddingStore(path), EmbeddingStore(path)
    k = rand_keys(30)
    a.put(FP, k[:10], vectors_for(k[:10]), spec=SPEC)
    assert (a.lookup(FP, k) >= 0).sum() == 10
    b.put(FP, k[10:], vectors_for(k[10:]), spec=SPEC)
    np.testing.assert_array_equal(a.lookup(FP, k), np.arange(30))
    # the file replaced behind the object's back: the cached index is dropped, not trusted
    os.remove(path)
    b.put(FP, k[20:], vectors_for(k[20:]), spec=SPEC)
    np.testing.assert_array_equal(a.lookup(FP, k[20:]), np.arange(10))
    assert (a.lookup(FP, k[:20]) == -1).all()


def test_key_index_matches_dict():
    rng = np.random.default_rng(5)
    idx = _KeyIndex(("t",))
    model = {}
    start = 0
    for size in [
        5,
        3000,
        20000,
        7,
        1,
        15000,
        2500,
        40000,
    ]:  # crosses the dict → sorted-array threshold
        k = rng.integers(0, 256, (size, 32), dtype=np.uint8)
        k[: size // 3, :24] = 0  # many shared prefixes
        k = np.unique(k, axis=0)
        k = k[~np.isin(_void(k), np.frombuffer(b"".join(model), "V32") if model else [])]
        idx.extend(_void(k), start)
        for i, row in enumerate(k):
            model[row.tobytes()] = start + i
        start += len(k)
    q = np.concatenate(
        [np.frombuffer(b"".join(model), np.uint8).reshape(-1, 32), rand_keys(100, seed=6)]
    )
    want = np.array([model.get(x.tobytes(), -1) for x in q])
    np.testing.assert_array_equal(idx.lookup(_void(q)), want)


def test_store_module_does_not_import_tensorflow():
    code = (
        "import sys, featx.store; "
        "heavy = ('tensorflow', 'keras', 'jax', 'torch'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )


# ----------------------------------------------------------------------------- merge


def test_merge_from_shards(tmp_path):
    keys = rand_keys(120)
    shards = []
    for i, part in enumerate([keys[:70], keys[50:]]):
        s = EmbeddingStore(str(tmp_path / f"shard{i}.h5"), dtype="float16")
        s.put(FP, part, vectors_for(part), spec=SPEC)
        shards.append(s)
    shards[1].put(FP2, keys[:3], vectors_for(keys[:3], dim=4), spec={"name": "b"})
    main = EmbeddingStore(str(tmp_path / "main.h5"), dtype="float16")
    assert main.merge_from(shards[0].path) == {FP: 70}
    assert main.merge_from(shards[1]) == {FP: 50, FP2: 3}
    assert main.merge_from(shards[1]) == {FP: 0, FP2: 0}
    got, found = main.get(FP, keys)
    assert found.all()
    np.testing.assert_array_equal(got, vectors_for(keys).astype(np.float16).astype(np.float32))
    main.verify()
    with pytest.raises(StoreError, match="into itself"):
        main.merge_from(main.path)


def test_merge_refuses_incompatible_before_copying(tmp_path):
    k = rand_keys(10)
    src = EmbeddingStore(str(tmp_path / "src.h5"))
    src.put(FP2, k, vectors_for(k), spec={"name": "fine"})
    src.put(FP, k, vectors_for(k), spec=dict(SPEC, pooling="max"))
    dst = EmbeddingStore(str(tmp_path / "dst.h5"))
    dst.put(FP, k[:2], vectors_for(k[:2]), spec=SPEC)
    with pytest.raises(FingerprintMismatchError, match="pooling"):
        dst.merge_from(src)
    assert dst.fingerprints() == [FP]  # FP2 was not copied either
    with pytest.raises(StoreError, match="no such store"):
        dst.merge_from(str(tmp_path / "missing.h5"))


# ----------------------------------------------------------------------------- damage


@pytest.fixture
def full_store(path):
    """A store whose committed rows fill every allocated row, vectors dominating the file."""
    store = EmbeddingStore(path)
    k = rand_keys(1024)  # dim 256 float32 → 1024-row chunks... capacity == 1024 == committed
    store.put(FP, k, vectors_for(k, dim=256), spec=SPEC)
    info = store.info()["backbones"][0]
    assert info["rows"] == info["allocated"]
    return store, k


def test_verify_passes_on_good_store(full_store):
    store, _ = full_store
    report = store.verify()
    (b,) = report["backbones"]
    assert (
        report["ok"]
        and b["rows"] == 1024
        and b["allocated"] == 1024
        and b["bytes"] >= 1024 * 256 * 4
    )


def test_verify_detects_truncation(full_store):
    store, _ = full_store
    size = os.path.getsize(store.path)
    with open(store.path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StoreError, match="emb.h5"):
        store.verify()
    with pytest.raises(StoreError):
        EmbeddingStore(store.path).count(FP)


def test_verify_detects_bit_flips(full_store):
    store, k = full_store
    size = os.path.getsize(store.path)
    with open(store.path, "r+b") as f:
        for off in range(size // 2 - 4096, size // 2 + 4096, 512):
            f.seek(off)
            byte = f.read(1)
            f.seek(off)
            f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(StoreError, match="emb.h5"):
        store.verify()
    with pytest.raises(StoreError, match="checksum|damaged|cannot"):
        EmbeddingStore(store.path).get(FP, k)  # reads check row checksums too


def test_each_row_checksum_is_verified_once_per_object_and_group(path):
    # The engine's all-hit path reads the same rows once per fold and candidate; a
    # row's checksum is verified the first time this object reads it, so damage to a
    # row it never read is still caught, and a re-created group is checked afresh.
    k = rand_keys(8)
    store = EmbeddingStore(path)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    store.get(FP, k[:4])  # rows 0-3 verified by this object
    with h5py.File(path, "r+") as f:
        f[f"backbones/{FP}/vectors"][6] += 1.0  # damage a row it has not read
    with pytest.raises(StoreError, match="checksum"):
        store.get(FP, k[6:7])
    np.testing.assert_array_equal(store.get(FP, k[:4])[0], vectors_for(k[:4]))
    with pytest.raises(StoreError, match="checksum"):
        EmbeddingStore(path).get(FP, k[:7])  # a new object checks every row it reads
    assert store.drop(FP) == 8
    store.put(FP, k, vectors_for(k) + 1, spec=SPEC)
    with h5py.File(path, "r+") as f:
        f[f"backbones/{FP}/vectors"][1] += 1.0
    with pytest.raises(StoreError, match="checksum"):
        store.get(FP, k[:4])  # the new group's rows are new rows


def test_verify_detects_header_damage_and_non_hdf5(path, tmp_path):
    k = rand_keys(3)
    EmbeddingStore(path).put(FP, k, vectors_for(k), spec=SPEC)
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    with pytest.raises(StoreError, match="cannot open .*emb.h5"):
        EmbeddingStore(path).verify()
    other = tmp_path / "notes.h5"
    other.write_text("hello, not HDF5")
    with pytest.raises(StoreError, match="notes.h5"):
        EmbeddingStore(str(other)).get(FP, k)
    plain = str(tmp_path / "plain.h5")
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a featx embedding store"):
        EmbeddingStore(plain).verify()
    with pytest.raises(StoreError, match="not a featx embedding store"):
        EmbeddingStore(plain).put(FP, k, vectors_for(k), spec=SPEC)


def test_future_format_version_refused(path):
    k = rand_keys(3)
    store = EmbeddingStore(path)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    with h5py.File(path, "r+") as f:
        f.attrs["featx_store_version"] = STORE_VERSION + 1
    msg = rf"newer featx \(format {STORE_VERSION + 1}\), this featx reads ≤ {STORE_VERSION}"
    for call in (
        store.verify,
        lambda: store.get(FP, k),
        store.info,
        lambda: store.put(FP, rand_keys(2, seed=1), vectors_for(k[:2]), spec=SPEC),
    ):
        with pytest.raises(StoreError, match=msg):
            call()


def test_verify_detects_duplicate_key_written_behind_its_back(path):
    k = rand_keys(10)
    store = EmbeddingStore(path)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    with h5py.File(path, "r+") as f:
        g = f[group_path()]
        g["keys"][10] = k[3]
        g["vectors"][10] = vectors_for(k[3:4])[0]
        from featx.store._format import _row_crcs

        g["crc"][10] = _row_crcs(k[3:4], vectors_for(k[3:4]))[
            0
        ]  # a consistent row: only the dup is wrong
        g.attrs["committed"] = 11
    with pytest.raises(StoreError, match="1 duplicate keys"):
        store.verify()


def test_verify_detects_committed_beyond_allocated(path):
    k = rand_keys(10)
    store = EmbeddingStore(path)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    with h5py.File(path, "r+") as f:
        g = f[group_path()]
        g.attrs["committed"] = g["keys"].shape[0] + 5
    with pytest.raises(StoreError, match="committed = .* allocated"):
        store.verify()
    with pytest.raises(StoreError, match="allocated"):
        EmbeddingStore(path).lookup(FP, k)


def test_verify_detects_nonfinite_rows(path):
    k = rand_keys(10)
    store = EmbeddingStore(path)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    with h5py.File(path, "r+") as f:
        f[group_path()]["vectors"][4, 0] = np.nan
    with pytest.raises(StoreError, match="1 committed rows hold NaN or inf"):
        store.verify()


def test_uncommitted_rows_are_invisible_and_overwritten(path):
    store = EmbeddingStore(path)
    k = rand_keys(10)
    store.put(FP, k, vectors_for(k), spec=SPEC)
    ghost = rand_keys(5, seed=21)
    with h5py.File(path, "r+") as f:  # a writer that died before advancing `committed`
        g = f[group_path()]
        assert g["keys"].shape[0] >= 15
        g["keys"][10:15] = ghost
        g["vectors"][10:15] = np.full((5, 16), np.nan, np.float32)
    fresh = EmbeddingStore(path)
    assert (fresh.lookup(FP, ghost) == -1).all()
    assert not fresh.get(FP, ghost)[1].any()
    assert fresh.count(FP) == 10
    fresh.verify()  # garbage beyond `committed` is not damage
    assert fresh.put(FP, ghost, vectors_for(ghost), spec=SPEC) == 5
    np.testing.assert_array_equal(fresh.get(FP, ghost)[0], vectors_for(ghost))
    np.testing.assert_array_equal(fresh.lookup(FP, ghost), np.arange(10, 15))
    fresh.verify()


# ----------------------------------------------------------------------------- processes

_CTX = mp.get_context("spawn")


def _proc_put(path, keys_blob, batch, start_event):
    keys = np.frombuffer(keys_blob, np.uint8).reshape(-1, 32)
    store = EmbeddingStore(path, lock_timeout=60)
    start_event.wait(30)
    total = 0
    for i in range(0, len(keys), batch):
        total += store.put(FP, keys[i : i + batch], vectors_for(keys[i : i + batch]), spec=SPEC)
        time.sleep(0.001)  # pacing only: lets the other process interleave its puts


def _proc_slow_writer(path, keys_blob, batch, start_event, halfway, resume):
    keys = np.frombuffer(keys_blob, np.uint8).reshape(-1, 32)
    store = EmbeddingStore(path, lock_timeout=60)
    start_event.wait(30)
    for i in range(0, len(keys), batch):
        if i == len(keys) // 2:  # stop halfway until the reader has seen this count
            halfway.set()
            resume.wait(30)
        store.put(FP, keys[i : i + batch], vectors_for(keys[i : i + batch], dim=64), spec=SPEC)
        time.sleep(0.004)  # pacing only: readers interleave with more puts


def _proc_endless_writer(path, batch, dim):
    store = EmbeddingStore(path, lock_timeout=60)
    i = 0
    while True:
        k = rand_keys(batch, seed=10_000 + i)
        store.put(FP, k, vectors_for(k, dim=dim), spec=SPEC)
        i += 1


def _join(procs, timeout=60):
    for p in procs:
        p.join(timeout)
        if p.is_alive():  # pragma: no cover - a hang is a failure, not a stuck suite
            p.kill()
            p.join()
            pytest.fail("worker process hung")
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"


def test_two_processes_put_overlapping_sets(path):
    rng = np.random.default_rng(31)
    universe = rand_keys(3000, seed=32)
    parts = [universe[rng.choice(3000, 2000, replace=False)] for _ in range(2)]
    start = _CTX.Event()
    procs = [_CTX.Process(target=_proc_put, args=(path, p.tobytes(), 97, start)) for p in parts]
    for p in procs:
        p.start()
    start.set()
    _join(procs)
    union = np.unique(np.concatenate(parts), axis=0)
    store = EmbeddingStore(path)
    assert store.count(FP) == len(union)
    rows = store.lookup(FP, union)
    assert (rows >= 0).all() and len(np.unique(rows)) == len(union)
    np.testing.assert_array_equal(store.get(FP, union)[0], vectors_for(union))
    store.verify()


def test_reader_sees_only_committed_rows_while_writer_appends(path):
    keys = rand_keys(3000, seed=41)
    start, halfway, resume = _CTX.Event(), _CTX.Event(), _CTX.Event()
    proc = _CTX.Process(target=_proc_slow_writer,
                        args=(path, keys.tobytes(), 50, start, halfway, resume))
    proc.start()
    reader = EmbeddingStore(path, lock_timeout=60)
    expected = vectors_for(keys, dim=64)
    counts = []
    start.set()
    deadline = time.monotonic() + 60
    while proc.is_alive() and time.monotonic() < deadline:
        paused = halfway.is_set() and not resume.is_set()
        c = reader.count(FP)
        got, found = reader.get(FP, keys)
        assert found.sum() >= c
        if found.any():
            assert np.isfinite(got[found]).all()
            np.testing.assert_array_equal(got[found], expected[found])
        counts.append(int(found.sum()))
        if paused:  # the writer waits halfway: this read saw exactly the first half
            assert counts[-1] == 1500
            resume.set()
    _join([proc])
    counts.append(reader.count(FP))
    assert counts == sorted(counts), "committed count went backwards"
    assert 1500 in counts and counts[-1] == 3000, counts  # progress observed, by design
    assert reader.count(FP) == 3000
    reader.verify()


def test_sigkill_mid_put_loses_at_most_the_batch(path):
    batch, dim = 1500, 256
    proc = _CTX.Process(target=_proc_endless_writer, args=(path, batch, dim))
    proc.start()
    store = EmbeddingStore(path, lock_timeout=60)
    deadline = time.monotonic() + 60
    while store.count(FP) < 2 * batch and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition (enough rows committed), bounded by deadline
    # A seeded random delay: where the kill lands varies between puts, reproducibly.
    time.sleep(float(np.random.default_rng(7).uniform(0, 0.03)))  # seeded: where the kill lands
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    n = store.count(FP)
    assert n >= 2 * batch and n % batch == 0
    store.verify()
    for i in range(n // batch):
        k = rand_keys(batch, seed=10_000 + i)
        got, found = store.get(FP, k)
        assert found.all()
        np.testing.assert_array_equal(got, vectors_for(k, dim=dim))
    k = rand_keys(10, seed=5)
    assert (
        store.put(FP, k, vectors_for(k, dim=dim), spec=SPEC) == 10
    )  # writable again, lock released
    store.verify()


# ----------------------------------------------------------------------------- random interleavings

if HAVE_HYPOTHESIS:
    POOL = [bytes([i]) * 31 + bytes([i % 3]) for i in range(12)]

    class StoreMachine(RuleBasedStateMachine):
        """put/get/lookup through two store objects on one file, against a dict model."""

        def __init__(self):
            super().__init__()
            self.dir = tempfile.mkdtemp(prefix="featx-store-")
            self.path = os.path.join(self.dir, "s.h5")
            self.a = EmbeddingStore(self.path)
            self.b = EmbeddingStore(self.path)
            self.model: dict[bytes, np.ndarray] = {}

        def teardown(self):
            shutil.rmtree(self.dir, ignore_errors=True)

        @rule(
            which=st.sampled_from("ab"),
            idx=st.lists(st.integers(0, len(POOL) - 1), max_size=8),
            seed=st.integers(0, 2**16),
        )
        def put(self, which, idx, seed):
            keys = [POOL[i] for i in idx]
            vecs = np.random.default_rng(seed).standard_normal((len(keys), 4)).astype(np.float32)
            expect = 0
            for key, v in zip(keys, vecs):
                if key not in self.model:
                    self.model[key] = v
                    expect += 1
            store = self.a if which == "a" else self.b
            assert store.put(FP, keys, vecs.reshape(-1, 4), spec=SPEC) == expect

        @rule(which=st.sampled_from("ab"), idx=st.lists(st.integers(0, len(POOL) - 1), max_size=8))
        def get(self, which, idx):
            store = self.a if which == "a" else self.b
            keys = [POOL[i] for i in idx]
            got, found = store.get(FP, keys)
            assert found.tolist() == [k in self.model for k in keys]
            for key, row, ok in zip(keys, got, found):
                if ok:
                    np.testing.assert_array_equal(row, self.model[key])
            rows = store.lookup(FP, keys)
            assert ((rows >= 0) == found).all()

        @rule()
        def reopen(self):
            self.a = pickle.loads(pickle.dumps(self.a))

        @invariant()
        def counts_match(self):
            assert self.a.count(FP) == len(self.model)

    StoreMachine.TestCase.settings = settings(
        max_examples=30,
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    TestStoreMachine = StoreMachine.TestCase
