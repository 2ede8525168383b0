"""Section 9: a bounded soak of the local predict path (issue 15, "Done means").

What it does: serves a real classifier (efficientnet_lite0 with its shipped ImageNet
weights, laid out as train.py writes ``model/``, ``code/`` included) in the local
runtime's own model server process (``breedline.local.endpoints.ModelServer``: AWS's
PyTorch serving toolkit behind a small HTTP server, ``OMP_NUM_THREADS=1`` as the local
endpoint sets it), then drives ``POST /invocations`` with ``CLIENTS`` concurrent
clients for a fixed time. A fixed share of the requests is bad: garbage bytes, a JPEG
declared as ``text/plain``, an 8,900 x 8,900 PNG header (over the decode budget) and
an empty body. Every answer is checked against the status and JSON ``code`` the
serving contract promises for its case; anything else (another status, a 5xx, a
connection error, a 200 without a label) is an unexpected answer, and there must be
none.

Why the endpoint and not the Chalice route through the local API: the route needs
the whole local runtime (moto child, local SageMaker, a deployment through the app)
and changes this process's AWS environment; the route's own per-request cost is
section 2. What can break under load, and what issue 15 measured (memory, 5xx,
lost requests), is in the endpoint process.

Why it cannot run away: it only talks to 127.0.0.1 (``trust_env`` off, so no proxy
from the environment), every request has a timeout that ends by the hard stop
(``duration + GRACE_S``), the clients are joined by then (plus ``JOIN_SLACK_S``), and the
model server is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from bench import images, models
from bench.core import Row, Section, Stats
from bench.decode_budget import _header_only_png

ML = Path(__file__).resolve().parent.parent / "ml_scripts"
CLIENTS = 8
DURATION_S = 60.0
QUICK_DURATION_S = 5.0
#: After the soak's end, how long answers in flight may still take before everything is stopped.
GRACE_S = 30.0
#: How long after the hard stop the clients are waited for: a request timed out at the hard stop is still counted.
JOIN_SLACK_S = 2.0
#: One client's repeating schedule: 16 good JPEGs, then one of each bad input (20 % bad).
SCHEDULE: tuple[str, ...] = ("good",) * 4 + ("garbage",) + ("good",) * 4 + ("wrong_type",) + ("good",) * 4 + (
    "over_budget",) + ("good",) * 4 + ("empty",)


@dataclass(frozen=True)
class Case:
    """One kind of request and the answer the serving contract promises for it."""

    name: str
    body: bytes
    content_type: str
    status: int
    code: str | None  # the JSON ``code`` of a refusal; None for a prediction


@dataclass
class Tally:
    """What the clients saw; one lock, because eight threads add to it."""

    latencies: list[float] = field(default_factory=list)
    good_latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    per_case: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def cases() -> dict[str, list[Case]]:
    """The good JPEGs (one per sample photo, data-set sized) and the four bad inputs."""
    photos = images.sample_photos()
    good = [Case("good", images.dataset_jpeg(photo), "image/jpeg", 200, None) for photo in photos.values()]
    garbage = bytes((i * 131 + 7) % 251 for i in range(50_000))  # no image's magic bytes
    return {
        "good": good,
        "garbage": [Case("garbage", garbage, "image/jpeg", 400, "not_an_image")],
        "wrong_type": [Case("wrong_type", good[0].body, "text/plain", 415, "unsupported_media_type")],
        "over_budget": [Case("over_budget", _header_only_png((8900, 8900), 16, 0), "image/png", 413,
                             "image_too_large")],
        "empty": [Case("empty", b"", "image/jpeg", 400, "empty_body")],
    }


def _not_json(word: str) -> float:
    """``NaN`` and ``Infinity`` parse in Python's json but are not JSON (issue 15, item 9): refuse them."""
    raise ValueError(f"{word} is not JSON")


