"""Where robustness tests leave their numbers for docs/reliability.md (``make_table.py``)."""

from __future__ import annotations

import json
import os


def record(name: str, data: dict) -> None:
    """Write ``data`` to ``$FEATX_RESULTS_DIR/<name>.json`` when that variable is set."""
    folder = os.environ.get("FEATX_RESULTS_DIR")
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
