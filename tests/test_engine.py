"""The extraction engine: correctness, caching, crash safety, concurrency, bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import featx
from featx.engine import Embedder, clear_memo
from featx.errors import FeatxError, ImageDecodeError
from featx.images import decode_image
from featx.store import EmbeddingStore

from _imagegen import make_jpegs

SIZE = 32
BACKBONE_ARGS = dict(name="mobilenet_v2", weights=None, input_size=SIZE)


@pytest.fixture(scope="module")
def bb():
    return featx.get_backbone(**BACKBONE_ARGS)


def direct_vectors(bb, paths):
    """The backbone called directly on the same decoded, preprocessed batch."""
    pixels = np.stack([decode_image(p, (bb.input_size, bb.input_size)) for p in paths])
    return np.asarray(bb.model(bb.preprocess(pixels), training=False))


@pytest.mark.backend_smoke
def test_vectors_equal_a_direct_call_in_input_order(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 21)
    shuffled = [paths[i] for i in np.random.RandomState(1).permutation(len(paths))]
    emb = Embedder(bb, batch_size=8, progress=False)
    X = emb.embed(shuffled)
    assert X.dtype == np.float32 and X.shape == (21, bb.dim)
    np.testing.assert_allclose(X, direct_vectors(bb, shuffled), atol=1e-5)


@pytest.mark.backend_smoke
def test_batches_kept_in_flight_store_every_vector_once_in_input_order(bb, tmp_path):
    # On JAX the engine dispatches batch n+1 before it collects batch n (holding the
    # store's writer lock across both); the vectors, their order and the store's
    # contents are those of one batch at a time.
    import keras

    paths = make_jpegs(tmp_path / "imgs", 37, seed=5)
    store = str(tmp_path / "emb.h5")
    emb = Embedder(bb, store=store, batch_size=4, progress=False)
    X = emb.embed(paths)
    np.testing.assert_allclose(X, direct_vectors(bb, paths), atol=1e-5)
    assert emb.stats["forwarded"] == 37
    assert EmbeddingStore(store).count(emb.fingerprint) == 37
    again = Embedder(bb, store=store, batch_size=4, progress=False)
    np.testing.assert_array_equal(again.embed(paths[::-1]), X[::-1])
    assert again.stats["forwarded"] == 0
    running = emb._forward.dispatch(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert running.asynchronous == (keras.backend.backend() == "jax")
    assert running.result().shape == (2, bb.dim)


def test_second_pass_forwards_nothing_even_after_renames_and_copies(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 210, seed=2)
    store_path = str(tmp_path / "emb.h5")
    first = Embedder(bb, store=store_path, batch_size=32, progress=False)
    X1 = first.embed(paths)
    assert first.stats["forwarded"] == 210 and first.stats["cache_hits"] == 0

    # Rename half, copy the rest into another folder: identity is content, not path.
    moved = []
    for i, p in enumerate(paths):
        if i % 2:
            target = os.path.join(tmp_path, "renamed", f"x_{i}.jpeg")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(p, target)
        else:
            target = os.path.join(tmp_path, "copied", os.path.basename(p))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(p, target)
        moved.append(target)
    second = Embedder(bb, store=store_path, batch_size=32, progress=False)
    X2 = second.embed(moved)
    assert second.stats["forwarded"] == 0
    assert second.stats["cache_hits"] == 210
    np.testing.assert_array_equal(X1, X2)

    # An edited file misses the cache; everything else still hits.
    with Image.open(moved[0]) as im:
        im.rotate(90).save(moved[0])
    third = Embedder(bb, store=store_path, batch_size=32, progress=False)
    third.embed(moved)
    assert third.stats["forwarded"] == 1


def test_duplicates_within_a_call_are_forwarded_once(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 10)
    clear_memo()
    emb = Embedder(bb, batch_size=4, progress=False)
    X = emb.embed(paths + paths[:3] + paths)
    assert emb.stats["unique"] == 10 and emb.stats["forwarded"] == 10
    np.testing.assert_array_equal(X[:10], X[13:])
    np.testing.assert_array_equal(X[:3], X[10:13])


def test_without_a_store_the_process_memo_prevents_re_embedding(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 12)
    clear_memo()
    Embedder(bb, batch_size=8, progress=False).embed(paths)
    again = Embedder(bb, batch_size=8, progress=False)
    again.embed(paths[::-1])
    assert again.stats["forwarded"] == 0 and again.stats["cache_hits"] == 12


@pytest.mark.backend_smoke
def test_uint8_arrays_are_sources_too(bb):
    images = np.random.RandomState(3).randint(0, 256, (5, SIZE, SIZE, 3)).astype(np.uint8)
    emb = Embedder(bb, batch_size=4, progress=False)
    X = emb.embed(images)
    expected = np.asarray(bb.model(bb.preprocess(images), training=False))
    np.testing.assert_allclose(X, expected, atol=1e-5)


def test_float16_store_round_trips_within_1e3_relative(bb, tmp_path):
    # (File size halving is measured by tests/test_store.py on 4000 x 1280 rows.)
    paths = make_jpegs(tmp_path / "imgs", 64, seed=4)
    f32, f16 = str(tmp_path / "f32.h5"), str(tmp_path / "f16.h5")
    X32 = Embedder(bb, store=EmbeddingStore(f32), progress=False).embed(paths)
    Embedder(bb, store=EmbeddingStore(f16, dtype="float16"), progress=False).embed(paths)
    again = Embedder(bb, store=EmbeddingStore(f16, dtype="float16"), progress=False)
    X16 = again.embed(paths)
    assert again.stats["forwarded"] == 0
    scale = np.maximum(np.abs(X32), 1e-2)
    assert np.max(np.abs(X16 - X32) / scale) < 1e-3
    size32 = EmbeddingStore(f32).info()["backbones"][0]
    size16 = EmbeddingStore(f16).info()["backbones"][0]
    assert size16["dtype"] == "float16" and size32["dtype"] == "float32"


# --------------------------------------------------------------------------- bad input


def make_bad_inputs(folder):
    """One file per kind of bad input, plus good images around them."""
    os.makedirs(folder, exist_ok=True)
    good = make_jpegs(os.path.join(folder, "good"), 6, seed=5)
    data = open(good[0], "rb").read()
    bad = {}
    bad["truncated"] = os.path.join(folder, "truncated.jpg")
    open(bad["truncated"], "wb").write(data[: len(data) // 2])
    bad["zero_byte"] = os.path.join(folder, "empty.jpg")
    open(bad["zero_byte"], "wb").close()
    bad["text_as_jpg"] = os.path.join(folder, "notes.jpg")
    open(bad["text_as_jpg"], "w").write("this is not an image\n" * 20)
    bad["missing"] = os.path.join(folder, "does_not_exist.jpg")
    bad["bomb"] = os.path.join(folder, "bomb.png")
    Image.new("L", (4000, 4000)).save(bad["bomb"])  # 16 MP; the test lowers the limit
    return good, bad


BAD_KINDS = ["truncated", "zero_byte", "text_as_jpg", "missing", "bomb"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_raises_naming_the_file_and_keeps_committed_rows(bb, tmp_path, kind, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    good, bad = make_bad_inputs(tmp_path / "in")
    store_path = str(tmp_path / "emb.h5")
    emb = Embedder(bb, store=store_path, batch_size=2, progress=False, workers=1)
    before = emb.embed(good[:4])  # committed by an earlier run
    with pytest.raises(FeatxError) as info:
        emb.embed(good + [bad[kind]])
    assert os.path.basename(bad[kind]) in str(info.value)
    with EmbeddingStore(store_path) as store:
        store.verify()
        assert 4 <= store.count(bb.fingerprint) <= len(good)
    np.testing.assert_array_equal(np.stack(list(_stored_vectors(store_path, bb, good[:4]).values())),
                                  before)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_skipped_counted_and_nan(bb, tmp_path, kind, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    good, bad = make_bad_inputs(tmp_path / "in")
    sources = good[:3] + [bad[kind]] + good[3:]
    emb = Embedder(bb, store=str(tmp_path / "emb.h5"), on_error="skip", progress=False)
    X, mask = emb.embed(sources, return_mask=True)
    assert mask.tolist() == [True, True, True, False, True, True, True]
    assert np.isnan(X[3]).all() and np.isfinite(X[mask]).all()
    assert emb.stats["failed"] == 1
    assert [f.index for f in emb.failures_] == [3]
    assert emb.failures_[0].source == bad[kind] and emb.failures_[0].reason


def test_duplicate_bad_files_fail_together_in_skip_mode(bb, tmp_path):
    _, bad = make_bad_inputs(tmp_path / "in")
    copy = str(tmp_path / "in" / "notes_copy.jpg")
    shutil.copy(bad["text_as_jpg"], copy)
    emb = Embedder(bb, on_error="skip", progress=False)
    _, mask = emb.embed([bad["text_as_jpg"], copy], return_mask=True)
    assert not mask.any() and emb.stats["failed"] == 2


def test_invalid_arguments_are_refused_up_front(bb):
    with pytest.raises(FeatxError, match="on_error"):
        Embedder(bb, on_error="ignore")
    with pytest.raises(FeatxError, match="policy"):
        Embedder(bb, policy="stretch")
    with pytest.raises(ImageDecodeError):
        Embedder(bb).embed(np.zeros((2, 8, 8, 3), dtype=np.float32))


# --------------------------------------------------------------------------- crash safety

CHILD = textwrap.dedent("""
    import sys, time, featx
    from featx.engine import Embedder
    from featx.store import EmbeddingStore
    store_path, listing, batch_size, slow = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    paths = open(listing).read().split()
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=%d)
    emb = Embedder(bb, store=store_path, batch_size=batch_size, progress=False)
    if slow:  # slow decoding (outside the store's lock) so the parent sees the count grow
        import featx._decode_worker as decoder  # the decode pool's threads call it
        original = decoder.decode_image
        def slowed(*args, **kwargs):
            time.sleep(slow)  # a slower decoder, so the parent sees the count grow
            return original(*args, **kwargs)
        decoder.decode_image = slowed
    original_put = EmbeddingStore.put
    def reporting_put(self, *args, **kwargs):  # tells the parent each time a batch commits
        appended = original_put(self, *args, **kwargs)
        print("PUT", appended, flush=True)
        return appended
    EmbeddingStore.put = reporting_put
    print("READY", flush=True)
    emb.embed(paths)
    print("DONE", emb.stats["forwarded"], flush=True)
