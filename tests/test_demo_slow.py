"""The main job end to end on the real default model (minutes): `make test-slow`."""

from __future__ import annotations

import json

import pytest

from smalltune.recipes.demo import run_demo
from smalltune.evaluation.evaluate import TUNED, UNTUNED


@pytest.mark.slow
def test_demo_fine_tune_meets_the_target_on_held_out_complaints(tmp_path):
    results = run_demo(tmp_path, n_train=320, n_test=100, log=lambda _: None).held_out
    tuned, untuned = results[TUNED].metrics, results[UNTUNED].metrics
    assert tuned["json_valid"] == 1.0
    assert tuned["field_exact"] >= 0.99 and tuned["record_exact"] >= 0.95
    assert tuned["record_exact"] > untuned["record_exact"]
    saved = json.loads((tmp_path / "complaints" / "metrics.json").read_text())
    assert saved["systems"][TUNED]["metrics"]["field_exact"] == tuned["field_exact"]
