"""featx.audit / featx.similar, the store's path table, and `featx audit` / `featx similar`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

import featx
from featx.errors import InvalidParameterError, MissingDependencyError, StoreError
from featx.quality import (PixelVerifier, calibrate, copy_score, label_issues, near_copy,
                           nearest, neighbour_backend, thumbnail, unit_rows)
from featx.store import STORE_VERSION, EmbeddingStore

pytest.importorskip("pandas")
FEATX = shutil.which("featx", path=os.path.dirname(sys.executable)) or shutil.which("featx")
TINY = dict(backbone="mobilenet_v2", weights=None, input_size=32)


def run(*args, timeout=300, cwd=None):
    return subprocess.run([FEATX, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _blobs(n, seed, light):
    """Images a random network still tells apart: dark vs light, with texture."""
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 110, (n, 40, 40, 3)).astype(np.uint8)
    return base + (130 if light else 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A class-folder tree of 2 × 12 PNG files with distinct content."""
    root = tmp_path_factory.mktemp("quality") / "data"
    for cls, light in (("dark", False), ("light", True)):
        os.makedirs(root / cls)
        for i, img in enumerate(_blobs(12, 7 + light, light)):
            Image.fromarray(img).save(root / cls / f"{i:02d}.png")
    return root


# ----------------------------------------------------------------- the store's paths


def test_remember_paths_keeps_the_last_path_of_each_key(tmp_path):
    store = EmbeddingStore(tmp_path / "e.h5")
    assert store.remember_paths([b"a" * 32, b"b" * 32], ["x/1.png", "x/2.png"]) == 2
    assert store.remember_paths([b"a" * 32], ["x/1.png"]) == 0  # known: nothing written
    assert store.remember_paths([b"a" * 32], ["y/1.png"]) == 1  # moved: the new path wins
    fresh = EmbeddingStore(tmp_path / "e.h5")  # another process's view
    assert fresh.paths_of([b"a" * 32, b"b" * 32, b"c" * 32]) == [
        os.path.abspath("y/1.png"), os.path.abspath("x/2.png"), None]
    assert fresh.verify()["paths"] == 3 and fresh.info()["paths"] == 3
    with pytest.raises(StoreError, match="2 keys but 1 paths"):
        store.remember_paths([b"a" * 32, b"b" * 32], ["z"])


def test_a_format_1_store_is_read_then_migrated_by_its_first_write(tmp_path):
    path = tmp_path / "old.h5"
    store = EmbeddingStore(path)
    store.put("ab" * 32, [b"a" * 32], np.ones((1, 4), np.float32), spec={"name": "m"})
    with h5py.File(path, "r+") as f:  # what featx wrote before format 2
        del f["sources"]
        f.attrs["featx_store_version"] = 1
    old = EmbeddingStore(path)
    assert old.info()["store_version"] == 1 and old.paths_of([b"a" * 32]) == [None]
    vectors, found = old.get("ab" * 32, [b"a" * 32])
    assert found.all() and vectors[0].tolist() == [1, 1, 1, 1]
    assert old.remember_paths([b"a" * 32], ["cat.png"]) == 1
    with h5py.File(path, "r") as f:
        assert int(f.attrs["featx_store_version"]) == STORE_VERSION == 2
        assert "sources" in f
    assert old.verify()["ok"] and old.get("ab" * 32, [b"a" * 32])[1].all()


def test_merging_a_shard_carries_its_paths(tmp_path):
    shard = EmbeddingStore(tmp_path / "shard.h5")
    shard.put("ab" * 32, [b"a" * 32], np.ones((1, 4), np.float32), spec={})
    shard.remember_paths([b"a" * 32], ["/data/a.png"])
    main = EmbeddingStore(tmp_path / "main.h5")
    assert main.merge_from(shard) == {"ab" * 32: 1}
    assert EmbeddingStore(tmp_path / "main.h5").paths_of([b"a" * 32]) == ["/data/a.png"]