""" % SIZE)


def _spawn(tmp_path, store_path, paths, batch_size=8, slow=0.02, name="list.txt"):
    listing = tmp_path / name
    listing.write_text("\n".join(paths))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), store_path, str(listing),
                             str(batch_size), str(slow)], stdout=subprocess.PIPE, text=True)


def _count(store_path, fingerprint):
    if not os.path.exists(store_path):
        return 0
    return EmbeddingStore(store_path, readonly=True).count(fingerprint)


def test_sigkill_mid_extraction_keeps_committed_rows_and_resume_forwards_the_rest(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 96, seed=6)
    expected = dict(zip(paths, direct_vectors(bb, paths)))
    store_path = str(tmp_path / "emb.h5")
    killed_at = []
    # Kill after the 1st, 3rd and 3rd commit of three runs: the signal lands wherever
    # the child is by then (decoding, forwarding, or inside the next put).
    for puts in (1, 3, 3):
        child = _spawn(tmp_path, store_path, paths)
        assert child.stdout.readline().strip() == "READY"
        seen = 0
        while seen < puts:
            line = child.stdout.readline()
            assert line, "child exited before committing"
            seen += line.startswith("PUT")
        child.send_signal(signal.SIGKILL)
        child.wait()
        with EmbeddingStore(store_path) as store:
            store.verify()
            committed = store.count(bb.fingerprint)
        killed_at.append(committed)
        # Every committed row is intact: compare each stored vector with the truth.
        stored = _stored_vectors(store_path, bb, paths)
        assert len(stored) == committed
        for path, vec in stored.items():
            np.testing.assert_allclose(vec, expected[path], atol=1e-5)
    assert killed_at == sorted(killed_at) and killed_at[-1] < len(paths), killed_at
    final = Embedder(bb, store=store_path, batch_size=8, progress=False)
    final.embed(paths)
    assert final.stats["forwarded"] == len(paths) - killed_at[-1]
    with EmbeddingStore(store_path) as store:
        store.verify()
        assert store.count(bb.fingerprint) == len(paths)


def _stored_vectors(store_path, bb, paths):
    from featx.images import source_key

    keys = [source_key(p) for p in paths]
    vectors, found = EmbeddingStore(store_path, readonly=True).get(bb.fingerprint, keys)
    return {p: v for p, v, ok in zip(paths, vectors, found) if ok}


def test_two_processes_embedding_overlapping_sets_store_each_key_once(bb, tmp_path):
    paths = make_jpegs(tmp_path / "imgs", 80, seed=7)
    store_path = str(tmp_path / "emb.h5")
    a = _spawn(tmp_path, store_path, paths[:50], slow=0.005, name="a.txt")
    b = _spawn(tmp_path, store_path, paths[30:], slow=0.005, name="b.txt")
    outs = [p.communicate(timeout=300)[0] for p in (a, b)]
    assert all(p.returncode == 0 for p in (a, b)), outs
    with EmbeddingStore(store_path) as store:
        report = store.verify()
        assert store.count(bb.fingerprint) == 80
    forwarded = sum(int(out.split("DONE")[1].split()[0]) for out in outs)
    # Exactly once: the writer lock spans re-check, forward and put.
    assert forwarded == 80
    with EmbeddingStore(store_path) as store:
        assert store.forwarded(bb.fingerprint) == 80
    assert report["ok"]
    np.testing.assert_allclose(
        np.stack(list(_stored_vectors(store_path, bb, paths).values())),
        direct_vectors(bb, paths), atol=1e-5)


def test_a_resize_policy_never_serves_another_policys_vectors(bb, tmp_path):
    """Bug: the vectors' identity was the backbone's fingerprint alone, so a store (or
    the process memo) filled under policy="squash" served those vectors to a "crop"
    run of the same images. The resize policy is part of the vectors' identity now;
    "squash" keeps the backbone's fingerprint, so existing stores stay valid."""
    rng = np.random.RandomState(0)
    wide = np.zeros((3, 40, 120, 3), np.uint8)
    wide[:, :, :40] = 255
    wide[:, :, 40:80] = rng.randint(0, 255, (3, 40, 40, 3))
    size = (bb.input_size, bb.input_size)
    direct = {policy: np.asarray(bb.model(bb.preprocess(np.stack(
        [decode_image(img, size, policy=policy) for img in wide])), training=False))
        for policy in ("squash", "crop")}
    scale = np.abs(direct["crop"]).max()
    assert np.abs(direct["crop"] - direct["squash"]).max() > 0.1 * scale  # they differ
    store = str(tmp_path / "s.h5")
    clear_memo()
    for run_store in (store, None):  # through the store, then through the memo
        squash = Embedder(bb, store=run_store, policy="squash", progress=False).embed(wide)
        crop_embedder = Embedder(bb, store=run_store, policy="crop", progress=False)
        crop = crop_embedder.embed(wide)
        np.testing.assert_allclose(squash, direct["squash"], rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(crop, direct["crop"], rtol=0, atol=1e-4 * scale)
        assert crop_embedder.stats["forwarded"] == 3
    assert Embedder(bb, policy="squash").fingerprint == bb.fingerprint
    assert len({Embedder(bb, policy=p).fingerprint for p in ("squash", "crop", "pad")}) == 3
    with EmbeddingStore(store) as opened:
        assert len(opened.fingerprints()) == 2


@pytest.mark.parametrize("mode", sorted(__import__("featx.backbones.preprocessing",
                                                   fromlist=["MODES"]).MODES))
def test_preprocessing_inside_the_compiled_forward_matches_the_host(mode):
    """Every preprocessing mode (and so every family: each registry row names one)
    gives the same model input inside the compiled function, from uint8, as the
    numpy preprocessing on the host gave before."""
    from featx._env import import_keras
    from featx.backbones.preprocessing import get_preprocessing
    from featx.engine import PaddedForward

    keras = import_keras()
    identity = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten()])
    pre = get_preprocessing(mode)
    pixels = np.random.RandomState(0).randint(0, 256, (3, 6, 5, 3)).astype(np.uint8)
    pixels[0] = 0
    pixels[1] = 255
    inside = PaddedForward(identity, 4, (6, 5, 3), preprocessing=pre)(pixels)
    host = PaddedForward(identity, 4, (6, 5, 3))(pre(pixels))
    assert inside.shape == (3, 90)
    np.testing.assert_allclose(inside, host, rtol=0, atol=1e-5)


