"""What the registry knows about one variant."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Stage(StrEnum):
    candidate = "candidate"
    production = "production"
    retired = "retired"
    rejected = "rejected"  # rolled back by a live rollout (the reason in quality["rollout"])


class FileEntry(BaseModel):
    path: str  # relative to the variant's folder
    sha256: str
    bytes: int


class Variant(BaseModel):
    name: str
    base: str  # the dense model this descends from (itself for a base)
    parent: str | None = None  # the variant it was made from (None for a base)
    source: str = ""  # where a base came from (alias, folder, hub id)
    recipe: dict[str, Any] = Field(default_factory=dict)  # how it was made
    files: list[FileEntry] = Field(default_factory=list)
    bytes_on_disk: int = 0
    param_count: int = 0
    sparsity: float = 0.0  # measured fraction of zeros in the prunable weights
    quality: dict[str, Any] = Field(default_factory=dict)  # perplexity, fidelity, ratios...
    stage: Stage = Stage.candidate
    # Shared back end: where the files live in the object store (under its prefix).
    location: str | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def is_base(self) -> bool:
        return self.parent is None
