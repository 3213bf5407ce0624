"""Put converted weight arrays into a Keras model, layer by layer, by name.

Weight converters in featx (EfficientNet-Lite from a torch state dict,
MobileNet v1 from a TF1 frozen graph, ...) all end with a mapping
``{keras layer name: [arrays in layer.weights order]}``; this module is the
one place that checks such a mapping against a model and assigns it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from featx.errors import WeightsMismatchError

__all__ = ["assign_weights_by_name"]


def assign_weights_by_name(model, weights: Mapping[str, Sequence[np.ndarray]], *, source: str) -> None:
    """Assign ``weights[layer.name]`` to every weighted layer of ``model``.

    Every layer is checked before any is assigned, so a mismatch leaves the
    model untouched.

    Parameters
    ----------
    model : keras.Model
        A built model. Each of its layers (``model.layers``) that owns
        weights must have an entry in ``weights``.
    weights : Mapping[str, Sequence[numpy.ndarray]]
        Keras layer name to arrays, in that layer's ``layer.weights`` order
        (for ``BatchNormalization``: gamma, beta, moving_mean,
        moving_variance). Entries naming layers the model does not have --
        e.g. the classifier when the model was built without its top -- are
        ignored.
    source : str
        Where the weights came from (a file path, a package name); quoted in
        error messages.

    Raises
    ------
    WeightsMismatchError
        A weighted layer has no entry, or an entry with the wrong number of
        arrays or a wrong shape. The message names the layer, the expected and
        the found shapes, and ``source``.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inp = keras.Input((4,))
    >>> model = keras.Model(inp, keras.layers.Dense(2, name="fc")(inp))
    >>> assign_weights_by_name(model, {"fc": [np.ones((4, 2)), np.zeros(2)]}, source="example")
    >>> float(model.get_layer("fc").kernel.numpy().sum())
    8.0
    """
    plan = []
    for layer in model.layers:
        variables = list(layer.weights)
        if not variables:
            continue
        expected = [tuple(v.shape) for v in variables]
        if layer.name not in weights:
            raise WeightsMismatchError(
                f"{source}: no weights for layer '{layer.name}' (expects shapes {expected})"
            )
        arrays = [np.asarray(a) for a in weights[layer.name]]
        found = [a.shape for a in arrays]
        if found != expected:
            raise WeightsMismatchError(
                f"{source}: layer '{layer.name}' expects weight shapes {expected}, found {found}"
            )
        plan.append((variables, arrays))
    for variables, arrays in plan:
        for variable, array in zip(variables, arrays):
            variable.assign(array.astype(variable.dtype, copy=False))
