"""The `featx` command, run through its installed entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

FEATX = shutil.which("featx", path=os.path.dirname(sys.executable)) or shutil.which("featx")
pytestmark = pytest.mark.skipif(FEATX is None, reason="featx entry point not installed")


def run(*args, timeout=300):
    return subprocess.run([FEATX, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


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
                 ["cache", "info", "--help"], ["cache", "verify", "--help"]):
        result = run(*argv)
        assert result.returncode == 0 and "usage" in result.stdout.lower()
