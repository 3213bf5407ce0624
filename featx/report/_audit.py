"""The audit as HTML: thumbnails of what was found, the map (a PNG and a hoverable SVG)
and the label-budget curve; also the short "data checks" section of a baseline report.

Built from an :class:`~featx.quality.AuditResult` only (plain data); shares the
baseline report's page style and helpers so the two read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ._page import _esc, _figure, _img, _png, _table, _thumb, write_page

__all__ = ["write_audit_report", "data_checks_html"]

MEANS = {
    "pairs": "Each pair is two images the backbone finds nearly identical. A pair across "
             "train and test, or across cross-validation folds, lets a model score on a copy "
             "of an image it trained on: the score overstates how it does on new images.",
    "issues": "Images whose given label the out-of-fold model contradicts most confidently "
              "(confident learning). Some are labelling mistakes, some are hard or ambiguous "
              "images; both are worth a look before trusting per-class scores.",
    "map": "Every dot is an image, placed so that images with similar vectors sit close "
           "(t-SNE). Colour is the given label; a dot inside another class's cluster is a "
           "labelling mistake or a genuinely confusable image. Hover a dot in the "
           "interactive map for its file, label and prediction.",
    "budget": "Balanced accuracy of the head trained on a share of each fold's labelled "
              "images. A curve still rising at 100 % says more labels would pay; a flat one "
              "says the backbone's vectors, not the labels, are the limit.",
}
_MARK = {"duplicate": ("o", "none", "black"), "label issue": ("^", "red", "red"),
         "misclassified": ("x", "black", None)}


def _means(key: str) -> str:
    return f'<p class="means">{_esc(MEANS[key])}</p>'


def _pairs_figure(result, frame):
    per_row = 3
    rows = max(1, -(-len(frame) // per_row))
    fig = _figure(per_row * 3.6, rows * 2.1)
    for slot, (_, pair) in enumerate(frame.iterrows()):
        for side, column in enumerate(("a", "b")):
            ax = fig.add_subplot(rows, per_row * 2, slot * 2 + side + 1)
            _thumb(ax, result.sources[int(pair[column])])
            label = pair[f"label_{column}"]
            where = result.split[int(pair[column])]
            ax.set_xlabel(f"{where}{'' if label is None else ': ' + str(label)[:12]}",
                          fontsize=9)
            if side == 0:
                ax.set_title(f"{pair['relation']} · {pair['kind']} {pair['similarity']:.3f}",
                             fontsize=9, loc="left")
    return fig


def _issues_figure(result, frame):
    cols = 6
    rows = max(1, -(-len(frame) // cols))
    fig = _figure(cols * 1.9, rows * 2.3)
    for slot, (_, issue) in enumerate(frame.iterrows()):
        ax = fig.add_subplot(rows, cols, slot + 1)
        _thumb(ax, result.sources[int(issue["index"])])
        ax.set_title(f"given {str(issue['given'])[:12]}\nlikely {str(issue['suggested'])[:12]}",
                     fontsize=9)
    return fig


def _label_texts(frame) -> List[str]:
    """Each mapped image's label as text ("unlabelled" where there is none)."""
    return ["unlabelled" if v is None or v != v else str(v) for v in frame["label"]]


def _map_figure(frame):
    fig = _figure(8, 6.5)
    ax = fig.add_subplot()
    labels = np.asarray(_label_texts(frame), dtype=object)
    for name in sorted(set(labels)):
        part = frame[labels == name]
        ax.scatter(part["x"], part["y"], s=6, alpha=0.6, label=name[:20])
    for flag, (marker, face, edge) in _MARK.items():
        part = frame[frame["flag"] == flag]
        if len(part):
            edges = {} if edge is None else {"edgecolors": edge}
            ax.scatter(part["x"], part["y"], s=30, marker=marker, facecolors=face,
                       linewidths=0.8, label=flag, **edges)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Embedding map (t-SNE of {len(frame)} images)")
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    return fig


def _map_svg(frame, width: int = 900, height: int = 640) -> str:
    """The map as inline SVG: each dot's ``<title>`` is its tooltip (no script, no server)."""
    from matplotlib import colormaps

    x, y = frame["x"].to_numpy(float), frame["y"].to_numpy(float)
    pad = 12

    def scale(v, size):
        lo, hi = float(np.min(v)), float(np.max(v))
        return pad + (v - lo) / ((hi - lo) or 1.0) * (size - 2 * pad)

    sx, sy = scale(x, width), height - scale(y, height)
    labels = _label_texts(frame)
    names = sorted(set(labels))
    cmap = colormaps["tab20" if len(names) > 10 else "tab10"]
    colour = {n: "#%02x%02x%02x" % tuple(int(255 * c) for c in cmap(i % cmap.N)[:3])
              for i, n in enumerate(names)}
    dots = []
    for (_, row), label, px, py in zip(frame.iterrows(), labels, sx, sy):
        tip = f"{row['source']}\nlabel: {label}"
        if isinstance(row["prediction"], str):
            tip += f"\npredicted: {row['prediction']}"
        if row["flag"]:
            tip += f"\n{row['flag']}"
        stroke = ' stroke="#000" stroke-width="1.2"' if row["flag"] else ""
        dots.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{4 if row["flag"] else 3}" '
                    f'fill="{colour[label]}"{stroke}><title>{_esc(tip)}</title>'
                    "</circle>")
    legend = " ".join(f'<span style="color:{colour[n]}">●</span> {_esc(n)}' for n in names)
    return (f'<svg class="map" viewBox="0 0 {width} {height}" width="{width}" '
            f'style="max-width:100%;height:auto;border:1px solid #ddd">{"".join(dots)}</svg>'
            f'<p class="small">{legend} · dots with a black ring are flagged</p>')


