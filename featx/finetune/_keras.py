"""The Keras classes of fine-tuning: preprocessing and inference-mode layers, data feeds.

Imported on first use (:func:`featx.finetune._estimator._classes`): importing this
module imports Keras and registers the layers as ``featx>…``, so saved ``.keras``
files load.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np

from .._env import import_keras

keras = import_keras()
ops = keras.ops


@keras.saving.register_keras_serializable(package="featx")
class ImagePreprocessing(keras.layers.Layer):
    """``(x[..., order] - mean) / std``: a featx preprocessing mode as a layer.

    Computes exactly what :meth:`featx.Backbone.preprocess` computes in numpy,
    with ``keras.ops``, so the preprocessing travels inside a saved model.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr=False, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.bgr = bool(bgr)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.bgr:
            x = ops.flip(x, axis=-1)
        # Same operation order as the numpy path (subtract, then divide).
        x = x - ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        return x / ops.convert_to_tensor(self.std, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean), "std": list(self.std),
                "bgr": self.bgr}


@keras.saving.register_keras_serializable(package="featx")
class InferenceBase(keras.layers.Layer):
    """Runs a nested backbone model with ``training=False`` (when ``inference``).

    Keras 3 Functional models override a ``training=False`` recorded on a
    nested model's node with the outer call's value; an explicit argument
    inside a layer's ``call`` is not overridden. See the module docstring.
    """

    def __init__(self, base, inference=True, **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.inference = bool(inference)

    def build(self, input_shape):
        if not self.base.built:
            self.base.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.base(inputs, training=False if self.inference else training)

    def compute_output_shape(self, input_shape):
        return self.base.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "inference": self.inference,
                "base": keras.saving.serialize_keras_object(self.base)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(config["base"])
        return cls(**config)


class ImageBatches(keras.utils.PyDataset):
    """Batches of decoded pixels (float32 in [0, 255]) and labels, decoded on demand.

    Parameters
    ----------
    items : list of Source
    labels : numpy.ndarray of int, or None
        None for prediction: batches are then ``(pixels,)``.
    size : int
        Square side the decoder resizes to.
    batch_size : int
    policy : str
        Resize policy of :func:`featx.images.decode_image`.
    shuffle : bool
        Draw a new order every epoch (from ``seed``); Keras does not shuffle
        a PyDataset itself.
    seed : int or None
    threads : int
        Decoder threads per batch (Pillow releases the GIL while decoding).

    The first decode error is kept in ``error`` and re-raised by the caller:
    with the TensorFlow backend, ``fit`` reads a PyDataset through
    ``tf.data``, which turns a Python exception into a TF error that no
    longer is a :class:`~featx.errors.FeatxError`.
    """

    def __init__(self, items, labels, *, size, batch_size, policy="squash",
                 shuffle=False, seed=None, threads=2):
        # workers=1: no Keras enqueuer; tf.data prefetches one batch ahead,
        # and the batch itself is decoded by our threads.
        super().__init__(workers=1, use_multiprocessing=False)
        self.items = list(items)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int32)
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.policy = policy
        self.shuffle = bool(shuffle)
        self._rng = np.random.RandomState(seed)
        self.order = np.arange(len(self.items))
        if self.shuffle:
            self._rng.shuffle(self.order)
        self.threads = max(1, int(threads))
        self.error: Optional[BaseException] = None
        self._pool = None
        self._lock = threading.Lock()

    def __len__(self):
        return math.ceil(len(self.items) / self.batch_size)

    def pixels(self, index: int) -> np.ndarray:
        """Decoded pixels of batch ``index``, float32 ``(b, size, size, 3)``."""
        from ..engine import DecodePool

        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        with self._lock:
            if self._pool is None:
                self._pool = DecodePool((self.size, self.size), self.policy, self.threads)
        results = list(self._pool.map([self.items[i] for i in idx]))
        error = next((r.error for r in results if r.error is not None), None)
        if error is not None:
            with self._lock:
                if self.error is None:
                    self.error = error
            raise error
        return np.stack([r.pixels for r in results]).astype(np.float32)

    def __getitem__(self, index):
        x = self.pixels(index)
        if self.labels is None:
            return (x,)
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return x, self.labels[idx]

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self.order)

    def close(self):
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class VectorBatches(keras.utils.PyDataset):
    """In-memory (vectors, labels) batches, reshuffled each epoch by a seeded generator
    (``fit(shuffle=True)`` on arrays would draw from the backend's unseeded RNG)."""

    def __init__(self, x, y, batch_size, seed):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self._rng = np.random.RandomState(seed)
        self.order = self._rng.permutation(len(x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[idx], self.y[idx]

    def on_epoch_end(self):
        self._rng.shuffle(self.order)
