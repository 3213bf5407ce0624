"""The shape of featx's code, checked so that it keeps holding (issue "One pipeline").

- size: no function longer than 120 lines (docstring excluded), no class longer
  than 400, no function with more than 12 parameters except public estimators'
  ``__init__`` (scikit-learn stores every parameter there by design) and the
  package's one-call entry points (``featx.baseline``, ``featx.run_baseline``):
  exported from ``featx``, at most two positional parameters, every other one
  keyword-only with a default — the knobs of a run, as in scikit-learn's
  ``cross_validate`` (14) and ``learning_curve`` (16);
- rooms: no module imports a private name (or a private module) of another
  room, nor reaches for a private attribute only another room defines;
- one of each engine stage: one decode pool, one padded forward runner, one
  dedup-and-lookup plan.

``KNOWN_DEBT`` lists what is still too big or too long, with the step of the
redesign that removes it. The check fails for a new violation *and* for a
listed one that no longer exists, so the list only ever shrinks on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "featx"
MAX_FUNCTION_LINES = 120
MAX_CLASS_LINES = 400
MAX_PARAMETERS = 12

# Still too big (each entry: where, why it is still there).
KNOWN_DEBT: dict = {}

# Private modules every room may use: process-wide helpers with no state of their own.
SHARED_PRIVATE_MODULES = {"featx._env", "featx._params"}
# A module outside a package that belongs to a room (it lives apart only so that
# starting it does not import the room's package).
ROOM_OF = {"featx._decode_worker": "engine"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        name = ".".join(rel.with_suffix("").parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, rel.as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def room(module: str) -> str:
    """``featx.store._lock`` → ``store``; ``featx.cli`` → ``cli``."""
    if module in ROOM_OF:
        return ROOM_OF[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _body_lines(node) -> int:
    body = node.body
    lines = node.end_lineno - node.lineno + 1
    first = body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _is_estimator(cls: ast.ClassDef) -> bool:
    return any(getattr(b, "id", getattr(b, "attr", "")) in
               ("BaseEstimator", "ClassifierMixin", "TransformerMixin") for b in cls.bases)


def _walk_defs(tree):
    """(qualified name, node, enclosing class or None) of every def and class."""
    def visit(node, prefix, cls):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield f"{prefix}{child.name}", child, cls
                yield from visit(child, f"{prefix}{child.name}.", child)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child, cls
                yield from visit(child, f"{prefix}{child.name}.", None)
            else:
                yield from visit(child, prefix, cls)
    yield from visit(tree, "", None)


def _is_entry_point(node, cls) -> bool:
    """A function exported from ``featx`` whose options are all keyword-only with defaults."""
    import featx

    args = node.args
    return (cls is None and node.name in featx.__all__
            and len(args.posonlyargs) + len(args.args) <= 2
            and all(default is not None for default in args.kw_defaults))


def size_violations():
    found = set()
    for _, rel, tree in _modules():
        for qualname, node, cls in _walk_defs(tree):
            if isinstance(node, ast.ClassDef):
                if _body_lines(node) > MAX_CLASS_LINES:
                    found.add(f"class {rel}::{qualname}")
                continue
            if _body_lines(node) > MAX_FUNCTION_LINES:
                found.add(f"function {rel}::{qualname}")
            args = node.args
            n = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
            if args.args and args.args[0].arg in ("self", "cls"):
                n -= 1
            public_estimator_init = (node.name == "__init__" and cls is not None
                                     and not cls.name.startswith("_") and _is_estimator(cls))
            if (n > MAX_PARAMETERS and not public_estimator_init
                    and not _is_entry_point(node, cls)):
                found.add(f"parameters {rel}::{qualname}")
    return found


def test_functions_and_classes_stay_small_except_the_listed_debt():
    found = size_violations()
    new = sorted(found - set(KNOWN_DEBT))
    paid = sorted(set(KNOWN_DEBT) - found)
    assert not new, f"too long or too many parameters: {new}"
    assert not paid, f"no longer a violation; remove from KNOWN_DEBT: {paid}"


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_room_imports_private_names_of_another():
    packages = {p.parent.relative_to(ROOT.parent).as_posix().replace("/", ".")
                for p in ROOT.rglob("__init__.py")}
    bad = []
    for module, rel, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(module, node, module in packages)
            if not target.startswith("featx") or room(target) in ("", room(module)):
                continue
            if target in SHARED_PRIVATE_MODULES:
                continue
            private_module = any(part.startswith("_") and not part.startswith("__")
                                 for part in target.split(".")[1:])
            names = [a.name for a in node.names if a.name.startswith("_")]
            if private_module or names:
                bad.append(f"{rel}:{node.lineno} from {target} import "
                           f"{', '.join(a.name for a in node.names)}")
    assert not bad, "private names across rooms:\n" + "\n".join(bad)


def _private_names_defined(tree) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def test_no_room_reaches_for_private_attributes_another_room_defines():
    modules = list(_modules())
    defined_in = {}
    for module, _, tree in modules:
        for name in _private_names_defined(tree):
            defined_in.setdefault(name, set()).add(room(module))
    bad = []
    for module, rel, tree in modules:
        here = room(module)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr in defined_in
                    and here not in defined_in[node.attr]):
                bad.append(f"{rel}:{node.lineno} .{node.attr} (defined in "
                           f"{sorted(defined_in[node.attr])})")
    assert not bad, "private attributes across rooms:\n" + "\n".join(bad)


def _calls(tree, name: str) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "id", None) or getattr(func, "attr", None)
            count += called == name
    return count


@pytest.mark.parametrize("stage, call, home", [
    ("the decode pool", "decode_image", {"featx._decode_worker"}),
    ("the padded forward runner", "compiled_forward", {"featx.engine._forward"}),
    ("the dedup-and-lookup plan", "plan", {"featx.engine._embedder", "featx.distributed"}),
])
def test_each_engine_stage_exists_once(stage, call, home):
    """Only the stage's own module calls its primitive (report thumbnails excepted)."""
    callers = {module for module, _, tree in _modules() if _calls(tree, call)}
    # thumbnails of a handful of images for the HTML pages
    callers = {c for c in callers if room(c) != "report"}
    # the audit's calibration: full-size pixels to make near copies of, which then go
    # through the engine like any image (one decoder, not a second one written with PIL)
    callers.discard("featx.quality._checks")
    # the near-duplicate verifier: 64 px thumbnails of candidate pairs, compared as pixels
    # (no model sees them; the engine's pool would cost a batch per pair)
    callers.discard("featx.quality._verify")
    assert callers <= home, f"{stage}: {call}() called from {sorted(callers - home)}"


def test_thread_and_process_pools_that_decode_live_in_the_decode_pool():
    pools = re.compile(r"\b(ThreadPoolExecutor|ProcessPoolExecutor|multiprocessing\.Pool)\(")
    for module, rel, tree in _modules():
        text = (ROOT.parent / rel).read_text(encoding="utf-8")
        if pools.search(text) and "decode" in text and module != "featx.engine._decode":
            # Only pools that run decoding count; others (hashing, prefetch) may exist.
            assert not _calls(tree, "decode_image") and ".map(self._decode" not in text, rel


def test_every_public_class_and_function_has_an_example():
    """Each name in a public module's ``__all__`` shows how it is called (``>>>``);
    ``make test`` runs them all (``--doctest-modules featx``)."""
    import importlib
    import inspect
    import pkgutil

    import featx

    names = ["featx"] + [m.name for m in pkgutil.walk_packages(featx.__path__, "featx.")
                         if not m.name.rsplit(".", 1)[-1].startswith("_")]
    missing = []
    for name in names:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                    ">>>" not in (inspect.getdoc(obj) or ""):
                missing.append(f"{name}.{attr}")
    assert not missing, f"public names without an example: {sorted(set(missing))}"