def test_the_engine_records_where_it_read_each_file(folder, tmp_path):
    cache = tmp_path / "emb.h5"
    featx.ImageEmbedder(**TINY, cache=str(cache)).fit_transform(str(folder))
    from featx.engine import key_source
    from featx.images import as_sources

    items = as_sources(str(folder))
    keys = [key_source(item)[0] for item in items]
    store = EmbeddingStore(cache)
    assert store.paths_of(keys) == [os.path.abspath(item.path) for item in items]
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    # Every vector is cached: the fast path answers, and still records the new place.
    featx.ImageEmbedder(**TINY, cache=str(cache)).fit_transform(str(moved))
    assert all(p.startswith(str(moved)) for p in EmbeddingStore(cache).paths_of(keys))


# ----------------------------------------------------------------- the checks


def test_nearest_excludes_each_row_itself_and_agrees_across_backends():
    rng = np.random.RandomState(0)
    X = unit_rows(rng.randn(300, 16))
    X[5] = X[9]  # an exact copy ties with the row itself
    sims, idx = nearest(X, 3, backend="sklearn")
    assert not (idx == np.arange(300)[:, None]).any()
    assert idx[5, 0] == 9 and idx[9, 0] == 5 and sims[5, 0] == pytest.approx(1.0)
    if neighbour_backend() == "faiss":
        f_sims, f_idx = nearest(X, 3, backend="faiss")
        np.testing.assert_allclose(f_sims, sims, atol=1e-5)
        assert (f_idx[:, 0] == idx[:, 0]).mean() > 0.99


def test_calibration_raises_the_threshold_when_distinct_images_look_like_copies():
    clear = calibrate(np.linspace(0.95, 1.0, 200), np.linspace(0.3, 0.9, 200))
    assert not clear.raised and clear.copy_recall >= 0.98 and clear.distinct_above == 0
    blurred = calibrate(np.linspace(0.7, 0.99, 200), np.linspace(0.6, 0.97, 200))
    assert blurred.raised and blurred.distinct_above <= 0.05 and blurred.copy_recall < 0.3
    # A few real duplicates among the sampled images do not raise it.
    dups = calibrate(np.linspace(0.93, 0.99, 200),
                     np.concatenate([np.linspace(0.5, 0.9, 194), np.full(6, 0.98)]))
    assert not dups.raised
    with pytest.raises(featx.errors.InvalidDataError, match="threshold="):
        calibrate([], [0.5])


def test_near_copy_changes_size_and_bytes_but_keeps_the_picture():
    image = np.asarray(Image.new("RGB", (200, 150), (30, 90, 200)))
    image = image.copy()
    image[40:110, 50:150] = (240, 240, 20)
    copy = near_copy(image, np.random.default_rng(3))
    assert copy.shape != image.shape and 130 <= copy.shape[0] <= 166
    small = np.asarray(Image.fromarray(copy).resize((40, 30)), float)
    ref = np.asarray(Image.fromarray(image).resize((40, 30)), float)
    assert np.abs(small - ref).mean() < 20


