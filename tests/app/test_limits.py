"""Issue 12, items 4 and 5: the predict body limit fits what AWS delivers, at its exact edge.

A body reaches the function base64-encoded inside API Gateway's proxy event,
and Lambda takes at most its synchronous payload quota; a serverless endpoint
takes at most Serverless Inference's payload. Every limit the app accepts must
be reachable (a body at it is answered, one byte more is the route's own 413),
and a limit that cannot be reached is refused when the settings are parsed.
"""

from __future__ import annotations

import base64
import io
import json
import random
from types import SimpleNamespace

import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from app_helpers import load_event
from chalicelib import config
from chalicelib.config import Settings

ANSWER = {"label": "corgi", "probability": 0.91, "top_k": [{"label": "corgi", "probability": 0.91}]}
#: Headers a real request carries besides the sample event's: SigV4 (IAM auth) and CloudFront's (edge API).
REAL_HEADERS = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE12/20261125/us-east-1/execute-api/aws4_request, "
                     "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=" + "0f" * 32,
    "X-Amz-Date": "20261125T191005Z",
    "X-Amz-Security-Token": "IQoJb3JpZ2luX2VjE" + "A" * 1200,
    "CloudFront-Forwarded-Proto": "https",
    "CloudFront-Is-Desktop-Viewer": "true",
    "CloudFront-Is-Mobile-Viewer": "false",
    "CloudFront-Is-SmartTV-Viewer": "false",
    "CloudFront-Is-Tablet-Viewer": "false",
    "CloudFront-Viewer-Country": "DE",
    "Via": "2.0 0123456789abcdef0123456789abcdef.cloudfront.net (CloudFront)",
    "X-Amz-Cf-Id": "Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34Yz56==",
    "Content-Length": "4500000",
}
#: API Gateway REST quota on the total size of all header values (docs/app.md, "Body limits").
HEADER_VALUES_QUOTA = 10240


def photo(size: int) -> bytes:
    """A JPEG-looking body of exactly ``size`` bytes (the route only sniffs the magic bytes)."""
    return b"\xff\xd8\xff\xe0" + random.Random(size).randbytes(size - 4)


def proxy_event(data: bytes, headers: dict[str, str]) -> dict:
    """The sample predict event with this body, base64-encoded, and these extra headers (both maps)."""
    event = load_event("api_predict_jpeg.json")
    event["body"] = base64.b64encode(data).decode("ascii")
    event["headers"].update(headers)
    event["multiValueHeaders"].update({name: [value] for name, value in headers.items()})
    return event


def payload_bytes(event: dict) -> int:
    """What Lambda counts against its payload quota: the event as JSON."""
    return len(json.dumps(event).encode("utf-8"))


def lambda_call(event: dict) -> tuple[int, dict]:
    import app as chalice_app

    context = SimpleNamespace(aws_request_id="req-1", function_name="breedline-dev", memory_limit_in_mb=512,
                              invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:breedline-dev",
                              get_remaining_time_in_millis=lambda: 30000)
    response = chalice_app.app(event, context)
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def runtime(runtime: Stubber, monkeypatch: pytest.MonkeyPatch) -> Stubber:
    """conftest's stubbed runtime, under the default body limit (settings are read on the first request)."""
    monkeypatch.delenv("BREEDLINE_MAX_IMAGE_BYTES", raising=False)
    return runtime


def expect_invoke(stub: Stubber, data: bytes) -> None:
    stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(json.dumps(ANSWER).encode()), len(json.dumps(ANSWER))),
         "InvokedProductionVariant": "m1"},
        {"EndpointName": "breedline-classifier", "Body": data, "ContentType": "image/jpeg", "Accept": "application/json"},
    )


def assert_edge(stub: Stubber, limit: int) -> None:
    """A body of ``limit`` bytes reaches the endpoint; ``limit + 1`` is the route's 413 JSON, never sent on."""
    at_limit = photo(limit)
    expect_invoke(stub, at_limit)
    status, answer = lambda_call(proxy_event(at_limit, REAL_HEADERS))
    assert status == 200, answer
    stub.assert_no_pending_responses()
    status, answer = lambda_call(proxy_event(photo(limit + 1), REAL_HEADERS))
    assert (status, answer["code"]) == (413, "payload_too_large")
    assert answer["message"] == f"The image is {limit + 1} bytes; the limit is {limit} bytes. Resize it and retry"
    stub.assert_no_pending_responses()


