"""All configuration in one object, read from ``DIFFLANE_*`` environment variables.

Any setting may instead be read from a file named by ``DIFFLANE_<NAME>_FILE`` (how Key Vault
secrets are mounted in Kubernetes); the file wins over nothing but loses to an explicit value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from difflane.errors import ConfigError

PREFIX = "DIFFLANE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # where everything of the embedded shape lives
    data_dir: Path = Path(".difflane")
    database: Path | None = None  # default: <data_dir>/difflane.db
    results_dir: Path | None = None  # default: <data_dir>/results
    hf_home: Path | None = None  # default: $HF_HOME when set, else <data_dir>/hf

    # API
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_workers: int = Field(1, ge=1, le=64)  # API processes (one event loop each)
    max_body_bytes: int = Field(64 * 1024, gt=0)
    auth: Literal["none"] = "none"
    public_url: str | None = None  # base for links in responses; default: from the request

    # dispatch and workers
    store: Literal["sqlite", "memory"] = "sqlite"
    dispatch: Literal["embedded", "memory"] = "embedded"
    workers: int = Field(1, ge=0, le=64)
    # lanes a worker serves, comma-separated; empty = every lane in the catalog
    lanes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    lease_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_backoff_seconds: float = Field(2.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)

    # models
    catalog: Path | None = None  # YAML; default: the built-in catalog (model "tiny")

    # logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # --- identity, tenancy, limits, webhooks (issue 3) -------------------------------------

    # --- Azure backends (issue 5) ------------------------------------------------------------

    # --- Kubernetes dispatch and controller (issue 6) ----------------------------------------

    # --- lanes and the GPU worker (issue 4) --------------------------------------------------

    # client side (`difflane generate`)
    api_url: str = "http://127.0.0.1:8000"
    client_token: SecretStr | None = None

    @field_validator("lanes", mode="before")
    @classmethod
    def _split_lanes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSettingsSource(settings_cls))

    # --- derived paths ---------------------------------------------------------------------

    @property
    def database_path(self) -> Path:
        return self.database or self.data_dir / "difflane.db"

    @property
    def results_path(self) -> Path:
        return self.results_dir or self.data_dir / "results"

    @property
    def hf_home_path(self) -> Path:
        if self.hf_home is not None:
            return self.hf_home
        env = os.environ.get("HF_HOME")
        return Path(env) if env else self.data_dir / "hf"

    def to_env(self) -> dict[str, str]:
        """The explicitly set values as DIFFLANE_* variables, for child processes."""
        env: dict[str, str] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            env[f"{PREFIX}{name.upper()}"] = str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Every setting, secrets shown as '**********' (what `difflane config show` prints)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["database_path"] = str(self.database_path)
        out["results_path"] = str(self.results_path)
        out["hf_home_path"] = str(self.hf_home_path)
        return out


class _FileSettingsSource(PydanticBaseSettingsSource):
    """``DIFFLANE_<NAME>_FILE=/path`` → the file's content (trailing newline stripped)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        env = f"{PREFIX}{field_name.upper()}_FILE"
        path = os.environ.get(env)
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n"), field_name, False
        except OSError as exc:
            raise ConfigError(f"{env}: cannot read {path}: {exc}") from exc

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
