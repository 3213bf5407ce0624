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

import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import FeatxError
from ._audit import data_checks_html, write_audit_report
from ._page import _esc, _figure, _img, _png, _table, _thumb, write_page

__all__ = ["dataset_summary", "write_report", "most_confidently_wrong", "write_audit_report",
           "data_checks_html", "write_page"]



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
    ax.set_title("Confusion matrix")
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
    cols = 4
    rows = max(1, -(-len(indices) // cols))
    fig = _figure(cols * 2.6, rows * 3.0)
    for slot, i in enumerate(indices):
        ax = fig.add_subplot(rows, cols, slot + 1)
        _thumb(ax, sources[i])
        pred = int(np.argmax(proba[i]))
        ax.set_title(f"true: {str(names[y_true[i]])[:16]}\npred: {str(names[pred])[:16]} "
                     f"({proba[i, pred]:.2f})", fontsize=10)
        ax.axis("off")
    return fig


def _examples_figure(sources, y, names, per_class: int = 6, max_classes: int = 20):
    """A row of example thumbnails per class (the first ``per_class`` of each)."""
    shown = [c for c in range(len(names)) if np.any(np.asarray(y) == c)][:max_classes]
    fig = _figure(per_class * 1.5 + 1.6, len(shown) * 1.55 + 0.2)
    for row, c in enumerate(shown):
        members = np.flatnonzero(np.asarray(y) == c)[:per_class]
        for col, i in enumerate(members):
            ax = fig.add_subplot(len(shown), per_class, row * per_class + col + 1)
            _thumb(ax, sources[i])
            if col == 0:
                ax.set_ylabel(str(names[c])[:16], fontsize=10, rotation=0, ha="right",
                              va="center")
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

#: One line under each plot: what a reader should take from it.
MEANS = {
    "examples": "The first images of each class as the model sees them (fitted to a square). "
                "A class whose examples look unlike the others often has a labelling or "
                "collection problem.",
    "confusion": "Rows are the true classes, columns the predicted ones; the diagonal counts "
                 "correct predictions. A heavy off-diagonal cell names two classes the model "
                 "mixes up.",
    "roc": "Each curve trades false alarms (x) against hits (y) as the decision threshold "
           "moves; the area under it (AUC) is 1.0 for a perfect ranking and 0.5 for chance.",
    "pr": "Precision against recall per class; a curve near the top right finds the class "
          "without false alarms. More telling than ROC when a class is rare.",
    "wrong": "The images the model got wrong with the highest confidence: often mislabelled, "
             "ambiguous or out-of-scope images, or one systematic confusion, worth a look "
             "before trusting the score.",
    "training": "Loss and accuracy per epoch. A validation curve that worsens while the "
                "training curve keeps improving means the network is over-fitting.",
}


def _means(key: str) -> str:
    return f'<p class="means">{_esc(MEANS[key])}</p>'



def write_report(out_dir, result, *, class_names: Optional[Sequence[str]] = None,
                 title: str = "featx baseline", dataset_name: Optional[str] = None,
                 timings: Optional[Dict[str, float]] = None, n_wrong: int = 12,
                 command: Optional[str] = None, checks=None) -> Path:
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
    command : str, optional
        The command line that produced the result, shown so the run can be
        repeated (the CLI passes its own).
    checks : AuditResult, optional
        Data checks of the same run (:func:`featx.quality.audit_baseline`): a
        "Data checks" section with the headline counts and the worst findings.

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

    # The dataset as searched (every kept image), not only the evaluated part of it.
    all_sources = list(getattr(result, "sources", None) or sources)
    all_y = (np.searchsorted(classes, np.asarray(result.y))
             if getattr(result, "sources", None) else y)
    summary = dataset_summary(all_sources, all_y, names)
    parts.append("<h2>Run settings</h2>")
    parts.append(_settings_html(board, result, command))

    parts.append("<h2>Dataset</h2>")
    sizes = summary["sizes"]
    parts.append(f"<p>{summary['n_images']} images, {summary['n_classes']} classes"
                 f"{' — ' + _esc(dataset_name) if dataset_name else ''}. Image sizes (width × "
                 f"height, from {summary['sampled']} file headers): min {_size(sizes['min'])}, "
                 f"median {_size(sizes['median'])}, max {_size(sizes['max'])}. Formats: "
                 f"{_esc(_counts(summary['formats']))}.</p>")
    parts.append(_table([{"class": k, "images": v} for k, v in summary["counts"].items()],
                        ["class", "images"], left=["class"]))
    figures["examples.png"] = _png(_examples_figure(all_sources, all_y, names))
    parts.append(_img("examples.png", figures["examples.png"], "example images per class"))
    parts.append(_means("examples"))
    if skipped:
        parts.append(f"<h2>Images left out ({len(skipped)})</h2>")
        parts.append("<p class=small>They could not be read or decoded, so they are in no "
                     "fold, no score and no figure.</p>")
        parts.append(_table([{"image": src, "reason": why} for src, why in skipped],
                            ["image", "reason"], left=["image", "reason"]))

    if checks is not None:
        parts.extend(data_checks_html(checks, figures))

    best = board.best_
    parts.append("<h2>Leaderboard</h2>")
    parts.append(f"<p class=small>{_esc(board.cv_description)}; ranked by "
                 f"{_esc(board.primary)}. Scores are means ± standard deviation over the "
                 "folds; the highlighted row is the model refit on every image and "
                 "saved.</p>")
    parts.append(_board_html(board, best))

    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(y), len(names)):
        raise FeatxError(f"proba must have shape ({len(y)}, {len(names)}), got {proba.shape}")
    pred = np.argmax(proba, axis=1)
    model = evaluation.model or f"{best['backbone']} + {best['head']}"
    parts.append(f"<h2>{'Evaluated model' if evaluation.model else 'Best model'}: "
                 f"{_esc(model)}</h2>")
    parts.append(f"<p class=small>Evaluated on {_esc(evaluated_on)}.</p>")
    cm = confusion_matrix(y, pred, labels=list(range(len(names))))
    figures["confusion.png"] = _png(_confusion_figure(cm, names))
    report = classification_report(y, pred, labels=list(range(len(names))),
                                    target_names=names, output_dict=True, zero_division=0)
    per_class = [{"class": n, "precision": report[n]["precision"],
                  "recall": report[n]["recall"], "f1": report[n]["f1-score"],
                  "support": int(report[n]["support"])} for n in names]
    parts.append(_img("confusion.png", figures["confusion.png"], "confusion matrix"))
    parts.append(_means("confusion"))
    parts.append(_table(per_class, ["class", "precision", "recall", "f1", "support"],
                        left=["class"], digits=3))
    figures["roc.png"] = _png(_curves_figure(y, proba, names, "roc"))
    figures["pr.png"] = _png(_curves_figure(y, proba, names, "pr"))
    parts.append('<div class="grid">' + _img("roc.png", figures["roc.png"], "ROC curves")
                 + _img("pr.png", figures["pr.png"], "precision-recall curves") + "</div>")
    parts.append(_means("roc") + _means("pr"))
    wrong = most_confidently_wrong(y, proba, n_wrong)
    parts.append("<h2>Most confidently wrong</h2>")
    if wrong:
        figures["wrong.png"] = _png(_wrong_figure(list(sources), wrong, y, proba, names))
        parts.append(_img("wrong.png", figures["wrong.png"], "most confidently wrong images"))
        parts.append(_means("wrong"))
        listing = [{"file": _label(sources[i], i), "true": names[y[i]],
                    "predicted": names[pred[i]], "confidence": float(proba[i, pred[i]])}
                   for i in wrong]
        parts.append(_table(listing, ["file", "true", "predicted", "confidence"],
                            left=["file", "true", "predicted"], digits=3))
    else:
        parts.append("<p>No misclassified image.</p>")

    if history:
        figures["training.png"] = _png(_history_figure(history))
        parts.append("<h2>Training curves (fine-tuning)</h2>")
        parts.append(_img("training.png", figures["training.png"], "training curves"))
        parts.append(_means("training"))

    parts.append(_timing_html(board, timings))

    return write_page(out / "index.html", title, parts, figures)


def _label(source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"array[{index}]"


def _size(wh) -> str:
    return "—" if not wh else f"{int(wh[0])}×{int(wh[1])}"


def _counts(counter: Dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1])) or "—"


