"""AWS stand-ins on loopback: moto's server, the app's real rules, and a Lambda-like dispatcher.

Why rules read from the app: the Chalice decorators are the single source of
the event patterns; ``app.event_sources`` holds them (``CloudWatchEventConfig``
and ``ScheduledEventConfig``), so the local bus routes exactly what AWS would.
Each rule targets one SQS queue, and the dispatcher plays Lambda: it polls the
queue and calls the app's own handler with the event.

moto 5.2 accepts ``aws.*`` sources in PutEvents and routes them like any other
event (real EventBridge refuses them from callers; here the local SageMaker
service plays the AWS service that may send them). Its events lack the
``account`` field that Lambda's events carry and Chalice's ``CloudWatchEvent``
requires, so the dispatcher fills it in; nothing else is changed.
"""

from __future__ import annotations

import copy
import json
import logging
import queue as queue_module
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import boto3
from botocore.config import Config

log = logging.getLogger("runtime.aws")

ACCOUNT = "123456789012"


class MotoStandIns:
    """moto's server on a loopback port, plus clients pointed at it.

    By default it runs in a child process (``python -m moto.server``): S3 calls
    for thousands of small images then run beside the runtime's own threads
    instead of competing with them for one interpreter lock. ``in_process=True``
    uses ``ThreadedMotoServer`` (unit tests: faster to start).
    """

    def __init__(self, region: str = "us-east-1", host: str = "127.0.0.1", port: int = 0,
                 in_process: bool = True, log_path: Path | None = None) -> None:
        self.region = region
        self.process: subprocess.Popen | None = None
        self.server: Any = None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        if in_process:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            self.server.start()
            address, bound = self.server.get_host_and_port()
            self.url = f"http://{address}:{bound}"
            return
        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        out = open(log_path, "a") if log_path else subprocess.DEVNULL
        # Our launcher: moto's own server with its per-request module rescan taken once (moto_server.py).
        self.process = subprocess.Popen([sys.executable, "-m", "breedline.local.moto_server", "-H", host, "-p", str(port)],
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=Path(__file__).resolve().parents[2])  # where -m finds breedline
        self.url = f"http://{host}:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start within 60 s")

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(retries={"max_attempts": 2}, max_pool_connections=20))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def create_data_bucket(s3: Any, bucket: str, region: str) -> None:
    """The data bucket, with EventBridge notifications on as ``infra/`` configures it."""
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}})


def create_tables(dynamodb: Any, settings: Any, definitions: dict[str, dict]) -> list[str]:
    """Create each table of ``chalicelib.state.TABLE_DEFINITIONS`` under its configured name."""
    names = []
    for attribute, kwargs in definitions.items():
        name = getattr(settings, attribute)
        dynamodb.create_table(TableName=name, **kwargs)
        names.append(name)
    return names


def create_alert_topic(sns: Any, sqs: Any, name: str = "breedline-alerts") -> tuple[str, str]:
    """An SNS topic for alerts with one SQS subscriber, so alerts can be read back."""
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "false"})
    return topic, queue


@dataclass
class AppRoutes:
    """What was created for the app: one queue per event handler, and its schedules."""

    queues: dict[str, str] = field(default_factory=dict)  # handler name -> queue URL
    patterns: dict[str, dict] = field(default_factory=dict)  # handler name -> event pattern
    schedules: dict[str, float] = field(default_factory=dict)  # handler name -> period seconds


def schedule_seconds(expression: Any) -> float:
    """Period of a Chalice ``Rate``/``Cron``/string schedule; cron falls back to one minute."""
    from chalice.app import Rate

    if isinstance(expression, Rate):
        unit = {"MINUTES": 60, "HOURS": 3600, "DAYS": 86400}[expression.unit]
        return float(expression.value * unit)
    text = expression if isinstance(expression, str) else expression.to_string()
    if text.startswith("rate("):
        value, unit = text[5:-1].split()
        return float(value) * {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600,
                               "day": 86400, "days": 86400}[unit]
    return 60.0