def test_copy_score_tells_near_copies_from_look_alikes_on_real_photos(tmp_path, monkeypatch):
    # Trousers of Fashion-MNIST, upscaled as in the benchmark: distinct ones look alike
    # to a backbone (cosine 0.93-0.96), which is why pairs are verified on pixels.
    from featx.datasets import FASHION_MNIST_DIR, load_fashion_mnist

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("FEATX_HOME", str(tmp_path))
    paths, y, _ = load_fashion_mnist("test", limit=200)
    trousers = [np.asarray(Image.open(p).convert("RGB").resize((112, 112), Image.BICUBIC))
                for p, label in zip(paths, y) if label == 1]
    rng = np.random.default_rng(0)
    thumbs = [thumbnail(image) for image in trousers]
    copies = [copy_score(t, thumbnail(near_copy(image, rng)))
              for t, image in zip(thumbs, trousers)]
    distinct = [copy_score(thumbs[i], thumbs[j])
                for i in range(len(thumbs)) for j in range(i + 1, len(thumbs))]
    assert len(trousers) == 20
    assert np.quantile(copies, 0.1) > np.quantile(distinct, 0.99), (
        np.quantile(copies, 0.1), np.quantile(distinct, 0.99))
    # Less what their look-alikes share (the mean of their nearest neighbours), distinct
    # trousers stop looking alike, and copies still match.
    neighbours = nearest(unit_rows(np.stack(thumbs).reshape(len(thumbs), -1)), 6)[1]
    verifier = PixelVerifier(trousers.__getitem__, neighbours=neighbours)
    rng = np.random.default_rng(0)
    with_template = [verifier.copy_scores(i, [near_copy(image, rng)])[0]
                     for i, image in enumerate(trousers)]
    look_alikes = verifier.scores([(i, int(neighbours[i, 0])) for i in range(len(thumbs))])
    plain_look_alikes = [copy_score(thumbs[i], thumbs[int(neighbours[i, 0])])
                         for i in range(len(thumbs))]
    assert np.median(look_alikes) < np.median(plain_look_alikes) - 0.2
    assert np.quantile(with_template, 0.1) > np.quantile(look_alikes, 0.99)
    # The verifier scores as copy_score does, thumbnails decoded once; unreadable is NaN.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    verifier = PixelVerifier([trousers[0], trousers[1], str(broken)].__getitem__)
    scores = verifier.scores([(0, 1), (0, 2)])
    assert scores[0] == pytest.approx(distinct[0], abs=1e-6) and np.isnan(scores[1])
    assert verifier.failed == 1


def test_verification_in_worker_processes_scores_as_one_process_does(monkeypatch, tmp_path):
    import featx.quality._verify as verify

    rng = np.random.RandomState(3)
    images = [np.asarray(Image.fromarray(rng.randint(0, 255, (12, 12, 3)).astype(np.uint8))
                         .resize((60, 60))) for _ in range(16)]
    images[5] = images[4][2:, 1:]  # a crop among them
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    paths[7] = str(tmp_path / "gone.png")  # unreadable: NaN either way
    neighbours = nearest(unit_rows(np.stack([thumbnail(im) for im in images]).reshape(16, -1)),
                         4)[1]
    pairs = [(i, j) for i in range(16) for j in range(i + 1, 16)]
    alone = verify.PixelVerifier(paths.__getitem__, neighbours).scores(pairs)
    monkeypatch.setattr(verify, "PARALLEL_PAIRS", 10)
    spread = verify.verify_pairs(verify.PixelVerifier(paths.__getitem__, neighbours), pairs,
                                 n_jobs=2)
    np.testing.assert_allclose(spread, alone, rtol=1e-6)
    assert np.isnan(spread[pairs.index((4, 7))]) and spread[pairs.index((4, 5))] > 0.9


def test_calibration_with_pixels_keeps_candidates_wide_and_the_pixel_threshold_guarded():
    cosine = np.linspace(0.80, 0.99, 200)  # copies a backbone confuses with look-alikes
    cal = calibrate(cosine, np.linspace(0.7, 0.97, 200), pixel_copies=np.linspace(0.99, 1, 200),
                    pixel_distinct=np.linspace(0.5, 0.98, 200))
    assert cal.verified and cal.threshold == pytest.approx(0.80, abs=0.002)
    assert not cal.raised and cal.copy_recall >= 0.97
    flat = calibrate(cosine, [], pixel_copies=np.linspace(0.9, 1, 200),
                     pixel_distinct=np.linspace(0.9, 1, 200))  # images with no pattern
    assert flat.raised and flat.pixel_threshold > 0.99
    given = calibrate([], [], pixel_copies=[0.99, 1.0], threshold=0.5)
    assert given.given and given.threshold == 0.5 and given.verified
    with pytest.raises(featx.errors.InvalidDataError, match="verify=False"):
        calibrate(cosine, [], pixel_copies=[np.nan])


def test_label_issues_find_flipped_labels_and_name_the_extra_when_missing(monkeypatch):
    rng = np.random.RandomState(0)
    codes = np.repeat([0, 1, 2], 40)
    proba = np.full((120, 3), 0.05)
    proba[np.arange(120), codes] = 0.9
    flipped = [3, 50, 100]
    noisy = codes.copy()
    noisy[flipped] = (codes[flipped] + 1) % 3
    proba += rng.uniform(0, 0.02, proba.shape)
    proba[7] = np.nan  # in no held-out fold: not judged
    found = [issue["index"] for issue in label_issues(noisy, proba)]
    assert sorted(found[:3]) == flipped and 7 not in found
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    with pytest.raises(MissingDependencyError, match=r"featx\[audit\]"):
        label_issues(noisy, proba)


