"""Property-based fuzzing with hypothesis.

* random bytes, and mutated/truncated valid images, into ``decode_image``: only a
  :class:`~featx.errors.FeatxError` may escape;
* random valid images (size, mode, format, target size and policy): decode to
  ``(h, w, 3)`` uint8;
* random interleavings of put / get / lookup / known / count / reopen on an
  :class:`~featx.store.EmbeddingStore` against a dict model (a state machine).

Example counts come from the hypothesis profile in ``conftest.py``: ``ci``
(default, 40 examples) or ``torture`` (1000; ``make torture``); override with
``FEATX_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from PIL import Image

from featx.errors import FeatxError
from featx.images import RESIZE_POLICIES, decode_image
from featx.store import EmbeddingStore

SIZE = (24, 24)


def _decode_or_featx_error(data: bytes, size=SIZE, policy="squash"):
    try:
        out = decode_image(data, size, policy=policy, name="fuzz.bin")
    except FeatxError as exc:
        assert "fuzz.bin" in str(exc)
        return None
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    return out


@pytest.mark.timeout(300)
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_featx_error(data):
    _decode_or_featx_error(data)


def _seed_images():
    rng = np.random.RandomState(0)
    rgb = Image.fromarray(rng.randint(0, 256, (20, 28, 3)).astype(np.uint8))
    out = []
    for fmt, kw in (("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                    ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("TIFF", {}), ("PPM", {})):
        buf = io.BytesIO()
        rgb.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@pytest.mark.timeout(300)
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_valid_images_only_raise_featx_error(which, data):
    blob = bytearray(SEEDS[which])
    n_flips = data.draw(st.integers(0, 8), label="flips")
    for _ in range(n_flips):
        at = data.draw(st.integers(0, len(blob) - 1), label="offset")
        blob[at] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(1, len(blob)), label="cut")
    _decode_or_featx_error(bytes(blob[:cut]))


MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "F", "CMYK"]
FORMATS = {  # Pillow formats that can write each mode
    "L": ["PNG", "JPEG", "BMP", "TIFF", "PPM", "GIF", "WEBP"],
    "RGB": ["PNG", "JPEG", "BMP", "TIFF", "PPM", "GIF", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "GIF", "BMP", "TIFF"],
    "1": ["PNG", "BMP", "TIFF", "PPM"],
    "I;16": ["PNG", "TIFF"],
    "F": ["TIFF"],
    "CMYK": ["JPEG", "TIFF"],
}


@st.composite
def encoded_images(draw):
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    w, h = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.randint(0, 65536, (h, w)).astype(np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.rand(h, w).astype(np.float32))
    else:
        bands = len(Image.new(mode, (1, 1)).getbands())
        raw = rng.randint(0, 256, (h, w, bands)).astype(np.uint8)
        if mode in ("P", "1"):
            img = Image.frombytes("L", (w, h), raw[..., 0].tobytes()).convert(mode)
        else:
            img = Image.frombytes(mode, (w, h), raw.tobytes())
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError) as exc:  # a combination Pillow cannot write
        assume(False)
        raise AssertionError from exc
    note(f"{mode} {fmt} {w}x{h}")
    return buf.getvalue()


@pytest.mark.timeout(300)
@given(encoded_images(), st.integers(1, 64), st.integers(1, 64), st.sampled_from(RESIZE_POLICIES))
def test_valid_images_decode_to_the_right_shape(data, th, tw, policy):
    out = decode_image(data, (th, tw), policy=policy)
    assert out.shape == (th, tw, 3) and out.dtype == np.uint8


# --------------------------------------------------------------------------- store model

FP = "ab" * 32
DIM = 6
KEYS = [bytes([i]) * 32 for i in range(10)]


def _vec(key: bytes, version: int) -> np.ndarray:
    return np.random.default_rng(key[0] * 1000 + version).standard_normal(DIM).astype(np.float32)


class StoreMachine(RuleBasedStateMachine):
    """put/get/lookup/known/count against a dict; first put of a key wins."""

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="featx-fuzz-")
        self.path = os.path.join(self.folder, "emb.h5")
        self.store = EmbeddingStore(self.path)
        self.other = EmbeddingStore(self.path)  # a second handle on the same file
        self.model: dict[bytes, np.ndarray] = {}
        self.version = 0

    keys = st.lists(st.sampled_from(KEYS), min_size=0, max_size=6)

    @rule(ks=keys, via_other=st.booleans())
    def put(self, ks, via_other):
        self.version += 1
        vecs = np.stack([_vec(k, self.version) for k in ks]) if ks else np.zeros((0, DIM),
                                                                                  np.float32)
        store = self.other if via_other else self.store
        n = store.put(FP, ks, vecs, spec={"name": "fuzz"})
        new = [k for k in dict.fromkeys(ks) if k not in self.model]
        assert n == len(new)
        for k, v in zip(ks, vecs):
            self.model.setdefault(k, v)

    @rule(ks=keys)
    def get(self, ks):
        vecs, found = self.store.get(FP, ks)
        assert found.tolist() == [k in self.model for k in ks]
        for k, v, f in zip(ks, vecs, found):
            if f:
                np.testing.assert_array_equal(v, self.model[k])
            else:
                assert np.isnan(v).all()

    @rule(ks=keys)
    def lookup(self, ks):
        rows = self.store.lookup(FP, ks)
        assert ((rows >= 0).tolist()) == [k in self.model for k in ks]

    @rule(ks=keys)
    def known(self, ks):
        # known() reads only this object's memory: never claims a key that is not stored.
        got = self.store.known(FP, ks)
        assert all(k in self.model for k, g in zip(ks, got) if g)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = EmbeddingStore(self.path)

    @precondition(lambda self: self.model)
    @rule()
    def verify(self):
        assert self.store.verify()["backbones"][0]["rows"] == len(self.model)

    @invariant()
    def count_matches(self):
        assert self.store.count(FP) == len(self.model)

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)


StoreMachine.TestCase.settings = settings(stateful_step_count=25)  # on the loaded profile
test_store_state_machine = pytest.mark.timeout(600)(StoreMachine.TestCase)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_every_small_size_and_target_decodes(policy):
    """Regression for the fuzz find: a crop box off by 1e-16 (e.g. 15×1 → 21×1) was
    refused by Pillow ("box offset can't be negative")."""
    for h, w in ((1, 15), (1, 1), (3, 29), (28, 1), (7, 13)):
        for th in (1, 5, 21, 32):
            for tw in (1, 6, 21, 31):
                out = decode_image(np.zeros((h, w, 3), np.uint8), (th, tw), policy=policy)
                assert out.shape == (th, tw, 3)