# -- item 5: the default limit is reachable ------------------------------------------------------------


def test_default_limit_edge_through_the_lambda_entry_point(runtime):
    assert Settings.from_env({}).max_image_bytes == 4_500_000
    assert_edge(runtime, 4_500_000)


def test_the_event_of_a_body_at_the_default_limit_fits_lambdas_payload_with_real_headers():
    event = proxy_event(photo(Settings.from_env({}).max_image_bytes), REAL_HEADERS)
    assert payload_bytes(event) < config.LAMBDA_PAYLOAD_BYTES
    # the old default (4.5 MiB) filled the quota with its base64 alone
    assert config.base64_length(4718592) == config.LAMBDA_PAYLOAD_BYTES


def test_the_largest_accepted_limit_fits_even_with_api_gateways_largest_headers():
    """Header values at API Gateway's quota, JSON-escaped to twice their size, in both header maps."""
    largest = config.largest_body_bytes()
    Settings.from_env({"BREEDLINE_MAX_IMAGE_BYTES": str(largest)})  # accepted
    filler = '"' * (HEADER_VALUES_QUOTA - sum(len(v) for v in REAL_HEADERS.values()))  # each escapes to \\"
    event = proxy_event(photo(largest), {**REAL_HEADERS, "X-Filler": filler})
    assert payload_bytes(event) <= config.LAMBDA_PAYLOAD_BYTES, payload_bytes(event) - config.LAMBDA_PAYLOAD_BYTES


@pytest.mark.parametrize("raw", [str(4718592), str(config.largest_body_bytes() + 1), "0", "-5"])
def test_a_limit_whose_base64_cannot_reach_the_function_is_refused(raw):
    with pytest.raises(ValueError, match="BREEDLINE_MAX_IMAGE_BYTES") as caught:
        Settings.from_env({"BREEDLINE_MAX_IMAGE_BYTES": raw})
    if int(raw) > 0:
        assert f"use at most {config.largest_body_bytes()}" in str(caught.value)


def test_the_settings_doc_states_the_arithmetic_the_code_does():
    doc = next(v.doc for v in config.VARIABLES if v.name == "BREEDLINE_MAX_IMAGE_BYTES")
    default = Settings.from_env({}).max_image_bytes
    for figure in (config.LAMBDA_PAYLOAD_BYTES, config.base64_length(default),
                   config.LAMBDA_PAYLOAD_BYTES - config.base64_length(default), config.largest_body_bytes(),
                   config.SERVERLESS_PAYLOAD_BYTES):
        assert f"{figure:,}" in doc, figure


# -- item 4: a serverless endpoint lowers the limit to its payload -----------------------------------


def test_serverless_caps_the_limit_at_its_payload_through_the_route(runtime, monkeypatch):
    monkeypatch.setenv("BREEDLINE_SERVERLESS_MEMORY_MB", "4096")
    assert Settings.from_env({"BREEDLINE_SERVERLESS_MEMORY_MB": "4096"}).image_limit() == config.SERVERLESS_PAYLOAD_BYTES
    assert_edge(runtime, config.SERVERLESS_PAYLOAD_BYTES)


def test_a_smaller_configured_limit_stays_on_serverless_and_instances_keep_theirs():
    small = {"BREEDLINE_MAX_IMAGE_BYTES": "1000000"}
    assert Settings.from_env({**small, "BREEDLINE_SERVERLESS_MEMORY_MB": "2048"}).image_limit() == 1_000_000
    assert Settings.from_env({}).image_limit() == 4_500_000


@pytest.mark.parametrize("raw", ["1500", "512", "8192", "-1", "3000"])
def test_a_memory_size_aws_does_not_offer_is_refused_at_parse(raw):
    with pytest.raises(ValueError, match=rf"BREEDLINE_SERVERLESS_MEMORY_MB={raw} is not a Serverless Inference "
                                         r"memory size: use 0 \(instances\) or one of 1024, 2048, 3072, 4096, 5120, 6144"):
        Settings.from_env({"BREEDLINE_SERVERLESS_MEMORY_MB": raw})


@pytest.mark.parametrize("size", config.SERVERLESS_MEMORY_SIZES + (0,))
def test_every_offered_memory_size_parses(size):
    assert Settings.from_env({"BREEDLINE_SERVERLESS_MEMORY_MB": str(size)}).serverless_memory_mb == size
