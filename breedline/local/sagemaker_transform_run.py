"""The work of one local batch transform job: model servers, records from S3, ``<key>.out`` back to S3.

Why it runs the way it does, each point as SageMaker Batch Transform does it
(AWS Developer Guide, *Use Batch Transform*; CreateTransformJob's reference):

- the model is served by the same code as an endpoint
  (:func:`.endpoints.start_model_server`: the model's ``model.tar.gz``, its
  ``code/inference.py`` under AWS's serving toolkit, the model's ``Environment``
  with the job's ``Environment`` on top), one server per ``InstanceCount``;
- the input is every object under an ``S3Prefix``, or the objects a
  ``ManifestFile`` names (``[{"prefix": "s3://..."}, "rel/key", ...]``); the
  objects are shared out between the instances, and each instance has
  ``MaxConcurrentTransforms`` requests in flight;
- each object is one request (``SplitType`` ``None``): ``POST /invocations``
  with the input's ``ContentType`` and the output's ``Accept``; an answer of
  2xx is written to ``<S3OutputPath><key relative to the input prefix>.out``;
- a record that is not answered with 2xx (after ``InvocationsMaxRetries``
  tries), or is larger than ``MaxPayloadInMB``, gets no ``.out``; the other
  objects are still processed, and the job ends ``Failed`` with the count and
  the first failure in ``FailureReason``, the whole list in the data log
  (``transform-jobs/<name>/data-log.jsonl``, as CloudWatch's ``/data-log`` stream);
- ``StopTransformJob`` lets the requests in flight finish, then ``Stopped``.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from contract import COMPLETED, FAILED, STOPPED

from .endpoints import ModelServer, start_model_server
from .s3_transfers import split_s3_uri
from .sagemaker_wire import now

log = logging.getLogger("runtime.transform")

#: ModelClientConfig's defaults on AWS (its API reference): 600 s per request, 3 retries.
DEFAULT_INVOCATION_TIMEOUT_S = 600
DEFAULT_INVOCATION_RETRIES = 3
#: Threads per instance beyond MaxConcurrentTransforms: they read and write S3 while the slots are busy.
IO_THREADS = 2
#: FailureReason's longest text (DescribeTransformJob: 1024 characters).
MAX_REASON = 1024


@dataclass(frozen=True)
class Record:
    """One input object and where its answer goes."""

    bucket: str
    key: str
    relative: str  # the key below the input prefix: the output is <S3OutputPath><relative>.out


def output_uri(output_path: str, relative: str) -> str:
    """``<S3OutputPath>/<relative>.out``, with exactly one slash between them."""
    return f"{output_path.rstrip('/')}/{relative.lstrip('/')}.out"


def list_records(s3: Any, source: dict) -> list[Record]:
    """The job's input objects: an S3Prefix listed (a key prefix, as S3 matches it), or a manifest read."""
    if source["S3DataType"] == "ManifestFile":
        bucket, key = split_s3_uri(source["S3Uri"])
        entries = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        if not entries or not isinstance(entries[0], dict) or "prefix" not in entries[0]:
            raise ValueError(f"manifest {source['S3Uri']} must start with {{\"prefix\": \"s3://...\"}}")
        prefix_bucket, prefix_key = split_s3_uri(entries[0]["prefix"])
        return [Record(prefix_bucket, prefix_key + rel, rel) for rel in entries[1:]]
    bucket, prefix = split_s3_uri(source["S3Uri"])
    folder = prefix[: prefix.rfind("/") + 1]  # "batch/job/" for both "batch/job/" and "batch/job/im"
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                records.append(Record(bucket, item["Key"], item["Key"][len(folder):]))
    return records


