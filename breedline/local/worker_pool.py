"""N model-server workers behind one loopback port, the way TorchServe runs them in the endpoint.

Why this exists: inside SageMaker's PyTorch inference container, TorchServe's
frontend accepts the HTTP requests on one port and puts each one on the model's
job queue (``job_queue_size``, 100 by default); ``default_workers_per_model``
worker *processes*, each with the model loaded once, take one request at a time
from that queue (batch size 1, the toolkit's default). The toolkit passes
``SAGEMAKER_MODEL_SERVER_WORKERS`` on as ``default_workers_per_model`` when it is
set (``sagemaker_pytorch_serving_container.torchserve``); when it is not, TorchServe's
``ConfigManager.getDefaultWorkers`` uses the number of GPUs, and on a CPU instance
``Runtime.availableProcessors()``: 2 on an ml.m5.large. :func:`container_workers`
is that rule.

The local runtime's :class:`~breedline.local.endpoints.ModelServer` is one such
worker (the toolkit's handler service in its own process). :class:`WorkerPool`
starts ``workers`` of them and puts a small frontend in front: a threaded HTTP
server on 127.0.0.1 that hands each ``POST /invocations`` to the next free worker
and waits while none is free, so each worker serves one request at a time and the
rest queue, as in TorchServe; a request that finds the queue full gets 503, as
TorchServe answers. What it does not mirror: TorchServe's Java/Netty frontend
and its Unix-socket hop to the workers are replaced by Python and loopback HTTP,
which cost this machine's CPU per request (a few ms on a 4 MB body) and so lower
a pool's figures against the container's.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Mapping

import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .endpoints import ModelServer

#: TorchServe's default ``job_queue_size``: requests waiting for a worker beyond this are refused with 503.
JOB_QUEUE_SIZE = 100
#: How long a queued request waits for a free worker before the frontend gives up
#: (TorchServe's default_response_timeout is 120 s).
QUEUE_TIMEOUT_S = 120.0
#: Headers the worker's answer carries that the frontend must not copy (it frames its own answer).
_HOP_HEADERS = {"connection", "content-length", "transfer-encoding", "keep-alive", "server", "date"}


class _QuietHandler(WSGIRequestHandler):
    """No access-log line per request: under load it is thousands of lines and CPU the workers need."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def container_workers(vcpus: int, env: Mapping[str, str] | None = None, gpus: int = 0) -> int:
    """The worker count SageMaker's PyTorch container starts: the setting, else GPUs, else vCPUs.

    ``SAGEMAKER_MODEL_SERVER_WORKERS`` wins when set to a positive number (the
    toolkit writes it as TorchServe's ``default_workers_per_model``); otherwise
    TorchServe's own default applies: one worker per GPU, and on a CPU-only
    instance one per processor the JVM sees.
    """
    configured = (env if env is not None else os.environ).get("SAGEMAKER_MODEL_SERVER_WORKERS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return gpus if gpus > 0 else max(1, vcpus)


class WorkerPool:
    """``workers`` model-server processes on ``model_dir`` behind one frontend port on 127.0.0.1."""

    def __init__(self, model_dir: Path, log_dir: Path, env: dict[str, str], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, not {workers}")
        self.model_dir = model_dir
        self.log_dir = log_dir
        self.env = env
        self.workers: list[ModelServer] = []
        self._free: queue.Queue[tuple[ModelServer, requests.Session]] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._count = workers

    def start(self, parallel: bool = False) -> None:
        """Start the workers, then the frontend.

        One after another by default, so the model loads' memory peaks do not add up
        (vgg11's in-memory ONNX export peaks at about 3 GB); ``parallel`` starts them
        together, as TorchServe does, where memory is no concern (a small model).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = [ModelServer(self.model_dir, self.log_dir / f"worker-{i}.log", self.env)
                        for i in range(self._count)]
        try:
            if parallel:
                failures: list[BaseException] = []
                threads = [threading.Thread(target=self._start_one, args=(w, failures)) for w in self.workers]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if failures:
                    raise failures[0]
            else:
                for worker in self.workers:
                    worker.start()
            for worker in self.workers:
                session = requests.Session()
                session.trust_env = False  # loopback only: no proxy from the environment
                self._free.put((worker, session))
            self._server = make_server("127.0.0.1", 0, self._app, threaded=True,
                                       request_handler=_QuietHandler)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="worker-pool")
        self._thread.start()

    @staticmethod
    def _start_one(worker: ModelServer, failures: list[BaseException]) -> None:
        try:
            worker.start()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            failures.append(exc)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the pool is not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    def _app(self, environ, start_response):
        request = Request(environ)
        if request.path == "/ping" and request.method == "GET":
            alive = all(w.process is not None and w.process.poll() is None for w in self.workers)
            return Response("", status=200 if alive else 503)(environ, start_response)
        if request.path != "/invocations" or request.method != "POST":
            return Response("not found", status=404)(environ, start_response)
        status, headers, body = self.forward(request.get_data(), dict(request.headers))
        return Response(body, status=status, headers=headers)(environ, start_response)

    def forward(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Queue one request for the next free worker and return its answer."""
        with self._lock:
            if self._waiting >= JOB_QUEUE_SIZE + len(self.workers):
                return 503, [("Content-Type", "text/plain")], b"job queue full"
            self._waiting += 1
        try:
            try:
                worker, session = self._free.get(timeout=QUEUE_TIMEOUT_S)
            except queue.Empty:
                return 503, [("Content-Type", "text/plain")], b"no worker became free"
            try:
                sent = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
                answer = session.post(f"{worker.url}/invocations", data=body, headers=sent, timeout=QUEUE_TIMEOUT_S)
                kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS]
                return answer.status_code, kept, answer.content
            except requests.RequestException as exc:
                return 502, [("Content-Type", "text/plain")], f"worker unreachable: {type(exc).__name__}".encode()
            finally:
                self._free.put((worker, session))
        finally:
            with self._lock:
                self._waiting -= 1

    def stop(self) -> None:
        """Stop the frontend, then every worker process (each in its own process group)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Together: each worker takes seconds to exit (werkzeug's poll, torch's teardown).
        stoppers = [threading.Thread(target=worker.stop) for worker in self.workers]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        while not self._free.empty():
            self._free.get_nowait()[1].close()
