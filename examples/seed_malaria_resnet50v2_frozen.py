"""Seed tutorial: malaria cell images, a frozen ResNet50V2 base + a dense head.

The tutorial (Keras, TFDS ``malaria``: 27,558 thin-blood-smear cell crops,
parasitized vs uninfected) loads ``ResNet50V2(include_top=False,
weights="imagenet")``, freezes it, puts ``GlobalAveragePooling2D → Dense →
Dropout → Dense(sigmoid)`` on top and trains only the head.

With featx that model is one estimator::

    FineTuneClassifier(backbone="resnet50v2", weights="imagenet", unfreeze=0)

and the cheaper featx answer to the same question sits beside it: embed every
image **once** with the frozen base and fit a logistic regression on the vectors
(``ImageEmbedder`` + ``make_head("logreg")``). Both rows use the same split.

Data: ``--data FOLDER`` (``malaria/Parasitized/*.png``, ``malaria/Uninfected/*.png``,
e.g. the Kaggle "cell-images-for-detecting-malaria" layout); by default the
offline stand-in, ELPV solar cells (binary: defective or not).

Weights: ResNet50V2's ImageNet weights are a Keras download; offline
(``--weights packaged``, the default) there are none, so the script says so and
uses EfficientNet-Lite0's pip-packaged ImageNet weights instead. ``--weights
imagenet`` keeps ResNet50V2 for users with network.

Run::

    python examples/seed_malaria_resnet50v2_frozen.py --quick          # < 1 min, self-check
    python examples/seed_malaria_resnet50v2_frozen.py                  # all of ELPV, 224 px
    python examples/seed_malaria_resnet50v2_frozen.py --data cell_images --weights imagenet
"""

from __future__ import annotations

import time

import _seed_common as common

FAMILY = "resnet50v2"


def main() -> int:
    started = time.perf_counter()
    args = common.parser(__doc__.split("\n\n")[0], "ELPV solar cells, binary").parse_args()
    size, epochs = common.quick_settings(args, default_epochs=(5, 0))
    limit = args.limit or (160 if args.quick else None)
    data = (common.load_folder(args.data, limit=limit, test_limit=limit and limit // 2)
            if args.data else common.load_elpv("binary", limit=limit))
    common.say(data.summary())
    backbone, weights = common.resolve_backbone(FAMILY, args.weights)

    rows = common.embedding_rows(data, backbone, weights, size)
    frozen, _ = common.finetune_row(
        f"{backbone} frozen + dense head (tutorial)", data, backbone=backbone, weights=weights,
        input_size=size, unfreeze=0, head=(256,), dropout=0.5, epochs=epochs,
        augment=None if args.quick else ("flip",))
    rows.append(frozen)
    common.print_table(rows, f"malaria tutorial with featx — {backbone}, weights={weights}, "
                             f"input {size or 'default'} px")
    return common.finish(args, data, frozen, started)


if __name__ == "__main__":
    common.run(main)
