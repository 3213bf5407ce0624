"""Accelerator readiness: compute dtypes, XLA, and the backend-neutral smoke subset."""

from __future__ import annotations

import numpy as np
import pytest

import featx
from featx.engine import Embedder, clear_memo

keras = pytest.importorskip("keras")


def _images(n=4, size=96, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.mark.realweights
@pytest.mark.parametrize("dtype,tolerance", [("mixed_float16", 2e-2), ("bfloat16", 8e-2)])
def test_reduced_precision_vectors_are_close_and_fingerprinted_apart(dtype, tolerance):
    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged Lite0 weights not installed")
    images = _images()
    full = featx.get_backbone("efficientnet_lite0", input_size=96)
    reduced = featx.get_backbone("efficientnet_lite0", input_size=96, dtype=dtype)
    assert reduced.fingerprint != full.fingerprint
    X32 = Embedder(full, progress=False).embed(images)
    Xr = Embedder(reduced, progress=False).embed(images)
    assert Xr.dtype == np.float32
    assert np.abs(Xr - X32).max() / np.abs(X32).max() < tolerance
    assert keras.config.dtype_policy().name == "float32"  # the build left no global policy


@pytest.mark.backend_smoke
def test_xla_forward_matches_the_plain_one():
    bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    images = _images(size=32)
    clear_memo()
    plain = Embedder(bb, progress=False).embed(images)
    clear_memo()
    xla = Embedder(bb, progress=False, jit_compile=True)
    np.testing.assert_allclose(xla.embed(images), plain, rtol=1e-4, atol=1e-5)
    assert xla.stats["forwarded"] == 4


def test_unknown_dtype_is_refused():
    with pytest.raises(featx.FeatxError, match="dtype"):
        featx.get_backbone("mobilenet_v2", weights=None, input_size=32, dtype="float8")