def _board_html(board, best: dict) -> str:
    """The board as people read it: one ``mean ± std`` cell per metric, the refit row marked;
    scores on a held-out test split in a second table, so neither outgrows the page."""
    header, rows = board.display_table()
    tests = [i for i, c in enumerate(header) if c.startswith("test ")]
    main = [i for i in range(len(header)) if i not in tests]
    tables = [_board_table(board, best, [header[i] for i in main],
                           [[r[i] for i in main] for r in rows])]
    if tests:
        keep = [0, 1, 2, *tests]
        tables.append("<p class=small>Scores of each row's refit model on the held-out test "
                      "split:</p>")
        tables.append(_board_table(board, best, [header[i] for i in keep],
                                   [[r[i] for i in keep] for r in rows]))
    return "".join(tables)


def _board_table(board, best: dict, header: List[str], rows: List[List[str]]) -> str:
    left, wrap = ("backbone", "head", "best params"), ("best params", "protocol")
    head = "".join(f'<th class="{"l" if c in left else ""}">{_esc(c.replace("_", " "))}</th>'
                   for c in header)
    body = []
    for record, cells in zip(board.rows, rows):
        marked = (record["backbone"], record["head"]) == (best["backbone"], best["head"])
        tds = "".join(f'<td class="{"l" if c in left else ""}{" wrap" if c in wrap else ""}">'
                      f"{_esc(v)}</td>" for c, v in zip(header, cells))
        body.append(f'<tr{" class=best" if marked else ""}>{tds}</tr>')
    return f'<table class="board"><tr>{head}</tr>{"".join(body)}</table>'


