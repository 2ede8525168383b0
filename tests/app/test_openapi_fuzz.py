"""Fuzz the local API from docs/openapi.yaml with schemathesis (issue 16): bounded, on loopback, no 500s.

The app runs in the local runtime's own API server (``start_api_server``,
real HTTP on 127.0.0.1) over moto's DynamoDB and SageMaker. The endpoint is a
real botocore ``sagemaker-runtime`` client whose InvokeEndpoint call is
answered by a ``before-call`` hook after botocore has validated the request:
the model is not what is fuzzed here, the route and its contract are.
Bounded: :data:`MAX_EXAMPLES` requests per operation (five operations), no
shrinking deadline, and the pytest timeout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import schemathesis
from app_helpers import serving_app_locally  # type: ignore[import-not-found]
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = Path(__file__).resolve().parents[2]
#: Methods a route does not have are tried too, those the local server routes to the app (it answers 405);
#: TRACE and the like stop in Python's http.server (501), and API Gateway answers them itself.
CONFIG = SchemathesisConfig.from_dict(
    {"phases": {"coverage": {"unexpected-methods": ["put", "delete", "patch"]}}}
)
# HEIC bodies are bytes like any image's: sent as the octet-stream serializer sends them.
schemathesis.serializer.alias(["image/heic", "image/heif"], "application/octet-stream")
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml", config=CONFIG)
#: Generated requests per operation; the whole run is a few hundred requests, seconds on loopback.
MAX_EXAMPLES = 40
ANSWER = {"label": "corgi", "probability": 0.9, "top_k": [{"label": "corgi", "probability": 0.9}]}


@pytest.fixture
def endpoint(env):
    """The route's sagemaker-runtime client: real botocore, answered after its request was validated."""
    from chalicelib import clients as aws_clients
    from chalicelib.lambda_runtime import reset

    reset()
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    calls: list[dict[str, Any]] = []

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        import io

        from botocore.awsrequest import AWSResponse
        from botocore.response import StreamingBody

        calls.append(params)
        payload = json.dumps(ANSWER).encode()
        http = AWSResponse("https://runtime.sagemaker.us-east-1.amazonaws.com", 200, {}, None)
        return http, {
            "Body": StreamingBody(io.BytesIO(payload), len(payload)),
            "ContentType": "application/json",
            "InvokedProductionVariant": "m1",
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }

    client.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", answer)
    aws_clients.set_client("sagemaker-runtime", client)
    yield calls
    reset()


@pytest.fixture
def local_api(aws, endpoint, monkeypatch):
    monkeypatch.setenv("BREEDLINE_CORS_ORIGINS", "https://app.example.com")
    with serving_app_locally() as url:
        yield url


def json_errors_have_a_code(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error the app answers is ``{"code", "message"}``.

    A method the route does not have (schemathesis tries them) is refused by the
    gateway, before the app: API Gateway and ``chalice local`` answer it themselves.
    """
    if case.method.upper() != case.operation.method.upper():
        assert response.status_code == 405, response.status_code
        return True
    assert response.status_code != 500
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert set(body) == {"code", "message"}, body
    return True


@pytest.mark.timeout(240)
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_the_local_api_keeps_its_contract_under_fuzzing(case, local_api):
    response = case.call(base_url=local_api, timeout=30)
    case.validate_response(
        response,
        checks=[
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            json_errors_have_a_code,
        ],
    )
    assert response.status_code != 500