# ----------------------------------------------------------------- featx.audit


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """Train 2 × 15 arrays, a test split holding one training image and its near copy,
    and one training label flipped."""
    dark, light = _blobs(16, 1, False), _blobs(16, 2, True)
    train = np.concatenate([dark[:15], light[:15]])
    y = np.array(["dark"] * 15 + ["light"] * 15, dtype=object)
    y[4] = "light"  # a flipped label
    test = np.stack([train[20], dark[15], light[15]])  # test[0] is train[20], byte for byte
    return train, y, test, np.array(["light", "dark", "light"], dtype=object)


def test_audit_finds_exact_leakage_across_the_split_and_the_flipped_label(leaky, tmp_path):
    train, y, test, y_test = leaky
    cache = str(tmp_path / "emb.h5")
    result = featx.audit(train, y, test=(test, y_test), **TINY, cv=3, cache=cache,
                         calibration_pairs=20, map_points=40)
    summary = result.summary()
    exact = result.duplicates[result.duplicates["kind"] == "exact"]
    assert len(exact) == 1 and exact.iloc[0]["relation"] == "train/test"
    assert {exact.iloc[0]["a"], exact.iloc[0]["b"]} == {20, 30}
    assert summary["train_test_pairs"] >= 1 and summary["leaking_pairs"] >= 1
    assert 4 in result.label_issues["index"].tolist()[:3]
    issue = result.label_issues.set_index("index").loc[4]
    assert issue["given"] == "light" and issue["suggested"] == "dark"
    assert set(result.split) == {"train", "test"} and (result.fold[30:] == -1).all()
    assert sorted(set(result.fold[:30])) == [0, 1, 2]
    assert 5 <= len(result.map) <= 33 and set(result.map.columns) >= {"x", "y", "flag"}
    assert "label issue" in set(result.map["flag"])
    assert list(result.budget["fraction"]) == [0.05, 0.1, 0.25, 0.5, 1.0]
    assert result.calibration is not None and len(result.calibration.copies) == 20
    json.dumps(result.to_json())  # serialisable as it is
    # A warm cache forwards nothing, not even the calibration copies.
    again = featx.audit(train, y, test=(test, y_test), **TINY, cv=3, cache=cache,
                        calibration_pairs=20, checks=["duplicates"])
    assert again.stats["forwarded"] == 0 and again.stats["calibration_forwarded"] == 0
    assert again.calibration.threshold == pytest.approx(result.calibration.threshold)


def test_candidates_past_the_verification_limit_are_counted_not_reported(monkeypatch):
    import featx.quality._checks as checks

    monkeypatch.setattr(checks, "MAX_VERIFIED", 2)
    unit = unit_rows(np.random.RandomState(0).randn(12, 4))
    split, fold = np.array(["train"] * 12), np.zeros(12, int)
    asked, counts = [], {}

    def verify(pairs):
        asked.extend(pairs)
        return np.ones(len(pairs))

    pairs = checks.duplicate_pairs([bytes([i]) * 32 for i in range(12)], unit, -1.0, split,
                                   fold, k=3, verify=verify, pixel_threshold=0.5, stats=counts)
    assert len(asked) == len(pairs) == 2 and counts["verified"] == 2
    assert counts["beyond_verify_limit"] == counts["candidates"] - 2 > 0
    # the most similar candidates are the ones verified: here the two most similar pairs
    everything = np.sort([unit[a] @ unit[b] for a in range(12) for b in range(a + 1, 12)])
    np.testing.assert_allclose(sorted(p["similarity"] for p in pairs), everything[-2:],
                               rtol=1e-5)


