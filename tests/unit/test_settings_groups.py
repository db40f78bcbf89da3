"""Settings grouped by component: same variables as before, one table, combinations checked once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from difflane import cli
from difflane import settings as settings_mod
from difflane.errors import ConfigError
from difflane.settings import FIELD_GROUP, GROUPS, Settings, env_name

# The variables users' deployments, deploy/ and the docs used before the grouping: none may go.
TODAYS_NAMES = """
data_dir database results_dir hf_home host port api_workers max_body_bytes auth public_url store dispatch
workers lease_seconds max_attempts retry_backoff_seconds shutdown_grace_seconds device sqlite_busy_timeout_ms
sqlite_synchronous catalog log_level log_format insecure_no_auth auth_issuer auth_authority auth_audience
auth_tenants auth_default_tenant auth_token_versions auth_leeway_seconds auth_jwks_min_refresh_seconds
auth_metadata_max_age_seconds auth_http_timeout_seconds limit_outstanding_jobs limit_submit_rate
limit_submit_burst limit_queued_per_lane limit_queued_lanes limit_retry_after_seconds webhook_secret
webhook_allowed_hosts webhook_allow_http webhook_allow_private_networks webhook_timeout_seconds
webhook_concurrency webhook_per_host_concurrency webhook_per_owner_concurrency webhook_max_attempts
webhook_backoff_seconds webhook_backoff_max_seconds webhook_state metrics_backlog_refresh_seconds
http_header_timeout_seconds http_idle_timeout_seconds limit_event_streams http_max_header_bytes
azure_storage_account_url azure_storage_connection_string azure_container azure_create_container
azure_result_urls azure_result_url_ttl_seconds azure_timeout_seconds azure_retries azure_retry_backoff_seconds
azure_sweep_seconds servicebus_namespace servicebus_connection_string servicebus_queue_prefix
servicebus_max_lock_renewal_seconds kubernetes_namespace kubernetes_api_url kubernetes_worker_image
kubernetes_worker_service_account kubernetes_env_config_map kubernetes_files_config_map
kubernetes_model_cache_claim kubernetes_model_cache_host_path kubernetes_capacity_label kubernetes_kueue
kubernetes_queue_prefix kubernetes_priority_class_prefix kubernetes_backoff_limit kubernetes_ttl_seconds
kubernetes_startup_allowance_seconds kubernetes_request_timeout_seconds controller_lease_name
controller_lease_seconds controller_resync_seconds controller_image_pull_grace_seconds
controller_dispatch_after_seconds controller_health_port lanes worker_lanes runtime model_memory_budget_gb
preload health_port costs forecast_workers api_url client_token openai_wait_seconds
""".split()  # noqa: SIM905 (a list literal would take 104 lines)

ACCOUNT_URL = "https://acct.blob.core.windows.net"
AZURE = {"store": "azure", "azure_storage_account_url": ACCOUNT_URL}
IMAGE = {"kubernetes_worker_image": "registry.example/difflane-worker:1.0"}


@pytest.fixture(autouse=True)
def _no_difflane_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DIFFLANE_"):
            monkeypatch.delenv(name)


def test_every_variable_of_today_has_one_group_and_keeps_its_name() -> None:
    assert set(TODAYS_NAMES) <= set(FIELD_GROUP)  # new settings join a group; none disappears
    assert env_name("azure_container") == "DIFFLANE_AZURE_CONTAINER"
    assert not set(GROUPS) & set(FIELD_GROUP)  # `settings.<group>` never means a setting


@pytest.mark.parametrize(
    ("variable", "value", "group", "field", "expected"),
    [
        ("DIFFLANE_DATA_DIR", "/srv/dl", "paths", "data_dir", Path("/srv/dl")),
        ("DIFFLANE_LANES", "/etc/lanes.yaml", "paths", "lanes", Path("/etc/lanes.yaml")),
        ("DIFFLANE_PORT", "9001", "api", "port", 9001),
        ("DIFFLANE_HTTP_IDLE_TIMEOUT_SECONDS", "7", "api", "http_idle_timeout_seconds", 7),
        ("DIFFLANE_AUTH_TENANTS", "a, b", "identity", "auth_tenants", ["a", "b"]),
        ("DIFFLANE_LIMIT_QUEUED_LANES", "fast=1,long=2", "limits", "limit_queued_lanes", ["fast=1", "long=2"]),
        ("DIFFLANE_WEBHOOK_ALLOW_HTTP", "true", "webhooks", "webhook_allow_http", True),
        ("DIFFLANE_LEASE_SECONDS", "12.5", "backends", "lease_seconds", 12.5),
        ("DIFFLANE_WORKER_LANES", "fast,long", "worker", "worker_lanes", ["fast", "long"]),
        ("DIFFLANE_SHUTDOWN_GRACE_SECONDS", "3", "worker", "shutdown_grace_seconds", 3.0),
        ("DIFFLANE_AZURE_CONTAINER", "jobs-1", "azure", "azure_container", "jobs-1"),
        ("DIFFLANE_SERVICEBUS_QUEUE_PREFIX", "dl.", "servicebus", "servicebus_queue_prefix", "dl."),
        ("DIFFLANE_KUBERNETES_KUEUE", "1", "kubernetes", "kubernetes_kueue", True),
        ("DIFFLANE_CONTROLLER_HEALTH_PORT", "9091", "controller", "controller_health_port", 9091),
        ("DIFFLANE_FORECAST_WORKERS", "4", "capacity", "forecast_workers", 4),
        ("DIFFLANE_LOG_LEVEL", "debug", "logging", "log_level", "debug"),
        ("DIFFLANE_API_URL", "http://api.example", "client", "api_url", "http://api.example"),
        ("DIFFLANE_OPENAI_WAIT_SECONDS", "9", "openai", "openai_wait_seconds", 9.0),
        ("difflane_port", "9002", "api", "port", 9002),  # any case, as pydantic-settings matched
    ],
)
def test_a_variable_lands_in_its_group(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, group: str, field: str, expected: Any
) -> None:
    monkeypatch.setenv(variable, value)
    s = Settings()
    assert getattr(getattr(s, group), field) == expected
    assert s.explicit() == {field: expected}


def test_derived_paths_live_with_the_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HOME", raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.paths.database_path == tmp_path / "difflane.db"
    assert s.paths.results_path == tmp_path / "results" and s.paths.hf_home_path == tmp_path / "hf"


def test_a_file_variable_is_read_and_loses_to_the_variable_and_to_a_keyword(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN_FILE", str(secret))
    token = Settings().client.client_token
    assert token is not None and token.get_secret_value() == "from-file"
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN", "from-variable")
    token = Settings().client.client_token
    assert token is not None and token.get_secret_value() == "from-variable"
    token = Settings(client_token="from-keyword").client.client_token
    assert token is not None and token.get_secret_value() == "from-keyword"


def test_an_unreadable_file_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_WEBHOOK_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="DIFFLANE_WEBHOOK_SECRET_FILE"):
        Settings()


def test_flat_keywords_groups_and_cli_overrides_all_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_HOST", "0.0.0.0")
    s = Settings(port=1234, azure_container="abc", api={"api_workers": 2}, not_a_setting=1)
    assert (s.api.host, s.api.port, s.api.api_workers, s.azure.azure_container) == ("0.0.0.0", 1234, 2, "abc")
    loaded = settings_mod.load(port=4321, workers=None)  # None: the flag was not given
    assert loaded.api.port == 4321 and "workers" not in loaded.explicit()
    with pytest.raises(ConfigError, match="invalid settings"):
        settings_mod.load(port="not-a-port")


def test_model_copy_takes_flat_names_and_leaves_the_original() -> None:
    s = Settings(store="memory")
    copy = s.model_copy(update={"host": "::1", "azure_container": "other"})
    assert copy.api.host == "::1" and copy.azure.azure_container == "other" and copy.backends.store == "memory"
    assert s.api.host == "127.0.0.1" and s.azure.azure_container == "difflane"


def test_flat_fields_give_every_setting_its_field() -> None:
    fields = Settings.flat_fields()
    assert list(fields) == list(FIELD_GROUP) and fields["lease_seconds"].default == 30.0


def test_a_child_built_from_to_env_has_the_parents_explicit_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIFFLANE_LEASE_SECONDS", "7.5")
    monkeypatch.setenv("DIFFLANE_WEBHOOK_SECRET", "whsec_" + "A" * 32)
    parent = Settings(
        data_dir=tmp_path,
        worker_lanes=["fast", "long"],
        preload=False,
        auth="entra",
        auth_audience=["api://difflane"],
        auth_tenants=["*"],
        client_token=SecretStr("tok3n"),
        **AZURE,
    )
    env = parent.to_env()
    assert "DIFFLANE_WEBHOOK_SECRET" not in env and "DIFFLANE_CLIENT_TOKEN" not in env  # secrets never
    assert env["DIFFLANE_WORKER_LANES"] == "fast,long" and env["DIFFLANE_AZURE_STORAGE_ACCOUNT_URL"] == ACCOUNT_URL
    assert "DIFFLANE_PORT" not in env  # only what was set explicitly
    for name in list(os.environ):
        if name.startswith("DIFFLANE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    secrets = {"webhook_secret", "client_token"}
    assert child.explicit() == {k: v for k, v in parent.explicit().items() if k not in secrets}
    assert child == parent.model_copy(update={"webhook_secret": None, "client_token": None})


def test_redacted_keeps_todays_flat_keys_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_SERVICEBUS_CONNECTION_STRING", "Endpoint=sb://ns/;SharedAccessKey=abc123")
    shown = Settings(store="azure", azure_storage_connection_string="AccountKey=c2VjcmV0;", port=9000).redacted()
    assert list(shown) == [*FIELD_GROUP, "database_path", "results_path", "hf_home_path"]
    assert shown["azure_storage_connection_string"] == "**********" and shown["port"] == 9000
    assert shown["servicebus_connection_string"] == "**********" and shown["data_dir"] == ".difflane"
    assert "c2VjcmV0" not in json.dumps(shown) and "abc123" not in json.dumps(shown)


def test_config_show_prints_the_flat_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_LEASE_SECONDS", "9")
    result = CliRunner().invoke(cli.main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lease_seconds"] == 9.0


# --- combinations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "messages"),
    [
        ({"store": "memory", "dispatch": "embedded"}, ["DIFFLANE_STORE=memory with DIFFLANE_DISPATCH=embedded"]),
        ({"store": "memory", "dispatch": "kubernetes", **IMAGE}, ["DIFFLANE_DISPATCH=kubernetes", "memory"]),
        ({"store": "sqlite", "dispatch": "memory"}, ["DIFFLANE_STORE=sqlite with DIFFLANE_DISPATCH=memory"]),
        ({**AZURE, "dispatch": "memory"}, ["DIFFLANE_STORE=azure with DIFFLANE_DISPATCH=memory"]),
        (
            {"dispatch": "servicebus", "servicebus_namespace": "ns"},
            ["DIFFLANE_DISPATCH=servicebus needs DIFFLANE_STORE=azure", "cannot share SQLite"],
        ),
        ({"store": "azure"}, ["DIFFLANE_STORE=azure needs DIFFLANE_AZURE_STORAGE_ACCOUNT_URL", "CONNECTION_STRING"]),
        (
            {**AZURE, "dispatch": "servicebus"},
            ["DIFFLANE_DISPATCH=servicebus needs DIFFLANE_SERVICEBUS_NAMESPACE", "SERVICEBUS_CONNECTION_STRING"],
        ),
        ({"auth": "oidc", "auth_audience": ["x"]}, ["DIFFLANE_AUTH=oidc needs DIFFLANE_AUTH_ISSUER"]),
        ({"auth": "entra", "auth_tenants": ["*"]}, ["DIFFLANE_AUTH=entra needs DIFFLANE_AUTH_AUDIENCE"]),
        (
            {"auth": "oidc", "auth_issuer": "https://issuer.example"},
            ["DIFFLANE_AUTH=oidc needs DIFFLANE_AUTH_AUDIENCE"],
        ),
        # every problem at once, so one restart fixes them all
        ({"dispatch": "servicebus", "auth": "oidc"}, ["STORE=azure", "SERVICEBUS_NAMESPACE", "AUTH_ISSUER"]),
    ],
)
def test_impossible_combinations_are_refused_naming_the_variables(values: dict[str, Any], messages: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**values)
    for message in messages:
        assert message in info.value.message


def test_the_same_refusal_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_STORE", "memory")
    monkeypatch.setenv("DIFFLANE_DISPATCH", "servicebus")
    with pytest.raises(ConfigError, match="DIFFLANE_STORE=memory with DIFFLANE_DISPATCH=servicebus"):
        settings_mod.load()


@pytest.mark.parametrize(
    ("values", "store", "dispatch"),
    [
        ({}, "sqlite", "embedded"),  # the embedded default
        ({"store": "memory"}, "memory", "memory"),  # the memory shape: one names the other
        ({"dispatch": "memory"}, "memory", "memory"),
        ({"store": "memory", "dispatch": "memory"}, "memory", "memory"),
        ({**AZURE}, "azure", "embedded"),  # records in Blob Storage, the queue in SQLite
        ({**AZURE, "dispatch": "servicebus", "servicebus_namespace": "ns"}, "azure", "servicebus"),
        (
            {
                "store": "azure",
                "azure_storage_connection_string": "UseDevelopmentStorage=true",
                "dispatch": "servicebus",
            }
            | {"servicebus_connection_string": "Endpoint=sb://ns/;SharedAccessKey=k"},
            "azure",
            "servicebus",
        ),
        ({**AZURE, "dispatch": "kubernetes", **IMAGE}, "azure", "kubernetes"),
        ({"dispatch": "kubernetes", **IMAGE}, "sqlite", "kubernetes"),
        ({"dispatch": "kubernetes"}, "sqlite", "kubernetes"),  # the image is checked where a Job is made
        ({"auth": "entra", "auth_audience": ["api://x"], "auth_tenants": ["*"]}, "sqlite", "embedded"),
        ({"auth": "oidc", "auth_audience": ["x"], "auth_issuer": "https://issuer.example"}, "sqlite", "embedded"),
    ],
)
def test_possible_shapes_are_accepted(values: dict[str, Any], store: str, dispatch: str) -> None:
    s = Settings(**values)
    assert (s.backends.store, s.backends.dispatch) == (store, dispatch)


# --- per command ------------------------------------------------------------------------------------


def test_serve_refuses_workers_beside_the_memory_store() -> None:
    with pytest.raises(ConfigError, match="--workers 0") as info:
        settings_mod.check_serve(Settings(store="memory", workers=2))
    assert "own empty store" in info.value.message and "DIFFLANE_STORE=sqlite" in info.value.message
    settings_mod.check_serve(Settings(store="memory", workers=0))
    settings_mod.check_serve(Settings())


def test_serve_with_kubernetes_needs_the_image_and_no_local_workers() -> None:
    with pytest.raises(ConfigError, match="DIFFLANE_KUBERNETES_WORKER_IMAGE"):
        settings_mod.check_serve(Settings(dispatch="kubernetes", workers=0))
    with pytest.raises(ConfigError, match="--workers 0"):
        settings_mod.check_serve(Settings(dispatch="kubernetes", workers=1, **IMAGE))
    settings_mod.check_serve(Settings(dispatch="kubernetes", workers=0, **IMAGE))


def test_the_controller_needs_kubernetes_dispatch_and_the_image() -> None:
    with pytest.raises(ConfigError, match="`difflane controller` needs DIFFLANE_DISPATCH=kubernetes"):
        settings_mod.check_controller(Settings())
    with pytest.raises(ConfigError, match="DIFFLANE_KUBERNETES_WORKER_IMAGE"):
        settings_mod.check_controller(Settings(dispatch="kubernetes"))
    settings_mod.check_controller(Settings(dispatch="kubernetes", **IMAGE))


def test_a_worker_process_refuses_the_memory_store() -> None:
    with pytest.raises(ConfigError, match="own empty store"):
        settings_mod.check_worker(Settings(store="memory"))
    settings_mod.check_worker(Settings())


def test_the_commands_call_their_check_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIFFLANE_STORE", "memory")
    result = CliRunner().invoke(cli.main, ["serve", "--workers", "1", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "--workers 0" in result.output
    assert not (tmp_path / "d").exists()  # refused before anything was created
    result = CliRunner().invoke(cli.main, ["worker", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "own empty store" in result.output
    result = CliRunner().invoke(cli.main, ["run-job", "0" * 26, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1 and "own empty store" in result.output
    monkeypatch.delenv("DIFFLANE_STORE")
    result = CliRunner().invoke(cli.main, ["controller"])
    assert result.exit_code == 1 and "needs DIFFLANE_DISPATCH=kubernetes" in result.output


def test_every_setting_is_in_the_reference_under_its_group() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text(encoding="utf-8")
    sections = reference.split("\n### ")
    for name, group in FIELD_GROUP.items():
        section = next((s for s in sections if s.startswith(f"`settings.{group}`")), "")
        assert f"| `{env_name(name)}` |" in section, f"{env_name(name)} is not documented under settings.{group}"


def test_a_client_command_is_not_refused_for_a_server_combination(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_STORE", "azure")  # no account: a server would refuse to start
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN", "t0ken")
    client = settings_mod.load_client(api_url="http://127.0.0.1:1")
    assert client.api_url == "http://127.0.0.1:1" and client.client_token is not None
    assert client.client_token.get_secret_value() == "t0ken"
    result = CliRunner().invoke(cli.main, ["jobs", "show", "0" * 26, "--api-url", "http://127.0.0.1:1"])
    assert "DIFFLANE_STORE=azure needs" not in result.output  # it tried the API instead
    assert "127.0.0.1:1" in result.output


def test_the_client_token_file_is_read_and_loses_to_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN_FILE", str(tmp_path / "token"))
    token = settings_mod.load_client().client_token
    assert token is not None and token.get_secret_value() == "from-file"
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN", "from-variable")
    token = settings_mod.load_client().client_token
    assert token is not None and token.get_secret_value() == "from-variable"
