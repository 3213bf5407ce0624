"""The HTML report: content, escaping, and a real browser loading it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import featx
from featx.report import dataset_summary, most_confidently_wrong, write_report

EVIL = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1400  # the width the report is looked at

PROBE_HEAD = (
    "<script>window.__alerts=[];window.__errors=[];"
    "window.alert=function(m){__alerts.push(String(m))};"
    "var _ce=console.error;console.error=function(){__errors.push([].join.call(arguments,' '));"
    "_ce.apply(console,arguments)};"
    "window.addEventListener('error',function(e){__errors.push(String(e.message||"
    "(e.target&&e.target.src)||'error'))},true);</script>")
PROBE_TAIL = (
    "<script>window.addEventListener('load',function(){var imgs=[].slice.call(document.images);"
    "var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).length;"
    "var r=document.createElement('pre');r.id='__featx_result';"
    "var wide=[].slice.call(document.querySelectorAll('body *')).filter(function(e){"
    "return e.getBoundingClientRect().right>window.innerWidth+1}).map(function(e){"
    "return e.tagName+'.'+e.className}).slice(0,5);"
    "r.textContent=JSON.stringify({images:imgs.length,broken:broken,alerts:__alerts,"
    "errors:__errors,text:document.body.innerText,viewport:window.innerWidth,"
    "overflow:document.documentElement.scrollWidth-window.innerWidth,wide:wide});"
    "document.body.appendChild(r);});</script>")


def open_in_chromium(html_path):
    """Load the page in headless Chromium; return what the probe saw (images, errors, text)."""
    page = open(html_path, encoding="utf-8").read()
    # The probe goes first in <head> (to catch everything) and last in <body>.
    probed = page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>",
                                                                      PROBE_TAIL + "</body>", 1)
    folder = tempfile.mkdtemp()
    target = os.path.join(folder, "probed.html")
    open(target, "w", encoding="utf-8").write(probed)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={folder}/profile", "--virtual-time-budget=10000",
         f"--window-size={WIDTH},1000", "--hide-scrollbars", "--dump-dom", f"file://{target}"],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="__featx_result">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stderr[-2000:]
    import html

    return json.loads(html.unescape(match.group(1)))


@pytest.fixture(scope="module")
def board_and_data():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 100, (36, 32, 32, 3)).astype(np.uint8)
    y = np.repeat([0, 1, 2], 12)
    images[12:24] += 70
    images[24:] += 140
    return featx.run_baseline(images, y, backbones=["mobilenet_v2"], heads=["logreg"],
                              weights=None, input_size=32, cv=3)


def test_summary_and_wrong_ranking():
    summary = dataset_summary([np.zeros((10, 20), np.uint8)] * 4, [0, 0, 1, 1], ["a", "b"])
    assert summary["counts"] == {"a": 2, "b": 2} and summary["sizes"]["max"] == [20, 10]
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert most_confidently_wrong([1, 1, 1, 0], proba) == [0, 3, 2]


def test_report_files_and_escaping(board_and_data, tmp_path):
    names = ["plain", EVIL, "Ünïcode & co"]
    result = dataclasses.replace(board_and_data, history={
        "loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8],
        "val_accuracy": [0.4, 0.7]})
    path = write_report(tmp_path, result, class_names=names)
    page = path.read_text(encoding="utf-8")
    for png in ("confusion.png", "roc.png", "pr.png", "training.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Ünïcode &amp; co" in page
    assert "mobilenet_v2" in page and "raw_pixels" in page
    assert "src=\"http" not in page  # self-contained: nothing fetched


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_opens_in_a_browser_with_all_images_and_no_errors(board_and_data, tmp_path):
    names = ["plain", EVIL, "third"]
    path = write_report(tmp_path, board_and_data, class_names=names)
    seen = open_in_chromium(path)
    assert seen["images"] >= 3  # confusion, ROC, PR (+ the wrong-images grid when any)
    assert seen["broken"] == 0
    assert seen["errors"] == [] and seen["alerts"] == []
    assert EVIL in seen["text"]  # shown as text, not run


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_fits_1400_px_with_a_wide_board_and_says_how_it_was_made(tmp_path):
    """Rendered at 1400 px the leaderboard was cut at `log_lo…` behind a scrollbar;
    the page must fit, mark the refit row, carry versions, settings and per-class
    examples, and have a screenshot at that width."""
    from PIL import Image

    rng = np.random.RandomState(2)
    images = rng.randint(0, 100, (40, 32, 32, 3)).astype(np.uint8)
    y = np.repeat(["a_rather_long_class_name", "b"], 20)
    images[20:] += 90
    result = featx.run_baseline(images, y, backbones=["mobilenet_v2", "resnet50v2"],
                                heads=["logreg", "svm"], weights=None, input_size=32, cv=3,
                                test=(images[::4], y[::4]))  # test_* columns: the widest board
    path = write_report(tmp_path, result, command="featx baseline data --out report")
    seen = open_in_chromium(path)
    assert seen["viewport"] == WIDTH
    assert seen["overflow"] <= 0 and seen["wide"] == [], seen["wide"]
    assert seen["broken"] == 0 and seen["images"] >= 4  # examples, confusion, ROC, PR (+ wrong)
    page = path.read_text()
    assert page.count("<tr class=best>") == 2 and " ± " in page  # the board and its test scores
    assert f"featx {featx.__version__}" in page and "featx baseline data --out report" in page
    assert result.board.backbones_["mobilenet_v2"]["fingerprint"][:16] in page
    for python_repr in ("[96, 96]", "{'", "': "):
        assert python_repr not in seen["text"], python_repr
    assert (tmp_path / "examples.png").is_file()
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path}/profile", f"--window-size={WIDTH},2400",
                    f"--screenshot={shot}", f"file://{path}"],
                   capture_output=True, timeout=120)
    assert Image.open(shot).size == (WIDTH, 2400)
    if os.environ.get("FEATX_REPORT_SHOT"):  # a copy to look at by hand
        shutil.copy(shot, os.environ["FEATX_REPORT_SHOT"])


def test_report_of_path_sources_reads_their_headers_and_names_the_files(tmp_path):
    """The result hands on the caller's paths: the report reads image sizes from the
    files' headers and lists wrong images by path (a regression: it once got the
    engine's wrappers and called every image unreadable)."""
    from PIL import Image

    rng = np.random.RandomState(1)
    paths, y = [], []
    for i in range(18):
        label = i % 2
        pixels = rng.randint(0, 90, (20, 24, 3)) + 130 * label
        pixels[:, : 6 * (i % 3)] = rng.randint(0, 255)  # some noise so a few are wrong
        path = tmp_path / f"img_{i:02d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(str(path))
        y.append(label)
    result = featx.run_baseline(paths, np.asarray(y), backbones=["mobilenet_v2"],
                                heads=["logreg"], weights=None, input_size=32, cv=3)
    assert result.evaluation.sources == paths and result.sources == paths
    page = write_report(tmp_path / "out", result, class_names=["a", "b"]).read_text("utf-8")
    assert "from 18 file headers" in page and "min 24×20" in page
    assert "unreadable" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_audit_report_fits_1400_px_with_long_paths_and_a_hoverable_map(tmp_path):
    """The audit page: thumbnails of pairs and label candidates, tables of long
    paths, the map as PNG and as SVG whose dots carry their file as a tooltip."""
    from PIL import Image

    pytest.importorskip("pandas")
    from featx.report import write_audit_report

    rng = np.random.RandomState(3)
    deep = tmp_path / ("a_folder_with_a_rather_long_name_" * 3) / "images"
    paths, y = [], []
    for i in range(30):
        cls = "dark" if i < 15 else "light"
        img = rng.randint(0, 110, (32, 32, 3)).astype(np.uint8) + (0 if cls == "dark" else 130)
        path = deep / cls / f"an_image_file_with_a_long_descriptive_name_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(str(path))
        y.append(cls)
    Image.open(paths[0]).save(deep / "light" / "copy_of_the_first_dark_image.png")
    paths.append(str(deep / "light" / "copy_of_the_first_dark_image.png"))
    y.append("light")  # an exact copy with the other label: a pair and a label candidate
    result = featx.audit(paths, np.array(y), backbone="mobilenet_v2", weights=None,
                         input_size=32, cv=3, calibration_pairs=10, map_points=40)
    path = write_audit_report(tmp_path / "out", result, command="featx audit data --out out")
    seen = open_in_chromium(path)
    assert seen["viewport"] == WIDTH
    assert seen["overflow"] <= 0 and seen["wide"] == [], seen["wide"]
    assert seen["broken"] == 0 and seen["images"] >= 3  # pairs, map, budget (+ issues)
    assert seen["errors"] == [] and seen["alerts"] == []
    page = path.read_text()
    assert page.count("<circle") == len(result.map) and "copy_of_the_first_dark_image" in page
    assert "featx audit data --out out" in page
    for python_repr in ("{'", "array(", "nan"):
        assert python_repr not in seen["text"], python_repr