def _settings_html(board, result, command: Optional[str]) -> str:
    """What a user needs to repeat the run: each backbone's identity, the versions, the command."""
    rows = []
    for name, d in getattr(board, "backbones_", {}).items():
        rows.append({"backbone": name, "weights": d.get("weights_kind", "?"),
                     "input": f"{d.get('input_size', '?')} px",
                     "pooling": d.get("pooling") or "—", "dtype": d.get("dtype", "?"),
                     "dim": d.get("dim", "?"),
                     "fingerprint": str(d.get("fingerprint", "?"))[:16]})
    html_parts = [_table(rows, ["backbone", "weights", "input", "pooling", "dtype", "dim",
                                "fingerprint"], left=["backbone", "weights", "fingerprint"])
                  if rows else ""]
    settings = getattr(result, "settings", None) or {}
    if settings:
        shown = {k: settings[k] for k in ("cv", "random_state", "batch_size", "cache", "pool")
                 if k in settings and settings[k] is not None}
        html_parts.append("<p class=small>" + _esc(", ".join(f"{k} {v}" for k, v in
                                                          shown.items())) + "</p>")
    html_parts.append(f"<p class=small>{_esc(_versions())}</p>")
    if command:
        html_parts.append(f"<p class=small>Command: <code>{_esc(command)}</code></p>")
    return "".join(html_parts)


def _versions() -> str:
    import sys

    from .. import __version__

    found = [f"featx {__version__}", f"Python {sys.version.split()[0]}"]
    keras = sys.modules.get("keras")  # only what this run imported: nothing is imported here
    if keras is not None:
        backend = keras.backend.backend()
        engine = sys.modules.get(backend)
        found += [f"Keras {keras.__version__}",
                  f"backend {backend} {getattr(engine, '__version__', '')}".strip()]
    for module, label in (("sklearn", "scikit-learn"), ("xgboost", "XGBoost")):
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, "__version__", None):
            found.append(f"{label} {loaded.__version__}")
    return "; ".join(found)


def _timing_html(board, timings: Optional[Dict[str, float]]) -> str:
    stage_rows = [{"stage": k, "seconds": float(v)} for k, v in (timings or {}).items()]
    counts = []
    for backbone, stats in board.embed_stats_.items():
        for key in ("read_s", "decode_s", "forward_s", "write_s", "total_s"):
            if key in stats:
                stage_rows.append({"stage": f"embed {backbone}: {key[:-2]}",
                                   "seconds": float(stats[key])})
        if "forwarded" in stats:
            counts.append({"backbone": backbone, "images forwarded": stats["forwarded"],
                           "served from the cache": stats.get("cache_hits", 0)})
    if not stage_rows and not counts:
        return ""
    parts = ["<h2>Timing</h2>"]
    if stage_rows:
        parts.append(_table(stage_rows, ["stage", "seconds"], left=["stage"], digits=2))
    if counts:
        parts.append(_table(counts, ["backbone", "images forwarded", "served from the cache"],
                            left=["backbone"]))
    return "".join(parts)
