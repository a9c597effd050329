"""Registry facts of the served variants: gauges for dashboards, rows for the compare view."""

from dataclasses import dataclass
from pathlib import Path

from app.metrics import definitions as m
from app.texts.evaluation import EVAL_TEXTS


@dataclass
class VariantFacts:
    variant: str  # the gateway's name
    registry_name: str
    base: str  # the registry name of its dense base
    parameters: int
    bytes: int
    sparsity: float
    ppl_ratio: float | None
    stage: str
    bpb_ratio: dict[str, float]  # evaluation text -> bits per byte over the dense base's


def load_facts(registry_home: Path | None, names: dict[str, str]) -> dict[str, VariantFacts]:
    """names: gateway variant -> registry name. Variants not in the registry are left out."""
    from app.registry import open_registry, registry_exists  # no torch in the gateway

    if not registry_exists(registry_home):
        return {}
    registry = open_registry(registry_home)
    try:
        out = {}
        for variant, reg_name in names.items():
            record = registry.find(reg_name)
            if record is None:
                continue
            ratio = 1.0 if record.is_base else record.quality.get("ppl_ratio")
            bpb = (
                {t.key: 1.0 for t in EVAL_TEXTS}
                if record.is_base
                else record.quality.get("bpb_ratio") or {}
            )
            out[variant] = VariantFacts(
                variant=variant, registry_name=reg_name, base=record.base,
                parameters=record.param_count, bytes=record.bytes_on_disk,
                sparsity=record.sparsity, ppl_ratio=ratio, stage=str(record.stage),
                bpb_ratio=bpb,
            )  # fmt: skip
        return out
    finally:
        registry.close()


def publish_facts(facts: dict[str, VariantFacts]) -> None:
    for f in facts.values():
        m.VARIANT_PARAMETERS.labels(f.variant, f.base).set(f.parameters)
        m.VARIANT_BYTES.labels(f.variant, f.base).set(f.bytes)
        m.VARIANT_SPARSITY.labels(f.variant, f.base).set(f.sparsity)
        if f.ppl_ratio is not None:
            m.VARIANT_PPL_RATIO.labels(f.variant, f.base).set(f.ppl_ratio)
        for text, ratio in f.bpb_ratio.items():
            m.VARIANT_BPB_RATIO.labels(f.variant, f.base, text).set(ratio)
