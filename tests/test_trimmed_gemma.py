"""Vocabulary trimming on the real default model: Gemma 3 270M's 262,144-row vocabulary
trimmed to 49,152, then pruned 2:4 and quantized to W8A8 in the same job (one Gemma job:
trimming composes with both), checked in its files and served by vLLM."""

import json

import pytest

from app.texts.evaluation import EVAL_TEXTS
from tests.conftest import assert_served_as_evaluated, compress_jobs

pytestmark = pytest.mark.slow

BASE = "gemma-3-270m"
K = 49152
FAST = ["--calibration-samples", "4", "--eval-windows", "4"]
JOBS = {
    "trim-2of4-w8a8": ["--trim-vocab", str(K), "--prune", "wanda", "--pattern", "2:4",
                       "--quant", "w8a8"],
}  # fmt: skip


@pytest.fixture(scope="module")
def variants(default_registry):
    return compress_jobs(default_registry, BASE, JOBS, *FAST)


@pytest.fixture(scope="module")
def served(variants, engines):
    """Only the trimmed variant: six Gemma engines at once do not fit this machine."""
    return engines({name: variants.servable_path(name) for name in JOBS})


def test_records_compare_in_bits_per_byte_only(variants, default_registry):
    for name in JOBS:
        q = variants.get(name).quality
        report = json.loads((default_registry / name / "report.json").read_text())
        assert q["ppl_ratio"] is None  # other tokens: per-token perplexity does not compare
        for text in ("pydoc", "news"):
            assert report["dense"][text]["bytes"] == report["variant"]["scores"][text]["bytes"]
            assert q["bpb_ratio"][text] == pytest.approx(q["bpb"][text] / q["bpb_dense"][text])
        vocab = q["vocab"]
        assert vocab["k"] == vocab["rows_kept"] == K and vocab["rows_before"] == 262144
        assert vocab["must_keep"] > 6000  # Gemma's added tokens, bytes, chat template
        assert 0.9 < vocab["texts"]["pydoc"]["coverage"] < 1
        assert 1 < vocab["texts"]["news"]["tokens_per_byte_ratio"] < 1.3
        assert variants.get(name).param_count < 0.6 * variants.get(BASE).param_count


def test_trimmed_checkpoints_keep_their_vocabulary_through_quantization(variants):
    from transformers import AutoTokenizer

    dense_tok = AutoTokenizer.from_pretrained(variants.servable_path(BASE))
    for name in JOBS:
        folder = variants.servable_path(name)
        config = json.loads((folder / "config.json").read_text())
        generation = json.loads((folder / "generation_config.json").read_text())
        tok = AutoTokenizer.from_pretrained(folder)
        # llm-compressor rewrites config.json from the source model: the job puts the
        # trimmed size and the renumbered ids back.
        assert config["vocab_size"] == len(tok) == K
        eos, end_of_turn = tok.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
        assert generation["eos_token_id"] == [eos, end_of_turn]
        # Renumbered, the stop ids still name the same tokens as dense's.
        dense_generation = json.loads(
            (variants.servable_path(BASE) / "generation_config.json").read_text()
        )
        assert tok.convert_ids_to_tokens(generation["eos_token_id"]) == (
            dense_tok.convert_ids_to_tokens(dense_generation["eos_token_id"])
        )
        assert config["bos_token_id"] == tok.bos_token_id == tok.convert_tokens_to_ids("<bos>")
        chat = [{"role": "user", "content": "Hi"}]
        assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
            dense_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        )
        for text in EVAL_TEXTS:  # never an id past the trimmed vocabulary
            assert max(tok("\n\n".join(text.documents()))["input_ids"]) < K


def test_vllm_serves_trimmed_variants_as_evaluated(variants, served):
    assert_served_as_evaluated(variants, served, spans=4)


def test_a_trimmed_variant_stops_its_chat_turn_at_the_renumbered_token(variants, served):
    """The model is made to end its turn at once (a logit bias on the variant's own
    <end_of_turn> id): vLLM must stop there, with nothing shown. Biased to an ordinary
    token instead, it runs to the length limit: the stop is the stop id's doing."""
    import openai
    from transformers import AutoTokenizer

    for name, url in served.items():
        tok = AutoTokenizer.from_pretrained(variants.servable_path(name))
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        def reply_biased_to(token: str, name=name, tok=tok, client=client):
            return client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Name a Python keyword."}],
                max_tokens=8, temperature=0,
                logit_bias={str(tok.convert_tokens_to_ids(token)): 100},
            )  # fmt: skip

        stopped = reply_biased_to("<end_of_turn>")
        assert stopped.choices[0].finish_reason == "stop", name
        assert stopped.usage.completion_tokens == 1 and stopped.choices[0].message.content == ""
        running = reply_biased_to("▁the")
        assert running.choices[0].finish_reason == "length" and running.usage.completion_tokens == 8
