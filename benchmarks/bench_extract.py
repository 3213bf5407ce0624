#!/usr/bin/env python
"""Extraction benchmark: featx's engine against its own forward pass, the seeds' Keras flow,
its memory at scale, its store and its cache.

Measures (issue 3's acceptance; each is a median over ``--repeats`` runs in this process,
with the same model objects):

P1  end-to-end ÷ forward-only throughput. End-to-end = ``Embedder(bb, store=<fresh store>,
    batch_size=32).embed(paths)`` on a cold (empty) store; forward-only = the engine's own
    compiled forward (``featx.engine.compiled_forward``) on the same images, decoded and
    preprocessed beforehand. Goal >= 0.9. The engine's stage seconds come from
    ``Embedder.stats``.
P2  end-to-end ÷ the seeds' pipeline: ``keras.utils.image_dataset_from_directory(...,
    labels=None, shuffle=False)`` mapped with the family's preprocessing, then
    ``model.predict(ds)``, same model, same files. Goals >= 2.0 on 12 MP, >= 1.2 on small.
P4  peak RSS embedding 5k vs 20k small images at 64 px, each in a fresh subprocess.
    Goal: 20k within +10 % of 5k.
P5  store: sequential read GB/s with ``iter_rows`` and 100k-key ``lookup`` seconds
    (cold object, warm object). Goals >= 1 GB/s and < 1 s.
Hit the cache: the same small images again under other names (copies) -> forwarded 0 and
    the speed-up over the cold pass (issue asks >= 50x).

Inputs are generated JPEGs written once under ``--workdir`` and reused across runs:
500x375 "small" photo-like images (gradients, low-frequency noise, shapes, grain; quality
90), 4000x3000 (12 MP) images made by upscaling 1000x750 ones and adding grain, and 80x60
tiny ones for P4.

Usage::

    python benchmarks/bench_extract.py              # full run, writes docs/benchmarks.md
    python benchmarks/bench_extract.py --quick      # smoke run (64 images, 1 repeat, no 12 MP)
    python benchmarks/bench_extract.py --no-write   # print only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import (  # noqa: E402
    DOC, command_line, fmt, load_average, machine_info, machine_markdown, md_table, median,
    peak_rss_mib, quiet_tensorflow, runs, write_section,
)

quiet_tensorflow()

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

SECTION = "bench_extract"
STAGES = ("total_s", "read_s", "lookup_s", "decode_s", "forward_s", "write_s", "lock_s",
          "wait_s")
BATCH = 32
SIZE = 224
P4_SIZE = 64
GOALS = {"p1": 0.9, "p2_large": 2.0, "p2_small": 1.2, "p4": 0.10, "p5_read": 1.0,
         "p5_lookup": 1.0, "hit": 50.0}
KINDS = {  # name: (width, height, quality, generated at (w, h) then upscaled, grain sigma)
    "small": (500, 375, 90, None, 7.0),
    "large": (4000, 3000, 90, (1000, 750), 6.0),
    "tiny": (80, 60, 90, None, 7.0),
    "hd": (1920, 1080, 90, None, 7.0),  # bench_gpu.py's second set
}


def say(*parts) -> None:
    print(*parts, flush=True)


# ===================================================================== inputs


def photo_like(seed: int, w: int, h: int, grain: float) -> Image.Image:
    """A deterministic photo-like RGB image: a colour gradient, soft blotches, a few
    flat shapes, a slight blur and sensor-like grain (so JPEG has real work to do)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = rng.uniform(30, 220, 3) + rng.uniform(-80, 80, 3) * xx + rng.uniform(-80, 80, 3) * yy
    low = rng.normal(128, 25, (max(2, h // 40), max(2, w // 40), 3))
    low = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    img = np.clip(img + np.asarray(low, np.float32) - 128, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    side = min(w, h)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = rng.uniform(-0.2 * w, w), rng.uniform(-0.2 * h, h)
        bw, bh = rng.uniform(0.05, 0.5) * side, rng.uniform(0.05, 0.5) * side
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse([x0, y0, x0 + bw, y0 + bh], fill=colour)
        elif shape == 1:
            draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=colour)
        else:
            draw.polygon([(x0 + rng.uniform(0, bw), y0 + rng.uniform(0, bh)) for _ in range(5)],
                         fill=colour)
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.5) * side / 375))
    noisy = np.asarray(pil, np.int16) + rng.normal(0, grain, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


_GRAIN: Dict[tuple, np.ndarray] = {}


def _make_image(kind: str, index: int, path: str) -> int:
    w, h, quality, base, grain = KINDS[kind]
    seed = {"small": 1, "large": 2, "tiny": 3, "hd": 4}[kind] * 10_000_000 + index
    if base is None:
        img = photo_like(seed, w, h, grain)
    else:  # a smaller photo upscaled to 12 MP, plus full-resolution grain
        img = photo_like(seed, base[0], base[1], grain).resize((w, h), Image.BICUBIC)
        key = (w, h, grain)
        if key not in _GRAIN:  # one grain field per worker process, shifted per image
            _GRAIN[key] = np.random.default_rng(0).normal(0, grain, (h, w, 3)).astype(np.int8)
        field = np.roll(_GRAIN[key], (index * 7919) % h, axis=0)
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + field, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)
    return len(buf.getvalue())


def ensure_pool(workdir: Path, kind: str, n: int) -> List[str]:
    """The first ``n`` generated images of ``kind`` (generating the missing ones)."""
    folder = workdir / "pool" / kind
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"img_{i:05d}.jpg") for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        w, h = KINDS[kind][:2]
        say(f"generating {len(missing)} {kind} {w}x{h} JPEGs in {folder} (once; reused later)")
        start = time.perf_counter()
        # fork before TensorFlow is imported (this runs first in main)
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 2, mp_context=ctx) as pool:
            list(pool.map(_make_image, [kind] * len(missing), missing,
                          [paths[i] for i in missing], chunksize=8))
        say(f"  done in {time.perf_counter() - start:.1f} s")
    return paths


def ensure_view(workdir: Path, kind: str, n: int, pool: List[str]) -> Path:
    """A folder holding exactly the first ``n`` images of ``kind`` (hard links), because the
    seeds' ``image_dataset_from_directory`` reads a whole folder."""
    folder = workdir / f"{kind}-n{n}"
    want = {f"img_{i:05d}.jpg" for i in range(n)}
    if folder.is_dir() and set(os.listdir(folder)) == want:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for src in pool[:n]:
        dst = folder / os.path.basename(src)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return folder