def test_pixel_verification_keeps_the_copies_and_drops_the_look_alikes(leaky):
    train, y, test, y_test = leaky
    copy = near_copy(np.asarray(Image.fromarray(train[21]).resize((80, 80))),
                     np.random.default_rng(1))
    test = np.stack([*test, np.asarray(Image.fromarray(copy).resize((40, 40)))])
    y_test = np.append(y_test, "light")
    # Every neighbour a candidate: the vectors alone report pairs of distinct images ...
    loose = featx.audit(train, y, test=(test, y_test), **TINY, cv=3, threshold=0.0,
                        verify=False, checks=["duplicates"])
    assert (loose.duplicates["kind"] == "near").sum() > 20
    # ... the pixels keep the exact and the near copy, both across the split.
    checked = featx.audit(train, y, test=(test, y_test), **TINY, cv=3, threshold=0.0,
                          calibration_pairs=20, checks=["duplicates"])
    found = {(int(r.a), int(r.b)): r for r in checked.duplicates.itertuples()}
    assert set(found) == {(20, 30), (21, 33)}, checked.duplicates
    assert found[(21, 33)].kind == "near" and found[(21, 33)].relation == "train/test"
    assert found[(21, 33)].pixel_score >= checked.calibration.pixel_threshold
    assert checked.stats["calibration_forwarded"] == 0  # a given threshold embeds no copy
    assert checked.stats["duplicate_verified"] == checked.stats["duplicate_candidates"] > 20


def test_audit_uses_given_folds_and_probabilities(leaky):
    train, y, _, _ = leaky
    folds = [(np.arange(15, 30), np.arange(0, 15)), (np.arange(0, 15), np.arange(15, 30))]
    proba = np.tile([0.9, 0.1], (30, 1))
    proba[15:] = [0.1, 0.9]
    result = featx.audit(train, y, **TINY, cv=folds, proba=proba, threshold=0.9999,
                         checks=["duplicates", "labels"])
    assert result.fold[:15].tolist() == [0] * 15 and result.fold[15:].tolist() == [1] * 15
    assert result.label_issues["index"].tolist() == [4]
    assert result.calibration.given and result.stats["calibration_forwarded"] == 0
    with pytest.raises(featx.errors.InvalidDataError, match="one row per training image"):
        featx.audit(train, y, **TINY, cv=folds, proba=proba[:, :1], checks=["labels"])
    with pytest.raises(InvalidParameterError, match="unknown checks"):
        featx.audit(train, y, **TINY, checks=["spelling"])


