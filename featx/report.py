"""The baseline report: metrics, plots and one self-contained HTML file.

Input is plain data — a :class:`~featx.BaselineResult`: the board's rows, the
best model's out-of-fold (or held-out) probabilities, the images left out — so
the report never re-runs a model and needs no pandas.  Plots use matplotlib's object API with the Agg canvas (no
pyplot state, no display needed).  Every user-controlled string (class names,
file names, parameters) goes through :func:`html.escape`; images are embedded
as base64 data URIs, so the HTML opens anywhere as one file, and the same
figures are written beside it as PNG files.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import FeatxError

__all__ = ["dataset_summary", "write_report", "most_confidently_wrong"]

THUMB = 96


# --------------------------------------------------------------------------- data


def dataset_summary(sources: Sequence, y, class_names: Sequence[str], sample: int = 300) -> dict:
    """Class counts and image sizes (read from headers of up to ``sample`` files).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.report import dataset_summary
    >>> s = dataset_summary([np.zeros((4, 6), np.uint8)] * 3, [0, 1, 1], ["a", "b"])
    >>> s["counts"], s["sizes"]["median"]
    ({'a': 1, 'b': 2}, [6, 4])
    """
    from PIL import Image

    y = np.asarray(y)
    counts = {str(class_names[c]): int((y == c).sum()) for c in range(len(class_names))}
    step = max(1, len(sources) // sample)
    sizes, formats, modes = [], Counter(), Counter()
    for source in list(sources)[::step][:sample]:
        if isinstance(source, np.ndarray):
            sizes.append((source.shape[1], source.shape[0]))
            formats["array"] += 1
            continue
        try:
            with Image.open(source) as image:  # header only; no pixel decoding
                sizes.append(image.size)
                formats[image.format or "?"] += 1
                modes[image.mode] += 1
        except Exception:  # the engine reports unreadable files; the summary just skips them
            formats["unreadable"] += 1
    arr = np.asarray(sizes) if sizes else np.zeros((0, 2))
    summary = {
        "n_images": int(len(sources)),
        "n_classes": len(class_names),
        "counts": counts,
        "sampled": len(sizes),
        "formats": dict(formats),
        "modes": dict(modes),
        "sizes": {
            "min": arr.min(axis=0).astype(int).tolist() if len(arr) else None,
            "median": np.median(arr, axis=0).astype(int).tolist() if len(arr) else None,
            "max": arr.max(axis=0).astype(int).tolist() if len(arr) else None,
        },
    }
    return summary


def most_confidently_wrong(y_true, proba, k: int = 12) -> List[int]:
    """Indices of misclassified items, most confident (highest predicted probability) first.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.report import most_confidently_wrong
    >>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> most_confidently_wrong([1, 1, 1], proba)
    [0, 2]
    """
    y_true = np.asarray(y_true)
    pred = np.argmax(proba, axis=1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-proba[wrong, pred[wrong]], kind="stable")
    return wrong[order][:k].tolist()


# --------------------------------------------------------------------------- figures


def _figure(width=6.0, height=4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _confusion_figure(cm: np.ndarray, names: Sequence[str]):
    n = len(names)
    size = min(4 + 0.45 * n, 12)
    fig = _figure(size, size * 0.85)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=[str(c)[:18] for c in names], rotation=45, ha="right")
    ax.set_yticks(range(n), labels=[str(c)[:18] for c in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > top / 2 else "black", fontsize=8)
    ax.set_title("Confusion matrix (best model)")
    return fig


def _curves_figure(y_true, proba, names, kind: str):
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    classes = [1] if len(names) == 2 else list(range(len(names)))
    for c in classes:
        truth = (np.asarray(y_true) == c).astype(int)
        if truth.min() == truth.max():
            continue  # a class absent from the evaluated items has no curve
        label = str(names[c])[:24]
        if kind == "roc":
            fpr, tpr, _ = roc_curve(truth, proba[:, c])
            ax.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = precision_recall_curve(truth, proba[:, c])
            ap = average_precision_score(truth, proba[:, c])
            ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC (one-vs-rest)" if len(names) > 2 else "ROC")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall")
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return fig


def _wrong_figure(sources, indices, y_true, proba, names):
    from .images import decode_image

    cols = 4
    rows = max(1, -(-len(indices) // cols))
    fig = _figure(cols * 2.2, rows * 2.5)
    for slot, i in enumerate(indices):
        ax = fig.add_subplot(rows, cols, slot + 1)
        try:
            thumb = decode_image(sources[i], (THUMB, THUMB), policy="pad")
            ax.imshow(thumb)
        except FeatxError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        pred = int(np.argmax(proba[i]))
        ax.set_title(f"true: {str(names[y_true[i]])[:14]}\npred: {str(names[pred])[:14]} "
                     f"({proba[i, pred]:.2f})", fontsize=7)
        ax.axis("off")
    return fig


def _history_figure(history: Dict[str, list]):
    fig = _figure(9, 3.5)
    for slot, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, slot + 1)
        for key in (metric, f"val_{metric}"):
            if history.get(key):
                ax.plot(range(1, len(history[key]) + 1), history[key], label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.lines:
            ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%}
.small{color:#666;font-size:.8rem}.grid{display:flex;flex-wrap:wrap;gap:1rem}
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: List[dict], columns: Sequence[str], left: Sequence[str] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_esc(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = "" if v != v else f"{v:.4g}"
            cells.append(f'<td class="{"l" if c in left else ""}">{_esc(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_esc(alt)}" title="{_esc(name)}" src="data:image/png;base64,{encoded}">'


def write_report(out_dir, result, *, class_names: Optional[Sequence[str]] = None,
                 title: str = "featx baseline", dataset_name: Optional[str] = None,
                 timings: Optional[Dict[str, float]] = None, n_wrong: int = 12) -> Path:
    """Write ``index.html`` (self-contained) and the figures as PNG files into ``out_dir``.

    Everything comes from ``result``, plain data: the board's rows, the best
    row's probabilities and where they come from, the images left out, the
    fine-tuning curves. The report runs no model.

    Parameters
    ----------
    out_dir : path
    result : BaselineResult
        From :func:`~featx.run_baseline` (or :func:`~featx.add_finetune_rows`).
    class_names : sequence of str, optional
        Names of integer class labels (``class_names[c]`` for each ``c`` in
        ``result.board.classes_``, as ``featx baseline`` trains on indices);
        default ``str(c)``.
    title : str
    dataset_name : str, optional
    timings : dict, optional
        Stage name → seconds.
    n_wrong : int, default 12
        How many of the most confidently wrong images to show.

    Returns
    -------
    pathlib.Path
        The HTML file.

    Examples
    --------
    >>> import tempfile, numpy as np, featx
    >>> from featx.report import write_report
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 120, (24, 32, 32, 3)).astype(np.uint8)
    >>> images[12:] += 120
    >>> y = np.repeat(["dark", "light"], 12)
    >>> result = featx.run_baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
    ...                             weights=None, input_size=32, cv=3)
    >>> write_report(tempfile.mkdtemp(), result).name
    'index.html'
    """
    from sklearn.metrics import classification_report, confusion_matrix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board, evaluation = result.board, result.evaluation
    classes = np.asarray(board.classes_)
    names = [str(class_names[int(c)]) if class_names is not None else str(c) for c in classes]
    sources, proba = list(evaluation.sources), evaluation.proba
    y = np.searchsorted(classes, np.asarray(evaluation.y))
    evaluated_on, history, skipped = evaluation.described, result.history, result.skipped
    parts: List[str] = []
    figures: Dict[str, bytes] = {}

    summary = dataset_summary(sources, y, names)
    parts.append("<h2>Dataset</h2>")
    parts.append(f"<p>{summary['n_images']} images, {summary['n_classes']} classes"
                 f"{' — ' + _esc(dataset_name) if dataset_name else ''}. Image sizes (w × h, "
                 f"from {summary['sampled']} headers): min {_esc(summary['sizes']['min'])}, "
                 f"median {_esc(summary['sizes']['median'])}, max {_esc(summary['sizes']['max'])}; "
                 f"formats {_esc(summary['formats'])}.</p>")
    parts.append(_table([{"class": k, "images": v} for k, v in summary["counts"].items()],
                        ["class", "images"], left=["class"]))
    if skipped:
        parts.append(f"<h2>Images left out ({len(skipped)})</h2>")
        parts.append("<p class=small>They could not be read or decoded, so they are in no "
                     "fold, no score and no figure.</p>")
        parts.append(_table([{"image": src, "reason": why} for src, why in skipped],
                            ["image", "reason"], left=["image", "reason"]))

    frame_rows = _board_rows(board)
    parts.append("<h2>Leaderboard</h2>")
    parts.append(f"<p class=small>{_esc(board.cv_description)}; ranked by "
                 f"{_esc(board.primary)}. Scores are the grid searches' cross-validated means "
                 "(± std over folds).</p>")
    columns = [c for c in frame_rows[0].keys()] if frame_rows else []
    parts.append(_table(frame_rows, columns, left=["backbone", "head", "best_params"]))

    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(y), len(names)):
        raise FeatxError(f"proba must have shape ({len(y)}, {len(names)}), got {proba.shape}")
    pred = np.argmax(proba, axis=1)
    best = board.best_
    parts.append(f"<h2>Best model: {_esc(best['backbone'])} + {_esc(best['head'])}</h2>")
    parts.append(f"<p class=small>Evaluated on {_esc(evaluated_on)}.</p>")
    cm = confusion_matrix(y, pred, labels=list(range(len(names))))
    figures["confusion.png"] = _png(_confusion_figure(cm, names))
    report = classification_report(y, pred, labels=list(range(len(names))),
                                    target_names=names, output_dict=True, zero_division=0)
    per_class = [{"class": n, "precision": report[n]["precision"],
                  "recall": report[n]["recall"], "f1": report[n]["f1-score"],
                  "support": int(report[n]["support"])} for n in names]
    parts.append('<div class="grid">' + _img("confusion.png", figures["confusion.png"],
                                              "confusion matrix") + "</div>")
    parts.append(_table(per_class, ["class", "precision", "recall", "f1", "support"],
                        left=["class"]))
    figures["roc.png"] = _png(_curves_figure(y, proba, names, "roc"))
    figures["pr.png"] = _png(_curves_figure(y, proba, names, "pr"))
    parts.append('<div class="grid">' + _img("roc.png", figures["roc.png"], "ROC curves")
                 + _img("pr.png", figures["pr.png"], "precision-recall curves") + "</div>")
    wrong = most_confidently_wrong(y, proba, n_wrong)
    parts.append("<h2>Most confidently wrong</h2>")
    if wrong:
        figures["wrong.png"] = _png(_wrong_figure(list(sources), wrong, y, proba, names))
        parts.append(_img("wrong.png", figures["wrong.png"], "most confidently wrong images"))
        listing = [{"file": _label(sources[i], i), "true": names[y[i]],
                    "predicted": names[pred[i]], "p": float(proba[i, pred[i]])}
                   for i in wrong]
        parts.append(_table(listing, ["file", "true", "predicted", "p"],
                            left=["file", "true", "predicted"]))
    else:
        parts.append("<p>No misclassified image.</p>")

    if history:
        figures["training.png"] = _png(_history_figure(history))
        parts.append("<h2>Training curves (fine-tuning)</h2>")
        parts.append(_img("training.png", figures["training.png"], "training curves"))

    stage_rows = [{"stage": k, "seconds": float(v)} for k, v in (timings or {}).items()]
    for backbone, stats in board.embed_stats_.items():
        for key in ("read_s", "decode_s", "forward_s", "write_s", "total_s"):
            if key in stats:
                stage_rows.append({"stage": f"embed {backbone}: {key[:-2]}",
                                   "seconds": float(stats[key])})
        if "forwarded" in stats:
            stage_rows.append({"stage": f"embed {backbone}: images forwarded / cache hits",
                               "seconds": f"{stats['forwarded']} / {stats.get('cache_hits', 0)}"})
    if stage_rows:
        parts.append("<h2>Timing</h2>")
        parts.append(_table(stage_rows, ["stage", "seconds"], left=["stage"]))

    for name, data in figures.items():
        (out / name).write_bytes(data)
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    document = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class=small>Generated {generated} by featx on "
        f"{_esc(platform.node() or 'this machine')}.</p>" + "".join(parts) + "</body></html>")
    path = out / "index.html"
    path.write_text(document, encoding="utf-8")
    return path


def _label(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"array[{index}]"


def _board_rows(board) -> List[dict]:
    rows = board.to_records()
    for row in rows:
        for key, value in list(row.items()):
            if isinstance(value, dict):
                row[key] = ", ".join(f"{k}={v}" for k, v in value.items())
    return rows
