"""Running llm-compressor modifiers (`oneshot`) over the job's calibration windows."""

from typing import Any

from rich.console import Console

console_err = Console(stderr=True)


def oneshot(model: Any, modifiers: list[Any], windows: list[list[int]], seq_len: int) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot as run

    _quiet_llmcompressor()
    data = Dataset.from_dict(
        {"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}
    )
    run(
        model=model,
        dataset=data,
        recipe=modifiers,
        num_calibration_samples=len(windows),
        max_seq_length=seq_len,
        pipeline="sequential",
    )


def _quiet_llmcompressor() -> None:
    """llm-compressor logs every layer it touches; the job shows progress bars instead."""
    import warnings

    from loguru import logger

    logger.remove()
    logger.add(lambda msg: console_err.print(msg, end=""), level="ERROR")
    warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded")
