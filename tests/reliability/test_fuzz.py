"""Schemathesis against the service's own OpenAPI schema: generated requests on every route, each
sent with the admin token, without one and with a wrong one. No 5xx, and every response matches
the schema (status codes, content types, bodies); invalid data is rejected. CI generates up to 40
cases per operation (each sent three ways); `make test-long` (QSIM_LONG_TESTS=1) up to 100, over
2,000 calls in all."""

from __future__ import annotations

import os
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.service_fixtures import ADMIN_TOKEN, make_settings

LONG = os.environ.get("QSIM_LONG_TESTS") == "1"
EXAMPLES = 100 if LONG else 40
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
          negative_data_rejection]
AUTH_HEADERS = ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, {}, {"Authorization": "Bearer not-the-token"})

# The schema document does not depend on the database or model: build it from an app never started.
_document = create_app(make_settings("sqlite://", Path("models/default"), Path("/nonexistent"))).openapi()
schema = schemathesis.openapi.from_dict(_document)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_break_the_service_or_its_schema(case, client, stored):
    for headers in AUTH_HEADERS:
        response = client.request(**case.as_transport_kwargs(base_url=str(client.base_url), headers=headers))
        case.validate_response(response, checks=CHECKS)
