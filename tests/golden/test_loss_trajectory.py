"""Golden loss trajectory: ten steps of the debug preset must match ``losses.json`` (rtol 1e-4).

Regenerate with ``python tests/golden/regen.py`` (see its docstring for when that is legitimate).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _regen():
    spec = importlib.util.spec_from_file_location("golden_regen", HERE / "regen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_trajectory_matches_golden():
    expected = json.loads((HERE / "losses.json").read_text())["losses"]
    losses = _regen().trajectory()
    assert len(losses) == len(expected) == 10
    assert losses == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < losses[0]  # it learns the batch