def test_every_family_uses_a_tested_preprocessing_mode():
    from featx.backbones import BACKBONES
    from featx.backbones.preprocessing import MODES

    assert {spec.preprocessing for spec in BACKBONES.values()} <= set(MODES)


@pytest.mark.realweights
def test_uint8_forward_gives_the_host_preprocessed_vectors_on_real_weights(tmp_path):
    """Packaged EfficientNet-Lite0 on real JPEGs: the engine (uint8 in, preprocessing
    in the compiled function) equals the model on host-preprocessed float32 within
    1e-5, so the fingerprint did not need to change."""
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged EfficientNet-Lite0 weights not installed (featx[weights])")
    bb = featx.get_backbone("efficientnet_lite0", input_size=96)
    paths = make_jpegs(tmp_path / "imgs", 10)
    X = Embedder(bb, batch_size=4, progress=False).embed(paths)
    assert np.abs(X - direct_vectors(bb, paths)).max() <= 1e-5


# ----------------------------------------------------------------- decoder and device defaults


def test_the_decoder_is_part_of_the_vectors_identity_and_gpu_is_refused_without_one(bb, tmp_path):
    from featx.engine import gpu_decoder_unavailable, resolve_decoder, vector_fingerprint
    from featx.errors import InvalidParameterError, MissingDependencyError

    cpu = vector_fingerprint(bb.fingerprint, "squash", "cpu")
    gpu = vector_fingerprint(bb.fingerprint, "squash", "gpu")
    assert cpu == bb.fingerprint  # stores written before the decoder joined stay valid
    assert gpu != cpu and gpu != vector_fingerprint(bb.fingerprint, "crop", "gpu")
    with pytest.raises(InvalidParameterError, match="decoder must be one of"):
        Embedder(bb, decoder="nvjpeg")
    reason = gpu_decoder_unavailable()
    if reason is None:
        pytest.skip("a CUDA device with torchvision is present: refusal is not reachable")
    assert resolve_decoder("auto") == "cpu"
    emb = Embedder(bb, decoder="auto", progress=False)
    emb.embed(make_jpegs(tmp_path, 2, size=(40, 30)))
    assert emb.stats["decoder"] == "cpu" and emb.fingerprint == bb.fingerprint
    with pytest.raises(MissingDependencyError, match="decoder='gpu' cannot run here") as info:
        Embedder(bb, decoder="gpu", progress=False).embed(make_jpegs(tmp_path, 1))
    assert reason.split(" ")[0] in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(featx.engine.gpu_decoder_unavailable() is not None,
                    reason=f"GPU decoder: {featx.engine.gpu_decoder_unavailable()}")
