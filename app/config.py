"""Settings shared by every command, read from the environment (SPARSEGATE_*)."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPARSEGATE_")

    # Folder holding the registry database and one folder per variant (embedded back end),
    # or the local cache of fetched variants and job drafts (shared back end).
    home: Path = Path("models")
    # The shared back end, for many hosts: records in PostgreSQL (a libpq URL) and files in
    # an S3-compatible store (s3://bucket/prefix; endpoint and keys as boto3 reads them).
    registry_url: str | None = None
    artifacts: str | None = None
    # An upload not published within this long (its writer died) is collected by any host.
    draft_lease_s: float = 900.0
    # Where the two virtual environments live (the CLI hands heavy jobs to `compress`).
    venvs: Path | None = None
    # `models promote` refuses a variant whose bits per byte over its dense base's (the worse
    # of in and out of domain) exceed this.
    quality_gate: float = 1.10
