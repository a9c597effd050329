"""`sparsegate compress`: prune and/or quantize a registered model, evaluate, register."""

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from app.errors import SparsegateError
from app.job.recipe import Recipe
from app.registry import Variant, open_registry

EVAL_WINDOWS = 16


def compress(
    base: str,
    recipe: Recipe,
    home: Path,
    *,
    name: str | None = None,
    eval_windows: int = EVAL_WINDOWS,
    console: Console,
) -> Variant:
    """A short pipeline over the recipe's methods (app/job/methods/): trim the vocabulary,
    prune (to each sparsity of a schedule, recovering after each), quantize; evaluate on
    the same spans as the dense base; write, pack and register the variant."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.job.methods import Job, Stage
    from app.job.progress import Steps
    from app.job.quality import Evaluation
    from app.job.text import read_calibration_file, token_windows

    transformers.logging.set_verbosity_error()

    registry = open_registry(home)
    parent = registry.get(base)
    if parent.recipe.get("quant", "none") != "none":
        raise SparsegateError(f"{base} is quantized; compress its unquantized parent instead")
    if recipe.recover == "kd" and recipe.teacher:
        registry.get(recipe.teacher)  # an unknown teacher is refused before any work
    name = name or recipe.default_name(base)
    evaluation = Evaluation(registry, eval_windows)
    trim, prune, recover, quant = (recipe.method(s) for s in Stage)

    with registry.draft(name) as draft, Steps(console) as steps:
        start = time.monotonic()
        with steps.step(f"Loading {base}"):
            folder = registry.servable_path(base)  # sparse-at-rest parents expand
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        job = Job(recipe=recipe, model=model, tokenizer=tokenizer, steps=steps,
                  registry=registry, parent=parent)  # fmt: skip
        if recipe.calibration_data:
            job.calib_text = read_calibration_file(recipe.calibration_data)
        for method in recipe.methods():
            method.prepare(job)  # what needs the model is refused here, before any work
        # Parent and dense base are scored on the same spans as the variant (cached in
        # their records); the ratios to dense never mix evaluation sets.
        parent_scores = evaluation.reference(parent.name, job.model, job.tokenizer, steps)
        dense_scores = (
            parent_scores
            if parent.name == parent.base
            else evaluation.reference(parent.base, None, None, steps)
        )

        job_start = time.monotonic()
        vocab_report = trim.apply(job) if trim else None
        try:
            job.calib = token_windows(
                job.tokenizer, "calibration", recipe.calibration_samples, recipe.seq_len,
                job.calib_text, recipe.calibration_text,
            )  # fmt: skip
        except ValueError as e:
            raise SparsegateError(f"not enough text: {e}") from e
        recoveries: list[dict] = []
        before_recovery = None
        if recover and not prune:
            # LoRA on the dense model alone is the control that tells recovery apart from
            # what any fine-tuning on this text buys; KD here recovers a trimmed vocabulary.
            before_recovery = evaluation.score(job.model, job.tokenizer, steps, "before recovery")
            recoveries.append(recover.apply(job, 0.0) or {})
        targets, budget = recipe.schedule or [recipe.sparsity], None
        if prune and recipe.max_bpb_ratio is not None:
            from app.job.budget import search

            budget = search(job, prune, evaluation, dense_scores, recipe.max_bpb_ratio,
                            recipe.search_step)  # fmt: skip
            targets = [budget["chosen"]]
        for stage, target in enumerate(targets):
            if not prune:
                break
            if budget is None:  # the search left the model pruned at the sparsity it chose
                prune.apply(job, target)
            if recover:
                if stage == 0 or recipe.schedule is None:
                    before_recovery = evaluation.score(
                        job.model, job.tokenizer, steps, "before recovery"
                    )
                recoveries.append(recover.apply(job, target) or {})
        if quant:
            quant.apply(job)
        timings = {"compress_s": time.monotonic() - job_start}
        job.extra["budget_search"] = budget
        return _finish(
            job, draft, evaluation, dense_scores, parent_scores, vocab_report, recoveries,
            before_recovery, timings, start,
        )  # fmt: skip


def _finish(
    job: Any, draft: Any, evaluation: Any, dense_scores: dict, parent_scores: dict,
    vocab_report: dict | None, recoveries: list[dict], before_recovery: dict | None,
    timings: dict[str, float], start: float,
) -> Variant:  # fmt: skip
    """Evaluate, write, pack sparse at rest, report and register."""
    from app.job.evaluate import nm_pattern_holds
    from app.job.stats import overall_sparsity, param_count, prunable_linears, sparsity_by_layer
    from app.job.text import calibration_sources, describe
    from app.registry.sparse_store import pack

    recipe, model, tokenizer, steps, parent = (
        job.recipe,
        job.model,
        job.tokenizer,
        job.steps,
        job.parent,
    )
    _round_as_stored(model)
    scores = evaluation.score(model, tokenizer, steps, "the variant")
    layers = sparsity_by_layer(model)
    sparsity = overall_sparsity(model)
    pattern_ok = None
    if recipe.nm is not None:
        n, m = recipe.nm
        pattern_ok = all(nm_pattern_holds(x.weight, n, m) for x in prunable_linears(model).values())
        if not pattern_ok:
            raise SparsegateError(f"internal: the {recipe.pattern} pattern does not hold")
    params = param_count(model)
    vocab = vocab_report or parent.quality.get("vocab")
    quality = evaluation.figures(scores, dense_scores, same_tokenizer=vocab is None)

    with steps.step("Writing the variant"):
        _save(model, tokenizer, draft.path, quantized=recipe.quant != "none")
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
        "calibration": describe(
            calibration_sources("calibration", recipe.calibration_text, job.calib_text)
        ),
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
        "budget_search": job.extra.get("budget_search"),
        "layer_allocation": recipe.allocation,
        "timings": timings,
    }
    (draft.path / "report.json").write_text(json.dumps(report, indent=2))
    return draft.publish(
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
            "budget_search": report["budget_search"],
            "eval": report["evaluation"],
            "vocab": vocab,
            "bytes_ratio": report["bytes_ratio"],
            "params_ratio": report["params_ratio"],
            "job_seconds": timings["total_s"],
        },
    )


def _round_as_stored(model: Any) -> None:
    """Round the parameters to bf16, as `_save` stores them, computing in float32 still: the
    variant is scored on the weights it is served with (a recovery change smaller than a
    bf16 step would otherwise count in the record and vanish from the served model). Only
    parameters: buffers the checkpoint does not hold (rotary frequencies) are rebuilt in
    float32 when it is loaded, and must stay so here."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.copy_(param.to(torch.bfloat16))


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
