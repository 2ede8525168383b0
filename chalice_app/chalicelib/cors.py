"""CORS for browsers: which origin an answer names, and what a preflight answers.

Why not Chalice's ``CORSConfig``: it names one fixed origin, and
``BREEDLINE_CORS_ORIGINS`` is a list. So the app answers preflights itself
(an ``OPTIONS`` view per route, behind no auth, as browsers send preflights
without credentials) and one middleware echoes the request's ``Origin`` on
every answer when it is in the list, errors included; any other origin gets
no ``Access-Control-Allow-Origin`` and the browser keeps the answer from the
page. ``Vary: Origin`` goes on every answer once CORS is on, so a cache never
serves one origin's answer to another. API Gateway's own errors (a missing
API key, throttling) never reach the Lambda: ``breedline.deploy`` configures
its gateway responses from the same setting.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Request headers a page may send: the body's type, the usage plan's key, SigV4 (IAM mode).
ALLOWED_HEADERS: tuple[str, ...] = (
    "Content-Type",
    "x-api-key",
    "Authorization",
    "X-Amz-Date",
    "X-Amz-Security-Token",
)
#: How long a browser may reuse a preflight's answer, in seconds.
MAX_AGE_SECONDS = 600
#: The methods each route's preflight allows (the route's own and OPTIONS).
PREFLIGHT_METHODS: dict[str, tuple[str, ...]] = {
    "/predict": ("POST", "OPTIONS"),
    "/labels": ("GET", "OPTIONS"),
}


def allowed_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    """``origin`` when it is one of ``allowed`` (compared as browsers send it, scheme and host lowercase)."""
    if not origin:
        return None
    normalised = origin.strip().lower().rstrip("/")
    return origin.strip() if normalised in allowed else None


def answer_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """The CORS headers of an ordinary answer: none without CORS, else ``Vary`` and, for an allowed origin, its echo."""
    if not allowed:
        return {}
    headers = {"Vary": "Origin"}
    echoed = allowed_origin(origin, allowed)
    if echoed is not None:
        headers["Access-Control-Allow-Origin"] = echoed
    return headers


def preflight_headers(path: str, origin: str | None, allowed: tuple[str, ...]) -> dict[str, str] | None:
    """A preflight's headers for an allowed origin, or None: the route then answers 403 ``origin_not_allowed``."""
    if allowed_origin(origin, allowed) is None:
        return None
    return {
        "Access-Control-Allow-Methods": ", ".join(PREFLIGHT_METHODS[path]),
        "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
        "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
    }


def merge_vary(existing: Mapping[str, str], headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with ``Vary`` merged into an answer's own ``Vary`` rather than replacing it."""
    current = next((v for k, v in existing.items() if k.lower() == "vary"), "")
    if current and "Vary" in headers:
        names = [n.strip() for n in current.split(",") if n.strip()]
        if "origin" not in {n.lower() for n in names}:
            names.append("Origin")
        headers = {**headers, "Vary": ", ".join(names)}
    return headers
