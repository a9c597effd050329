"""`sparsegate compress`: prune and/or quantize a registered model, evaluate, register."""

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from app.errors import SparsegateError
from app.job.recipe import PruneMethod, QuantScheme, Recipe
from app.registry import Variant, open_registry

EVAL_WINDOWS = 16
console_err = Console(stderr=True)


def compress(
    base: str,
    recipe: Recipe,
    home: Path,
    *,
    name: str | None = None,
    eval_windows: int = EVAL_WINDOWS,
    console: Console,
) -> Variant:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.job.evaluate import nm_pattern_holds
    from app.job.progress import Steps
    from app.job.pruning import PRUNERS
    from app.job.quality import Evaluation
    from app.job.quantize import quant_modifiers
    from app.job.recover import lora_recover
    from app.job.stats import overall_sparsity, param_count, prunable_linears, sparsity_by_layer
    from app.job.structured import channel_scores, prune_channels
    from app.job.text import read_calibration_file, token_windows
    from app.registry.sparse_store import pack

    transformers.logging.set_verbosity_error()

    registry = open_registry(home)
    parent = registry.get(base)
    if parent.recipe.get("quant", "none") != "none":
        raise SparsegateError(f"{base} is quantized; compress its unquantized parent instead")
    if recipe.trim_vocab and parent.quality.get("vocab"):
        raise SparsegateError(f"{base} is already vocabulary-trimmed; trim its parent instead")
    name = name or recipe.default_name(base)
    timings: dict[str, float] = {}
    evaluation = Evaluation(registry, eval_windows)

    with registry.draft(name) as draft, Steps(console) as steps:
        start = time.monotonic()
        with steps.step(f"Loading {base}"):
            folder = registry.servable_path(base)  # sparse-at-rest parents expand
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            calib_text = (
                read_calibration_file(recipe.calibration_data) if recipe.calibration_data else None
            )
            corpus = _vocab_corpus(recipe, tokenizer, model) if recipe.trim_vocab else None
        # Parent and dense base are scored on the same spans as the variant (cached in
        # their records); the ratios to dense never mix evaluation sets.
        parent_scores = evaluation.reference(parent.name, model, tokenizer, steps)
        dense_scores = (
            parent_scores
            if parent.name == parent.base
            else evaluation.reference(parent.base, None, None, steps)
        )

        job_start = time.monotonic()
        vocab_report = None
        if recipe.trim_vocab:
            tokenizer, vocab_report = _trim_vocabulary(model, tokenizer, recipe, corpus, steps)
        try:
            calib = token_windows(
                tokenizer, "calibration", recipe.calibration_samples, recipe.seq_len, calib_text
            )
        except ValueError as e:
            raise SparsegateError(f"not enough text: {e}") from e
        recoveries: list[dict] = []
        before_recovery = None
        if recipe.prune is PruneMethod.none and recipe.recover == "lora":
            # Fine-tuning the dense model alone: the control that tells recovery apart from
            # what any fine-tuning on this text buys.
            before_recovery = evaluation.score(model, tokenizer, steps, "before recovery")
            with steps.step("LoRA fine-tuning (dense)", total=recipe.steps) as advance:
                model, recovery = lora_recover(
                    model, calib, recipe.steps, keep_mask=False, on_step=advance
                )
            recoveries.append({"sparsity": 0.0, **recovery.as_dict()})
        for stage, target in enumerate(recipe.schedule or [recipe.sparsity]):
            if recipe.prune is PruneMethod.none:
                break
            if recipe.structured:
                with steps.step(f"Removing {target:.0%} of MLP channels ({recipe.prune.value})"):
                    use_activations = recipe.prune is not PruneMethod.magnitude
                    prune_channels(model, channel_scores(model, calib, use_activations), target)
            else:
                pruner = PRUNERS[recipe.prune.value](target, recipe.nm)
                with steps.step(f"Pruning ({recipe.prune.value}, {recipe.pattern}, {target:.0%})"):
                    if pruner.needs_calibration:
                        _oneshot(model, pruner.modifiers(), calib, recipe.seq_len)
                    else:
                        pruner.apply(model)
            if recipe.recover == "lora":
                if stage == 0 or recipe.schedule is None:
                    before_recovery = evaluation.score(model, tokenizer, steps, "before recovery")
                with steps.step(f"LoRA recovery ({target:.0%})", total=recipe.steps) as advance:
                    model, recovery = lora_recover(
                        model, calib, recipe.steps, keep_mask=not recipe.structured,
                        on_step=advance,
                    )  # fmt: skip
                recoveries.append({"sparsity": target, **recovery.as_dict()})
        # Quantization comes last (after pruning here or in a parent, after recovery) and
        # must keep the zeros: GPTQ's error feedback would write into pruned positions.
        masks = {n: m.weight != 0 for n, m in prunable_linears(model).items()}
        if recipe.quant is not QuantScheme.none:
            with steps.step(f"Quantizing ({recipe.quant.value})"):
                _oneshot(model, quant_modifiers(recipe.quant), calib, recipe.seq_len)
                if not recipe.structured:
                    with torch.no_grad():
                        for n, m in prunable_linears(model).items():
                            m.weight.masked_fill_(~masks[n], 0.0)
        timings["compress_s"] = time.monotonic() - job_start

        scores = evaluation.score(model, tokenizer, steps, "the variant")
        layers = sparsity_by_layer(model)
        sparsity = overall_sparsity(model)
        pattern_ok = None
        if recipe.nm is not None:
            n, m = recipe.nm
            pattern_ok = all(
                nm_pattern_holds(x.weight, n, m) for x in prunable_linears(model).values()
            )
            if not pattern_ok:
                raise SparsegateError(f"internal: the {recipe.pattern} pattern does not hold")
        params = param_count(model)
        vocab = vocab_report or parent.quality.get("vocab")
        quality = evaluation.figures(scores, dense_scores, same_tokenizer=vocab is None)

        with steps.step("Writing the variant"):
            _save(model, tokenizer, draft.path, quantized=recipe.quant is not QuantScheme.none)
            dense_layout = sum(f.stat().st_size for f in draft.path.rglob("*") if f.is_file())
        if sparsity > 0 and not recipe.structured:
            with steps.step("Packing pruned weights sparse at rest"):
                for f in sorted(draft.path.glob("*.safetensors")):
                    pack(f)
        timings["total_s"] = time.monotonic() - start
        size = sum(f.stat().st_size for f in draft.path.rglob("*") if f.is_file())
        report = {
            "base": parent.base,
            "parent": parent.name,
            "recipe": recipe.model_dump(mode="json"),
            "evaluation": evaluation.describe(),
            "dense": dense_scores,
            "parent_scores": parent_scores,
            "dense_params": parent.param_count,
            "variant": {"scores": scores, "params": params, "sparsity": sparsity, "bytes": size},
            **quality,
            "params_ratio": params / parent.param_count,
            "bytes_ratio": size / parent.bytes_on_disk,
            # What the engine loads once the sparse files are expanded.
            "bytes_served": dense_layout,
            "vocab": vocab,
            "sparsity_by_layer": layers,
            "pattern_holds": pattern_ok,
            "before_recovery": before_recovery,
            "recovery": recoveries,
            "timings": timings,
        }
        (draft.path / "report.json").write_text(json.dumps(report, indent=2))
        variant = draft.publish(
            base=parent.base,
            parent=parent.name,
            recipe={"op": "compress", **recipe.model_dump(mode="json")},
            param_count=params,
            sparsity=sparsity,
            quality={
                **quality,
                "scores_by_eval": {evaluation.key(t): s for t, s in scores.items()},
                "pattern_holds": pattern_ok,
                "before_recovery": before_recovery,
                "eval": report["evaluation"],
                "vocab": vocab,
                "bytes_ratio": report["bytes_ratio"],
                "params_ratio": report["params_ratio"],
                "job_seconds": timings["total_s"],
            },
        )
    return variant


