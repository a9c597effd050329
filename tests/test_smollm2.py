"""The second family end to end: SmolLM2-135M-Instruct (Llama architecture, byte-level BPE,
49,152 tokens) through every kind of method, in two jobs that compose them, served by vLLM
with bits per byte as served matching the job's. (Magnitude, Wanda unstructured and LoRA
are the same code on every family; they run on Gemma and the tiny model.)"""

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import assert_served_as_evaluated, compress_jobs

pytestmark = pytest.mark.slow

BASE = "smollm2-135m"
K = 24576
FAST = ["--calibration-samples", "4", "--eval-windows", "4"]
JOBS = {
    # a byte-level BPE vocabulary trimmed, SparseGPT in the 2:4 pattern, INT8 W8A8
    "s-trim-sgpt24-w8a8": ["--trim-vocab", str(K), "--prune", "sparsegpt", "--pattern", "2:4",
                           "--quant", "w8a8"],
    # one MLP channel in twelve removed (128 of 1,536: channels go in blocks of 128),
    # recovered by distillation from dense, int4 W4A16 (groups of 64: 576 columns)
    "s-ch-kd-w4a16": ["--prune", "wanda", "--pattern", "channels", "--sparsity", "0.08",
                      "--recover", "kd", "--steps", "2", "--quant", "w4a16"],
}  # fmt: skip


@pytest.fixture(scope="module")
def variants(smollm2_registry):
    return compress_jobs(smollm2_registry, BASE, JOBS, *FAST)


def _config(variants, name: str) -> dict:
    return json.loads((variants.servable_path(name) / "config.json").read_text())


def test_each_job_did_what_its_methods_say(variants, smollm2_registry):
    dense = variants.get(BASE)
    trimmed = variants.get("s-trim-sgpt24-w8a8")
    assert trimmed.quality["vocab"]["rows_before"] == 49152
    assert _config(variants, "s-trim-sgpt24-w8a8")["vocab_size"] == K
    assert trimmed.quality["ppl_ratio"] is None  # other tokens: only bits per byte compare
    report = json.loads((smollm2_registry / "s-trim-sgpt24-w8a8" / "report.json").read_text())
    assert report["pattern_holds"] is True
    channels = variants.get("s-ch-kd-w4a16")
    dense_mlp = _config(variants, BASE)["intermediate_size"]
    assert _config(variants, "s-ch-kd-w4a16")["intermediate_size"] == dense_mlp - 128
    (recovery,) = json.loads((smollm2_registry / "s-ch-kd-w4a16" / "report.json").read_text())[
        "recovery"
    ]
    assert recovery["method"] == "kd" and recovery["teacher"] == BASE
    quant = _config(variants, "s-ch-kd-w4a16")["quantization_config"]["config_groups"]
    weights = quant["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (4, 64)  # 576 columns: not 128
    for v in (trimmed, channels):
        assert v.param_count < dense.param_count and v.bytes_on_disk < dense.bytes_on_disk
        for text in ("pydoc", "news"):
            assert v.quality["bpb_ratio"][text] > 1.0


def test_int8_weights_keep_the_two_four_pattern(variants):
    folder = variants.servable_path("s-trim-sgpt24-w8a8")
    state = load_file(folder / "model.safetensors")
    weights = [v for k, v in state.items() if ".layers." in k and k.endswith("proj.weight")]
    assert len(weights) == 7 * 30  # every projection of every layer, as int8
    for w in weights:
        assert int((w.reshape(-1, 4) != 0).sum(dim=1).max()) <= 2


@pytest.fixture(scope="module")
def served(variants, engines):
    """In float32, as the job evaluates: bf16 rounding left out, what remains is the int8
    and int4 kernels' own (W4A16 read within 1e-7 here, W8A8 within 0.4%; in bf16 W8A8 read
    0.5% here and 1.05% on a CI host, too near the 1% line)."""
    return engines({name: variants.servable_path(name) for name in JOBS}, dtype="float32")


def test_vllm_serves_both_variants_as_evaluated(variants, served):
    assert_served_as_evaluated(variants, served, spans=4)
