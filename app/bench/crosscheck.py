"""`sparsegate bench crosscheck`: this bench against vLLM's own `vllm bench serve`, under
the same load, in alternating rounds, so that a user can see the figures agree.

Same load means: the same server and model, random prompts of exactly the same number of
tokens (vLLM's `random` dataset: ids drawn from the tokenizer's vocabulary without its
special tokens; here the same, sent as token ids), the same output length (`ignore_eos`),
greedy sampling, the same concurrency and number of requests. Both report output tokens
per second (tokens over the run's wall time) and mean TPOT as vLLM defines it.
"""

import asyncio
import json
import random
import subprocess
import sys
from typing import Any

from app.bench.load import Load, run_load
from app.bench.summary import Slo, summarize
from app.errors import SparsegateError

# vLLM's benchmark in a child process: its imports (triton among them) print pages of
# warnings at exit, and its figures come back as the last line of JSON.
_VLLM_BENCH = """
import argparse, contextlib, io, json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
args = parser.parse_args(json.loads(sys.argv[1]))
with contextlib.redirect_stdout(io.StringIO()):
    result = main(argparse.Namespace(**vars(args)))
print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
"""


def _vllm_bench(url: str, model: str, tokenizer: str, load: Load, seed: int) -> dict[str, Any]:
    argv = [
            "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random",
            "--random-input-len", str(load.prompt_tokens),
            "--random-output-len", str(load.output_tokens), "--random-range-ratio", "0",
            "--num-prompts", str(load.requests), "--max-concurrency", str(load.concurrency),
            "--ignore-eos", "--temperature", "0", "--seed", str(seed), "--disable-tqdm",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _VLLM_BENCH, json.dumps(argv)], capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SparsegateError(f"vllm bench serve failed: {tail}")
    result = json.loads(lines[-1])
    return {
        "output_tokens_per_s": result["output_throughput"],
        "tpot_mean_ms": result["mean_tpot_ms"],
        "ttft_mean_ms": result["mean_ttft_ms"],
        "completed": result["completed"],
    }


def _ours(url: str, model: str, load: Load, seed: int) -> dict[str, Any]:
    outcomes, wall = asyncio.run(run_load(url, model, load, seed=seed))
    row = summarize(model, outcomes, wall, slo=Slo(), price_per_hour=None)
    ok = [o for o in outcomes if o.ok]
    return {
        "output_tokens_per_s": row["output_tokens_per_s"],
        "tpot_mean_ms": 1000 * row["tpot_mean_s"],
        "ttft_mean_ms": 1000 * sum(o.ttft for o in ok) / len(ok) if ok else None,
        "completed": len(ok),
        "prompt_tokens_mean": row["prompt_tokens"] / len(ok) if ok else None,
    }


def crosscheck(url: str, model: str, tokenizer: str, load: Load, rounds: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    special = set(tok.all_special_ids)
    load.token_ids = [i for i in range(tok.vocab_size) if i not in special]
    seeds = random.Random().sample(range(1 << 30), 2 * rounds)  # new prompts every run
    runs: dict[str, list[dict]] = {"vllm": [], "sparsegate": []}
    for r in range(rounds):
        runs["vllm"].append(_vllm_bench(url, model, tokenizer, load, seeds[2 * r]))
        runs["sparsegate"].append(_ours(url, model, load, seeds[2 * r + 1]))
    out: dict[str, Any] = {"load": {k: v for k, v in load.__dict__.items() if k != "token_ids"},
                           "rounds": rounds, "runs": runs}  # fmt: skip
    for key in ("output_tokens_per_s", "tpot_mean_ms"):
        mean = {tool: sum(x[key] for x in rs) / len(rs) for tool, rs in runs.items()}
        out[key] = {**mean, "ratio": mean["sparsegate"] / mean["vllm"]}
    return out
