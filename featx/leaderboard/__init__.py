"""The leaderboard room: every backbone × head under one cross-validation, on cached vectors.

:func:`run_baseline` embeds each backbone once, grid-searches every head on the
same folds and returns a :class:`BaselineResult` (the :class:`Leaderboard`, the
best row's out-of-fold probabilities, what was left out). :func:`baseline` is the
one-call face that returns the board; :func:`add_finetune_rows` adds the Keras
fine-tuning rows as a step on a finished result.

The room is a package named for what it produces rather than ``baseline``: a
module of the same name as the function made ``featx.baseline`` mean the
module or the function depending on import order.

Examples
--------
>>> import numpy as np, featx
>>> rng = np.random.RandomState(0)
>>> images = rng.randint(0, 120, (24, 32, 32, 3)).astype(np.uint8)
>>> images[12:] += 120
>>> y = np.repeat(["dark", "light"], 12)
>>> board = featx.baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
...                        weights=None, input_size=32, cv=3)
>>> board.best_["head"]
'logreg'
"""

from ._finetune import FINETUNE_DEFAULTS, FINETUNE_PROTOCOL, add_finetune_rows, finetune_configs
from ._result import BaselineResult, Evaluation, Leaderboard, Scoring, resolve_scoring
from ._run import RAW_PIXELS, baseline, run_baseline
# Steps of a run that the data checks (featx.quality) repeat on the same terms.
from ._run import (cv_splits, image_front, out_of_fold, plain_sources,  # noqa: F401
                   sources_and_labels)

__all__ = ["baseline", "run_baseline", "add_finetune_rows", "finetune_configs", "BaselineResult",
           "Evaluation", "Leaderboard", "Scoring", "resolve_scoring", "RAW_PIXELS",
           "FINETUNE_DEFAULTS", "FINETUNE_PROTOCOL"]
