"""POST /predict: every error code, and a good image answered by a stubbed endpoint.

The endpoint is a real botocore sagemaker-runtime client under Stubber (moto's
runtime cannot take binary bodies). The last tests feed the
API Gateway sample events to the Lambda entry point itself (base64 bodies).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from types import SimpleNamespace

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.response import StreamingBody

from app_helpers import load_event
from chalicelib import api
from chalicelib import clients as aws_clients
from chalicelib.lambda_runtime import reset
from chalicelib.predict import ALL_ERRORS

JPEG = base64.b64decode(load_event("api_predict_jpeg.json")["body"])
def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(out, "PNG")
    return out.getvalue()


#: A real, complete PNG: the route reads its IHDR and looks for its IEND (issue 15, items 7 and 12).
PNG = _png()
ANSWER = {
    "label": "corgi",
    "probability": 0.91,
    "top_k": [{"label": "corgi", "probability": 0.91}, {"label": "beagle", "probability": 0.06}],
    "abstained": False,
}


@pytest.fixture
def http(env, tmp_path):
    from chalice.test import Client

    import app as chalice_app

    with Client(chalice_app.app, project_dir=str(tmp_path)) as client:
        yield client.http


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def post(http, data, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = http.post("/predict", body=data, headers=headers)
    payload = json.loads(response.body)
    if response.status_code != 200:
        assert set(payload) == {"code", "message"} and payload["message"]
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, payload


def test_good_jpeg_is_answered_by_the_endpoint(http, runtime):
    runtime.add_response(
        "invoke_endpoint",
        {"Body": body(json.dumps(ANSWER).encode()), "ContentType": "application/json", "InvokedProductionVariant": "breedline-dogs-1-final"},
        {"EndpointName": "breedline-classifier", "Body": JPEG, "ContentType": "image/jpeg", "Accept": "application/json"},
    )
    status, payload = post(http, JPEG, "image/jpeg")
    assert status == 200
    assert payload == {**ANSWER, "model": "breedline-dogs-1-final"}
    runtime.assert_no_pending_responses()


def test_good_png_is_forwarded_as_png(http, runtime, monkeypatch):
    monkeypatch.setattr(api, "store", lambda s: (_ for _ in ()).throw(RuntimeError("no table")))
    runtime.add_response(
        "invoke_endpoint",
        {"Body": body(json.dumps(ANSWER).encode())},
        {"EndpointName": "breedline-classifier", "Body": PNG, "ContentType": "image/png", "Accept": "application/json"},
    )
    status, payload = post(http, PNG, "image/png")
    # no variant header and no readable state: the endpoint name, and still a 200
    assert status == 200 and payload["model"] == "breedline-classifier"


def test_stable_variant_reports_the_live_model_name(http, runtime, monkeypatch):
    reads = []

    class Store:
        def live_model(self):
            reads.append(1)
            return {"model": "breedline-dogs-2-final"}

    monkeypatch.setattr(api, "store", lambda s: Store())
    for _ in range(3):
        runtime.add_response("invoke_endpoint", {"Body": body(json.dumps(ANSWER).encode()), "InvokedProductionVariant": "AllTraffic"})
        assert post(http, JPEG, "image/jpeg")[1]["model"] == "breedline-dogs-2-final"
    assert len(reads) == 1  # cached: one state read per minute, not per request


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, depth: int, colour: int) -> bytes:
    """A PNG's signature, IHDR and IEND: all the route reads (no pixel data, so tiny)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


