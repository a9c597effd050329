"""`--schedule`: iterative pruning (prune, recover, prune further) on the tiny model."""

import json

import pytest

from app.registry.embedded import EmbeddedRegistry
from tests.conftest import run_cli


def test_iterative_schedule_recovers_after_each_step_and_ends_at_its_last_sparsity(
    tiny_registry,
):
    proc = run_cli(
        "compress", "tiny", "--prune", "magnitude", "--schedule", "0.3,0.5", "--recover", "lora",
        "--steps", "2", "--calibration-samples", "4", "--eval-windows", "2",
        "--name", "tiny-iterative", registry=tiny_registry,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    v = EmbeddedRegistry(tiny_registry).get("tiny-iterative")
    assert v.recipe["schedule"] == [0.3, 0.5]
    assert v.sparsity == pytest.approx(0.5, abs=0.01)
    report = json.loads((tiny_registry / "tiny-iterative" / "report.json").read_text())
    # one recovery per step, each at that step's sparsity, its mask re-applied after merging
    assert [r["sparsity"] for r in report["recovery"]] == [0.3, 0.5]
    assert [r["steps"] for r in report["recovery"]] == [2, 2]
