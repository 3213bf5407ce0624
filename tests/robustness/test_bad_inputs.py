"""Every kind of the bad-input corpus through every door featx has for pixels.

Doors: ``decode_image``, ``Embedder`` (raise and skip), ``ImageEmbedder``,
the ``featx embed`` CLI, and ``FineTuneClassifier.predict_proba``. A bad kind
must end in a :class:`~featx.errors.FeatxError` naming the file (raise) or a
reported skip (skip) — never another exception type, never a hang
(``pytest-timeout`` per test), never a stored row for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import featx
from featx.errors import FeatxError
from featx.images import decode_image, list_images
from featx.store import EmbeddingStore

from corpus import KINDS

ALL_KINDS = sorted(KINDS)


def _case(corpus, kind):
    cases, skipped = corpus
    if kind in skipped:
        pytest.skip(f"{kind}: {skipped[kind]}")
    return next(c for c in cases if c.kind == kind)


def _assert_clear(exc: BaseException, path: str) -> None:
    """A FeatxError whose first line names the path; no Pillow/Keras type escapes."""
    assert isinstance(exc, FeatxError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert path in str(exc).splitlines()[0], str(exc)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_decode_image(corpus, kind):
    case = _case(corpus, kind)
    if case.expectation == "ok":
        x = decode_image(case.path, (32, 32))
        assert x.shape == (32, 32, 3) and x.dtype == np.uint8
        return
    with pytest.raises(FeatxError) as info:
        decode_image(case.path, (32, 32))
    _assert_clear(info.value, case.path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_embedder_raise_mode(corpus, backbone, kind, tmp_path):
    case = _case(corpus, kind)
    store = EmbeddingStore(tmp_path / "emb.h5")
    emb = featx.Embedder(backbone, store=store, batch_size=4, on_error="raise", progress=False)
    if case.expectation == "ok":
        X = emb.embed([case.path])
        assert X.shape == (1, backbone.dim) and np.isfinite(X).all()
        assert store.count(backbone.fingerprint) == 1
        store.verify()
        return
    with pytest.raises(FeatxError) as info:
        emb.embed([case.path])
    _assert_clear(info.value, case.path)
    assert store.count(backbone.fingerprint) == 0  # nothing half-written for it


@pytest.mark.timeout(300)
def test_embedder_skip_mode_whole_corpus(corpus, backbone, tmp_path):
    cases, _ = corpus
    paths = [c.path for c in cases]
    store = EmbeddingStore(tmp_path / "emb.h5")
    emb = featx.Embedder(backbone, store=store, batch_size=4, on_error="skip", progress=False)
    X, mask = emb.embed(paths, return_mask=True)
    bad = {c.path for c in cases if c.expectation == "error"}
    assert {f.source for f in emb.failures_} == bad
    assert all(f.reason and f.source in f.reason for f in emb.failures_)
    assert [p in bad for p in paths] == list(~mask)
    assert np.isfinite(X[mask]).all() and np.isnan(X[~mask]).all()
    assert emb.stats["failed"] == len(bad)
    n_ok = len(cases) - len(bad)
    assert store.count(backbone.fingerprint) == n_ok == emb.stats["forwarded"]
    report = store.verify()
    assert report["backbones"][0]["rows"] == n_ok
    # A second pass forwards nothing and skips the same files.
    X2 = featx.Embedder(backbone, store=store, batch_size=4, on_error="skip",
                        progress=False).embed(paths)
    np.testing.assert_array_equal(X2[mask], X[mask])
    assert store.count(backbone.fingerprint) == n_ok


@pytest.mark.timeout(300)
def test_image_embedder_transform(corpus, tmp_path):
    cases, _ = corpus
    paths = [c.path for c in cases]
    bad = [c for c in cases if c.expectation == "error"]
    skip = featx.ImageEmbedder("mobilenet_v2", weights=None, input_size=32, batch_size=4,
                               on_error="skip", cache=str(tmp_path / "emb.h5"))
    X = skip.fit_transform(paths)
    rows_nan = np.isnan(X).all(axis=1)
    assert [c.expectation == "error" for c in cases] == rows_nan.tolist()
    strict = featx.ImageEmbedder("mobilenet_v2", weights=None, input_size=32, batch_size=4,
                                 cache=str(tmp_path / "emb.h5")).fit(paths[:1])
    good = next(c.path for c in cases if c.expectation == "ok")
    for case in bad:
        with pytest.raises(FeatxError) as info:
            strict.transform([good, case.path])
        _assert_clear(info.value, case.path)
    EmbeddingStore(tmp_path / "emb.h5").verify()


def _featx(*args, timeout=240):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "featx.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


_CLI_MODEL = ["--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "32",
              "--batch-size", "4"]


@pytest.mark.timeout(300)
def test_cli_skip_run_over_the_corpus_folder(corpus, tmp_path):
    cases, _ = corpus
    folder = os.path.dirname(cases[0].path)
    cache = str(tmp_path / "cli.h5")
    run = _featx("embed", folder, "--cache", cache, "--on-error", "skip", "--json", *_CLI_MODEL)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    result = json.loads(run.stdout)
    listed = set(list_images(folder))
    expected_skips = {c.path for c in cases if c.expectation == "error" and c.path in listed}
    assert {f["source"] for f in result["failures"]} == expected_skips
    # Entries that are not files (link loop, dangling link, dir.jpg/) are never listed.
    assert not any(c.path in listed for c in cases if not c.listed)
    n_ok = sum(c.expectation == "ok" for c in cases)
    assert result["stats"]["forwarded"] == n_ok
    assert result["stats"]["failed"] == len(expected_skips)
    report = EmbeddingStore(cache, readonly=True).verify()
    assert report["backbones"][0]["rows"] == n_ok


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["pixel_bomb_png", "truncated_jpeg", "html_as_png"])
def test_cli_raise_mode_one_line_error(corpus, kind, tmp_path):
    case = _case(corpus, kind)
    cache = str(tmp_path / "cli.h5")
    run = _featx("embed", case.path, "--cache", cache, "--quiet", *_CLI_MODEL)
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("featx: error:") and case.path in last


@pytest.fixture(scope="module")
def untrained_classifier():
    """A FineTuneClassifier 'fitted' with epochs=(0, 0): the graph, no training (cheap)."""
    rng = np.random.RandomState(0)
    x = rng.randint(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    clf = featx.FineTuneClassifier("mobilenet_v2", weights=None, input_size=32, head=(4,),
                                   epochs=(0, 0), augment=None, batch_size=4,
                                   validation_fraction=0, early_stopping=False)
    return clf.fit(x, ["a", "b", "a", "b"])


@pytest.mark.timeout(300)
def test_finetune_predict_over_the_corpus(corpus, untrained_classifier):
    cases, _ = corpus
    good = [c.path for c in cases if c.expectation == "ok"]
    proba = untrained_classifier.predict_proba(good)
    assert proba.shape == (len(good), 2) and np.isfinite(proba).all()
    for case in (c for c in cases if c.expectation == "error"):
        with pytest.raises(FeatxError) as info:
            untrained_classifier.predict_proba([good[0], case.path])
        _assert_clear(info.value, case.path)


@pytest.mark.timeout(60)
def test_lowered_pixel_limit_refuses_real_image(corpus, monkeypatch):
    """A real 48×40 image above a lowered MAX_IMAGE_PIXELS is refused (featx refuses at
    1× the limit, where Pillow itself would only warn)."""
    case = _case(corpus, "valid_jpeg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 40 - 1)
    with pytest.raises(FeatxError, match="decompression-bomb") as info:
        decode_image(case.path, (32, 32))
    _assert_clear(info.value, case.path)
