"""Property-based API tests generated from the gateway's own OpenAPI schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway_schema(redis_stack: Stack) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(redis_stack.base + "/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_server_errors_and_schema_conformance(case: schemathesis.Case) -> None:
    case.call_and_validate(timeout=10)
