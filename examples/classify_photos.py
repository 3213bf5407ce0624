"""Classify scikit-image's sample photos with real ImageNet weights, offline.

The weights arrive by pip (EfficientNet-Lite0 and MobileNet v1, see
``featx backbones``); the photos ship with scikit-image.  The photos are
written as PNG files and go through featx's engine exactly as a user's image
folder would: decoded once, keyed by content, cached in an HDF5 store.

    python examples/classify_photos.py [--backbones efficientnet_lite0 mobilenet] [--top 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import featx
from featx.backbones import decode_predictions

PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera", "cat"]


def write_photos(folder: str) -> list:
    from PIL import Image
    from skimage import data

    paths = []
    for name in PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenet"])
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--cache", default=None, help="HDF5 store (default: a temp file)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(folder)
        cache = args.cache or os.path.join(folder, "logits.h5")
        for name in args.backbones:
            t0 = time.perf_counter()
            bb = featx.get_backbone(name, weights="packaged", include_top=True)
            built = time.perf_counter() - t0
            embedder = featx.Embedder(bb, store=cache, batch_size=8, progress=False)
            logits = embedder.embed(paths)
            print(f"\n{name} (weights: {bb.weights.kind}, sha256 {bb.weights.digest[:12]}…, "
                  f"built in {built:.1f}s, {embedder.stats['forwarded']} images forwarded in "
                  f"{embedder.stats['forward_s']:.2f}s)")
            for photo, top in zip(PHOTOS, decode_predictions(logits, top=args.top)):
                guesses = ", ".join(f"{label} {p:.2f}" for label, p in top)
                print(f"  {photo:10s} {guesses}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
