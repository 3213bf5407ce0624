"""Seed tutorial: cats vs dogs — MobileNetV2 from scratch vs frozen vs fine-tuned.

The TensorFlow transfer-learning tutorial (``cats_vs_dogs`` filtered subset,
2,000 train / 1,000 validation images at 160 px) trains a classifier on
MobileNetV2 three ways and reports validation accuracy:

============================  =========
random init, trained (scratch) ≈ 49.5 %
ImageNet base frozen, head     ≈ 96.6 %
+ top layers unfrozen          ≈ 98.1 %
============================  =========

featx runs the three as ``FineTuneClassifier`` configurations on one split,
plus the embedding path (vectors once, logistic regression) as a fourth row:

* ``weights=None, unfreeze="all"`` — from scratch (BatchNorm trains too);
* ``unfreeze=0`` — frozen base, new head;
* ``unfreeze=18`` — and then the top 18 weight-bearing layers of MobileNetV2,
  which is the tutorial's "fine-tune from layer 100 of 155" in featx's count
  (see ``featx.finetune``); for the MobileNet v1 substitute, 9 (the same top
  third of the network).

Data: ``--data FOLDER`` (``cats_and_dogs/cats/*.jpg``, ``cats_and_dogs/dogs/*.jpg``
or a train/test split tree); by default the offline stand-in, ELPV solar cells
(binary). Weights: offline, MobileNet v1 (pip-packaged ImageNet weights)
replaces MobileNetV2 and the script says so; ``--weights imagenet`` keeps
MobileNetV2.

Run::

    python examples/seed_cats_dogs_scratch_frozen_finetune.py --quick
    python examples/seed_cats_dogs_scratch_frozen_finetune.py --data cats_and_dogs_filtered \\
        --weights imagenet --input-size 160
"""

from __future__ import annotations

import time

import _seed_common as common

FAMILY = "mobilenet_v2"
#: Top layers unfrozen in phase 2, per family (featx counts weight-bearing, non-BN layers).
UNFREEZE = {"mobilenet_v2": 18, "mobilenet": 9}


def main() -> int:
    started = time.perf_counter()
    args = common.parser(__doc__.split("\n\n")[0], "ELPV solar cells, binary").parse_args()
    size, epochs = common.quick_settings(args, default_epochs=(10, 10))
    limit = args.limit or (120 if args.quick else None)
    data = (common.load_folder(args.data, limit=limit, test_limit=limit and limit // 2)
            if args.data else common.load_elpv("binary", limit=limit))
    common.say(data.summary())
    backbone, weights = common.resolve_backbone(FAMILY, args.weights)
    top = UNFREEZE.get(backbone, 20)

    shared = dict(backbone=backbone, input_size=size, head=(), dropout=0.2, random_state=0)
    rows = common.embedding_rows(data, backbone, weights, size)
    # Scratch: every epoch in phase 2 (phase 1 would train a head on a random, frozen
    # base), at a learning rate that can move random weights.
    scratch, _ = common.finetune_row(
        f"{backbone} from scratch", data, weights=None, unfreeze="all",
        epochs=(0, 1 if args.quick else sum(epochs)), lr=(1e-3, 1e-3), augment=None, **shared)
    frozen, _ = common.finetune_row(
        f"{backbone} frozen + head", data, weights=weights, unfreeze=0, epochs=epochs,
        lr=(1e-3, 1e-5), **shared)
    tuned, clf = common.finetune_row(
        f"{backbone} + top {top} layers fine-tuned", data, weights=weights, unfreeze=top,
        epochs=epochs, lr=(1e-3, 1e-5), **shared)
    rows += [scratch, frozen, tuned]
    common.print_table(rows, f"cats vs dogs tutorial with featx — {backbone}, "
                             f"weights={weights}, input {size or 'default'} px "
                             "(tutorial: 49.5 % / 96.6 % / 98.1 %)")
    common.say(f"fine-tuned layers: {', '.join(clf.unfrozen_layers_)}")
    return common.finish(args, data, tuned, started)


if __name__ == "__main__":
    common.run(main)
