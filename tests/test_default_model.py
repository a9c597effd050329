"""The real default model: Gemma 3 270M from its GGUF package to a checked bf16 checkpoint."""

import json

import pytest

from app.registry.embedded import EmbeddedRegistry
from app.registry.files import sha256_file

pytestmark = pytest.mark.slow


def test_conversion_fidelity(default_registry):
    v = EmbeddedRegistry(default_registry).get("gemma-3-270m")
    fid = v.quality["fidelity"]
    # bf16 rounding costs ~0.35%; a wrong tensor mapping or tokenizer costs far more.
    assert fid["relative_logit_error"] < 0.03
    assert fid["top1_agreement"] >= 0.95
    # With the GGUF's own (Unigram) tokenizer rebuild this was over 2000: the BPE rebuild
    # is what makes the model predict real text.
    assert fid["ppl_converted"] < 60
    assert abs(fid["ppl_converted"] / fid["ppl_reference"] - 1) < 0.02
    assert 260e6 < v.param_count < 275e6  # tied embedding counted once
    assert v.stage.value == "production" and v.recipe["format"] == "gguf"


def test_checkpoint_is_ordinary_and_hashed(default_registry):
    v = EmbeddedRegistry(default_registry).get("gemma-3-270m")
    folder = default_registry / v.name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["dtype"] == "bfloat16"
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    for f in v.files:
        assert sha256_file(folder / f.path) == f.sha256
    # bf16 weights of 268M parameters, tied embedding stored once.
    weights = next(f for f in v.files if f.path == "model.safetensors")
    assert 2 * v.param_count <= weights.bytes < 2 * v.param_count + 1_000_000


def test_tokenizer_and_chat_template_as_vllm_loads_them(default_registry):
    # vLLM (this environment's transformers) reads the tokenizer from the folder.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_registry / "gemma-3-270m")
    ids = tok("Hello world, this is a test.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[1:4]) == ["Hello", "▁world", ","]
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world, this is a test."
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
