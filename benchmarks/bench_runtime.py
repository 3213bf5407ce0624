"""The frozen forward on Keras against OpenVINO: speed on the CPU and how close the vectors are.

For each runtime (``Embedder(runtime=...)``), EfficientNet-Lite0 with its packaged
ImageNet weights at 224 px, batch 32:

forward      the engine's compiled forward alone on a decoded uint8 batch
             (img/s and CPU-ms per image, the CPU time of this process);
end to end   ``Embedder.embed`` of generated 500×375 JPEGs (as in bench_extract),
             no store, memo cleared: read, decode, forward;
vectors      max |Δ| and the lowest cosine against the Keras vectors.

Runtimes alternate within each repetition, so machine drift hits both alike;
the ratios are of medians from the same run. OpenVINO's conversion (once per
model and batch shape, then cached on disk) happens before timing and is
reported on its own.

Usage::

    python benchmarks/bench_runtime.py               # 256 images, 5 repetitions; writes docs/
    python benchmarks/bench_runtime.py --quick       # 64 images, 2 repetitions
    python benchmarks/bench_runtime.py --no-write    # print only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    command_line, load_average, machine_info, machine_markdown, md_table, median, quiet_tensorflow,
    runs, write_section,
)
from bench_extract import ensure_pool  # noqa: E402

SECTION = "bench_runtime"
RUNTIMES = ("keras", "openvino", "openvino-bf16")


def _bf16_missing():
    """Why OpenVINO bf16 cannot be measured on this CPU (None when it can)."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return None
    return ("this CPU has no bfloat16 support (OpenVINO's CPU capabilities: "
            f"{', '.join(caps)}), so runtime='openvino-bf16' would run f32")


def _time(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.images, a.repeats = 64, 2
    quiet_tensorflow()
    import numpy as np

    import featx
    from featx.engine import Embedder, clear_memo, runtime_unavailable
    from featx.images import decode_image

    missing = runtime_unavailable("openvino")
    if missing:
        print(f"bench_runtime: {missing}", file=sys.stderr)
        return 2
    load_before = load_average()
    paths = ensure_pool(Path("/tmp/featx-bench"), "small", a.images)
    bb = featx.get_backbone(a.backbone, weights="packaged")
    size = (bb.input_size, bb.input_size)
    pixels = np.stack([decode_image(p, size) for p in paths[:a.batch]])
    bf16_missing = _bf16_missing()
    measured = tuple(rt for rt in RUNTIMES if rt != "openvino-bf16" or bf16_missing is None)
    embedders = {rt: Embedder(bb, batch_size=a.batch, progress=False, runtime=rt)
                 for rt in measured}
    setup = {}
    for rt, emb in embedders.items():  # compile / convert (cached on disk afterwards)
        setup[rt] = _time(lambda: emb._forward_batch(pixels).result())[0]
    forward = {rt: [] for rt in measured}
    e2e = {rt: [] for rt in measured}
    vectors = {}
    for _ in range(a.repeats):
        for rt, emb in embedders.items():
            emb._forward_batch(pixels).result()
            forward[rt].append(_time(lambda: emb._forward_batch(pixels).result()))
            clear_memo()
            e2e[rt].append(_time(lambda: vectors.__setitem__(rt, emb.embed(paths))))
            assert emb.stats["forwarded"] == len(paths) and emb.stats["runtime"] == rt
    ref = vectors["keras"]

    def cosine_min(x, y):
        return float((np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
                      ).min())

    table, base = [], {}
    for rt in measured:
        f_wall = median(w for w, _ in forward[rt])
        f_cpu = median(c for _, c in forward[rt])
        e_wall = median(w for w, _ in e2e[rt])
        e_cpu = median(c for _, c in e2e[rt])
        if rt == "keras":
            base = dict(f_wall=f_wall, f_cpu=f_cpu, e_wall=e_wall, e_cpu=e_cpu)
        diff = float(np.abs(vectors[rt] - ref).max())
        table.append([
            rt, f"{a.batch / f_wall:.1f}", f"{f_cpu / a.batch * 1e3:.1f}",
            f"{base['f_wall'] / f_wall:.2f} / {base['f_cpu'] / f_cpu:.2f}",
            f"{len(paths) / e_wall:.1f}", f"{e_cpu / len(paths) * 1e3:.1f}",
            f"{base['e_wall'] / e_wall:.2f} / {base['e_cpu'] / e_cpu:.2f}",
            runs([len(paths) / w for w, _ in e2e[rt]], 1),
            "—" if rt == "keras" else f"{diff:.1e}",
            "—" if rt == "keras" else f"{cosine_min(vectors[rt], ref):.7f}",
            f"{setup[rt]:.1f}"])
    body = "\n".join([
        "## The frozen forward on Keras and on OpenVINO (`bench_runtime.py`)",
        "",
        machine_markdown(machine_info()),
        f"Measured {machine_info()['date']}; load average before {load_before}, after "
        f"{load_average()}. Command: `{command_line(argv and [sys.argv[0], *argv])}`.",
        "",
        f"{a.backbone} (packaged ImageNet weights), {bb.input_size} px, batch {a.batch}. "
        f"*Forward*: the engine's compiled forward on one decoded uint8 batch. *End to end*: "
        f"`Embedder.embed` of {len(paths)} generated 500×375 JPEGs (read, decode, forward; no "
        f"store). Medians of {a.repeats} repetitions, runtimes alternating; ratios are "
        "against Keras in the same run (wall / CPU). CPU-ms per image is this process's CPU "
        "time, all threads. *Setup*: the first call (Keras: trace; OpenVINO: convert and "
        "compile, or load the converted model cached under `$FEATX_HOME/runtime`).",
        "",
        md_table(["runtime", "forward img/s", "forward CPU-ms/img", "forward ×Keras",
                  "end-to-end img/s", "end-to-end CPU-ms/img", "end-to-end ×Keras",
                  "end-to-end runs", "max abs Δ", "min cosine", "setup s"], table),
        "",
        "Goal (issue 15): OpenVINO f32 end to end ≥ 1.35× Keras' CPU efficiency on 500×375 "
        "JPEGs with max |Δ| ≤ 1e-4 (so it may share the Keras fingerprint); opt-in "
        "`openvino-bf16` ≥ 2× (its own fingerprint; `runtime='openvino'` is pinned to f32 "
        "with `INFERENCE_PRECISION_HINT`). "
        + ("openvino-bf16 was measured above." if bf16_missing is None
           else f"openvino-bf16 is not measured: {bf16_missing}."),
    ])
    print(body)
    if not a.no_write:
        print(f"wrote {write_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