def ensure_copies(workdir: Path, n: int, pool: List[str]) -> List[str]:
    """Renamed byte-for-byte copies (new files, new names) of the first ``n`` small images."""
    folder = workdir / f"small-copies-n{n}"
    paths = [str(folder / f"copy_of_{i:05d}_renamed.jpg") for i in range(n)]
    if folder.is_dir() and all(os.path.exists(p) for p in paths):
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for src, dst in zip(pool[:n], paths):
        shutil.copyfile(src, dst)
    return paths


def mean_file_kib(paths: List[str]) -> float:
    return float(np.mean([os.path.getsize(p) for p in paths])) / 1024


def remove_store(path: Path) -> None:
    for suffix in ("", ".lock", ".lock.gate"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(path) + suffix)


# ===================================================================== models


MOBILENET_NOTE = ("MobileNetV2 runs with `weights=None` (random initialisation): no ImageNet "
                  "weights for it are available offline here. Speed does not depend on the "
                  "weight values, so its timings stand for the pretrained model's.")


def build_models():
    """[(label, backbone or None, note)] — Lite0 is skipped with a reason if unavailable."""
    from featx import get_backbone
    from featx.errors import FeatxError

    models = [("MobileNetV2 (weights=None)", get_backbone("mobilenet_v2", weights=None), None)]
    try:
        lite = get_backbone("efficientnet_lite0", weights="packaged")
        models.append(("EfficientNet-Lite0 (packaged ImageNet)", lite, None))
    except FeatxError as exc:
        msg = (f"EfficientNet-Lite0 skipped: weights='packaged' are not available "
               f"({type(exc).__name__}: {exc}). Install featx's `weights` extra "
               f"(see OFFLINE.md) and rerun.")
        say("WARNING:", msg)
        models.append(("EfficientNet-Lite0 (packaged ImageNet)", None, msg))
    return models


def seeds_preprocess(bb):
    """The tutorials' per-family preprocessing as a tf.data map function, and its name."""
    import keras
    import tensorflow as tf

    if bb.name == "mobilenet_v2":
        fn = keras.applications.mobilenet_v2.preprocess_input
        return (lambda x: fn(x)), "keras.applications.mobilenet_v2.preprocess_input"
    p = bb.preprocessing  # families outside keras.applications: their mode, as tf ops
    mean = tf.constant(p.mean, tf.float32)
    std = tf.constant(p.std, tf.float32)

    def fn2(x):
        if p.bgr:
            x = x[..., ::-1]
        return (x - mean) / std

    return fn2, f"(x - {p.mean[0]:g}) / {p.std[0]:g} (featx mode {p.mode!r}, as tf ops)"


def seeds_dataset(folder: Path, preprocess=None):
    import keras

    with contextlib.redirect_stdout(io.StringIO()):  # "Found N files."
        ds = keras.utils.image_dataset_from_directory(
            str(folder), labels=None, image_size=(SIZE, SIZE), batch_size=BATCH, shuffle=False)
    if preprocess is not None:
        ds = ds.map(preprocess)
    return ds


def warm_up(bb):
    """Compile (trace) the engine's forward and Keras' predict function before timing."""
    import tensorflow as tf
    from featx.engine import compiled_forward

    fwd = compiled_forward(bb.model, (BATCH, SIZE, SIZE, 3))
    zeros = np.zeros((BATCH, SIZE, SIZE, 3), np.float32)
    for _ in range(2):
        fwd(zeros)
    # a full and a partial batch, so predict has traced both shapes it will meet
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((BATCH + 8, SIZE, SIZE, 3), np.float32))
    bb.model.predict(ds.batch(BATCH), verbose=0)
    return fwd


# ===================================================================== measures


