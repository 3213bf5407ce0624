#!/usr/bin/env python
"""Quality benchmark: what each featx path scores on two real datasets, and what it costs.

Datasets (both offline, see /work/shared/OFFLINE.md):

* **ELPV** solar cells, binary task (defective = defect probability ≥ 0.5): all
  2,624 images, one fixed stratified 75/25 split (``random_state=0``: 1,968 train /
  656 test; majority rate 0.687).
* **Fashion-MNIST**: a stratified train subset (``--fmnist-train``, default 6,000:
  the first 600 of each class) and the first ``--fmnist-test`` images per class
  of the **official test split** (default 2,000), upscaled to ``--fmnist-size``
  px (default 64). Upscaling 28 px to 224 px would cost 12× the forward time for
  no new information; 64 px keeps the run well under an hour.

Rows, all trained on the train part and scored once on the test part:

=====================================  ==============================================
raw pixels + logreg                    ``RawPixels(32)`` → StandardScaler → logistic regression
random-init Lite0 + logreg             EfficientNet-Lite0, ``weights=None`` (architecture alone)
Lite0 / Lite2 / MobileNet v1 + head    pip-packaged ImageNet weights; heads logreg, svm, xgboost
fine-tuned Lite0                       ``FineTuneClassifier``, the ``baseline(finetune=True)`` row
scratch Lite0                          ``weights=None, unfreeze="all"``, same epoch count
=====================================  ==============================================

Each head is a ``GridSearchCV(make_head(kind), GRIDS[kind], cv=3)`` on the training
vectors (the grids ``featx baseline`` uses), refit, then scored on the test part.
Vectors go through an ``EmbeddingStore`` under ``--workdir``, so a re-run reuses
them (a re-run's wall times then show the cached cost, not the first forward pass).

Goals (each reported met / missed): ELPV features + best head ≥ 0.85 accuracy;
ELPV fine-tuned ≥ 0.88 (Deitsch et al. 2019: fine-tuned CNN 88.4 %, SVM on
hand-crafted features 82.4 %); Fashion-MNIST features + best head ≥ 0.90; and
per dataset pretrained > random-init > raw pixels (logistic regression on each).

Usage::

    python benchmarks/bench_quality.py                        # both datasets; writes the doc
    python benchmarks/bench_quality.py --datasets elpv        # one dataset
    python benchmarks/bench_quality.py --quick --no-write     # smoke run: tiny subsets, 64 px
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    command_line, fmt, load_average, machine_info, machine_markdown, md_table, quiet_tensorflow,
    write_section,
)

quiet_tensorflow()

import numpy as np  # noqa: E402

SECTION = "bench_quality"
PACKAGED = ("efficientnet_lite0", "efficientnet_lite2", "mobilenet")
HEADS = ("logreg", "svm", "xgboost")
GOALS = {"elpv": {"features": 0.85, "finetuned": 0.88}, "fashion-mnist": {"features": 0.90}}


def say(*parts) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------ data


def load(name: str, args) -> dict:
    """Train/test sources and labels of one dataset, and a sentence saying exactly which."""
    from sklearn.model_selection import train_test_split

    from featx import datasets

    if name == "elpv":
        sources, y, names = datasets.load_elpv("binary", limit=args.elpv_limit)
        idx = np.arange(len(sources))
        tr, te = train_test_split(idx, test_size=0.25, stratify=y, random_state=0)
        what = (f"ELPV binary, {len(sources)} images"
                + (" (all)" if args.elpv_limit is None else f" (first {args.elpv_limit} "
                   "stratified)") + f", stratified 75/25 split random_state=0: {len(tr)} train / "
                f"{len(te)} test, {args.elpv_size} px")
        return dict(train=[sources[i] for i in tr], y_train=y[tr], test=[sources[i] for i in te],
                    y_test=y[te], names=names, size=args.elpv_size, what=what)
    if name == "fashion-mnist":
        train, y, names = datasets.load_fashion_mnist("train", limit=args.fmnist_train)
        test, y_test, _ = datasets.load_fashion_mnist("test", limit=args.fmnist_test)
        what = (f"Fashion-MNIST, first {len(train) // 10} train images per class ({len(train)}) "
                f"and the first {len(test) // 10} per class of the official test split "
                f"({len(test)}), upscaled 28 → {args.fmnist_size} px")
        return dict(train=train, y_train=y, test=test, y_test=y_test, names=names,
                    size=args.fmnist_size, what=what)
    raise SystemExit(f"unknown dataset {name!r}; expected elpv or fashion-mnist")


# ------------------------------------------------------------------ rows


def _scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}


def head_rows(label: str, X_tr, y_tr, X_te, y_te, heads, embed_s: float) -> List[dict]:
    """One grid-searched head per kind on fixed vectors; wall = embed share + search + predict."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from featx.heads import GRIDS, make_head

    rows = []
    for kind in heads:
        t = time.perf_counter()
        search = GridSearchCV(make_head(kind, random_state=0), GRIDS[kind],
                              cv=StratifiedKFold(3, shuffle=True, random_state=0),
                              scoring="balanced_accuracy", error_score=np.nan)
        search.fit(X_tr, y_tr)
        pred = search.predict(X_te)
        head_s = time.perf_counter() - t
        rows.append({"model": label, "head": kind, **_scores(y_te, pred),
                     "embed_s": embed_s, "head_s": head_s, "wall_s": embed_s + head_s,
                     "params": {k.split("__")[-1]: v for k, v in search.best_params_.items()}})
        say(f"  {label} + {kind}: accuracy {rows[-1]['accuracy']:.3f}, balanced "
            f"{rows[-1]['balanced_accuracy']:.3f}, {head_s:.1f} s")
    return rows


