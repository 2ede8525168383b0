"""The try-it page: ``GET /try`` and its three assets, served by the API itself.

Why from the API and not from the bucket or a CDN: the page then has the
API's origin, so it calls ``/predict`` without CORS; it ships in the Lambda zip
with the code it talks to, so the two never drift; and it works the same in
the local runtime and on AWS, with nothing else to deploy. The files are
static (``chalicelib/web/``), read once per process, with no build step and no
third-party script: the Content-Security-Policy below allows scripts and
styles from the API alone.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE = "index.html"
#: The files ``GET /try/{asset}`` serves, with their media types; anything else is a 404.
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "client.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: connect-src is open: a person may point the page at another Breedline API (CORS decides there).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src *; "
                               "script-src 'self'; style-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def page() -> tuple[str, dict[str, str]]:
    """The page's HTML and headers."""
    return _read(PAGE), {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}


def asset(name: str) -> tuple[str, dict[str, str]] | None:
    """One of :data:`ASSETS` with its headers, or None for any other name (no path is ever joined)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return None
    return _read(name), {"Content-Type": media_type, **SECURITY_HEADERS}
