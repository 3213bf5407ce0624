"""Seed tutorial: bean leaf diseases, a MobileNetV2 feature vector + a Dense layer.

The tutorial (TFDS ``beans``: 1,295 leaf photos, angular leaf spot / bean rust /
healthy) wraps TF-Hub's ``mobilenet_v2_100_224/feature_vector`` in a
``hub.KerasLayer(trainable=False)`` and trains one ``Dense(3, softmax)`` on top.
``tensorflow_hub`` does not work with Keras 3; featx gets the same frozen
feature vector from ``keras.applications``.

featx does it two ways, on the same split:

* **vectors + heads** — ``ImageEmbedder`` runs the frozen network once per
  image; logistic regression and an RBF SVM are fitted on the vectors
  (re-fitting another head costs seconds, nothing is re-embedded);
* **the tutorial's model** — ``FineTuneClassifier(unfreeze=0, head=())``: the
  frozen base and one softmax layer, trained by Keras.

Data: ``--data FOLDER`` (``beans/<class>/*.jpg`` or a train/test split tree);
by default the offline stand-in, Fashion-MNIST (official train/test splits, 10
classes).

Weights: MobileNetV2's ImageNet weights are a Keras download; offline
(``--weights packaged``) the script uses MobileNet **v1** with its pip-packaged
ImageNet weights (the closest packaged family) and says so. ``--weights
imagenet`` keeps MobileNetV2.

Run::

    python examples/seed_beans_mobilenetv2_features.py --quick
    python examples/seed_beans_mobilenetv2_features.py --limit 6000
    python examples/seed_beans_mobilenetv2_features.py --data beans --weights imagenet
"""

from __future__ import annotations

import time

import _seed_common as common

FAMILY = "mobilenet_v2"


def main() -> int:
    started = time.perf_counter()
    args = common.parser(__doc__.split("\n\n")[0], "Fashion-MNIST").parse_args()
    size, epochs = common.quick_settings(args, default_epochs=(10, 0))
    limit = args.limit or (200 if args.quick else None)
    test_limit = 100 if args.quick else (None if args.limit is None else max(10, args.limit // 3))
    data = (common.load_folder(args.data, limit=limit, test_limit=test_limit)
            if args.data else common.load_fashion_mnist(limit=limit, test_limit=test_limit))
    common.say(data.summary())
    backbone, weights = common.resolve_backbone(FAMILY, args.weights)

    heads = ("logreg",) if args.quick else ("logreg", "svm")
    rows = common.embedding_rows(data, backbone, weights, size, heads=heads)
    tutorial, _ = common.finetune_row(
        f"{backbone} feature vector + Dense (tutorial)", data, backbone=backbone,
        weights=weights, input_size=size, unfreeze=0, head=(), dropout=0.0, epochs=epochs,
        augment=None, lr=(1e-3, 1e-5) if not args.quick else (3e-3, 1e-5))
    rows.append(tutorial)
    common.print_table(rows, f"beans tutorial with featx — {backbone}, weights={weights}, "
                             f"input {size or 'default'} px")
    best = max(rows, key=lambda r: r["accuracy"])
    common.say(f"best: {best['model']} ({best['accuracy']:.3f})")
    return common.finish(args, data, tutorial, started)


if __name__ == "__main__":
    common.run(main)