def _budget_figure(frame):
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.errorbar(frame["fraction"] * 100, frame["balanced_accuracy"], yerr=frame["std"],
                marker="o", capsize=3)
    ax.set_xlabel("share of the training labels used (%)")
    ax.set_ylabel("balanced accuracy (held-out folds)")
    ax.set_title("Label budget")
    ax.grid(alpha=0.3)
    return fig


def _summary_html(result) -> str:
    s = result.summary()
    cal = result.calibration
    how = ("" if cal is None else
           f" (cosine ≥ {cal.threshold:.4f}"
           + (f" and pixels matching ≥ {cal.pixel_threshold:.4f}" if cal.verified else "")
           + ", " + ("cosine given" if cal.given else "calibrated on "
                     f"{len(cal.copies)} generated copies of this dataset's images") + ")")
    rows = [{"check": "images audited", "found": s["images"]},
            {"check": "exact duplicate pairs (same bytes or pixels)", "found": s["exact_pairs"]},
            {"check": f"near-duplicate pairs{how}", "found": s["near_pairs"]},
            {"check": "pairs that leak (train/test or across CV folds)",
             "found": s["leaking_pairs"]},
            {"check": "label-issue candidates", "found": s["label_issues"]}]
    if s["skipped"]:
        rows.append({"check": "images left out (unreadable)", "found": s["skipped"]})
    return _table(rows, ["check", "found"], left=["check"])


def data_checks_html(result, figures: Dict[str, bytes], n_show: int = 6) -> List[str]:
    """The "data checks" section a baseline report carries: counts and the worst findings.

    Returns HTML fragments; figures it draws are added to ``figures`` by file name.

    Examples
    --------
    >>> import numpy as np, featx
    >>> from featx.report import data_checks_html
    >>> images = np.random.RandomState(0).randint(0, 255, (8, 32, 32, 3)).astype(np.uint8)
    >>> result = featx.audit(images, backbone="mobilenet_v2", weights=None, input_size=32,
    ...                      checks=["duplicates"], threshold=0.9999)
    >>> data_checks_html(result, {})[0]
    '<h2>Data checks</h2>'
    """
    parts = ["<h2>Data checks</h2>", _summary_html(result)]
    leaking = result.duplicates[result.duplicates["relation"].isin(("train/test",
                                                                     "across folds"))]
    if len(leaking):
        figures["checks_pairs.png"] = _png(_pairs_figure(result, leaking.head(n_show)))
        parts.append(_img("checks_pairs.png", figures["checks_pairs.png"], "leaking pairs"))
        parts.append(_means("pairs"))
    if len(result.label_issues):
        figures["checks_issues.png"] = _png(_issues_figure(result,
                                                           result.label_issues.head(n_show)))
        parts.append(_img("checks_issues.png", figures["checks_issues.png"],
                          "label-issue candidates"))
        parts.append(_means("issues"))
    parts.append('<p class="small">All findings, the embedding map and the label-budget '
                 "curve: <code>featx audit</code> on the same folder and cache (it forwards "
                 "no image again).</p>")
    return parts


