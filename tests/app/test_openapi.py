"""docs/openapi.yaml equals the app: its routes and methods, every error code, the body types, auth and CORS.

Both ways: what the code has must be in the document and what the document
says must be in the code. The codes come from their one table,
``chalicelib.predict.ROUTE_ERRORS``, which is itself checked against every
error the module declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chalicelib import cors, predict
from openapi_spec_validator import validate

from breedline.deploy.template import SECURITY_DEFINITIONS

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


@pytest.fixture
def app_routes(env) -> set[tuple[str, str]]:
    import app as chalice_app

    return {(path, method.lower()) for path, views in chalice_app.app.routes.items() for method in views}


def resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def documented_codes(spec: dict[str, Any], operation: dict[str, Any]) -> set[tuple[int, str]]:
    """Every (status, code) an operation's error responses list in their ``code`` enums."""
    found: set[tuple[int, str]] = set()
    for status, response in operation["responses"].items():
        response = resolve(spec, response)
        for media in response.get("content", {}).values():
            for part in resolve(spec, media["schema"]).get("allOf", []):
                for code in resolve(spec, part).get("properties", {}).get("code", {}).get("enum", []):
                    found.add((int(status), code))
    return found


def test_the_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(spec, app_routes):
    documented = {
        (path, method) for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS
    }
    assert documented == app_routes
    assert set(predict.ROUTE_ERRORS) == app_routes  # the table names every route too


def test_every_error_code_of_each_route_is_documented_and_only_those(spec):
    for (path, method), errors in predict.ROUTE_ERRORS.items():
        operation = spec["paths"][path][method]
        assert documented_codes(spec, operation) == set(errors), f"{method.upper()} {path}"


def test_the_route_table_holds_every_error_the_app_declares():
    """A new ``(status, "code")`` constant in chalicelib.predict must be answered by some route."""
    declared = {
        value
        for name, value in vars(predict).items()
        if name.isupper()
        and isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
    }
    answered = {error for errors in predict.ROUTE_ERRORS.values() for error in errors}
    assert declared == answered


def test_predict_documents_every_accepted_body_type(spec):
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {*predict.CONTENT_TYPES, predict.MULTIPART}


def test_auth_schemes_are_the_ones_the_template_applies(spec):
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == set(SECURITY_DEFINITIONS)
    for name, definition in SECURITY_DEFINITIONS.items():
        for key, value in definition.items():
            assert schemes[name][key] == value, (name, key)
    assert spec["paths"]["/status"]["get"]["security"] == [{"sigv4": []}]  # IAM_ONLY_PATHS
    for path in cors.PREFLIGHT_METHODS:
        assert spec["paths"][path]["options"]["security"] == []  # browsers send preflights unsigned


def test_preflights_and_cors_headers_are_documented(spec):
    preflight = resolve(spec, spec["components"]["responses"]["Preflight"])
    assert {
        "Access-Control-Allow-Origin",
        "Access-Control-Allow-Methods",
        "Access-Control-Allow-Headers",
    } <= set(preflight["headers"])
    for header in cors.ALLOWED_HEADERS:
        assert header in preflight["headers"]["Access-Control-Allow-Headers"]["description"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                response = resolve(spec, response)
                if method != "options" and status.startswith(("2", "5")) or status in ("400", "413", "415"):
                    assert "Access-Control-Allow-Origin" in response.get("headers", {}), (
                        path,
                        method,
                        status,
                    )


def test_the_prediction_schema_accepts_what_the_route_answers_and_refuses_a_broken_one(spec):
    schema = {
        **resolve(spec, spec["components"]["schemas"]["Prediction"]),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }
    answer = predict.shape_prediction(
        b'{"label": "a", "probability": 0.7, "top_k": [{"label": "a", "probability": 0.7}]}', "m1", 5
    )
    jsonschema.validate(answer, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**answer, "probability": 1.5}, schema)
    error = resolve(spec, spec["components"]["schemas"]["Error"])
    jsonschema.validate(predict.PredictError(predict.BAD_MULTIPART, "x").body(), error)
