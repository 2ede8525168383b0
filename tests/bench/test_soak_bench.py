"""The soak section's own logic: its contract check, its schedule, and that it stops by itself.

The full soak against the real model server runs in ``test_bench_smoke`` (``--quick``);
these tests drive ``soak`` against a tiny loopback server that misbehaves on purpose,
so a wrong answer, a hang or a missed deadline cannot pass unseen.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import soak_bench
from bench.soak_bench import Case, check_answer

REFUSAL = json.dumps({"code": "empty_body", "message": "empty", "status_code": 400}).encode() + b"\nTraceback ..."


def test_check_answer_wants_the_promised_status_and_code() -> None:
    good = Case("good", b"x", "image/jpeg", 200, None)
    empty = Case("empty", b"", "image/jpeg", 400, "empty_body")
    assert check_answer(good, 200, b'{"label": "cat", "probability": 0.9}') is None
    assert check_answer(good, 200, b'{"probability": NaN}') == "body is not JSON"
    assert check_answer(good, 200, b'{"probability": 0.9}') == "200 without a label"
    assert check_answer(good, 500, b"boom") == "status 500, expected 200"
    assert check_answer(empty, 400, REFUSAL) is None
    assert check_answer(empty, 400, REFUSAL.replace(b"empty_body", b"not_an_image")) == (
        "code 'not_an_image', expected empty_body")
    assert check_answer(empty, 413, REFUSAL) == "status 413, expected 400"


def test_schedule_is_a_fixed_share_of_each_bad_input() -> None:
    counts = {kind: soak_bench.SCHEDULE.count(kind) for kind in set(soak_bench.SCHEDULE)}
    assert counts == {"good": 16, "garbage": 1, "wrong_type": 1, "over_budget": 1, "empty": 1}


class _Misbehaving(BaseHTTPRequestHandler):
    """Answers every JPEG with a prediction (wrong for garbage) and never answers a PNG."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type") == "image/png":
            time.sleep(5)  # a hung endpoint: longer than the test's hard stop
            return
        body = b'{"label": "cat", "probability": 0.9}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_soak_counts_wrong_answers_and_hangs_and_stops_by_its_hard_deadline(misbehaving_url, monkeypatch) -> None:
    monkeypatch.setattr(soak_bench, "GRACE_S", 1.0)
    good = Case("good", b"\xff\xd8\xff jpeg", "image/jpeg", 200, None)
    all_cases = {"good": [good], "garbage": [Case("garbage", b"junk", "image/jpeg", 400, "not_an_image")],
                 "wrong_type": [Case("wrong_type", good.body, "text/plain", 415, "unsupported_media_type")],
                 "over_budget": [Case("over_budget", b"\x89PNG", "image/png", 413, "image_too_large")],
                 "empty": [Case("empty", b"", "image/jpeg", 400, "empty_body")]}
    started = time.monotonic()
    result = soak_bench.soak(misbehaving_url, os.getpid(), all_cases, clients=4, duration=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 1.0 + soak_bench.JOIN_SLACK_S, elapsed  # duration + grace + slack, never the 5 s hang
    assert result["stuck_clients"] == 0  # each hung request timed out at the hard stop and was counted
    tally = result["tally"]
    assert tally.per_case["good"] > 0
    assert tally.unexpected["garbage: status 200, expected 400"] == tally.per_case["garbage"] > 0
    assert any(key.startswith("over_budget: ") and "Timeout" in key for key in tally.unexpected)
    assert tally.statuses["200"] >= tally.per_case["good"]
    assert result["rss_peak_kb"] > 0
