"""Every ``examples/seed_*.py`` runs with ``--quick`` and passes its own check.

``--quick`` makes a script train on a tiny subset at 64 px and exit 1 unless its
headline result is above the majority-class rate of its evaluation set, so the
exit code is the assertion. Each script is a subprocess (as a user runs it), so
one script's Keras state cannot leak into another. Each runs in about 20–60 s on
2 shared cores: the default run (``make test``) keeps one, the features path that
is featx's main job; the four that train CNNs are ``slow`` (``make test-all``, and
before resolving any issue that touches fine-tuning).

The stand-in datasets come from packages (``elpv-dataset``, Debian
``dataset-fashion-mnist``); a script whose data is missing is skipped, not failed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAS_ELPV = importlib.util.find_spec("elpv_dataset") is not None
HAS_FASHION = os.path.isdir("/usr/share/datasets/fashion-mnist")

#: script, the stand-in it needs, and a line its output must contain.
CASES = [
    ("seed_malaria_resnet50v2_frozen.py", HAS_ELPV, "no offline (pip-packaged) ImageNet weights"),
    ("seed_beans_mobilenetv2_features.py", HAS_FASHION, "using mobilenet with packaged weights"),
    ("seed_cats_dogs_scratch_frozen_finetune.py", HAS_ELPV, "from scratch"),
    ("seed_xray_vgg16_folder.py", HAS_ELPV, "predictions identical"),
    ("seed_ct_inceptionv3_last15.py", HAS_ELPV, "training curves:"),
]


def test_every_seed_script_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("seed_*.py")) == sorted(c[0] for c in CASES)


#: The one seed script of the default run.
DEFAULT_RUN = "seed_beans_mobilenetv2_features.py"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script,available,expected", [
    pytest.param(*case, id=case[0][5:-3],
                 marks=() if case[0] == DEFAULT_RUN else pytest.mark.slow)
    for case in CASES])
def test_seed_example_quick_beats_the_majority_rate(script, available, expected, tmp_path):
    if not available:
        pytest.skip(f"{script}: its offline stand-in dataset is not installed")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick",
                             "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=230, env=env,
                            cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "→ above" in out and expected in out, out[-3000:]
    if script.startswith("seed_ct"):
        assert (tmp_path / "curves.png").stat().st_size > 1000
    if script.startswith("seed_xray"):
        assert (tmp_path / "xray_model.keras").is_file()


@pytest.mark.skipif(not HAS_FASHION, reason="dataset-fashion-mnist is not installed")
def test_make_folder_writes_the_class_tree_the_readme_journey_starts_from(tmp_path):
    from featx.datasets import load_image_folder

    done = subprocess.run([sys.executable, str(EXAMPLES / "make_folder.py"), str(tmp_path / "data"),
                           "--per-class", "3", "--new", "4"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    paths, y, names = load_image_folder(tmp_path / "data")
    assert names == ["bag", "sneaker", "t-shirt", "trouser"] and len(paths) == 12
    assert sorted(os.listdir(tmp_path / "data_new")) == ["000.png", "001.png", "002.png",
                                                         "003.png"]
