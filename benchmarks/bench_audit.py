#!/usr/bin/env python
"""Audit benchmark: what ``featx.audit`` finds where the answer is known, and what it costs.

Parts (each prints and goes into the ``bench_audit`` section of docs/benchmarks.md):

1. **Injected problems on Fashion-MNIST.** ``--fmnist`` images (default 5,000: the
   first 500 of each class of the official train split), split 80/20 stratified into
   train and test. 50 training images get a near copy in the test split (this script's
   own perturbation: cropped by up to 5 % of each side in total, resized by a factor in
   0.9–1.1, saved as JPEG at quality 60–90) with the same label, and 2 % of the
   training labels are flipped to another class. The audit (EfficientNet-Lite0,
   packaged weights, default settings) then reports train/test pairs and label-issue
   candidates. Leakage recall = injected pairs reported / 50, precision = injected
   pairs / all train/test pairs reported; label issues are scored at top-k = number of
   flips. The set runs twice: as stored (28 × 28 PNG files) and upscaled to 112 × 112
   PNG files before injection, because at 28 px the perturbation changes an image more
   than the difference between two distinct products (see docs/audit.md). For each,
   the same audit without pixel verification (``verify=False``) and the best recall any
   cosine threshold reaches at precision ≥ 0.9 on the same ranking are
   printed too.
2. **ELPV, no injection**: counts of what the audit reports on all 2,624 cells, and
   the top pairs and label issues written as PNG files under ``--look`` for a person
   to judge.
3. **Scale**: ``featx audit`` (the command, in a fresh process) on ``--scale`` cached
   Fashion-MNIST vectors (default 20,000), warm cache: wall seconds, images forwarded,
   peak RSS of that process.
4. **Building blocks**: exact 10-NN of every vector by faiss and by scikit-learn at
   ``--nn-sizes`` (random unit 1,280-d vectors); t-SNE and (if installed) UMAP on
   ``--map-points`` cached vectors, UMAP in a fresh process so numba's compilation counts.

Usage::

    python benchmarks/bench_audit.py                       # everything; writes the doc
    python benchmarks/bench_audit.py --parts inject --fmnist 1000 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    command_line, fmt, machine_info, machine_markdown, md_table, quiet_tensorflow,
    write_section,
)

quiet_tensorflow()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SECTION = "bench_audit"
N_COPIES = 50
FLIP_RATE = 0.02


def say(*parts) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------- 1. injected problems


def perturb(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near copy: crop ≤ 5 % of each side in total, resize ×0.9–1.1, JPEG 60–90."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0, 0.05)), int(h * rng.uniform(0, 0.05))
    left, top = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
    img = img.crop((left, top, w - (cw - left), h - (ch - top)))
    scale = rng.uniform(0.9, 1.1)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=int(rng.integers(60, 91)))
    out.seek(0)
    return Image.open(out)


def injected_set(root: Path, n: int, upscale: int, seed: int = 0):
    """Train/test folders with N_COPIES cross-split copies and flipped training labels."""
    from sklearn.model_selection import train_test_split

    from featx.datasets import load_fashion_mnist

    paths, y, names = load_fashion_mnist("train", limit=n)
    tr, te = train_test_split(np.arange(len(paths)), test_size=0.2, stratify=y,
                              random_state=seed)
    rng = np.random.default_rng(seed)
    out = {"train": [], "test": []}
    for split, members in (("train", tr), ("test", te)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in members:
            img = Image.open(paths[i])
            if upscale:
                img = img.resize((upscale, upscale), Image.Resampling.BICUBIC)
            dest = root / split / f"{i:05d}.png"
            img.save(dest)
            out[split].append(str(dest))
    y_train, y_test = y[tr].copy(), list(y[te])
    copied = rng.choice(len(tr), N_COPIES, replace=False)
    pairs = []
    for j in copied:
        dest = root / "test" / f"copy-{tr[j]:05d}.jpg"
        perturb(Image.open(out["train"][j]), rng).save(dest, quality=95)
        pairs.append((j, len(out["test"])))
        out["test"].append(str(dest))
        y_test.append(y_train[j])
    flipped = rng.choice(len(tr), int(round(FLIP_RATE * len(tr))), replace=False)
    for j in flipped:
        y_train[j] = (y_train[j] + rng.integers(1, len(names))) % len(names)
    named = np.asarray(names, dtype=object)
    return (out["train"], named[y_train], out["test"], named[np.asarray(y_test)], pairs,
            set(int(j) for j in flipped))


def leakage_scores(result, pairs, n_train):
    reported = result.duplicates[result.duplicates["relation"] == "train/test"]
    found = {(min(a, b), max(a, b)) for a, b in zip(reported["a"], reported["b"])}
    truth = {(j, n_train + t) for j, t in pairs}
    hits = len(found & truth)
    return hits / len(truth), hits / max(1, len(found)), len(found)


def best_recall_at_precision(X, n_train, pairs, precision=0.9, k=10):
    """Over every threshold on the same train/test neighbour ranking: the best recall."""
    from featx.quality import nearest, unit_rows

    unit = unit_rows(X)
    sims, idx = nearest(unit[:n_train], k, queries=unit[n_train:])
    truth = {(j, t) for j, t in pairs}
    scored = sorted(((float(s), (int(j), t)) for t in range(len(unit) - n_train)
                     for s, j in zip(sims[t], idx[t])), reverse=True)
    best, hits = 0.0, 0
    for rank, (_, pair) in enumerate(scored, 1):
        hits += pair in truth
        if hits / rank >= precision:
            best = max(best, hits / len(truth))
    return best


def run_injected(args, root: Path, upscale: int) -> dict:
    import featx

    train, y_train, test, y_test, pairs, flipped = injected_set(root, args.fmnist, upscale)
    cache = str(root / "embeddings.h5")
    t = time.perf_counter()
    result = featx.audit(train, y_train, test=(test, y_test), cache=cache,
                         runtime=args.runtime, map_points=args.map_points)
    seconds = time.perf_counter() - t
    recall, precision, reported = leakage_scores(result, pairs, len(train))
    # The same audit without pixel verification (warm cache: the copies are cached too).
    unverified = featx.audit(train, y_train, test=(test, y_test), cache=cache,
                             runtime=args.runtime, verify=False, checks=["duplicates"])
    u_recall, u_precision, _ = leakage_scores(unverified, pairs, len(train))
    X = featx.ImageEmbedder("efficientnet_lite0", cache=cache).fit_transform(train + test)
    oracle = best_recall_at_precision(X, len(train), pairs)
    top = result.label_issues["index"].tolist()[:len(flipped)]
    hits = len(set(top) & flipped)
    cal = result.calibration.summary()
    row = {"set": f"{len(train) + len(test)} images at {upscale or 28} px",
           "threshold": cal["threshold"], "pixel threshold": cal.get("pixel_threshold"),
           "copy recall (calibration)": cal["copy_recall"],
           "raised": cal["raised"], "candidates verified": result.stats["duplicate_verified"],
           "reported train/test pairs": reported,
           "leakage recall": recall, "leakage precision": precision,
           "cosine only: recall": u_recall, "cosine only: precision": u_precision,
           "cosine only: best recall at precision 0.9": oracle,
           "label issues P@k": hits / max(1, len(top)), "label issues R@k": hits / len(flipped),
           "k": len(flipped), "map points": len(result.map), "budget points": len(result.budget),
           "forwarded": result.stats["forwarded"] + result.stats["calibration_forwarded"],
           "seconds": seconds}
    say(json.dumps(row, default=str))
    return row


# ----------------------------------------------------------------- 2. ELPV


def run_elpv(args) -> dict:
    import featx
    from featx.datasets import load_elpv
    from featx.report import write_audit_report

    paths, y, names = load_elpv()
    named = np.asarray(names, dtype=object)[y]
    t = time.perf_counter()
    result = featx.audit(paths, named, cache=args.elpv_cache, runtime=args.runtime,
                         map_points=args.map_points)
    seconds = time.perf_counter() - t
    look = Path(args.look)
    write_audit_report(look / "elpv", result, title="featx audit — ELPV (benchmark)")
    s, cal = result.summary(), result.calibration.summary()
    row = {"images": s["images"], "threshold": cal["threshold"],
           "pixel threshold": cal.get("pixel_threshold"),
           "candidates verified": result.stats["duplicate_verified"],
           "copy recall (calibration)": cal["copy_recall"], "exact pairs": s["exact_pairs"],
           "near pairs": s["near_pairs"], "across-fold pairs": s["leaking_pairs"],
           "label issues": s["label_issues"], "seconds": seconds,
           "forwarded": result.stats["forwarded"] + result.stats["calibration_forwarded"]}
    say(json.dumps(row, default=str), f"-> look at {look / 'elpv' / 'audit.html'}")
    return row


# ----------------------------------------------------------------- 3. scale


def run_scale(args) -> dict:
    featx_cmd = str(Path(sys.executable).with_name("featx"))
    out = Path(args.look) / "scale"
    cache = str(Path(args.look) / f"fmnist-{args.scale}.h5")
    base = [featx_cmd, "audit", "--dataset", "fashion-mnist", "--limit", str(args.scale),
            "--out", str(out), "--cache", cache, "--input-size", "128", "--runtime",
            args.runtime, "--json"]
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "wall = time.perf_counter() - t; "
               "stats = json.loads(r.stdout)['stats'] if r.returncode == 0 else None; "
               "print(json.dumps({'rc': r.returncode, 'wall': wall, "
               "'rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "'stats': stats, 'err': r.stderr[-2000:]}))")
    for stale in Path(args.look).glob(f"fmnist-{args.scale}.h5*"):
        stale.unlink()  # "cold" means an empty cache
    runs = {}
    for name in ("cold", "warm"):
        done = subprocess.run([sys.executable, "-c", wrapper, *base], capture_output=True,
                              text=True, timeout=3600)
        info = json.loads(done.stdout)
        if info["rc"] != 0:
            raise SystemExit(f"featx audit failed: {info['err']}")
        stats = info["stats"]
        runs[name] = {"wall_s": info["wall"], "peak_rss_mib": info["rss_kib"] / 1024,
                      "forwarded": stats["forwarded"] + stats["calibration_forwarded"],
                      "duplicate_verified": stats.get("duplicate_verified"),
                      **{k: stats[k] for k in stats if k.endswith("_s")}}
        say(name, json.dumps(runs[name]))
    return runs


# ----------------------------------------------------------------- 4. building blocks


def run_blocks(args) -> dict:
    from sklearn.decomposition import PCA

    from featx.quality import nearest, project_2d, unit_rows

    rows = {"nn": [], "map": []}
    rng = np.random.default_rng(0)
    for n in args.nn_sizes:
        X = unit_rows(rng.standard_normal((n, 1280)).astype(np.float32))
        times, found = {}, {}
        for backend in ("faiss", "sklearn"):
            t = time.perf_counter()
            _, found[backend] = nearest(X, 10, backend=backend)
            times[backend] = time.perf_counter() - t
        agree = float((found["faiss"][:, 0] == found["sklearn"][:, 0]).mean())
        rows["nn"].append({"vectors": n, "faiss_s": times["faiss"],
                           "sklearn_s": times["sklearn"], "first neighbour agrees": agree})
        say("nn", rows["nn"][-1])
    import featx
    from featx.datasets import load_fashion_mnist

    paths, _, _ = load_fashion_mnist("train", limit=args.map_points)
    cache = str(Path(args.look) / f"fmnist-{args.scale}.h5")
    X = featx.ImageEmbedder("efficientnet_lite0", input_size=128, cache=cache,
                            runtime=args.runtime).fit_transform(paths)
    t = time.perf_counter()
    project_2d(X)
    rows["map"].append({"method": "t-SNE (PCA 50)", "points": len(X),
                        "seconds": time.perf_counter() - t})
    npy = Path(args.look) / "map_vectors.npy"
    np.save(npy, PCA(50, random_state=0).fit_transform(X))
    code = ("import time, numpy as np; t = time.perf_counter(); import umap; "
            f"umap.UMAP(random_state=0).fit_transform(np.load({str(npy)!r})); "
            "print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode == 0:
        rows["map"].append({"method": "UMAP, fresh process (import + numba compile)",
                            "points": len(X), "seconds": float(done.stdout.split()[-1])})
    else:
        rows["map"].append({"method": "UMAP", "points": len(X), "seconds": "not installed"})
    for row in rows["map"]:
        say("map", row)
    return rows


# ----------------------------------------------------------------- report


def _cell(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt(value, 3) if isinstance(value, float) else value


def markdown(args, results: dict, info: dict) -> str:
    by = results.get("_measured_by", {})
    parts = [p for p in ("inject", "elpv", "scale", "blocks") if p in results]
    lines = [machine_markdown(info), "",
             f"Command: `{command_line()}`. Each part's numbers come from the run that "
             "measured it (kept in `--look`): " + "; ".join(
                 f"{p}: `{by.get(p, 'an earlier run of this script')}`" for p in parts), ""]
    if "inject" in results:
        cols = ["set", "threshold", "pixel threshold", "copy recall (calibration)", "raised",
                "candidates verified", "reported train/test pairs", "leakage recall",
                "leakage precision", "cosine only: recall", "cosine only: precision",
                "cosine only: best recall at precision 0.9", "label issues P@k",
                "label issues R@k", "k",
                "map points", "budget points", "forwarded", "seconds"]
        lines += ["**Injected problems, Fashion-MNIST** (50 cross-split near copies, 2 % "
                  "flipped training labels; EfficientNet-Lite0 packaged, 224 px). Goal: "
                  "leakage recall ≥ 0.95 at precision ≥ 0.90; label issues P and R ≥ 0.6 "
                  "at k = flips.", "",
                  md_table(cols, [[_cell(r[c]) for c in cols] for r in results["inject"]]),
                  ""]
    if "elpv" in results:
        r = results["elpv"]
        lines += ["**ELPV, nothing injected** (all cells, 5-fold CV): " + "; ".join(
            f"{k} {_cell(v)}" for k, v in r.items()), ""]
    if "scale" in results:
        rows = [[name, fmt(r["wall_s"], 1), r["forwarded"], fmt(r["peak_rss_mib"], 0),
                 ", ".join(f"{k[:-2]} {v:.1f}" for k, v in r.items()
                           if k.endswith("_s") and k != "wall_s")]
                for name, r in results["scale"].items()]
        verified = {r.get("duplicate_verified") for r in results["scale"].values()} - {None}
        lines += [f"**`featx audit` on {args.scale:,} Fashion-MNIST images** (128 px, a fresh "
                  "process each; cold = empty cache, warm = every vector cached). Goal: warm "
                  "< 60 s, 0 forwarded. The duplicates step is mostly the pixel verification "
                  "of " + (f"{max(verified):,} " if verified else "the ") +
                  "candidate pairs.", "",
                  md_table(["run", "wall s", "forwarded", "peak RSS MiB", "steps (s)"], rows),
                  ""]
    if "blocks" in results:
        nn = results["blocks"]["nn"]
        lines += ["**Exact 10-NN of every vector** (random unit 1,280-d):", "",
                  md_table(["vectors", "faiss s", "scikit-learn s", "ratio",
                            "first neighbour agrees"],
                           [[r["vectors"], fmt(r["faiss_s"], 1), fmt(r["sklearn_s"], 1),
                             fmt(r["sklearn_s"] / r["faiss_s"], 2),
                             fmt(r["first neighbour agrees"], 4)] for r in nn]), "",
                  "**2-D map**:", "",
                  md_table(["method", "points", "seconds"],
                           [[r["method"], r["points"], fmt(r["seconds"], 1)
                             if isinstance(r["seconds"], float) else r["seconds"]]
                            for r in results["blocks"]["map"]]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="*", default=["inject", "elpv", "scale", "blocks"],
                        choices=["inject", "elpv", "scale", "blocks"],
                        help="parts to run; the others are shown as kept in --look "
                             "(none: re-write the section from what is kept)")
    parser.add_argument("--fmnist", type=int, default=5000)
    parser.add_argument("--scale", type=int, default=20000)
    parser.add_argument("--nn-sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--map-points", type=int, default=2000)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--elpv-cache", default=None, help="reuse a cache (default: fresh)")
    parser.add_argument("--look", default=os.path.join(tempfile.gettempdir(), "featx-audit"),
                        help="where reports and caches of this run go")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    Path(args.look).mkdir(parents=True, exist_ok=True)
    args.elpv_cache = args.elpv_cache or str(Path(args.look) / "elpv.h5")
    # Each part's numbers are kept in --look as they land, so a part can be re-run alone
    # and the section still shows every part (each row says what it measured).
    saved = Path(args.look) / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}

    def keep(part, value):
        results[part] = value
        results.setdefault("_measured_by", {})[part] = command_line()
        saved.write_text(json.dumps(results, indent=1, default=str))

    if "inject" in args.parts:
        rows = []
        for upscale in (0, 112):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(run_injected(args, Path(tmp), upscale))
        keep("inject", rows)
    if "elpv" in args.parts:
        keep("elpv", run_elpv(args))
    if "scale" in args.parts:
        keep("scale", run_scale(args))
    if "blocks" in args.parts:
        keep("blocks", run_blocks(args))
    import sklearn

    info = machine_info()
    info["scikit-learn"] = sklearn.__version__
    text = markdown(args, results, info)
    print(text)
    if not args.no_write:
        print("wrote", write_section(SECTION, text))


if __name__ == "__main__":
    main()
