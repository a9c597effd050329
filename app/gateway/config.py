"""The deployment file: which variants to serve, where, and how traffic reaches them."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from app.errors import SparsegateError
from app.tenants.keys import is_digest, parse_key_file


class _Strict(BaseModel):
    """Unknown keys are refused: a misspelt `api_keys_sha256` must not start an open gateway."""

    model_config = ConfigDict(extra="forbid")


class SpawnSettings(_Strict):
    """An engine `sparsegate serve` starts itself, from the registry's files."""

    port: int
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    dtype: str = "auto"
    compile: bool = False
    attention_backend: str | None = None  # FLASH_ATTN on GPUs
    extra_args: list[str] = Field(default_factory=list)


class VariantConfig(_Strict):
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


class ShadowConfig(_Strict):
    variant: str
    fraction: float = Field(ge=0.0, le=1.0)


class AliasConfig(_Strict):
    split: dict[str, float] = Field(default_factory=dict)  # variant -> weight
    # Or: whichever served variant the registry has in production for this base
    # (resolved at start-up; `models promote` + a gateway restart moves the alias).
    production_of: str | None = None
    shadow: ShadowConfig | None = None
    # Live quality (app/gateway/quality.py): the share of the reference's responses scored
    # under every other variant of the alias (its split and its shadow), in bits per byte.
    quality_sample: float = Field(default=0.0, ge=0.0, le=1.0)
    # The variant the others are judged against: by default the split's heaviest (for
    # production_of, the production variant).
    reference: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> "AliasConfig":
        if bool(self.split) == bool(self.production_of):
            raise ValueError("an alias gives exactly one of split or production_of")
        return self


class LimitsConfig(_Strict):
    """Where tenant limits count (app/gateway/limit_store.py)."""

    # Redis shared by every gateway process and replica; else SPARSEGATE_REDIS_URL (a
    # password stays out of the file); neither: this process alone (one worker).
    redis_url: str | None = None
    # Redis unreachable: "open" lets tenant requests through uncounted (serving goes on,
    # limits do not hold meanwhile); "closed" refuses them (503) until it answers.
    on_store_error: Literal["open", "closed"] = "open"
    store_timeout_s: float = Field(default=0.25, gt=0)


class GatewayConfig(_Strict):
    max_body_bytes: int = Field(default=1 << 20, ge=1)
    max_tokens_cap: int = Field(default=4096, ge=1)
    # Applied when a request names no max_tokens: otherwise vLLM generates up to the
    # model's whole context (a chat request ran 2022 tokens, 55 s, unasked).
    default_max_tokens: int = Field(default=512, ge=1)
    # vLLM accepts n up to 16384 and logprobs over the whole vocabulary: each is a multiple
    # of a request's cost, so each has a cap (400 above it).
    max_n: int = Field(default=4, ge=1)  # n and best_of
    max_logprobs: int = Field(default=20, ge=0)  # logprobs, top_logprobs, prompt_logprobs
    max_prompts: int = Field(default=16, ge=1)  # prompts in one /v1/completions list
    request_timeout_s: float = Field(default=120.0, gt=0)
    # One cost probe round per this many requests a gateway process completes on an
    # engine (app/gateway/cost_probes.py); 0: none.
    cost_probe_every: int = Field(default=0, ge=0)
    api_keys_sha256: list[str] = Field(default_factory=list)  # each opens every route
    # Digests with scopes (app/tenants/keys.py), e.g. a Secret or volume that `sparsegate
    # keys init` filled; read once at start-up.
    api_keys_file: Path | None = None
    # Also accept the tenant keys in the registry's database (`sparsegate keys create`),
    # read again every 2 s by each gateway process (app/gateway/tenant_keys.py).
    tenant_keys: bool = False
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # A gateway without keys must say so: a missing or misspelt key list is not "open".
    open: bool = False
    _scopes: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("api_keys_sha256")
    @classmethod
    def _hex_digests(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys):
            if not is_digest(key):
                raise ValueError(
                    f"entry {i} is not a SHA-256 digest (64 hex digits): store "
                    "sha256(key).hexdigest(), never the key itself"
                )
        return [k.lower() for k in keys]

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayConfig":
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} is over max_tokens_cap "
                f"{self.max_tokens_cap}"
            )
        self._scopes = self._file_scopes() | dict.fromkeys(self.api_keys_sha256, "api")
        if not self._scopes and not self.tenant_keys and not self.open:
            raise ValueError(
                "no API keys: list their SHA-256 digests in api_keys_sha256 or api_keys_file "
                "(sparsegate keys init makes them), or set open: true to serve without keys"
            )
        if (self.api_keys_sha256 or self.api_keys_file or self.tenant_keys) and self.open:
            raise ValueError("open: true and API keys contradict each other")
        return self

    def _file_scopes(self) -> dict[str, str]:
        if self.api_keys_file is None:
            return {}
        try:
            text = self.api_keys_file.read_text()
        except OSError as e:
            raise ValueError(
                f"cannot read api_keys_file {self.api_keys_file}: {e.strerror}"
            ) from None
        try:
            return parse_key_file(text)
        except ValueError as e:
            raise ValueError(f"api_keys_file {self.api_keys_file}: {e}") from None

    @property
    def key_scopes(self) -> dict[str, str]:
        """digest -> scope of every accepted key (empty: an open gateway)."""
        return dict(self._scopes)


