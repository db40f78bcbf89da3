"""All configuration in one object, read from ``DIFFLANE_*`` environment variables.

Settings are grouped by the component that reads them (``settings.backends.store``,
``settings.azure.azure_container``); a field keeps the name of its variable, so
``DIFFLANE_AZURE_CONTAINER``, the keyword ``Settings(azure_container=...)``, the key in
``difflane config show`` and the attribute ``settings.azure.azure_container`` are one name.

Any setting may instead be read from a file named by ``DIFFLANE_<NAME>_FILE`` (how Key Vault
secrets are mounted in Kubernetes); the file wins over nothing but loses to an explicit value.

Combinations that cannot work are refused when the object is built (``_check_combinations``);
checks that matter to one command only are the ``check_*`` functions at the end, called by it.
The reference, grouped the same way: docs/settings.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from difflane.errors import ConfigError

PREFIX = "DIFFLANE_"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class _Group(BaseModel):
    """One component's settings. Field name = variable name without DIFFLANE_ (lower case)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PathSettings(_Group):
    """Where everything of the embedded shape lives, and the data files (catalog, lanes)."""

    data_dir: Path = Path(".difflane")
    database: Path | None = None  # default: <data_dir>/difflane.db
    results_dir: Path | None = None  # default: <data_dir>/results
    hf_home: Path | None = None  # default: $HF_HOME when set, else <data_dir>/hf
    catalog: Path | None = None  # models YAML; default: the built-in catalog (model "tiny")
    lanes: Path | None = None  # lanes YAML; default: the built-in lane "fast"

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