def test_gpu_decoded_pixels_are_close_to_pillow_and_other_formats_fall_back(bb, tmp_path):
    from featx.engine import GpuJpegDecoder

    paths = make_jpegs(tmp_path, 4, size=(64, 48))
    blobs = [open(p, "rb").read() for p in paths]
    for policy in ("squash", "crop", "pad"):
        pixels = GpuJpegDecoder((32, 32), policy).decode(blobs + [b"not a jpeg"])
        assert pixels[-1] is None  # refused: the engine decodes it on the CPU
        for path, px in zip(paths, pixels):
            cpu = decode_image(path, (32, 32), policy=policy)
            assert px.shape == cpu.shape and px.dtype == np.uint8
            assert np.abs(px.astype(int) - cpu).mean() < 6, policy
    png = tmp_path / "x.png"
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(png)
    emb = Embedder(bb, decoder="gpu", progress=False, on_error="skip")
    X = emb.embed([*paths, str(png), str(tmp_path / "gone.jpg")])
    assert emb.stats["decoder"] == "gpu" and emb.fingerprint != bb.fingerprint
    assert np.isfinite(X[:5]).all() and emb.stats["failed"] == 1


@pytest.mark.backend_smoke
def test_a_device_batch_reaches_the_forward_through_dlpack_unchanged(bb):
    # GPU-decoded batches stay on the device (DevicePixels) and are padded, filtered
    # and handed to the backend there; on a CPU the same code runs on host memory.
    from featx.engine import DevicePixels, PaddedForward

    import keras

    images = np.random.RandomState(8).randint(0, 256, (5, SIZE, SIZE, 3)).astype(np.uint8)
    forward = PaddedForward(bb.model, 8, bb.input_shape, preprocessing=bb.preprocessing)
    on_device = list(images)
    if keras.backend.backend() == "jax":  # a device array handed over by DLPack
        import jax.numpy as jnp

        on_device = [jnp.asarray(image) for image in images]
    batch = DevicePixels.stack(on_device)
    assert len(batch) == 5 and len(batch.padded(8)) == 8
    np.testing.assert_array_equal(batch.take([4, 1]).to_host(), images[[4, 1]])
    np.testing.assert_allclose(forward.dispatch(batch).result(), forward(images), atol=1e-6)
    np.testing.assert_allclose(forward.dispatch(batch.take([0, 3])).result(),
                               forward(images[[0, 3]]), atol=1e-6)