BAD_REQUESTS = [
        (JPEG, "text/plain", 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 40, "image/jpeg", 415, "unsupported_media_type"),  # refused whatever the type says
        (png_header_only(8900, 8900, 16, 0), "image/png", 413, "image_too_large"),  # issue 15's 16-bit bomb
        (PNG[:-12], "image/png", 400, "undecodable_image"),  # truncated: no IEND
        (JPEG, None, 415, "unsupported_media_type"),
        (PNG, "image/jpeg", 415, "content_type_mismatch"),
        (b"", "image/jpeg", 400, "empty_body"),
        (b"this is not an image", "image/jpeg", 400, "not_an_image"),
        (JPEG + b"\x00" * 5000, "image/jpeg", 413, "payload_too_large"),
        (b"--x\r\n", "multipart/form-data", 400, "bad_multipart"),  # no boundary (tests/app/test_predict_forms.py)
]


@pytest.mark.parametrize("data, content_type, status, code", BAD_REQUESTS)
def test_bad_requests_never_reach_the_endpoint(http, runtime, monkeypatch, data, content_type, status, code):
    monkeypatch.setenv("BREEDLINE_MAX_IMAGE_BYTES", "4096")
    got_status, payload = post(http, data, content_type)
    assert (got_status, payload["code"]) == (status, code)
    runtime.assert_no_pending_responses()  # nothing was expected, nothing was called


