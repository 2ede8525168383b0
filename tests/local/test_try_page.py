"""The try-it page in a real browser, against the local runtime with a trained model.

Debian's chromium, driven by Playwright's Python package pointed at the system
browser (Playwright's own browser download needs the internet). The page is
served by the API at ``GET /try``; the test picks files as a person would,
through the page's file input, and reads what the page shows. It also runs
the curl and Python examples of docs/clients.md against the same API.

Figures (bytes sent, time from file to answer) go to the test's artifacts,
``build/test-artifacts/try-page.json``, with the screenshots.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from headless_browser import require_chromium  # type: ignore[import-not-found]
from PIL import Image
from runtime_harness import DigitsPipeline  # type: ignore[import-not-found]

from breedline.build.paths import REPO_ROOT

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("BREEDLINE_TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))
#: A 12 MP phone photo: 4032 x 3024, as an iPhone or a Pixel takes it.
PHONE_SIZE = (4032, 3024)
EXIF_ORIENTATION = 0x0112


def server_answer(api_url: str, data: bytes) -> dict:
    answer = requests.post(f"{api_url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def phone_photo(digit: Path) -> bytes:
    """The digit as a phone sends it: 12 MP, stored sideways with EXIF Orientation 6 (turn 90 degrees clockwise).

    A path that ignored the orientation would see the digit lying on its side.
    """
    with Image.open(digit) as small:
        small = small.convert("RGB")
        upright = Image.new("RGB", PHONE_SIZE, small.getpixel((0, 0)))
        side = PHONE_SIZE[1]
        upright.paste(small.resize((side, side), Image.Resampling.BICUBIC), ((PHONE_SIZE[0] - side) // 2, 0))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote; Orientation 6 turns it back
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def real_photo() -> bytes:
    """A 12 MP photograph's worth of bytes: scikit-image's astronaut, upscaled, with sensor-like noise."""
    import numpy as np
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize(PHONE_SIZE, Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(0).normal(0, 6, pixels.shape).astype(np.int16)
    noisy = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    noisy.save(out, "JPEG", quality=92)
    return out.getvalue()


def pick(page, name: str, data: bytes, mime: str = "image/jpeg") -> dict:
    """Choose a file in the page's input; wait for the page to show an answer or an error."""
    page.evaluate("document.body.dataset.state = 'busy'")
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.wait_for_function("() => ['answered', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    return {
        "state": page.evaluate("document.body.dataset.state"),
        "label": page.inner_text("#label"),
        "error": page.inner_text("#error") if page.is_visible("#error") else "",
        "bars": page.locator("#bars li").count(),
        "meta": page.inner_text("#meta"),
    }


#: A good 4G uplink: 10 Mbit/s up, 40 Mbit/s down, 40 ms round trip (DevTools takes bytes per second).
PHONE_NETWORK = {"latency": 40, "uploadThroughput": 10_000_000 / 8, "downloadThroughput": 40_000_000 / 8}

MEASURE = """async ([resize, runs]) => {
  const { classify } = await import(new URL("try/client.js", location.href));
  const file = document.getElementById("file").files[0];
  const out = [];
  for (let i = 0; i < runs; i++) {
    const answer = await classify(file, { baseUrl: location.href.replace(/\\/try$/, ""), resize });
    out.push({ ok: answer.ok, label: answer.body.label, sentBytes: answer.sentBytes,
               elapsedMs: answer.elapsedMs, resizeMs: answer.resizeMs });
  }
  return out;
}"""


def measure(page, figures: dict, network: str, runs: int = 5) -> None:
    """Median, min and max from file to answer, resized in the page against the original file."""
    figures[network] = {}
    for name, resize in (("resized", True), ("original", False)):
        done = page.evaluate(MEASURE, [resize, runs])
        assert all(run["ok"] for run in done), done
        times = [run["elapsedMs"] for run in done]
        figures[network][name] = {
            "sent_bytes": done[0]["sentBytes"], "median_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1), "max_ms": round(max(times), 1),
            "median_resize_ms": round(statistics.median(run["resizeMs"] for run in done), 1)}


CROSS_ORIGIN_PREDICT = """async ([url, bytes]) => {
  try {
    const response = await fetch(url, { method: "POST", headers: { "Content-Type": "image/jpeg" },
                                         body: new Uint8Array(bytes) });
    return { status: response.status, label: (await response.json()).label };
  } catch (error) {
    return { refused: String(error) };
  }
}"""