def install_app_rules(app: Any, events: Any, sqs: Any, prefix: str = "breedline") -> AppRoutes:
    """Create, on the default bus, the rules the app's ``on_cw_event`` decorators declare."""
    from chalice.app import CloudWatchEventConfig, ScheduledEventConfig

    routes = AppRoutes()
    for source in app.event_sources:
        if isinstance(source, CloudWatchEventConfig):
            queue = sqs.create_queue(QueueName=f"{prefix}-{source.name}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            rule = f"{prefix}-{source.name}"
            events.put_rule(Name=rule, EventPattern=json.dumps(source.event_pattern), State="ENABLED")
            events.put_targets(Rule=rule, Targets=[{"Id": source.name, "Arn": arn}])
            routes.queues[source.name] = queue
            routes.patterns[source.name] = source.event_pattern
        elif isinstance(source, ScheduledEventConfig):
            routes.schedules[source.name] = schedule_seconds(source.schedule_expression)
    return routes


def scheduled_event(region: str, rule_name: str) -> dict:
    """The event EventBridge Scheduler hands a scheduled Lambda."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT}:rule/{rule_name}"],
        "detail": {},
    }


class Dispatcher:
    """Plays Lambda: takes each handler's events off its queue and calls the app's own handler.

    Why events are taken off the queue at once: EventBridge invokes a Lambda
    function asynchronously, so Lambda accepts the event into its own internal
    queue, and the function then runs it with up to ``max_attempts`` tries
    (Lambda's default: the first try plus 2 retries) before discarding it.
    Here one poller per queue receives up to 10 messages, deletes them in one
    batch and hands them to ``concurrency`` worker threads (Lambda runs a
    function's invocations concurrently too, so the app's idempotency is
    exercised for real). Keeping moto's queue short also matters for speed:
    moto's SQS scans every message in a queue on each SendMessage,
    ReceiveMessage and DeleteMessage, so a backlog of 1,000 upload events
    made every operation, S3 uploads (which send the events) included, cost
    tens of milliseconds.
    """

    def __init__(self, app: Any, routes: AppRoutes, sqs: Any, region: str,
                 schedule_period: float | None = None, concurrency: int = 4,
                 on_invoke: Callable[[str, dict, Any, BaseException | None], None] | None = None,
                 max_attempts: int = 3, retry_delay: float = 2.0, pollers: int = 2) -> None:
        self.app = app
        self.routes = routes
        self.sqs = sqs
        self.region = region
        self.schedule_period = schedule_period
        self.on_invoke = on_invoke
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.pollers = pollers
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.inboxes: dict[str, queue_module.Queue] = {}
        self.invocations: list[tuple[str, str]] = []  # (handler, detail-type) in order
        self.errors: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def invoke(self, name: str, event: dict) -> Any:
        from chalice.local import LambdaContext

        context = LambdaContext(name, memory_size=512, max_runtime_ms=900_000)
        event.setdefault("account", ACCOUNT)
        event.setdefault("resources", [])
        error: BaseException | None = None
        result = None
        try:
            result = self.app.handler_map[name](event, context)
        except BaseException as exc:  # noqa: BLE001 - a handler error must not kill the worker
            error = exc
            log.exception("handler %s failed", name)
            with self.lock:
                self.errors.append((name, f"{type(exc).__name__}: {exc}"))
        with self.lock:
            self.invocations.append((name, event.get("detail-type", "")))
        if self.on_invoke is not None:
            try:
                self.on_invoke(name, event, result, error)
            except Exception:
                log.exception("on_invoke callback failed")
        if error is not None:
            raise error
        return result

    def _poll(self, name: str, queue: str) -> None:
        """Move delivered events from the rule's SQS queue into the handler's inbox."""
        inbox = self.inboxes[name]
        while not self.stop_event.is_set():
            try:
                answer = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                                  VisibilityTimeout=30)
                messages = answer.get("Messages", [])
                if messages:
                    self.sqs.delete_message_batch(QueueUrl=queue, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
            except Exception:
                if self.stop_event.is_set():
                    return
                log.exception("polling %s failed", queue)
                time.sleep(1)
                continue
            for message in messages:
                try:
                    event = json.loads(message["Body"])
                except ValueError:
                    log.error("%s: message %s is not JSON; dropped", name, message["MessageId"])
                    continue
                inbox.put((message["MessageId"], event, 1))

    def _work(self, name: str) -> None:
        inbox = self.inboxes[name]
        while not self.stop_event.is_set():
            try:
                message_id, event, attempt = inbox.get(timeout=0.5)
            except queue_module.Empty:
                continue
            log.info("%s <- message %s (attempt %d)", name, message_id, attempt)
            try:
                # A copy: a retry must see the event as delivered, not as the failed try left it.
                self.invoke(name, copy.deepcopy(event))
            except BaseException:
                if attempt < self.max_attempts and not self.stop_event.is_set():
                    retry = threading.Timer(self.retry_delay, inbox.put, args=((message_id, event, attempt + 1),))
                    retry.daemon = True
                    retry.start()
                else:
                    log.error("%s: message %s failed %d times; dropped (local dead-letter policy)",
                              name, message_id, attempt)

    def _tick(self, name: str, period: float) -> None:
        while not self.stop_event.wait(period):
            try:
                self.invoke(name, scheduled_event(self.region, name))
            except BaseException:
                pass

    def _thread(self, target: Callable[..., None], args: tuple, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def start(self) -> "Dispatcher":
        for name, queue in self.routes.queues.items():
            self.inboxes[name] = queue_module.Queue()
            for poller in range(self.pollers):
                self._thread(self._poll, (name, queue), f"eventbridge-{name}-{poller}")
            for worker in range(self.concurrency):  # Lambda runs handlers concurrently too
                self._thread(self._work, (name,), f"lambda-{name}-{worker}")
        for name, period in self.routes.schedules.items():
            self._thread(self._tick, (name, self.schedule_period or period), f"schedule-{name}")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=5)
