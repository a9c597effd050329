"""The main job's variants, defined once (deploy/variants.yaml): what `make demo` builds and
serves, what the compose `compress` service and the Kubernetes Job build, and what the
engines and gateway files rendered from it (app/deploy/render.py) serve."""

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import SparsegateError
from app.gateway.config import AliasConfig

DEFINITION = Path("deploy/variants.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Build(_Strict):
    parent: str = Field(alias="from")
    compress: list[str]  # `sparsegate compress PARENT ...` arguments, without --name
    note: str = ""  # one line, written next to the variant in the rendered files


class Engine(_Strict):
    """What every engine of the main job gets (one engine per served variant)."""

    max_model_len: int = Field(default=2048, ge=16)
    kv_cache_gib: int = Field(default=2, ge=1)
    compile: bool = True
    max_inflight: int = Field(default=32, ge=1)
    price_per_hour: float = Field(default=0.10, ge=0)
    first_port: int = Field(default=8101, ge=1024)  # spawned engines: first_port, +1, ...


class MainJob(_Strict):
    base: str
    base_note: str = ""
    build: dict[str, Build] = Field(default_factory=dict)  # a parent before its children
    serve: list[str]  # the base first: every comparison's baseline
    aliases: dict[str, dict] = Field(default_factory=dict)  # the gateway file's syntax
    engine: Engine = Field(default_factory=Engine)

    @model_validator(mode="after")
    def _consistent(self) -> "MainJob":
        known = [self.base]
        for name, step in self.build.items():
            if step.parent not in known:
                raise ValueError(f"{name} is built from {step.parent}, not defined before it")
            if "--name" in step.compress:
                raise ValueError(f"{name}: the variant's name is its key, not a --name")
            known.append(name)
        if not self.serve or self.serve[0] != self.base:
            raise ValueError(f"serve must list the base ({self.base}) first")
        if unknown := [n for n in self.serve if n not in known]:
            raise ValueError(f"serve names variants that are not defined: {', '.join(unknown)}")
        for alias, spec in self.aliases.items():
            parsed = AliasConfig.model_validate(spec)
            targets = [*parsed.split, *([parsed.shadow.variant] if parsed.shadow else [])]
            if unserved := [n for n in targets if n not in self.serve]:
                raise ValueError(f"alias {alias} routes to unserved {', '.join(unserved)}")
        return self

    def note(self, name: str) -> str:
        return self.base_note if name == self.base else self.build[name].note

    def engine_name(self, name: str) -> str:
        """The engine's service name: `engine-dense` for the base, else the suffix."""
        suffix = name.removeprefix(self.base + "-")
        return "engine-dense" if name == self.base else f"engine-{suffix}"


def load(path: Path = DEFINITION) -> MainJob:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SparsegateError(f"cannot read the definition {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SparsegateError(f"{path} is not valid YAML: {e}".replace("\n", " ")) from None
    try:
        return MainJob.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise SparsegateError(f"{path}: {where}: {first['msg']}") from None


def missing_builds(job: MainJob, registered: set[str]) -> list[tuple[str, list[str]]]:
    """(name, `compress` arguments) for each variant to build, parents first."""
    return [
        (name, [step.parent, *step.compress, "--name", name])
        for name, step in job.build.items()
        if name not in registered
    ]