class _PillowOnTheDevice(featx.engine.GpuJpegDecoder):
    """Stands in for nvJPEG (it needs CUDA): decodes JPEGs with Pillow and returns them
    as the device decoder does, refusing one so the CPU fallback runs too; the rest of
    GpuJpegDecoder (which images go to it) is the real one."""

    calls: list = []

    def __init__(self, size, policy="squash"):  # no CUDA check
        self.size, self.policy = size, policy

    def decode(self, blobs, on_device=False):
        type(self).calls.append((len(blobs), on_device))
        return [None if i == 0 else decode_image(blob, self.size, policy=self.policy)
                for i, blob in enumerate(blobs)]


def test_gpu_decoded_images_form_device_batches_beside_cpu_fallbacks(bb, tmp_path,
                                                                    monkeypatch):
    from featx.engine import _embedder

    monkeypatch.setattr(_embedder, "GpuJpegDecoder", _PillowOnTheDevice)
    monkeypatch.setattr(_embedder, "resolve_decoder", lambda decoder: decoder)
    stacked = []
    real_stack = _embedder.DevicePixels.stack.__func__
    monkeypatch.setattr(_embedder.DevicePixels, "stack", classmethod(
        lambda cls, images: stacked.append(len(images)) or real_stack(cls, images)))
    _PillowOnTheDevice.calls.clear()
    paths = make_jpegs(tmp_path / "imgs", 11, seed=6)
    store = str(tmp_path / "emb.h5")
    emb = Embedder(bb, store=store, decoder="gpu", batch_size=4, progress=False)
    X = emb.embed(paths)
    cpu = Embedder(bb, batch_size=4, progress=False).embed(paths)
    np.testing.assert_allclose(X, cpu, atol=1e-5)  # same pixels, so the same vectors
    assert all(on_device for _, on_device in _PillowOnTheDevice.calls)
    assert sum(stacked) == 11 - len(_PillowOnTheDevice.calls)  # one refused per call
    assert emb.stats["forwarded"] == 11 and emb.stats["decoder"] == "gpu"
    assert EmbeddingStore(store).count(emb.fingerprint) == 11
    assert emb.fingerprint != bb.fingerprint


