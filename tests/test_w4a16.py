"""W4A16 (GPTQ, int4 groups of 128) end to end on the tiny model: job, files, vLLM."""

import json

import httpx

from app.registry import Registry
from tests.conftest import run_cli


def test_w4a16_variant_is_packed_and_served(tmp_path, tiny_model_dir, engines):
    home = tmp_path / "reg"
    assert (
        run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home).returncode
        == 0
    )
    proc = run_cli(
        "compress", "tiny", "--quant", "w4a16", "--calibration-samples", "4",
        "--eval-windows", "2", registry=home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = Registry(home)
    v, dense = reg.get("tiny-w4a16"), reg.get("tiny")
    assert v.parent == "tiny" and v.recipe["quant"] == "w4a16"
    weights = json.loads((home / "tiny-w4a16" / "config.json").read_text())["quantization_config"]
    group = weights["config_groups"]["group_0"]["weights"]
    assert (group["num_bits"], group["group_size"], group["strategy"]) == (4, 128, "group")
    assert v.bytes_on_disk < 0.75 * dense.bytes_on_disk
    url = engines({"tiny-w4a16": reg.servable_path("tiny-w4a16")})["tiny-w4a16"]
    r = httpx.post(f"{url}/v1/completions", timeout=60,
                   json={"model": "tiny-w4a16", "prompt": "The for", "max_tokens": 5})  # fmt: skip
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
