"""Tests of featx.images: sources, content keys, and the one decoder.

Every image is generated with Pillow inside tmp_path; cases are tables.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import featx
import featx.images as images
from featx.errors import FeatxError, ImageDecodeError, InvalidParameterError
from featx.images import (
    IMAGE_EXTENSIONS,
    Source,
    as_sources,
    check_decode_options,
    decode_image,
    decode_image_with_info,
    list_images,
    read_bytes,
    source_key,
)

import _imagegen as gen
from _imagegen import BLACK, BLUE, GREEN, RED, WHITE


def _center(x: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in x[x.shape[0] // 2, x.shape[1] // 2])


def _close(got, expected, tol) -> bool:
    return all(abs(int(g) - int(e)) <= tol for g, e in zip(got, expected))


# --------------------------------------------------------------------------- modes

def _pgm(maxval: int, value: int) -> bytes:
    return f"P5\n4 4\n{maxval}\n".encode() + value.to_bytes(2, "big") * 16


# id, file name, writer(path) -> None, stored mode Pillow reports, expected centre RGB, tolerance
MODE_CASES = [
    ("rgb-png", "x.png", lambda p: gen.solid("RGB", RED).save(p), "RGB", RED, 0),
    ("rgb-bmp", "x.bmp", lambda p: gen.solid("RGB", GREEN).save(p), "RGB", GREEN, 0),
    ("rgb-jpeg", "x.jpg", lambda p: gen.solid("RGB", RED).save(p, quality=95), "RGB", RED, 4),
    ("rgba-opaque-red", "x.png", lambda p: gen.solid("RGBA", (*RED, 255)).save(p), "RGBA", RED, 0),
    # Fully transparent black: white (composited), not black (alpha dropped).
    ("rgba-transparent", "x.png", lambda p: gen.solid("RGBA", (0, 0, 0, 0)).save(p), "RGBA",
     WHITE, 0),
    ("rgba-half-red", "x.png", lambda p: gen.solid("RGBA", (*RED, 128)).save(p), "RGBA",
     (255, 127, 127), 1),
    ("rgba-webp-transparent", "x.webp",
     lambda p: gen.solid("RGBA", (0, 0, 0, 0)).save(p, lossless=True), "RGBA", WHITE, 0),
    ("rgba-tiff", "x.tif", lambda p: gen.solid("RGBA", (*BLUE, 255)).save(p), "RGBA", BLUE, 0),
    ("l-png", "x.png", lambda p: gen.solid("L", 77).save(p), "L", (77, 77, 77), 0),
    ("l-jpeg", "x.jpg", lambda p: gen.solid("L", 77).save(p, quality=95), "L", (77, 77, 77), 2),
    ("l-trns-key", "x.png", lambda p: gen.solid("L", 7).save(p, transparency=7), "L", WHITE, 0),
    ("rgb-trns-key", "x.png", lambda p: gen.solid("RGB", (1, 2, 3)).save(p, transparency=(1, 2, 3)),
     "RGB", WHITE, 0),
    ("la-opaque", "x.png", lambda p: gen.solid("LA", (100, 255)).save(p), "LA", (100,) * 3, 0),
    ("la-transparent", "x.png", lambda p: gen.solid("LA", (0, 0)).save(p), "LA", WHITE, 0),
    ("1-png-white", "x.png", lambda p: gen.solid("1", 1).save(p), "1", WHITE, 0),
    ("1-bmp-black", "x.bmp", lambda p: gen.solid("1", 0).save(p), "1", BLACK, 0),
    ("p-png", "x.png", lambda p: gen.palette_image(index=1).save(p), "P", RED, 0),
    ("p-png-trns", "x.png", lambda p: gen.palette_image(index=1).save(p, transparency=1), "P",
     WHITE, 0),
    ("p-gif-trns", "x.gif", lambda p: gen.palette_image(index=1).save(p, transparency=1), "P",
     WHITE, 0),
    ("p-gif", "x.gif", lambda p: gen.palette_image(index=2).save(p), "P", GREEN, 0),
    ("cmyk-tiff-cyan", "x.tif", lambda p: gen.solid("CMYK", (255, 0, 0, 0)).save(p), "CMYK",
     (0, 255, 255), 0),
    ("cmyk-jpeg-cyan", "x.jpg", lambda p: gen.solid("CMYK", (255, 0, 0, 0)).save(p, quality=95),
     "CMYK", (0, 255, 255), 4),
    ("ycbcr-tiff", "x.tif", lambda p: gen.solid("RGB", RED).convert("YCbCr").save(p), "YCbCr",
     RED, 3),
    ("i16-png-max", "x.png",
     lambda p: gen.from_array(np.full((16, 24), 65535, np.uint16)).save(p), "I;16", WHITE, 0),
    # >> 8, not a clip: 0x8000 is mid-gray, not white.
    ("i16-png-mid", "x.png",
     lambda p: gen.from_array(np.full((16, 24), 0x8000, np.uint16)).save(p), "I;16",
     (128,) * 3, 0),
    ("i16-tiff", "x.tif",
     lambda p: gen.from_array(np.full((16, 24), 0x4000, np.uint16)).save(p), "I;16",
     (64,) * 3, 0),
    ("pgm-16bit", "x.pgm", lambda p: p.write_bytes(_pgm(65535, 65535)), "I", WHITE, 0),
    # Pillow spans a 12-bit maxval to 16 bits; featx then shifts by 8.
    ("pgm-12bit-half", "x.pgm", lambda p: p.write_bytes(_pgm(4095, 2048)), "I", (128,) * 3, 0),
    ("i32-tiff", "x.tif",
     lambda p: gen.from_array(np.full((16, 24), 100 << 23, np.int32)).save(p), "I",
     (100,) * 3, 0),
    ("f-tiff-unit", "x.tif",
     lambda p: gen.from_array(np.full((16, 24), 0.25, np.float32)).save(p), "F", (64,) * 3, 0),
    ("animated-gif-first-frame", "x.gif", lambda p: gen.animated(p), "P", RED, 0),
    ("animated-png-first-frame", "x.png", lambda p: gen.animated(p, fmt="PNG"), "RGB", RED, 0),
    ("animated-webp-first-frame", "x.webp", lambda p: gen.animated(p, fmt="WEBP"), "RGB", RED, 0),
]


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
@pytest.mark.parametrize("case", MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_every_mode_decodes_to_rgb_uint8(tmp_path, case, policy):
    _, filename, write, stored_mode, expected, tol = case
    path = tmp_path / filename
    write(path)
    x, info = decode_image_with_info(path, (12, 10), policy=policy)
    assert info.mode == stored_mode  # the row really exercises that mode
    assert x.shape == (12, 10, 3) and x.dtype == np.uint8
    assert _close(_center(x), expected, tol), (_center(x), expected)


def test_float_tiff_outside_unit_range_is_stretched_not_clipped(tmp_path):
    depth = np.tile(np.linspace(0, 1000, 24, dtype=np.float32), (16, 1))
    path = gen.save(gen.from_array(depth), tmp_path / "depth.tif")
    x = decode_image(path, (16, 24))
    assert x[:, 0].max() == 0 and x[:, -1].min() == 255
    assert 100 < x[8, 12, 0] < 155  # the middle stays in the middle


def test_float_tiff_nan_becomes_black(tmp_path):
    arr = np.full((16, 24), np.nan, np.float32)
    x = decode_image(gen.save(gen.from_array(arr), tmp_path / "nan.tif"), (8, 8))
    assert (x == 0).all()


# --------------------------------------------------------------------------- arrays

ARRAY_CASES = [
    ("gray", np.full((20, 30), 90, np.uint8), (90, 90, 90)),
    ("gray-1ch", np.full((20, 30, 1), 90, np.uint8), (90, 90, 90)),
    ("rgb", np.broadcast_to(np.array(RED, np.uint8), (20, 30, 3)), RED),
    ("rgba-transparent", np.zeros((20, 30, 4), np.uint8), WHITE),
    ("rgba-opaque", np.broadcast_to(np.array((*BLUE, 255), np.uint8), (20, 30, 4)), BLUE),
]


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
@pytest.mark.parametrize("case", ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES])
def test_arrays_decode_like_files(case, policy):
    _, arr, expected = case
    x = decode_image(arr, (16, 16), policy=policy)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert _center(x) == expected


def test_array_already_at_size_is_not_copied_and_result_is_read_only():
    arr = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    x = decode_image(arr, (8, 6))
    assert np.shares_memory(x, arr) and np.array_equal(x, arr)
    assert not x.flags.writeable


@pytest.mark.parametrize("arr, fragment", [
    (np.zeros((8, 8, 3), np.float32), "float32"),
    (np.zeros((8, 8, 2), np.uint8), "(8, 8, 2)"),
    (np.zeros((0, 8), np.uint8), "(0, 8)"),
], ids=["float", "two-channels", "empty"])
def test_bad_arrays_are_refused_by_decode(arr, fragment):
    with pytest.raises(ImageDecodeError, match="expected") as err:
        decode_image(Source(array=arr, index=5), (8, 8))
    assert "array[5]" in str(err.value) and fragment in str(err.value)


# --------------------------------------------------------------------------- geometry

def _halves(w, h, left=RED, right=BLUE) -> np.ndarray:
    arr = np.empty((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    return arr


def _landscape_with_centre_square() -> np.ndarray:
    arr = np.empty((50, 100, 3), np.uint8)  # 25 red | 50 green | 25 blue
    arr[:, :25], arr[:, 25:75], arr[:, 75:] = RED, GREEN, BLUE
    return arr


def _as_png(tmp_path, arr):
    return gen.save(gen.from_array(arr), tmp_path / "pattern.png")


@pytest.mark.parametrize("kind", ["file", "array"])
def test_squash_ignores_aspect(tmp_path, kind):
    arr = _halves(100, 50)
    src = _as_png(tmp_path, arr) if kind == "file" else arr
    x = decode_image(src, (20, 20), policy="squash")
    assert (x[:, :9] == RED).all() and (x[:, 11:] == BLUE).all()


@pytest.mark.parametrize("kind", ["file", "array"])
def test_crop_keeps_the_centre(tmp_path, kind):
    arr = _landscape_with_centre_square()
    src = _as_png(tmp_path, arr) if kind == "file" else arr
    x = decode_image(src, (20, 20), policy="crop")
    # Interior is the green centre only; the border column may blend one neighbour sample.
    assert (x[:, 1:-1] == GREEN).all()
    assert (x[:, [0, -1], 1] >= 200).all()


@pytest.mark.parametrize("kind", ["file", "array"])
@pytest.mark.parametrize("w, h, bars", [(100, 50, "rows"), (50, 100, "columns"), (60, 60, None)])
def test_pad_letterboxes_in_black(tmp_path, kind, w, h, bars):
    arr = np.broadcast_to(np.array(RED, np.uint8), (h, w, 3)).copy()
    src = _as_png(tmp_path, arr) if kind == "file" else arr
    x = decode_image(src, (20, 20), policy="pad")
    view = x if bars in ("rows", None) else x.transpose(1, 0, 2)
    if bars is None:
        assert (x == RED).all()
        return
    assert (view[:5] == BLACK).all() and (view[15:] == BLACK).all()
    assert (view[5:15] == RED).all()


def test_pad_keeps_transparency_white_and_bars_black():
    arr = np.zeros((50, 100, 4), np.uint8)  # fully transparent landscape
    x = decode_image(arr, (20, 20), policy="pad")
    assert (x[:5] == BLACK).all() and (x[5:15] == WHITE).all()


def test_non_square_target_is_height_width(tmp_path):
    x = decode_image(_as_png(tmp_path, _halves(64, 64)), (10, 30))
    assert x.shape == (10, 30, 3)


@pytest.mark.parametrize("size, policy", [
    ((0, 10), "squash"), ((10,), "squash"), ((10.5, 10), "squash"), ("ab", "squash"),
    ((10, 10), "stretch"),
])
def test_bad_size_or_policy(size, policy):
    """A bad option is a parameter error (a ValueError), not a broken image."""
    with pytest.raises(InvalidParameterError, match="must be"):
        check_decode_options(size, policy)
    with pytest.raises(InvalidParameterError, match="must be"):
        decode_image(np.zeros((4, 4), np.uint8), size, policy=policy)


def test_check_decode_options_normalises():
    assert check_decode_options((np.int64(224), 160), "pad") == (224, 160)


# --------------------------------------------------------------------------- orientation

# EXIF orientation → expected (top-left, top-right) colours of the upright image,
# for a stored image with quadrants TL=red, TR=green, BL=blue, BR=white.
ORIENTATIONS = {
    1: (RED, GREEN), 2: (GREEN, RED), 3: (WHITE, BLUE), 4: (BLUE, WHITE),
    5: (RED, BLUE), 6: (BLUE, RED), 7: (WHITE, GREEN), 8: (GREEN, WHITE),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = gen.save(gen.quadrants((40, 20)), tmp_path / "o.jpg", quality=95,
                    exif=gen.exif_with_orientation(orientation))
    x, info = decode_image_with_info(path, (32, 32), policy="pad")
    assert info.orientation == orientation and info.stored_size == (20, 40)
    portrait = orientation >= 5
    assert info.oriented_size == ((40, 20) if portrait else (20, 40))
    # pad shows the orientation: portrait → bars left and right, landscape → top and bottom.
    if portrait:
        assert (x[:, 0] < 10).all() and (x[:, -1] < 10).all()
        top_left, top_right = x[4, 12], x[4, 19]
    else:
        assert (x[0] < 10).all() and (x[-1] < 10).all()
        top_left, top_right = x[12, 4], x[12, 27]
    tl, tr = ORIENTATIONS[orientation]
    assert _close(top_left, tl, 12) and _close(top_right, tr, 12)


def test_exif_orientation_in_png(tmp_path):
    path = gen.save(gen.quadrants((40, 20)), tmp_path / "o.png",
                    exif=gen.exif_with_orientation(6))
    _, info = decode_image_with_info(path, (32, 32), policy="pad")
    assert info.oriented_size == (40, 20)


# --------------------------------------------------------------------------- JPEG draft

@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "photo.jpg"
    gen.gradient((4000, 3000)).save(path, quality=90)
    return path


def _reference(path, size, orientation_aware=True):
    """Full-size decode, no draft: what the drafted result should look like."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img) if orientation_aware else img
        return np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def test_jpeg_draft_reduces_a_12mp_photo_and_stays_correct(big_jpeg):
    x, info = decode_image_with_info(big_jpeg, (224, 224))
    assert info.stored_size == (3000, 4000)
    assert info.draft_scale == 8 and info.decoded_size == (375, 500)
    assert min(info.decoded_size) >= 224  # never upsampled after the draft
    diff = np.abs(x.astype(int) - _reference(big_jpeg, (224, 224)).astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 12


@pytest.mark.parametrize("policy, scale", [("squash", 4), ("crop", 4), ("pad", 8)])
def test_jpeg_draft_per_policy_on_a_panorama(tmp_path, policy, scale):
    path = gen.save(gen.gradient((3584, 896)), tmp_path / "pano.jpg", quality=90)
    x, info = decode_image_with_info(path, (224, 224), policy=policy)
    assert info.draft_scale == scale
    dh, dw = info.decoded_size
    if policy == "pad":  # fitted size is 224 x 56
        assert dw >= 224 and dh >= 56
    else:  # short side stays >= target
        assert dh >= 224
    assert x.shape == (224, 224, 3)


@pytest.fixture(scope="module")
def odd_checker_jpegs() -> dict[int, bytes]:
    """4007 x 2007 checkerboard JPEGs, identical pixels, one per EXIF orientation.

    At 1/8 scale libjpeg rounds 4007 up to 501 decoded columns, the last one
    mostly padding; each orientation moves that partial column/row to another
    edge. A sharp pattern shows a misplaced valid area as a shifted edge.
    """
    yy, xx = np.mgrid[:2007, :4007]
    img = Image.fromarray((((yy // 200) + (xx // 200)) % 2 * 255).astype(np.uint8))
    return {o: gen.encoded(img, "JPEG", quality=95, exif=gen.exif_with_orientation(o))
            for o in ORIENTATIONS}


# upright = UPRIGHT[o](stored), in numpy terms
UPRIGHT = {
    1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2), 8: lambda a: np.rot90(a, 1),
}


def test_drafted_decode_matches_a_full_decode(odd_checker_jpegs):
    data = odd_checker_jpegs[1]
    x, info = decode_image_with_info(data, (224, 224))
    assert info.draft_scale == 8 and info.decoded_size == (251, 501)
    with Image.open(io.BytesIO(data)) as img:
        full = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert np.abs(x.astype(int) - full.astype(int)).mean() < 1.4


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_drafted_decode_is_exactly_orientation_equivariant(odd_checker_jpegs, orientation):
    # Same pixels, only the EXIF tag differs: the result must be the upright-rotated
    # result of orientation 1 (squash to a square commutes with the rotation).
    upright = decode_image(odd_checker_jpegs[1], (224, 224))
    x, info = decode_image_with_info(odd_checker_jpegs[orientation], (224, 224))
    assert info.draft_scale == 8
    assert np.array_equal(x, UPRIGHT[orientation](upright))


@pytest.mark.parametrize("stored, target, policy, expected", [
    ((500, 375), (224, 224), "squash", 1),   # DESIGN: draft((224, 224)) buys nothing here
    ((448, 448), (224, 224), "squash", 2),
    ((447, 448), (224, 224), "squash", 1),
    ((4000, 3000), (224, 224), "squash", 8),
    ((4000, 1000), (224, 224), "crop", 4),
    ((4000, 1000), (224, 224), "pad", 8),
    ((4000, 3), (224, 224), "pad", 2),      # never a zero-pixel side
    ((1000, 1000), (100, 300), "squash", 2),
])
def test_draft_scale_table(stored, target, policy, expected):
    (w, h), (th, tw) = stored, target
    assert images._draft_scale(w, h, tw, th, policy) == expected


def test_small_jpeg_is_not_drafted(tmp_path):
    path = gen.save(gen.gradient((500, 375)), tmp_path / "small.jpg")
    _, info = decode_image_with_info(path, (224, 224))
    assert info.draft_scale == 1 and info.decoded_size == (375, 500)


# --------------------------------------------------------------------------- errors

def _truncated(path: Path, fmt: str) -> Path:
    data = gen.encoded(gen.noise((256, 192)), fmt)
    path.write_bytes(data[: len(data) // 2])
    return path


def _make_dir(path: Path) -> Path:
    path.mkdir()
    return path


ERROR_CASES = [
    ("truncated-jpeg", "cut.jpg", lambda p: _truncated(p, "JPEG"), "truncated or corrupt"),
    ("truncated-png", "cut.png", lambda p: _truncated(p, "PNG"), "truncated or corrupt"),
    ("zero-bytes", "empty.jpg", lambda p: p.write_bytes(b"") and p, "empty file"),
    ("text-as-jpeg", "notes.jpg", lambda p: p.write_text("just some notes\n") and p,
     "not an image Pillow can read (UnidentifiedImageError)"),
    # EPS would hand the file to Ghostscript; featx never opens it.
    ("eps-as-jpeg", "page.jpg",
     lambda p: p.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") and p,
     "a PostScript/EPS file, which featx does not decode"),
    ("html-as-png", "page.png", lambda p: p.write_text("<!DOCTYPE html><html>") and p,
     "<!DOCTYPE"),
    ("missing", "missing.jpg", lambda p: p, "no such file"),
    ("directory", "folder.jpg", _make_dir, "is a folder"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_files_raise_image_decode_error_naming_the_file(tmp_path, case):
    _, filename, make, fragment = case
    path = tmp_path / filename
    make(path)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(Source(path=str(path), index=3), (16, 16))
    message = str(err.value)
    assert filename in message and fragment in message and "expected" in message
    assert isinstance(err.value, (FeatxError, ValueError))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads any file")
def test_permission_denied(tmp_path):
    path = gen.save(gen.solid("RGB", RED), tmp_path / "secret.png")
    path.chmod(0)
    try:
        with pytest.raises(ImageDecodeError, match="secret.png.*permission denied"):
            read_bytes(path)
    finally:
        path.chmod(0o644)


def test_pillow_errors_are_chained_not_leaked(tmp_path):
    path = _truncated(tmp_path / "cut.jpg", "JPEG")
    with pytest.raises(ImageDecodeError) as err:
        decode_image(path, (16, 16))
    assert isinstance(err.value.__cause__, OSError)  # the original stays in the chain


def test_bytes_errors_use_the_given_name():
    with pytest.raises(ImageDecodeError, match=r"^upload-7\.jpg: .*UnidentifiedImageError"):
        decode_image(b"not an image", (16, 16), name="upload-7.jpg")
    with pytest.raises(ImageDecodeError, match="upload-8.jpg: empty"):
        decode_image(b"", (16, 16), name="upload-8.jpg")


@pytest.mark.parametrize("warning_filter", ["ignore", "error"])
@pytest.mark.parametrize("side, pixels", [(40, "1,600"), (100, "10,000")],
                         ids=["above-limit", "above-twice-limit"])
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, warning_filter, side, pixels):
    # 1x..2x the limit: Pillow only warns (featx refuses); above 2x Pillow raises.
    path = gen.save(gen.solid("RGB", RED, (side, side)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter(warning_filter, Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError) as err:
            decode_image(path, (16, 16))
    message = str(err.value)
    assert "bomb.png" in message and pixels in message and "1,000" in message


def test_bomb_guard_off_when_pillow_limit_is_none(tmp_path, monkeypatch):
    path = gen.save(gen.solid("RGB", RED, (40, 40)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert _center(decode_image(path, (8, 8))) == RED


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_does_not_fail_the_image(tmp_path):
    path = gen.save(gen.solid("RGB", RED, (32, 32)), tmp_path / "x.jpg",
                    exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert _close(_center(decode_image(path, (8, 8))), RED, 4)


# --------------------------------------------------------------------------- keys

def test_source_key_follows_content_not_path(tmp_path):
    a = gen.save(gen.noise(), tmp_path / "a.png")
    copy = tmp_path / "sub" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(a, renamed)
    key = source_key(Source(path=str(a)))
    assert len(key) == 32 and key == hashlib.sha256(a.read_bytes()).digest()
    assert source_key(copy) == key and source_key(str(renamed)) == key

    edited = bytearray(renamed.read_bytes())
    edited[-5] ^= 1
    renamed.write_bytes(bytes(edited))
    assert source_key(renamed) != key


def test_source_key_uses_given_bytes_without_reading(tmp_path):
    data = gen.noise().tobytes()
    assert source_key(Source(path=str(tmp_path / "never-read.png")), data) == \
        hashlib.sha256(data).digest()


def test_source_key_missing_file_names_it(tmp_path):
    with pytest.raises(ImageDecodeError, match="gone.png.*no such file"):
        source_key(tmp_path / "gone.png")


def test_array_keys_include_shape_and_ignore_memory_layout():
    flat = np.arange(24, dtype=np.uint8)
    assert source_key(flat.reshape(4, 6)) != source_key(flat.reshape(6, 4))
    assert source_key(flat.reshape(2, 3, 4)) != source_key(flat.reshape(6, 4))
    strided = flat.reshape(4, 6)[:, ::2]  # non-contiguous view
    assert source_key(strided) == source_key(strided.copy())
    assert source_key(Source(array=strided, index=9)) == source_key(strided)
    with pytest.raises(TypeError):
        source_key(strided, b"bytes")


# --------------------------------------------------------------------------- sources

@pytest.fixture
def tree(tmp_path) -> Path:
    """data/<class>/ files, plus things list_images must skip or survive."""
    root = tmp_path / "data"
    for cls, names in {"cat": ["b.jpg", "a.PNG"], "dog": ["c.webp"], "dog/deep": ["d.tif"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            gen.solid("RGB", RED, (8, 8)).save(root / cls / name)
    gen.solid("RGB", RED, (8, 8)).save(root / "top.bmp")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.jpg").write_bytes(b"x")
    (root / ".ipynb_checkpoints").mkdir()
    gen.solid("RGB", RED, (8, 8)).save(root / ".ipynb_checkpoints" / "e.png")
    (root / "looks_like.jpg").mkdir()  # a folder named like an image
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)  # a link loop
    (root / "dog" / "link.png").symlink_to(root / "cat" / "b.jpg")  # a file link counts
    (root / "dog" / "broken.png").symlink_to(root / "nowhere.png")
    return root


EXPECTED_TREE = ["cat/a.PNG", "cat/b.jpg", "dog/c.webp", "dog/deep/d.tif", "dog/link.png",
                 "top.bmp"]


def _rel(paths, root):
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


def test_list_images_walks_sorted_skipping_hidden_and_links(tree):
    assert _rel(list_images(tree), tree) == EXPECTED_TREE
    assert _rel(list_images(tree, recursive=False), tree) == ["top.bmp"]
    assert all(p.startswith(str(tree)) for p in list_images(tree))


def test_list_images_on_a_non_folder(tmp_path):
    with pytest.raises(ImageDecodeError, match="does not exist"):
        list_images(tmp_path / "nope")
    f = gen.save(gen.solid("RGB", RED), tmp_path / "one.png")
    with pytest.raises(ImageDecodeError, match="is not a folder"):
        list_images(f)


def test_image_extensions_come_from_pillows_registry():
    # Every suffix Pillow registers for a decoded format is scanned (issue: .jfif, .jpe
    # and .pbm used to be left out of folder scans silently), all lower case.
    assert {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif",
            ".tiff", ".ppm", ".pgm", ".pbm"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert not {".txt", ".csv", ".pdf", ".eps", ".svg"} & IMAGE_EXTENSIONS


def test_as_sources_folder_and_single_file(tree):
    sources = as_sources(tree)
    assert _rel([s.path for s in sources], tree) == EXPECTED_TREE
    assert [s.index for s in sources] == list(range(len(EXPECTED_TREE)))
    one = as_sources(Path(tree) / "top.bmp")
    assert len(one) == 1 and one[0].path == str(tree / "top.bmp")


@pytest.mark.parametrize("wrap", [
    list, tuple, lambda ps: np.array(ps), lambda ps: np.array(ps, dtype=object),
    lambda ps: [Path(p) for p in ps], lambda ps: iter(ps),
], ids=["list", "tuple", "str-array", "object-array", "pathlib", "iterator"])
def test_as_sources_path_sequences(wrap):
    paths = ["x/2.jpg", "x/1.jpg", "x/2.jpg"]  # order and duplicates kept
    sources = as_sources(wrap(paths))
    assert [s.describe() for s in sources] == paths
    assert [s.index for s in sources] == [0, 1, 2] and all(s.array is None for s in sources)


def test_as_sources_pandas_series():
    pd = pytest.importorskip("pandas")
    series = pd.Series(["b.jpg", "a.jpg"], index=[10, 3])  # index is ignored, order kept
    assert [s.path for s in as_sources(series)] == ["b.jpg", "a.jpg"]
    with pytest.raises(ImageDecodeError, match=r"input\[1\].*float"):
        as_sources(pd.Series(["b.jpg", None, "a.jpg"]).astype(object).fillna(np.nan))


@pytest.mark.parametrize("shape", [(3, 8, 6), (3, 8, 6, 1), (3, 8, 6, 3), (3, 8, 6, 4)])
def test_as_sources_batch_arrays_are_views(shape):
    batch = np.zeros(shape, np.uint8)
    sources = as_sources(batch)
    assert [s.describe() for s in sources] == ["array[0]", "array[1]", "array[2]"]
    assert all(np.shares_memory(s.array, batch) for s in sources)
    assert decode_image(sources[1], (4, 4)).shape == (4, 4, 3)


def test_as_sources_list_of_differently_sized_arrays():
    arrays = [np.zeros((8, 6, 3), np.uint8), np.zeros((5, 7), np.uint8)]
    sources = as_sources(arrays)
    assert [s.array.shape for s in sources] == [(8, 6, 3), (5, 7)]


@pytest.mark.parametrize("bad, fragments", [
    (np.zeros((2, 8, 8, 3), np.float32), ["uint8", "[0, 255]", "float32", "(2, 8, 8, 3)"]),
    (np.zeros((2, 8, 8), np.float64), ["uint8", "float64", "(2, 8, 8)"]),
    ([np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32)], ["array[1]", "float32"]),
    (np.zeros((2, 8, 8), np.int64), ["int64", "astype(np.uint8)"]),
    (np.zeros((2, 8, 8, 2), np.uint8), ["(2, 8, 8, 2)", "C in 1, 3, 4"]),
    (np.zeros((8, 8), np.uint8), ["img[None]"]),
    (np.zeros((0, 8, 8), np.uint8), ["no images"]),
    ([], ["no images"]),
    ([None], ["input[0]", "NoneType"]),
    (b"\xff\xd8", ["bytes"]),
    (3.5, ["float"]),
], ids=["float32-batch", "float64-gray", "float-in-list", "int64", "two-channels",
        "single-2d-image", "empty-batch", "empty-list", "none-element", "bytes", "number"])
def test_as_sources_rejects_with_a_message(bad, fragments):
    with pytest.raises(ImageDecodeError) as err:
        as_sources(bad)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_as_sources_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDecodeError, match="no images"):
        as_sources(tmp_path / "empty")
    with pytest.raises(ImageDecodeError, match="does not exist"):
        as_sources(str(tmp_path / "typo"))


def test_source_is_frozen_and_checked():
    s = Source(path="a.jpg", index=2)
    with pytest.raises(AttributeError):
        s.index = 3
    assert "a.jpg" in repr(s) and "uint8 (8, 8)" in repr(Source(array=np.zeros((8, 8), np.uint8)))
    with pytest.raises(ImageDecodeError):
        Source()
    with pytest.raises(ImageDecodeError):
        Source(path="a.jpg", array=np.zeros((2, 2), np.uint8))
    assert Source(path=Path("a.jpg")).path == "a.jpg"


def test_read_bytes(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x00\x01")
    assert read_bytes(p) == b"\x00\x01"


# --------------------------------------------------------------------------- threads, docs

def test_decoding_in_threads_matches_serial(tmp_path):
    paths = [gen.save(gen.noise((120, 90), seed=i), tmp_path / f"{i}.jpg") for i in range(8)]
    serial = [decode_image(p, (32, 32), policy="crop") for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: decode_image(p, (32, 32), policy="crop"), paths))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded))


def test_one_colour_image_as_a_3d_array_is_refused_with_both_readings():
    """Issue 14: (28, 28, 3) was read as 28 gray images of 28 × 3 pixels."""
    rgb = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(featx.errors.InvalidDataError) as info:
        as_sources(rgb)
    message = str(info.value)
    assert "(28, 28, 3)" in message and "[img]" in message and "gray" in message
    assert len(as_sources([rgb])) == 1 and len(as_sources(rgb[None])) == 1
    assert len(as_sources(np.zeros((5, 28, 28), np.uint8))) == 5  # last axis not 3/4: gray


def test_pil_images_are_sources(tmp_path):
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 255, (20, 30, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    gray = Image.fromarray(pixels[..., 0])
    palette = image.convert("P")
    sources = as_sources([image, gray, palette])
    assert [s.describe() for s in sources] == ["array[0]", "array[1]", "array[2]"]
    np.testing.assert_array_equal(decode_image(sources[0], (20, 30)), pixels)
    assert decode_image(sources[2], (20, 30)).shape == (20, 30, 3)
    assert len(as_sources(image)) == 1


def test_a_listing_file_passed_as_an_image_says_what_to_do(tmp_path):
    listing = tmp_path / "images.csv"
    listing.write_text("path,label\na.jpg,cat\n")
    with pytest.raises(featx.errors.InvalidDataError, match="load_source"):
        as_sources(str(listing))
