"""Sources → decoded ``uint8`` RGB arrays: the one decoder featx has.

Everything that needs pixels (the embedding engine, the fine-tuner, the Dask
workers) goes through :func:`decode_image`, so an image is turned into pixels
the same way whether it is embedded, trained on, or predicted.

The module uses Pillow only (no TensorFlow, no Keras): decoding runs in a
thread pool beside the forward pass, and Pillow releases the GIL while it
decodes and resamples.

Decisions, and why
------------------
* **Identity is content.** :func:`source_key` hashes file bytes, not paths, so
  a renamed or copied file hits the embedding cache and an edited one misses.
* **Formats are sniffed, and restricted.** Pillow identifies the file by its
  content (a PNG named ``.jpg`` decodes fine), but only among
  :data:`DECODE_FORMATS` — the formats behind :data:`IMAGE_EXTENSIONS`. This
  keeps Pillow's rarer plugins (EPS hands the file to Ghostscript) out of reach
  of a hostile file in an image folder.
* **JPEG draft.** A JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when
  that still leaves at least as many pixels as the resize needs on both sides
  (the largest such power of two). That is what makes a 12 MP photo cheap.
* **Transparency is composited over white**, not dropped and not over black.
  The colour under a fully transparent pixel is undefined (often black, often
  left-over garbage); dropping alpha, as ``keras.utils.load_img`` does, shows
  it. Images with alpha are mostly logos, icons and product cut-outs authored
  for light pages; dark line art on a transparent background vanishes over
  black but keeps its shape over white, as it does in a browser.
* **High bit depth is scaled, never clipped**: 16-bit ``65535`` becomes
  ``255`` (``>> 8``). 10/12/14-bit data in a 16- or 32-bit container is scaled
  by the depth its values use (or a TIFF's stated maximum), not the
  container's, which would make it black. See :func:`decode_image`.
* **The decompression-bomb guard stays on.** featx refuses any image above
  ``PIL.Image.MAX_IMAGE_PIXELS`` itself, from the header, before decoding.
  It does not toggle warning filters: ``warnings.catch_warnings`` swaps
  process-global state and is not thread-safe before Python 3.14, and decoding
  runs in threads beside Keras, which uses it too. Pillow may therefore still
  print its own ``DecompressionBombWarning`` once; the image is refused anyway.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, InvalidParameterError

__all__ = [
    "DECODE_FORMATS",
    "IMAGE_EXTENSIONS",
    "RESIZE_POLICIES",
    "DecodeInfo",
    "Source",
    "as_sources",
    "check_decode_options",
    "decode_image",
    "decode_image_with_info",
    "list_images",
    "max_image_bytes",
    "read_bytes",
    "source_key",
]

def _decode_formats() -> tuple:
    from PIL import features

    # AVIF only where this Pillow was built with libavif (Pillow >= 11.2 wheels are).
    avif = ("AVIF",) if features.check("avif") else ()
    return ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM") + avif


#: Pillow formats :func:`decode_image` will open (JPEG includes cameras' multi-picture
#: MPO files; PPM covers PGM and PBM too).
DECODE_FORMATS = _decode_formats()


def _image_extensions() -> frozenset:
    Image.init()  # load every plugin, so the registry is complete
    formats = set(DECODE_FORMATS) | {"MPO"}
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in formats)


#: File suffixes (lower case) that :func:`list_images` picks up: every suffix Pillow
#: registers for :data:`DECODE_FORMATS` (``.jfif``, ``.jpe``, ``.pbm``, ``.apng`` ...).
IMAGE_EXTENSIONS = _image_extensions()

#: Formats recognised by their first bytes that featx does not decode, so an error can
#: name them instead of "not an image": (name, test of the first 32 bytes).
_KNOWN_UNSUPPORTED = (
    ("HEIC/HEIF", lambda b: b[4:8] == b"ftyp" and b[8:12] in (
        b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")),
    ("AVIF", lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"avif", b"avis")),
    ("JPEG 2000", lambda b: b.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")
     or b.startswith(b"\xffO\xffQ")),
    ("JPEG XL", lambda b: b.startswith(b"\xff\x0a")
     or b.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
    ("Photoshop PSD", lambda b: b.startswith(b"8BPS")),
    ("PDF", lambda b: b.startswith(b"%PDF")),
    ("PostScript/EPS", lambda b: b.startswith(b"%!PS") or b.startswith(b"\xc5\xd0\xd3\xc6")),
    ("SVG", lambda b: b.lstrip().startswith((b"<svg", b"<?xml"))),
    ("ICO", lambda b: b.startswith(b"\x00\x00\x01\x00")),
)


def _known_format(data: bytes) -> str | None:
    """The name of a format featx recognises but does not decode, from its first bytes."""
    head = data[:32]
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    for name, test in _KNOWN_UNSUPPORTED:
        if test(head):
            return name
    return None


#: Accepted values of ``policy``.
RESIZE_POLICIES = ("squash", "crop", "pad")

_BILINEAR = Image.Resampling.BILINEAR
# Pillow first box-reduces by an integer factor, then resamples the last >= 3x;
# its docs call the result indistinguishable from a one-step resize, ~2x faster
# on large non-JPEG images (JPEGs are mostly reduced by draft already).
_REDUCING_GAP = 3.0
_WHITE = 255
_PAD_FILL = (0, 0, 0)  # letterbox bars: black, as in every letterboxing convention
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_PIXEL_CHANNELS = (1, 3, 4)
_DEFAULT_MAX_IMAGE_BYTES = 512 * 2**20


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, eq=False)
class Source:
    """One input image: a file path or an in-memory ``uint8`` array.

    Exactly one of ``path`` and ``array`` is set. ``index`` is the position in
    the caller's input, so errors and results can point back at it. Equality is
    identity (arrays have no cheap, meaningful ``==``); compare
    :func:`source_key` values to compare content.

    Parameters
    ----------
    path : str or None
        Path of an image file.
    array : numpy.ndarray or None
        ``uint8`` pixels, ``(H, W)`` or ``(H, W, C)`` with ``C`` in 1, 3, 4.
    index : int
        Position in the caller's input.

    Examples
    --------
    >>> import numpy as np
    >>> Source(path="data/cat/1.jpg").describe()
    'data/cat/1.jpg'
    >>> Source(array=np.zeros((8, 8), np.uint8), index=17).describe()
    'array[17]'
    """

    path: str | None = None
    array: np.ndarray | None = None
    index: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.array is None):
            raise ImageDecodeError(
                "Source needs exactly one of path= and array=; received "
                f"path={self.path!r} and array={'None' if self.array is None else 'an array'}"
            )
        if self.path is not None and not isinstance(self.path, str):
            # Keep paths as str: picklable, hashable, printable the same everywhere.
            object.__setattr__(self, "path", os.fspath(self.path))

    def describe(self) -> str:
        """A human label for messages: the path, or ``array[index]``.

        Examples
        --------
        >>> Source(path="x.png", index=3).describe()
        'x.png'
        """
        return self.path if self.path is not None else f"array[{self.index}]"

    def __repr__(self) -> str:  # the default would print every pixel
        if self.path is not None:
            return f"Source(path={self.path!r}, index={self.index})"
        return (f"Source(array=<{self.array.dtype} {tuple(self.array.shape)}>, "
                f"index={self.index})")


def list_images(root: str | os.PathLike, *, recursive: bool = True) -> list[str]:
    """Sorted paths of the image files under a folder.

    A file counts when its suffix (any case) is in :data:`IMAGE_EXTENSIONS`.
    Hidden files and folders (name starting with ``.``: ``.git``,
    ``.ipynb_checkpoints``, macOS ``._x.jpg`` resource forks) are skipped, as
    are folders whose name looks like an image. Symbolic links to files are
    listed; symbolic links to folders are not followed, so a link loop cannot
    hang the walk.

    Parameters
    ----------
    root : str or os.PathLike
        The folder.
    recursive : bool, default True
        Descend into sub-folders (``data/<class>/*.jpg``).

    Returns
    -------
    list of str
        Paths joined onto ``root`` as given, sorted.

    Raises
    ------
    ImageDecodeError
        ``root`` is not a folder, or a folder under it cannot be read.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(root, "cat"))
    >>> Image.new("RGB", (8, 8)).save(os.path.join(root, "cat", "b.PNG"))
    >>> Image.new("RGB", (8, 8)).save(os.path.join(root, "a.jpg"))
    >>> _ = open(os.path.join(root, "notes.txt"), "w").close()
    >>> [os.path.relpath(p, root) for p in list_images(root)]
    ['a.jpg', 'cat/b.PNG']
    """
    root_str = os.fspath(root)
    if not os.path.isdir(root_str):
        what = "does not exist" if not os.path.exists(root_str) else "is not a folder"
        raise ImageDecodeError(f"{root_str!r} {what}; expected a folder of images")
    found: list[str] = []
    pending = [root_str]
    while pending:
        folder = pending.pop()
        try:
            # scandir's DirEntry knows the entry type without a stat per file.
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            pending.append(entry.path)
                        continue
                    # is_file() follows links: file links count, folder/broken links don't.
                    if (os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                            and _entry_is_file(entry)):
                        found.append(entry.path)
        except OSError as exc:
            # Skipping an unreadable class folder silently would skew a dataset.
            raise ImageDecodeError(
                f"cannot list folder {folder!r}: {exc.strerror or exc}; "
                "expected a readable folder of images") from exc
    found.sort()
    return found


def _entry_is_file(entry: os.DirEntry) -> bool:
    """``entry.is_file()``, with a link that cannot be resolved counted as not a file.

    ``DirEntry.is_file()`` swallows only ``FileNotFoundError`` (a dangling link);
    a symlink loop raises ``OSError(ELOOP)``, which used to abort the whole
    listing ("cannot list folder") because of one bad link. featx robustness
    fix (tests/robustness): a looping link is treated like a dangling one --
    not listed -- as the docstring of :func:`list_images` promises.
    """
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _check_pixels(arr: np.ndarray, label: str) -> np.ndarray:
    """Validate one image array; returns it as (H, W) or (H, W, C)."""
    if arr.dtype != np.uint8:
        hint = ""
        if arr.dtype.kind == "f":
            hint = (" (scale floats in [0, 1] with (x * 255).round().astype(np.uint8); "
                    "values in [0, 255] need .round().astype(np.uint8) only)")
        elif arr.dtype.kind in "iub":
            hint = " (if the values lie in [0, 255], use .astype(np.uint8))"
        raise ImageDecodeError(
            f"{label}: expected uint8 pixel values in [0, 255]; received a {arr.dtype} "
            f"array of shape {tuple(arr.shape)}{hint}")
    ok = (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in _PIXEL_CHANNELS))
    if not ok or 0 in arr.shape:
        raise ImageDecodeError(
            f"{label}: expected an image array of shape (H, W) or (H, W, C) with C in 1, 3, 4; "
            f"received shape {tuple(arr.shape)}")
    return arr


#: Files that list images (``path[,label]`` rows) rather than being one.
LISTING_SUFFIXES = (".csv", ".tsv", ".txt")


def _is_pil_image(x) -> bool:
    """A ``PIL.Image.Image``, recognised without importing Pillow for other inputs."""
    return type(x).__module__.startswith("PIL.") and hasattr(x, "getbands")


def _pil_pixels(image, name: str) -> np.ndarray:
    """A PIL image's pixels as a uint8 array decode_image accepts (gray, RGB or RGBA)."""
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in
                              image.info else "RGB")
    return _check_pixels(np.asarray(image), name)


def as_sources(x: Any) -> list[Source]:
    """Normalise any accepted input into a list of :class:`Source`, in input order.

    Parameters
    ----------
    x : path, sequence of paths, uint8 array, or sequence of uint8 arrays
        * a folder (``str`` or ``os.PathLike``): its images, via :func:`list_images`;
        * one image file path;
        * a list, tuple, 1-D ``numpy`` object/str array or ``pandas.Series`` of
          paths (or of per-image arrays, which may differ in size);
        * a ``uint8`` array ``(N, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1, 3, 4.
          A 3-D array is a batch of gray images; one whose last axis is 3 or 4
          (one colour image?) is refused as ambiguous: wrap a single image as
          ``[img]`` or ``img[None]``;
        * ``PIL.Image`` objects, alone or in a list (any mode; converted to RGB).

        Paths in sequences are not checked here; a missing file fails when it is
        read, so a caller can choose to skip it.

    Returns
    -------
    list of Source

    Raises
    ------
    ImageDecodeError
        No images; an array that is not ``uint8`` (floats are not rescaled
        silently); an element that is neither a path nor an array; a single
        path that does not exist.

    Examples
    --------
    >>> import numpy as np
    >>> [s.describe() for s in as_sources(["a.jpg", "b.png"])]
    ['a.jpg', 'b.png']
    >>> [s.describe() for s in as_sources(np.zeros((2, 32, 32, 3), np.uint8))]
    ['array[0]', 'array[1]']
    >>> as_sources(np.zeros((2, 32, 32, 3), np.float32))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    featx.errors.ImageDecodeError: input: expected uint8 pixel values in [0, 255]; ...
    """
    if hasattr(x, "tocsr") and hasattr(x, "nnz"):  # scipy.sparse, without importing scipy
        raise ImageDecodeError(
            f"input: sparse input is not supported (received {type(x).__name__}); expected "
            "image paths or uint8 image arrays")
    if isinstance(x, Source):
        return [x]
    if _is_pathlike(x):
        path = os.fspath(x)
        if os.path.isdir(path):
            paths = list_images(path)
            if not paths:
                raise ImageDecodeError(
                    f"no images in folder {path!r}; expected files ending in "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))} (hidden files are skipped)")
            return [Source(path=p, index=i) for i, p in enumerate(paths)]
        if not os.path.exists(path):
            raise ImageDecodeError(f"{path!r} does not exist; expected an image file or a folder")
        if path.lower().endswith(LISTING_SUFFIXES):
            raise ImageDecodeError(
                f"{path!r} is a listing, not an image: read its paths with "
                "featx.datasets.load_source(path) (returns sources, labels, class names) and "
                "pass the sources")
        return [Source(path=path, index=0)]
    if isinstance(x, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(
            f"input: received {type(x).__name__}; expected paths or uint8 arrays "
            "(decode_image accepts encoded bytes directly)")
    if isinstance(x, dict):
        raise ImageDecodeError("input: received a dict; expected paths or uint8 arrays")
    if type(x).__name__ == "DataFrame":
        raise ImageDecodeError(
            "input: received a DataFrame; expected one column of it (df['path'])")

    if _is_pil_image(x):
        return [Source(array=_pil_pixels(x, "input"), index=0)]
    if isinstance(x, np.ndarray) and x.dtype != object and x.dtype.kind not in "US":
        if x.ndim == 3 and x.shape[-1] in (3, 4) and x.dtype == np.uint8:
            raise ImageDecodeError(
                f"input: a uint8 array of shape {x.shape} is ambiguous: one colour image, or "
                f"{x.shape[0]} gray images {x.shape[1]} × {x.shape[2]} pixels? For one colour "
                "image pass [img] (or img[None]); for a batch of gray images pass a list of "
                "2-D arrays")
        if x.ndim in (3, 4):
            if x.dtype != np.uint8:
                _check_pixels(x, "input")  # raises the uint8 message for the whole batch
            if x.ndim == 4 and x.shape[3] not in _PIXEL_CHANNELS:
                raise ImageDecodeError(
                    f"input: expected a uint8 array (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
                    f"received shape {x.shape}")
            if x.shape[0] == 0:
                raise ImageDecodeError(f"input: no images (received an array of shape {x.shape})")
            # Views into the caller's batch: no pixel is copied here.
            return [Source(array=_check_pixels(x[i], f"array[{i}]"), index=i)
                    for i in range(x.shape[0])]
        _check_pixels(x, "input")  # dtype message first when both are wrong
        raise ImageDecodeError(
            f"input: expected a uint8 array (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
            f"received shape {x.shape} (wrap one image as img[None])")

    items: Sequence[Any]
    if isinstance(x, np.ndarray):
        if x.ndim != 1:
            raise ImageDecodeError(
                f"input: expected a 1-D array of paths; received shape {x.shape}")
        items = x.tolist()
    elif isinstance(x, Iterable):  # list, tuple, pandas Series (its values), generators
        items = list(x)
    else:
        raise ImageDecodeError(
            f"input: received {type(x).__name__}; expected a folder, a path, a list of "
            "paths, or uint8 arrays")
    if not items:
        raise ImageDecodeError("input: no images (received an empty sequence)")

    out: list[Source] = []
    for i, item in enumerate(items):
        if isinstance(item, Source):
            out.append(Source(path=item.path, array=item.array, index=i))
        elif _is_pathlike(item):
            out.append(Source(path=os.fspath(item), index=i))
        elif isinstance(item, np.ndarray):
            out.append(Source(array=_check_pixels(item, f"array[{i}]"), index=i))
        elif _is_pil_image(item):
            out.append(Source(array=_pil_pixels(item, f"array[{i}]"), index=i))
        else:
            raise ImageDecodeError(
                f"input[{i}]: received {type(item).__name__} {item!r:.60}; "
                "expected a path (str or os.PathLike) or a uint8 array")
    return out


# --------------------------------------------------------------------------- bytes and keys


def max_image_bytes() -> int:
    """Largest image file featx reads, in bytes: ``FEATX_MAX_IMAGE_BYTES`` or 512 MiB.

    Well above any real photo (a 100 MP TIFF is ~300 MB); it stops a file that
    is not an image at all (a disk image, ``/dev/zero`` behind a link) from being
    read until memory runs out.

    Examples
    --------
    >>> max_image_bytes() >= 2**20
    True
    """
    value = os.environ.get("FEATX_MAX_IMAGE_BYTES", "")
    try:
        limit = int(value) if value else _DEFAULT_MAX_IMAGE_BYTES
    except ValueError:
        raise ImageDecodeError(
            f"FEATX_MAX_IMAGE_BYTES={value!r}: expected a whole number of bytes") from None
    if limit < 1:
        raise ImageDecodeError(f"FEATX_MAX_IMAGE_BYTES={value!r}: expected at least 1 byte")
    return limit


def _human_bytes(n: int) -> str:
    return f"{n} bytes" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _not_regular(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of an image file, with errors that say what went wrong.

    Only regular files are read: a named pipe would block forever and a device
    (``/dev/zero``) would never end, so both are refused before any byte is
    read. Files above ``max_bytes`` are refused too.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        Size limit; default :func:`max_image_bytes` (512 MiB).

    Returns
    -------
    bytes

    Raises
    ------
    ImageDecodeError
        Missing file, a folder, a pipe, device or socket, permission denied, any
        other OS error (its reason is quoted), an empty (0-byte) file, or a file
        above the size limit.

    Examples
    --------
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> _ = open(p, "wb").write(b"abc")
    >>> read_bytes(p)
    b'abc'
    >>> read_bytes(p + ".missing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    featx.errors.ImageDecodeError: cannot read '...x.bin.missing': no such file; expected an image file
    """
    p = os.fspath(path)
    limit = max_image_bytes() if max_bytes is None else int(max_bytes)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"cannot read {p!r}: no such file; expected an image file") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError(
            f"cannot read {p!r}: it is a folder; expected an image file") from exc
    except PermissionError as exc:
        if os.path.isdir(p):  # Windows reports folders as permission errors
            raise ImageDecodeError(
                f"cannot read {p!r}: it is a folder; expected an image file") from exc
        raise ImageDecodeError(
            f"cannot read {p!r}: permission denied; expected a readable image file") from exc
    except OSError as exc:
        raise ImageDecodeError(
            f"cannot read {p!r}: {exc.strerror or exc}; expected a readable image file") from exc
    try:
        st = os.fstat(fd)  # of what was opened: no window between a check and the read
        kind = _not_regular(st.st_mode)
        if kind is not None:
            raise ImageDecodeError(f"cannot read {p!r}: it is {kind}; expected an image file")
        if st.st_size > limit:
            raise ImageDecodeError(
                f"cannot read {p!r}: {_human_bytes(st.st_size)} is above the limit of "
                f"{_human_bytes(limit)} per image (raise FEATX_MAX_IMAGE_BYTES if it is "
                "really an image)")
        data = _read_at_most(fd, st.st_size, limit + 1)
    except OSError as exc:
        raise ImageDecodeError(
            f"cannot read {p!r}: {exc.strerror or exc}; expected a readable image file") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ImageDecodeError(
            f"cannot read {p!r}: more than {_human_bytes(limit)} (the limit per image; "
            "raise FEATX_MAX_IMAGE_BYTES if it is really an image)")
    if not data:
        raise ImageDecodeError(f"cannot decode {p!r}: empty file (0 bytes); expected an image file")
    return data


def _read_at_most(fd: int, expected: int, cap: int) -> bytes:
    """The file's bytes, at most ``cap`` of them (a file growing while read stops there).

    Asks for the size ``fstat`` gave plus one byte first: a buffered ``read(cap)``
    allocates ``cap`` bytes up front (the whole per-image limit), which made reading
    a 47 KB JPEG cost 107 µs instead of 51.
    """
    parts, total = [], 0
    want = min(cap, max(expected, 0) + 1)
    while total < cap:
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        want = min(cap - total, max(want, 1 << 20))
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _array_key(arr: np.ndarray) -> bytes:
    h = hashlib.sha256()
    # hashlib reads the buffer in place (and drops the GIL); only a strided view is copied.
    h.update(np.ascontiguousarray(arr))
    # Shape and dtype join the digest so (64, 48) and (48, 64) of the same bytes differ.
    h.update(f"\x00featx-array shape={','.join(map(str, arr.shape))} dtype={arr.dtype.str}"
             .encode())
    return h.digest()


def source_key(source: Source | str | os.PathLike | np.ndarray,
               data: bytes | None = None) -> bytes:
    """The 32-byte sha256 digest that identifies an image by its content.

    For a file: ``sha256(file bytes)`` — a renamed or copied file has the same
    key, an edited one a different key. For an array: ``sha256`` over its
    C-ordered bytes, then its shape and dtype, so equal bytes in another shape
    differ.

    Parameters
    ----------
    source : Source, path or numpy.ndarray
    data : bytes, optional
        The file's bytes when the caller already read them (the engine reads a
        file once, to key it and to decode it). Only for path sources.

    Returns
    -------
    bytes
        32 bytes.

    Raises
    ------
    ImageDecodeError
        The file cannot be read (see :func:`read_bytes`).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(12, dtype=np.uint8)
    >>> len(source_key(a.reshape(3, 4)))
    32
    >>> source_key(a.reshape(3, 4)) == source_key(a.reshape(4, 3))
    False
    >>> source_key("unused.jpg", data=b"same bytes") == source_key("other.png", data=b"same bytes")
    True
    """
    if isinstance(source, np.ndarray):
        source = Source(array=source)
    elif not isinstance(source, Source):
        source = Source(path=os.fspath(source))
    if source.array is not None:
        if data is not None:
            raise TypeError("source_key: data= is only for path sources, not arrays")
        return _array_key(source.array)
    if data is None:
        data = read_bytes(source.path)
    return hashlib.sha256(data).digest()


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodeInfo:
    """What :func:`decode_image_with_info` did; sizes are ``(height, width)``.

    Attributes
    ----------
    name : str
        The label used in messages.
    format : str or None
        Pillow's format (``"JPEG"``, ``"PNG"``, ...); ``None`` for arrays.
    mode : str
        Pillow mode as stored (``"RGB"``, ``"I;16"``, ``"P"``, ...).
    stored_size : tuple of int
        Size in the file, before draft and EXIF orientation.
    draft_scale : int
        JPEG DCT reduction used: 1, 2, 4 or 8.
    decoded_size : tuple of int
        Size actually decoded (after draft), before orientation.
    orientation : int
        EXIF orientation tag applied (1 when none).
    oriented_size : tuple of int
        Size after EXIF orientation, at decoded scale: what the resize saw.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.images import decode_image_with_info
    >>> pixels, info = decode_image_with_info(np.zeros((20, 40, 3), np.uint8), (10, 10))
    >>> pixels.shape, info.stored_size
    ((10, 10, 3), (20, 40))
    """

    name: str
    format: str | None
    mode: str
    stored_size: tuple[int, int]
    draft_scale: int
    decoded_size: tuple[int, int]
    orientation: int
    oriented_size: tuple[int, int]


def _check_size(size: Any) -> tuple[int, int]:
    try:
        h, w = size
        valid = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in (h, w))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InvalidParameterError(
            f"size must be (height, width), two positive integers; received {size!r}")
    return int(h), int(w)


def _check_policy(policy: Any) -> None:
    if policy not in RESIZE_POLICIES:
        raise InvalidParameterError(
            f"policy must be one of {', '.join(map(repr, RESIZE_POLICIES))}; received {policy!r}")


def check_decode_options(size: Any, policy: Any = "squash") -> tuple[int, int]:
    """Validate ``size`` and ``policy`` once, before decoding many images.

    :func:`decode_image` checks them too, but a caller that skips images which
    fail to decode should not skip *every* image because of a bad option:
    call this first, outside the skip.

    Returns
    -------
    tuple of int
        ``(height, width)`` as plain ints.

    Raises
    ------
    InvalidParameterError
        ``size`` is not two positive integers, or ``policy`` is unknown.

    Examples
    --------
    >>> check_decode_options((224, 224), "crop")
    (224, 224)
    """
    size = _check_size(size)
    _check_policy(policy)
    return size


def _draft_scale(w: int, h: int, tw: int, th: int, policy: str) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) that leaves the resize enough pixels.

    ``w, h`` are the oriented stored size. The resize needs, per side, at least
    the size it produces from the whole image: squash and crop reach ``(tw, th)``
    on the limiting side, so ``s <= min(w/tw, h/th)`` (for crop: the short side
    stays >= target); pad fits the long side, so ``s <= max(w/tw, h/th)``.
    """
    fit = min if policy in ("squash", "crop") else max
    limit = min(fit(w / tw, h / th), w, h)  # w, h: never ask libjpeg for a 0-pixel side
    for s in (8, 4, 2):
        if s <= limit:
            return s
    return 1


def _valid_box(method: Image.Transpose | None, dw: int, dh: int,
               vw: float, vh: float) -> tuple[float, float, float, float]:
    """Where the draft's valid area ``(0, 0, vw, vh)`` lands after an EXIF transpose.

    libjpeg rounds a reduced side up (4001 px at 1/8 → 501 px covering 4008), so
    the last decoded column/row is partly padding; Pillow reports the true extent
    as a float box. Orientation moves that box to another corner.
    """
    return tuple(map(float, _moved_box(method, dw, dh, vw, vh)))


def _moved_box(method, dw, dh, vw, vh):
    T = Image.Transpose
    if method is None:
        return (0.0, 0.0, vw, vh)
    if method is T.FLIP_LEFT_RIGHT:
        return (dw - vw, 0.0, float(dw), vh)
    if method is T.FLIP_TOP_BOTTOM:
        return (0.0, dh - vh, vw, float(dh))
    if method is T.ROTATE_180:
        return (dw - vw, dh - vh, float(dw), float(dh))
    if method is T.TRANSPOSE:
        return (0.0, 0.0, vh, vw)
    if method is T.ROTATE_270:  # (x, y) -> (dh - y, x)
        return (dh - vh, 0.0, float(dh), vw)
    if method is T.ROTATE_90:  # (x, y) -> (y, dw - x)
        return (0.0, dw - vw, vh, float(dw))
    return (dh - vh, dw - vw, float(dh), float(dw))  # TRANSVERSE: (x, y) -> (dh - y, dw - x)


def _bits_of_I(img: Image.Image) -> int:
    """Value bits of a 32-bit integer (mode ``I``) image, from what the file declares."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 258 in tags:  # TIFF BitsPerSample
        bits = tags[258]
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        signed = tags.get(339, (1,))  # SampleFormat 2 = signed: one bit is the sign
        signed = (signed[0] if isinstance(signed, tuple) else signed) == 2
        return max(8, bits - 1 if signed else bits)
    # PNG (older Pillow) and PGM/PPM (Pillow rescales any maxval to 65535) give 16-bit data.
    return 16


_COMMON_DEPTHS = (8, 10, 12, 14, 16, 20, 24, 32)  # sensor and container bit depths


def _declared_max(img: Image.Image) -> int | None:
    """A TIFF's SMaxSampleValue or MaxSampleValue, when the file states one."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return None
    for tag in (341, 281):  # SMaxSampleValue, MaxSampleValue
        if tag in tags:
            value = tags[tag]
            value = value[0] if isinstance(value, tuple) else value
            try:
                value = int(value)
            except (TypeError, ValueError):
                continue
            if value > 0:
                return value
    return None


def _value_bits(arr: np.ndarray, declared: int) -> int:
    """Bits the values actually use, rounded up to a common depth, at most ``declared``.

    10-, 12- and 14-bit sensor data usually arrive in 16- or 32-bit containers;
    scaling by the container's depth made a 12-bit uint32 TIFF all black.
    """
    top = int(arr.max()) if arr.size else 0
    used = max(8, top.bit_length())
    depth = next((d for d in _COMMON_DEPTHS if d >= used), used)
    return max(8, min(declared, depth))


def _to_8bit(img: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` and ``F`` images → ``L``, scaled by bit depth, never clipped at 255.

    Integer images are scaled by the file's stated maximum sample value where a
    TIFF gives one, else by the depth their values use (rounded up to 10, 12,
    14, 16, ... bits, never above the declared depth).
    """
    mode = img.mode
    arr = np.asarray(img)
    if mode.startswith("I"):
        values = np.clip(arr, 0, None)
        top = _declared_max(img)
        if top is not None:
            out = np.rint(np.minimum(values, top) * (255.0 / top)).astype(np.uint8)
        else:
            declared = 16 if mode.startswith("I;16") else _bits_of_I(img)
            shift = _value_bits(values, declared) - 8
            out = (values >> shift).astype(np.uint8)
    else:  # F: floats have no bit depth to go by
        finite = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(finite.min()), float(finite.max())
        if lo >= 0.0 and hi <= 1.0:
            # The float-image convention (skimage, most float TIFFs): [0, 1].
            out = np.rint(finite * 255.0).astype(np.uint8)
        elif hi > lo:
            # No shared convention for other ranges (depth maps, raw sensor values):
            # stretch min..max like an image viewer rather than clip most of it away.
            out = np.rint((finite - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        else:
            out = np.zeros(finite.shape, np.uint8)
    return Image.fromarray(out)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """``RGBA``/``LA`` → ``RGB``/``L`` over a white background (see module docs for why)."""
    base_mode = "RGB" if img.mode == "RGBA" else "L"
    background = Image.new(base_mode, img.size, (_WHITE,) * len(base_mode))
    # paste() blends in C, out = src * a + background * (1 - a), reading the colour
    # bands of the RGBA/LA source directly (no converted copy).
    background.paste(img, mask=img.getchannel("A"))
    return background


def _to_working_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode → ``L`` or ``RGB``.

    Gray stays one channel through the resize (a third of the work) and becomes
    RGB at the end.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        if "transparency" in img.info:  # tRNS colour key in a gray/RGB PNG
            return _composite_on_white(img.convert("LA" if mode == "L" else "RGBA"))
        return img
    if mode in ("RGBA", "LA"):
        return _composite_on_white(img)
    if mode in ("RGBa", "La", "PA"):
        return _composite_on_white(img.convert("RGBA" if mode != "La" else "LA"))
    if mode == "P":
        # Converting P with transparency straight to RGB would drop it (Pillow warns).
        if "transparency" in img.info:
            return _composite_on_white(img.convert("RGBA"))
        return img.convert("RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return _to_8bit(img)
    # CMYK (Pillow's conversion; Adobe's inverted CMYK JPEGs are handled on load),
    # YCbCr, RGBX, HSV, LAB, ...
    return img.convert("RGB")


def _resize(img: Image.Image, box: tuple[float, float, float, float],
            size: tuple[int, int], policy: str) -> Image.Image:
    """Resample ``box`` of ``img`` to ``size`` = (width, height) per ``policy``; RGB out."""
    tw, th = size
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if policy == "squash":
        out = img.resize((tw, th), _BILINEAR, box=box, reducing_gap=_REDUCING_GAP)
    elif policy == "crop":
        # Short side to target, then centre-crop -- done as one resample of the
        # centred sub-box, which is the same mapping without an intermediate image.
        r = max(tw / bw, th / bh)
        cw, ch = tw / r, th / r
        cx0, cy0 = x0 + (bw - cw) / 2, y0 + (bh - ch) / 2
        # Robustness fix (tests/robustness/test_fuzz.py): on the limiting side cw == bw
        # only up to rounding, and a box 1e-16 outside the image made Pillow refuse it
        # ("box offset can't be negative"), failing ~7 % of valid size/target pairs.
        # Clamp the centred box into the valid area.
        cx0, cy0 = max(x0, cx0), max(y0, cy0)
        cx1, cy1 = min(x1, cx0 + cw), min(y1, cy0 + ch)
        out = img.resize((tw, th), _BILINEAR, box=(cx0, cy0, cx1, cy1),
                         reducing_gap=_REDUCING_GAP)
    else:  # pad
        r = min(tw / bw, th / bh)
        fw = min(tw, max(1, round(bw * r)))
        fh = min(th, max(1, round(bh * r)))
        fitted = img.resize((fw, fh), _BILINEAR, box=box, reducing_gap=_REDUCING_GAP)
        if fitted.mode != "RGB":
            fitted = fitted.convert("RGB")
        if (fw, fh) == (tw, th):
            return fitted
        out = Image.new("RGB", (tw, th), _PAD_FILL)
        out.paste(fitted, ((tw - fw) // 2, (th - fh) // 2))
        return out
    return out if out.mode == "RGB" else out.convert("RGB")


def _decode_array(arr: np.ndarray, th: int, tw: int, policy: str,
                  label: str) -> tuple[np.ndarray, DecodeInfo]:
    arr = _check_pixels(arr, label)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    h, w = arr.shape[:2]
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    info = DecodeInfo(name=label, format=None, mode=mode, stored_size=(h, w), draft_scale=1,
                      decoded_size=(h, w), orientation=1, oriented_size=(h, w))
    if mode == "RGB" and (h, w) == (th, tw):
        # Every policy is the identity here; hand back a read-only view, like the
        # (read-only) arrays that come out of Pillow.
        view = arr.view()
        view.flags.writeable = False
        return view, info
    img = Image.fromarray(np.ascontiguousarray(arr))  # shares the buffer when contiguous
    img = _to_working_mode(img)
    out = _resize(img, (0.0, 0.0, float(w), float(h)), (tw, th), policy)
    return np.asarray(out), info


def _open(data: bytes, label: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
    except UnidentifiedImageError as exc:
        known = _known_format(data)
        if known is not None:
            raise ImageDecodeError(
                f"{label}: a {known} file, which featx does not decode; expected one of "
                f"{', '.join(DECODE_FORMATS)} (convert it first, e.g. to PNG)") from exc
        raise ImageDecodeError(
            f"{label}: not an image Pillow can read (UnidentifiedImageError); expected one of "
            f"{', '.join(DECODE_FORMATS)}; the data starts with {data[:16]!r}") from exc
    except Image.DecompressionBombError as exc:
        raise _bomb_error(label, None, exc) from exc
    except Image.DecompressionBombWarning as exc:  # the process filters warnings as errors
        raise _bomb_error(label, None, exc) from exc
    except MemoryError:
        raise
    except Exception as exc:  # plugins raise OSError, ValueError, EOFError, ... on bad headers
        raise ImageDecodeError(
            f"{label}: truncated or corrupt image header ({type(exc).__name__}: {exc}); "
            "expected a complete image file") from exc
    return img


def _bomb_error(label: str, pixels: int | None, exc: Exception | None = None) -> ImageDecodeError:
    limit = Image.MAX_IMAGE_PIXELS
    if pixels is None:  # Pillow refused in Image.open; its message carries the count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
    count = f"{pixels:,} pixels" if pixels is not None else f"too many pixels ({exc})"
    return ImageDecodeError(
        f"{label}: image has {count}, above Pillow's decompression-bomb limit of "
        f"{limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); expected at most {limit:,} pixels. "
        "If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS.")


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except MemoryError:
        raise
    except Exception:
        # A damaged EXIF block says nothing about the pixels: decode them upright.
        return 1
    return value if value in _TRANSPOSE else 1


def _decode_bytes(data: bytes, th: int, tw: int, policy: str,
                  label: str) -> tuple[np.ndarray, DecodeInfo]:
    if not data:
        raise ImageDecodeError(f"{label}: empty (0 bytes); expected an image file")
    img = _open(data, label)
    with img:
        fmt, stored_mode = img.format, img.mode
        sw, sh = img.size
        limit = Image.MAX_IMAGE_PIXELS
        # Pillow itself only *warns* between 1x and 2x the limit; featx refuses at 1x.
        if limit is not None and max(1, sw) * max(1, sh) > limit:
            raise _bomb_error(label, sw * sh)
        orientation = _orientation(img)
        ow, oh = (sh, sw) if orientation in _SWAPS_AXES else (sw, sh)

        scale, valid = 1, (float(sw), float(sh))
        if fmt in ("JPEG", "MPO"):
            scale = _draft_scale(ow, oh, tw, th, policy)
            if scale > 1:
                # Ask for size // scale: Pillow then picks exactly `scale` (not the
                # scale of the target size, which it would floor and under-use).
                got = img.draft("RGB", (sw // scale, sh // scale))
                if got is None:
                    scale = 1  # progressive/multi-tile JPEGs refuse draft; decode full size
                else:
                    scale = round(sw / got[1][2])
                    valid = (got[1][2], got[1][3])
        try:
            img.load()
        except MemoryError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # TIFF tiles and GIF frames are checked again on load.
            raise _bomb_error(label, None, exc) from exc
        except Exception as exc:
            raise ImageDecodeError(
                f"{label}: truncated or corrupt {fmt} image ({type(exc).__name__}: {exc}); "
                f"expected a complete {fmt} file") from exc
        dw, dh = img.size
        try:
            method = _TRANSPOSE.get(orientation)
            if method is not None:
                ImageOps.exif_transpose(img, in_place=True)
            box = _valid_box(method, dw, dh, *valid)
            work = _to_working_mode(img)  # animated files: the current frame is frame 0
            out = _resize(work, box, (tw, th), policy)
        except (MemoryError, ImageDecodeError):
            raise
        except Exception as exc:
            raise ImageDecodeError(
                f"{label}: cannot convert {stored_mode} {fmt} image to RGB "
                f"({type(exc).__name__}: {exc}); expected an image Pillow can convert") from exc
        info = DecodeInfo(name=label, format=fmt, mode=stored_mode, stored_size=(sh, sw),
                          draft_scale=scale, decoded_size=(dh, dw), orientation=orientation,
                          oriented_size=(img.size[1], img.size[0]))
    return np.asarray(out), info


def _resolve(source: Any, name: str | None) -> tuple[str, bytes | np.ndarray]:
    if isinstance(source, Source):
        label = name or source.describe()
        if source.array is not None:
            return label, source.array
        return label, read_bytes(source.path)
    if isinstance(source, np.ndarray):
        return name or "array", source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name or "<bytes>", bytes(source) if not isinstance(source, bytes) else source
    if _is_pathlike(source):
        path = os.fspath(source)
        return name or path, read_bytes(path)
    raise ImageDecodeError(
        f"{name or 'input'}: received {type(source).__name__}; expected a Source, a path, "
        "encoded image bytes or a uint8 array")


def decode_image_with_info(source: Source | str | os.PathLike | bytes | np.ndarray,
                           size: tuple[int, int], *, policy: str = "squash",
                           name: str | None = None) -> tuple[np.ndarray, DecodeInfo]:
    """:func:`decode_image`, plus a :class:`DecodeInfo` saying what was done.

    Same parameters as :func:`decode_image`. Useful to check that draft and EXIF
    orientation did what was expected.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (2000, 1000), "red").save(buf, "JPEG")
    >>> x, info = decode_image_with_info(buf.getvalue(), (224, 224))
    >>> x.shape, info.draft_scale, info.decoded_size
    ((224, 224, 3), 4, (250, 500))
    """
    th, tw = check_decode_options(size, policy)
    label, payload = _resolve(source, name)
    if isinstance(payload, np.ndarray):
        return _decode_array(payload, th, tw, policy, label)
    return _decode_bytes(payload, th, tw, policy, label)


def decode_image(source: Source | str | os.PathLike | bytes | np.ndarray,
                 size: tuple[int, int], *, policy: str = "squash",
                 name: str | None = None) -> np.ndarray:
    """Decode one image to ``uint8`` RGB pixels of shape ``(height, width, 3)``.

    Steps: open with Pillow (content-sniffed among :data:`DECODE_FORMATS`);
    refuse decompression bombs; for JPEG, ``draft`` to the largest 1/2, 1/4 or
    1/8 scale that still covers the resize; load (animated files: first
    frame); apply the EXIF orientation; convert the mode to RGB; resize with
    bilinear resampling (Keras' default interpolation) per ``policy``.

    Modes: ``RGB`` as is; ``L``, ``1`` and 16-bit gray replicated to three
    channels; ``RGBA``, ``LA``, ``P``/``L``/``RGB`` with a transparency key
    composited over white; ``CMYK``, ``YCbCr`` by Pillow's conversion;
    ``I;16`` shifted right by 8 (``65535 → 255``); ``I`` shifted by its
    declared depth (TIFF ``BitsPerSample``; 16 for PNG/PGM, whose values Pillow
    already spans to 16 bits); ``F`` taken as ``[0, 1]`` when its values lie
    there, else stretched from its min..max.

    Parameters
    ----------
    source : Source, str, os.PathLike, bytes or numpy.ndarray
        A file (read with :func:`read_bytes`), the encoded bytes of one, or a
        ``uint8`` array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``, ``(H, W, 4)``
        (same policy and alpha handling as files).
    size : tuple of int
        ``(height, width)`` of the result.
    policy : {"squash", "crop", "pad"}, default "squash"
        ``squash``: resize to ``size`` ignoring aspect ratio (the Keras
        tutorials' default); ``crop``: resize the short side to the target,
        then centre-crop; ``pad``: fit inside ``size`` and centre it on black
        bars (letterbox).
    name : str, optional
        Label for error messages (default: the path, ``array[i]``, ``<bytes>``).

    Returns
    -------
    numpy.ndarray
        ``uint8``, shape ``(height, width, 3)``. Read-only (it wraps Pillow's
        buffer without a copy); ``.copy()`` it to write in place.

    Raises
    ------
    ImageDecodeError
        Unreadable, empty, unidentified, truncated or corrupt files, images
        above ``PIL.Image.MAX_IMAGE_PIXELS``, or arrays that are not ``uint8``
        images. The message names the source.
    InvalidParameterError
        ``size`` is not two positive integers, or ``policy`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> gray = np.full((60, 40), 200, np.uint8)
    >>> x = decode_image(gray, (32, 32), policy="pad")
    >>> x.shape, x.dtype, x[16, 16].tolist(), x[16, 0].tolist()
    ((32, 32, 3), dtype('uint8'), [200, 200, 200], [0, 0, 0])
    >>> decode_image(b"hello", (32, 32), name="notes.jpg")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    featx.errors.ImageDecodeError: notes.jpg: not an image Pillow can read (UnidentifiedImageError); ...
    """
    return decode_image_with_info(source, size, policy=policy, name=name)[0]
