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

    from app.job.distill import token_map
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
    teacher_name = (recipe.teacher or parent.base) if recipe.recover == "kd" else None
    if teacher_name is not None:
        registry.get(teacher_name)  # an unknown teacher is refused before any work
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
        teacher = None
        if teacher_name is not None:
            with steps.step(f"Loading the teacher {teacher_name}"):
                teacher = _load(registry, teacher_name)
                token_map(tokenizer, teacher[1])  # another tokenizer is refused now
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

        def recover(model: Any, target: float, label: str) -> Any:
            if recipe.recover == "lora":
                with steps.step(f"LoRA {label}", total=recipe.steps) as advance:
                    model, recovery = lora_recover(
                        model, calib, recipe.steps, keep_mask=target > 0 and not recipe.structured,
                        on_step=advance,
                    )  # fmt: skip
                recoveries.append({"method": "lora", "sparsity": target, **recovery.as_dict()})
                return model
            assert teacher is not None
            report = _distil(model, tokenizer, teacher, calib, recipe, target, label, steps)
            recoveries.append({"method": "kd", "sparsity": target, **report})
            return model

        if recipe.prune is PruneMethod.none and recipe.recover != "none":
            # LoRA on the dense model alone is the control that tells recovery apart from
            # what any fine-tuning on this text buys; KD here recovers a trimmed vocabulary.
            before_recovery = evaluation.score(model, tokenizer, steps, "before recovery")
            model = recover(model, 0.0, "fine-tuning (dense)")
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
            if recipe.recover != "none":
                if stage == 0 or recipe.schedule is None:
                    before_recovery = evaluation.score(model, tokenizer, steps, "before recovery")
                model = recover(model, target, f"recovery ({target:.0%})")
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


def _load(registry: Any, name: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = registry.servable_path(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _distil(
    model: Any, tokenizer: Any, teacher: tuple[Any, Any], calib: list[list[int]],
    recipe: Recipe, target: float, label: str, steps: Any,
) -> dict:  # fmt: skip
    from app.job.distill import KDSettings, kd_recover, token_map

    t_model, t_tokenizer = teacher
    vocab_map = token_map(tokenizer, t_tokenizer)
    windows = list(calib)
    if recipe.teacher_text:
        with steps.step("Generating teacher text", total=recipe.teacher_text) as advance:
            windows += _teacher_windows(teacher, tokenizer, calib, recipe, advance)
    cfg = KDSettings(
        steps=recipe.steps, lr=recipe.lr or KDSettings.lr, batch=recipe.batch, seed=recipe.seed,
        temperature=recipe.temperature, ce_weight=recipe.ce_weight,
        feature_weight=recipe.feature_weight,
    )  # fmt: skip
    with steps.step(f"KD {label}", total=recipe.steps) as advance:
        report = kd_recover(
            model, t_model, windows, cfg, vocab_map=vocab_map,
            keep_mask=target > 0 and not recipe.structured,
            on_step=lambda loss: advance(1, f"loss {loss:.3f}"),
        )  # fmt: skip
    settings = {k: getattr(cfg, k) for k in ("lr", "batch", "temperature", "ce_weight",
                                             "feature_weight", "seed")}  # fmt: skip
    generated = len(windows) - len(calib)
    return {**report.as_dict(), **settings, "windows": len(windows), "teacher_windows": generated}


def _teacher_windows(
    teacher: tuple[Any, Any], tokenizer: Any, calib: list[list[int]], recipe: Recipe, advance: Any
) -> list[list[int]]:
    """Text the teacher writes from the first tokens of calibration windows (sampled,
    seeded), re-read with the student's tokenizer into windows of the same length."""
    import torch

    t_model, t_tokenizer = teacher
    torch.manual_seed(recipe.seed)
    out: list[list[int]] = []
    for i in range(recipe.teacher_text):
        prompt = tokenizer.decode(calib[i % len(calib)][:16])
        ids = t_tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = t_model.generate(
                ids, do_sample=True, top_p=0.95, temperature=1.0,
                max_new_tokens=recipe.seq_len + 64, min_new_tokens=recipe.seq_len + 64,
            )  # fmt: skip
        text = t_tokenizer.decode(gen[0], skip_special_tokens=True)
        window = tokenizer(text, add_special_tokens=False).input_ids[: recipe.seq_len]
        if len(window) == recipe.seq_len:
            out.append(window)
        advance()
    return out


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
