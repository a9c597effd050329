"""A vLLM logits processor that makes every decoding step take at least STEP_S seconds.

Loaded into a test engine with `--logits-processors tests.slow_engine:SlowSteps`, it gives an
engine that cannot finish a long generation quickly however idle the machine is, so a test of
what happens *during* a generation (a client leaving, the abort reaching vLLM) cannot pass or
fail by how fast the machine happens to be. It leaves the logits unchanged."""

import time

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

STEP_S = 0.05


class SlowSteps(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def is_argmax_invariant(self) -> bool:
        return False  # else vLLM skips it for greedy requests

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        time.sleep(STEP_S)
        return logits
