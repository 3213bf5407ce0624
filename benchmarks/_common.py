"""Helpers shared by the scripts in ``benchmarks/``.

* :func:`quiet_tensorflow` — call before anything imports TensorFlow;
* :func:`machine_info` / :func:`machine_markdown` — what the numbers were measured on;
* :func:`median`, :func:`timed`, :func:`fmt` — repeats and formatting;
* :func:`md_table` — a Markdown table from rows;
* :func:`write_section` — replace one script's delimited section of ``docs/benchmarks.md``
  (``<!-- NAME:start -->`` … ``<!-- NAME:end -->``), leaving other scripts' sections alone.

Nothing here imports TensorFlow or featx at import time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
DOC_HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts in `benchmarks/` (see `benchmarks/README.md`); each script owns the\n"
    "section between its `<!-- NAME:start -->` and `<!-- NAME:end -->` markers and rewrites only\n"
    "that section. Every number below was measured by the run it names.\n"
)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (must run before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# ------------------------------------------------------------------ machine facts


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo", encoding="utf8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # not installed / broken: say so instead of failing the benchmark
        return f"not importable ({type(exc).__name__})"
    return str(getattr(mod, "__version__", "unknown"))


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not rev:
        return "unknown"
    return rev + (" + uncommitted changes" if dirty else "")


def load_average() -> Optional[Tuple[float, float, float]]:
    """The 1/5/15-minute load averages (other processes share the cores)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info(modules: Sequence[Tuple[str, str]] = (
        ("Python", ""), ("TensorFlow", "tensorflow"), ("Keras", "keras"), ("numpy", "numpy"),
        ("Pillow", "PIL"), ("h5py", "h5py"), ("featx", "featx"))) -> dict:
    """Facts about the machine and the software versions, as a dict of strings."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    ram = _ram_gib()
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(usable),
        "cpu": _cpu_model(),
        "ram": f"{ram:.1f} GiB" if ram else "unknown",
        "os": f"{platform.system()} {platform.release()}",
    }
    for label, module in modules:
        info[label] = platform.python_version() if label == "Python" else _version(module)
    if "keras" in sys.modules:
        try:
            info["Keras backend"] = sys.modules["keras"].backend.backend()
        except Exception:
            pass
    info["git"] = _git_revision()
    return info


def machine_markdown(info: dict) -> str:
    """Two lines of Markdown: the machine, then the software."""
    hw = (f"**Machine**: {info['nproc']} CPU cores usable (`nproc`), {info['cpu']}, "
          f"{info['ram']} RAM, {info['os']}.")
    skip = {"date", "nproc", "cpu", "ram", "os", "git"}
    sw = ", ".join(f"{k} {v}" for k, v in info.items() if k not in skip)
    return f"{hw}  \n**Software**: {sw}; featx tree at git {info['git']}."


# ------------------------------------------------------------------ measuring


def median(values: Iterable[float]) -> float:
    """Median of the measured values (NaN when there are none)."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


@contextlib.contextmanager
def timed():
    """``with timed() as t: ...`` then ``t()`` is the elapsed seconds."""
    start = time.perf_counter()
    end: List[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def repeat(fn: Callable[[], float], n: int) -> List[float]:
    """Call ``fn`` ``n`` times and return what it returned (it measures itself)."""
    return [fn() for _ in range(n)]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def fmt(value, digits: int = 2) -> str:
    """A number for a table: fixed decimals, thousands separators, '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def runs(values: Sequence[float], digits: int = 2) -> str:
    """Per-run values as ``a / b / c``."""
    return " / ".join(fmt(float(v), digits) for v in values) if values else "—"


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table; cells are formatted with :func:`fmt` unless already strings."""
    def cell(v):
        return v if isinstance(v, str) else fmt(v)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command that ran this script, relative to the repository root when possible."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = str(script.relative_to(REPO))
    except ValueError:
        argv[0] = str(script)
    return "python " + " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------ docs/benchmarks.md


def _markers(name: str) -> Tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body`` (appended when absent)."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    i = text.find(start)
    if i >= 0:
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"section {name!r}: found {start!r} but no {end!r} after it")
        return text[:i] + block + text[j + len(end):]
    if not text.strip():
        text = DOC_HEADER
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: os.PathLike | str = DOC) -> Path:
    """Write ``body`` as the section ``name`` of ``path`` (created with a header if absent).

    Other sections are kept byte for byte. The file is replaced atomically, under a lock
    so two benchmark scripts finishing together do not lose each other's section.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = Path(tempfile.gettempdir()) / f"featx-benchmarks-{os.getuid()}.lock"
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf8") if path.exists() else DOC_HEADER
        new = replace_section(text, name, body)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(new, encoding="utf8")
        os.replace(tmp, path)
    return path
