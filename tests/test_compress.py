"""The real offline job on the default model: prune, quantize, trim, recover, evaluate,
register, serve."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

from app.job.evaluate import nm_pattern_holds
from app.registry.embedded import EmbeddedRegistry
from tests.conftest import assert_served_as_evaluated, run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

BASE = "gemma-3-270m"
FAST = ["--calibration-samples", "4", "--eval-windows", "4"]
ROWS, K = 262144, 49152  # Gemma 3 270M's vocabulary, and what the trimmed job keeps
TRIMMED = "trim-2of4-w8a8"
JOBS = {
    # Wanda 50%, then LoRA recovery in the same job: one Gemma job instead of two (a
    # recovery job of its own on a pruned parent runs on the tiny model: test_distill.py).
    "unstructured": ["--prune", "wanda", "--sparsity", "0.5", "--recover", "lora",
                     "--steps", "5"],
    # Gemma 3 270M's 262,144-row vocabulary trimmed to 49,152, then pruned 2:4 and quantized
    # to W8A8 in the same job: trimming composes with both.
    TRIMMED: ["--trim-vocab", str(K), "--prune", "wanda", "--pattern", "2:4", "--quant", "w8a8"],
    "channels": ["--prune", "magnitude", "--pattern", "channels", "--sparsity", "0.5"],
}  # fmt: skip
# (Iterative pruning, which only schedules these steps, runs on the tiny model:
# tests/test_schedule.py.)


@pytest.fixture(scope="module")
def variants(default_registry):
    for name, args in JOBS.items():
        proc = run_cli("compress", BASE, *args, *FAST, "--name", name, registry=default_registry)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"registered {name}" in proc.stdout
    return EmbeddedRegistry(default_registry)


def _prunable(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".layers." in k and k.endswith("proj.weight")}


def test_records_and_reports(variants, default_registry):
    dense = variants.get(BASE)
    for name in JOBS:
        v = variants.get(name)
        assert v.parent == BASE and v.base == BASE and v.recipe["op"] == "compress"
        report = json.loads((default_registry / name / "report.json").read_text())
        scores, q = report["variant"]["scores"], v.quality
        for text in ("pydoc", "news"):  # in and out of domain, on the same bytes as dense
            assert q["bpb"][text] == pytest.approx(scores[text]["bpb"])
            assert q["bpb_ratio"][text] == pytest.approx(q["bpb"][text] / q["bpb_dense"][text])
            assert report["dense"][text]["bytes"] == scores[text]["bytes"]
            assert q["bpb_ratio"][text] > 1.0  # removing weights costs quality on real text
        if name != TRIMMED:  # the same tokenizer: per-token perplexity compares too
            assert q["ppl_ratio"] == pytest.approx(q["ppl"] / q["ppl_dense"])
            assert report["dense"]["pydoc"]["tokens"] == scores["pydoc"]["tokens"]
        else:  # other tokens: per-token perplexity does not compare
            assert q["ppl_ratio"] is None
        assert set(report["sparsity_by_layer"]) and report["evaluation"]["spans"] == 4
        assert "report.json" in {f.path for f in v.files}
        # (measured before report.json, a few kB, was written)
        ratio = v.bytes_on_disk / dense.bytes_on_disk
        assert v.quality["bytes_ratio"] == pytest.approx(ratio, rel=1e-3)


def _weights(variants, name):
    return _prunable(load_file(variants.servable_path(name) / "model.safetensors"))


def test_unstructured_sparsity_is_in_the_saved_weights(variants, default_registry):
    weights = _weights(variants, "unstructured")
    assert len(weights) == 18 * 7
    for name, w in weights.items():
        # Wanda prunes per output row: every row loses at least half its weights.
        assert ((w == 0).float().mean(dim=1) >= 0.5).all(), name
    v, dense = variants.get("unstructured"), variants.get(BASE)
    assert v.sparsity == pytest.approx(0.5, abs=0.01)
    # Sparse at rest: bitmask + non-zero values; the engine gets the dense layout back.
    files = {f.path for f in v.files}
    assert "model.sparse.safetensors" in files and "model.safetensors" not in files
    # At 50% zeros a bf16 weight costs 1/8 byte of mask + half of 2 bytes: 0.875 saved.
    linear_params = sum(w.numel() for w in weights.values())
    assert dense.bytes_on_disk - v.bytes_on_disk > 0.95 * 0.875 * linear_params
    assert v.bytes_on_disk < 0.9 * dense.bytes_on_disk


def test_two_four_pattern_holds_in_int8_weights(variants, default_registry):
    folder = default_registry / TRIMMED
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and "sparsity_config" not in qc
    weights = _weights(variants, TRIMMED)
    assert weights and all(str(w.dtype) == "torch.int8" for w in weights.values())
    for name, w in weights.items():
        assert nm_pattern_holds(w, 2, 4), name
    assert variants.get(TRIMMED).quality["pattern_holds"] is True
    # Each linear weight is 1 byte instead of bf16's 2, and the trimmed embedding rows' bf16
    # bytes are gone.
    linear_params = sum(w.numel() for w in weights.values())
    trimmed_rows = (ROWS - K) * config["hidden_size"] * 2
    served = json.loads((folder / "report.json").read_text())["bytes_served"]
    assert variants.get(BASE).bytes_on_disk - served > 0.95 * (linear_params + trimmed_rows)
    assert variants.get(TRIMMED).bytes_on_disk < served  # and sparse at rest on top


def test_a_trimmed_record_says_what_was_kept(variants):
    """(Its bits per byte on dense's bytes: test_records_and_reports.)"""
    vocab = variants.get(TRIMMED).quality["vocab"]
    assert vocab["k"] == vocab["rows_kept"] == K and vocab["rows_before"] == ROWS
    assert vocab["must_keep"] > 6000  # Gemma's added tokens, bytes, chat template
    # Mined on the default corpus, weighed by the English prior: both recorded.
    assert len(vocab["corpus"]["sha256"]) == 64 and vocab["corpus"]["bytes"] > 10_000_000
    assert "standard library sources" in vocab["corpus"]["source"]
    assert vocab["prior"]["source"].startswith("wordfreq 3.1.1 (en")
    assert vocab["prior"]["words"] > 300_000 and len(vocab["prior"]["sha256"]) == 64
    assert 0.9 < vocab["texts"]["pydoc"]["coverage"] < 1
    assert 1 < vocab["texts"]["news"]["tokens_per_byte_ratio"] < 1.3
    assert variants.get(TRIMMED).param_count < 0.6 * variants.get(BASE).param_count


def test_a_trimmed_checkpoint_keeps_its_vocabulary_through_quantization(variants):
    from transformers import AutoTokenizer

    from app.texts.evaluation import EVAL_TEXTS

    dense_tok = AutoTokenizer.from_pretrained(variants.servable_path(BASE))
    folder = variants.servable_path(TRIMMED)
    config = json.loads((folder / "config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    # llm-compressor rewrites config.json from the source model: the job puts the trimmed
    # size and the renumbered ids back.
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


def test_channel_pruning_makes_a_smaller_model(variants, default_registry):
    config = json.loads((default_registry / "channels" / "config.json").read_text())
    assert config["intermediate_size"] == 1024  # half of Gemma 3 270M's 2048
    v, dense = variants.get("channels"), variants.get(BASE)
    assert dense.param_count - v.param_count == 18 * 3 * 640 * 1024
    assert v.bytes_on_disk < dense.bytes_on_disk


def test_lora_recovery_improves_and_keeps_exact_sparsity(variants, default_registry):
    report = json.loads((default_registry / "unstructured" / "report.json").read_text())
    (rec,) = report["recovery"]
    assert rec["steps"] == 5 and rec["loss_last"] < rec["loss_first"]
    # Merging the adapters fills pruned positions; the re-applied mask empties them again
    # (each row's zeros as Wanda left them: test_unstructured_sparsity_is_in_the_saved_weights).
    assert rec["sparsity_merged"] < rec["sparsity_before"] == rec["sparsity_after"]
    weights = _weights(variants, "unstructured").values()
    zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    assert zeros / total == pytest.approx(rec["sparsity_after"], abs=1e-6)
    after, before = report["variant"]["scores"], report["before_recovery"]
    assert after["pydoc"]["bpb"] < before["pydoc"]["bpb"]


_SCORE_WRITTEN = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from app.job.evaluate import score_spans
from app.texts.evaluation import EVAL_TEXTS
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
print(json.dumps({t.key: score_spans(model, tokenizer, t.spans(4)).bits_per_byte
                  for t in EVAL_TEXTS}))
"""


def test_the_record_scores_the_checkpoint_as_written(variants):
    """The job's figures are those of the weights it wrote (bf16), not of the float32 ones
    it computed with: the checkpoint, loaded again and scored on the same spans by the
    job's own environment, gives the recorded bits per byte (LoRA's merged weights are the
    case that tells: off the bf16 grid until rounded)."""
    compress_python = Path(sys.prefix).parent / "compress" / "bin" / "python"
    name = "unstructured"  # merged adapters
    out = subprocess.run(
        [str(compress_python), "-c", _SCORE_WRITTEN, str(variants.servable_path(name))],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    scored = json.loads(out.stdout.strip().splitlines()[-1])
    for text, bpb in scored.items():
        recorded = variants.get(name).quality["bpb"][text]
        assert bpb == pytest.approx(recorded, rel=1e-5), (name, text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "wanda", "--sparsity", "1.5"], "--sparsity must be above 0.0"),
        (["--prune", "wanda", "--sparsity", "0"], "--sparsity must be above 0.0"),
        (["--prune", "wanda", "--pattern", "2:4", "--sparsity", "0.7"], "2:4 means 50%"),
        (["--prune", "pruney"], "unknown --prune 'pruney'"),
        (["--quant", "int3"], "unknown --quant 'int3'"),
        (["--pattern", "3:2", "--prune", "wanda"], "N must be between 1 and M-1"),
        ([], "nothing to do"),
        (["--prune", "wanda", "--name", "unstructured"], "'unstructured' already exists"),
        (["--prune", "wanda", "--name", "Bad/Name"], "invalid variant name"),
        (["--prune", "wanda", "--calibration-data", "/no/such.txt"], "not found"),
        (["--prune", "wanda", "--calibration-text", "news"], "mixed or pydoc, not 'news'"),
        (["--prune", "wanda", "--schedule", "0.5,0.3"], "--schedule must increase"),
        (["--prune", "wanda", "--pattern", "2:4", "--schedule", "0.3,0.5"], "unstructured"),
        (["--prune", "wanda", "--recover", "qlora"], "unknown --recover 'qlora'"),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(variants, default_registry, args, message):
    before = {v.name for v in variants.variants()}
    proc = run_cli("compress", BASE, *args, registry=default_registry)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert {v.name for v in variants.variants()} == before


def test_unknown_base(default_registry):
    proc = run_cli("compress", "nope", "--prune", "wanda", registry=default_registry)
    assert proc.returncode == 2 and "unknown variant 'nope'" in proc.stderr


def test_calibration_file_may_not_hold_evaluation_text(default_registry, tmp_path):
    from app.texts.corpus import pydoc_texts

    leaky = tmp_path / "calib.txt"
    leaky.write_text("some text\n" + pydoc_texts("evaluation")[0])
    proc = run_cli(
        "compress", BASE, "--prune", "magnitude", "--calibration-data", str(leaky),
        "--name", "leaky", registry=default_registry,
    )  # fmt: skip
    assert proc.returncode == 2 and "contains held-out evaluation text" in proc.stderr
    assert EmbeddedRegistry(default_registry).find("leaky") is None


@pytest.fixture(scope="module")
def served(variants, engines):
    """vLLM engines for the three variants, up from here (the module's last tests) to its
    end: at most three real-model engines at once (in float32, as on AVX2-only hosts, each
    holds about 5.5 GB)."""
    return engines({name: variants.servable_path(name) for name in JOBS})


def test_vllm_serves_every_variant_as_evaluated(variants, served):
    for name, url in served.items():
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": name, "prompt": "The for statement", "max_tokens": 8},
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    # bf16 kernels (and int8 ones for W8A8) against the job's float32 evaluation of the same
    # bf16 weights.
    assert_served_as_evaluated(variants, served, spans=4)


def test_gateway_serves_the_real_variants_to_the_openai_client(
    served, default_registry, start_gateway
):
    import openai

    pair = ("unstructured", "channels")
    deployment = {
        "variants": {name: {"url": served[name]} for name in pair},
        "aliases": {"gemma": {"split": {name: 0.5 for name in pair}}},
    }
    url = start_gateway(deployment, "--registry", str(default_registry))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Name a Python keyword."}]
    for variant in pair:
        pin = {"x-sparsegate-variant": variant}
        whole = client.chat.completions.with_raw_response.create(
            model="gemma", messages=messages, max_tokens=16, temperature=0, extra_headers=pin
        )
        assert whole.headers["x-sparsegate-variant"] == variant
        reply = whole.parse()
        # Any text will do, white space included: Gemma 3 270M's greedy answer differs
        # between CPUs (seen: eight blank lines on an AMX host).
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(
            model="gemma", messages=messages, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_headers=pin,
        ))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content
        assert chunks[-1].usage == reply.usage
    rows = {r["variant"]: r for r in httpx.get(f"{url}/v1/variants/compare").json()["data"]}
    for name in pair:  # the job's figures, from the registry (dense is not served here)
        quality = EmbeddedRegistry(default_registry).get(name).quality
        assert rows[name]["base"] == BASE and rows[name]["base_served_as"] is None
        assert rows[name]["ppl_ratio"] == pytest.approx(quality["ppl_ratio"])
        assert rows[name]["bpb_ratio_news"] == pytest.approx(quality["bpb_ratio"]["news"])


def test_a_trimmed_variant_stops_its_chat_turn_at_the_renumbered_token(variants, served):
    """The model is made to end its turn at once (a logit bias on the variant's own
    <end_of_turn> id): vLLM must stop there, with nothing shown. Biased to an ordinary
    token instead, it runs to the length limit: the stop is the stop id's doing."""
    import openai
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(variants.servable_path(TRIMMED))
    client = openai.OpenAI(base_url=f"{served[TRIMMED]}/v1", api_key="unused", max_retries=0)

    def reply_biased_to(token: str):
        return client.chat.completions.create(
            model=TRIMMED, messages=[{"role": "user", "content": "Name a Python keyword."}],
            max_tokens=8, temperature=0, logit_bias={str(tok.convert_tokens_to_ids(token)): 100},
        )  # fmt: skip

    stopped = reply_biased_to("<end_of_turn>")
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].message.content == ""
    running = reply_biased_to("▁the")
    assert running.choices[0].finish_reason == "length" and running.usage.completion_tokens == 8