def check_answer(case: Case, status: int, body: bytes) -> str | None:
    """Why an answer breaks the contract for ``case``, or None when it is the promised one."""
    if status != case.status:
        return f"status {status}, expected {case.status}"
    try:
        # A refusal's body is the error's JSON, a newline, then the toolkit's trace.
        payload = json.loads(body.split(b"\n", 1)[0] if case.code else body, parse_constant=_not_json)
    except ValueError:
        return "body is not JSON"
    if case.code is None:
        return None if isinstance(payload, dict) and "label" in payload else "200 without a label"
    return None if isinstance(payload, dict) and payload.get("code") == case.code else (
        f"code {payload.get('code') if isinstance(payload, dict) else payload!r}, expected {case.code}")


def write_served_model(folder: Path) -> Path:
    """``model/`` as train.py leaves it: weights, meta and the ``code/`` the toolkit imports."""
    import train

    model_dir = models.write_model_dir(folder / "model", "efficientnet_lite0")
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    for name in train.SERVING_FILES:
        shutil.copyfile(ML / name, code / name)
    return model_dir


def start_server(model_dir: Path, log_path: Path):
    """The local endpoint's model server on ``model_dir``, with the environment the local runtime gives it."""
    from breedline.local.endpoints import ModelServer

    env = dict(os.environ, PYTHONUNBUFFERED="1", SAGEMAKER_PROGRAM="inference.py")
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in [k for k in env if k.startswith("AWS_ENDPOINT_URL")]:
        env.pop(key)
    server = ModelServer(model_dir, log_path, env)
    server.start()
    if urlparse(server.url).hostname != "127.0.0.1":
        server.stop()
        raise RuntimeError(f"the model server is not on loopback: {server.url}")
    return server


def _rss_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return next((int(line.split()[1]) for line in status if line.startswith(key)), None)
    except OSError:
        return None


def sample_rss(pid: int, stop: threading.Event, peaks: list[int]) -> None:
    """Keep the largest ``VmRSS`` of ``pid`` seen every 100 ms in ``peaks[0]`` until ``stop``."""
    while not stop.is_set():
        rss = _rss_kb(pid, "VmRSS:")
        if rss is not None and rss > peaks[0]:
            peaks[0] = rss
        stop.wait(0.1)