class ApiSettings(_Group):
    """The HTTP API: address, processes, and limits on what one client may send (issue 9)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64)  # API processes (one event loop each)
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    public_url: str | None = None  # base for links in responses; default: from the request
    metrics_backlog_refresh_seconds: float = Field(default=15.0, gt=0)  # /metrics queue depth is read this often
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)  # a request head must arrive in this time
    http_idle_timeout_seconds: int = Field(default=5, ge=1, le=300)  # an idle keep-alive connection is closed
    http_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)  # request line + headers; 431 above
    # /readyz waits for a warm worker: auto = when `serve` starts workers beside the API
    # (docs/architecture/0014-readiness.md); always = a worker of this data dir; never.
    ready_requires_worker: Literal["auto", "always", "never"] = "auto"


class IdentitySettings(_Group):
    """Who may call the API (issue 3). `auth` is the mode; the rest configure token validation."""

    auth: Literal["none", "entra", "oidc"] = "none"
    # `none` trusts the X-Difflane-Principal header: refused off loopback unless this is set.
    insecure_no_auth: bool = False
    auth_issuer: str | None = None  # oidc: the issuer; discovery at <issuer>/.well-known/openid-configuration
    auth_authority: str = "https://login.microsoftonline.com"  # entra: where the metadata documents live
    auth_audience: list[str] = Field(default_factory=list)  # client id and/or App ID URI
    auth_tenants: list[str] = Field(default_factory=list)  # entra: tenant ids, or "*"
    auth_default_tenant: str | None = None  # oidc: tenant of tokens without `tid` (unset: refused)
    auth_token_versions: list[Literal["1", "2"]] = Field(default=["2"])  # "1,2": v1 too
    auth_leeway_seconds: int = Field(default=60, ge=0, le=300)  # clock skew allowed on exp/nbf
    auth_jwks_min_refresh_seconds: float = Field(default=300.0, ge=0)  # unknown `kid`: refetch keys at most this often
    auth_metadata_max_age_seconds: float = Field(default=86400.0, gt=0)  # refetch metadata + keys after this long
    auth_http_timeout_seconds: float = Field(default=5.0, gt=0)

    split_csv = field_validator("auth_audience", "auth_tenants", "auth_token_versions", mode="before")(_split_csv)


class LimitSettings(_Group):
    """Per-principal and per-lane caps. Unset = off with DIFFLANE_AUTH=none, production defaults otherwise."""

    limit_outstanding_jobs: int | None = Field(default=None, ge=0)  # queued + running per principal; 0 = no cap
    limit_submit_rate: float | None = Field(default=None, ge=0)  # submits per second per principal; 0 = no cap
    limit_submit_burst: int | None = Field(default=None, ge=1)
    limit_queued_per_lane: int | None = Field(default=None, ge=0)  # 0 = no cap
    limit_queued_lanes: list[str] = Field(default_factory=list)  # "fast=100,long=10"
    limit_retry_after_seconds: int = Field(default=5, ge=1)  # Retry-After when a cap (not the rate) is hit
    # open event streams per principal and API process; unset: 8 with tokens, no cap with auth=none
    limit_event_streams: int | None = Field(default=None, ge=0)  # 0 = no cap

    split_csv = field_validator("limit_queued_lanes", mode="before")(_split_csv)


class WebhookSettings(_Group):
    """Webhooks: off until a secret is set (DIFFLANE_WEBHOOK_SECRET_FILE for a mounted secret)."""

    webhook_secret: SecretStr | None = None  # Standard Webhooks format: whsec_<base64 of 24-64 bytes>
    webhook_allowed_hosts: list[str] = Field(default_factory=list)  # host, *.domain, or *
    webhook_allow_http: bool = False  # development only
    webhook_allow_private_networks: bool = False  # development only: loopback/private receivers
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)  # one attempt's overall deadline
    webhook_concurrency: int = Field(default=8, ge=1, le=256)  # sender threads per API process
    webhook_per_host_concurrency: int = Field(default=2, ge=1)  # attempts in flight to one receiver host
    webhook_per_owner_concurrency: int = Field(default=2, ge=1)  # attempts in flight for one job owner
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_seconds: float = Field(default=5.0, ge=0)  # first retry; each later one waits 4x longer
    webhook_backoff_max_seconds: float = Field(default=3600.0, ge=0)
    webhook_state: Path | None = None  # delivery state; default: <data_dir>/webhooks.db (store=azure: the store)

    split_csv = field_validator("webhook_allowed_hosts", mode="before")(_split_csv)


class BackendSettings(_Group):
    """Which job store and dispatch backend, and the delivery rules every backend shares."""

    store: Literal["sqlite", "memory", "azure"] = "sqlite"
    dispatch: Literal["embedded", "memory", "kubernetes", "servicebus"] = "embedded"
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_seconds: float = Field(default=2.0, ge=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    # normal: a 202 survives a crash of any difflane process; full: also an OS crash or power
    # loss, at the cost of an fsync per commit (docs/architecture/0007-faults-and-attempts.md).
    sqlite_synchronous: Literal["normal", "full"] = "normal"


class WorkerSettings(_Group):
    """The GPU worker (issue 4): how many `serve` starts, which lanes, which device and runtime."""

    workers: int = Field(default=1, ge=0, le=64)  # worker processes started by `difflane serve`
    # lanes a worker serves, comma-separated; empty = every lane a catalog model uses
    worker_lanes: list[str] = Field(default_factory=list)
    runtime: Literal["diffusers", "fake"] = "diffusers"  # "fake": no torch, for tests and benchmarks
    device: Literal["auto", "cpu", "cuda"] = "auto"
    preload: bool = True  # load and warm every served model before reporting ready
    model_memory_budget_gb: float | None = Field(default=None, gt=0)  # LRU bound for loaded pipelines
    health_port: int | None = Field(default=None, ge=0, le=65535)  # worker's /livez /readyz /metrics
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # The model process's CPU share. Unset: torch's default (a thread per core) and the usual
    # priority; under `difflane serve`, where the API shares the cores, the cores left after the
    # API processes (shared by the workers, at least one each) and niceness 10 (serve.py).
    model_threads: int | None = Field(default=None, ge=1, le=1024)  # torch threads per model process
    model_nice: int | None = Field(default=None, ge=0, le=19)  # added to the model process's niceness

    split_csv = field_validator("worker_lanes", mode="before")(_split_csv)


class AzureSettings(_Group):
    """Blob Storage (issue 5): an account URL signs in with DefaultAzureCredential (workload
    identity in AKS); a connection string is for development only (Azurite): prefer ..._FILE."""

    azure_storage_account_url: str | None = None  # https://<account>.blob.core.windows.net
    azure_storage_connection_string: SecretStr | None = None
    azure_container: str = Field(default="difflane", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    azure_create_container: bool = False  # development: create the container when missing
    # Result URLs: "stream" (the API streams after its own authorization), "user-delegation"
    # (SAS signed with a user delegation key: workload identity), "account-key" (Azurite).
    azure_result_urls: Literal["stream", "user-delegation", "account-key"] = "stream"
    azure_result_url_ttl_seconds: int = Field(default=300, ge=30, le=3600)  # a URL never outlives this
    azure_timeout_seconds: float = Field(default=10.0, gt=0, le=120)  # per Blob call (connect: at most 5 s)
    azure_retries: int = Field(default=5, ge=0, le=20)  # on 408/429/5xx and network errors
    azure_retry_backoff_seconds: float = Field(default=0.25, ge=0)  # full jitter; the cap doubles up to 8 s
    azure_sweep_seconds: float = Field(
        default=15.0, ge=0
    )  # outbox sweeper period (jobs whose dispatch failed); 0 = off


class ServiceBusSettings(_Group):
    """Service Bus dispatch: one queue per lane, named <prefix><lane>."""

    servicebus_namespace: str | None = None  # <name>.servicebus.windows.net (DefaultAzureCredential)
    servicebus_connection_string: SecretStr | None = None  # development only
    servicebus_queue_prefix: str = Field(default="difflane-", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
    servicebus_max_lock_renewal_seconds: float = Field(default=3600.0, gt=0)  # AutoLockRenewer bound per message


class KubernetesSettings(_Group):
    """Kubernetes dispatch (issue 6): one batch/v1 Job per job, running `difflane run-job`."""

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
    kubernetes_backoff_limit: int = Field(default=2, ge=0, le=10)
    kubernetes_ttl_seconds: int = Field(default=3600, ge=0)  # finished Jobs are deleted after this
    kubernetes_startup_allowance_seconds: int = Field(default=600, ge=0)  # image pull + model load
    kubernetes_request_timeout_seconds: float = Field(default=10.0, gt=0)


class ControllerSettings(_Group):
    """`difflane controller`: repairs Kubernetes Jobs whose pods died or never started."""

    controller_lease_name: str = "difflane-controller"
    controller_lease_seconds: float = Field(default=15.0, ge=1)
    controller_resync_seconds: float = Field(default=60.0, gt=0)
    controller_image_pull_grace_seconds: float = Field(default=300.0, ge=0)
    controller_dispatch_after_seconds: float = Field(default=30.0, ge=0)  # a record without a Job is re-dispatched
    controller_health_port: int = Field(default=8081, ge=0, le=65535)  # /livez /readyz /metrics


MAX_FORECAST_WORKERS = 1024
FORECAST_WORKERS_FORMS = f"a number of workers from 0 to {MAX_FORECAST_WORKERS} (every lane), or lane=N,lane=N"


def _count(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) <= MAX_FORECAST_WORKERS else None


def _forecast_workers(value: Any) -> Any:
    """One number (workers serving every lane) stays a number; ``lane=N,lane=N`` becomes its
    entries, checked here so that a bad value is refused at start-up, not on the first submit."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and "=" not in value:
        count = _count(value)
        if count is None:
            raise ValueError(f"DIFFLANE_FORECAST_WORKERS: {value!r} is not {FORECAST_WORKERS_FORMS}")
        return count
    entries = _split_csv(value)
    if not isinstance(entries, list) or not entries:
        return value  # not ours to read: pydantic says what it expected
    seen: dict[str, int] = {}
    for entry in entries:
        lane, sep, number = str(entry).partition("=")
        count = _count(number)
        if not sep or not lane.strip() or count is None:
            raise ValueError(f"DIFFLANE_FORECAST_WORKERS: {entry!r} is not lane=N (N from 0 to {MAX_FORECAST_WORKERS})")
        if lane.strip() in seen:
            raise ValueError(f"DIFFLANE_FORECAST_WORKERS: lane {lane.strip()!r} is named twice")
        seen[lane.strip()] = count
    return [f"{lane}={n}" for lane, n in seen.items()]


