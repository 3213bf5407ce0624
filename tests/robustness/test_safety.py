"""Safety: the legacy ``.pth`` reader refuses every global outside its allow-list,
``featx predict`` unpickles only the model file it is given, and the HTML report
escapes every user-controlled string.

Extends tests/test_torch_legacy.py (os.system / builtins.eval / subprocess.Popen /
posix.system through the protocol-2 ``GLOBAL`` opcode) with ``__reduce__`` payloads
at every pickle protocol, other dangerous callables, torch names that are not
storages, and the other opcodes that resolve a global: ``INST``, ``STACK_GLOBAL``
(with memoised names) and ``EXT1``.
"""

from __future__ import annotations

import copyreg
import html.parser
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from featx.backbones.torch_legacy import read_legacy_torch
from featx.errors import FeatxError, UnsafePickleError
from featx.leaderboard import BaselineResult, Evaluation
from featx.report import write_report

_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _header() -> bytes:
    return b"".join(pickle.dumps(x, protocol=2) for x in (_MAGIC, 1001, _SYS_INFO))


def _u(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _global(module: str, name: str) -> bytes:  # protocol 0-2 GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _payloads(marker: str) -> dict:
    """name -> (pickle bytes of the state-dict object, the global the message must name)."""
    code = f"open({marker!r}, 'w').close()"
    out = {}
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        # Protocols < 3 write Python 2 names: builtins.exec becomes __builtin__.exec.
        out[f"reduce_exec_protocol_{proto}"] = (pickle.dumps(_Exec(code), protocol=proto),
                                                "builtins.exec" if proto >= 3
                                                else "__builtin__.exec")
    call = lambda mod, name, arg: b"\x80\x02" + _global(mod, name) + b"(" + _u(arg) + b"tR."  # noqa
    out["operator.attrgetter"] = (call("operator", "attrgetter", "system"),
                                  "operator.attrgetter")
    out["builtins.getattr"] = (call("builtins", "getattr", "x"), "builtins.getattr")
    out["importlib.import_module"] = (call("importlib", "import_module", "os"),
                                      "importlib.import_module")
    for name in ("load", "serialization.load", "_utils._rebuild_parameter", "Tensor",
                 "nn.Module", "storage._load_from_bytes", "_utils._rebuild_tensor"):
        mod, _, attr = f"torch.{name}".rpartition(".")
        out[f"torch_shim_{name}"] = (call(mod, attr, "x"), f"{mod}.{attr}")
    out["collections.namedtuple"] = (call("collections", "namedtuple", "x"),
                                     "collections.namedtuple")
    # Protocol 4 resolves dotted names by attribute walk in the default find_class.
    out["dotted_name_walk"] = (b"\x80\x04" + _u("collections") + _u("OrderedDict.__init__")
                               + b"\x93)R.", "collections.OrderedDict.__init__")
    # INST: class from the opcode's own text, args from the mark.
    out["INST_os_system"] = (b"(" + _u(f"touch {marker}") + b"ios\nsystem\n.", "os.system")
    # STACK_GLOBAL with both names memoised first and fetched back with BINGET.
    out["STACK_GLOBAL_memoised"] = (b"\x80\x04" + _u("builtins") + b"q\x00" + _u("exec")
                                    + b"q\x01" + b"0h\x00h\x01\x93" + _u(code) + b"\x85R.",
                                    "builtins.exec")
    # A forbidden global nested deep inside an otherwise ordinary OrderedDict.
    out["nested_in_state_dict"] = (
        b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _u("layer")
        + b"(" + _u("a") + b"(" + _global("posix", "system") + b"(" + _u(f"touch {marker}")
        + b"tRttu.", "posix.system")
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(_payloads("m")))
def test_hostile_pth_is_refused_without_side_effect(tmp_path, name):
    marker = tmp_path / "marker"
    blob, global_name = _payloads(str(marker))[name]
    path = tmp_path / "hostile.pth"
    path.write_bytes(_header() + blob)
    with pytest.raises(UnsafePickleError) as info:
        read_legacy_torch(path)
    assert global_name in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_reduce_exec_payload_is_live(tmp_path):
    """Control: the exec payload really runs under an unrestricted pickle."""
    marker = tmp_path / "control"
    pickle.loads(_payloads(str(marker))["reduce_exec_protocol_4"][0])
    assert marker.exists()


@pytest.mark.timeout(60)
def test_ext_opcode_resolves_through_the_allow_list_too(tmp_path):
    marker = tmp_path / "marker"
    code = 0x7F31
    path = tmp_path / "ext.pth"
    blob = b"\x80\x02\x83" + struct.pack("<H", code) + b"(" + _u(f"touch {marker}") + b"tR."
    path.write_bytes(_header() + blob)
    # Unregistered extension code: a malformed file, not a crash.
    with pytest.raises(FeatxError, match="ext.pth"):
        read_legacy_torch(path)
    copyreg.add_extension("os", "system", code)
    try:
        with pytest.raises(UnsafePickleError, match="os.system"):
            read_legacy_torch(path)
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not marker.exists()


# --------------------------------------------------------------------------- predict


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


_PREDICT_PROBE = textwrap.dedent("""
    import json, os, sys
    root, log = sys.argv[1], sys.argv[2]
    opened, globals_ = [], []
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            p = os.fsdecode(args[0])
            if p.startswith(root):
                opened.append(p)
        elif event == "pickle.find_class":
            globals_.append(f"{args[0]}.{args[1]}")
    sys.addaudithook(hook)
    from featx.cli import main
    rc = main(sys.argv[3:])
    json.dump({"rc": rc, "opened": opened, "globals": globals_}, open(log, "w"))
""")


