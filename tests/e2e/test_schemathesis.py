"""Property-based API testing: schemathesis generates requests from the service's OpenAPI
document and sends them to a real server on loopback. No response may be a 5xx, and every
response must match what the schema documents (status, content type, headers, body).

The document is the app's own ``openapi()``, the very JSON the server publishes at
``/openapi.json`` (a test below checks that they are equal); it is loaded at import because
schemathesis parametrizes at collection time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from app.config import Settings
from app.main import create_app
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
EXAMPLES_PER_OPERATION = 40  # bounded, so the suite stays fast
OPENAPI = create_app(Settings()).openapi()
# A schema-valid request may still be refused for what no schema can say, because it depends on
# the model served: more `dimensions` than it has (400), a token id past its vocabulary or more
# tokens than it takes (422), a size limit from the settings (413). Those statuses join the
# usual ones that count as "accepted" for valid data; a 5xx never does.
ACCEPTED = ["2xx", "401", "403", "404", "409", "429", "400", "413", "422"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}}}
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


def test_the_schema_under_test_is_the_one_the_server_publishes(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_honours_its_schema(case: schemathesis.Case[Any], server: Server) -> None:
    case.call_and_validate(base_url=server.url, timeout=30)
