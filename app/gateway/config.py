"""The deployment file: which variants to serve, where, and how traffic reaches them."""

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, model_validator

from app.errors import SparsegateError


class SpawnSettings(BaseModel):
    """An engine `sparsegate serve` starts itself, from the registry's files."""

    port: int
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    dtype: str = "auto"
    compile: bool = False
    attention_backend: str | None = None  # FLASH_ATTN on GPUs
    extra_args: list[str] = Field(default_factory=list)


class VariantConfig(BaseModel):
    url: str | None = None  # an engine started elsewhere (compose service, pod)
    served_name: str | None = None  # the engine's model id, if not the variant's name
    spawn: SpawnSettings | None = None
    registry_name: str | None = None  # its registry entry, if not the variant's name
    max_inflight: int = Field(default=64, ge=1)
    price_per_hour: float = Field(default=0.0, ge=0.0)  # dollars, for the cost metrics
    request_timeout_s: float | None = Field(default=None, gt=0)  # else the gateway's

    @model_validator(mode="after")
    def _one_source(self) -> "VariantConfig":
        if (self.url is None) == (self.spawn is None):
            raise ValueError("give exactly one of url or spawn")
        return self

    @property
    def base_url(self) -> str:
        return self.url or f"http://127.0.0.1:{self.spawn.port}"


class ShadowConfig(BaseModel):
    variant: str
    fraction: float = Field(ge=0.0, le=1.0)


class AliasConfig(BaseModel):
    split: dict[str, float]  # variant -> weight
    shadow: ShadowConfig | None = None


class GatewayConfig(BaseModel):
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096
    request_timeout_s: float = 120.0
    api_keys_sha256: list[str] = Field(default_factory=list)


class Deployment(BaseModel):
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    variants: dict[str, VariantConfig]
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "Deployment":
        for alias, cfg in self.aliases.items():
            if alias in self.variants:
                raise ValueError(f"alias {alias!r} shadows a variant of the same name")
            unknown = [v for v in cfg.split if v not in self.variants]
            if cfg.shadow and cfg.shadow.variant not in self.variants:
                unknown.append(cfg.shadow.variant)
            if unknown:
                raise ValueError(f"alias {alias!r} names unknown variants {unknown}")
            if (
                not cfg.split
                or any(w < 0 for w in cfg.split.values())
                or not sum(cfg.split.values())
            ):
                raise ValueError(f"alias {alias!r}: split weights must be >= 0 with a positive sum")
        return self


def load_deployment(path: Path) -> Deployment:
    if not path.is_file():
        raise SparsegateError(f"deployment file {path} not found")
    try:
        return Deployment.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise SparsegateError(f"{path}: {' '.join(first[:3])}") from e