def client(index: int, url: str, all_cases: dict[str, list[Case]], end: float, hard_stop: float,
           tally: Tally) -> None:
    """One client: its schedule, round and round, until ``end``; no request outlives ``hard_stop``."""
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: loopback only
    n = index
    while (now := time.monotonic()) < end:
        kind = SCHEDULE[n % len(SCHEDULE)]
        variants = all_cases[kind]
        case = variants[(n // len(SCHEDULE)) % len(variants)]
        n += 1
        started = time.perf_counter()
        try:
            answer = session.post(f"{url}/invocations", data=case.body, timeout=max(0.5, hard_stop - now),
                                  headers={"Content-Type": case.content_type, "Accept": "application/json"})
            status, body = answer.status_code, answer.content
            problem = check_answer(case, status, body)
            outcome = str(status)
        except requests.RequestException as exc:
            status, problem, outcome = 0, f"{type(exc).__name__}", f"no answer ({type(exc).__name__})"
        elapsed = time.perf_counter() - started
        with tally.lock:
            tally.latencies.append(elapsed)
            if case.name == "good":
                tally.good_latencies.append(elapsed)
            tally.statuses[outcome] += 1
            tally.per_case[case.name] += 1
            if problem:
                tally.unexpected[f"{case.name}: {problem}"] += 1
                tally.examples.setdefault(case.name, f"{status} {body[:200]!r}" if status else problem)
    session.close()


def soak(url: str, pid: int, all_cases: dict[str, list[Case]], clients: int, duration: float) -> dict:
    """Drive the server for ``duration`` seconds with ``clients`` threads; return what was seen."""
    tally = Tally()
    stop, peaks = threading.Event(), [_rss_kb(pid, "VmRSS:") or 0]
    before = peaks[0]
    sampler = threading.Thread(target=sample_rss, args=(pid, stop, peaks), daemon=True)
    sampler.start()
    started = time.monotonic()
    end, hard_stop = started + duration, started + duration + GRACE_S
    threads = [threading.Thread(target=client, args=(i, url, all_cases, end, hard_stop, tally), daemon=True,
                                name=f"soak-client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, hard_stop + JOIN_SLACK_S - time.monotonic()))
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join(timeout=1)
    stuck = sum(thread.is_alive() for thread in threads)
    return {"tally": tally, "seconds": elapsed, "rss_before_kb": before, "rss_peak_kb": peaks[0],
            "hwm_kb": _rss_kb(pid, "VmHWM:"), "stuck_clients": stuck}


def run(section: Section, quick: bool) -> None:
    duration = QUICK_DURATION_S if quick else DURATION_S
    all_cases = cases()
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    server = None
    try:
        model_dir = write_served_model(work)
        server = start_server(model_dir, work / "server.log")
        pid = server.process.pid
        # One untimed request per case: the first prediction loads lazily-built pieces.
        with requests.Session() as warm:
            warm.trust_env = False  # loopback only, as the clients
            for variants in all_cases.values():
                warm.post(f"{server.url}/invocations", data=variants[0].body, timeout=60,
                          headers={"Content-Type": variants[0].content_type, "Accept": "application/json"})
        result = soak(server.url, pid, all_cases, CLIENTS, duration)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    add_rows(section, result, duration)


def add_rows(section: Section, result: dict, duration: float) -> None:
    """The soak's figures as the section's rows and notes."""
    tally: Tally = result["tally"]
    total = len(tally.latencies)
    if not total:
        raise RuntimeError("the soak sent no request")
    unexpected = sum(tally.unexpected.values())
    server_errors = sum(n for status, n in tally.statuses.items() if status.isdigit() and int(status) >= 500)
    bad = total - tally.per_case["good"]
    what = (f"{CLIENTS} clients for {duration:g} s on 127.0.0.1, POST /invocations, {bad / total:.0%} bad inputs "
            "(garbage, text/plain, 8900 x 8900 PNG header, empty body)")
    section.rows.append(Row(section.key, f"requests answered per second, {what}",
                            Stats.of([total / result["seconds"]]), "req/s", higher_is_better=True,
                            note=f"{total} requests in {result['seconds']:.1f} s"))
    section.rows.append(Row(section.key, "latency, every request (client side, p50 = median)",
                            Stats.of(tally.latencies), "s"))
    if tally.good_latencies:
        section.rows.append(Row(section.key, "latency, good JPEGs only (500 x 400, efficientnet_lite0, 1 thread)",
                                Stats.of(tally.good_latencies), "s"))
    section.rows.append(Row(section.key, "answers that were not the expected status and code",
                            Stats.of([unexpected]), "requests", target="0", met=unexpected == 0,
                            note="; ".join(f"{k} x{v}" for k, v in tally.unexpected.most_common(5)) or "none"))
    section.rows.append(Row(section.key, "5xx answers", Stats.of([server_errors]), "requests", target="0",
                            met=server_errors == 0))
    hwm = result["hwm_kb"]
    section.rows.append(Row(section.key, "endpoint process peak RSS over the run (VmRSS sampled every 100 ms)",
                            Stats.of([result["rss_peak_kb"] / 1024]), "MiB",
                            note=f"RSS {result['rss_before_kb'] / 1024:.0f} MiB before the soak; lifetime peak "
                                 f"(VmHWM, model load included) {hwm / 1024:.0f} MiB" if hwm else "no VmHWM"))
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
    section.notes.append(f"Answers per status: {counts}. Requests per case: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(tally.per_case.items())) + ".")
    section.notes.append("Expected: good JPEG 200 with a label; garbage 400 not_an_image; JPEG as text/plain 415 "
                         "unsupported_media_type; 8900 x 8900 PNG 413 image_too_large; empty body 400 empty_body.")
    if result["stuck_clients"]:
        section.notes.append(f"{result['stuck_clients']} client(s) were still waiting at the hard stop "
                             f"({GRACE_S:g} s after the end) and were abandoned.")
    for name, example in sorted(tally.examples.items()):
        section.notes.append(f"First unexpected answer for {name}: {example}")
