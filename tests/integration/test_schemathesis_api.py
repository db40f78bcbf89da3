"""schemathesis against the API's own OpenAPI document, with a valid Entra-shaped token.

Generated requests (valid and invalid) must never produce a 5xx, and every response must match
the document: status codes, content types, headers and bodies. Bounded so that it runs in
seconds: a few examples per operation, no shrinking deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from difflane.api.app import create_app
from difflane.settings import Settings
from tests.oidc_provider import API_CLIENT_ID, TENANT_A, OidcProvider

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 15


# The schema is loaded when the module is collected (schemathesis' fixture-based loader does not
# work with pytest 9), so the identity provider starts here and stops with the module.
PROVIDER = OidcProvider().__enter__()
APP = create_app(
    Settings(
        store="memory",
        dispatch="memory",
        auth="entra",
        auth_authority=PROVIDER.url,
        auth_audience=[API_CLIENT_ID],
        auth_tenants=[TENANT_A],
        openai_wait_seconds=0.05,  # no worker here: /openai/v1 answers 504 job_pending once this passes
    )
)
# A schema-valid submit can still name a model the catalog lacks or exceed that model's limits:
# such semantic checks answer 422 with a machine-readable code, which is right, not a failure.
TOKEN = PROVIDER.token(scp=None, roles=["Jobs.Submit", "Jobs.Read", "Jobs.Admin"], exp_in=3600)
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        # Through the document's own security scheme, so schemathesis knows which cases lack auth.
        "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
        "operations": [
            {
                "include-name": "POST /v1/jobs",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}
                },
            },
            {
                # Without a worker the job never finishes: 504 job_pending is the documented answer.
                "include-name": "POST /openai/v1/images/generations",
                "checks": {
                    "not_a_server_error": {"expected-statuses": ["2xx", "4xx", "504"]},
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "504"]
                    },
                },
            },
        ],
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def _stop_provider() -> Iterator[None]:
    yield
    PROVIDER.__exit__(None, None, None)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_document_and_never_fails(case: Any) -> None:
    case.call_and_validate()


# --- what earlier runs found, kept as plain regression tests ----------------------------------


def test_a_body_that_is_not_utf8_is_422_malformed_json() -> None:
    with TestClient(APP) as client:
        r = client.post(
            "/v1/jobs",
            content=b"\xff\xfe{not utf-8",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
    assert r.status_code == 422 and r.json()["error"]["code"] == "malformed_json"


def test_405_lists_every_method_of_the_path() -> None:
    with TestClient(APP) as client:
        r = client.request("DELETE", "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"


def test_an_invalid_cursor_is_refused_by_the_documented_pattern() -> None:
    with TestClient(APP) as client:
        r = client.get("/v1/jobs", params={"cursor": "0" * 36}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"