def forward_only(fwd, pre: np.ndarray) -> float:
    n = len(pre)
    start = time.perf_counter()
    for i in range(0, n, BATCH):
        batch = pre[i:i + BATCH]
        if len(batch) < BATCH:  # as the engine does: pad to the one compiled shape
            pad = np.zeros((BATCH - len(batch), *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        np.asarray(fwd(batch), dtype=np.float32)
    return time.perf_counter() - start


def predict_only(bb, pre: np.ndarray) -> float:
    """``model.predict`` on the same pre-decoded, preprocessed array (no input pipeline)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(pre).batch(BATCH)
    start = time.perf_counter()
    out = bb.model.predict(ds, verbose=0)
    seconds = time.perf_counter() - start
    if len(out) != len(pre):
        raise RuntimeError(f"predict returned {len(out)} vectors, expected {len(pre)}")
    return seconds


def featx_decode_only(paths: List[str], workers: int):
    """Read + decode + resize with featx's decoder on the engine's worker count."""
    from featx.images import decode_image

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, (SIZE, SIZE)), paths))
    return time.perf_counter() - start, arrays


def seeds_input_only(folder: Path, n: int) -> float:
    start = time.perf_counter()
    count = 0
    for x in seeds_dataset(folder):
        count += int(x.shape[0])
    if count != n:
        raise RuntimeError(f"seeds dataset yielded {count} images, expected {n}")
    return time.perf_counter() - start


def seeds_pipeline(bb, folder: Path, n: int, preprocess) -> float:
    start = time.perf_counter()
    out = bb.model.predict(seeds_dataset(folder, preprocess), verbose=0)
    seconds = time.perf_counter() - start
    if len(out) != n:
        raise RuntimeError(f"seeds pipeline returned {len(out)} vectors, expected {n}")
    return seconds


def end_to_end(bb, paths: List[str], store_path: Path):
    from featx import Embedder
    from featx.engine import clear_memo

    remove_store(store_path)
    clear_memo()
    gc.collect()
    emb = Embedder(bb, store=str(store_path), batch_size=BATCH, progress=False)
    start = time.perf_counter()
    X = emb.embed(paths)
    seconds = time.perf_counter() - start
    stats = dict(emb.stats)
    if stats["forwarded"] != len(paths) or not np.isfinite(X).all():
        raise RuntimeError(f"cold pass forwarded {stats['forwarded']} of {len(paths)}: {stats}")
    return seconds, stats, X, emb.workers


def cache_hit(bb, copies: List[str], store_path: Path, X_cold: np.ndarray):
    """Renamed copies of the same images through a fresh Embedder and store object."""
    from featx import Embedder

    emb = Embedder(bb, store=str(store_path), batch_size=BATCH, progress=False)
    start = time.perf_counter()
    X = emb.embed(copies)
    seconds = time.perf_counter() - start
    stats = dict(emb.stats)
    same = bool(np.array_equal(X, X_cold))
    return seconds, stats, same


def measure_extraction(args, workdir: Path, sets: Dict[str, dict]):
    """P1, P2 and the cache-hit pass: {(model label, set): record}."""
    from featx import Embedder

    models = build_models()
    results: Dict[tuple, dict] = {}
    decode_runs: Dict[str, dict] = {name: {"featx": [], "seeds": [], "featx_cpu": [],
                                           "seeds_cpu": []} for name in sets}
    skipped = [note for _, bb, note in models if bb is None]
    live = [(label, bb) for label, bb, _ in models if bb is not None]
    prepped: Dict[tuple, np.ndarray] = {}
    fwds = {}
    preps = {}
    for label, bb in live:
        say(f"warming up {label}: tracing the compiled forward and predict")
        fwds[label] = warm_up(bb)
        preps[label] = seeds_preprocess(bb)
        for name in sets:
            results[(label, name)] = {k: [] for k in (
                "fwd", "predict", "e2e", "seeds", "cpu", "stats", "ratio1", "ratio2",
                "hit", "hit_stats", "hit_same", "hit_ratio")}
    workers = None
    for r in range(args.repeats):
        for name, s in sets.items():
            n = s["n"]
            say(f"\n[run {r + 1}/{args.repeats}] {name}: {n} images "
                f"{s['w']}x{s['h']}, mean {s['kib']:.0f} KiB")
            workers = Embedder(live[0][1]).workers if live else 2  # its default worker count
            c0 = time.process_time()
            dec_s, arrays = featx_decode_only(s["paths"], workers)
            c1 = time.process_time()
            seeds_in = seeds_input_only(s["folder"], n)
            c2 = time.process_time()
            d = decode_runs[name]
            d["featx"].append(n / dec_s)
            d["seeds"].append(n / seeds_in)
            d["featx_cpu"].append((c1 - c0) / n * 1000)
            d["seeds_cpu"].append((c2 - c1) / n * 1000)
            say(f"  featx decode only ({workers} threads): {n / dec_s:8.1f} img/s, "
                f"{d['featx_cpu'][-1]:.1f} CPU-ms/img")
            say(f"  seeds input only (tf.data):       {n / seeds_in:8.1f} img/s, "
                f"{d['seeds_cpu'][-1]:.1f} CPU-ms/img")
            for label, bb in live:
                rec = results[(label, name)]
                key = (label, name)
                if key not in prepped:
                    prepped[key] = bb.preprocess(np.stack(arrays))
                c0 = time.process_time()
                fwd_s = forward_only(fwds[label], prepped[key])
                c1 = time.process_time()
                pred_s = predict_only(bb, prepped[key])
                c2 = time.process_time()
                store_path = workdir / "stores" / "e2e.h5"
                e2e_s, stats, X, _ = end_to_end(bb, s["paths"], store_path)
                c3 = time.process_time()
                seeds_s = seeds_pipeline(bb, s["folder"], n, preps[label][0])
                c4 = time.process_time()
                rec["cpu"].append(dict(fwd=c1 - c0, predict=c2 - c1, e2e=c3 - c2, seeds=c4 - c3))
                rec["fwd"].append(n / fwd_s)
                rec["predict"].append(n / pred_s)
                rec["e2e"].append(n / e2e_s)
                rec["seeds"].append(n / seeds_s)
                rec["stats"].append(stats)
                rec["ratio1"].append(fwd_s / e2e_s)
                rec["ratio2"].append(seeds_s / e2e_s)
                say(f"  {label}: forward-only {n / fwd_s:7.1f} img/s | predict on arrays "
                    f"{n / pred_s:7.1f} img/s | end-to-end "
                    f"{n / e2e_s:7.1f} img/s | seeds {n / seeds_s:7.1f} img/s | P1 "
                    f"{fwd_s / e2e_s:.3f} | P2 {seeds_s / e2e_s:.3f}")
                say("    process CPU seconds: " + ", ".join(
                    f"{k}={v:.2f}" for k, v in rec["cpu"][-1].items()))
                say("    stages (s): " + ", ".join(f"{k}={stats.get(k, 0.0):.3f}" for k in STAGES))
                if s.get("copies"):
                    hit_s, hstats, same = cache_hit(bb, s["copies"], store_path, X)
                    rec["hit"].append(hit_s)
                    rec["hit_stats"].append(hstats)
                    rec["hit_same"].append(same)
                    rec["hit_ratio"].append(e2e_s / hit_s)
                    say(f"    cache hit on {n} renamed copies: {hit_s:.3f} s, forwarded "
                        f"{hstats['forwarded']}, cache_hits {hstats['cache_hits']}, identical "
                        f"vectors {same}, speed-up {e2e_s / hit_s:.1f}x")
                remove_store(store_path)
                del X
            del arrays
            gc.collect()
    return {"models": live, "skipped": skipped, "results": results, "decode": decode_runs,
            "workers": workers, "preps": {label: preps[label][1] for label, _ in live}}


# ----------------------------------------------------------------- P4 (subprocesses)


def tiny_probe_backbone():
    """A one-conv model (16 channels + average pooling) wrapped as a featx Backbone, so the
    engine's own memory is seen without a large output array."""
    from featx._env import import_keras
    from featx.backbones.base import Backbone
    from featx.backbones.registry import get_spec
    from featx.backbones.weights import ResolvedWeights

    keras = import_keras()
    inp = keras.Input((P4_SIZE, P4_SIZE, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, x, name="bench_probe")
    model.trainable = False
    return Backbone(get_spec("mobilenet_v2"), model,
                    ResolvedWeights("random", "bench-probe-conv16", "random:bench"),
                    input_size=P4_SIZE, pooling="avg", dtype="float32", include_top=False)


def _proc_status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak of this address space) from /proc/self/status."""
    with open("/proc/self/status", encoding="utf8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def p4_child(mode: str, n: int, workdir: Path) -> None:
    """Runs in a fresh interpreter: embed the first ``n`` tiny images, report peak RSS."""
    from featx import Embedder, get_backbone
    from featx.engine import compiled_forward, clear_memo

    paths = [str(workdir / "pool" / "tiny" / f"img_{i:05d}.jpg") for i in range(n)]
    bb = tiny_probe_backbone() if mode == "probe" else get_backbone(
        "mobilenet_v2", weights=None, input_size=P4_SIZE)
    stores = workdir / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    warm = stores / f"p4-warm-{os.getpid()}.h5"
    store = None if mode == "memo" else stores / f"p4-{mode}-{n}-{os.getpid()}.h5"
    # warm up everything the measured call uses (forward trace, thread pool, h5py), on other images
    compiled_forward(bb.model, (BATCH, P4_SIZE, P4_SIZE, 3))(
        np.zeros((BATCH, P4_SIZE, P4_SIZE, 3), np.float32))
    rng = np.random.default_rng(12345)
    Embedder(bb, store=str(warm), batch_size=BATCH, progress=False).embed(
        rng.integers(0, 255, (2 * BATCH, 60, 80, 3), dtype=np.uint8))
    remove_store(warm)
    clear_memo()
    gc.collect()
    before = peak_rss_mib()
    before_now = _proc_status_mib("VmRSS")
    emb = Embedder(bb, store=None if store is None else str(store), batch_size=BATCH,
                   progress=False)
    start = time.perf_counter()
    X = emb.embed(paths)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    out = dict(mode=mode, n=n, dim=bb.dim, seconds=seconds, peak_mib=peak,
               before_mib=before, rss_before_mib=before_now,
               rss_end_mib=_proc_status_mib("VmRSS"), hwm_mib=_proc_status_mib("VmHWM"),
               output_mib=X.nbytes / 2**20, forwarded=emb.stats["forwarded"])
    if store is not None:
        remove_store(store)
    print("P4RESULT " + json.dumps(out), flush=True)


P4_MODES = {
    "store": "MobileNetV2 @64, dim 1280, with a store",
    "probe": "1-conv probe @64, dim 16, with a store",
    "memo": "MobileNetV2 @64, dim 1280, store=None (process memo)",
}


def measure_p4(args, workdir: Path):
    """Runs before this process imports TensorFlow: Linux carries ``ru_maxrss`` across
    fork + exec, so a child of a big parent would report the parent's peak."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("P4 must run before TensorFlow is imported in the launcher")
    ensure_pool(workdir, "tiny", max(args.p4_sizes))
    out: Dict[tuple, list] = {"launcher_peak_mib": peak_rss_mib()}
    for r in range(args.repeats):
        for mode in args.p4_modes:
            for n in args.p4_sizes:
                cmd = [sys.executable, os.path.abspath(__file__), "--p4-child", f"{mode}:{n}",
                       "--workdir", str(workdir)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("P4RESULT ")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"P4 child {mode}:{n} failed (exit {proc.returncode}):\n"
                                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
                res = json.loads(lines[-1][len("P4RESULT "):])
                out.setdefault((mode, n), []).append(res)
                say(f"[P4 run {r + 1}/{args.repeats}] {P4_MODES[mode]}, {n} images: peak RSS "
                    f"{res['peak_mib']:.1f} MiB (VmHWM {res['hwm_mib']:.1f}; before embed "
                    f"{res['before_mib']:.1f}), output "
                    f"array {res['output_mib']:.1f} MiB, {res['seconds']:.1f} s, "
                    f"{n / res['seconds']:.0f} img/s")
    return out


# ----------------------------------------------------------------- P5 (store)


def _evict(path: Path) -> bool:
    """Drop the file's pages from the OS page cache (POSIX_FADV_DONTNEED; no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _read_all(store, fp: str, batch: Optional[int] = None) -> tuple:
    start = time.perf_counter()
    nbytes = rows = 0
    for keys, vectors in store.iter_rows(fp, **({} if batch is None else {"batch": batch})):
        nbytes += keys.nbytes + vectors.nbytes
        rows += len(keys)
    return time.perf_counter() - start, nbytes, rows


P5_SMALL_BATCH = 8192


def _h5py_read(path: Path, fp: str) -> float:
    """Plain h5py: the keys and vectors datasets in 8,192-row slabs (GB/s), no checks."""
    import h5py

    with h5py.File(str(path), "r", locking=False) as f:
        g = f["backbones"][fp]
        n = int(g.attrs["committed"])
        start = time.perf_counter()
        nbytes = 0
        for lo in range(0, n, P5_SMALL_BATCH):
            hi = min(n, lo + P5_SMALL_BATCH)
            nbytes += g["keys"][lo:hi].nbytes + g["vectors"][lo:hi].nbytes
        return nbytes / (time.perf_counter() - start) / 1e9


def measure_p5(args, workdir: Path):
    from featx import EmbeddingStore

    rows, dim = args.p5_rows, 1280
    path = workdir / "stores" / "p5.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_store(path)
    fp = "ab" * 32
    keys = np.frombuffer(b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest()
                                  for i in range(rows)), np.uint8).reshape(rows, 32)
    rng = np.random.default_rng(0)
    say(f"\nP5: writing {rows:,} x {dim} float32 rows ({rows * dim * 4 / 1e9:.2f} GB) to {path}")
    store = EmbeddingStore(str(path))
    write_s = 0.0
    chunk = 8192
    for lo in range(0, rows, chunk):
        vec = rng.standard_normal((min(chunk, rows - lo), dim), dtype=np.float32)
        start = time.perf_counter()
        store.put(fp, keys[lo:lo + chunk], vec, spec={"name": "bench"})
        write_s += time.perf_counter() - start
    size = os.path.getsize(path)
    say(f"  put: {rows * dim * 4 / write_s / 1e9:.2f} GB/s of vectors ({write_s:.2f} s), file "
        f"{size / 1e9:.2f} GB")
    recs = {k: [] for k in ("cold_read", "warm_read", "noverify_read", "small_batch_read",
                            "h5py_read", "lookup_cold", "lookup_warm", "get10k")}
    query = keys[np.random.default_rng(1).permutation(rows)[:min(rows, 100_000)]]
    sample = keys[np.random.default_rng(2).choice(rows, min(rows, 10_000), replace=False)]
    nbytes = 0
    evicted = False
    for r in range(args.repeats):
        evicted = _evict(path)
        secs, nbytes, got = _read_all(EmbeddingStore(str(path)), fp)
        assert got == rows
        recs["cold_read"].append(nbytes / secs / 1e9)
        secs, nbytes, _ = _read_all(EmbeddingStore(str(path)), fp)
        recs["warm_read"].append(nbytes / secs / 1e9)
        secs, nbytes, _ = _read_all(EmbeddingStore(str(path), verify_reads=False), fp)
        recs["noverify_read"].append(nbytes / secs / 1e9)
        secs, nbytes, _ = _read_all(EmbeddingStore(str(path)), fp, batch=P5_SMALL_BATCH)
        recs["small_batch_read"].append(nbytes / secs / 1e9)
        recs["h5py_read"].append(_h5py_read(path, fp))
        fresh = EmbeddingStore(str(path))
        start = time.perf_counter()
        found = fresh.lookup(fp, query)
        recs["lookup_cold"].append(time.perf_counter() - start)
        assert (found >= 0).all()
        start = time.perf_counter()
        fresh.lookup(fp, query)
        recs["lookup_warm"].append(time.perf_counter() - start)
        start = time.perf_counter()
        _, ok = fresh.get(fp, sample)
        recs["get10k"].append(time.perf_counter() - start)
        assert ok.all()
        say(f"[P5 run {r + 1}/{args.repeats}] iter_rows: page cache dropped "
            f"{recs['cold_read'][-1]:.2f} GB/s, warm {recs['warm_read'][-1]:.2f} GB/s, warm "
            f"verify_reads=False {recs['noverify_read'][-1]:.2f} GB/s, warm batch="
            f"{P5_SMALL_BATCH} {recs['small_batch_read'][-1]:.2f} GB/s, plain h5py "
            f"{recs['h5py_read'][-1]:.2f} GB/s | lookup {len(query):,} "
            f"keys: new object {recs['lookup_cold'][-1]:.3f} s, again {recs['lookup_warm'][-1]:.3f}"
            f" s | get {len(sample):,} random keys {recs['get10k'][-1]:.3f} s")
    remove_store(path)
    return dict(rows=rows, dim=dim, size=size, write_gbs=rows * dim * 4 / write_s / 1e9,
                nbytes=nbytes, n_query=len(query), n_sample=len(sample), evicted=evicted, **recs)


# ===================================================================== report


def _stage_medians(stats_list):
    return {k: median(s.get(k, 0.0) for s in stats_list) for k in STAGES}


def explain_p1(n, fwd_ips, ratio, st, workers, nproc, dec_ips, dec_cpu_ms, fwd_cpu_ms) -> str:
    alone = n / fwd_ips
    total = st["total_s"]
    diff = total - alone
    slow = st["forward_s"] - alone
    store_s = st["lookup_s"] + st["lock_s"]
    other = total - st["forward_s"] - st["wait_s"] - st["write_s"] - store_s
    dec_alone = n / dec_ips
    serial = alone / (alone + dec_alone)
    met = ratio >= GOALS["p1"]
    pieces = [f"{st['wait_s']:.2f} s the forward loop waited for decoded batches (wait_s)",
              f"{abs(slow):.2f} s the forward itself ran {'slower' if slow >= 0 else 'faster'} "
              f"than alone ({st['forward_s']:.2f} vs {alone:.2f} s; decode threads and "
              f"TensorFlow share {nproc} cores)",
              f"{st['write_s']:.2f} s store writes",
              f"{store_s:.2f} s store lookups + writer lock (lookup_s + lock_s; the first "
              "lookup runs in the producer thread)",
              f"{other:.2f} s elsewhere (start-up, bookkeeping)"]
    text = (f"{'met' if met else 'missed'} ({ratio:.2f} vs ≥ {GOALS['p1']}): {total:.2f} s "
            f"end-to-end against {alone:.2f} s for the forward alone, a {diff:.2f} s gap made of "
            + "; ".join(pieces) + ". ")
    text += (f"Decoding these {n} images alone takes {dec_alone:.2f} s on {workers} threads "
             f"(decode_s {st['decode_s']:.2f} thread-s inside the run, contended); with no "
             f"overlap at all the ratio would be {serial:.2f}. In CPU time, decoding costs "
             f"{dec_cpu_ms:.1f} ms per image and the forward {fwd_cpu_ms:.1f} ms")
    if not met:
        main = max((st["wait_s"], "decode-bound: the forward starves while the "
                    f"{nproc} cores decode"),
                   (slow, "CPU-bound: decoding slows the forward down on the shared cores"),
                   (st["write_s"], "write-bound"), (store_s, "store-lookup-bound"),
                   (other, "overhead-bound"))[1]
        text += f". Diagnosis: {main}"
    return text + "."


def explain_p2(set_name, ratio, fwd_ips, pred_ips, e2e_ips, seeds_ips, seeds_in_ips,
               fx_dec_ips, fx_cpu_ms, seeds_cpu_ms) -> str:
    goal = GOALS["p2_large" if set_name == "large" else "p2_small"]
    met = ratio >= goal
    s = (f"{'met' if met else 'missed'} ({ratio:.2f} vs ≥ {goal}). Seeds: {seeds_ips:.1f} img/s "
         f"end-to-end; its input side alone (tf.data decode + resize) {seeds_in_ips:.1f} img/s, "
         f"`predict` alone on decoded arrays {pred_ips:.1f} img/s. featx: {e2e_ips:.1f} img/s "
         f"end-to-end; decoder alone {fx_dec_ips:.1f} img/s, compiled forward alone "
         f"{fwd_ips:.1f} img/s. ")
    seeds_eff = seeds_ips / min(seeds_in_ips, pred_ips)
    featx_eff = e2e_ips / min(fx_dec_ips, fwd_ips)
    if seeds_in_ips < pred_ips:
        s += (f"The seeds are decode-bound: `tf.io.decode_image` decodes every pixel before "
              f"resizing ({seeds_cpu_ms:.0f} CPU-ms per image), while featx asks libjpeg for "
              f"the 1/2–1/8 scale (Pillow draft) that still covers {SIZE} px ({fx_cpu_ms:.0f} "
              f"CPU-ms per image: {seeds_cpu_ms / fx_cpu_ms:.1f}× less CPU; "
              f"{fx_dec_ips / seeds_in_ips:.1f}× in wall time). ")
    else:
        s += (f"Both flows are bound by the model here (decoding is cheap next to it); the model "
              f"call alone accounts for {fwd_ips / pred_ips:.2f}× (compiled forward vs "
              f"`predict` on the same arrays). ")
    s += (f"End-to-end as a share of each flow's slower stage measured alone: seeds "
          f"{seeds_eff:.0%}, featx {featx_eff:.0%} (below 100 %: its decoding and its model "
          f"compete for the {os.cpu_count()} cores)")
    return s + "."


def kept_parts(doc: Path, titles: List[str]) -> str:
    """The subsections starting with ``titles`` from the section now in ``doc``, each
    marked with the date of the run that measured it (``--parts`` re-runs only some)."""
    if not titles or not doc.exists():
        return ""
    start, end = _common._markers(SECTION)
    text = doc.read_text(encoding="utf8")
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0:
        return ""
    body = text[i + len(start):j]
    date = re.search(r"\*\*Date\*\*: ([^\n]*?)\.\s", body)
    blocks = re.split(r"(?m)^(?=### )", body)
    out = []
    for title in titles:
        for block in blocks:
            if block.startswith(title):
                note = "*Not re-measured by this command"
                if date and "*Not re-measured" not in block:
                    note += f"; from the run of {date.group(1)}"
                lines = block.rstrip().split("\n")
                if "*Not re-measured" not in block:
                    lines.insert(1, "\n" + note + ".*")
                out.append("\n".join(lines))
    return "\n\n" + "\n\n".join(out) + "\n" if out else ""


def render(args, info, load_start, load_end, sets, ext, p4, p5, quick_note) -> str:
    out = [f"## Extraction engine (`benchmarks/bench_extract.py`)", ""]
    if quick_note:
        out += [f"> **{quick_note}**", ""]
    out += [f"**Date**: {info['date']}.  ", machine_markdown(info), "",
            "**Command**: `" + command_line() + "`", ""]
    if load_start:
        out += [f"Load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/"
                f"{load_start[2]:.2f}, at end {load_end[0]:.2f}/{load_end[1]:.2f}/"
                f"{load_end[2]:.2f} — other processes may share these cores.", ""]
    out += [f"Every number is a median over {args.repeats} run(s) in one process with the same "
            "model objects (per-run values in the `runs` columns); ratios are medians of the "
            "per-run ratios. img/s = images ÷ wall seconds. Forward and `predict` are traced "
            "before timing. Image files are in the OS page cache (written once, reused); the "
            "store is empty (cold) for every end-to-end run.", ""]
    if sets:
        out += ["**Inputs** (generated once in `--workdir`, photo-like: gradients, blotches, "
                "shapes, grain; JPEG quality 90):", ""]
        out += [md_table(["set", "images", "size", "mean file"],
                         [[k, s["n"], f"{s['w']}×{s['h']}", f"{s['kib']:,.0f} KiB"]
                          for k, s in sets.items()]), ""]
    if ext:
        out += [MOBILENET_NOTE, ""]
        out += [f"- {note}" for note in ext["skipped"]] + ([""] if ext["skipped"] else [])
        res, dec = ext["results"], ext["decode"]
        nproc = int(info["nproc"])
        # P1
        out += [f"### P1 — end-to-end ÷ forward-only (goal ≥ {GOALS['p1']})", "",
                f"End-to-end: `Embedder(bb, store=<new file>, batch_size={BATCH}).embed(paths)` "
                f"({ext['workers']} decode threads); forward-only: "
                f"`featx.engine.compiled_forward(bb.model, ({BATCH}, {SIZE}, {SIZE}, 3))` on the "
                "same images decoded and preprocessed beforehand.", ""]
        rows = []
        for (label, name), r in res.items():
            rows.append([label, name, sets[name]["n"], median(r["fwd"]), median(r["e2e"]),
                         f"**{median(r['ratio1']):.3f}**", runs(r["ratio1"], 3),
                         "yes" if median(r["ratio1"]) >= GOALS["p1"] else "no"])
        out += [md_table(["model", "set", "n", "forward-only img/s", "end-to-end img/s",
                          "ratio", "runs", "goal met"], rows), ""]
        out += ["Engine stage seconds (`Embedder.stats`, medians; decode_s and read_s are summed "
                "over threads, lock_s is waiting for the store's writer lock, wait_s is the "
                "forward loop waiting for decoded batches):", ""]
        rows = []
        for (label, name), r in res.items():
            st = _stage_medians(r["stats"])
            rows.append([label, name] + [f"{st[k]:.3f}" for k in STAGES]
                        + [f"{sets[name]['n'] / median(r['fwd']):.3f}"])
        out += [md_table(["model", "set", *STAGES, "forward alone (s)"], rows), ""]
        out += ["Process CPU seconds (`time.process_time()`, all threads of this process; "
                "less sensitive than wall time to other processes on the machine), medians:", ""]
        out += [md_table(["model", "set", "forward-only", "end-to-end", "`predict` on arrays",
                          "seeds pipeline", "end-to-end ÷ forward-only CPU"],
                         [[label, name] + [median(c[k] for c in r["cpu"])
                                           for k in ("fwd", "e2e", "predict", "seeds")]
                          + [median(c["e2e"] / c["fwd"] for c in r["cpu"])]
                          for (label, name), r in res.items()]), ""]
        for (label, name), r in res.items():
            st = _stage_medians(r["stats"])
            out.append(f"- **{label}, {name}** — " + explain_p1(
                sets[name]["n"], median(r["fwd"]), median(r["ratio1"]), st, ext["workers"],
                nproc, median(dec[name]["featx"]), median(dec[name]["featx_cpu"]),
                median(c["fwd"] for c in r["cpu"]) / sets[name]["n"] * 1000))
        out.append("")
        # P2
        out += [f"### P2 — end-to-end ÷ the seeds' pipeline (goals ≥ {GOALS['p2_large']} on "
                f"12 MP, ≥ {GOALS['p2_small']} on small)", "",
                "Seeds: `keras.utils.image_dataset_from_directory(folder, labels=None, "
                f"image_size=({SIZE}, {SIZE}), batch_size={BATCH}, shuffle=False)`"
                ".map(preprocess) then `model.predict(ds, verbose=0)` (the tutorials' flow; "
                "`ImageDataGenerator` no longer exists in Keras 3), same model object, same files. "
                "Preprocessing: " + "; ".join(f"{k}: `{v}`" for k, v in ext["preps"].items())
                + ".", ""]
        rows = []
        for (label, name), r in res.items():
            goal = GOALS["p2_large" if name == "large" else "p2_small"]
            rows.append([label, name, sets[name]["n"], median(r["seeds"]), median(r["e2e"]),
                         f"**{median(r['ratio2']):.3f}**", runs(r["ratio2"], 3),
                         f"≥ {goal}: " + ("yes" if median(r["ratio2"]) >= goal else "no")])
        out += [md_table(["model", "set", "n", "seeds img/s", "featx end-to-end img/s",
                          "ratio", "runs", "goal met"], rows), ""]
        out += ["The model alone, on the same decoded and preprocessed arrays:", ""]
        out += [md_table(["model", "set", "featx compiled forward img/s",
                          "`model.predict` img/s", "forward ÷ predict"],
                         [[label, name, median(r["fwd"]), median(r["predict"]),
                           median(a / b for a, b in zip(r["fwd"], r["predict"]))]
                          for (label, name), r in res.items()]), ""]
        out += ["Input side alone (no model):", ""]
        out += [md_table(["set", f"featx decode only ({ext['workers']} threads) img/s",
                          "seeds tf.data input only img/s", "featx CPU-ms/img",
                          "seeds CPU-ms/img", "runs featx img/s", "runs seeds img/s"],
                         [[name, median(d["featx"]), median(d["seeds"]), median(d["featx_cpu"]),
                           median(d["seeds_cpu"]), runs(d["featx"], 1), runs(d["seeds"], 1)]
                          for name, d in dec.items()]), ""]
        for (label, name), r in res.items():
            out.append(f"- **{label}, {name}** — " + explain_p2(
                name, median(r["ratio2"]), median(r["fwd"]), median(r["predict"]),
                median(r["e2e"]), median(r["seeds"]), median(dec[name]["seeds"]),
                median(dec[name]["featx"]), median(dec[name]["featx_cpu"]),
                median(dec[name]["seeds_cpu"])))
        out.append("")
        # cache hit
        hits = [(k, r) for k, r in res.items() if r["hit"]]
        if hits:
            out += [f"### Cache hit — the same images again, renamed (issue asks ≥ "
                    f"{GOALS['hit']:g}×)", "",
                    "Byte-for-byte copies under new names, embedded by a new `Embedder` with a "
                    "new `EmbeddingStore` object on the store the cold pass just wrote (the key "
                    "index is rebuilt from the file).", ""]
            rows = []
            for (label, name), r in hits:
                fw = sorted({int(s["forwarded"]) for s in r["hit_stats"]})
                ch = sorted({int(s["cache_hits"]) for s in r["hit_stats"]})
                rows.append([label, sets[name]["n"], sets[name]["n"] / median(r["e2e"]),
                             median(r["hit"]), ",".join(map(str, fw)), ",".join(map(str, ch)),
                             "yes" if all(r["hit_same"]) else "NO",
                             f"**{median(r['hit_ratio']):.1f}×**", runs(r["hit_ratio"], 1),
                             "yes" if median(r["hit_ratio"]) >= GOALS["hit"] else "no"])
            out += [md_table(["model", "n", "cold pass s", "hit pass s", "forwarded",
                              "cache_hits", "same vectors", "speed-up", "runs", "goal met"],
                             rows), ""]
            for (label, name), r in hits:
                st = _stage_medians(r["hit_stats"])
                out.append(f"- **{label}** — the hit pass spent {st['read_s']:.3f} s reading + "
                           f"hashing (thread-seconds) and {st['lookup_s']:.3f} s in the store "
                           f"lookup, of {st['total_s']:.3f} s; the cold pass is bounded by the "
                           f"forward, so the speed-up scales with the model's cost.")
            out.append("")
    if p4:
        out += [f"### P4 — peak RSS, 5k vs 20k small images at {P4_SIZE} px (goal: 20k within "
                f"+{GOALS['p4'] * 100:.0f} % of 5k)", "",
                f"Each cell is a fresh `python` subprocess: build the model, warm up on 64 other "
                f"images, then one `Embedder(...).embed(paths)` over 80×60 JPEGs; peak = "
                "`resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end, 'before' = the same just "
                "before the measured call. The returned (n, dim) float32 array is part of the "
                "process and is listed separately.", ""]
        p4 = dict(p4)
        launcher = p4.pop("launcher_peak_mib")
        out[-2] += (f" The launching process had not imported TensorFlow (its own peak: "
                    f"{launcher:.0f} MiB), because Linux carries `ru_maxrss` across fork + exec; "
                    "`VmHWM` (peak of the child's own address space) is shown as a cross-check.")
        rows = []
        for (mode, n), lst in sorted(p4.items(), key=lambda kv: (list(P4_MODES).index(kv[0][0]),
                                                                  kv[0][1])):
            rows.append([P4_MODES[mode], n, median(x["before_mib"] for x in lst),
                         median(x["peak_mib"] for x in lst), median(x["hwm_mib"] for x in lst),
                         median(x["peak_mib"] - x["before_mib"] for x in lst),
                         lst[0]["output_mib"], median(n / x["seconds"] for x in lst),
                         runs([x["peak_mib"] for x in lst], 1)])
        out += [md_table(["configuration", "images", "peak before embed MiB", "peak RSS MiB",
                          "VmHWM MiB", "growth MiB", "output array MiB", "img/s",
                          "runs (peak)"], rows), ""]
        sizes = sorted({n for _, n in p4})
        for mode in P4_MODES:
            if len(sizes) >= 2 and (mode, sizes[0]) in p4 and (mode, sizes[-1]) in p4:
                a, b = p4[(mode, sizes[0])], p4[(mode, sizes[-1])]
                pa, pb = median(x["peak_mib"] for x in a), median(x["peak_mib"] for x in b)
                oa, ob = a[0]["output_mib"], b[0]["output_mib"]
                pct = (pb / pa - 1) * 100
                adj = ((pb - ob) / (pa - oa) - 1) * 100
                met = pb <= pa * (1 + GOALS["p4"])
                line = (f"- **{P4_MODES[mode]}** — {'met' if met else 'missed'}: peak "
                        f"{pb:.1f} MiB at {sizes[-1]:,} vs {pa:.1f} MiB at {sizes[0]:,} "
                        f"({pct:+.2f} %). The returned array alone grows by {ob - oa:.1f} MiB "
                        f"({sizes[0]:,}→{sizes[-1]:,} × dim {a[0]['dim']} × 4 B) of the "
                        f"{pb - pa:.1f} MiB difference; peak minus the returned array: "
                        f"{adj:+.1f} %")
                if mode == "memo":
                    line += (" — with `store=None` the process memo also keeps every vector "
                             "(another n × dim × 4 B, up to FEATX_MEMO_MB), by design")
                out.append(line + ".")
        out.append("")
    if p5:
        out += [f"### P5 — store reads (goals ≥ {GOALS['p5_read']:g} GB/s sequential, < "
                f"{GOALS['p5_lookup']:g} s for a 100k-key lookup)", "",
                f"A store of {p5['rows']:,} × {p5['dim']} float32 rows (file "
                f"{p5['size'] / 1e9:.2f} GB), written with `put` in 8,192-row batches at "
                f"{p5['write_gbs']:.2f} GB/s. `iter_rows` reads the whole group; GB/s = "
                f"(key + vector bytes, {p5['nbytes'] / 1e9:.2f} GB) ÷ seconds, GB = 10⁹ B. "
                "'Page cache dropped' = after `posix_fadvise(POSIX_FADV_DONTNEED)` on the file"
                + ("" if p5["evicted"] else " (unavailable here: same as warm)") +
                f". `lookup` of {p5['n_query']:,} present keys in random order: 'new object' "
                "builds the key index from the file first, 'again' reuses it.", ""]
        rows = [["iter_rows, page cache dropped (GB/s)", median(p5["cold_read"]),
                 runs(p5["cold_read"]), f"≥ {GOALS['p5_read']:g}: "
                 + ("yes" if median(p5["cold_read"]) >= GOALS["p5_read"] else "no")],
                ["iter_rows, warm page cache (GB/s)", median(p5["warm_read"]),
                 runs(p5["warm_read"]), f"≥ {GOALS['p5_read']:g}: "
                 + ("yes" if median(p5["warm_read"]) >= GOALS["p5_read"] else "no")],
                ["iter_rows, warm, verify_reads=False (GB/s)", median(p5["noverify_read"]),
                 runs(p5["noverify_read"]), "—"],
                [f"iter_rows(batch={P5_SMALL_BATCH:,}), warm (GB/s)",
                 median(p5["small_batch_read"]), runs(p5["small_batch_read"]), "—"],
                [f"plain h5py slab reads of keys + vectors, {P5_SMALL_BATCH:,} rows, warm (GB/s)",
                 median(p5["h5py_read"]), runs(p5["h5py_read"]), "—"],
                [f"lookup {p5['n_query']:,} keys, new store object (s)",
                 median(p5["lookup_cold"]), runs(p5["lookup_cold"], 3),
                 f"< {GOALS['p5_lookup']:g}: "
                 + ("yes" if median(p5["lookup_cold"]) < GOALS["p5_lookup"] else "no")],
                [f"lookup {p5['n_query']:,} keys, same object again (s)",
                 median(p5["lookup_warm"]), runs(p5["lookup_warm"], 3),
                 f"< {GOALS['p5_lookup']:g}: "
                 + ("yes" if median(p5["lookup_warm"]) < GOALS["p5_lookup"] else "no")],
                [f"get {p5['n_sample']:,} random keys with vectors (s)", median(p5["get10k"]),
                 runs(p5["get10k"], 3), "—"]]
        out += [md_table(["measure", "median", "runs", "goal met"], rows), ""]
        warm, nover = median(p5["warm_read"]), median(p5["noverify_read"])
        small, raw = median(p5["small_batch_read"]), median(p5["h5py_read"])
        block = min(p5["rows"], 65536)

        def share(x):
            return (f"accounts for {x / warm:.2f}×" if x / warm > 1.05
                    else f"made no measurable difference: {x / warm:.2f}×")

        out.append(f"- Sequential read with the defaults runs at {warm:.2f} GB/s on a warm page "
                   f"cache, where plain h5py reads the same bytes at {raw:.2f} GB/s. The per-row "
                   f"CRC check (`verify_reads=True`, the default) {share(nover)} ({nover:.2f} "
                   f"GB/s without it); the default block of 65,536 rows (here a "
                   f"{block * p5['dim'] * 4 / 2**20:.0f} MiB array per block) {share(small)} "
                   f"({small:.2f} GB/s with batch={P5_SMALL_BATCH:,}). With the page cache "
                   f"dropped the disk gives {median(p5['cold_read']):.2f} GB/s.")
        out.append("")
    return "\n".join(out)


# ===================================================================== main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 small images, 1 repeat, no 12 MP, P4 at 5k only, "
                         "P5 on 20k rows (not acceptance numbers)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per measure (default 3)")
    ap.add_argument("--n-small", type=int, default=None, help="500x375 images (default 256)")
    ap.add_argument("--n-large", type=int, default=None,
                    help="4000x3000 images (default 256, ~0.75 GB on disk; 0 skips 12 MP)")
    ap.add_argument("--p4-sizes", default=None, help="comma-separated (default 5000,20000)")
    ap.add_argument("--p4-modes", default="store,probe,memo",
                    help=f"comma-separated among {','.join(P4_MODES)}")
    ap.add_argument("--p5-rows", type=int, default=None,
                    help="rows of 1280 float32 in the P5 store (default 100000, 0.5 GB)")
    ap.add_argument("--parts", default="extract,p4,p5",
                    help="which measures: extract (P1, P2, cache hit), p4, p5")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "featx-bench"),
                    help="where generated images and temporary stores live (reused)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the docs alone")
    ap.add_argument("--doc", default=None, help="file to write the section into "
                                                "(default docs/benchmarks.md)")
    ap.add_argument("--p4-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (1 if q else 3)
    args.n_small = args.n_small if args.n_small is not None else (64 if q else 256)
    args.n_large = args.n_large if args.n_large is not None else (0 if q else 256)
    args.p5_rows = args.p5_rows or (20_000 if q else 100_000)
    args.p4_sizes = sorted(int(x) for x in (args.p4_sizes or ("5000" if q else "5000,20000"))
                           .split(","))
    args.p4_modes = [m.strip() for m in args.p4_modes.split(",") if m.strip()]
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    bad = [m for m in args.p4_modes if m not in P4_MODES] + [
        p for p in args.parts if p not in ("extract", "p4", "p5")]
    if bad or args.repeats < 1:
        ap.error(f"unknown value(s) {bad} or repeats < 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    if args.p4_child:
        mode, n = args.p4_child.split(":")
        p4_child(mode, int(n), workdir)
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "stores").mkdir(exist_ok=True)
    load_start = load_average()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    # Generate every input before TensorFlow is imported (the generator forks).
    sets = {}
    if "extract" in args.parts:
        specs = [("small", args.n_small), ("large", args.n_large)]
        for kind, n in specs:
            if n <= 0:
                continue
            pool = ensure_pool(workdir, kind, n)
            w, h = KINDS[kind][:2]
            sets[kind] = dict(n=n, w=w, h=h, paths=sorted(
                str(p) for p in ensure_view(workdir, kind, n, pool).glob("*.jpg")),
                folder=workdir / f"{kind}-n{n}", kib=mean_file_kib(pool[:n]))
            if kind == "small":
                sets[kind]["copies"] = ensure_copies(workdir, n, pool)
    # P4 first: its subprocesses must be launched by a process that is still small.
    p4 = measure_p4(args, workdir) if "p4" in args.parts else None

    import featx  # noqa: F401  (imports Keras/TensorFlow)

    info = machine_info()
    info["date"] = started
    say(machine_markdown(info).replace("**", ""))
    ext = measure_extraction(args, workdir, sets) if sets else None
    p5 = measure_p5(args, workdir) if "p5" in args.parts else None
    load_end = load_average()
    note = ("Quick smoke run (--quick): small inputs, one repeat — not the acceptance numbers."
            if args.quick else "")
    text = render(args, info, load_start, load_end, sets, ext, p4, p5, note)
    if not args.quick:  # parts not re-measured keep their last numbers, said as such
        text += kept_parts(Path(args.doc) if args.doc else DOC,
                           [title for part, title in (("p4", "### P4"), ("p5", "### P5"))
                            if part not in args.parts])
    say("\n" + "=" * 78 + "\n" + text)
    if not args.no_write:
        path = write_section(SECTION, text, **({"path": args.doc} if args.doc else {}))
        say(f"\nwrote the {SECTION} section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