def embed(data: dict, backbone: str, weights, store: str):
    from featx import ImageEmbedder

    emb = ImageEmbedder(backbone=backbone, weights=weights, input_size=data["size"], cache=store)
    t = time.perf_counter()
    X_tr = emb.fit_transform(data["train"])
    X_te = emb.transform(data["test"])
    return X_tr, X_te, time.perf_counter() - t


def finetune_rows(data: dict, epochs, batch_size: int) -> List[dict]:
    """The two rows ``baseline(finetune=True)`` adds, with the same configurations."""
    from featx import FineTuneClassifier
    from featx.baseline import _finetune_configs

    configs = _finetune_configs("efficientnet_lite0", "packaged", data["size"], batch_size, 0,
                                {"epochs": tuple(epochs)})
    rows = []
    for label, params in configs.items():
        t = time.perf_counter()
        clf = FineTuneClassifier(**params).fit(data["train"], data["y_train"])
        pred = clf.predict(data["test"])
        wall = time.perf_counter() - t
        name = "Lite0 fine-tuned (packaged)" if label == "fine-tuned" else "Lite0 from scratch"
        rows.append({"model": name, "head": "dense (Keras)", **_scores(data["y_test"], pred),
                     "embed_s": float("nan"), "head_s": wall, "wall_s": wall,
                     "params": {"unfreeze": params["unfreeze"], "epochs": params["epochs"],
                                "epochs_run": [p["epochs_run"] for p in clf.phases_]}})
        say(f"  {name}: accuracy {rows[-1]['accuracy']:.3f}, balanced "
            f"{rows[-1]['balanced_accuracy']:.3f}, {wall:.1f} s (epochs run "
            f"{rows[-1]['params']['epochs_run']})")
    return rows


