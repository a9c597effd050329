"""Which back end the configuration selects (SPARSEGATE_REGISTRY_URL / SPARSEGATE_ARTIFACTS)."""

from pathlib import Path

from app.config import Settings
from app.errors import SparsegateError
from app.registry.embedded import EmbeddedRegistry
from app.registry.store import Registry


def is_shared(settings: Settings | None = None) -> bool:
    settings = settings or Settings()
    return bool(settings.registry_url or settings.artifacts)


def open_registry(
    home: Path | None = None, *, create: bool = False, settings: Settings | None = None
) -> Registry:
    """The embedded registry in `home`, or the shared one (with `home` as its local cache)."""
    settings = settings or Settings()
    home = Path(home) if home is not None else settings.home
    if not is_shared(settings):
        return EmbeddedRegistry(home, create=create)
    if not (settings.registry_url and settings.artifacts):
        raise SparsegateError(
            "the shared registry needs both SPARSEGATE_REGISTRY_URL (postgresql://...) and "
            "SPARSEGATE_ARTIFACTS (s3://bucket/prefix); set both, or neither for the "
            "embedded one"
        )
    from app.registry.shared import SharedRegistry  # psycopg and boto3 only when used

    return SharedRegistry(
        home,
        settings.registry_url,
        settings.artifacts,
        create=create,
        lease_s=settings.draft_lease_s,
    )


def registry_exists(home: Path | None, settings: Settings | None = None) -> bool:
    """Whether there is a registry to read (the shared one always counts: opening it
    reports what is wrong with it)."""
    if is_shared(settings):
        return True
    return home is not None and (Path(home) / "registry.db").exists()
