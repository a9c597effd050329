"""Quantized tiny-model variants end to end (job, files, vLLM): W4A16 (GPTQ, int4 groups of
128), channel pruning + W8A8 in one job (a smaller model whose config vLLM must load), and
both served in float32 as on CPUs without native bf16 or VNNI."""

import json

import httpx
import pytest

from app.engines.scoring import served_bits_per_byte
from app.registry.embedded import EmbeddedRegistry
from app.texts.evaluation import EVAL_TEXTS
from tests.conftest import Served, run_cli

FAST = ["--calibration-samples", "4", "--eval-windows", "2"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, engines):
    home = tmp_path_factory.mktemp("quantized-registry")
    proc = run_cli("models", "import", str(tiny_model_dir), "--name", "tiny", registry=home)
    assert proc.returncode == 0, proc.stderr
    jobs = {
        "tiny-w4a16": ["--quant", "w4a16"],
        "tiny-ch-w8a8": ["--prune", "magnitude", "--pattern", "channels", "--sparsity", "0.5",
                         "--quant", "w8a8", "--name", "tiny-ch-w8a8"],
    }  # fmt: skip
    for args in jobs.values():
        proc = run_cli("compress", "tiny", *args, *FAST, registry=home)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    reg = EmbeddedRegistry(home)
    urls = engines({
        **{name: reg.servable_path(name) for name in jobs},
        # float32 activations too (CPUs without native bf16 compute in it): vLLM's int4 op
        # has no float32 path, so the plugin's kernel must take these layers.
        "tiny-w4a16-f32": Served(reg.servable_path("tiny-w4a16"), "float32"),
        # As on a CPU without VNNI, whose oneDNN int8 GEMM saturates: the plugin's W8A8 kernel.
        "tiny-w8a8-avx2": Served(reg.servable_path("tiny-ch-w8a8"), "float32",
                                 {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    })  # fmt: skip
    return home, reg, urls


def _served_as_evaluated(reg, url: str, served_name: str, variant: str) -> None:
    for text in EVAL_TEXTS:
        served = served_bits_per_byte(url, served_name, reg.servable_path(variant), text.spans(2))
        assert served == pytest.approx(reg.get(variant).quality["bpb"][text.key], rel=5e-3), (
            text.key
        )


def _complete(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=60,
                      json={"model": model, "prompt": "The for", "max_tokens": 5})  # fmt: skip


def test_w4a16_variant_is_packed_and_served(served):
    home, reg, urls = served
    v, dense = reg.get("tiny-w4a16"), reg.get("tiny")
    assert v.parent == "tiny" and v.recipe["quant"] == "w4a16"
    weights = json.loads((home / "tiny-w4a16" / "config.json").read_text())["quantization_config"]
    group = weights["config_groups"]["group_0"]["weights"]
    assert (group["num_bits"], group["group_size"], group["strategy"]) == (4, 128, "group")
    assert v.bytes_on_disk < 0.75 * dense.bytes_on_disk
    r = _complete(urls["tiny-w4a16"], "tiny-w4a16")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    # Served int4 weights in float32 (the plugin's dequantizing kernel: vLLM's op has no
    # float32 path) score the job's own spans as the job's float32 evaluation did. (In bf16
    # this random tiny model reads 1-2% off with exact weights; SmolLM2's W4A16 is checked
    # in bf16, tests/test_smollm2.py.)
    r = _complete(urls["tiny-w4a16-f32"], "tiny-w4a16-f32")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    _served_as_evaluated(reg, urls["tiny-w4a16-f32"], "tiny-w4a16-f32", "tiny-w4a16")


def test_channels_and_w8a8_in_one_job_keep_the_smaller_config(served):
    home, reg, urls = served
    config = json.loads((home / "tiny-ch-w8a8" / "config.json").read_text())
    # The tiny model has 256 MLP channels; half are removed (a multiple of 128 kept).
    assert config["intermediate_size"] == 128
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 8
    v, dense = reg.get("tiny-ch-w8a8"), reg.get("tiny")
    assert v.param_count < dense.param_count
    r = _complete(urls["tiny-ch-w8a8"], "tiny-ch-w8a8")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_w8a8_is_served_as_evaluated_where_onednn_int8_saturates(served, engines):
    """oneDNN capped below VNNI sums int8 byte pairs in saturating 16-bit lanes; the plugin's
    kernel (app/engines/vllm_int8.py) takes W8A8 layers there, in float32 as evaluated."""
    _, reg, urls = served
    log = (engines.logs / "tiny-w8a8-avx2.log").read_text()
    assert "Selected DequantizedInt8Kernel" in log
    _served_as_evaluated(reg, urls["tiny-w8a8-avx2"], "tiny-w8a8-avx2", "tiny-ch-w8a8")