ENDPOINT_ERRORS = [
        (dict(service_error_code="ValidationError", service_message="Endpoint breedline-classifier of account 123456789012 not found.", http_status_code=400), 503, "model_not_deployed"),
        (dict(service_error_code="ValidationError", service_message="Endpoint breedline-classifier is not in service", http_status_code=400), 503, "endpoint_not_ready"),
        (dict(service_error_code="ModelNotReadyException", service_message="Model is loading", http_status_code=429), 503, "endpoint_not_ready"),
        (dict(service_error_code="ThrottlingException", service_message="Rate exceeded", http_status_code=400), 503, "endpoint_busy"),
        (dict(service_error_code="ModelError", service_message="Received client error (400)", http_status_code=424, modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": "cannot identify image file"}), 400, "undecodable_image"),
        (dict(service_error_code="ModelError", service_message="Received client error (413)", http_status_code=424, modeled_fields={"OriginalStatusCode": 413}), 413, "payload_too_large"),
        (dict(service_error_code="ModelError", service_message="Received server error (500)", http_status_code=424, modeled_fields={"OriginalStatusCode": 500, "OriginalMessage": "CUDA error"}), 502, "model_error"),
        # The serving toolkit's body: inference.py's JSON error, a newline, the trace. Its code is kept.
        (dict(service_error_code="ModelError", service_message="Received client error (400)", http_status_code=424, modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": '{"code": "empty_body", "message": "empty request body", "status_code": 400}\nTraceback (most recent call last):\n  ...'}), 400, "empty_body"),
        (dict(service_error_code="ModelError", service_message="Received client error (415)", http_status_code=424, modeled_fields={"OriginalStatusCode": 415, "OriginalMessage": '{"code": "unsupported_media_type", "message": "no", "status_code": 415}\nTraceback'}), 415, "unsupported_media_type"),
        (dict(service_error_code="ModelError", service_message="Received client error (406)", http_status_code=424, modeled_fields={"OriginalStatusCode": 406, "OriginalMessage": "cannot answer in text/csv"}), 406, "not_acceptable"),
        (dict(service_error_code="ModelError", service_message="Received client error (404)", http_status_code=424, modeled_fields={"OriginalStatusCode": 404, "OriginalMessage": "not found"}), 400, "model_rejected_request"),
        (dict(service_error_code="InternalFailure", service_message="boom", http_status_code=500), 502, "model_error"),
]
#: Codes produced by the dedicated tests below the tables.
OTHER_CODES = {"bad_model_response", "endpoint_unreachable", "endpoint_timeout", "internal_error",
               "invalid_parameter"}  # the last: test_a_bad_abstain_parameter_is_a_400


@pytest.mark.parametrize("error, status, code", ENDPOINT_ERRORS)
def test_endpoint_errors_map_to_stable_codes(http, runtime, error, status, code):
    runtime.add_client_error("invoke_endpoint", **error)
    got_status, payload = post(http, JPEG, "image/jpeg")
    assert (got_status, payload["code"]) == (status, code)


def test_non_json_model_answer_is_a_502(http, runtime):
    runtime.add_response("invoke_endpoint", {"Body": body(b"<html>Internal error</html>")})
    assert post(http, JPEG, "image/jpeg")[1]["code"] == "bad_model_response"


def test_unreachable_endpoint_is_a_502(http, env):
    class Unreachable:
        def invoke_endpoint(self, **kwargs):
            raise EndpointConnectionError(endpoint_url="https://runtime.sagemaker.us-east-1.amazonaws.com")

    aws_clients.set_client("sagemaker-runtime", Unreachable())
    try:
        assert post(http, JPEG, "image/jpeg") == (502, {"code": "endpoint_unreachable", "message": "The model endpoint did not answer (EndpointConnectionError)"})
    finally:
        reset()


def test_a_timed_out_endpoint_is_a_504(http, env):
    """A stubbed read timeout; tests/app/test_predict_hardening.py holds a real hanging socket to the budget."""
    class Timeout:
        def invoke_endpoint(self, **kwargs):
            raise ReadTimeoutError(endpoint_url="https://runtime.sagemaker.us-east-1.amazonaws.com")

    aws_clients.set_client("sagemaker-runtime", Timeout())
    try:
        status, payload = post(http, JPEG, "image/jpeg")
        assert (status, payload["code"]) == (504, "endpoint_timeout") and "25 s" in payload["message"]
    finally:
        reset()


def test_an_unexpected_failure_is_json_not_a_500(http, env, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(api, "predict", broken)
    status, payload = post(http, JPEG, "image/jpeg")
    assert status == 502 and payload["code"] == "internal_error"


def test_unsupported_type_metric_has_the_code_dimension(http, runtime, capsys):
    post(http, JPEG, "text/plain")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    errors = [line for line in lines if "PredictErrors" in line]
    assert errors and errors[0]["code"] == "unsupported_media_type"
    assert any("PredictLatency" in line and "PredictRequests" in line for line in lines)


# -- the Lambda entry point with API Gateway's own events -------------------------------------
def lambda_call(event):
    import app as chalice_app

    context = SimpleNamespace(aws_request_id="req-1", function_name="breedline-dev", memory_limit_in_mb=512,
                              invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:breedline-dev",
                              get_remaining_time_in_millis=lambda: 30000)
    return chalice_app.app(event, context)


def test_api_gateway_jpeg_event_is_decoded_and_answered(env, runtime):
    runtime.add_response(
        "invoke_endpoint",
        {"Body": body(json.dumps(ANSWER).encode()), "InvokedProductionVariant": "m1"},
        {"EndpointName": "breedline-classifier", "Body": JPEG, "ContentType": "image/jpeg", "Accept": "application/json"},
    )
    response = lambda_call(load_event("api_predict_jpeg.json"))
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {**ANSWER, "model": "m1"}


@pytest.mark.parametrize("name, status, code", [("api_predict_text.json", 415, "unsupported_media_type"), ("api_predict_empty.json", 400, "empty_body")])
def test_api_gateway_bad_events(env, runtime, name, status, code):
    response = lambda_call(load_event(name))
    assert response["statusCode"] == status and json.loads(response["body"])["code"] == code


def test_a_4mb_photo_reaches_the_endpoint_byte_for_byte_without_raw_body(env, runtime, monkeypatch):
    """The route decodes the event itself (pybase64): Chalice's raw_body must not run a second decode."""
    from chalice.app import Request

    def no_raw_body(self):
        raise AssertionError("the predict route read request.raw_body")

    monkeypatch.setattr(Request, "raw_body", property(no_raw_body))
    # issue 12: no 5 MiB limit any more (its base64 cannot reach Lambda); 4 MiB is under the default
    photo = b"\xff\xd8\xff\xe0" + random.Random(4).randbytes(4 * 1024 * 1024)
    runtime.add_response(
        "invoke_endpoint",
        {"Body": body(json.dumps(ANSWER).encode()), "InvokedProductionVariant": "m1"},
        {"EndpointName": "breedline-classifier", "Body": photo, "ContentType": "image/jpeg", "Accept": "application/json"},
    )
    event = load_event("api_predict_jpeg.json")
    event["body"] = base64.b64encode(photo).decode("ascii")
    response = lambda_call(event)
    assert response["statusCode"] == 200, response["body"]
    runtime.assert_no_pending_responses()


@pytest.mark.parametrize("encoded", ["/9j/4A", "abc", "/9j/\u00e9"])
def test_invalid_base64_event_is_a_400_json_error(env, runtime, encoded):
    """Before, Chalice's raw_body raised here and the route answered 502 internal_error."""
    event = load_event("api_predict_jpeg.json")
    event["body"] = encoded
    response = lambda_call(event)
    payload = json.loads(response["body"])
    assert (response["statusCode"], payload["code"]) == (400, "not_an_image")
    assert "base64" in payload["message"]
    runtime.assert_no_pending_responses()


def test_every_error_code_is_exercised_through_the_route():
    """The tables and dedicated tests above cover every stable code (xdist-safe: no shared state)."""
    covered = {case[-1] for case in BAD_REQUESTS + ENDPOINT_ERRORS} | OTHER_CODES
    assert covered == {code for _, code in ALL_ERRORS}


def test_an_abstention_passes_through_and_abstain_false_asks_for_the_raw_answer(env, runtime):
    """Issue 13: the model's "I don't know" reaches the client unchanged; ?abstain=false forwards an Accept parameter."""
    abstained = {**ANSWER, "label": None, "probability": None, "abstained": True, "reason": "out_of_distribution"}
    expected = {"EndpointName": "breedline-classifier", "Body": JPEG, "ContentType": "image/jpeg",
                "Accept": "application/json"}
    runtime.add_response("invoke_endpoint", {"Body": body(json.dumps(abstained).encode()),
                                             "InvokedProductionVariant": "m1"}, expected)
    response = lambda_call(load_event("api_predict_jpeg.json"))
    assert (response["statusCode"], json.loads(response["body"])) == (200, {**abstained, "model": "m1"})
    runtime.add_response("invoke_endpoint", {"Body": body(json.dumps(ANSWER).encode()), "InvokedProductionVariant": "m1"},
                         {**expected, "Accept": "application/json; abstain=false"})
    event = {**load_event("api_predict_jpeg.json"), "queryStringParameters": {"abstain": "false"},
             "multiValueQueryStringParameters": {"abstain": ["false"]}}
    response = lambda_call(event)
    assert (response["statusCode"], json.loads(response["body"])) == (200, {**ANSWER, "model": "m1"})
    runtime.assert_no_pending_responses()


@pytest.mark.parametrize("values", [["maybe"], ["true", "false"], [""]])
def test_a_bad_abstain_parameter_is_a_400(env, runtime, values):
    event = {**load_event("api_predict_jpeg.json"), "queryStringParameters": {"abstain": values[-1]},
             "multiValueQueryStringParameters": {"abstain": values}}
    response = lambda_call(event)
    answer = json.loads(response["body"])
    assert (response["statusCode"], answer["code"]) == (400, "invalid_parameter") and "abstain" in answer["message"]
    runtime.assert_no_pending_responses()


def test_an_older_model_without_abstention_answers_abstained_false(env, runtime):
    old = {key: value for key, value in ANSWER.items() if key != "abstained"}
    runtime.add_response("invoke_endpoint", {"Body": body(json.dumps(old).encode()), "InvokedProductionVariant": "m1"})
    response = lambda_call(load_event("api_predict_jpeg.json"))
    assert json.loads(response["body"]) == {**ANSWER, "model": "m1"}
