"""Where a base model comes from: a known alias, a GGUF file, a local folder, or a hub id."""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import SparsegateError
from app.job.gguf_source import PACKAGED

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Source:
    spec: str
    kind: Literal["packaged-gguf", "gguf", "local", "hub"]
    path: Path | None = None

    @property
    def default_name(self) -> str:
        from app.registry import name_from_source

        spec = self.spec.removesuffix(".gguf") if self.kind == "gguf" else self.spec
        return name_from_source(spec)


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
    if path.is_file() and path.suffix == ".gguf":
        return Source(spec, "gguf", path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise SparsegateError(
                f"{path} is neither a GGUF file nor a Hugging Face model folder (no config.json)"
            )
        return Source(spec, "local", path)
    if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "/", "~")):
        return Source(spec, "hub")
    raise SparsegateError(
        f"unknown model {spec!r}: not a packaged model ({', '.join(PACKAGED)}), "
        "a .gguf file, an existing folder, or a hub id like 'org/name'"
    )


def load(source: Source) -> Loaded:
    from app.job import gguf_source

    if source.kind == "packaged-gguf":
        packaged = PACKAGED[source.spec]
        with packaged.path() as path:
            model, tokenizer = gguf_source.load(path)
        recipe = {"package": packaged.package, "gguf_sha256": packaged.recorded_sha256()}
        return Loaded(model, tokenizer, {"format": "gguf", "gguf_file": path.name, **recipe})
    if source.kind == "gguf":
        from app.registry.files import sha256_file

        model, tokenizer = gguf_source.load(source.path)
        recipe = {"gguf_file": source.path.name, "gguf_sha256": sha256_file(source.path)}
        return Loaded(model, tokenizer, {"format": "gguf", **recipe})
    path = source.path if source.kind == "local" else _download(source.spec)
    return _load_hf(path, source)


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
