"""CORS (issue 16): preflights, the allowed origin on every answer, nothing for any other.

Through Chalice's test client and through the local API server the demo runs
(``breedline.local.runtime.start_api_server``, real HTTP on loopback).
"""

from __future__ import annotations

import json

import pytest
import requests
from app_helpers import serving_app_locally  # type: ignore[import-not-found]
from chalicelib.config import Settings

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"


@pytest.fixture
def cors_env(env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_CORS_ORIGINS", f"{ALLOWED},http://localhost:8000")
    return env


@pytest.fixture
def http(cors_env, tmp_path):
    import app as chalice_app
    from chalice.test import Client

    with Client(chalice_app.app, project_dir=str(tmp_path)) as client:
        yield client.http


def preflight(http, path, origin, method="POST"):
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    return http.request("OPTIONS", path, headers=headers)


@pytest.mark.parametrize(("path", "methods"), [("/predict", "POST, OPTIONS"), ("/labels", "GET, OPTIONS")])
def test_preflight_from_an_allowed_origin_names_methods_and_headers(http, path, methods):
    response = preflight(http, path, ALLOWED)
    assert response.status_code == 204
    headers = response.headers
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Access-Control-Allow-Methods"] == methods
    allowed_headers = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "authorization"} <= allowed_headers
    assert headers["Vary"] == "Origin"
    assert int(headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize("origin", [OTHER, "https://app.example.com.evil.net", "null", ""])
def test_preflight_from_any_other_origin_is_refused_without_cors_headers(http, origin):
    response = preflight(http, "/predict", origin)
    assert response.status_code == 403
    assert json.loads(response.body)["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def test_every_answer_errors_included_names_only_an_allowed_origin(http, runtime):
    """415, 400 and a 503 from state: each carries the allowed origin, and nothing for another."""
    for origin, named in ((ALLOWED, True), ("HTTP://LOCALHOST:8000", True), (OTHER, False)):
        for response in (
            http.post("/predict", body=b"hello", headers={"Origin": origin, "Content-Type": "text/plain"}),
            http.post("/predict", body=b"", headers={"Origin": origin, "Content-Type": "image/jpeg"}),
            http.post(
                "/predict", body=b"x", headers={"Origin": origin, "Content-Type": "multipart/form-data"}
            ),
        ):
            assert response.status_code in (400, 415)
            assert response.headers.get("Access-Control-Allow-Origin") == (origin if named else None)
            assert response.headers["Vary"] == "Origin"


def test_labels_answer_names_the_allowed_origin(http, monkeypatch):
    from chalicelib import api

    monkeypatch.setattr(api, "labels", lambda: {"model": "m1", "labels": ["a", "b"]})
    response = http.get("/labels", headers={"Origin": ALLOWED})
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == ALLOWED
    monkeypatch.setattr(api, "labels", lambda: (_ for _ in ()).throw(RuntimeError("no table")))
    response = http.get("/labels", headers={"Origin": ALLOWED})
    assert response.status_code == 503 and json.loads(response.body)["code"] == "state_unavailable"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_without_origins_there_is_no_cors_at_all(env, tmp_path, monkeypatch):
    import app as chalice_app
    from chalice.test import Client

    monkeypatch.delenv("BREEDLINE_CORS_ORIGINS", raising=False)
    with Client(chalice_app.app, project_dir=str(tmp_path)) as client:
        response = preflight(client.http, "/predict", ALLOWED)
        assert response.status_code == 403
        response = client.http.post(
            "/predict", body=b"x", headers={"Origin": ALLOWED, "Content-Type": "text/plain"}
        )
        assert response.status_code == 415
        assert not {k.lower() for k in response.headers} & {"access-control-allow-origin", "vary"}


@pytest.mark.parametrize(
    "raw", ["*", "https://app.example.com/", "app.example.com", "https://a.example/path"]
)
def test_an_origin_setting_that_is_no_origin_is_refused_or_normalised(raw):
    if raw == "https://app.example.com/":  # a trailing slash is what people paste: dropped
        assert Settings.from_env({"BREEDLINE_CORS_ORIGINS": raw}).cors_origins == ("https://app.example.com",)
        return
    with pytest.raises(ValueError, match="BREEDLINE_CORS_ORIGINS"):
        Settings.from_env({"BREEDLINE_CORS_ORIGINS": raw})


@pytest.fixture
def local_api(env, monkeypatch):
    """The local runtime's API server around the app, with the operator's origin set; it adds its own."""
    monkeypatch.setenv("BREEDLINE_CORS_ORIGINS", ALLOWED)
    with serving_app_locally() as url:
        yield url


def test_the_local_api_server_answers_preflights_and_allows_its_own_origin(local_api):
    own = local_api  # the page the local API serves comes from this origin
    for origin in (ALLOWED, own):
        response = requests.options(
            f"{local_api}/predict",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
            timeout=10,
        )
        assert response.status_code == 204, response.text
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    response = requests.options(f"{local_api}/labels", headers={"Origin": OTHER}, timeout=10)
    assert response.status_code == 403 and response.json()["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers
    response = requests.post(
        f"{local_api}/predict",
        data=b"GIF89a....",
        timeout=10,
        headers={"Origin": own, "Content-Type": "image/gif"},
    )
    assert response.status_code == 415 and response.headers["Access-Control-Allow-Origin"] == own
    response = requests.post(
        f"{local_api}/predict",
        data=b"GIF89a....",
        timeout=10,
        headers={"Origin": OTHER, "Content-Type": "image/gif"},
    )
    assert response.status_code == 415 and "Access-Control-Allow-Origin" not in response.headers
