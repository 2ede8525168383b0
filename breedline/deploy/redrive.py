"""``python -m breedline.deploy redrive``: send the events a handler gave up on back to it.

Every asynchronously invoked function sends an event that failed its two
retries to its failure queue ``<stack>-<Function>-failures`` (the on-failure
destination, :mod:`breedline.deploy.functions`). Once the cause is fixed, this
re-invokes the function asynchronously with each record's original event
(``requestPayload``) and deletes the message only after Lambda accepted the
invoke; a refused invoke keeps the message for the next run. The handlers are
idempotent (duplicate events change nothing), so a re-driven event that had
succeeded meanwhile is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from breedline.deploy.functions import FUNCTIONS, Function, by_name
from breedline.deploy.stage import DeployError

Log = Callable[[str], Any]
#: How long a received message stays hidden while it is re-driven (a dry run puts it back at once).
VISIBILITY_SECONDS = 120


@dataclass
class Outcome:
    """What happened to one message."""

    handler: str
    message_id: str
    action: str  # "redriven", "kept", "would redrive", "skipped"
    detail: str

    def line(self) -> str:
        return f"{self.handler} {self.message_id} {self.action}: {self.detail}"


def queue_of(function: Function, stack: str) -> str:
    return f"{stack}-{function.logical_id}-failures"


def function_of(function: Function, stack: str) -> str:
    return f"{stack}-{function.logical_id}"


def handlers(name: str | None) -> list[Function]:
    """The asynchronous functions to re-drive: the one named, or all of them."""
    asynchronous = [f for f in FUNCTIONS if f.asynchronous]
    if name is None:
        return asynchronous
    found = by_name().get(name) or next((f for f in FUNCTIONS if f.logical_id == name), None)
    if found is None or not found.asynchronous:
        raise DeployError(f"--handler {name!r}: choose one of {', '.join(f.name for f in asynchronous)}")
    return [found]


def redrive(
    session: Any,
    stack: str,
    *,
    handler: str | None = None,
    dry_run: bool = False,
    max_messages: int | None = None,
    log: Log = print,
) -> list[Outcome]:
    """Re-drive up to ``max_messages`` (all by default) from each chosen handler's failure queue."""
    if max_messages is not None and max_messages < 1:
        raise DeployError("--max must be at least 1")
    sqs = session.client("sqs")
    lam = session.client("lambda")
    outcomes: list[Outcome] = []
    for function in handlers(handler):
        try:
            url = sqs.get_queue_url(QueueName=queue_of(function, stack))["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            if handler is not None:
                raise DeployError(
                    f"stack {stack!r} has no failure queue {queue_of(function, stack)}"
                ) from None
            continue  # a row the deployed app does not have (yet)
        left = None if max_messages is None else max_messages - len(outcomes)
        outcomes.extend(_drain(sqs, lam, url, function, stack, dry_run=dry_run, limit=left, log=log))
        if max_messages is not None and len(outcomes) >= max_messages:
            break
    moved = sum(o.action == "redriven" for o in outcomes)
    kept = sum(o.action in ("kept", "skipped") for o in outcomes)
    log(f"{'dry run: ' if dry_run else ''}{len(outcomes)} message(s): {moved} re-driven, {kept} kept")
    return outcomes


def _drain(
    sqs: Any,
    lam: Any,
    url: str,
    function: Function,
    stack: str,
    *,
    dry_run: bool,
    limit: int | None,
    log: Log,
) -> list[Outcome]:
    """Receive until the queue answers nothing.

    Every message handled stays hidden until the end of the run, so none is
    seen twice; those left in the queue are then made visible again at once.
    """
    outcomes: list[Outcome] = []
    keep: list[dict[str, Any]] = []
    try:
        while limit is None or len(outcomes) < limit:
            batch = 10 if limit is None else min(10, limit - len(outcomes))
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=batch,
                WaitTimeSeconds=0,
                VisibilityTimeout=VISIBILITY_SECONDS,
            ).get("Messages", [])
            if not messages:
                break
            for message in messages:
                outcome = _one(sqs, lam, url, message, function, stack, dry_run=dry_run)
                log(outcome.line())
                outcomes.append(outcome)
                if outcome.action != "redriven":
                    keep.append(message)
    finally:
        for message in keep:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return outcomes


def original_event(body: str) -> tuple[dict[str, Any] | None, str]:
    """The event of an on-failure record and a short account of why it failed (or None and why not)."""
    try:
        record = json.loads(body)
    except ValueError:
        return None, "not JSON; left in the queue"
    if not isinstance(record, dict) or "requestPayload" not in record:
        return None, "not a Lambda on-failure record (no requestPayload); left in the queue"
    context = record.get("requestContext") or {}
    response = record.get("responsePayload")
    if isinstance(response, dict):
        error = ": ".join(str(response[k]) for k in ("errorType", "errorMessage") if response.get(k))
    else:
        error = str(response or "")
    why = (
        f"{context.get('condition', 'unknown condition')} after {context.get('approximateInvokeCount', '?')} "
        f"tries; {error[:120] or 'no error recorded'}"
    )
    return record["requestPayload"], why


def _one(
    sqs: Any, lam: Any, url: str, message: dict[str, Any], function: Function, stack: str, *, dry_run: bool
) -> Outcome:
    name = function_of(function, stack)
    event, why = original_event(message.get("Body", ""))
    if event is None:
        return Outcome(function.name, message["MessageId"], "skipped", why)
    if dry_run:
        return Outcome(function.name, message["MessageId"], "would redrive", f"to {name} ({why})")
    try:
        answer = lam.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(event).encode())
    except Exception as exc:  # noqa: BLE001 - any refusal keeps the message; the line says which
        return Outcome(function.name, message["MessageId"], "kept", f"invoke of {name} failed: {exc}")
    if answer.get("StatusCode") != 202:
        return Outcome(
            function.name,
            message["MessageId"],
            "kept",
            f"invoke of {name} answered {answer.get('StatusCode')}",
        )
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return Outcome(function.name, message["MessageId"], "redriven", f"to {name} ({why})")
