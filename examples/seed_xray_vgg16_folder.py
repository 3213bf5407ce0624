"""Seed tutorial: chest x-rays from a training-data / testing-data folder tree, VGG16.

The tutorial (Kaggle chest x-ray pneumonia, NORMAL vs PNEUMONIA) reads
``training-data/<class>/`` and ``testing-data/<class>/`` with
``ImageDataGenerator.flow_from_directory``, builds VGG16 without its top, makes
the **last 5 layers trainable**, adds a dense head, trains, **saves the model**
and loads it back to predict.

featx, the same flow:

* ``featx.datasets.load_image_folder(root, split="train" | "test")`` reads the
  split tree (``training-data``/``testing-data``, ``train``/``test`` … are
  recognised) with one class order for both halves;
* ``FineTuneClassifier(backbone="vgg16", unfreeze=5)`` — phase 1 trains the
  head on the frozen base, phase 2 the top 5 weight-bearing layers (for VGG16:
  ``block5_conv3`` … ``block4_conv2``; featx counts layers with weights);
* ``clf.save(path)`` writes ``path.keras`` (raw pixels in, probabilities out)
  and ``path.joblib``; ``FineTuneClassifier.load(path)`` reads them, and the
  script checks that the reloaded model predicts exactly what the trained one did.

Data: ``--data FOLDER`` holding the split tree. By default the offline
stand-in: an ELPV subset is **written as such a split tree** into a temp folder
(``training-data/functional``, ``training-data/defective``, ``testing-data/…``),
and exactly the folder flow above runs on it.

Weights: VGG16's ImageNet weights are a Keras download; offline the script uses
EfficientNet-Lite0's pip-packaged ImageNet weights and says so; ``--weights
imagenet`` keeps VGG16.

Run::

    python examples/seed_xray_vgg16_folder.py --quick
    python examples/seed_xray_vgg16_folder.py --data chest_xray --weights imagenet
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

import _seed_common as common

FAMILY = "vgg16"


def write_split_tree(root: str, limit: int) -> str:
    """An ELPV subset as ``root/training-data/<class>/…`` + ``root/testing-data/<class>/…``."""
    data = common.load_elpv("binary", limit=limit)
    for split, items, labels in (("training-data", data.train, data.y_train),
                                 ("testing-data", data.test, data.y_test)):
        for src, label in zip(items, labels):
            folder = os.path.join(root, split, data.names[label])
            os.makedirs(folder, exist_ok=True)
            shutil.copy(src, folder)
    return root


def main() -> int:
    from featx import FineTuneClassifier

    started = time.perf_counter()
    args = common.parser(__doc__.split("\n\n")[0], "an ELPV subset written as a split tree"
                         ).parse_args()
    size, epochs = common.quick_settings(args, default_epochs=(5, 5))
    out = common.out_dir(args, "seed-xray")
    root = args.data
    if root is None:
        limit = args.limit or (160 if args.quick else 800)
        root = write_split_tree(os.path.join(out, "elpv_split_tree"), limit)
        common.say(f"offline stand-in: wrote {limit} ELPV images as a split tree under {root}")
    data = common.load_folder(root, limit=args.limit if args.data else None)
    common.say(data.summary())
    backbone, weights = common.resolve_backbone(FAMILY, args.weights)

    row, clf = common.finetune_row(f"{backbone}, last 5 layers trainable", data,
                                   backbone=backbone, weights=weights, input_size=size,
                                   unfreeze=5, head=(256,), epochs=epochs)
    stem = clf.save(os.path.join(out, "xray_model"))
    common.say(f"saved: {stem}.keras + {stem}.joblib")
    reloaded = FineTuneClassifier.load(stem)
    same = np.array_equal(reloaded.predict(data.test), clf.predict(data.test))
    common.say(f"reloaded from disk: predictions {'identical' if same else 'DIFFER'}")
    reloaded_row = {**row, "model": f"{row['model']} (reloaded)",
                    **common.score(data.y_test, reloaded.predict(data.test)), "fit_s": 0.0}
    common.print_table([row, reloaded_row], f"x-ray tutorial with featx — {backbone}, "
                                            f"weights={weights}, input {size or 'default'} px")
    if not same:
        common.say("FAILED: the reloaded model does not predict what the trained one did")
        return 1
    return common.finish(args, data, reloaded_row, started)


if __name__ == "__main__":
    common.run(main)
