"""Signing in to Azure: ``DefaultAzureCredential`` in Azure, a connection string in development.

In AKS the pods carry a workload identity (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID`` and
``AZURE_FEDERATED_TOKEN_FILE`` are injected), which ``DefaultAzureCredential`` picks up; nothing
secret is configured. A connection string (Azurite, a developer's own account) comes from
``DIFFLANE_*_CONNECTION_STRING`` or, better, ``DIFFLANE_*_CONNECTION_STRING_FILE``. It is held
as a ``SecretStr`` and never logged: errors about it name the setting, never its value.

The SDKs are imported here lazily so that a missing ``azure`` extra gives a one-line error.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import TYPE_CHECKING, Any

from difflane.errors import ConfigError, MissingExtra
from difflane.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient

# The SDKs log every HTTP request at INFO (headers redacted): one line per Blob call would drown
# the job logs. Their warnings and errors still show.
logging.getLogger("azure").setLevel(logging.WARNING)

# Blob downloads in chunks of this size: a result image is one GET, a big blob never sits whole in memory.
_CHUNK_BYTES = 4 * 1024 * 1024
_CONNECT_TIMEOUT_S = 5.0


def require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra("azure", module) from exc


@functools.cache
def default_credential() -> TokenCredential:
    """One credential per process: it caches tokens and refreshes them before they expire."""
    identity = require("azure.identity")
    credential: TokenCredential = identity.DefaultAzureCredential(exclude_interactive_browser_credential=True)
    return credential


def blob_service(settings: Settings) -> BlobServiceClient:
    """A Blob service client with timeouts, and the SDK's retries off (``difflane.azure_io`` retries)."""
    blob = require("azure.storage.blob")
    options: dict[str, Any] = {
        "connection_timeout": min(_CONNECT_TIMEOUT_S, settings.azure.azure_timeout_seconds),
        "read_timeout": settings.azure.azure_timeout_seconds,
        "retry_total": 0,
        "max_single_get_size": _CHUNK_BYTES,
        "max_chunk_get_size": _CHUNK_BYTES,
    }
    secret = settings.azure.azure_storage_connection_string
    url = settings.azure.azure_storage_account_url
    if secret is not None and url:
        raise ConfigError(
            "set one of DIFFLANE_AZURE_STORAGE_ACCOUNT_URL (workload identity) and "
            "DIFFLANE_AZURE_STORAGE_CONNECTION_STRING (development), not both"
        )
    if secret is not None:
        try:
            client: BlobServiceClient = blob.BlobServiceClient.from_connection_string(
                secret.get_secret_value(), **options
            )
        except ValueError:
            # The SDK's message may quote the string; ours names only the setting.
            raise ConfigError("DIFFLANE_AZURE_STORAGE_CONNECTION_STRING is not a valid connection string") from None
        return client
    if url:
        if not url.startswith(("https://", "http://")):
            raise ConfigError(
                "DIFFLANE_AZURE_STORAGE_ACCOUNT_URL must be a URL like https://ACCOUNT.blob.core.windows.net"
            )
        client = blob.BlobServiceClient(url, credential=default_credential(), **options)
        return client
    raise ConfigError(
        "DIFFLANE_STORE=azure needs DIFFLANE_AZURE_STORAGE_ACCOUNT_URL (signs in with DefaultAzureCredential) "
        "or DIFFLANE_AZURE_STORAGE_CONNECTION_STRING[_FILE] (development, e.g. Azurite)"
    )


def servicebus_options(settings: Settings) -> dict[str, Any]:
    # The Service Bus SDK retries on its own (exponential backoff); bound each try and the waits.
    return {
        "retry_total": settings.azure.azure_retries,
        "retry_backoff_factor": max(settings.azure.azure_retry_backoff_seconds, 0.1),
        "retry_backoff_max": 8,
    }


def servicebus_client(settings: Settings) -> Any:
    sb = require("azure.servicebus")
    secret = settings.servicebus.servicebus_connection_string
    if secret is not None and settings.servicebus.servicebus_namespace:
        raise ConfigError("set one of DIFFLANE_SERVICEBUS_NAMESPACE and DIFFLANE_SERVICEBUS_CONNECTION_STRING")
    if secret is not None:
        try:
            return sb.ServiceBusClient.from_connection_string(secret.get_secret_value(), **servicebus_options(settings))
        except ValueError:
            raise ConfigError("DIFFLANE_SERVICEBUS_CONNECTION_STRING is not a valid connection string") from None
    if settings.servicebus.servicebus_namespace:
        return sb.ServiceBusClient(
            _namespace_host(settings.servicebus.servicebus_namespace),
            default_credential(),
            **servicebus_options(settings),
        )
    raise ConfigError(
        "DIFFLANE_DISPATCH=servicebus needs DIFFLANE_SERVICEBUS_NAMESPACE (NAME.servicebus.windows.net, "
        "DefaultAzureCredential) or DIFFLANE_SERVICEBUS_CONNECTION_STRING[_FILE] (development)"
    )


def servicebus_admin(settings: Settings) -> Any:
    """Runtime counts of the queues (for the backlog metric); needs Manage rights, see the how-to."""
    management = require("azure.servicebus.management")
    secret = settings.servicebus.servicebus_connection_string
    if secret is not None:
        try:
            return management.ServiceBusAdministrationClient.from_connection_string(secret.get_secret_value())
        except ValueError:
            raise ConfigError("DIFFLANE_SERVICEBUS_CONNECTION_STRING is not a valid connection string") from None
    if settings.servicebus.servicebus_namespace:
        return management.ServiceBusAdministrationClient(
            _namespace_host(settings.servicebus.servicebus_namespace), default_credential()
        )
    return None


def _namespace_host(namespace: str) -> str:
    host = namespace.removeprefix("sb://").removeprefix("https://").rstrip("/")
    return host if "." in host else f"{host}.servicebus.windows.net"
