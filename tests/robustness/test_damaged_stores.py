"""Damaged, foreign and future stores: featx reports them and never serves, mixes or
overwrites vectors silently.

Extends tests/test_store.py (which covers a half-size truncation, scattered bit
flips, header damage, a future version through the Python API, duplicate keys,
committed > allocated and NaN rows): here the damage is aimed at one region of
the file, truncation sweeps many offsets, and each case is also driven through
the engine and the CLI.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import featx
from featx.errors import FeatxError, FingerprintMismatchError, StoreError
from featx.images import source_key
from featx.store import STORE_VERSION, EmbeddingStore

FP = hashlib.sha256(b"damaged").hexdigest()
SPEC = {"name": "damaged-test", "dim": 64}
N, DIM = 300, 64


def _keys(n, seed=0):
    return [hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(n)]


@pytest.fixture
def store_file(tmp_path):
    path = str(tmp_path / "emb.h5")
    k = _keys(N)
    v = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    EmbeddingStore(path).put(FP, k, v, spec=SPEC)
    return path, k, v


def _flip(path, offset, mask=0x40):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))


def _dataset_offset(path, name, row, row_bytes):
    """File offset of ``row`` of dataset ``name`` (chunked: via the chunk's byte offset)."""
    with h5py.File(path, "r") as f:
        ds = f[f"backbones/{FP}/{name}"]
        chunk_rows = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((row // chunk_rows * chunk_rows,)
                                             + (0,) * (ds.ndim - 1))
        return info.byte_offset + (row % chunk_rows) * row_bytes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("region, row_bytes", [("vectors", DIM * 4), ("keys", 32),
                                               ("crc", 4)])
def test_flip_in_one_region_is_caught_by_the_row_crc(store_file, region, row_bytes):
    path, k, v = store_file
    row = 123
    _flip(path, _dataset_offset(path, region, row, row_bytes) + row_bytes // 2)
    with pytest.raises(StoreError, match=r"1 committed rows fail their checksum \(first row "
                                         r"123\)"):
        EmbeddingStore(path).verify()
    store = EmbeddingStore(path)
    if region != "keys":  # a flipped key no longer matches the one asked for
        with pytest.raises(StoreError, match="checksum mismatch"):
            store.get(FP, [k[row]])
    # Rows far from the damage still read (they are CRC-checked too).
    got, found = store.get(FP, [k[0]])
    assert found.all()
    np.testing.assert_array_equal(got[0], v[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.9999])
def test_truncation_anywhere_is_a_store_error(store_file, fraction):
    path, k, _ = store_file
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(max(1, int(size * fraction)))
    store = EmbeddingStore(path)
    for call in (store.verify, lambda: store.get(FP, k[:5]), lambda: store.count(FP),
                 store.info):
        try:
            call()
        except StoreError as exc:
            assert "emb.h5" in str(exc)
        except Exception as exc:  # anything else is a leak from h5py/numpy
            pytest.fail(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        else:
            # Only acceptable if the cut left every committed row intact: verify() agrees.
            assert call is not store.verify or fraction > 0.99
    with pytest.raises(StoreError):
        store.verify()


@pytest.mark.timeout(60)
def test_put_into_a_damaged_store_leaves_the_damaged_row_alone(store_file):
    path, k, v = store_file
    _flip(path, _dataset_offset(path, "vectors", 7, DIM * 4))
    before = open(path, "rb").read()
    store = EmbeddingStore(path)
    # Appending new keys is allowed (the damage is in old rows) but must not touch them;
    # verify() still names the same row afterwards.
    store.put(FP, _keys(3, seed=9), v[:3], spec=SPEC)
    with pytest.raises(StoreError, match=r"first row 7\)"):
        store.verify()
    after = open(path, "rb").read()
    o = _dataset_offset(path, "vectors", 7, DIM * 4)
    assert after[o:o + DIM * 4] == before[o:o + DIM * 4]


@pytest.fixture(scope="module")
def backbone():
    return featx.get_backbone("mobilenet_v2", weights=None, input_size=32)


def _image():
    return np.random.RandomState(0).randint(0, 255, (1, 40, 40, 3)).astype(np.uint8)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["spec", "dim"])
def test_engine_refuses_a_foreign_group_under_its_fingerprint(backbone, tmp_path, what):
    """A group under this backbone's fingerprint written with another spec or width is
    refused before a single vector is served (featx bug found here: it was served
    silently, or crashed in numpy with a broadcast ValueError)."""
    store = EmbeddingStore(tmp_path / "emb.h5")
    img = _image()
    if what == "spec":
        spec, dim = {**backbone.describe(), "name": "resnet50"}, backbone.dim
    else:
        spec, dim = {k: v for k, v in backbone.describe().items() if k != "dim"}, 10
    store.put(backbone.fingerprint, [source_key(img[0])], np.ones((1, dim), np.float32),
              spec=spec)
    with pytest.raises(FingerprintMismatchError, match="emb.h5"):
        featx.Embedder(backbone, store=store, progress=False).embed(img)
    assert store.count(backbone.fingerprint) == 1  # nothing appended, nothing overwritten


@pytest.mark.timeout(60)
def test_verify_reports_a_group_whose_spec_names_another_fingerprint(tmp_path):
    path = str(tmp_path / "emb.h5")
    other = hashlib.sha256(b"another backbone").hexdigest()
    EmbeddingStore(path).put(FP, _keys(4), np.ones((4, 8), np.float32),
                             spec={"name": "x", "fingerprint": FP, "dim": 8})
    with h5py.File(path, "r+") as f:  # a hand edit / foreign tool relabels the group
        f[f"backbones/{FP}"].attrs["spec"] = (
            '{"dim":8,"fingerprint":"' + other + '","name":"x"}')
    with pytest.raises(StoreError, match="its spec names fingerprint"):
        EmbeddingStore(path).verify()
    with h5py.File(path, "r+") as f:
        f[f"backbones/{FP}"].attrs["spec"] = (
            '{"dim":16,"fingerprint":"' + FP + '","name":"x"}')
    with pytest.raises(StoreError, match="spec says dim 16, the group stores 8"):
        EmbeddingStore(path).verify()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "featx.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.timeout(300)
def test_cli_reports_future_truncated_and_flipped_stores_in_one_line(store_file, tmp_path):
    path, _, _ = store_file
    future = str(tmp_path / "future.h5")
    flipped = str(tmp_path / "flipped.h5")
    truncated = str(tmp_path / "truncated.h5")
    for target in (future, flipped, truncated):
        with open(path, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
    with h5py.File(future, "r+") as f:
        f.attrs["featx_store_version"] = STORE_VERSION + 1
    _flip(flipped, _dataset_offset(flipped, "vectors", 42, DIM * 4))
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) // 3)
    expect = {future: "newer featx", flipped: "checksum", truncated: "truncated.h5"}
    for target, needle in expect.items():
        for sub in ("verify", "info"):
            run = _cli("cache", sub, target)
            if sub == "info" and target == flipped:
                assert run.returncode == 0  # info reads metadata only; verify reads rows
                continue
            assert run.returncode == 2, (sub, target, run.stderr)
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
            assert needle in lines[0]


@pytest.mark.timeout(120)
def test_engine_on_a_future_store_is_a_clear_error(backbone, store_file):
    path, _, _ = store_file
    with h5py.File(path, "r+") as f:
        f.attrs["featx_store_version"] = STORE_VERSION + 7
    with pytest.raises(FeatxError, match="newer featx"):
        featx.Embedder(backbone, store=path, progress=False).embed(_image())
