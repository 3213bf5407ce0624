"""What every featx HTML page shares: style, escaping, tables, figures, thumbnails, the shell.

Plots use matplotlib's object API with the Agg canvas (no pyplot state, no display);
images are embedded as base64 data URIs so a page opens anywhere as one file, and the
same figures are written beside it as PNG files.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import platform
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import FeatxError

THUMB = 96


def _figure(width=6.0, height=4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _thumb(ax, source) -> None:
    """One image as a thumbnail in ``ax`` (fitted to a square), or "unreadable"."""
    from ..images import decode_image

    try:
        ax.imshow(decode_image(source, (THUMB, THUMB), policy="pad"))
    except (FeatxError, TypeError, ValueError):
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1300px;
color:#222;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0;max-width:100%}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;overflow-wrap:anywhere}
th{background:#f4f4f4;overflow-wrap:normal}td.l,th.l{text-align:left}tr.best td{background:#eaf4ea;font-weight:600}
table.board{width:100%;font-size:.8rem}table.board td{white-space:nowrap}
table.board td.wrap{white-space:normal}img{max-width:100%}
.small{color:#666;font-size:.8rem}.means{color:#444;font-size:.9rem;margin:.2rem 0 1rem}
.grid{display:flex;flex-wrap:wrap;gap:1rem}
code{background:#f4f4f4;padding:1px 4px;overflow-wrap:anywhere}
"""

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: List[dict], columns: Sequence[str], left: Sequence[str] = (),
           digits: Optional[int] = None) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_esc(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = "" if v != v else (f"{v:.{digits}f}" if digits is not None else f"{v:.4g}")
            cells.append(f'<td class="{"l" if c in left else ""}">{_esc(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_esc(alt)}" title="{_esc(name)}" src="data:image/png;base64,{encoded}">'


def write_page(path: Path, title: str, parts: List[str], figures: Dict[str, bytes]) -> Path:
    """One self-contained HTML page at ``path`` (figures inline and beside it as PNG).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from featx.report import write_page
    >>> page = write_page(Path(tempfile.mkdtemp()) / "p.html", "Title", ["<p>hi</p>"], {})
    >>> "<p>hi</p>" in page.read_text()
    True
    """
    from .. import __version__

    for name, data in figures.items():
        (path.parent / name).write_bytes(data)
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    document = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class=small>Generated {generated} by featx "
        f"{_esc(__version__)} on {_esc(platform.node() or 'this machine')}.</p>"
        + "".join(parts) + "</body></html>")
    path.write_text(document, encoding="utf-8")
    return path


