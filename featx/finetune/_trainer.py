"""The two-phase training of :class:`~featx.FineTuneClassifier`, apart from the estimator.

Phase 1 trains the head on a frozen base (on augmented images, or on the
base's pooled vectors from the engine); phase 2 unfreezes the top of the base
at a lower learning rate. The *revert policy* lives here too: phase 2 is undone
unless it lowers the best validation loss phase 1 reached, so fine-tuning never
hands back a model worse than the frozen one it started from.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .._env import import_keras
from ..errors import InvalidDataError

__all__ = ["Phase", "Split", "Trainer", "class_weights", "split_validation",
           "unfreeze_candidates"]

log = logging.getLogger("featx")

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _is_bn(layer) -> bool:
    keras = import_keras()
    return isinstance(layer, keras.layers.BatchNormalization)


def unfreeze_candidates(base) -> List:
    """The base's layers that ``unfreeze=N`` counts, bottom to top.

    Weight-bearing layers that are not BatchNormalization, in ``base.layers``
    order; ``unfreeze=N`` unfreezes the last ``N`` of them.

    Examples
    --------
    >>> import featx
    >>> from featx.finetune import unfreeze_candidates
    >>> bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
    >>> [layer.name for layer in unfreeze_candidates(bb.model)[-3:]]
    ['block_16_depthwise', 'block_16_project', 'Conv_1']
    """
    return [layer for layer in base.layers if layer.weights and not _is_bn(layer)]


def _set_phase(model, phase: int, unfreeze, from_scratch: bool) -> List[str]:
    """Set ``trainable`` flags for ``phase``; returns the names of unfrozen base layers."""
    wrapper = model.get_layer("base")
    base = wrapper.base
    if phase == 1 or unfreeze == 0:
        wrapper.trainable = False  # recursive: every layer of the base
        return []
    # Keras 3 applies `trainable` recursively; open the wrapper, then close what stays frozen.
    wrapper.trainable = True
    if unfreeze == "all":
        chosen = [layer for layer in base.layers if layer.weights]
        if not from_scratch:
            chosen = [layer for layer in chosen if not _is_bn(layer)]
    else:
        chosen = unfreeze_candidates(base)[-int(unfreeze):]
    chosen_ids = {id(layer) for layer in chosen}
    for layer in base.layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]


def _n_params(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def sub_seed(seed: Optional[int], k: int) -> Optional[int]:
    """A seed derived from ``seed`` for the k-th seeded thing (None stays None)."""
    return None if seed is None else (seed * 1009 + k) % (2**31 - 1)


# ----------------------------------------------------------------- data


class Split(NamedTuple):
    """Training and validation images with their encoded labels."""

    train_items: list
    train_y: np.ndarray
    val_items: list
    val_y: Optional[np.ndarray]


def split_validation(items, y_enc, *, encoder, validation_data, fraction, seed) -> Split:
    """The validation images: ``validation_data`` as given, else a stratified
    ``fraction`` of ``items``, else none."""
    from sklearn.model_selection import train_test_split

    from ..images import as_sources

    if validation_data is not None:
        v_sources, v_y = validation_data
        val_items, v_y = as_sources(v_sources), np.asarray(v_y)
        unknown = set(np.unique(v_y)) - set(encoder.classes_)
        if len(v_y) != len(val_items) or unknown:
            raise InvalidDataError(
                "validation_data: expected one label per image, all of them "
                f"seen in y; got {len(v_y)} labels for {len(val_items)} images"
                + (f", unknown labels {sorted(unknown)[:5]}" if unknown else ""))
        return Split(items, y_enc, val_items, encoder.transform(v_y).astype(np.int32))
    if not fraction:
        return Split(items, y_enc, [], None)
    try:
        train_idx, val_idx = train_test_split(np.arange(len(items)), test_size=float(fraction),
                                              stratify=y_enc, random_state=seed)
    except ValueError as exc:
        raise InvalidDataError(
            f"cannot hold out a stratified validation_fraction={fraction} of {len(items)} "
            f"images in {len(encoder.classes_)} classes ({exc}); pass validation_fraction=0 "
            "or more images") from exc
    return Split([items[i] for i in train_idx], y_enc[train_idx],
                 [items[i] for i in val_idx], y_enc[val_idx])


def class_weights(class_weight, train_y: np.ndarray, encoder) -> Optional[Dict[int, float]]:
    """Keras' ``class_weight`` (by encoded label) from the estimator's parameter."""
    from sklearn.utils.class_weight import compute_class_weight

    if class_weight == "balanced":
        present = np.unique(train_y)
        weights = compute_class_weight("balanced", classes=present, y=train_y)
        return {int(c): float(w) for c, w in zip(present, weights)}
    if isinstance(class_weight, dict):
        classes = list(encoder.classes_)
        unknown = [label for label in class_weight if label not in set(classes)]
        if unknown:
            raise InvalidDataError(f"class_weight names labels that are not in y: {unknown[:5]}; "
                                   f"expected some of {classes[:10]}")
        return {int(encoder.transform([label])[0]): float(w)
                for label, w in class_weight.items()}
    return None


# ----------------------------------------------------------------- phases


@dataclass
class Phase:
    """What one phase was asked to do and what it did (``FineTuneClassifier.phases_``)."""

    phase: int
    lr: float
    epochs: int
    epochs_run: int = 0
    trainable_weights: int = 0
    trainable_params: int = 0
    trained_on: str = "images"
    best_val_loss: float = float("nan")
    kept: bool = True

    def record(self, history: Dict[str, list]) -> None:
        self.epochs_run = len(history.get("loss", []))
        losses = history.get("val_loss", [])
        self.best_val_loss = float(min(losses)) if losses else float("nan")


class Trainer:
    """Phase 1 then phase 2 on one Keras model, with early stopping and the revert policy.

    Parameters
    ----------
    estimator : FineTuneClassifier
        Read for its parameters (``batch_size``, ``policy``, ``phase1``,
        ``cache``, ``verbose``).
    model : keras.Model
        From ``FineTuneClassifier._build``: a ``"base"`` layer, then the head.
    backbone : featx.Backbone
    params : dict
        The checked parameters (``epochs``, ``lr``, ``unfreeze``, ``patience``,
        ``seed``).
    from_scratch : bool
        Random weights and everything unfrozen (BatchNormalization trains too).
    """

    def __init__(self, estimator, model, backbone, params: dict, from_scratch: bool):
        self.estimator, self.model, self.backbone = estimator, model, backbone
        self.params, self.from_scratch = params, from_scratch
        self.history: Dict[str, list] = {key: [] for key in (*HISTORY_KEYS, "phase")}
        self.phases: List[Phase] = []
        self.unfrozen: List[str] = []

    def run(self, split: Split, class_weight) -> Tuple[Dict[str, list], List[dict], List[str]]:
        """Train; returns (history, phases as dicts, names of the unfrozen base layers)."""
        from ._keras import ImageBatches

        e, p = self.estimator, self.params
        common = dict(size=self.backbone.input_size, batch_size=int(e.batch_size),
                      policy=e.policy, threads=max(2, min(8, os.cpu_count() or 2)))
        train = ImageBatches(split.train_items, split.train_y, shuffle=True,
                             seed=sub_seed(p["seed"], 7), **common)
        val = ImageBatches(split.val_items, split.val_y, **common) if split.val_items else None
        try:
            phase1_weights = None
            for number in (1, 2):
                epochs = p["epochs"][number - 1]
                if number == 2 and (p["unfreeze"] == 0 or epochs == 0):
                    break
                phase = self._start(number, epochs)
                if epochs == 0:
                    continue
                callbacks = self._callbacks(val)
                result = self._fit(phase, split, (train, val), class_weight, callbacks)
                phase.record(result.history)
                if number == 2 and phase1_weights is not None:
                    self._revert_if_not_better(phase, phase1_weights)
                if number == 1 and callbacks and p["unfreeze"] != 0 and p["epochs"][1]:
                    phase1_weights = self.model.get_weights()
                self._extend_history(result.history, phase)
        finally:
            train.close()
            if val is not None:
                val.close()
        return self.history, [asdict(ph) for ph in self.phases], self.unfrozen

    def _start(self, number: int, epochs: int) -> Phase:
        """Set what trains in this phase and compile for it."""
        keras = import_keras()
        p = self.params
        names = _set_phase(self.model, number, p["unfreeze"], self.from_scratch)
        if number == 2:
            self.unfrozen = names
        # Recompile after changing `trainable`: the train step and the optimizer are
        # built for one set of trainable variables.
        self.model.compile(optimizer=keras.optimizers.Adam(p["lr"][number - 1]),
                           loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        phase = Phase(number, p["lr"][number - 1], epochs,
                      trainable_weights=len(self.model.trainable_weights),
                      trainable_params=_n_params(self.model.trainable_weights))
        self.phases.append(phase)
        return phase

    def _callbacks(self, val) -> list:
        keras = import_keras()
        if val is None or not self.params["patience"]:
            return []
        return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.params["patience"],
                                              restore_best_weights=True)]

    def _fit(self, phase: Phase, split: Split, batches, class_weight, callbacks):
        train, val = batches
        e = self.estimator
        try:
            if phase.phase == 1 and e.phase1 == "vectors":
                phase.trained_on = "vectors"
                return self._fit_head_on_vectors(split, phase.epochs, class_weight, callbacks)
            return self.model.fit(train, validation_data=val, epochs=phase.epochs,
                                  class_weight=class_weight, callbacks=callbacks,
                                  shuffle=False, verbose=e.verbose)
        except Exception:
            # tf.data wraps errors raised in the PyDataset; give back ours.
            error = train.error or (val.error if val is not None else None)
            if error is not None:
                raise error from None
            raise

    def _revert_if_not_better(self, phase: Phase, phase1_weights) -> None:
        """The revert policy: phase 2 stays only if it lowered phase 1's best val_loss."""
        first = self.phases[0].best_val_loss
        if not phase.best_val_loss < first:
            self.model.set_weights(phase1_weights)
            phase.kept = False
            log.info("featx FineTuneClassifier: phase 2's best val_loss %.4f is not below "
                     "phase 1's %.4f; phase 1's weights are kept", phase.best_val_loss, first)

    def _extend_history(self, history: Dict[str, list], phase: Phase) -> None:
        for key in HISTORY_KEYS:
            values = history.get(key, [])
            self.history[key].extend(float(v) for v in values)
            self.history[key].extend([float("nan")] * (phase.epochs_run - len(values)))
        self.history["phase"].extend([phase.phase] * phase.epochs_run)

    def _fit_head_on_vectors(self, split: Split, n_epochs: int, class_weight, callbacks):
        """Phase 1 on pooled vectors: the head's own layers, fed the frozen base's output.

        The vectors come from :class:`featx.Embedder` (the engine), through the
        ``cache`` store when one is given, so images a baseline or an earlier
        fit already embedded are not forwarded again, and each image is
        forwarded once rather than once per epoch. The head model shares its
        layers with the full model: training it trains the full model's head.
        """
        keras = import_keras()
        from ..engine import Embedder
        from ..store import shared_store
        from ._keras import VectorBatches

        e, p, model = self.estimator, self.params, self.model
        embedder = Embedder(self.backbone, store=shared_store(e.cache),
                            batch_size=int(e.batch_size), on_error="raise",
                            progress=bool(e.verbose), policy=e.policy)
        x_train = embedder.embed(split.train_items)
        validation = None
        if len(split.val_items):
            validation = (embedder.embed(split.val_items), split.val_y)
        vectors = keras.Input((x_train.shape[1],), name="vectors")
        x = vectors
        layers = model.layers
        for layer in layers[layers.index(model.get_layer("base")) + 1:]:
            x = layer(x)
        head = keras.Model(vectors, x, name="featx_finetune_head")
        head.compile(optimizer=keras.optimizers.Adam(p["lr"][0]),
                     loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        batches = VectorBatches(x_train, split.train_y, e.batch_size, sub_seed(p["seed"], 8))
        return head.fit(batches, validation_data=validation, epochs=n_epochs,
                        class_weight=class_weight, callbacks=callbacks, shuffle=False,
                        verbose=e.verbose)
