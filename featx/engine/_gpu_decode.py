"""JPEG decoding on the GPU (``decoder="gpu"``): nvJPEG through torchvision, fitted on the device.

On a GPU host the CPU decoders are what starve the forward pass (16 cores:
4,341 img/s in processes against a 25,000+ img/s forward); torchvision's batched
nvJPEG decode with an antialiased resize on the device measured 7,014 img/s
there, ahead of DALI-free alternatives (nvImageCodec: 1,580 at full size).

Its pixels differ from Pillow's (another IDCT, another resampler), so the
decoder is part of the vectors' identity (:func:`~featx.engine.vector_fingerprint`)
and its vectors never mix with CPU-decoded ones. Only JPEGs go to the GPU;
other formats, arrays and anything nvJPEG refuses fall back to the CPU decode
pool one by one, under the same ``on_error`` rules.

The fitted images stay on the GPU: the engine stacks them into their own
batches there (:class:`~featx.engine.DevicePixels`) and hands each to the
Keras backend through DLPack, so decoded pixels never cross to the host. Images
the CPU decodes (fallbacks) form ordinary host batches beside them; the
OpenVINO runtime (CPU only) takes host copies.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FeatxError, InvalidParameterError, MissingDependencyError
from ..images import read_bytes

__all__ = ["DECODERS", "GPU_DECODER_ID", "GpuJpegDecoder", "gpu_decoder_unavailable",
           "is_jpeg", "resolve_decoder"]

#: What ``decoder=`` accepts.
DECODERS = ("cpu", "gpu", "auto")

#: The GPU decoder's name in the vectors' identity: library, codec and resampler.
GPU_DECODER_ID = "torchvision-nvjpeg+bilinear-antialias"


def gpu_decoder_unavailable() -> Optional[str]:
    """Why ``decoder="gpu"`` cannot run in this process; None when it can.

    Examples
    --------
    >>> from featx.engine import gpu_decoder_unavailable
    >>> reason = gpu_decoder_unavailable()
    >>> reason is None or isinstance(reason, str)
    True
    """
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as exc:
        return (f"{getattr(exc, 'name', None) or 'torchvision'} is not installed "
                "(pip install 'featx[gpu-decode]': torch and torchvision with CUDA)")
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    except Exception as exc:  # a broken driver
        return f"torch cannot reach CUDA ({type(exc).__name__}: {exc})"
    return None


def resolve_decoder(decoder: str) -> str:
    """``"cpu"`` or ``"gpu"``: the decoder a run uses for ``decoder``.

    ``"auto"`` takes the GPU decoder where it can run, else the CPU one;
    ``"gpu"`` where it cannot run is refused with the reason.

    Examples
    --------
    >>> from featx.engine import resolve_decoder
    >>> resolve_decoder("cpu")
    'cpu'
    >>> resolve_decoder("auto") in ("cpu", "gpu")
    True
    """
    if decoder not in DECODERS:
        raise InvalidParameterError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "cpu":
        return "cpu"
    reason = gpu_decoder_unavailable()
    if reason is None:
        return "gpu"
    if decoder == "auto":
        return "cpu"
    raise MissingDependencyError(f"decoder='gpu' cannot run here: {reason}. "
                                 "Use decoder='cpu', or 'auto' to take the GPU when there is one.")


def is_jpeg(data) -> bool:
    """True for bytes that start like a JPEG (SOI marker)."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:3]) == b"\xff\xd8\xff"


