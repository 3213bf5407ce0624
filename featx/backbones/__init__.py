"""Backbones: name → frozen Keras model + preprocessing + fingerprint.

See :func:`get_backbone` and :func:`list_backbones`; the table of families is
:data:`featx.backbones.registry.BACKBONES`.
"""

from .base import (
    DTYPES,
    POOLINGS,
    Backbone,
    decode_predictions,
    default_compute_dtype,
    get_backbone,
    imagenet_class_names,
    offline_available,
    resolve_weights,
)
from .config import BackboneConfig, clear_config_cache
from .preprocessing import Preprocessing, get_preprocessing
from .registry import BACKBONES, BackboneSpec, get_spec, list_backbones

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneSpec",
    "BACKBONES",
    "clear_config_cache",
    "DTYPES",
    "POOLINGS",
    "Preprocessing",
    "decode_predictions",
    "default_compute_dtype",
    "get_backbone",
    "get_preprocessing",
    "get_spec",
    "imagenet_class_names",
    "list_backbones",
    "offline_available",
    "resolve_weights",
]
