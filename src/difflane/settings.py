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
    auth: Literal["none", "entra", "oidc"] = "none"  # see the identity section below
    public_url: str | None = None  # base for links in responses; default: from the request

    # dispatch and workers
    store: Literal["sqlite", "memory", "azure"] = "sqlite"
    dispatch: Literal["embedded", "memory", "kubernetes", "servicebus"] = "embedded"
    workers: int = Field(1, ge=0, le=64)
    # /readyz waits for a warm worker: auto = when `serve` starts workers beside the API
    # (docs/architecture/0014-readiness.md); always = a worker of this data dir; never.
    ready_requires_worker: Literal["auto", "always", "never"] = "auto"
    lease_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_backoff_seconds: float = Field(2.0, ge=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sqlite_busy_timeout_ms: int = Field(5000, ge=0)
    # normal: a 202 survives a crash of any difflane process; full: also an OS crash or power
    # loss, at the cost of an fsync per commit (docs/architecture/0007-faults-and-attempts.md).
    sqlite_synchronous: Literal["normal", "full"] = "normal"

    # models
    catalog: Path | None = None  # YAML; default: the built-in catalog (model "tiny")

    # logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, JSON otherwise

    # --- identity, tenancy, limits, webhooks (issue 3) -------------------------------------
    # `none` trusts the X-Difflane-Principal header: refused off loopback unless this is set.
    insecure_no_auth: bool = False
    auth_issuer: str | None = None  # oidc: the issuer; discovery at <issuer>/.well-known/openid-configuration
    auth_authority: str = "https://login.microsoftonline.com"  # entra: where the metadata documents live
    auth_audience: Annotated[list[str], NoDecode] = Field(default_factory=list)  # client id and/or App ID URI
    auth_tenants: Annotated[list[str], NoDecode] = Field(default_factory=list)  # entra: tenant ids, or "*"
    auth_default_tenant: str | None = None  # oidc: tenant of tokens without `tid` (unset: refused)
    auth_token_versions: Annotated[list[Literal["1", "2"]], NoDecode] = Field(default=["2"])  # "1,2": v1 too
    auth_leeway_seconds: int = Field(60, ge=0, le=300)  # clock skew allowed on exp/nbf
    auth_jwks_min_refresh_seconds: float = Field(300.0, ge=0)  # unknown `kid`: refetch keys at most this often
    auth_metadata_max_age_seconds: float = Field(86400.0, gt=0)  # refetch metadata + keys after this long
    auth_http_timeout_seconds: float = Field(5.0, gt=0)
    # Limits; unset = off with DIFFLANE_AUTH=none (one developer), the production defaults otherwise.
    limit_outstanding_jobs: int | None = Field(None, ge=0)  # queued + running per principal; 0 = no cap
    limit_submit_rate: float | None = Field(None, ge=0)  # submits per second per principal; 0 = no cap
    limit_submit_burst: int | None = Field(None, ge=1)
    limit_queued_per_lane: int | None = Field(None, ge=0)  # 0 = no cap
    limit_queued_lanes: Annotated[list[str], NoDecode] = Field(default_factory=list)  # "fast=100,long=10"
    limit_retry_after_seconds: int = Field(5, ge=1)  # Retry-After when a cap (not the rate) is hit
    # Webhooks: off until a secret is set (DIFFLANE_WEBHOOK_SECRET_FILE for a mounted secret).
    webhook_secret: SecretStr | None = None  # Standard Webhooks format: whsec_<base64 of 24-64 bytes>
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)  # host, *.domain, or *
    webhook_allow_http: bool = False  # development only
    webhook_allow_private_networks: bool = False  # development only: loopback/private receivers
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)  # one attempt's overall deadline
    webhook_concurrency: int = Field(8, ge=1, le=256)  # sender threads per API process
    webhook_per_host_concurrency: int = Field(2, ge=1)  # attempts in flight to one receiver host
    webhook_per_owner_concurrency: int = Field(2, ge=1)  # attempts in flight for one job owner
    webhook_max_attempts: int = Field(8, ge=1, le=50)
    webhook_backoff_seconds: float = Field(5.0, ge=0)  # first retry; each later one waits 4x longer
    webhook_backoff_max_seconds: float = Field(3600.0, ge=0)
    webhook_state: Path | None = None  # delivery state; default: <data_dir>/webhooks.db (store=azure: the store)

    # --- hostile input and slow clients (issue 9) ----------------------------------------------
    metrics_backlog_refresh_seconds: float = Field(15.0, gt=0)  # /metrics queue depth is read this often
    http_header_timeout_seconds: float = Field(10.0, gt=0, le=300)  # a request head must arrive in this time
    http_idle_timeout_seconds: int = Field(5, ge=1, le=300)  # an idle keep-alive connection is closed
    # open event streams per principal and API process; unset: 8 with tokens, no cap with auth=none
    limit_event_streams: int | None = Field(None, ge=0)  # 0 = no cap
    http_max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)  # request line + headers; 431 above

    @field_validator(
        "auth_audience",
        "auth_tenants",
        "auth_token_versions",
        "limit_queued_lanes",
        "webhook_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    # --- Azure backends (issue 5) ------------------------------------------------------------
    # Blob Storage: an account URL signs in with DefaultAzureCredential (workload identity in AKS);
    # a connection string is for development only (Azurite): prefer ..._CONNECTION_STRING_FILE.
    azure_storage_account_url: str | None = None  # https://<account>.blob.core.windows.net
    azure_storage_connection_string: SecretStr | None = None
    azure_container: str = Field("difflane", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    azure_create_container: bool = False  # development: create the container when missing
    # Result URLs: "stream" (the API streams after its own authorization), "user-delegation"
    # (SAS signed with a user delegation key: workload identity), "account-key" (Azurite).
    azure_result_urls: Literal["stream", "user-delegation", "account-key"] = "stream"
    azure_result_url_ttl_seconds: int = Field(300, ge=30, le=3600)  # a URL never outlives this
    azure_timeout_seconds: float = Field(10.0, gt=0, le=120)  # per Blob call (connect: at most 5 s)
    azure_retries: int = Field(5, ge=0, le=20)  # on 408/429/5xx and network errors
    azure_retry_backoff_seconds: float = Field(0.25, ge=0)  # full jitter; the cap doubles up to 8 s
    azure_sweep_seconds: float = Field(15.0, ge=0)  # outbox sweeper period (jobs whose dispatch failed); 0 = off
    # Service Bus: one queue per lane, named <prefix><lane>.
    servicebus_namespace: str | None = None  # <name>.servicebus.windows.net (DefaultAzureCredential)
    servicebus_connection_string: SecretStr | None = None  # development only
    servicebus_queue_prefix: str = Field("difflane-", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
    servicebus_max_lock_renewal_seconds: float = Field(3600.0, gt=0)  # AutoLockRenewer bound per message

    # --- Kubernetes dispatch and controller (issue 6) ----------------------------------------
    kubernetes_namespace: str = "difflane"  # where Jobs, pods and the controller's Lease live
    kubernetes_api_url: str | None = None  # default: in-cluster service account, else ~/.kube/config
    kubernetes_worker_image: str | None = None  # required with DIFFLANE_DISPATCH=kubernetes
    kubernetes_worker_service_account: str = "difflane-worker"  # carries the workload identity
    kubernetes_env_config_map: str | None = "difflane-config"  # envFrom of worker pods
    kubernetes_files_config_map: str | None = "difflane-files"  # lanes.yaml + catalog.yaml
    kubernetes_model_cache_claim: str | None = "difflane-model-cache"  # PVC with the HF cache
    kubernetes_model_cache_host_path: str | None = None  # node-local cache instead of the PVC
    kubernetes_capacity_label: str = "difflane.io/capacity"  # node-pool label: cpu, gpu, mig-<profile>
    kubernetes_kueue: bool = False  # create Jobs suspended in the lane's LocalQueue
    kubernetes_queue_prefix: str = "difflane-"  # LocalQueue <prefix><lane>
    kubernetes_priority_class_prefix: str = "difflane-"  # PriorityClass <prefix><lane> (with Kueue)
    kubernetes_backoff_limit: int = Field(2, ge=0, le=10)
    kubernetes_ttl_seconds: int = Field(3600, ge=0)  # finished Jobs are deleted after this
    kubernetes_startup_allowance_seconds: int = Field(600, ge=0)  # image pull + model load
    kubernetes_request_timeout_seconds: float = Field(10.0, gt=0)
    controller_lease_name: str = "difflane-controller"
    controller_lease_seconds: float = Field(15.0, ge=1)
    controller_resync_seconds: float = Field(60.0, gt=0)
    controller_image_pull_grace_seconds: float = Field(300.0, ge=0)
    controller_dispatch_after_seconds: float = Field(30.0, ge=0)  # a record without a Job is re-dispatched
    controller_health_port: int = Field(8081, ge=0, le=65535)  # /livez /readyz /metrics

    # --- lanes and the GPU worker (issue 4) --------------------------------------------------
    lanes: Path | None = None  # lanes YAML; default: the built-in lane "fast"
    # lanes a worker serves, comma-separated; empty = every lane a catalog model uses
    worker_lanes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    runtime: Literal["diffusers", "fake"] = "diffusers"  # "fake": no torch, for tests and benchmarks
    model_memory_budget_gb: float | None = Field(None, gt=0)  # LRU bound for loaded pipelines
    preload: bool = True  # load and warm every served model before reporting ready
    health_port: int | None = Field(None, ge=0, le=65535)  # worker's /livez /readyz /metrics

    # --- capacity (issue 15): queue position, ETA, admission by prediction ------------------
    costs: Path | None = None  # cost model YAML (docs/capacity.md); default: the tiny model on a CPU
    forecast_workers: int | None = Field(None, ge=0, le=1024)  # workers the ETA assumes; default: workers

    # client side (`difflane generate`)
    api_url: str = "http://127.0.0.1:8000"
    client_token: SecretStr | None = None

    # --- surfaces: /ui and the OpenAI Images API (issue 14) ----------------------------------
    openai_wait_seconds: float = Field(300.0, gt=0, le=3600)  # /openai/v1 waits this long for a job

    @field_validator("worker_lanes", mode="before")
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
        """The explicitly set values as DIFFLANE_* variables, for child processes.

        Secrets are left out: a child reads them where this process did (its inherited
        ``DIFFLANE_*_FILE`` or variable), so a value read from a mounted file never lands in an
        environment that ``/proc/<pid>/environ`` and crash reports show."""
        env: dict[str, str] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if value is None or isinstance(value, SecretStr):
                continue
            if isinstance(value, list):
                value = ",".join(value)
            env[f"{PREFIX}{name.upper()}"] = str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Every setting, secrets shown as '**********' (what `difflane config show` prints)."""
        from difflane.redaction import redact  # credentials inside URLs and connection strings

        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str):
                value = redact(value)
            elif isinstance(value, list):
                value = [redact(v) if isinstance(v, str) else v for v in value]
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