def test_without_an_accelerator_the_defaults_are_cpu_ones(bb):
    from featx._env import accelerator
    from featx.engine import default_batch_size

    if accelerator() is not None:
        pytest.skip(f"an accelerator is present: {accelerator()}")
    assert default_batch_size() == 32 and Embedder(bb).batch_size == 32
    assert featx.get_backbone("mobilenet_v2", weights=None, input_size=32,
                              dtype="auto").fingerprint == bb.fingerprint


def test_xla_on_a_cpu_warns_once_and_runs_without_it(bb, caplog):
    import logging

    from featx._env import accelerator, import_keras

    if import_keras().backend.backend() != "tensorflow" or accelerator() is not None:
        pytest.skip("the guard is for TensorFlow without an accelerator")
    from featx.engine import _forward

    _forward._XLA_WARNED.clear()
    images = np.random.RandomState(5).randint(0, 255, (3, 40, 40, 3)).astype(np.uint8)
    plain = Embedder(bb, batch_size=3, progress=False).embed(images)
    clear_memo()
    with caplog.at_level(logging.WARNING, logger="featx"):
        xla = Embedder(bb, batch_size=5, progress=False, jit_compile=True).embed(images)
        Embedder(bb, batch_size=6, progress=False, jit_compile=True).embed(images[:1])
    warnings = [r for r in caplog.records if "jit_compile=True without an accelerator" in r.message]
    assert len(warnings) == 1
    np.testing.assert_allclose(xla, plain, atol=1e-5)


def test_a_fully_cached_call_reads_no_file_and_a_rewritten_one_is_read_again(bb, tmp_path):
    import threading

    paths = make_jpegs(tmp_path / "imgs", 6, size=(40, 30))
    for store in (None, str(tmp_path / "s.h5")):
        clear_memo()
        emb = Embedder(bb, store=store, batch_size=4, progress=False)
        first = emb.embed(paths + paths[:2])
        threads_before = threading.active_count()
        again = emb.embed(paths + paths[:2])
        assert emb.stats["pool"] == "none" and emb.stats["forwarded"] == 0
        assert emb.stats["unique"] == emb.stats["cache_hits"] == 6
        assert threading.active_count() == threads_before  # no reader, producer or pool
        np.testing.assert_array_equal(again, first)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(paths[0])  # new content, new key
        changed = emb.embed(paths)
        assert emb.stats["pool"] != "none" and emb.stats["forwarded"] == 1
        assert not np.array_equal(changed[0], first[0])
        np.testing.assert_array_equal(changed[1:], first[1:6])
        make_jpegs(tmp_path / "imgs", 6, size=(40, 30))  # the original files back