def cross_origin_checks(browser, api_url: str, jpeg: bytes) -> None:
    """CORS in a real browser: the local runtime allows its own origins only (BREEDLINE_CORS_ORIGINS).

    A page on another origin cannot read an answer (the preflight is refused);
    the page opened as ``localhost`` may call the API at ``127.0.0.1``, which the
    runtime allows as its own origin.
    """
    page = browser.new_page()
    page.route("http://other.example/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>another site</title>"))
    page.goto("http://other.example/")
    refused = page.evaluate(CROSS_ORIGIN_PREDICT, [f"{api_url}/predict", list(jpeg)])
    assert "refused" in refused, refused
    page.goto(api_url.replace("127.0.0.1", "localhost") + "/try")
    allowed = page.evaluate(CROSS_ORIGIN_PREDICT, [f"{api_url}/predict", list(jpeg)])
    assert allowed.get("status") == 200 and allowed.get("label"), allowed
    page.close()


def test_the_try_page_classifies_photos_in_chromium(digits_pipeline: DigitsPipeline) -> None:
    from playwright.sync_api import sync_playwright

    browser_path = require_chromium()
    api_url = digits_pipeline.info.api_url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tests = sorted((digits_pipeline.data / "test").glob("*/*.jpg"))
    # A test image the model gets right, so the label shown can be checked against the truth too.
    digit = next(path for path in tests if server_answer(api_url, path.read_bytes())["label"] == path.parent.name)
    phone = phone_photo(digit)
    photo = real_photo()
    figures: dict = {"photo_bytes": len(photo), "phone_digit_bytes": len(phone)}

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(f"{api_url}/try")
            page.wait_for_function("() => document.body.dataset.state === 'ready'")

            # Small data set images go up unchanged: the page shows exactly the server's answer.
            for path in [digit, *tests[:: max(1, len(tests) // 4)][:4]]:
                shown = pick(page, path.name, path.read_bytes())
                expected = server_answer(api_url, path.read_bytes())
                assert shown["state"] == "answered", shown
                assert shown["label"] == expected["label"], (path, shown, expected)
                assert shown["bars"] == len(expected["top_k"]) and expected["model"] in shown["meta"]
            assert pick(page, digit.name, digit.read_bytes())["label"] == digit.parent.name

            # A 12 MP phone photo, sideways with EXIF orientation: resized in the browser, same answer.
            shown = pick(page, "IMG_0001.jpg", phone)
            assert shown["state"] == "answered", shown
            assert "resized in the browser" in shown["meta"]
            assert shown["label"] == server_answer(api_url, phone)["label"] == digit.parent.name, shown
            page.screenshot(path=str(ARTIFACTS / "try-page.png"), full_page=True)

            # Bytes and time, file to answer, for a real photo's 12 MP JPEG: resized against the original.
            # On loopback, then with the uplink of a good phone connection emulated (DevTools throttling).
            pick(page, "photo.jpg", photo)
            measure(page, figures, "loopback")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **PHONE_NETWORK})
            measure(page, figures, "phone_network")
            cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                          "downloadThroughput": -1, "uploadThroughput": -1})
            assert figures["loopback"]["resized"]["sent_bytes"] * 10 < figures["loopback"]["original"]["sent_bytes"]
            assert figures["phone_network"]["resized"]["median_ms"] < figures["phone_network"]["original"]["median_ms"]

            # A bad file: the page shows the API's error message and code, and nothing else.
            shown = pick(page, "notes.jpg", b"these are my notes, not a photo\n" * 20)
            assert shown["state"] == "error" and "HTTP 4" in shown["error"], shown
            assert shown["label"] == "" and shown["bars"] == 0
            page.screenshot(path=str(ARTIFACTS / "try-page-error.png"), full_page=True)
            assert not [url for url in failed if url.startswith(api_url)], failed
            cross_origin_checks(browser, api_url, digit.read_bytes())
        finally:
            browser.close()
    (ARTIFACTS / "try-page.json").write_text(json.dumps(figures, indent=2))
    print("try page, 12 MP photo:", json.dumps(figures))


def test_the_curl_and_python_examples_work(digits_pipeline: DigitsPipeline) -> None:
    api_url = digits_pipeline.info.api_url
    image = sorted((digits_pipeline.data / "test").glob("*/*.jpg"))[0]
    expected = server_answer(api_url, image.read_bytes())
    examples = REPO_ROOT / "docs" / "examples"
    for command in (["sh", str(examples / "predict.sh"), api_url, str(image)],
                    [sys.executable, str(examples / "classify_image.py"), api_url, str(image)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["label"] == expected["label"], (command, done.stdout)
    bad = subprocess.run([sys.executable, str(examples / "classify_image.py"), api_url, str(examples / "predict.sh")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"], bad.stdout + bad.stderr
