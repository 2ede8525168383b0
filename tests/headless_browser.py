"""Open a local HTML file in Debian's headless chromium: the rendered DOM, a screenshot, a not-blank check.

Why a real browser: a report page can be valid text and still render nothing
(a broken SVG, CSS that hides everything). Reused by every test of a page we
ship: the profiler report today, model cards and a try-it page later.

Chromium runs with networking mapped to nowhere, so a page that needs a
fetch renders without it, as it would offline. When chromium is missing,
:func:`require_chromium` skips the test with one line locally and fails it
under CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Debian's package installs this; ``BREEDLINE_CHROMIUM`` points elsewhere.
CHROMIUM = os.environ.get("BREEDLINE_CHROMIUM", "/usr/bin/chromium")
WINDOW = (1100, 1400)


@dataclass
class Rendered:
    dom: str
    screenshot: Path
    #: Share of the screenshot's pixels that differ from its most common colour (the background).
    ink: float


def chromium() -> str | None:
    """The chromium executable, or None."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The executable; without one: skip (one line) locally, fail under CI."""
    found = chromium()
    if found is None:
        message = f"chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(browser: str, profile: str, args: list[str], url: str, timeout: int) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
               "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, url]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def ink_share(png: Path) -> float:
    """The share of pixels unlike the most common colour: 0.0 for a blank (single-colour) screenshot."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").resize((WINDOW[0] // 4, WINDOW[1] // 4))
    colours = small.getcolors(maxcolors=small.width * small.height)
    background = max(colours)[0]
    return 1.0 - background / (small.width * small.height)


def render(page: Path, screenshot: Path | None = None, timeout: int = 90, min_ink: float = 0.01) -> Rendered:
    """Render ``page`` (a local file): its DOM after rendering, and a screenshot that must not be blank."""
    browser = require_chromium()
    url = page.resolve().as_uri()
    shot = screenshot or page.with_suffix(".png")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        dom = _run(browser, profile, ["--dump-dom"], url, timeout).stdout
        _run(browser, profile, [f"--screenshot={shot}", "--hide-scrollbars"], url, timeout)
    assert shot.is_file() and shot.stat().st_size > 0, f"chromium wrote no screenshot of {page}"
    ink = ink_share(shot)
    assert ink >= min_ink, f"the screenshot of {page} is blank ({ink:.2%} of pixels differ from the background)"
    return Rendered(dom=dom, screenshot=shot, ink=ink)
