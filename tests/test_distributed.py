"""Dask scale-out: sharded extraction on a LocalCluster, retries, re-runs, searches.

One module-scoped ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
serves every test (starting workers and building the backbone in each is most of the
cost). Images are ~60 tiny JPEGs and the backbone MobileNetV2 at 32 px, random weights.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import _imagegen

distributed = pytest.importorskip("distributed")

import featx  # noqa: E402
from featx import distributed as fxd  # noqa: E402
from featx.errors import FeatxError, MissingDependencyError  # noqa: E402
from featx.store import EmbeddingStore  # noqa: E402

SPEC = dict(name="mobilenet_v2", weights=None, input_size=32)


def make_jpegs(folder, n, seed=0, size=(48, 40)):
    return _imagegen.make_jpegs(folder, n, seed=seed, size=size, prefix=f"img_{seed}")


@pytest.fixture(scope="module")
def client():
    # Test-module helpers (the killer plugin) travel by value: workers need not import
    # this file.
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", env=fxd.worker_env(1)) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_jpegs(tmp_path_factory.mktemp("imgs"), 60)


@pytest.fixture(scope="module")
def reference(images):
    """Single-process Embedder vectors, keyed by path."""
    bb = featx.get_backbone(**SPEC)
    X = featx.Embedder(bb, batch_size=8, progress=False).embed(images)
    return dict(zip(images, X)), bb.fingerprint


def test_decode_worker_processes_run_inside_a_dask_worker(client, images, reference):
    # A Dask worker is a daemonic process, which multiprocessing may not give
    # children; the decode pool starts its interpreters itself, so it may.
    ref, _ = reference

    def embed(paths):
        bb = featx.get_backbone(**SPEC)
        emb = featx.Embedder(bb, batch_size=8, progress=False, pool="processes", workers=2)
        return emb.embed(paths), emb.stats["pool"], os.getpid()

    X, pool, pid = client.submit(embed, images[:12], pure=False).result(timeout=180)
    assert pool == "processes" and pid != os.getpid()
    np.testing.assert_allclose(X, np.stack([ref[p] for p in images[:12]]), atol=1e-5)


def _shard_tasks(stream):
    return [t for t in stream.data if str(t["key"]).startswith(fxd.SHARD_TASK_PREFIX)]


def test_vectors_equal_single_process_in_input_order(client, images, reference, tmp_path):
    ref, fp = reference
    order = np.random.RandomState(1).permutation(len(images))
    sources = [images[i] for i in order] + images[:7]  # shuffled, with duplicates
    store = str(tmp_path / "emb.h5")
    X, stats = fxd.embed_distributed(sources, SPEC["name"], store, client, shard_size=16,
                                     batch_size=8, weights=None, input_size=32)
    expected = np.stack([ref[p] for p in sources])
    assert X.dtype == np.float32 and X.shape == expected.shape
    np.testing.assert_allclose(X, expected, atol=1e-5)
    assert stats["fingerprint"] == fp
    assert stats["unique"] == stats["missing"] == stats["forwarded"] == stats["merged"] == 60
    assert stats["shards"] == stats["tasks"] == 4 and stats["failed"] == 0
    main = EmbeddingStore(store)
    assert main.count(fp) == 60
    main.verify()
    assert not os.path.exists(fxd.shard_dir(store))  # merged shards are removed
    # Where each image was read travels with the shards (featx similar answers with it).
    assert set(main.paths_of_all().values()) == {os.path.abspath(p) for p in images}
    # The backbone was built once per worker process (by the plugin), never per task.
    builds = client.run(fxd._build_count, fxd.backbone_spec(SPEC["name"], **{
        k: v for k, v in SPEC.items() if k != "name"})[0])
    assert sorted(builds.values()) == [1, 1]
    assert stats["backbone_builds"] == 0


def test_rerun_sends_no_task_for_stored_keys(client, images, reference, tmp_path):
    ref, fp = reference
    store = str(tmp_path / "emb.h5")
    first = images[:40]
    fxd.embed_distributed(first, SPEC, store, client, shard_size=16, batch_size=8)
    with distributed.get_task_stream(client) as stream:
        X, stats = fxd.embed_distributed(first, SPEC, store, client, shard_size=16,
                                         batch_size=8)
    assert stats["tasks"] == 0 and stats["cache_hits"] == 40 and stats["forwarded"] == 0
    assert _shard_tasks(stream) == []
    np.testing.assert_allclose(X, np.stack([ref[p] for p in first]), atol=1e-5)
    # Adding 20 images sends exactly their shards, nothing for the 40 stored.
    with distributed.get_task_stream(client) as stream:
        _, stats = fxd.embed_distributed(images, SPEC, store, client, shard_size=16,
                                         batch_size=8, hash_on="workers")
    assert stats["missing"] == stats["forwarded"] == 20 and stats["tasks"] == 2
    assert len(_shard_tasks(stream)) == 2 and stats["hash_tasks"] == 1
    assert EmbeddingStore(store).count(fp) == 60


class KillMidShard(distributed.WorkerPlugin):
    """Test helper: SIGKILL this worker once a shard file holds committed rows.

    Only the first shard attempt dies: the marker file, created atomically before the
    kill, stops every later attempt (on any worker) from dying too.
    """

    name = "featx-test-kill-mid-shard"

    def __init__(self, marker, folder):
        self.marker, self.folder = marker, folder

    def transition(self, key, start, finish, **kwargs):
        if (finish == "executing" and str(key).startswith(fxd.SHARD_TASK_PREFIX)
                and not os.path.exists(self.marker)):
            threading.Thread(target=self._kill_after_first_commit, daemon=True).start()

    def _kill_after_first_commit(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = os.listdir(self.folder) if os.path.isdir(self.folder) else []
            for name in (n for n in names if n.endswith(".h5")):
                try:
                    shard = EmbeddingStore(os.path.join(self.folder, name), readonly=True)
                    rows = sum(shard.count(fp) for fp in shard.fingerprints())
                except Exception:  # created but not written yet
                    continue
                if rows:
                    try:
                        os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
                    except FileExistsError:
                        return
                    os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.002)  # polling for the first commit, bounded by the deadline


def test_killed_worker_loses_and_duplicates_nothing(client, images, reference, tmp_path):
    ref, fp = reference
    store = str(tmp_path / "emb.h5")
    marker = str(tmp_path / "killed")
    plugin = KillMidShard(marker, fxd.shard_dir(store))
    client.register_plugin(plugin)
    try:
        # One shard of 60 images in batches of 2: 30 commits, a wide window for the kill.
        X, stats = fxd.embed_distributed(images, SPEC, store, client, shard_size=64,
                                         batch_size=2, retries=2, keep_shards=True)
    finally:
        client.unregister_worker_plugin(plugin.name)
    assert os.path.exists(marker), "the worker was never killed"
    # The retried task reopened the same shard file: its committed prefix came back as
    # cache hits and only the rest was forwarded.
    assert stats["resumed"] >= 2 and stats["resumed"] + stats["forwarded"] == 60
    # The shard's audit counter: every committed row was forwarded exactly once, across
    # both attempts (the batch in flight at the kill was never committed, never counted).
    (shard_path,) = [s["path"] for s in stats["shard_stats"]]
    shard = EmbeddingStore(shard_path, readonly=True)
    assert shard.count(fp) == shard.forwarded(fp) == 60
    main = EmbeddingStore(store)
    assert main.count(fp) == 60 == stats["merged"]
    main.verify()
    np.testing.assert_allclose(X, np.stack([ref[p] for p in images]), atol=1e-5)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it; later tests need two


def test_bad_image_raises_or_skips(client, images, reference, tmp_path):
    ref, fp = reference
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.jpg")
    sources = images[:10] + [str(bad)] + images[10:20] + [str(bad), missing]
    with pytest.raises(FeatxError, match="bad.jpg|missing.jpg"):
        fxd.embed_distributed(sources, SPEC, str(tmp_path / "a.h5"), client, shard_size=8)
    X, stats = fxd.embed_distributed(sources, SPEC, str(tmp_path / "b.h5"), client,
                                     shard_size=8, on_error="skip")
    # The bad file fails on a worker (decode), the missing one on the driver (hashing);
    # the bad file's duplicate gets the same failure.
    assert [f[0] for f in stats["failures"]] == [10, 21, 22] and stats["failed"] == 3
    assert all(isinstance(f[0], int) for f in stats["failures"])
    assert np.isnan(X[[10, 21, 22]]).all()
    assert not np.isnan(np.delete(X, [10, 21, 22], axis=0)).any()
    np.testing.assert_allclose(X[:10], np.stack([ref[p] for p in images[:10]]), atol=1e-5)
    assert EmbeddingStore(str(tmp_path / "b.h5")).count(fp) == 20
    _, stats = fxd.embed_distributed(sources, SPEC, str(tmp_path / "b.h5"), client,
                                     on_error="skip", return_vectors=False)
    assert _ is None and stats["failed"] == 3 and stats["tasks"] == 1  # the bad file again


def test_arrays_and_a_built_backbone(client, tmp_path):
    bb = featx.get_backbone(**SPEC)
    pixels = np.random.RandomState(3).randint(0, 256, (12, 36, 36, 3)).astype(np.uint8)
    X, stats = fxd.embed_distributed(pixels, bb, str(tmp_path / "emb.h5"), client,
                                     shard_size=5, batch_size=4)
    expected = featx.Embedder(bb, batch_size=4, progress=False).embed(pixels)
    np.testing.assert_allclose(X, expected, atol=1e-5)
    assert stats["fingerprint"] == bb.fingerprint and stats["tasks"] == 3


def test_float16_store_gets_the_cast_vectors(client, images, reference, tmp_path):
    ref, fp = reference
    store = EmbeddingStore(str(tmp_path / "emb16.h5"), dtype="float16")
    X, _ = fxd.embed_distributed(images[:20], SPEC, store, client, shard_size=8)
    expected = np.stack([ref[p] for p in images[:20]]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(X, expected)


def test_grid_search_on_cached_vectors_with_the_dask_backend(client, images, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, _ = fxd.embed_distributed(images, SPEC, str(tmp_path / "emb.h5"), client,
                                 shard_size=32)
    y = np.arange(len(images)) % 2
    with distributed.get_task_stream(client) as stream, \
            fxd.dask_search_backend(client, scatter=[X, y]):
        search = GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=3,
                              n_jobs=-1).fit(X, y)
    assert search.best_params_["C"] in (0.1, 1.0)
    assert len(stream.data) >= 6  # 2 candidates × 3 folds ran as Dask tasks


def test_dask_vectors_feed_xgboost_dask(client, images, reference, tmp_path):
    ref, fp = reference
    store = str(tmp_path / "emb.h5")
    fxd.embed_distributed(images, SPEC, store, client, shard_size=32)
    keys = fxd.source_keys(images, client, hash_on="workers")
    Xd = fxd.dask_vectors(store, fp, keys, chunk_rows=16)
    assert Xd.chunks[0] == (16, 16, 16, 12)
    np.testing.assert_allclose(Xd.compute(), np.stack([ref[p] for p in images]), atol=1e-5)
    try:
        import xgboost.dask  # noqa: F401
    except ImportError as exc:
        with pytest.raises(MissingDependencyError, match="dask.dataframe|dask\\[dataframe\\]"):
            fxd.make_dask_xgboost(client)
        pytest.skip(f"xgboost.dask does not import here ({exc}); it needs dask[dataframe] "
                    "(pyarrow), which featx's dask extra does not install")
    import dask.array as da

    y = da.from_array(np.arange(len(images)) % 2, chunks=16)
    clf = fxd.make_dask_xgboost(client, n_estimators=5, max_depth=2)
    pred = clf.fit(Xd, y).predict(Xd).compute()
    assert pred.shape == (len(images),)


def test_argument_errors(client, images, tmp_path):
    store = str(tmp_path / "emb.h5")
    with pytest.raises(FeatxError, match="virtual"):
        fxd.embed_distributed(images, SPEC, store, client, merge="virtual")
    with pytest.raises(FeatxError, match="hash_on"):
        fxd.embed_distributed(images, SPEC, store, client, hash_on="gpu")
    with pytest.raises(FeatxError, match="exactly one"):
        fxd.embed_with_cluster(images, SPEC, store)
    with pytest.raises(FeatxError, match="spec"):
        fxd.backbone_spec({"weights": None})


def test_a_resize_policy_fills_its_own_group_as_the_embedder_does(client, images, tmp_path):
    """The driver names the store group as a worker's Embedder does: with
    policy="crop" the shards' rows land under the crop fingerprint, and a squash run
    of the same images into the same store forwards them again."""
    store = str(tmp_path / "emb.h5")
    bb = featx.get_backbone(**SPEC)
    _, crop = fxd.embed_distributed(images[:12], SPEC["name"], store, client, shard_size=6,
                                    weights=None, input_size=32, policy="crop")
    assert crop["fingerprint"] == featx.Embedder(bb, policy="crop").fingerprint != bb.fingerprint
    assert crop["merged"] == 12
    _, squash = fxd.embed_distributed(images[:12], SPEC["name"], store, client, shard_size=6,
                                      weights=None, input_size=32)
    assert squash["fingerprint"] == bb.fingerprint and squash["forwarded"] == 12
    assert sorted(EmbeddingStore(store).fingerprints()) == sorted(
        [crop["fingerprint"], bb.fingerprint])
