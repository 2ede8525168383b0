"""The capacity section's own logic: AWS's target formula, the worker rule, the pool's queue, the template's copy.

The section itself runs against real model-server workers in ``test_bench_smoke``
(``--quick``); these tests pin the parts that turn figures into a template default,
with plain numbers, and the pool's one-request-per-worker queue against tiny
loopback workers that count how many requests they hold at once.
"""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from samtranslator.yaml_helper import yaml_parse

from bench import capacity
from bench import capacity_target as ct
from breedline.local import worker_pool
from breedline.local.worker_pool import WorkerPool, container_workers


def level(concurrency: int, rps: float, p99: float, errors: int = 0, requests_: int = 100) -> ct.Level:
    return ct.Level(concurrency, rps, p99 / 2, p99, errors, requests_)


def test_target_is_the_best_held_level_times_safety_times_sixty() -> None:
    levels = [level(1, 20.0, 0.10), level(2, 30.5, 0.30), level(4, 34.0, 0.60), level(8, 40.0, 0.20, errors=1)]
    d = ct.derive("m 500x400", levels, budget_s=0.5, safety_factor=0.5)
    # 4 clients broke the 500 ms budget and 8 had an error: the peak held is 30.5 req/s at 2 clients.
    assert (d.max_rps, d.at_concurrency, d.target_per_minute) == (30.5, 2, 915)
    assert ct.derive("m", levels, budget_s=1.0, safety_factor=0.25).target_per_minute == 510  # 34 * 0.25 * 60


def test_no_level_within_budget_gives_no_target() -> None:
    d = ct.derive("m 12mp", [level(1, 3.0, 2.0), level(2, 3.5, 3.1)], budget_s=1.5)
    assert (d.at_concurrency, d.target_per_minute) == (None, None)
    assert ct.derive("m", [ct.Level(1, 0.0, 0.0, 0.0, 0, 0)], budget_s=1.0).target_per_minute is None
    assert ct.governing([d]) is None
    with pytest.raises(ValueError):
        ct.derive("m", [level(1, 3.0, 0.1)], budget_s=1.0, safety_factor=1.5)


def test_governing_target_is_the_smallest_over_models_and_workloads() -> None:
    record = {"safety_factor": 0.5, "budgets_s": {"500x400": 0.5, "12mp": 1.5},
              "workloads": {"a": {"500x400": [vars(level(2, 30.0, 0.2))], "12mp": [vars(level(2, 4.0, 1.0))]},
                            "b": {"500x400": [vars(level(2, 10.0, 0.4))], "12mp": [vars(level(2, 2.0, 1.4))]}}}
    d = ct.rederive(record)
    assert d is not None and (d.workload, d.target_per_minute) == ("b 12mp", 60)
    # A workload that held no level (b at 500 x 400, p99 over 0.5 s) is left out, not turned into a target.
    record["workloads"]["b"]["500x400"] = [vars(level(1, 1.0, 0.9))]
    record["workloads"]["b"]["12mp"] = [vars(level(2, 5.0, 1.0))]
    d = ct.rederive(record)
    assert d is not None and (d.workload, d.target_per_minute) == ("a 12mp", 120)


def test_worker_count_is_the_containers_rule() -> None:
    assert container_workers(2, env={}) == 2  # ml.m5.large: one worker per vCPU (TorchServe's default)
    assert container_workers(8, env={}, gpus=1) == 1  # one per GPU on a GPU instance
    assert container_workers(2, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "3"}) == 3
    assert container_workers(4, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}) == 4


def test_instance_is_m5_large_unless_named() -> None:
    assert capacity.instance({}) == ("ml.m5.large", 2)
    assert capacity.instance({capacity.INSTANCE_VARIABLE: "ml.c5.xlarge:4"}) == ("ml.c5.xlarge", 4)
    with pytest.raises(ValueError):
        capacity.instance({capacity.INSTANCE_VARIABLE: "ml.c5.xlarge"})