def run_dataset(name: str, args, work: Path) -> dict:
    from featx.sklearn import RawPixels

    data = load(name, args)
    say(f"\n== {name}: {data['what']}")
    started = time.perf_counter()
    store = str(work / f"{name}.h5")
    heads = HEADS if not args.quick else ("logreg", "svm")
    rows: List[dict] = []

    t = time.perf_counter()
    raw = RawPixels(size=32)
    X_tr, X_te = raw.fit_transform(data["train"]), raw.transform(data["test"])
    rows += head_rows("raw pixels 32×32", X_tr, data["y_train"], X_te, data["y_test"],
                      ("logreg",), time.perf_counter() - t)
    X_tr, X_te, s = embed(data, "efficientnet_lite0", None, store)
    rows += head_rows("Lite0 random init", X_tr, data["y_train"], X_te, data["y_test"],
                      ("logreg",), s)
    for backbone in PACKAGED:
        X_tr, X_te, s = embed(data, backbone, "packaged", store)
        rows += head_rows(f"{backbone} (packaged)", X_tr, data["y_train"], X_te,
                          data["y_test"], heads, s)
    if not args.no_finetune:
        rows += finetune_rows(data, args.epochs, args.batch_size)
    majority = float(np.bincount(data["y_test"]).max() / len(data["y_test"]))
    return {"name": name, "what": data["what"], "rows": rows, "majority": majority,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------ goals


def goals(result: dict) -> List[tuple]:
    """(goal, measured, met) for one dataset."""
    rows, name = result["rows"], result["name"]
    out = []
    feats = [r for r in rows if "(packaged)" in r["model"]]
    if feats:
        best = max(feats, key=lambda r: r["accuracy"])
        target = GOALS.get(name, {}).get("features")
        if target is not None:
            out.append((f"features + best head ≥ {target:.2f} accuracy",
                        f"{best['accuracy']:.3f} ({best['model']} + {best['head']})",
                        best["accuracy"] >= target))
    tuned = [r for r in rows if r["model"].startswith("Lite0 fine-tuned")]
    target = GOALS.get(name, {}).get("finetuned")
    if target is not None:
        out.append((f"fine-tuned Lite0 ≥ {target:.2f} accuracy",
                    f"{tuned[0]['accuracy']:.3f}" if tuned else "not run (--no-finetune)",
                    tuned[0]["accuracy"] >= target if tuned else None))
    logreg = {r["model"]: r["accuracy"] for r in rows if r["head"] == "logreg"}
    pre = max((v for k, v in logreg.items() if "(packaged)" in k), default=float("nan"))
    rnd = logreg.get("Lite0 random init", float("nan"))
    raw = logreg.get("raw pixels 32×32", float("nan"))
    out.append(("pretrained > random-init > raw pixels (logreg on each)",
                f"{pre:.3f} > {rnd:.3f} > {raw:.3f}", bool(pre > rnd > raw)))
    return out


def markdown(results: List[dict], info: dict, args, quick: bool) -> str:
    lines = [
        "## Quality: raw pixels vs random-init vs pretrained features vs fine-tuning "
        "(`bench_quality.py`)",
        "",
        f"Measured {info['date']} with `{command_line()}`"
        + (" — **a `--quick` smoke run on tiny subsets: these numbers say nothing about "
           "quality**" if quick else "") + ".  ",
        f"{machine_markdown(info)}  ",
        "Load average at the end: "
        + (" / ".join(f"{x:.2f}" for x in (load_average() or ())) or "unknown")
        + " (the 2 cores were shared with other work, so wall times are upper bounds).",
        "",
        "Every row is trained on the train part and scored once on the test part. Heads are "
        "`GridSearchCV(make_head(kind), GRIDS[kind], cv=3)` on the training vectors; wall s = "
        "embedding (train + test, from the store when it already held them) + search + "
        "predict. Every backbone runs at the dataset's one input size (so Lite2 runs below its "
        "native 260 px). Fine-tuning rows are the configurations `baseline(finetune=True)` uses "
        f"(fine-tuned: unfreeze 20, epochs {tuple(args.epochs)}; scratch: weights=None, "
        f"unfreeze='all', epochs (0, {sum(args.epochs)}), lr 1e-3).",
    ]
    for res in results:
        lines += ["", f"### {res['name']}", "",
                  f"{res['what']}; majority-class rate of the test part "
                  f"{res['majority']:.3f}; {res['seconds'] / 60:.1f} min for this dataset.", ""]
        table = [[r["model"], r["head"], f"{r['accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}",
                  fmt(r["wall_s"], 1), ", ".join(f"{k}={v}" for k, v in r["params"].items())]
                 for r in sorted(res["rows"], key=lambda r: -r["accuracy"])]
        lines.append(md_table(["model", "head", "accuracy", "balanced acc.", "wall s",
                               "params"], table))
        lines += ["", "| goal | measured | |", "|---|---|---|"]
        for goal, measured, met in goals(res):
            verdict = "not measured" if met is None else ("met" if met else "**missed**")
            lines.append(f"| {goal} | {measured} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="elpv,fashion-mnist",
                    help="comma-separated: elpv, fashion-mnist (default both)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 120 ELPV / 200+100 Fashion-MNIST images, 64 px, "
                         "epochs (1, 1), heads logreg + svm")
    ap.add_argument("--elpv-size", type=int, default=224, help="ELPV input side (default 224)")
    ap.add_argument("--elpv-limit", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fmnist-train", type=int, default=6000)
    ap.add_argument("--fmnist-test", type=int, default=2000)
    ap.add_argument("--fmnist-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, nargs=2, default=[3, 3], metavar=("HEAD", "TOP"),
                    help="fine-tuning epochs (default 3 3; scratch gets their sum)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-finetune", action="store_true", help="skip the two Keras rows")
    ap.add_argument("--workdir", default=None,
                    help="vector stores live here and are reused by re-runs "
                         "(default $TMPDIR/featx-bench-quality)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--doc", default=None, help="write to this file instead of docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also dump the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.elpv_limit, args.elpv_size = 160, 64
        args.fmnist_train, args.fmnist_test, args.fmnist_size = 200, 100, 64
        args.epochs = [1, 1]
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "featx-bench-quality")
    work = work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    say(f"bench_quality: datasets {names}; store under {work}")

    import featx  # noqa: F401  (import before machine_info so versions are reported)

    results = [run_dataset(name, args, work) for name in names]
    info = machine_info()
    text = markdown(results, info, args, args.quick)
    say("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.no_write:
        path = write_section(SECTION, text, **({"path": args.doc} if args.doc else {}))
        say(f"\nwrote section {SECTION!r} of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