class CapacitySettings(_Group):
    """Queue position, ETA and admission by prediction (issue 15)."""

    costs: Path | None = None  # cost model YAML (docs/capacity.md); default: the tiny model on a CPU
    # Workers the ETA assumes: N (every lane) or "fast=2,long=1" (a lane not named: none, no ETA).
    # Unset: the embedded shape's heartbeats, else DIFFLANE_WORKERS serving DIFFLANE_WORKER_LANES.
    forecast_workers: int | list[str] | None = None

    check_forecast_workers = field_validator("forecast_workers", mode="before")(_forecast_workers)

    @property
    def forecast_lane_workers(self) -> dict[str, int] | None:
        """``forecast_workers`` given per lane, as lane -> workers; None when one number or unset."""
        if not isinstance(self.forecast_workers, list):
            return None
        return {lane: int(n) for lane, _, n in (e.partition("=") for e in self.forecast_workers)}


class LogSettings(_Group):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, JSON otherwise


class ClientSettings(_Group):
    """The client side (`difflane generate`, `difflane jobs ...`)."""

    api_url: str = "http://127.0.0.1:8000"
    client_token: SecretStr | None = None


class OpenAISettings(_Group):
    """The OpenAI Images API under /openai/v1 (issue 14)."""

    openai_wait_seconds: float = Field(default=300.0, gt=0, le=3600)  # /openai/v1 waits this long for a job


