"""Print the markdown tables of docs/reliability.md from a fresh corpus run.

    python tests/robustness/make_table.py [--results DIR] [--no-embed]

Writes the corpus to a temporary folder, runs every kind through
``decode_image``, ``list_images`` and an ``Embedder`` (``on_error="skip"``,
MobileNetV2 at 32 px, random weights), and prints one row per kind: what featx
did and the first line of its message. With ``--results DIR`` (where
``FEATX_RESULTS_DIR`` pointed during ``make torture``) it adds the crash and
concurrency numbers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from corpus import build_corpus  # noqa: E402


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def bad_input_table(embed: bool = True) -> str:
    from featx.errors import FeatxError
    from featx.images import decode_image, list_images

    folder = tempfile.mkdtemp(prefix="featx-corpus-")
    cases, skipped = build_corpus(folder)
    listed = set(list_images(folder))
    failures = {}
    if embed:
        import featx

        bb = featx.get_backbone("mobilenet_v2", weights=None, input_size=32)
        emb = featx.Embedder(bb, store=os.path.join(folder, "..", os.path.basename(folder)
                                                    + ".h5"),
                             batch_size=8, on_error="skip", progress=False)
        emb.embed([c.path for c in cases])
        failures = {f.source: f.reason for f in emb.failures_}
    rows = ["| kind | input | expected | featx | in a folder scan "
            "| message (first line, path elided) |", "|---|---|---|---|---|---|"]
    for c in cases:
        try:
            decode_image(c.path, (32, 32))
            outcome, message = "embedded", ""
        except FeatxError as exc:
            outcome = "FeatxError"
            message = str(exc).splitlines()[0].replace(c.path, "<path>")
        except Exception as exc:  # would be a bug: reported as such
            outcome, message = f"BUG {type(exc).__name__}", str(exc)
        if embed:
            skip = "skipped" if c.path in failures else "embedded"
            outcome = f"{outcome} / skip mode: {skip}"
        scan = "listed" if c.path in listed else "not listed (not a file)"
        ok = (outcome.startswith("embedded") == (c.expectation == "ok"))
        rows.append(f"| `{c.kind}` | {_cell(c.note)} | {c.expectation} | "
                    f"{outcome}{'' if ok else ' **MISMATCH**'} | {scan} | {_cell(message[:160])} |")
    for name, why in skipped.items():
        rows.append(f"| `{name}` | — | — | not produced here | — | {_cell(why)} |")
    return "\n".join(rows)


def results_tables(folder: str) -> str:
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        data = json.load(open(path))
        out.append(f"**{os.path.basename(path)[:-5]}**\n")
        out.append("| quantity | value |\n|---|---|")
        out.extend(f"| {k} | {v} |" for k, v in sorted(data.items()))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", help="FEATX_RESULTS_DIR of a robustness run")
    parser.add_argument("--no-embed", action="store_true", help="decode only (no Keras)")
    args = parser.parse_args()
    print(bad_input_table(embed=not args.no_embed))
    if args.results:
        print()
        print(results_tables(args.results))
