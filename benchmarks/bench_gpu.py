"""featx on an accelerator, against its own limits and a peer: every row of issue 19's table.

Run on a GPU host (JAX and/or torch; Keras 3 as wheels, see ../shared/gpu/README.md)::

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py            # jax first, torch second
    python benchmarks/bench_gpu.py --cpu                         # host-pipeline rows, GPU hidden
    python benchmarks/bench_gpu.py --cpu --quick --no-write      # smoke run

Rows (images per second, medians; "small" = 500×375 JPEGs, "HD" = 1920×1080):

* forward on the device (data already there; JAX ``stateless_call`` under ``jit``),
  and as the engine calls it — float32 host-preprocessed (the old path) and uint8
  with the preprocessing inside the compiled function (the new path) — f32 / bf16;
* one float32 batch host → device;
* ``Embedder`` end to end with a store, ``pool="threads"`` and ``pool="processes"``,
  small and HD, and at batch 32;
* ``featx.images.decode_image`` alone in N threads and N processes (N = cores);
* peer (torch + torchvision when installed): nvJPEG batched decode + antialiased
  resize, alone and with a ResNet-50 bf16 forward; a native timm Lite0 forward.

Each stage runs in its own interpreter with a time limit and appends JSON lines to
``OUT/results.jsonl``, so a hang costs one stage, not the run. The summary (with the
acceptance ratios) is printed and written to its section of ``docs/benchmarks.md``.
``--cpu`` hides every GPU (``CUDA_VISIBLE_DEVICES=""``, ``JAX_PLATFORMS=cpu``) and
uses the backend installed here, so the host pipeline's scaling is measured on a
CPU-only machine too; there the forward, not the host, is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    command_line, load_average, machine_info, machine_markdown, md_table, median, write_section,
)

SECTION = "bench_gpu"


def emit(out: str, **row) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    with open(os.path.join(out, "results.jsonl"), "a") as handle:
        handle.write(line + "\n")


def _median_seconds(fn, reps: int) -> float:
    fn()
    fn()
    return median([_seconds(fn) for _ in range(reps)])


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _sets(a) -> dict:
    from bench_extract import ensure_pool

    work = Path(a.work)
    return {"small": ensure_pool(work, "small", a.n), "HD": ensure_pool(work, "hd", a.n_hd)}


# ------------------------------------------------------------------ stages


def stage_gen(a) -> None:
    t = time.perf_counter()
    sets = _sets(a)
    emit(a.out, stage="gen", files={k: len(v) for k, v in sets.items()},
         seconds=round(time.perf_counter() - t, 1))


def stage_decode(a) -> None:
    """decode_image alone: N threads and N processes (N = every core)."""
    from featx.engine import DecodePool

    cores = len(os.sched_getaffinity(0))
    for label, paths in _sets(a).items():
        for kind in ("threads", "processes"):
            with DecodePool((a.size, a.size), workers=cores, kind=kind) as pool:
                list(pool.map(paths[: cores * 4]))  # start the workers
                s = median([_seconds(lambda: list(pool.map(paths))) for _ in range(3)])
            emit(a.out, stage="decode", set=label, kind=kind, workers=cores,
                 img_s=round(len(paths) / s, 1))


def stage_featx(a) -> None:
    """Forward (device, float32 host path, uint8 path) and the Embedder end to end."""
    import numpy as np

    import featx
    from featx.engine import PaddedForward

    from featx._env import import_keras

    keras = import_keras()
    backend = keras.backend.backend()
    B = a.batch
    for model_name, dtype in (c.split(":") for c in a.configs.split(",")):
        try:
            t = time.perf_counter()
            bb = featx.get_backbone(model_name, weights=None, input_size=a.size, dtype=dtype)
            pixels = np.random.default_rng(0).integers(0, 256, (B, a.size, a.size, 3),
                                                       dtype=np.uint8)
            host = PaddedForward(bb.model, B, bb.input_shape)
            inside = PaddedForward(bb.model, B, bb.input_shape,
                                   preprocessing=bb.preprocessing)
            host(bb.preprocess(pixels))
            inside(pixels)
            row = dict(stage="forward", backend=backend, model=model_name, dtype=dtype,
                       batch=B, build_compile_s=round(time.perf_counter() - t, 1),
                       host_f32_img_s=round(B / _median_seconds(
                           lambda: host(bb.preprocess(pixels)), a.reps), 1),
                       uint8_img_s=round(B / _median_seconds(lambda: inside(pixels), a.reps), 1))
            if backend == "jax":
                row.update(_device_rows(bb, pixels, a.reps))
            emit(a.out, **row)
            _end_to_end(a, bb, model_name, dtype, backend)
        except Exception as exc:  # report, go on with the next configuration
            emit(a.out, stage="forward", backend=backend, model=model_name, dtype=dtype,
                 error=f"{type(exc).__name__}: {exc}"[:600])


def _device_rows(bb, pixels, reps) -> dict:
    import jax
    import numpy as np

    x = bb.preprocess(pixels)
    fn = jax.jit(lambda tv, ntv, x: bb.model.stateless_call(tv, ntv, x, training=False)[0])
    tv = [v.value for v in bb.model.trainable_variables]
    ntv = [v.value for v in bb.model.non_trainable_variables]
    on_device = jax.device_put(x)
    s = _median_seconds(lambda: fn(tv, ntv, on_device).block_until_ready(), reps)
    h2d = _median_seconds(lambda: jax.device_put(np.asarray(x)).block_until_ready(), reps)
    return dict(device_img_s=round(len(x) / s, 1), h2d_f32_batch_ms=round(h2d * 1e3, 2))


def _end_to_end(a, bb, model_name, dtype, backend) -> None:
    import featx
    from featx.engine import gpu_decoder_unavailable

    runs = [(pool, "cpu") for pool in ("threads", "processes")]
    if gpu_decoder_unavailable() is None:
        runs.append(("threads", "gpu"))  # nvJPEG in the producer; other formats on threads
    else:
        emit(a.out, stage="e2e", backend=backend, model=model_name, dtype=dtype,
             decoder="gpu", error=f"GPU decoder not measured: {gpu_decoder_unavailable()}")
    for label, paths in _sets(a).items():
        for pool, decoder in runs:
            extra = (32,) if (label == "small" and pool == "processes") else ()
            for batch in dict.fromkeys((a.batch, *extra)):
                walls = []
                for _ in range(2):
                    with tempfile.TemporaryDirectory() as folder:
                        embedder = featx.Embedder(bb, store=os.path.join(folder, "s.h5"),
                                                  batch_size=batch, progress=False, pool=pool,
                                                  decoder=decoder)
                        walls.append(_seconds(lambda: embedder.embed(paths)))
                emit(a.out, stage="e2e", backend=backend, model=model_name, dtype=dtype,
                     set=label, pool=embedder.stats["pool"], batch=batch, images=len(paths),
                     decoder=decoder, img_s=round(len(paths) / min(walls), 1),
                     walls=[round(w, 2) for w in walls])


def stage_host(a) -> None:
    """The host pipeline alone: the Embedder (store on) with its forward replaced by zeros.

    What reading, hashing, dedup, decoding, batching and the store sustain with no
    model in the way — the rate a fast enough accelerator would be fed. Also the
    parent process's CPU per image: on a many-core host that, not the decoders,
    is what stops scaling.
    """
    import numpy as np

    import featx
    from featx.engine._keys import KEYS

    bb = featx.get_backbone("efficientnet_lite0", weights=None, input_size=a.size)

    class ForwardSkipped(featx.Embedder):
        def _forward_batch(self, pixels):
            return np.zeros((len(pixels), self.backbone.dim), np.float32)

    from featx.engine import DecodePool, default_workers

    workers = default_workers()
    for label, paths in _sets(a).items():
        for pool in ("threads", "processes"):
            # Paired with decode_image alone in the same pool kind and worker count,
            # alternating, so drift in a shared machine's speed cancels in each ratio.
            walls, cpus, decode_walls = [], [], []
            for _ in range(max(3, a.reps)):
                with DecodePool((a.size, a.size), workers=workers, kind=pool) as decoders:
                    list(decoders.map(paths[: workers * 4]))  # start the workers
                    decode_walls.append(_seconds(lambda: list(decoders.map(paths))))
                KEYS._keys.clear()  # as a new process would: every file read and hashed
                with tempfile.TemporaryDirectory() as folder:
                    embedder = ForwardSkipped(bb, store=os.path.join(folder, "s.h5"),
                                              batch_size=a.batch, progress=False, pool=pool)
                    cpu = time.process_time()
                    walls.append(_seconds(lambda: embedder.embed(paths)))
                    cpus.append(time.process_time() - cpu)
            emit(a.out, stage="host", set=label, pool=pool, batch=a.batch, images=len(paths),
                 workers=workers, img_s=round(len(paths) / median(walls), 1),
                 decode_img_s=round(len(paths) / median(decode_walls), 1),
                 paired_ratios=[round(d / w, 3) for d, w in zip(decode_walls, walls)],
                 parent_cpu_us=round(median(cpus) / len(paths) * 1e6))


def stage_peer(a) -> None:
    """torch + torchvision on CUDA: nvJPEG decode + resize (+ ResNet-50 bf16); timm Lite0."""
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg, read_file
    except ImportError as exc:
        emit(a.out, stage="peer", error=f"not installed: {exc}")
        return
    if not torch.cuda.is_available():
        emit(a.out, stage="peer", error="no CUDA device")
        return
    size, B, dev = a.size, a.batch, "cuda"
    net = torchvision.models.resnet50(weights=None).to(dev).eval()
    net = net.to(memory_format=torch.channels_last)

    def pipeline(files, forward):
        for i in range(0, len(files), B):
            images = decode_jpeg([read_file(f) for f in files[i:i + B]], device=dev)
            batch = torch.stack([torch.nn.functional.interpolate(
                im[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
                for im in images])
            if forward:
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                    net(batch.contiguous(memory_format=torch.channels_last))
        torch.cuda.synchronize()

    for label, files in _sets(a).items():
        pipeline(files[:B], False)
        decode_s = _seconds(lambda: pipeline(files, False))
        e2e_s = _seconds(lambda: pipeline(files, True))
        emit(a.out, stage="peer", set=label, nvjpeg_resize_img_s=round(len(files) / decode_s, 1),
             nvjpeg_resnet50_bf16_img_s=round(len(files) / e2e_s, 1))
    try:
        import timm

        lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        lite = lite.to(dev).eval().to(memory_format=torch.channels_last)
        x = torch.randn(B, 3, size, size, device=dev).to(memory_format=torch.channels_last)
        for dt in (torch.float32, torch.bfloat16):
            def run():
                with torch.inference_mode(), torch.autocast("cuda", dtype=dt,
                                                            enabled=dt != torch.float32):
                    lite(x)
                torch.cuda.synchronize()
            emit(a.out, stage="peer", model="timm tf_efficientnet_lite0", dtype=str(dt),
                 forward_img_s=round(B / _median_seconds(run, a.reps), 1))
    except ImportError as exc:
        emit(a.out, stage="peer", error=f"timm: {exc}")


STAGES = {"gen": stage_gen, "decode": stage_decode, "host": stage_host, "featx": stage_featx,
          "peer": stage_peer}


# ------------------------------------------------------------------ summary


def summarise(rows, a, argv) -> str:
    decode = {(r["set"], r["kind"]): r["img_s"] for r in rows if r.get("stage") == "decode"}
    forward = {(r["backend"], r["model"], r["dtype"]): r["uint8_img_s"] for r in rows
               if r.get("stage") == "forward" and "error" not in r}
    lines = []
    table = []
    for r in rows:
        if r.get("stage") == "forward" and "error" not in r:
            device = r.get("device_img_s")
            table.append([f"forward {r['model']} {r['dtype']} ({r['backend']})",
                          f"host f32 {r['host_f32_img_s']:,.0f} · uint8 {r['uint8_img_s']:,.0f}"
                          + (f" · device {device:,.0f}" if device else ""),
                          f"{r['uint8_img_s'] / device:.2f} of device" if device else
                          f"uint8 ÷ f32 {r['uint8_img_s'] / r['host_f32_img_s']:.2f}"])
        elif r.get("stage") == "e2e" and "error" not in r:
            ref = decode.get((r["set"], "processes"))
            fwd = forward.get((r["backend"], r["model"], r["dtype"]))
            ratios = ([f"{r['img_s'] / ref:.2f} of decode in processes"] if ref else []) + \
                ([f"{r['img_s'] / fwd:.2f} of the uint8 forward"
                  + (f" (measured at batch {a.batch})" if r["batch"] != a.batch else "")]
                 if fwd else [])
            table.append([f"Embedder {r['model']} {r['dtype']} ({r['backend']}), {r['set']}, "
                          f"pool {r['pool']}, decoder {r.get('decoder', 'cpu')}, "
                          f"batch {r['batch']}", f"{r['img_s']:,.0f}",
                          "; ".join(ratios) or "—"])
        elif r.get("stage") == "host":
            pairs = r.get("paired_ratios")
            ref = decode.get((r["set"], r["pool"]))
            if pairs:  # decode alone measured beside it, alternating
                ratio = (f"{median(pairs):.2f} of decode in {r['pool']} (paired: median of "
                         f"{' / '.join(f'{x:.2f}' for x in pairs)}; decode alone "
                         f"{r['decode_img_s']:,.0f} img/s)")
            else:
                ratio = f"{r['img_s'] / ref:.2f} of decode in {r['pool']}" if ref else "—"
            table.append([f"host pipeline (Embedder, forward skipped), {r['set']}, pool "
                          f"{r['pool']}, batch {r['batch']}; parent CPU {r['parent_cpu_us']} µs/img",
                          f"{r['img_s']:,.0f}", ratio])
        elif r.get("stage") == "decode":
            table.append([f"decode_image alone, {r['set']}, {r['workers']} {r['kind']}",
                          f"{r['img_s']:,.0f}", ""])
        elif r.get("stage") == "peer" and "error" not in r:
            what = ", ".join(f"{k} {v:,.0f}" for k, v in r.items()
                             if k.endswith("img_s"))
            table.append([f"peer {r.get('model') or r.get('set')} {r.get('dtype', '')}".strip(),
                          what, ""])
        elif "error" in r:
            table.append([f"{r.get('stage')} {r.get('model', '')}", "not measured",
                          r["error"][:120]])
    lines += [
        "## On an accelerator: the host pipeline against the forward (`bench_gpu.py`)",
        "",
        machine_markdown(machine_info()),
        f"Measured {machine_info()['date']}; load average before: {load_average()}. "
        f"Command: `{command_line(argv)}`"
        + (" — GPUs hidden (`--cpu`): the host-pipeline rows only." if a.cpu else "."),
        "",
        f"{a.n} small (500×375) and {a.n_hd} HD (1920×1080) generated JPEGs, {a.size} px, "
        f"batch {a.batch}; images per second (medians; end to end: the faster of two runs "
        "with a fresh store). `decoder gpu` rows run nvJPEG through torchvision "
        "(`featx[gpu-decode]`); they are absent where no CUDA device is visible.",
        "",
        md_table(["row", "img/s", "ratio"], table),
        "",
        "Acceptance (issue 19), on the GPU host: end to end ≥ 0.85 of `decode_image` in "
        "processes, the forward as the engine calls it ≥ 0.7 of the device forward, the "
        "GPU-decode path ≥ 1.0 of the nvJPEG + ResNet-50 peer. With the GPU hidden the "
        "forward itself is the ceiling, so the end-to-end rows are read against it (\"of the "
        "uint8 forward\"), and the host-pipeline rows (the engine with its forward replaced "
        "by zeros, everything else real) measure what the pipeline could feed: on a few "
        "cores its parent-process work competes with the decoders for the same cores.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "featx-bench-gpu"))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "featx-bench"))
    ap.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--cpu", action="store_true", help="hide every GPU: host-pipeline rows")
    ap.add_argument("--quick", action="store_true", help="64 + 16 images, batch 32, 2 reps")
    ap.add_argument("--backends", default=None,
                    help="Keras backends in order (default: jax,torch; with --cpu the one "
                         "KERAS_BACKEND names, else tensorflow)")
    ap.add_argument("--configs", default="efficientnet_lite0:float32,efficientnet_lite0:bfloat16")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--n-hd", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per stage")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--doc", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.n_hd, a.batch, a.reps = 64, 16, 32, 2
    if a.stage:
        STAGES[a.stage](a)
        return 0
    os.makedirs(a.out, exist_ok=True)
    results = os.path.join(a.out, "results.jsonl")
    if os.path.exists(results):
        os.unlink(results)
    env = dict(os.environ)
    if a.cpu:
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    backends = (a.backends or (env.get("KERAS_BACKEND", "tensorflow") if a.cpu
                               else "jax,torch")).split(",")
    passthru = [f"--out={a.out}", f"--work={a.work}", f"--n={a.n}", f"--n-hd={a.n_hd}",
                f"--batch={a.batch}", f"--size={a.size}", f"--reps={a.reps}",
                f"--configs={a.configs}"]
    plan = [("gen", None), ("decode", None), ("host", None)] + \
        [("featx", b) for b in backends] + \
        ([] if a.cpu else [("peer", None)])
    for stage, backend in plan:
        stage_env = dict(env, **({"KERAS_BACKEND": backend} if backend else {}))
        t = time.perf_counter()
        try:
            rc = subprocess.run([sys.executable, __file__, f"--stage={stage}", *passthru],
                                env=stage_env, timeout=a.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        emit(a.out, stage="driver", ran=stage, backend=backend, rc=rc,
             seconds=round(time.perf_counter() - t, 1))
    rows = [json.loads(line) for line in open(results)]
    body = summarise(rows, a, argv and [sys.argv[0], *argv])
    print(body)
    if not a.no_write:
        print(f"wrote {write_section(SECTION, body, *([a.doc] if a.doc else []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