@pytest.mark.timeout(300)
def test_predict_unpickles_only_the_model_file_it_is_given(tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from featx import ImageEmbedder

    root = tmp_path / "sandbox"
    home, featx_home, images = root / "home", root / "featx_home", root / "images"
    for d in (home / ".cache" / "featx", featx_home, images):
        d.mkdir(parents=True)
    marker = root / "PWNED"
    decoys = [home / ".cache" / "featx" / "best_model.joblib", featx_home / "model.joblib",
              images / "best_model.joblib", images / "evil.pkl", root / "best_model.joblib"]
    for d in decoys:
        joblib.dump(_Boom(str(marker)), d)
    rng = np.random.RandomState(0)
    x = rng.randint(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    for i, img in enumerate(x):
        Image.fromarray(img).save(images / f"{i}.png")
    model = make_pipeline(ImageEmbedder("mobilenet_v2", weights=None, input_size=32),
                          LogisticRegression(max_iter=50)).fit(x, [0, 1] * 3)
    model_dir = root / "models"
    model_dir.mkdir()
    model_path = model_dir / "model.joblib"
    joblib.dump({"pipeline": model, "class_names": ["cat", "dog"], "featx_model_bundle": 1},
                model_path)
    log = tmp_path / "probe.json"
    env = {**os.environ, "HOME": str(home), "FEATX_HOME": str(featx_home),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _PREDICT_PROBE, str(root), str(log),
                          "predict", str(model_path), str(images), "--json"],
                         capture_output=True, text=True, timeout=240, env=env, cwd=str(root))
    assert run.returncode == 0, run.stderr[-3000:]
    probe = json.loads(log.read_text())
    assert probe["rc"] == 0
    assert not marker.exists()
    assert {p for p in probe["opened"] if p.endswith((".joblib", ".pkl"))} == {str(model_path)}
    allowed = {str(model_path)} | {str(images / f"{i}.png") for i in range(6)}
    # Keras and matplotlib read their own JSON settings/cache under HOME; nothing else.
    library_config = {p for p in probe["opened"]
                      if p.startswith(str(home)) and os.path.basename(p) in
                      ("keras.json", "fontlist-v3.11.0.json",
                       "fontlist-v3.11.0.json.matplotlib-lock")
                      or (p.startswith(str(home / ".cache" / "matplotlib"))
                          and ".json" in p)}
    assert set(probe["opened"]) - library_config <= allowed, (
        set(probe["opened"]) - library_config - allowed)
    assert not any(p.startswith(str(featx_home)) for p in probe["opened"])
    assert not any(g.startswith(("builtins.exec", "builtins.eval", "os.", "posix."))
                   for g in probe["globals"])
    assert len(json.loads(run.stdout)["predictions"]) == 6


# --------------------------------------------------------------------------- report

HOSTILE = ['<img src=x onerror=alert(1)>', '"><script>alert(2)</script>',
           "'><svg onload=alert(3)>", "</title><script>alert(4)</script>",
           "javascript:alert(5)", "&lt;already-escaped&gt;", "<!--", "]]><x>"]


class _Board:
    primary = "accuracy<script>"
    cv_description = '3-fold "CV" <b>bold</b>'

    def __init__(self):
        self.rows = [{"backbone": HOSTILE[0], "head": HOSTILE[1], "accuracy": 0.5,
                      "best_params": {HOSTILE[2]: HOSTILE[3]}}]
        self.best_ = self.rows[0]
        self.classes_ = np.arange(3)
        self.embed_stats_ = {HOSTILE[4]: {"total_s": 1.0, "forwarded": 3, "cache_hits": 0}}

    def to_records(self):
        return self.rows

    def display_table(self):
        row = self.rows[0]
        return (["rank", "backbone", "head", self.primary, "best params"],
                [["1", row["backbone"], row["head"], "0.500", str(row["best_params"])]])


class _TagAudit(html.parser.HTMLParser):
    SAFE = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table",
            "tr", "th", "td", "div", "img", "span", "code", "b", "br", "ul", "li", "pre",
            "small", "caption", "thead", "tbody", "a", "section", "details", "summary"}

    def __init__(self):
        super().__init__()
        self.bad = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.SAFE:
            self.bad.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.bad.append(f"{tag} {name}=")
            if name in ("src", "href") and value and not value.startswith(("data:image/",
                                                                            "#")):
                self.bad.append(f"{tag} {name}={value}")


@pytest.mark.timeout(120)
def test_report_escapes_hostile_class_and_file_names(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.RandomState(0)
    sources = []
    for i, name in enumerate(h for h in HOSTILE if "/" not in h):
        p = folder / f"{name}{i}.png"
        Image.fromarray(rng.randint(0, 255, (16, 16, 3)).astype(np.uint8)).save(p)
        sources.append(str(p))
    n = len(sources)
    y = np.arange(n) % 3
    proba = np.full((n, 3), 0.05)
    proba[np.arange(n), (y + 1) % 3] = 0.9  # all wrong: every file name is listed
    names = HOSTILE[:3]
    result = BaselineResult(board=_Board(), evaluation=Evaluation(sources, y, proba, HOSTILE[5]),
                            sources=sources, y=y)
    page_path = write_report(tmp_path / "out", result, class_names=names, title=HOSTILE[3],
                             dataset_name=HOSTILE[6], timings={HOSTILE[7]: 1.0})
    page = page_path.read_text(encoding="utf-8")
    for s in HOSTILE + [_Board.primary, _Board.cv_description]:
        if s != "javascript:alert(5)":  # harmless as text; only live as a URL
            assert s not in page, s
    audit = _TagAudit()
    audit.feed(page)
    assert audit.bad == []
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&amp;lt;already-escaped&amp;gt;" in page  # escaped once more, shown verbatim
