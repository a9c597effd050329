"""The model registry: every variant with its files, lineage, figures and stage."""

from app.registry.names import name_from_source, validate_name
from app.registry.records import FileEntry, Stage, Variant
from app.registry.store import Draft, Registry

__all__ = [
    "Draft",
    "FileEntry",
    "Registry",
    "Stage",
    "Variant",
    "name_from_source",
    "validate_name",
]
