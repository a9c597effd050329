"""Write a model as an ordinary Hugging Face checkpoint that vLLM serves."""

import copy
from pathlib import Path
from typing import Any

import torch

from app.job.gguf_tokenizer import END_OF_TURN

# Tokens that end a chat turn: Gemma's, ChatML's (SmolLM2, Qwen) and Llama 3's. vLLM stops
# on the generation config's eos ids, so each one the vocabulary has is added there.
TURN_ENDS = (END_OF_TURN, "<|im_end|>", "<|eot_id|>")

# For models that come without one: enough for /v1/chat/completions to render a chat.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def write_checkpoint(model: Any, tokenizer: Any, out: Path, dtype: torch.dtype) -> None:
    # A cast copy keeps the float32 reference intact and the embedding/lm_head tie
    # (casting a state dict instead would save the tied matrix twice).
    cast = copy.deepcopy(model).to(dtype)
    cast.config.dtype = dtype
    ends = [tokenizer.convert_tokens_to_ids(t) for t in TURN_ENDS]
    ends = [i for i in ends if i not in (None, tokenizer.unk_token_id)]
    eos = cast.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if [i for i in ends if i not in eos]:
        cast.generation_config.eos_token_id = list(dict.fromkeys([*eos, *ends]))
    cast.save_pretrained(out)
    del cast
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
