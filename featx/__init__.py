"""featx — transfer learning the classical-ML way.

A frozen, ImageNet-pretrained CNN runs once per image; the vectors are cached
in HDF5; scikit-learn and XGBoost heads train on them.

Examples
--------
>>> import featx
>>> "efficientnet_lite0" in featx.list_backbones()
True
"""

from __future__ import annotations

import importlib

from .backbones import Backbone, decode_predictions, get_backbone, list_backbones
from .errors import FeatxError

__version__ = "0.1.0"

# Heavier rooms load on first use, so `import featx` and `featx backbones` stay fast.
_LAZY = {
    "EmbeddingStore": ("featx.store", "EmbeddingStore"),
    "Embedder": ("featx.engine", "Embedder"),
    "ImageEmbedder": ("featx.sklearn", "ImageEmbedder"),
    "make_head": ("featx.heads", "make_head"),
    "baseline": ("featx.leaderboard", "baseline"),
    "run_baseline": ("featx.leaderboard", "run_baseline"),
    "add_finetune_rows": ("featx.leaderboard", "add_finetune_rows"),
    "BaselineResult": ("featx.leaderboard", "BaselineResult"),
    "Leaderboard": ("featx.leaderboard", "Leaderboard"),
    "RAW_PIXELS": ("featx.leaderboard", "RAW_PIXELS"),
    "FineTuneClassifier": ("featx.finetune", "FineTuneClassifier"),
    "audit": ("featx.quality", "audit"),
    "AuditResult": ("featx.quality", "AuditResult"),
    "similar": ("featx.quality", "similar"),
}
_SUBMODULES = {"datasets", "images", "store", "engine", "sklearn", "heads", "leaderboard",
               "finetune", "io", "report", "distributed", "errors", "backbones", "quality"}

__all__ = ["Backbone", "FeatxError", "decode_predictions", "get_backbone", "list_backbones",
           "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"featx.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
