"""``FineTuneClassifier``: fine-tune a featx backbone end to end, as a scikit-learn classifier.

The embedding path (:mod:`featx.engine`) keeps the backbone frozen and trains
scikit-learn heads on cached vectors. This module is the one other consumer of
pixels: it trains a Keras model on them, in the two phases of Keras'
transfer-learning guide, so a user can see what fine-tuning buys over the
frozen vectors on the same data.

The model
---------
``pixels [0, 255] → augment → preprocess → base → Dropout → Dense(ReLU)… → softmax``

* **Augmentation** is a ``keras.Sequential`` named ``"augment"`` of Keras'
  random layers. They act only when the model runs with ``training=True``
  (inside ``fit``); prediction sees the pixels as they are.
* **Preprocessing** is inside the model (:class:`ImagePreprocessing`, the
  backbone's own channel order, mean and std as ``keras.ops``), so a saved
  ``.keras`` file takes raw pixels and cannot be fed wrongly preprocessed data.
* **The base** is the backbone's Keras model inside :class:`InferenceBase`, a
  wrapper that calls it with ``training=False``.

Why a wrapper, and BatchNormalization
-------------------------------------
Keras' fine-tuning guide builds ``x = base_model(x, training=False)`` so that
BatchNormalization keeps its ImageNet statistics while the layers around it
are fine-tuned. In Keras 3 that argument is overridden: a Functional model
injects its own ``training`` value into every node it runs (keras-team/keras
issue 20285), so inside ``fit`` the nested base runs with ``training=True``.
BatchNormalization is still safe when its layers are not trainable (Keras 3's
BN uses batch statistics only when ``training and self.trainable``), but any
Dropout or stochastic-depth layer inside the base would switch on. featx
therefore does both:

* the base is called through :class:`InferenceBase`, whose ``call`` passes
  ``training=False`` explicitly (an explicit argument wins over the context),
  so the whole pretrained base — BN, dropout, everything — runs in inference
  mode in both phases; and
* every BatchNormalization layer of the base stays ``trainable=False``, so its
  gamma and beta are not trained either, and its moving mean and variance are
  never updated.

The one exception is **training from scratch** — ``weights=None`` together
with ``unfreeze="all"``: there are no statistics worth preserving, and BN that
never leaves its initial ``mean=0, var=1`` would just be a fixed affine map. The
wrapper then passes ``training`` through and the BN layers are trainable, so BN
normalises with batch statistics and learns its moving averages, as in any
model trained from zero. (Phase 1 of such a run trains the head on a frozen
random base; ``epochs=(0, n)`` skips it.)

What ``unfreeze=N`` counts
--------------------------
``N`` is the number of **weight-bearing, non-BatchNormalization layers** of the
base, counted from its output end in ``base.layers`` order: convolutions,
depthwise convolutions, dense layers. Layers without weights (activations,
``Add``, padding, pooling) and BN layers are not counted, because unfreezing
them trains nothing. So ``unfreeze=5`` always means five layers whose weights
learn — for MobileNetV2 the last five convolutions (``Conv_1``,
``block_16_project``, ``block_16_depthwise``, ``block_16_expand``,
``block_15_project``). Keras' guide instead slices ``base.layers[-N:]``,
counting every layer; MobileNetV2's "fine-tune from layer 100" in the TF
tutorial (54 of 155 layers) is ``unfreeze=18`` here. A count above the number
of such layers unfreezes them all. ``"all"`` unfreezes every layer (BN still
excepted, see above); the layers actually unfrozen are listed in
``unfrozen_layers_``.

Data
----
Images are decoded by :func:`featx.images.decode_image` — the engine's
decoder — one batch at a time in a :class:`keras.utils.PyDataset` (a thread
pool decodes the batch), so a dataset never has to fit in memory. The
validation split is stratified; early stopping watches ``val_loss`` and
restores the best weights of each phase. When phase 2 never reaches phase 1's
best ``val_loss``, the weights phase 1 ended with are put back (``phases_``
says ``kept=False``): with little data, unfreezing can make a model worse, and
the validation split is there to notice.

With ``phase1="vectors"`` phase 1 does not see pixels at all: the engine
embeds every image once (optionally through an :class:`featx.EmbeddingStore`)
and a model made of the head's own layers trains on those vectors. This is
the "feature extraction" variant of Keras' guide; on 2 CPU cores it turns a
phase-1 epoch over 2,000 images at 224 px from about 45 s into well under a
second, so the head converges before phase 2 starts moving the base.
"""

from __future__ import annotations

from ._estimator import (AUGMENTATIONS, DEFAULT_PATIENCE, PHASE1_INPUTS, FineTuneClassifier,
                         custom_objects, load, unfreeze_candidates)

__all__ = ["FineTuneClassifier", "AUGMENTATIONS", "DEFAULT_PATIENCE", "PHASE1_INPUTS",
           "custom_objects", "load", "unfreeze_candidates"]