class GpuJpegDecoder:
    """Decode JPEG bytes on the GPU and fit them to ``size`` there.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)`` of every result.
    policy : {"squash", "crop", "pad"}
        As :func:`featx.images.decode_image`: stretch, centre-crop after
        resizing the short side, or fit inside and centre on black.

    Examples
    --------
    >>> from featx.engine import GpuJpegDecoder, gpu_decoder_unavailable
    >>> if gpu_decoder_unavailable() is None:  # only where a CUDA device is visible
    ...     GpuJpegDecoder((224, 224)).decode([b"not a jpeg"])
    ... else:
    ...     print([None])
    [None]
    """

    def __init__(self, size: Tuple[int, int], policy: str = "squash"):
        reason = gpu_decoder_unavailable()
        if reason is not None:
            raise MissingDependencyError(f"the GPU decoder cannot run here: {reason}")
        self.size = (int(size[0]), int(size[1]))
        self.policy = policy

    def decode(self, blobs: Sequence[bytes], on_device: bool = False) -> list:
        """uint8 ``(H, W, 3)`` per blob, None where nvJPEG refused it (decode those on the CPU).

        numpy arrays on the host; with ``on_device=True``, torch tensors left on the
        GPU for :class:`~featx.engine.DevicePixels` batches (no host round trip).
        """
        import torch

        images = self._decode_on_device(blobs)
        fitted = [None if image is None else self._fit(image) for image in images]
        if on_device:
            return fitted
        good = [i for i, image in enumerate(fitted) if image is not None]
        out: List[Optional[np.ndarray]] = [None] * len(blobs)
        if good:  # one transfer for the whole group
            host = torch.stack([fitted[i] for i in good]).cpu().numpy()
            for row, i in enumerate(good):
                out[i] = host[row]
        return out

    def decode_jpegs(self, fresh: dict, take, on_device: bool = False) -> dict:
        """Decode the JPEGs among ``fresh`` (``key -> (Source, bytes or None)``) and
        ``take(key, pixels)`` each; return the rest (other formats, arrays, unreadable
        files, what nvJPEG refuses) for the CPU decoders, which report errors under the
        engine's ``on_error``."""
        jpegs, rest = {}, {}
        for key, (item, data) in fresh.items():
            if data is None and item.path is not None:
                try:
                    data = read_bytes(item.path)
                except FeatxError:  # the CPU path reports it
                    rest[key] = (item, None)
                    continue
            (jpegs if is_jpeg(data) else rest)[key] = (item, data)
        if jpegs:
            images = self.decode([data for _, data in jpegs.values()], on_device=on_device)
            for (key, pair), pixels in zip(jpegs.items(), images):
                if pixels is None:
                    rest[key] = pair
                else:
                    take(key, pixels)
        return rest

    @staticmethod
    def _decode_on_device(blobs):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]

        def run(data):
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda",
                                   apply_exif_orientation=True)
            except TypeError:  # torchvision before 0.19 has no EXIF option
                return decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")

        try:
            return list(run(tensors))  # batched: one call for the group
        except (RuntimeError, ValueError):
            pass  # one bad image fails the batched call: find it one by one
        images = []
        for tensor in tensors:
            try:
                images.append(run(tensor))
            except (RuntimeError, ValueError):
                images.append(None)
        return images

    def _fit(self, image):
        """(3, h, w) uint8 on the device → (H, W, 3) uint8 on the device, per ``policy``."""
        import torch
        from torch.nn.functional import interpolate

        H, W = self.size
        h, w = int(image.shape[-2]), int(image.shape[-1])
        x = image[None].float()

        def resize(x, rh, rw):
            return interpolate(x, size=(max(1, rh), max(1, rw)), mode="bilinear",
                               antialias=True, align_corners=False)

        if self.policy == "crop":
            scale = max(H / h, W / w)
            rh, rw = round(h * scale), round(w * scale)
            top, left = (rh - H) // 2, (rw - W) // 2
            x = resize(x, rh, rw)[..., top:top + H, left:left + W]
        elif self.policy == "pad":
            scale = min(H / h, W / w)
            rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
            canvas = torch.zeros((1, 3, H, W), device=x.device)
            top, left = (H - rh) // 2, (W - rw) // 2
            canvas[..., top:top + rh, left:left + rw] = resize(x, rh, rw)
            x = canvas
        else:
            x = resize(x, H, W)
        return x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