def test_audit_skips_an_unreadable_file_and_audits_the_rest(folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    paths = sorted(str(p) for p in folder.rglob("*.png"))[:6] + [str(bad)]
    result = featx.audit(paths, **TINY, checks=["duplicates"], threshold=0.9999)
    assert result.labels is None and len(result.skipped) == 1
    assert result.skipped[0][0] == str(bad) and result.summary()["images"] == 6


# ----------------------------------------------------------------- featx.similar


def test_similar_finds_the_image_a_near_copy_was_made_from(tmp_path):
    folder = tmp_path / "photos"
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    for i in range(12):  # distinct colours and layouts: a random network tells them apart
        img = np.zeros((48, 64, 3), np.uint8) + rng.randint(0, 255, 3).astype(np.uint8)
        top, left = rng.randint(0, 24, 2)
        img[top:top + 20, left:left + 36] = rng.randint(0, 255, 3)
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    cache = str(tmp_path / "emb.h5")
    featx.ImageEmbedder(**TINY, cache=cache).fit_transform(str(folder))
    target = folder / "03.png"
    query = tmp_path / "query.jpg"
    Image.fromarray(near_copy(np.asarray(Image.open(target)), np.random.default_rng(0))).save(
        query, quality=90)
    matches = featx.similar(str(query), cache, **TINY, k=3)
    assert len(matches) == 3 and matches[0].path == str(target)
    assert matches[0].similarity >= matches[1].similarity >= matches[2].similarity
    rows = EmbeddingStore(cache).count(featx.get_backbone("mobilenet_v2", weights=None,
                                                          input_size=32).fingerprint)
    assert rows == 12  # the query was looked up, not added to the collection
    with pytest.raises(StoreError, match="no vectors of efficientnet_lite0"):
        featx.similar(str(query), cache, backbone="efficientnet_lite0", weights=None,
                      input_size=32)
    with pytest.raises(InvalidParameterError, match="k must be"):
        featx.similar(str(query), cache, **TINY, k=0)


# ----------------------------------------------------------------- the commands


@pytest.mark.skipif(FEATX is None, reason="featx entry point not installed")
def test_featx_audit_writes_the_report_and_the_findings(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "data")
    shutil.copy(folder / "dark" / "00.png", tmp_path / "data" / "light" / "dup.png")
    out = tmp_path / "out"
    done = run("audit", tmp_path / "data", "--out", out, "-b", "mobilenet_v2", "--weights",
               "none", "--input-size", 32, "--cv", 3, "--runtime", "keras", "--map-points",
               30, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "exact duplicate pairs: 1" in done.stdout and "report:" in done.stdout
    findings = json.loads((out / "audit.json").read_text())
    assert findings["summary"]["exact_pairs"] == 1
    pair = findings["duplicates"][0]
    assert {os.path.basename(pair["source_a"]), os.path.basename(pair["source_b"])} == {
        "00.png", "dup.png"}
    page = (out / "audit.html").read_text()
    assert "<svg" in page and page.count("<title>") >= 20 and "Label budget" in page
    assert "array(" not in page and "{'" not in page
    assert (out / "duplicates.csv").exists() and (out / "map.png").exists()
    # Re-run as JSON: the cache answers every image.
    again = run("audit", tmp_path / "data", "--out", out, "-b", "mobilenet_v2", "--weights",
                "none", "--input-size", 32, "--cv", 3, "--runtime", "keras", "--json",
                "--checks", "duplicates", timeout=600)
    assert again.returncode == 0, again.stderr
    stats = json.loads(again.stdout)["stats"]
    assert stats["forwarded"] == 0 and stats["calibration_forwarded"] == 0

    found = run("similar", tmp_path / "data" / "light" / "05.png", "--cache",
                out / "embeddings.h5", "-b", "mobilenet_v2", "--weights", "none",
                "--input-size", 32, "--k", 2, "--json")
    assert found.returncode == 0, found.stderr
    matches = json.loads(found.stdout)["matches"]
    assert matches[0]["path"].endswith(os.path.join("light", "05.png"))
    missing = run("similar", tmp_path / "nope.png", "--cache", out / "embeddings.h5")
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.skipif(FEATX is None, reason="featx entry point not installed")
def test_featx_audit_on_a_flat_folder_checks_duplicates_only(folder, tmp_path):
    flat = tmp_path / "flat"
    os.makedirs(flat)
    for i, path in enumerate(sorted(folder.rglob("*.png"))[:8]):
        shutil.copy(path, flat / f"{i}.png")
    shutil.copy(flat / "0.png", flat / "again.png")
    done = run("audit", flat, "--out", tmp_path / "out", "-b", "mobilenet_v2", "--weights",
               "none", "--input-size", 32, "--runtime", "keras", "--threshold", "0.9999",
               "--json")
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)
    assert findings["summary"]["exact_pairs"] == 1 and findings["label_issues"] == []
    assert findings["duplicates"][0]["relation"] == "within set"
    assert findings["calibration"]["verified"] and findings["summary"]["pixel_threshold"] > 0
    # --no-verify: cosine alone, and the JSON says so.
    loose = run("audit", flat, "--out", tmp_path / "out", "-b", "mobilenet_v2", "--weights",
                "none", "--input-size", 32, "--runtime", "keras", "--threshold", "0.0",
                "--no-verify", "--json")
    assert loose.returncode == 0, loose.stderr
    loose = json.loads(loose.stdout)
    assert loose["calibration"]["verified"] is False and loose["summary"]["near_pairs"] > 3


def test_too_many_folds_name_the_classes_that_are_too_small(leaky):
    train, y, _, _ = leaky
    with pytest.raises(featx.errors.InvalidDataError, match=r"too few in: dark \(14\)\. Lower cv"):
        featx.audit(train, y, **TINY, cv=15, checks=["labels"])