class TransformRun:
    """One transform job's thread: start its instances, feed them, record the outcome."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name
        self.root: Path = backend.state_dir / "transform-jobs" / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.servers: list[ModelServer] = []
        self.failures: list[dict] = []
        self.written = 0
        self.thread = threading.Thread(target=self._run, name=f"transform-{name}", daemon=True)
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self.timings: dict[str, list[float]] = {}  # seconds per record: read, wait (for a slot), invoke, write

    def __repr__(self) -> str:
        return f"TransformRun({self.name})"

    def start(self) -> None:
        self.thread.start()

    def stop(self, quiet: bool = False) -> None:
        """Take no new record; the ones in flight finish (the runtime's shutdown calls it too)."""
        self.stopping.set()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    # ---------------------------------------------------------------- the job
    def _job(self) -> dict:
        with self.backend.lock:
            return json.loads(json.dumps(self.backend.transform_jobs[self.name], default=str))

    def _run(self) -> None:
        status, reason = COMPLETED, None
        try:
            job = self._job()
            with self.backend.lock:
                model = json.loads(json.dumps(self.backend.models[job["ModelName"]], default=str))
            records = list_records(self.backend.s3, job["TransformInput"]["DataSource"]["S3DataSource"])
            if self.stopping.is_set():  # stopped before its instances started: nothing to start
                records = []
            else:
                self._start_servers(model, job)
            with self.backend.lock:
                self.backend.transform_jobs[self.name]["TransformStartTime"] = now()
            self._transform_all(job, records)
            if self.failures:
                first = self.failures[0]
                status = FAILED
                reason = (f"ClientError: {len(self.failures)} of {len(records)} records failed; the first, "
                          f"{first['key']}: {first['error']}. See {self.root / 'data-log.jsonl'}")
        except Exception as exc:  # the job fails, with why; the service carries on
            log.exception("transform job %s failed", self.name)
            status, reason = FAILED, f"AlgorithmError: {type(exc).__name__}: {exc}"
        finally:
            for server in self.servers:
                server.stop()
        if self.stopping.is_set():  # StopTransformJob (or the runtime's shutdown) wins over the outcome
            status, reason = STOPPED, None
        self._finish(status, reason)

    def _start_servers(self, model: dict, job: dict) -> None:
        """One model server per instance, started side by side (a cold start is mostly imports)."""
        count = int(job["TransformResources"]["InstanceCount"])
        env = dict(job.get("Environment") or {})

        def one(index: int) -> ModelServer:
            return start_model_server(self.backend.s3, model, self.root / f"instance-{index + 1}", env)

        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(one, i) for i in range(count)]
            errors = []
            for future in futures:
                try:
                    self.servers.append(future.result())
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise RuntimeError(f"an instance's model server did not start: {errors[0]}")

    def _transform_all(self, job: dict, records: list[Record]) -> None:
        """Records shared out round-robin; each instance has MaxConcurrentTransforms requests in flight.

        Why more threads than requests: reading a record from S3 and writing its
        ``.out`` need not wait for a slot, so a model server is not idle during
        S3 I/O; the slot (a semaphore per instance) bounds only the requests.
        """
        per_instance = int(job.get("MaxConcurrentTransforms") or 1)
        if not records:
            return
        pools = [ThreadPoolExecutor(max_workers=per_instance + IO_THREADS, thread_name_prefix=f"{self.name}-i{i + 1}")
                 for i in range(len(self.servers))]
        slots = [threading.BoundedSemaphore(per_instance) for _ in self.servers]
        try:
            futures = [pools[i % len(pools)].submit(self._one, job, self.servers[i % len(pools)], slots[i % len(pools)],
                                                    record)
                       for i, record in enumerate(records)]
            for future in futures:
                future.result()
        finally:
            for pool in pools:
                pool.shutdown(wait=True)

    def _one(self, job: dict, server: ModelServer, slot: threading.BoundedSemaphore, record: Record) -> None:
        if self.stopping.is_set() or self.backend.closing.is_set():
            return
        s3 = self.backend.s3
        try:
            started = time.perf_counter()
            body = s3.get_object(Bucket=record.bucket, Key=record.key)["Body"].read()
            read = time.perf_counter()
            limit_mb = int(job.get("MaxPayloadInMB", 6))
            if limit_mb and len(body) > limit_mb * 1024 * 1024:
                raise RecordFailure(f"{len(body)} bytes exceed MaxPayloadInMB={limit_mb}")
            with slot:
                invoked = time.perf_counter()
                answer = self._invoke(job, server, body)
                answered = time.perf_counter()
            bucket, key = split_s3_uri(output_uri(job["TransformOutput"]["S3OutputPath"], record.relative))
            s3.put_object(Bucket=bucket, Key=key, Body=answer)
            with self._count_lock:
                self.written += 1
                for name, seconds in (("read", read - started), ("wait", invoked - read),
                                      ("invoke", answered - invoked), ("write", time.perf_counter() - answered)):
                    self.timings.setdefault(name, []).append(seconds)
        except Exception as exc:
            self._failed(record, exc)

    def _invoke(self, job: dict, server: ModelServer, body: bytes) -> bytes:
        """POST one record, retried as ModelClientConfig says; the 2xx answer's body, or RecordFailure."""
        config = job.get("ModelClientConfig") or {}
        timeout = float(config.get("InvocationsTimeoutInSeconds", DEFAULT_INVOCATION_TIMEOUT_S))
        tries = 1 + int(config.get("InvocationsMaxRetries", DEFAULT_INVOCATION_RETRIES))
        headers = {"Content-Type": job["TransformInput"].get("ContentType", "application/octet-stream"),
                   "Accept": job["TransformOutput"].get("Accept", "application/json")}
        problem = ""
        for _ in range(tries):
            try:
                answer = self._session().post(f"{server.url}/invocations", data=body, headers=headers, timeout=timeout)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= answer.status_code < 300:
                return answer.content
            problem = f"the model answered {answer.status_code}: {answer.text.splitlines()[0][:300] if answer.text else ''}"
            if answer.status_code < 500:  # a client error will not change on a retry
                break
        raise RecordFailure(problem)

    def _session(self) -> requests.Session:
        """One keep-alive session per worker thread (loopback only: no proxy from the environment)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False
        return session

    def _failed(self, record: Record, exc: Exception) -> None:
        entry = {"key": f"s3://{record.bucket}/{record.key}", "error": str(exc)}
        with self._count_lock:
            self.failures.append(entry)
            with open(self.root / "data-log.jsonl", "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
        log.warning("transform job %s: %s failed: %s", self.name, entry["key"], entry["error"])

    def _finish(self, status: str, reason: str | None) -> None:
        with self.backend.lock:
            job = self.backend.transform_jobs[self.name]
            job["TransformJobStatus"] = status
            job["TransformEndTime"] = job["LastModifiedTime"] = now()
            job.setdefault("TransformStartTime", job["TransformEndTime"])
            if reason:
                job["FailureReason"] = reason[:MAX_REASON]
        medians = {name: round(statistics.median(values), 4) for name, values in self.timings.items()}
        log.info("transform job %s %s: %d written, %d failed; median seconds per record %s", self.name, status,
                 self.written, len(self.failures), medians)
        self.backend.changed()
        self.backend.emit_transform(self.name)


class RecordFailure(Exception):
    """A record the job could not transform (its reason goes to the data log and FailureReason)."""
