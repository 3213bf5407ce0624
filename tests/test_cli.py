"""The `featx` command, run through its installed entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _imagegen import make_jpegs

FEATX = shutil.which("featx", path=os.path.dirname(sys.executable)) or shutil.which("featx")
pytestmark = pytest.mark.skipif(FEATX is None, reason="featx entry point not installed")


def run(*args, timeout=300, cwd=None):
    return subprocess.run([FEATX, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.fixture()
def tree(tmp_path):
    for cls, colour in (("red", (200, 0, 0)), ("green", (0, 200, 0))):
        os.makedirs(tmp_path / "imgs" / cls)
        for i in range(4):
            Image.new("RGB", (40, 30), tuple(c + 10 * i for c in colour)).save(
                tmp_path / "imgs" / cls / f"{i}.jpg")
    return tmp_path / "imgs"


def test_backbones_table_and_json():
    table = run("backbones")
    assert table.returncode == 0
    assert "efficientnet_lite0" in table.stdout and "resnet50v2" in table.stdout
    rows = json.loads(run("backbones", "--json").stdout)
    assert len(rows) >= 20
    offline = {r["name"] for r in rows if r["offline_weights"] == "yes"}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet"} <= offline


def test_embed_then_cache_info_and_verify(tree, tmp_path):
    cache = tmp_path / "emb.h5"
    args = ["embed", tree, "--backbone", "mobilenet_v2", "--weights", "none",
            "--input-size", "32", "--cache", cache, "--json"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["stats"]["forwarded"] == 8 and result["stats"]["failed"] == 0
    second = json.loads(run(*args).stdout)
    assert second["stats"]["forwarded"] == 0 and second["stats"]["cache_hits"] == 8
    info = json.loads(run("cache", "info", cache, "--json").stdout)
    assert info["backbones"][0]["rows"] == 8 and info["backbones"][0]["name"] == "mobilenet_v2"
    verify = run("cache", "verify", cache)
    assert verify.returncode == 0 and "OK" in verify.stdout


def test_cache_export_writes_every_vector_with_its_paths_and_drop_removes_one_group(tmp_path):
    from featx.store import EmbeddingStore

    imgs = tmp_path / "imgs"
    paths = make_jpegs(imgs, 4, size=(40, 30))
    shutil.copy(paths[0], imgs / "copy_of_first.jpg")  # same content, one vector, two paths
    cache = str(tmp_path / "c.h5")
    for size in ("32", "48"):
        assert run("embed", imgs, "--cache", cache, "--backbone", "mobilenet_v2", "--weights",
                   "none", "--input-size", size, "--quiet").returncode == 0
    groups = {b["input_size"]: b["fingerprint"] for b in
              json.loads(run("cache", "info", cache, "--json").stdout)["backbones"]}
    ambiguous = run("cache", "export", cache, "-b", "mobilenet_v2", "--out", tmp_path / "v.npz")
    assert ambiguous.returncode == 2 and "2 groups match" in ambiguous.stderr
    assert groups[32][:16] in ambiguous.stderr and groups[48][:16] in ambiguous.stderr
    out = run("cache", "export", cache, "--fingerprint", groups[32][:10], "--out",
              tmp_path / "v.npz", "--src", imgs)
    assert out.returncode == 0 and "wrote 4 vectors" in out.stdout, out.stderr
    saved = np.load(tmp_path / "v.npz")
    stored, found = EmbeddingStore(cache, readonly=True).get(
        groups[32], [bytes.fromhex(k) for k in saved["keys"]])
    assert found.all() and np.array_equal(saved["vectors"], stored)
    both = [p for p in saved["paths"] if ";" in p]
    assert len(both) == 1 and "copy_of_first.jpg" in both[0]
    csv_out = run("cache", "export", cache, "--fingerprint", groups[48], "--out",
                  tmp_path / "v.csv", "--json")
    assert json.loads(csv_out.stdout)["rows"] == 4
    header = (tmp_path / "v.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["key", "paths", "v0"] and len(header) == 2 + 1280
    bad = run("cache", "export", cache, "--fingerprint", groups[48], "--out", tmp_path / "v.txt")
    assert bad.returncode == 2 and ".npz, .csv, .parquet" in bad.stderr
    dropped = run("cache", "drop", cache, "--fingerprint", groups[48][:12])
    assert dropped.returncode == 0 and "dropped 4 vectors" in dropped.stdout
    left = json.loads(run("cache", "info", cache, "--json").stdout)["backbones"]
    assert [b["fingerprint"] for b in left] == [groups[32]]
    again = run("cache", "drop", cache, "--fingerprint", groups[48][:12])
    assert again.returncode == 2 and "no group" in again.stderr
    assert run("cache", "verify", cache).returncode == 0


@pytest.mark.parametrize("argv,reason", [
    (["backbone"], "invalid choice"),
    (["embed", "/definitely/not/here", "--cache", "x.h5"], "no such file or folder"),
    (["embed", ".", "--backbone", "resnet50_v3", "--cache", "x.h5"], "Did you mean"),
    (["cache", "verify", "/definitely/not/here.h5"], "no such file"),
    (["cache", "info"], "arguments are required"),
])
def test_bad_input_exits_2_with_a_one_line_reason(argv, reason, tmp_path):
    result = subprocess.run([FEATX, *argv], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_damaged_cache_exits_2(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    result = run("cache", "verify", bad)
    assert result.returncode == 2 and "bad.h5" in result.stderr


def test_help_on_each_command():
    for argv in (["--help"], ["backbones", "--help"], ["embed", "--help"],
                 ["cache", "info", "--help"], ["cache", "verify", "--help"],
                 ["cache", "export", "--help"], ["cache", "drop", "--help"]):
        result = run(*argv)
        assert result.returncode == 0 and "usage" in result.stdout.lower()


FAST = ["--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "32",
        "--head", "logreg", "--cv", "2", "--quiet"]


def _classes(root, spec):
    for cls, colour in spec.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (40, 30), tuple(min(255, c + 12 * i) for c in colour)).save(
                root / cls / f"{i}.png")
    return root


def test_baseline_on_a_folder_then_predict(tree, tmp_path):
    out = tmp_path / "out"
    result = run("baseline", tree, "--out", out, *[a for a in FAST if a != "--quiet"])
    assert result.returncode == 0, result.stderr
    # Issue 14: a bar over the grid searches, each row's result as it lands.
    assert "grid search" in result.stderr and "raw_pixels_32 × logreg: balanced_accuracy" in \
        result.stderr
    assert (out / "index.html").is_file() and (out / "best_model.joblib").is_file()
    assert (out / "embeddings.h5").is_file()
    predictions = tmp_path / "pred.csv"
    result = run("predict", out / "best_model.joblib", tree / "red", "--out", predictions)
    assert result.returncode == 0, result.stderr
    lines = predictions.read_text().splitlines()
    assert lines[0].startswith("path,prediction,p_green,p_red") and len(lines) == 5


def test_baseline_on_a_train_test_tree_scores_the_test_split(tmp_path):
    _classes(tmp_path / "data" / "training-data", {"a": (200, 0, 0), "b": (0, 0, 200)})
    _classes(tmp_path / "data" / "testing-data", {"a": (210, 0, 0), "b": (0, 0, 210)})
    result = run("baseline", tmp_path / "data", "--out", tmp_path / "out", *FAST[:-1], "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert all("test_accuracy" in row for row in rows)
    assert "held-out test split" in (tmp_path / "out" / "index.html").read_text()


def test_baseline_from_a_csv_with_a_hostile_class_name(tmp_path):
    _classes(tmp_path / "imgs", {"x": (200, 0, 0), "y": (0, 200, 0)})
    listing = ["path,label"] + [f"imgs/x/{i}.png,<script>alert(1)</script>" for i in range(4)] \
        + [f"imgs/y/{i}.png,plain" for i in range(4)]
    (tmp_path / "list.csv").write_text("\n".join(listing) + "\n")
    result = run("baseline", tmp_path / "list.csv", "--out", tmp_path / "out", *FAST)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize("case,reason", [
    ("missing", "no such file or folder"),
    ("empty_class", "holds no image"),
    ("single_class", "only one class"),
    ("both", "either SRC or --dataset"),
    ("bad_head", "unknown head"),
])
def test_baseline_bad_input_exits_2(case, reason, tmp_path):
    root = tmp_path / "data"
    if case == "empty_class":
        _classes(root, {"a": (1, 2, 3)})
        os.makedirs(root / "b")
    elif case == "single_class":
        _classes(root, {"a": (1, 2, 3)})
    elif case in ("both", "bad_head"):
        _classes(root, {"a": (1, 2, 3), "b": (3, 2, 1)})
    src = tmp_path / "nope" if case == "missing" else root
    extra = ["--dataset", "lfw-subset"] if case == "both" else []
    heads = ["--head", "nonsense"] if case == "bad_head" else []
    result = run("baseline", src, "--out", tmp_path / "out", *extra, *heads)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr.lower() or reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_embed_on_a_local_dask_cluster(tree, tmp_path):
    pytest.importorskip("distributed")
    cache = tmp_path / "emb.h5"
    result = run("embed", tree, "--backbone", "mobilenet_v2", "--weights", "none",
                 "--input-size", "32", "--cache", cache, "--workers", "2", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["stats"]
    assert stats["forwarded"] == 8 and stats["failed"] == 0
    assert run("cache", "verify", cache).returncode == 0


# Trains two CNNs through the CLI (~40 s); the library's fine-tuned rows stay in the default
# run (tests/test_baseline.py), this end-to-end run is in make test-all.
@pytest.mark.slow
def test_baseline_finetune_adds_held_out_rows_and_training_curves(tree, tmp_path):
    out = tmp_path / "out"
    result = run("baseline", tree, "--out", out, *FAST[:-1], "--json", "--finetune",
                 "--finetune-epochs", "1", "0")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    protocols = {row["head"]: row["protocol"] for row in rows}
    assert protocols["fine-tuned"] == protocols["scratch"] == "held-out fold 0"
    assert protocols["logreg"] == "2-fold CV"
    assert (out / "training.png").is_file()
    assert "training curves" in (out / "index.html").read_text()


@pytest.mark.realweights
def test_weights_default_to_auto_and_say_which_were_used(tree, tmp_path):
    """Issue 14: --weights defaulted to packaged, so every backbone without packaged
    weights failed even where Keras could download. auto = packaged where installed,
    else imagenet, and the choice is printed."""
    import featx

    if not featx.backbones.offline_available("efficientnet_lite0"):
        pytest.skip("packaged EfficientNet-Lite0 weights not installed (featx[weights])")
    result = run("embed", tree, "--backbone", "efficientnet_lite0", "--input-size", "64",
                 "--cache", tmp_path / "e.h5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["weights"] == "packaged"
    assert featx.backbones.resolve_weights("resnet50", "auto") == "imagenet"
    assert featx.backbones.resolve_weights("efficientnet_lite0", "auto") == "packaged"
    baseline = run("baseline", tree, "--backbone", "efficientnet_lite0", "--input-size", "64",
                   "--head", "logreg", "--cv", "2", "--out", tmp_path / "out")
    assert baseline.returncode == 0, baseline.stderr
    assert "(weights: efficientnet_lite0 packaged)" in baseline.stdout


def test_predict_takes_path_listings_and_skips_bad_files_when_asked(tree, tmp_path):
    """Issue 14 item 7: a CSV with only a path column and a TXT with one path per
    line are accepted; --on-error skip lists the files it skipped."""
    out = tmp_path / "out"
    assert run("baseline", tree, "--out", out, *FAST).returncode == 0
    model = out / "best_model.joblib"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    (tmp_path / "list.csv").write_text("path\nimgs/red/0.jpg\nimgs/green/1.jpg\n")
    (tmp_path / "list.txt").write_text(f"imgs/red/1.jpg\n\n{broken}\n")
    listed = run("predict", model, tmp_path / "list.csv", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["predictions"]
    assert [r["prediction"] for r in rows] == ["red", "green"]
    refused = run("predict", model, tmp_path / "list.txt")
    assert refused.returncode == 2 and "broken.jpg" in refused.stderr
    skipped = run("predict", model, tmp_path / "list.txt", "--on-error", "skip", "--json")
    assert skipped.returncode == 0, skipped.stderr
    result = json.loads(skipped.stdout)
    assert [r["path"].endswith("red/1.jpg") for r in result["predictions"]] == [True]
    assert [s["source"] for s in result["skipped"]] == [str(broken)]


def test_cache_info_shows_what_tells_two_groups_apart(tree, tmp_path):
    """Issue 14 item 8: two groups of one backbone differed only by a fingerprint
    prefix; info now shows weights, input size, pooling, dtype, rows, forwarded and
    when the group was created."""
    cache = tmp_path / "c.h5"
    for size in ("32", "48"):
        assert run("embed", tree, "--backbone", "mobilenet_v2", "--weights", "none",
                   "--input-size", size, "--cache", cache, "--quiet").returncode == 0
    table = run("cache", "info", cache)
    assert table.returncode == 0, table.stderr
    for column in ("weights", "input", "pooling", "dtype", "rows", "forwarded", "created"):
        assert column in table.stdout
    lines = [line for line in table.stdout.splitlines() if line.startswith("mobilenet_v2")]
    assert len(lines) == 2 and any(" 32 " in line for line in lines) and \
        any(" 48 " in line for line in lines) and all(" random " in line for line in lines)
    groups = json.loads(run("cache", "info", cache, "--json").stdout)["backbones"]
    assert sorted(g["input_size"] for g in groups) == [32, 48]
    assert all(g["forwarded"] == g["rows"] == 8 for g in groups)


def test_finetune_command_trains_on_fold_0_writes_report_and_a_model_predict_reads(tmp_path):
    data = _classes(tmp_path / "data", {"red": (200, 30, 30), "blue": (30, 30, 200)})
    out = tmp_path / "ft"
    result = run("finetune", data, "--out", out, "--backbone", "mobilenet_v2", "--weights",
                 "none", "--input-size", "32", "--cv", "2", "--epochs", "1", "1",
                 "--unfreeze", "2", "--augment", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    heads = {row["head"]: row for row in summary["rows"]}
    assert {"logreg", "fine-tuned", "scratch"} <= set(heads)
    assert heads["fine-tuned"]["protocol"] == "held-out fold 0"
    assert [p["epochs_run"] for p in summary["phases"]] == [1, 1]
    for name in ("index.html", "training.png", "confusion.png", "finetuned_model.joblib"):
        assert (out / name).is_file(), name
    assert "fold 0" in (out / "index.html").read_text()
    predicted = run("predict", out / "finetuned_model.joblib", data / "red", "--json",
                    cwd=tmp_path.parent)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["predictions"]) == 4
    bad = run("finetune", data, "--out", out, "--unfreeze", "top")
    assert bad.returncode == 2 and "--unfreeze" in bad.stderr