def test_percentile_and_window_rates() -> None:
    assert capacity.percentile(list(range(101)), 0.99) == 99
    assert capacity.percentile([5.0], 0.5) == 5.0
    # 10 answers in the first second, 4 in the second, one after the end (not counted).
    stamps = [100.05 + 0.09 * i for i in range(10)] + [101.2, 101.4, 101.6, 101.8, 102.5]
    assert capacity.window_rates(stamps, 100.0, 2.0, 1.0) == [10.0, 4.0]


def test_template_default_is_the_recorded_derivation() -> None:
    record = ct.read_record()
    assert record is not None, "bench/recorded/capacity.json is missing: run python -m bench --only capacity"
    derived = ct.rederive(record)
    assert derived is not None and derived.target_per_minute == record["derived"]["target_per_minute"]
    assert ct.template_default() == derived.target_per_minute
    # The regex reads what CloudFormation reads.
    parsed = yaml_parse(ct.TEMPLATE.read_text(encoding="utf-8"))
    assert int(parsed["Parameters"][ct.PARAMETER]["Default"]) == ct.template_default()
    assert (record["instance"], record["vcpus"]) == (capacity.INSTANCE, capacity.INSTANCE_VCPUS)
    assert record["workers"] == container_workers(record["vcpus"], env={})


def test_set_template_default_changes_only_that_number(tmp_path: Path) -> None:
    copy = tmp_path / "breedline.yaml"
    shutil.copyfile(ct.TEMPLATE, copy)
    before = copy.read_text(encoding="utf-8")
    old = ct.set_template_default(12345, copy)
    assert old == ct.template_default() and ct.template_default(copy) == 12345
    after = copy.read_text(encoding="utf-8")
    assert after.replace("Default: 12345", f"Default: {old}", 1) == before


class _CountingWorker(BaseHTTPRequestHandler):
    """A stand-in worker: answers after 50 ms and notes the most requests it held at once."""

    held = 0
    most = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with cls.lock:
            cls.held += 1
            cls.most = max(cls.most, cls.held)
        time.sleep(0.05)
        with cls.lock:
            cls.held -= 1
        body = b'{"label": "x"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _FakeServer:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = None


def _pool_with(workers: int, tmp_path: Path) -> tuple[WorkerPool, list[ThreadingHTTPServer], list[type]]:
    pool = WorkerPool(tmp_path, tmp_path, {}, workers)
    servers, handlers = [], []
    for _ in range(workers):
        handler = type("Worker", (_CountingWorker,), {"held": 0, "most": 0, "lock": threading.Lock()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fake = _FakeServer(server.server_address[1])
        session = requests.Session()
        session.trust_env = False
        pool.workers.append(fake)  # type: ignore[arg-type]
        pool._free.put((fake, session))  # type: ignore[arg-type]
        servers.append(server)
        handlers.append(handler)
    return pool, servers, handlers


def test_pool_gives_each_worker_one_request_at_a_time(tmp_path: Path) -> None:
    pool, servers, handlers = _pool_with(2, tmp_path)
    answers: list[int] = []
    try:
        send = lambda: answers.append(pool.forward(b"x", {"Content-Type": "image/jpeg"})[0])  # noqa: E731
        threads = [threading.Thread(target=send) for _ in range(8)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        elapsed = time.perf_counter() - started
    finally:
        for server in servers:
            server.shutdown()
    assert answers == [200] * 8
    assert [h.most for h in handlers] == [1, 1]  # queued, never two at once in one worker
    assert elapsed >= 4 * 0.05 * 0.9  # 8 requests on 2 workers of 50 ms each: at least 4 rounds


def test_pool_refuses_beyond_its_job_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool, "JOB_QUEUE_SIZE", 0)
    pool, servers, _ = _pool_with(1, tmp_path)
    statuses: list[int] = []
    try:
        threads = [threading.Thread(target=lambda: statuses.append(pool.forward(b"x", {})[0])) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    finally:
        for server in servers:
            server.shutdown()
    assert sorted(statuses)[0] == 200 and 503 in statuses
