"""Shared fixtures of the robustness suite: the bad-input corpus, a tiny backbone,
and the hypothesis profiles (``ci`` by default, ``torture`` under ``make torture``)."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the generator and workers are plain modules beside the tests
    sys.path.insert(0, HERE)

from corpus import build_corpus  # noqa: E402

settings.register_profile(
    "ci", max_examples=int(os.environ.get("FEATX_FUZZ_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True)
settings.register_profile(
    "torture", max_examples=int(os.environ.get("FEATX_FUZZ_EXAMPLES", "1000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("FEATX_HYPOTHESIS_PROFILE", "ci"))

#: The CI backbone: random MobileNetV2 at 32 px (fast; the pixels only need to flow).
BACKBONE = dict(name="mobilenet_v2", weights=None, input_size=32)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(cases, skipped): every corpus kind written once into a session folder."""
    folder = str(tmp_path_factory.mktemp("bad corpus ü"))  # a space and non-ASCII, too
    return build_corpus(folder)


@pytest.fixture(scope="session")
def backbone():
    import featx

    return featx.get_backbone(BACKBONE["name"], weights=None, input_size=BACKBONE["input_size"])
