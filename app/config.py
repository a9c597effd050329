"""Settings shared by every command, read from the environment (SPARSEGATE_*)."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPARSEGATE_")

    # Folder holding the registry database and one folder per variant.
    home: Path = Path("models")
    # Where the two virtual environments live (the CLI hands heavy jobs to `compress`).
    venvs: Path | None = None
    # `models promote` refuses a variant whose bits per byte over its dense base's (the worse
    # of in and out of domain) exceed this.
    quality_gate: float = 1.10

    @property
    def registry_db(self) -> Path:
        return self.home / "registry.db"
