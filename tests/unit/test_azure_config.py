"""Azure configuration: which settings are needed, and secrets that never show."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from difflane import azure_auth, wiring
from difflane.errors import ConfigError
from difflane.settings import Settings

ACCOUNT_URL = "https://acct.blob.core.windows.net"
SECRET = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3Qtc2hvdw==;"


def test_store_needs_an_account_url_or_a_connection_string() -> None:
    with pytest.raises(ConfigError) as info:
        wiring.build(Settings(store="azure"))
    assert "DIFFLANE_AZURE_STORAGE_ACCOUNT_URL" in info.value.message


def test_both_ways_of_signing_in_is_a_mistake() -> None:
    settings = Settings(
        store="azure",
        azure_storage_account_url="https://acct.blob.core.windows.net",
        azure_storage_connection_string=SecretStr(SECRET),
    )
    with pytest.raises(ConfigError):
        azure_auth.blob_service(settings)


def test_a_bad_connection_string_is_named_not_shown() -> None:
    settings = Settings(store="azure", azure_storage_connection_string=SecretStr("AccountKey=oops-SECRET;nonsense"))
    with pytest.raises(ConfigError) as info:
        azure_auth.blob_service(settings)
    assert "SECRET" not in str(info.value) and "CONNECTION_STRING" in info.value.message


def test_connection_string_is_redacted_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(store="azure", azure_storage_connection_string=SecretStr(SECRET))
    caplog.set_level(logging.DEBUG)
    shown = str(settings.redacted()) + repr(settings) + str(settings)
    logging.getLogger("difflane").info("settings %s", settings)
    assert "c2VjcmV0" not in shown and "c2VjcmV0" not in caplog.text


def test_connection_string_from_a_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    secret = Path(str(tmp_path)) / "cs"
    secret.write_text(SECRET + "\n")
    monkeypatch.setenv("DIFFLANE_AZURE_STORAGE_CONNECTION_STRING_FILE", str(secret))
    settings = Settings(store="azure")
    assert settings.azure.azure_storage_connection_string is not None
    assert settings.azure.azure_storage_connection_string.get_secret_value() == SECRET
    assert azure_auth.blob_service(settings).account_name == "acct"


def test_an_account_url_uses_default_azure_credential() -> None:
    settings = Settings(store="azure", azure_storage_account_url="https://acct.blob.core.windows.net")
    service = azure_auth.blob_service(settings)  # no network until the first call
    assert type(service.credential).__name__ == "DefaultAzureCredential"
    assert service.account_name == "acct"


def test_servicebus_needs_the_azure_store() -> None:
    with pytest.raises(ConfigError) as info:
        wiring.build(Settings(store="sqlite", dispatch="servicebus"))
    assert "DIFFLANE_STORE=azure" in info.value.message


def test_servicebus_needs_a_namespace() -> None:
    with pytest.raises(ConfigError) as info:
        azure_auth.servicebus_client(Settings(dispatch="servicebus"))
    assert "DIFFLANE_SERVICEBUS_NAMESPACE" in info.value.message


def test_servicebus_namespace_short_name_is_completed() -> None:
    settings = Settings(
        store="azure", azure_storage_account_url=ACCOUNT_URL, dispatch="servicebus", servicebus_namespace="my-ns"
    )
    client = azure_auth.servicebus_client(settings)
    assert client.fully_qualified_namespace == "my-ns.servicebus.windows.net"
    client.close()


def test_account_key_urls_need_an_account_key() -> None:
    settings = Settings(
        store="azure",
        azure_storage_account_url="https://acct.blob.core.windows.net",
        azure_result_urls="account-key",
    )
    with pytest.raises(ConfigError):
        wiring._azure_signer(settings, azure_auth.blob_service(settings))
