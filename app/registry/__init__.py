"""The model registry: every variant with its files, lineage, figures and stage.

Two back ends behind one interface (`Registry`): embedded (SQLite and a folder, one
machine) and shared (PostgreSQL and an S3-compatible store, many hosts); `open_registry`
picks the one the configuration names.
"""

from app.registry.names import name_from_source, validate_name
from app.registry.open import is_shared, open_registry, registry_exists
from app.registry.records import FileEntry, Stage, Variant
from app.registry.store import Draft, Registry

__all__ = [
    "Draft",
    "FileEntry",
    "Registry",
    "Stage",
    "Variant",
    "is_shared",
    "name_from_source",
    "open_registry",
    "registry_exists",
    "validate_name",
]