def write_audit_report(out_dir, result, *, title: str = "featx audit",
                       command: Optional[str] = None, n_show: int = 24) -> Path:
    """Write ``audit.html`` (self-contained) and its figures as PNG files into ``out_dir``.

    Parameters
    ----------
    out_dir : path
    result : AuditResult
    title : str
    command : str, optional
        The command line to repeat the run.
    n_show : int, default 24
        Thumbnails of pairs and of label issues shown (tables list up to 200).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile, numpy as np, featx
    >>> from featx.report import write_audit_report
    >>> images = np.random.RandomState(0).randint(0, 255, (12, 32, 32, 3)).astype(np.uint8)
    >>> result = featx.audit(images, backbone="mobilenet_v2", weights=None, input_size=32,
    ...                      checks=["duplicates", "map"], threshold=0.999)
    >>> write_audit_report(tempfile.mkdtemp(), result).name
    'audit.html'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: Dict[str, bytes] = {}
    parts = ["<h2>Summary</h2>", _summary_html(result)]
    stats = result.stats
    parts.append(f'<p class="small">Backbone {_esc(result.backbone)}: {stats.get("forwarded", 0)} '
                 f"images forwarded, {stats.get('cache_hits', 0)} vectors from the cache, "
                 f"{stats.get('calibration_forwarded', 0)} calibration copies forwarded; "
                 f"neighbours by {_esc(stats.get('neighbours'))}; "
                 f"{stats.get('total_s', float('nan')):.1f} s in all.</p>")
    if command:
        parts.append(f"<p class=small>Command: <code>{_esc(command)}</code></p>")

    dup = result.duplicates
    parts.append(f"<h2>Duplicates and leakage ({len(dup)} pairs)</h2>")
    cal = result.calibration
    if cal is not None and cal.verified and len(cal.pixel_copies):
        c = cal.summary()
        raised = (" The pixel threshold was raised above the copies' 2 % quantile because "
                  "many distinct images of this dataset match as well as copies: expect to "
                  "miss some copies." if c["raised"] else "")
        parts.append(f'<p class="small">Candidates: pairs of nearest neighbours with cosine '
                     f'≥ {c["threshold"]:.4f}; reported when their pixels, less what their '
                     f'look-alikes share, match ≥ {c["pixel_threshold"]:.4f}. Together they '
                     f"find {100 * c['copy_recall']:.0f} % of {c['pairs']} generated copies "
                     "(cropped ≤ 5 %, resized ±10 %, JPEG quality 60–90) of this dataset's "
                     f"images (median pixel score {c['pixel_copies_median']:.3f}); an image "
                     "and its nearest distinct image score "
                     f"{c['pixel_distinct_median']:.3f} at the median. "
                     f"{stats.get('duplicate_verified', 0):,} candidates verified"
                     + (f" ({stats['duplicate_beyond_verify_limit']:,} less similar ones were "
                        "not: the limit is MAX_VERIFIED)"
                        if stats.get("duplicate_beyond_verify_limit") else "")
                     + f".{raised}</p>")
    elif cal is not None and not cal.given:
        c = cal.summary()
        raised = (" It was raised above the copies' 2 % quantile because this backbone "
                  "finds many distinct images of this dataset as similar as copies: expect "
                  "to miss some copies." if c["raised"] else "")
        parts.append(f'<p class="small">Threshold {c["threshold"]:.4f} (cosine only, '
                     f"not verified on pixels): it finds "
                     f"{100 * c['copy_recall']:.0f} % of {c['pairs']} generated copies "
                     "(cropped ≤ 5 %, resized ±10 %, JPEG quality 60–90) of this dataset's "
                     f"images (their median similarity {c['copies_median']:.4f}); an image's "
                     "nearest other image scores "
                     f"{c['nearest_distinct_median']:.4f} at the median, and "
                     f"{100 * c['nearest_distinct_above']:.1f} % of them pass it.{raised}</p>")
    if len(dup):
        figures["pairs.png"] = _png(_pairs_figure(result, dup.head(n_show)))
        parts.append(_img("pairs.png", figures["pairs.png"], "duplicate pairs"))
        parts.append(_means("pairs"))
        parts.append(_table(dup.head(200).to_dict("records"),
                            ["relation", "kind", "similarity", "pixel_score", "source_a",
                             "label_a", "source_b", "label_b"],
                            left=["relation", "kind", "source_a", "label_a", "source_b",
                                  "label_b"], digits=4))
    else:
        parts.append("<p>No duplicate pair.</p>")

    issues = result.label_issues
    if result.labels is not None:
        parts.append(f"<h2>Label-issue candidates ({len(issues)})</h2>")
        if len(issues):
            figures["label_issues.png"] = _png(_issues_figure(result, issues.head(n_show)))
            parts.append(_img("label_issues.png", figures["label_issues.png"],
                              "label-issue candidates"))
            parts.append(_means("issues"))
            parts.append(_table(issues.head(200).to_dict("records"),
                                ["source", "given", "suggested", "self_confidence"],
                                left=["source", "given", "suggested"], digits=3))
        else:
            parts.append("<p>No label issue found.</p>")

    if len(result.map):
        parts.append("<h2>Embedding map</h2>")
        figures["map.png"] = _png(_map_figure(result.map))
        parts.append(_img("map.png", figures["map.png"], "embedding map"))
        parts.append(_means("map"))
        parts.append("<h3>Interactive (hover a dot)</h3>")
        parts.append(_map_svg(result.map))
    if len(result.budget):
        parts.append("<h2>Label budget</h2>")
        figures["budget.png"] = _png(_budget_figure(result.budget))
        parts.append(_img("budget.png", figures["budget.png"], "label-budget curve"))
        parts.append(_means("budget"))
        parts.append(_table(result.budget.to_dict("records"),
                            ["fraction", "n_train", "balanced_accuracy", "std"], digits=3))
    if result.skipped:
        parts.append(f"<h2>Images left out ({len(result.skipped)})</h2>")
        parts.append(_table([{"image": s, "reason": r} for s, r in result.skipped],
                            ["image", "reason"], left=["image", "reason"]))

    return write_page(out / "audit.html", title, parts, figures)
