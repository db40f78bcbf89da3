"""The committed OpenAPI document is the code's: regenerate with `difflane openapi > docs/openapi.json`."""

from __future__ import annotations

import json
from pathlib import Path

from difflane.api.app import create_app
from difflane.settings import Settings

DOC = Path(__file__).parents[2] / "docs" / "openapi.json"


def current() -> dict[str, object]:
    return create_app(Settings(store="memory", dispatch="memory")).openapi()


def test_committed_openapi_matches_the_code() -> None:
    committed = json.loads(DOC.read_text())
    assert committed == current(), "docs/openapi.json is stale: run `difflane openapi > docs/openapi.json`"


def test_validation_errors_are_documented_in_our_error_shape() -> None:
    """Operations that take input document 422 as our Problem, not FastAPI's default shape."""
    checked = 0
    for path, operations in current()["paths"].items():  # type: ignore[attr-defined]
        for method, op in operations.items():
            if not (op.get("parameters") or op.get("requestBody")) or not path.startswith("/v1/"):
                continue
            schema = op["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path)
            checked += 1
    assert checked >= 6
