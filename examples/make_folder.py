"""Write a small image folder to try featx on, as a new user's data would look.

Four Fashion-MNIST classes (from the Debian package ``dataset-fashion-mnist``,
no network) as PNG files: ``FOLDER/<class>/<n>.png``, 60 per class from the
training split, and ``FOLDER_new/<n>.png``, 20 unlabelled images from the test
split to predict on.

    python examples/make_folder.py data            # then: featx baseline data/ --out reports/mine
"""

from __future__ import annotations

import argparse
import os


from featx.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

CLASSES = ["T-shirt/top", "Trouser", "Sneaker", "Bag"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write <class>/<n>.png (created)")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--new", type=int, default=20, help="unlabelled images in FOLDER_new")
    args = parser.parse_args(argv)
    from PIL import Image

    for split, per_class, labelled in (("train", args.per_class, True),
                                       ("test", args.new // len(CLASSES) + 1, False)):
        paths, y, _ = load_fashion_mnist(split, limit=per_class * 10)
        wanted = [FASHION_MNIST_CLASSES.index(c) for c in CLASSES]
        keep = [i for i in range(len(paths)) if y[i] in wanted]
        if not labelled:
            keep = keep[:args.new]
        for n, i in enumerate(keep):
            name = CLASSES[wanted.index(int(y[i]))].split("/")[0].lower()
            folder = os.path.join(args.folder, name) if labelled else args.folder + "_new"
            os.makedirs(folder, exist_ok=True)
            Image.open(paths[i]).save(os.path.join(folder, f"{n:03d}.png"))
    counts = {c: len(os.listdir(os.path.join(args.folder, c.split("/")[0].lower())))
              for c in CLASSES}
    print(f"{args.folder}/: {counts}; {args.folder}_new/: "
          f"{len(os.listdir(args.folder + '_new'))} unlabelled images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
