"""Property-based tests of the hub against its own OpenAPI description (schemathesis): every operation,
with generated parameters and bodies, answers a documented status, content type and schema, and never
a 500 or a stack trace. Every check of schemathesis runs except positive-data acceptance (see below).

schemathesis' pytest plugin does not load under this pytest (9.x), so each operation is driven through
its hypothesis strategy directly.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hub_fixtures import load_incident
from hub_packets import packets_batch
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from netrecall.hub.app import build_app
from netrecall.hub.openapi import openapi_document
from netrecall.hub.service import Service
from netrecall.ingest.flows import insert_packets

TOKEN = "schemathesis-token-01"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = [
    (path, method.upper())
    for path, item in openapi_document()["paths"].items()
    for method in item
    if path != "/api/ingest"  # Arrow bodies: the ingest tests cover it (schemathesis has no Arrow encoder)
]


@pytest.fixture
def hub_schema(store, tmp_path):
    load_incident(store, healthy=10)
    insert_packets(store, packets_batch())
    app = build_app(Service(store, exports_dir=tmp_path / "exports"), token=TOKEN, mcp=False)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


@pytest.mark.parametrize("path, method", OPERATIONS)
def test_operation_conforms_to_the_openapi_description(hub_schema, path, method):
    operation = hub_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=int(os.environ.get("NETRECALL_SCHEMATHESIS_EXAMPLES", "50")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case):
        # A KFL filter, SQL statement or time can be a schema-valid string and still be wrong: those are
        # documented 400s with the error shape, so "valid by schema must be accepted" does not apply.
        response = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
        assert response.status_code < 500
        assert b"Traceback" not in response.content

    check()
