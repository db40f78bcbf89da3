"""Settings from the environment (and *_FILE), and catalog files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from difflane import catalog
from difflane.cli import main
from difflane.errors import ConfigError
from difflane.settings import load


def test_env_and_file_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-value\n")
    monkeypatch.setenv("DIFFLANE_PORT", "9001")
    monkeypatch.setenv("DIFFLANE_WORKER_LANES", "fast, long")
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN_FILE", str(secret))
    s = load(workers=0)
    assert s.api.port == 9001 and s.worker.worker_lanes == ["fast", "long"] and s.worker.workers == 0
    assert s.client.client_token is not None and s.client.client_token.get_secret_value() == "s3cret-value"
    assert s.paths.database_path == s.paths.data_dir / "difflane.db"


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_PORT", "9001")
    assert load(port=9002).api.port == 9002


def test_invalid_settings_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_PORT", "not-a-port")
    with pytest.raises(ConfigError):
        load()


def test_config_show_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_CLIENT_TOKEN", "s3cret-value")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0 and "s3cret-value" not in result.output
    assert json.loads(result.output)["client_token"] == "**********"


def test_catalog_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n"
        "  sd15:\n"
        "    source: org/sd15\n"
        "    revision: 0123456789abcdef0123456789abcdef01234567\n"
        "    lane: standard\n"
        "    defaults: {width: 512, height: 512, steps: 30}\n"
        "    limits: {max_width: 768, max_height: 768, max_pixels: 589824, max_steps: 50}\n"
    )
    cat = catalog.load(path)
    spec = cat.get("sd15")
    assert spec is not None and spec.lane == "standard" and spec.limits.max_steps == 50 and spec.revision_is_commit
    assert cat.lanes() == {"standard"}


@pytest.mark.parametrize(
    "text",
    [
        "models: {}",
        "not: [valid",
        "models:\n  x: {source: org/x}",  # hub model without a pinned revision
        "models:\n  x: {source: /models/x, limits: {max_width: 0}}",
        "models:\n  x: {source: /models/x, unknown_key: 1}",
        "models:\n  x: {source: /models/x, defaults: {width: 2048}}",
    ],
)
def test_bad_catalogs_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        catalog.load(path)


def test_missing_catalog_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        catalog.load(tmp_path / "absent.yaml")
