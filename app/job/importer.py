"""`sparsegate models import`: bring a base model into the registry as a dense variant."""

import os
from pathlib import Path

from rich.console import Console

from app.errors import SparsegateError
from app.registry import Stage, Variant, open_registry

# bf16 keeps 8 significant bits: rounding each weight moves it by at most 2^-9 (0.2%) and
# the logits of Gemma 3 270M by 0.35% (relative L2 over 18 layers, measured). A conversion
# that maps a tensor wrongly (transposed, misnamed, norm offset, rope, tokenizer) moves them
# by tens of percent. 3% is about nine times the rounding floor and far below a real error.
DEFAULT_MAX_REL_ERROR = 0.03
DEFAULT_MIN_TOP1 = 0.95


def import_model(
    spec: str,
    home: Path,
    *,
    name: str | None = None,
    exist_ok: bool = False,
    max_rel_error: float = DEFAULT_MAX_REL_ERROR,
    min_top1: float = DEFAULT_MIN_TOP1,
    windows: int = 4,
    seq_len: int = 256,
    console: Console,
) -> Variant:
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader has its own bars
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from app.job import sources
    from app.job.checkpoint import write_checkpoint
    from app.job.fidelity import compare_logits
    from app.job.progress import Steps
    from app.job.stats import overall_sparsity, param_count
    from app.job.text import token_windows

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    source = sources.resolve(spec)
    name = name or source.default_name
    registry = open_registry(home, create=True)
    if exist_ok and (existing := registry.find(name)) is not None:
        console.print(f"{name} is already registered; nothing to do")
        return existing

    with registry.draft(name) as draft, Steps(console) as steps:
        with steps.step(f"Loading {spec}"):
            loaded = sources.load(source)
        with steps.step("Writing bf16 checkpoint"):
            write_checkpoint(loaded.model, loaded.tokenizer, draft.path, torch.bfloat16)
        with steps.step("Reloading the checkpoint"):
            converted = AutoModelForCausalLM.from_pretrained(draft.path, dtype=torch.float32)
        try:
            texts = token_windows(loaded.tokenizer, "evaluation", windows, seq_len)
        except ValueError as e:
            raise SparsegateError(f"cannot check the conversion: {e}") from e
        with steps.step("Comparing logits on held-out text", total=len(texts)) as advance:
            fidelity = compare_logits(loaded.model, converted.eval(), texts, on_window=advance)
        if fidelity.relative_logit_error > max_rel_error or fidelity.top1_agreement < min_top1:
            raise SparsegateError(
                f"conversion check failed for {spec}: relative logit error "
                f"{fidelity.relative_logit_error:.4f} (max {max_rel_error}), top-1 agreement "
                f"{fidelity.top1_agreement:.1%} (min {min_top1:.0%}); nothing registered"
            )
        variant = draft.publish(
            source=spec,
            recipe={"op": "import", "dtype": "bfloat16", **loaded.recipe},
            param_count=param_count(converted),
            sparsity=overall_sparsity(converted),
            quality={
                "fidelity": fidelity.as_dict(),
                "fidelity_check": {
                    "text": "pydoc_data evaluation split",
                    "windows": len(texts),
                    "seq_len": seq_len,
                    "max_rel_error": max_rel_error,
                    "min_top1": min_top1,
                },
            },
            # The dense base is what its alias serves until a variant is promoted.
            stage=Stage.production,
        )
    return variant
