"""`--recover lora` without pruning: the dense control the quality table compares with."""

import json

from safetensors.torch import load_file

from app.registry.embedded import EmbeddedRegistry
from tests.conftest import run_cli


def test_dense_lora_control_fine_tunes_without_pruning(tmp_path, tiny_model_dir):
    home = tmp_path / "reg"
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "compress", "tiny", "--recover", "lora", "--steps", "3", "--calibration-samples", "4",
        "--eval-windows", "2", registry=home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = EmbeddedRegistry(home)
    v = reg.get("tiny-lora")
    assert v.recipe["prune"] == "none" and v.recipe["recover"] == "lora"
    report = json.loads((home / "tiny-lora" / "report.json").read_text())
    (rec,) = report["recovery"]
    assert rec["steps"] == 3 and rec["sparsity"] == 0.0
    # The control's "before" is the dense model itself, scored on the same spans.
    cached = reg.get("tiny").quality["scores_by_eval"]
    keys = report["evaluation"]["keys"]
    assert report["before_recovery"]["pydoc"] == cached[keys["pydoc"]]
    assert report["before_recovery"]["news"] == cached[keys["news"]]
    before = load_file(home / "tiny" / "model.safetensors")
    after = load_file(home / "tiny-lora" / "model.safetensors")
    changed = [k for k in before if "proj" in k and not before[k].equal(after[k])]
    assert changed  # the merged adapters moved the weights