class Deployment(_Strict):
    gateway: GatewayConfig
    variants: dict[str, VariantConfig]
    aliases: dict[str, AliasConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "Deployment":
        for alias, cfg in self.aliases.items():
            if alias in self.variants:
                raise ValueError(f"alias {alias!r} shadows a variant of the same name")
            if cfg.reference and cfg.reference not in self.variants:
                raise ValueError(f"alias {alias!r}: reference {cfg.reference!r} is not served")
            if cfg.production_of:
                continue  # checked when resolved against the registry
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


@dataclass(frozen=True)
class QualityPlan:
    reference: str
    candidates: tuple[str, ...]
    fraction: float


def resolve_reference(cfg: AliasConfig) -> str:
    """The variant an alias's others are judged against: its `reference`, else the split's
    heaviest (a resolved `production_of` alias: the production variant)."""
    return cfg.reference or max(cfg.split, key=lambda v: cfg.split[v])


def quality_plans(deployment: Deployment) -> dict[str, QualityPlan]:
    """Per alias that samples quality: its reference and the variants judged against it."""
    plans = {}
    for alias, cfg in deployment.aliases.items():
        if not cfg.quality_sample or not cfg.split:
            continue
        reference = resolve_reference(cfg)
        others = [*cfg.split, *([cfg.shadow.variant] if cfg.shadow else [])]
        candidates = tuple(dict.fromkeys(v for v in others if v != reference))
        if candidates:
            plans[alias] = QualityPlan(reference, candidates, cfg.quality_sample)
    return plans


def resolve_production(deployment: Deployment, registry_home: Path | None) -> Deployment:
    """Turn every `production_of` alias into a split: the base's production variant first,
    the other served variants of that base as weight-0 fallbacks."""
    pending = {a: c for a, c in deployment.aliases.items() if c.production_of}
    if not pending:
        return deployment
    from app.registry import open_registry, registry_exists  # no torch in the gateway

    if not registry_exists(registry_home):
        raise SparsegateError(f"aliases {sorted(pending)} use production_of: give --registry")
    registry = open_registry(registry_home)
    try:
        served = {v.registry_name or n: n for n, v in deployment.variants.items()}
        aliases = dict(deployment.aliases)
        for alias, cfg in pending.items():
            family = [r for r in registry.variants() if r.base == cfg.production_of]
            live = [r for r in family if r.stage == "production" and r.name in served]
            if not live:
                raise SparsegateError(
                    f"alias {alias!r}: no served variant of {cfg.production_of!r} is in production"
                )
            chosen = served[live[0].name]
            rest = [served[r.name] for r in family if r.name in served and served[r.name] != chosen]
            split = {chosen: 1.0, **dict.fromkeys(rest, 0.0)}
            aliases[alias] = cfg.model_copy(update={"split": split, "production_of": None})
        return deployment.model_copy(update={"aliases": aliases})
    finally:
        registry.close()


def redis_url(deployment: Deployment) -> str | None:
    """Where tenant limits are shared, if anywhere: the file's, else the environment's."""
    return deployment.gateway.limits.redis_url or os.environ.get("SPARSEGATE_REDIS_URL") or None


def load_deployment(path: Path) -> Deployment:
    if not path.is_file():
        raise SparsegateError(f"deployment file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        raise SparsegateError(f"{path}: not valid YAML: {' '.join(first[:3])}") from e
    if not isinstance(data, dict):
        raise SparsegateError(f"{path}: a deployment file is a mapping (gateway, variants, ...)")
    gateway = data.get("gateway")
    if isinstance(gateway, dict) and isinstance(gateway.get("api_keys_file"), str):
        # relative to the deployment file, as its reader expects
        gateway["api_keys_file"] = str(path.parent / gateway["api_keys_file"])
    try:
        return Deployment.model_validate(data)
    except ValidationError as e:
        raise SparsegateError(f"{path}: {describe(e)}") from e


def describe(error: ValidationError) -> str:
    """A validation error as one line naming the key and its place (`gateway.open`)."""
    first = error.errors()[0]
    place = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {place!r}"
    if first["type"] == "missing":
        return f"missing key {place!r}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{place}: {message}{more}"
