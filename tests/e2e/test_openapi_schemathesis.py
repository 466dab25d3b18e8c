"""Property-based API tests generated from the gateway's own OpenAPI schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def test_no_server_errors_and_schema_conformance(redis_stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(redis_stack.base + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/search", "/v1/items/{item_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=10)

        check()
