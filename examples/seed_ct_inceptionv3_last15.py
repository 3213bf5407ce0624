"""Seed tutorial: 4-class CT scans, InceptionV3 with its last 15 layers fine-tuned.

The tutorial (chest CT, 4 classes: adenocarcinoma, large-cell carcinoma,
squamous-cell carcinoma, normal) augments with ``ImageDataGenerator``
(horizontal flip, zoom, rotation, shear), builds InceptionV3 without its top,
sets the **last 15 layers trainable**, trains, and plots loss and accuracy curves.

featx::

    FineTuneClassifier(backbone="inception_v3", unfreeze=15,
                       augment=("flip", "zoom", "rotate", "shear"))

* augmentation runs inside the model as Keras random layers (``RandomFlip``,
  ``RandomZoom``, ``RandomRotation``, ``RandomShear``), during training only —
  the tutorial's four ``ImageDataGenerator`` transforms;
* ``unfreeze=15`` counts weight-bearing, non-BatchNormalization layers (15
  convolutions); BatchNorm stays frozen in inference mode (``featx.finetune``);
* ``clf.history_`` holds per-epoch ``loss``/``val_loss``/``accuracy``/``val_accuracy``
  of both phases; the script draws them with matplotlib's object API (Agg, no
  display) into ``curves.png``.

Data: ``--data FOLDER`` (``ct/<class>/*.png`` or a train/test split tree); by
default the offline stand-in, ELPV's four defect-probability levels
(0, 1/3, 2/3, 1). Weights: InceptionV3's ImageNet weights are a Keras download;
offline the script uses EfficientNet-Lite0's pip-packaged ones and says so;
``--weights imagenet`` keeps InceptionV3.

Run::

    python examples/seed_ct_inceptionv3_last15.py --quick --out ct_out
    python examples/seed_ct_inceptionv3_last15.py --data chest_ct --weights imagenet
"""

from __future__ import annotations

import os
import time

import numpy as np

import _seed_common as common

FAMILY = "inception_v3"
#: Keras' InceptionV3 refuses inputs smaller than 75 × 75.
INCEPTION_MIN_SIZE = 75


def plot_curves(history: dict, path: str, title: str) -> str:
    """Loss and accuracy per epoch (both phases; a dotted line where phase 2 starts)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)  # Agg explicitly: no pyplot, no display needed
    epochs = np.arange(1, len(history["loss"]) + 1)
    phase2 = [i for i, p in enumerate(history["phase"], 1) if p == 2]
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        if phase2:
            ax.axvline(phase2[0] - 0.5, linestyle=":", color="gray", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def main() -> int:
    started = time.perf_counter()
    args = common.parser(__doc__.split("\n\n")[0], "ELPV solar cells, 4 defect levels"
                         ).parse_args()
    size, epochs = common.quick_settings(args, default_epochs=(10, 10))
    limit = args.limit or (160 if args.quick else None)
    data = (common.load_folder(args.data, limit=limit, test_limit=limit and limit // 2)
            if args.data else common.load_elpv("levels", limit=limit))
    common.say(data.summary())
    backbone, weights = common.resolve_backbone(FAMILY, args.weights)
    if backbone == FAMILY and size is not None and size < INCEPTION_MIN_SIZE:
        size = INCEPTION_MIN_SIZE
    augment = ("flip", "zoom", "rotate", "shear")

    row, clf = common.finetune_row(
        f"{backbone}, last 15 layers fine-tuned, augmented", data, backbone=backbone,
        weights=weights, input_size=size, unfreeze=15, head=(256,),
        augment=augment, epochs=epochs, validation_fraction=0.15)
    out = common.out_dir(args, "seed-ct")
    png = plot_curves(clf.history_, os.path.join(out, "curves.png"),
                      f"{backbone}, unfreeze=15 — {len(data.names)} classes")
    common.print_table([row], f"CT tutorial with featx — {backbone}, weights={weights}, "
                              f"input {size or 'default'} px, classes: {', '.join(data.names)}")
    common.say(f"training curves: {png}")
    return common.finish(args, data, row, started)


if __name__ == "__main__":
    common.run(main)