def _vocab_corpus(recipe: Recipe, tokenizer: Any, model: Any) -> Any:
    """Everything about trimming that can be refused is refused before any work."""
    from app.job import trim_vocab, vocab_corpus

    trim_vocab.check_k(tokenizer, recipe.trim_vocab, trim_vocab.config_token_ids(model))
    corpus = (
        vocab_corpus.read_corpus(recipe.vocab_corpus)
        if recipe.vocab_corpus
        else vocab_corpus.default_corpus()
    )
    vocab_corpus.check_disjoint(corpus)
    return corpus


def _trim_vocabulary(
    model: Any, tokenizer: Any, recipe: Recipe, corpus: Any, steps: Any
) -> tuple[Any, dict]:
    """Trim the vocabulary first: later steps calibrate, recover and quantize the model as
    it will be served, and every forward pass after it pays for K rows, not 262k."""
    from app.job import trim_vocab
    from app.job.eval_texts import EVAL_TEXTS

    n_chunks = -(-len(corpus.text) // trim_vocab.MINE_CHUNK)
    with steps.step(f"Counting tokens in {corpus.n_bytes / 1e6:.0f} MB", total=n_chunks) as advance:
        counts = trim_vocab.mine(tokenizer, corpus.text, lambda n: advance(n))
    with steps.step(f"Trimming the vocabulary to {recipe.trim_vocab} tokens"):
        plan = trim_vocab.plan(
            tokenizer, counts, recipe.trim_vocab, trim_vocab.config_token_ids(model),
            trim_vocab.written_chars(corpus.text),
        )  # fmt: skip
        trimmed = trim_vocab.trimmed_tokenizer(tokenizer, plan)
        trim_vocab.trim_model(model, plan)
        texts = {}
        for t in EVAL_TEXTS:
            text = "\n\n".join(t.documents())
            before = tokenizer(text, add_special_tokens=False)["input_ids"]
            after = trimmed(text, add_special_tokens=False)["input_ids"]
            texts[t.key] = {
                "coverage": sum(i in plan.old_to_new for i in before) / len(before),
                "tokens_per_byte_ratio": len(after) / len(before),
            }
    report = {"k": recipe.trim_vocab, **plan.as_dict(), "corpus": corpus.as_dict(),
              "corpus_share": trim_vocab.CORPUS_SHARE, "texts": texts}  # fmt: skip
    return trimmed, report


def _oneshot(model: Any, modifiers: list[Any], windows: list[list[int]], seq_len: int) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot

    _quiet_llmcompressor()
    data = Dataset.from_dict(
        {"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}
    )
    oneshot(
        model=model,
        dataset=data,
        recipe=modifiers,
        num_calibration_samples=len(windows),
        max_seq_length=seq_len,
        pipeline="sequential",
    )


def _save(model: Any, tokenizer: Any, out: Path, *, quantized: bool) -> None:
    import torch

    # The job computes in float32; the variant is stored like its base, in bf16 (int8/int4
    # packed weights for quantized layers). Pruned weights stay dense tensors with zeros:
    # current vLLM has no sparse kernels and refuses a checkpoint declaring 2:4 sparsity.
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, save_compressed=quantized, disable_sparse_compression=True)
    tokenizer.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    changed = False
    qc = config.get("quantization_config") or {}
    if qc.pop("sparsity_config", None) is not None:
        changed = True
    # llm-compressor's save rewrites config.json from the source checkpoint's file (its
    # `resave_config`), which undoes the shapes channel pruning and vocabulary trimming
    # changed (and the renumbered token ids): put them back.
    for key in _SHAPE_KEYS:
        value = getattr(model.config, key, None)
        if key in config and value is not None and config[key] != value:
            config[key] = value
            changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2))


_SHAPE_KEYS = (
    "intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size",
    "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
)  # fmt: skip


def _quiet_llmcompressor() -> None:
    """llm-compressor logs every layer it touches; the job shows progress bars instead."""
    import warnings

    from loguru import logger

    logger.remove()
    logger.add(lambda msg: console_err.print(msg, end=""), level="ERROR")
    warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded")