# The one table: group attribute -> its model. A setting's group is found through FIELD_GROUP,
# its variable is PREFIX + name.upper(); to_env, redacted, the docs and the codemod read these.
GROUPS: dict[str, type[_Group]] = {
    "paths": PathSettings,
    "api": ApiSettings,
    "identity": IdentitySettings,
    "limits": LimitSettings,
    "webhooks": WebhookSettings,
    "backends": BackendSettings,
    "worker": WorkerSettings,
    "azure": AzureSettings,
    "servicebus": ServiceBusSettings,
    "kubernetes": KubernetesSettings,
    "controller": ControllerSettings,
    "capacity": CapacitySettings,
    "logging": LogSettings,
    "client": ClientSettings,
    "openai": OpenAISettings,
}
FIELD_GROUP: dict[str, str] = {name: group for group, model in GROUPS.items() for name in model.model_fields}


def env_name(field: str) -> str:
    """The variable of a setting: ``azure_container`` -> ``DIFFLANE_AZURE_CONTAINER``."""
    return f"{PREFIX}{field.upper()}"


def _grouped(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names (``store=...``) and whole groups (``backends={...}``) -> one dict per group.

    Unknown names are dropped, as the flat object always did (extra="ignore")."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUPS:
            if isinstance(value, _Group):
                value = {k: getattr(value, k) for k in value.model_fields_set}
            if isinstance(value, Mapping):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value  # not a mapping: let validation say so
        elif key in FIELD_GROUP:
            group = out.setdefault(FIELD_GROUP[key], {})
            if isinstance(group, dict):
                group[key] = value
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    paths: PathSettings = Field(default_factory=PathSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    backends: BackendSettings = Field(default_factory=BackendSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    servicebus: ServiceBusSettings = Field(default_factory=ServiceBusSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    capacity: CapacitySettings = Field(default_factory=CapacitySettings)
    logging: LogSettings = Field(default_factory=LogSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)

    def __init__(self, **values: Any) -> None:
        """Accepts today's flat names (``Settings(store="memory")``) as well as whole groups."""
        super().__init__(**_grouped(values))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _FileSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _distribute(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = _grouped(data)
        _memory_shape(data)
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        problems = combination_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    @classmethod
    def flat_fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its flat name (``Settings.flat_fields()["lease_seconds"].default``)."""
        return {name: GROUPS[group].model_fields[name] for name, group in FIELD_GROUP.items()}

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """As pydantic's (no validation), but ``update`` may use flat names too."""
        if not update:
            return super().model_copy(deep=deep)
        changes: dict[str, Any] = {}
        for group, values in _grouped(update).items():
            current: _Group = getattr(self, group)
            changes[group] = values if isinstance(values, _Group) else current.model_copy(update=values, deep=deep)
        return super().model_copy(update=changes, deep=deep)

    def explicit(self) -> dict[str, Any]:
        """The settings given explicitly (arguments, variables, files), by flat name."""
        return {
            name: getattr(getattr(self, group), name)
            for group in GROUPS
            for name in getattr(self, group).model_fields_set
        }

    def to_env(self) -> dict[str, str]:
        """The explicitly set values as DIFFLANE_* variables, for child processes.

        Secrets are left out: a child reads them where this process did (its inherited
        ``DIFFLANE_*_FILE`` or variable), so a value read from a mounted file never lands in an
        environment that ``/proc/<pid>/environ`` and crash reports show."""
        env: dict[str, str] = {}
        for name, value in self.explicit().items():
            if value is None or isinstance(value, SecretStr):
                continue
            if isinstance(value, list):
                value = ",".join(value)
            env[env_name(name)] = str(value)
        return env

    def redacted(self) -> dict[str, Any]:
        """Every setting by its flat name, secrets as '**********' (what `difflane config show` prints)."""
        from difflane.redaction import redact  # credentials inside URLs and connection strings

        out: dict[str, Any] = {}
        for name, group in FIELD_GROUP.items():
            value = getattr(getattr(self, group), name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str):
                value = redact(value)
            elif isinstance(value, list):
                value = [redact(v) if isinstance(v, str) else v for v in value]
            out[name] = value
        out["database_path"] = str(self.paths.database_path)
        out["results_path"] = str(self.paths.results_path)
        out["hf_home_path"] = str(self.paths.hf_home_path)
        return out


# --- where values come from -------------------------------------------------------------------


class _EnvSource(PydanticBaseSettingsSource):
    """``DIFFLANE_<NAME>`` (any case, as pydantic-settings matched) -> the raw string, by group."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every setting at once

    def __call__(self) -> dict[str, Any]:
        env = {k.lower(): v for k, v in os.environ.items()}
        return _grouped({n: env[env_name(n).lower()] for n in FIELD_GROUP if env_name(n).lower() in env})


class _FileSource(PydanticBaseSettingsSource):
    """``DIFFLANE_<NAME>_FILE=/path`` → the file's content (trailing newline stripped), by group."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every setting at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in FIELD_GROUP:
            var = f"{env_name(name)}_FILE"
            path = os.environ.get(var)
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{var}: cannot read {path}: {exc}") from exc
        return _grouped(values)


def load(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def load_client(**overrides: Any) -> ClientSettings:
    """Only the client's settings (``difflane generate``, ``difflane jobs``): a client reads its
    API URL and token, and is not refused for a server combination it never builds."""
    from pydantic import ValidationError

    values: dict[str, Any] = {}
    for source in (_FileSource(Settings), _EnvSource(Settings)):  # a variable beats its _FILE, as in Settings
        values.update(source().get("client", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ClientSettings(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


# --- combinations ---------------------------------------------------------------------------------


def _memory_shape(data: dict[str, Any]) -> None:
    """The memory shape is DIFFLANE_STORE=memory with DIFFLANE_DISPATCH=memory: records, results
    and queue in this process's memory. Naming one of them implies the other (it has no other
    partner); naming another backend beside it is refused by ``combination_problems``."""
    backends = data.get("backends")
    if not isinstance(backends, dict):
        return
    store, dispatch = backends.get("store"), backends.get("dispatch")
    if store == "memory" and dispatch is None:
        backends["dispatch"] = "memory"
    elif dispatch == "memory" and store is None:
        backends["store"] = "memory"


def combination_problems(s: Settings) -> list[str]:
    """What cannot work whichever command runs, each naming the variables to change."""
    store, dispatch = s.backends.store, s.backends.dispatch
    problems: list[str] = []
    if (store == "memory") != (dispatch == "memory"):
        problems.append(
            f"DIFFLANE_STORE={store} with DIFFLANE_DISPATCH={dispatch}: the memory store and the memory "
            "queue only work together (one process holds both); set both to memory, or neither"
        )
    if dispatch == "servicebus" and store != "azure":
        problems.append(
            "DIFFLANE_DISPATCH=servicebus needs DIFFLANE_STORE=azure: workers on other machines cannot share "
            f"{'SQLite' if store == 'sqlite' else 'a memory store'}"
        )
    if store == "azure" and not (s.azure.azure_storage_account_url or s.azure.azure_storage_connection_string):
        problems.append(
            "DIFFLANE_STORE=azure needs DIFFLANE_AZURE_STORAGE_ACCOUNT_URL (signs in with DefaultAzureCredential) "
            "or DIFFLANE_AZURE_STORAGE_CONNECTION_STRING[_FILE] (development, e.g. Azurite)"
        )
    if dispatch == "servicebus" and not (
        s.servicebus.servicebus_namespace or s.servicebus.servicebus_connection_string
    ):
        problems.append(
            "DIFFLANE_DISPATCH=servicebus needs DIFFLANE_SERVICEBUS_NAMESPACE (DefaultAzureCredential) "
            "or DIFFLANE_SERVICEBUS_CONNECTION_STRING[_FILE] (development)"
        )
    mode = s.identity.auth
    if mode == "oidc" and not s.identity.auth_issuer:
        problems.append("DIFFLANE_AUTH=oidc needs DIFFLANE_AUTH_ISSUER")
    if mode in ("entra", "oidc") and not s.identity.auth_audience:
        problems.append(
            f"DIFFLANE_AUTH={mode} needs DIFFLANE_AUTH_AUDIENCE: DIFFLANE_AUTH_AUDIENCE must name this API "
            "(client id and/or App ID URI)"
        )
    return problems


# --- per command: what only one command needs -------------------------------------------------------


def check_serve(s: Settings) -> None:
    """`difflane serve`: the API here, DIFFLANE_WORKERS worker processes beside it."""
    problems = _api_problems(s)
    if s.backends.store == "memory" and s.worker.workers > 0:
        problems.append(
            f"DIFFLANE_STORE=memory with DIFFLANE_WORKERS={s.worker.workers}: each worker process would get its "
            "own empty store and never see a job; use `--workers 0` (API only) or DIFFLANE_STORE=sqlite"
        )
    if s.backends.dispatch == "kubernetes" and s.worker.workers > 0:
        problems.append(
            f"DIFFLANE_DISPATCH=kubernetes with DIFFLANE_WORKERS={s.worker.workers}: jobs run in Kubernetes Jobs, "
            "local workers would have no queue to serve; use `--workers 0`"
        )
    _raise(problems)


def check_worker(s: Settings) -> None:
    """`difflane worker`: a process of its own, serving a queue that other processes fill."""
    problems: list[str] = []
    if s.backends.store == "memory":
        problems.append(
            "`difflane worker` cannot use DIFFLANE_STORE=memory: a worker process has its own empty store; "
            "use DIFFLANE_STORE=sqlite (one machine) or azure, or `difflane serve` with its workers"
        )
    _raise(problems)


def check_controller(s: Settings) -> None:
    """`difflane controller`: re-creates Kubernetes Jobs, so it needs what the API needs to make one."""
    if s.backends.dispatch != "kubernetes":
        raise ConfigError("`difflane controller` needs DIFFLANE_DISPATCH=kubernetes")
    _raise(_api_problems(s))


def _api_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.backends.dispatch == "kubernetes" and not s.kubernetes.kubernetes_worker_image:
        problems.append("DIFFLANE_DISPATCH=kubernetes needs DIFFLANE_KUBERNETES_WORKER_IMAGE (the worker image)")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))
