"""What `sparsegate compress` is asked to do, validated before any work starts."""

import re
from enum import StrEnum

from pydantic import BaseModel, field_validator, model_validator

from app.errors import SparsegateError

MAX_SPARSITY = 0.95


class PruneMethod(StrEnum):
    none = "none"
    magnitude = "magnitude"
    wanda = "wanda"
    sparsegpt = "sparsegpt"


class QuantScheme(StrEnum):
    none = "none"
    w8a8 = "w8a8"  # int8 weights (per channel) and activations (dynamic, per token)
    w4a16 = "w4a16"  # int4 weights in groups of 128 (GPTQ), 16-bit activations


class Recipe(BaseModel):
    prune: PruneMethod = PruneMethod.none
    sparsity: float | None = None
    # unstructured; N:M, e.g. 2:4 (N zeros in every M weights); or channels (structured:
    # removes that share of MLP channels, scored by activations unless --prune magnitude)
    pattern: str = "unstructured"
    quant: QuantScheme = QuantScheme.none
    calibration_samples: int = 32
    seq_len: int = 256

    @field_validator("prune", "quant", mode="before")
    @classmethod
    def _known(cls, value: object, info) -> object:
        choices = {"prune": PruneMethod, "quant": QuantScheme}[info.field_name]
        if isinstance(value, str) and value not in {c.value for c in choices}:
            raise SparsegateError(
                f"unknown --{info.field_name} {value!r}: use one of "
                + ", ".join(c.value for c in choices)
            )
        return value

    @property
    def nm(self) -> tuple[int, int] | None:
        match = re.fullmatch(r"(\d+):(\d+)", self.pattern)
        return (int(match[1]), int(match[2])) if match else None

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.pattern not in ("unstructured", "channels") and self.nm is None:
            raise SparsegateError(
                f"unknown pattern {self.pattern!r}: use unstructured, channels or N:M such as 2:4"
            )
        if self.nm is not None:
            n, m = self.nm
            if not 0 < n < m:
                raise SparsegateError(f"pattern {self.pattern}: N must be between 1 and M-1")
            implied = n / m
            if self.sparsity is None:
                self.sparsity = implied
            elif abs(self.sparsity - implied) > 1e-9:
                raise SparsegateError(
                    f"pattern {self.pattern} means {implied:.0%} sparsity, "
                    f"but --sparsity is {self.sparsity:g}"
                )
        if self.prune is PruneMethod.none:
            if self.sparsity is not None or self.pattern != "unstructured":
                raise SparsegateError("--sparsity and --pattern need a --prune method")
            if self.quant is QuantScheme.none:
                raise SparsegateError("nothing to do: give --prune and/or --quant")
        else:
            if self.sparsity is None:
                self.sparsity = 0.5
            if not 0.0 < self.sparsity <= MAX_SPARSITY:
                raise SparsegateError(
                    f"--sparsity must be above 0.0 and at most {MAX_SPARSITY}, "
                    f"not {self.sparsity:g}"
                )
        if self.calibration_samples < 1 or self.seq_len < 16:
            raise SparsegateError("need at least 1 calibration sample of at least 16 tokens")
        return self

    @property
    def structured(self) -> bool:
        return self.pattern == "channels"

    def default_name(self, base: str) -> str:
        parts = [base]
        if self.prune is not PruneMethod.none:
            shape = self.pattern.replace(":", "of") if self.nm else f"{self.sparsity * 100:.0f}"
            if self.structured:
                shape = f"ch{shape}"
            parts.append(f"{self.prune.value}{shape}")
        if self.quant is not QuantScheme.none:
            parts.append(self.quant.value)
        return "-".join(parts)
