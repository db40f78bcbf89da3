"""`difflane config show` never prints a credential, wherever it hides (issue 9)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from difflane import cli
from difflane.redaction import MASK, redact

SAS = "https://acct.blob.core.windows.net/difflane?sv=2024-05-04&sr=c&sp=r&sig=c2VjcmV0LXNpZw%3D%3D"


@pytest.mark.parametrize(
    ("text", "kept", "hidden"),
    [
        (SAS, ["acct.blob.core.windows.net", "sv=2024-05-04", "sp=r"], ["c2VjcmV0"]),
        ("https://admin:hunter2@k8s.example:6443/api", ["k8s.example:6443", "/api"], ["hunter2", "admin"]),
        ("https://idp.example/?client_secret=s3cr3t&x=1", ["x=1"], ["s3cr3t"]),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=bXlrZXk=;", ["AccountName=a"], ["bXlrZXk"]),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=abc123", ["ns.servicebus"], ["abc123"]),
        ("http://127.0.0.1:8000", ["http://127.0.0.1:8000"], []),
        ("plain text", ["plain text"], []),
    ],
)
def test_credentials_are_masked_and_the_rest_kept(text: str, kept: list[str], hidden: list[str]) -> None:
    out = redact(text)
    for part in kept:
        assert part in out, out
    for part in hidden:
        assert part not in out, out
    assert (MASK in out) == bool(hidden)


def test_config_show_masks_urls_with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFLANE_AZURE_STORAGE_ACCOUNT_URL", SAS)
    monkeypatch.setenv("DIFFLANE_KUBERNETES_API_URL", "https://admin:hunter2@k8s.example:6443")
    monkeypatch.setenv("DIFFLANE_PUBLIC_URL", "https://u:p4ss@api.example")
    monkeypatch.setenv("DIFFLANE_API_URL", "http://127.0.0.1:8000/?token=tok3n")
    result = CliRunner().invoke(cli.main, ["config", "show"])
    assert result.exit_code == 0, result.output
    for secret in ("c2VjcmV0", "hunter2", "p4ss", "tok3n"):
        assert secret not in result.output
    shown = json.loads(result.output)
    assert shown["azure_storage_account_url"].startswith("https://acct.blob.core.windows.net/difflane?sv=")
