"""A corpus of bad (and awkward-but-valid) image inputs, one generator per kind.

Each generator writes one file (or folder, or link) into a folder and returns
``(kind, path, expectation)``; ``expectation`` is ``"ok"`` (featx must embed it)
or ``"error"`` (featx must refuse it with a :class:`featx.errors.FeatxError`
naming the path, or skip it with a reason under ``on_error="skip"``).

:data:`KINDS` maps each kind to its generator and a note; :func:`build_corpus`
writes them all. A kind that cannot be produced on this machine (chmod 000 as
root) raises :class:`SkipKind` and is reported with the reason instead.

``listed`` (see :data:`KINDS`) says whether :func:`featx.images.list_images`
picks the entry up when the corpus folder is scanned: a symlink loop and a
folder named ``dir.jpg`` are not listed (they are not files), so a folder scan
never even tries them; given as explicit paths they are refused.

Run as a script to write a corpus: ``python tests/robustness/corpus.py OUTDIR``.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

__all__ = ["KINDS", "Kind", "SkipKind", "Case", "build_corpus"]


class SkipKind(Exception):
    """This kind cannot be produced here; the message says why."""


@dataclass(frozen=True)
class Kind:
    make: Callable[[str], Tuple[str, str, str]]
    note: str
    listed: bool = True  # list_images() picks it up from a folder scan


@dataclass(frozen=True)
class Case:
    kind: str
    path: str
    expectation: str  # "ok" | "error"
    note: str
    listed: bool


KINDS: Dict[str, Kind] = {}


def kind(name: str, note: str, listed: bool = True):
    def register(fn):
        def make(folder: str):
            path, expectation = fn(folder)
            return name, path, expectation

        KINDS[name] = Kind(make, note, listed)
        return fn

    return register


# --------------------------------------------------------------------------- helpers


def _rng(seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState(seed)


def _rgb(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray(_rng(seed).randint(0, 256, (h, w, 3)).astype(np.uint8), "RGB")


def _raw(mode: str, seed: int, bands: int, w: int = 48, h: int = 40) -> Image.Image:
    data = _rng(seed).randint(0, 256, (h, w, bands)).astype(np.uint8).tobytes()
    return Image.frombytes(mode, (w, h), data)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(folder: str, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _png_chunk(tag: bytes, body: bytes, crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width × height (8-bit RGB) with one tiny IDAT: cheap on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- valid, awkward


@kind("valid_jpeg", "control: a plain 48×40 RGB JPEG")
def _valid_jpeg(d):
    return _write(d, "valid.jpg", _encode(_rgb(), "JPEG", quality=90)), "ok"


@kind("valid_png_named_jpg", "a PNG named .jpg (format is sniffed from content)")
def _png_named_jpg(d):
    return _write(d, "really_a_png.jpg", _encode(_rgb(seed=1), "PNG")), "ok"


@kind("uppercase_extension", "a JPEG named .JPG")
def _upper(d):
    return _write(d, "UPPER.JPG", _encode(_rgb(seed=2), "JPEG")), "ok"


@kind("cmyk_jpeg", "CMYK JPEG (Pillow writes an Adobe APP14 marker, transform 0)")
def _cmyk(d):
    img = _raw("CMYK", 3, 4)
    return _write(d, "cmyk.jpg", _encode(img, "JPEG")), "ok"


@kind("ycck_jpeg", "YCCK-flagged JPEG: a CMYK JPEG whose Adobe APP14 transform byte is "
      "patched from 0 to 2 (YCCK); libjpeg then converts YCCK→CMYK. Pillow cannot write "
      "true YCCK, so the colours are not meaningful, but the decode path is the YCCK one")
def _ycck(d):
    img = _raw("CMYK", 4, 4)
    data = bytearray(_encode(img, "JPEG"))
    at = data.find(b"Adobe")  # APP14: FFEE len(2) 'Adobe' ver(2) f0(2) f1(2) transform(1)
    if at < 4 or data[at - 4:at - 2] != b"\xff\xee":
        raise SkipKind("Pillow wrote no Adobe APP14 marker for a CMYK JPEG")
    assert data[at + 11] == 0, "expected transform 0 (CMYK) from Pillow"
    data[at + 11] = 2
    return _write(d, "ycck.jpg", bytes(data)), "ok"


@kind("png_16bit", "16-bit grayscale PNG (mode I;16)")
def _png16(d):
    arr = _rng(5).randint(0, 65536, (40, 48)).astype(np.uint16)
    return _write(d, "gray16.png", _encode(Image.fromarray(arr), "PNG")), "ok"


@kind("palette_transparency_png", "palette PNG with a tRNS transparency entry")
def _palette(d):
    img = _rgb(seed=6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _write(d, "palette_trns.png", _encode(img, "PNG", transparency=0)), "ok"


@kind("la_png", "gray + alpha PNG (LA)")
def _la(d):
    img = _raw("LA", 7, 2)
    return _write(d, "la.png", _encode(img, "PNG")), "ok"


@kind("rgba_png", "RGBA PNG with varying alpha")
def _rgba(d):
    img = _raw("RGBA", 8, 4)
    return _write(d, "rgba.png", _encode(img, "PNG")), "ok"


@kind("bilevel_png", "1-bit PNG (mode 1)")
def _onebit(d):
    return _write(d, "onebit.png", _encode(_rgb(seed=9).convert("1"), "PNG")), "ok"


@kind("exif_rotated_jpeg", "JPEG with EXIF orientation 6 (rotate 90°)")
def _exif(d):
    exif = Image.Exif()
    exif[0x0112] = 6
    return _write(d, "exif_rot6.jpg", _encode(_rgb(64, 32, 10), "JPEG", exif=exif)), "ok"


@kind("progressive_jpeg", "progressive JPEG")
def _progressive(d):
    return _write(d, "progressive.jpg",
                  _encode(_rgb(seed=11), "JPEG", progressive=True, quality=85)), "ok"


@kind("grayscale_jpeg", "8-bit grayscale JPEG")
def _gray_jpeg(d):
    return _write(d, "gray.jpg", _encode(_rgb(seed=12).convert("L"), "JPEG")), "ok"


@kind("jpeg_garbage_after_eoi", "JPEG followed by 4 KiB of garbage after EOI (valid)")
def _garbage_after(d):
    data = _encode(_rgb(seed=13), "JPEG") + _rng(13).bytes(4096)
    return _write(d, "trailing_garbage.jpg", data), "ok"


@kind("animated_gif", "3-frame animated GIF (frame 0 is used)")
def _gif_anim(d):
    frames = [_rgb(seed=s).convert("P") for s in (14, 15, 16)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return _write(d, "animated.gif", data), "ok"


@kind("single_frame_gif", "GIF with one frame")
def _gif_one(d):
    return _write(d, "single.gif", _encode(_rgb(seed=17).convert("P"), "GIF")), "ok"


@kind("animated_webp", "3-frame animated WebP")
def _webp_anim(d):
    frames = [_rgb(seed=s) for s in (18, 19, 20)]
    data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    return _write(d, "animated.webp", data), "ok"


@kind("webp_lossless", "lossless WebP")
def _webp_lossless(d):
    return _write(d, "lossless.webp", _encode(_rgb(seed=21), "WEBP", lossless=True)), "ok"


@kind("multipage_tiff", "3-page TIFF (page 0 is used)")
def _tiff_pages(d):
    pages = [_rgb(seed=s) for s in (22, 23, 24)]
    return _write(d, "pages.tif", _encode(pages[0], "TIFF", save_all=True,
                                          append_images=pages[1:])), "ok"


@kind("tiff_float32", "32-bit float TIFF (mode F), values in [0, 1]")
def _tiff_f(d):
    arr = _rng(25).rand(40, 48).astype(np.float32)
    return _write(d, "float32.tiff", _encode(Image.fromarray(arr), "TIFF")), "ok"


@kind("bmp", "24-bit BMP")
def _bmp(d):
    return _write(d, "plain.bmp", _encode(_rgb(seed=26), "BMP")), "ok"


@kind("pgm", "binary PGM")
def _pgm(d):
    return _write(d, "gray.pgm", _encode(_rgb(seed=27).convert("L"), "PPM")), "ok"


@kind("tiny_1x1", "1×1 PNG")
def _tiny(d):
    return _write(d, "one_pixel.png", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")), "ok"


@kind("wide_10000x10", "10000×10 PNG (extreme aspect ratio)")
def _wide(d):
    return _write(d, "wide_10000x10.png", _encode(_rgb(10000, 10, 28), "PNG")), "ok"


@kind("huge_icc_jpeg", "JPEG carrying a 256 KiB ICC profile (split over APP2 markers)")
def _icc(d):
    icc = _rng(29).bytes(256 * 1024)
    return _write(d, "huge_icc.jpg", _encode(_rgb(seed=29), "JPEG", icc_profile=icc)), "ok"


@kind("huge_exif_png", "PNG with a 60 KiB eXIf block of junk")
def _exif_junk(d):
    data = _encode(_rgb(seed=30), "PNG")
    junk = b"MM\x00*" + _rng(30).bytes(60 * 1024)
    iend = data.rfind(b"IEND") - 4
    data = data[:iend] + _png_chunk(b"eXIf", junk) + data[iend:]
    return _write(d, "junk_exif.png", data), "ok"


@kind("unicode_spaces_path", "file name with spaces and non-ASCII characters")
def _unicode(d):
    return _write(d, "ünï cødé 画像 (1).jpg", _encode(_rgb(seed=31), "JPEG")), "ok"


# --------------------------------------------------------------------------- bad


@kind("truncated_jpeg", "JPEG cut to half its bytes")
def _trunc_jpeg(d):
    data = _encode(_rgb(seed=40), "JPEG")
    return _write(d, "truncated.jpg", data[: len(data) // 2]), "error"


@kind("jpeg_soi_only", "a JPEG that is only its SOI marker + APP0 start (header truncated)")
def _soi(d):
    return _write(d, "soi_only.jpg", _encode(_rgb(seed=41), "JPEG")[:20]), "error"


@kind("zero_byte_jpeg", "empty .jpg")
def _empty_jpeg(d):
    return _write(d, "empty.jpg", b""), "error"


@kind("truncated_png", "PNG cut to half its bytes")
def _trunc_png(d):
    data = _encode(_rgb(seed=42), "PNG")
    return _write(d, "truncated.png", data[: len(data) // 2]), "error"


@kind("zero_byte_png", "empty .png")
def _empty_png(d):
    return _write(d, "empty.png", b""), "error"


@kind("png_bad_crc", "PNG whose IHDR chunk CRC is wrong")
def _bad_crc(d):
    data = bytearray(_encode(_rgb(seed=43), "PNG"))
    data[29] ^= 0xFF  # IHDR: 8 signature + 4 len + 4 tag + 13 body = CRC at 29..32
    return _write(d, "bad_crc.png", bytes(data)), "error"


@kind("text_as_jpg", "a text file renamed .jpg")
def _text(d):
    return _write(d, "notes.jpg", b"Shopping list:\n- milk\n- eggs\n" * 20), "error"


@kind("html_as_png", "an HTML page saved as .png")
def _html(d):
    page = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>"
    return _write(d, "page.png", page), "error"


@kind("zip_as_png", "a valid zip archive named .png")
def _zip(d):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return _write(d, "archive.png", buf.getvalue()), "error"


@kind("eps_as_jpg", "a PostScript (EPS) file named .jpg: a format featx does not open "
      "(Pillow would hand it to Ghostscript)")
def _eps(d):
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
           b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
    return _write(d, "vector.jpg", eps), "error"


@kind("svg_as_png", "an SVG document named .png")
def _svg(d):
    return _write(d, "drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" '
                                    b'height="8"><rect width="8" height="8"/></svg>'), "error"


@kind("random_bytes_gif", "8 KiB of random bytes named .gif")
def _random(d):
    return _write(d, "noise.gif", _rng(44).bytes(8192)), "error"


@kind("pixel_bomb_png", "PNG header declaring 100000×100000 pixels (1e10, above Pillow's "
      "MAX_IMAGE_PIXELS) with no real data: 80 bytes on disk")
def _bomb(d):
    return _write(d, "bomb.png", _png_header_only(100_000, 100_000)), "error"


@kind("zero_dims_png", "PNG header declaring 0×0 pixels")
def _zero(d):
    return _write(d, "zero_dims.png", _png_header_only(0, 0)), "error"


@kind("truncated_gif", "animated GIF cut after its header")
def _trunc_gif(d):
    frames = [_rgb(seed=s).convert("P") for s in (45, 46)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    return _write(d, "truncated.gif", data[:40]), "error"


@kind("truncated_tiff", "TIFF cut to a third of its bytes")
def _trunc_tiff(d):
    data = _encode(_rgb(seed=47), "TIFF")
    return _write(d, "truncated.tif", data[: len(data) // 3]), "error"


@kind("truncated_webp", "WebP cut to half its bytes")
def _trunc_webp(d):
    data = _encode(_rgb(seed=48), "WEBP")
    return _write(d, "truncated.webp", data[: len(data) // 2]), "error"


@kind("symlink_loop", "loop.jpg → loop2.jpg → loop.jpg (ELOOP)", listed=False)
def _loop(d):
    a, b = os.path.join(d, "loop.jpg"), os.path.join(d, "loop2.jpg")
    try:
        os.symlink("loop2.jpg", a)
        os.symlink("loop.jpg", b)
    except (OSError, NotImplementedError) as exc:
        raise SkipKind(f"cannot create symlinks here: {exc}")
    return a, "error"


@kind("dangling_symlink", "gone.jpg → a file that does not exist", listed=False)
def _dangling(d):
    p = os.path.join(d, "gone.jpg")
    try:
        os.symlink("does-not-exist.jpg", p)
    except (OSError, NotImplementedError) as exc:
        raise SkipKind(f"cannot create symlinks here: {exc}")
    return p, "error"


@kind("dir_named_jpg", "a folder named dir.jpg", listed=False)
def _dir(d):
    p = os.path.join(d, "dir.jpg")
    os.mkdir(p)
    return p, "error"


@kind("unreadable_chmod_000", "a valid JPEG with permissions 000")
def _unreadable(d):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        raise SkipKind("running as root: chmod 000 does not stop root from reading")
    p = _write(d, "locked.jpg", _encode(_rgb(seed=49), "JPEG"))
    os.chmod(p, 0)
    if os.access(p, os.R_OK):
        raise SkipKind("chmod 000 did not make the file unreadable on this file system")
    return p, "error"


# --------------------------------------------------------------------------- corpus


def build_corpus(folder: str) -> Tuple[List[Case], Dict[str, str]]:
    """Write every kind into ``folder``; return (cases, {skipped kind: reason})."""
    os.makedirs(folder, exist_ok=True)
    cases, skipped = [], {}
    for name, k in KINDS.items():
        try:
            got_name, path, expectation = k.make(folder)
        except SkipKind as exc:
            skipped[name] = str(exc)
            continue
        assert got_name == name and expectation in ("ok", "error")
        cases.append(Case(name, path, expectation, k.note, k.listed))
    return cases, skipped


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "featx-bad-corpus"
    cases, skipped = build_corpus(out)
    for c in cases:
        print(f"{c.expectation:5s}  {c.kind:28s} {c.path}")
    for name, why in skipped.items():
        print(f"skip   {name:28s} {why}")
