"""What a Lambda keeps between invocations, and the plumbing every step shares.

Why one module: the parsed settings, the state stores, the idempotency
layers and the predict route's copy of the live model's name are caches that
live as long as the Lambda's process. Keeping all of them here means there is
exactly one of each, and :func:`reset` forgets every one of them (tests call
it between cases, after changing the environment or the AWS endpoints).

Idempotency, two layers deep:

1. Powertools idempotency (DynamoDB) around each side-effecting step
   (:func:`idempotent`), keyed by what makes it unique (data set + version,
   tuning job, training job, job + status), with a ``key_prefix`` so the same
   step taken by two different Lambdas (marker event and quiet-period check)
   shares one record. Each step has its own persistence-layer instance.
2. Deterministic SageMaker names: a duplicate Create* fails with
   ResourceInUse, which is read as "already started", after any idempotency
   record has expired.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

from chalicelib import clients
from chalicelib.config import VARIABLES, Settings
from chalicelib.observability import logger, metrics
from chalicelib.state import StateStore


class PipelineError(RuntimeError):
    """A step failed in a way worth a Lambda retry (the idempotency record is released)."""


class NotYet(Exception):
    """Raised inside an idempotent step whose answer means "not yet": ask again later.

    Why an exception: Powertools idempotency stores whatever the step returns
    for the whole expiry (24 h), so a returned "ignored, still InProgress"
    would make the genuine Completed event a replay of it. On an exception
    Powertools deletes the in-progress record instead (``_get_function_response``
    in 3.x), and :func:`idempotent` turns this one back into ``result``.
    """

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(str(result.get("reason", "not yet")))
        self.result = result


_settings_cache: dict[tuple[str | None, ...], Settings] = {}
_stores: dict[str, StateStore] = {}
_idempotent_cache: dict[tuple[str, str, int], tuple[Callable[..., Any], Any]] = {}
_lambda_context: Any = None
#: The predict route's copy of the live model's name, per state table: (expires at, name).
live_names: dict[str, tuple[float, str]] = {}


def settings() -> Settings:
    """Settings for the current environment, parsed once per distinct environment.

    Read per invocation (the local runtime and tests change the environment),
    but parsed only when a value changed: the predict route's budget is ~2 ms.
    """
    key = tuple(os.environ.get(v.name) for v in VARIABLES)
    found = _settings_cache.get(key)
    if found is None:
        found = Settings.from_env()
        _settings_cache.clear()
        _settings_cache[key] = found
    return found


def store(s: Settings) -> StateStore:
    """The state store of ``s.state_table``, one per table."""
    found = _stores.get(s.state_table)
    if found is None:
        found = StateStore(clients.client("dynamodb"), s.state_table)
        _stores[s.state_table] = found
    return found


def reset() -> None:
    """Forget every cache: clients, settings, stores, idempotency layers, the live model's name."""
    clients.reset()
    _settings_cache.clear()
    _stores.clear()
    _idempotent_cache.clear()
    live_names.clear()


def set_lambda_context(context: Any) -> None:
    """Give idempotency the remaining time of the invocation (in-progress expiry)."""
    global _lambda_context
    _lambda_context = context


def count(name: str, value: float = 1, unit: str = "Count") -> None:
    metrics.add_metric(name=name, unit=unit, value=value)


def log_keys(dataset: str | None, **keys: str | None) -> None:
    """Log keys: the data set name is the correlation id across every Lambda."""
    present = {k: v for k, v in keys.items() if v}
    if dataset:
        logger.set_correlation_id(dataset)
        present["dataset"] = dataset
    if present:
        logger.append_keys(**present)


def _subject(text: str) -> str:
    """SNS subjects: printable ASCII, one line, at most 100 characters."""
    return re.sub(r"[^ -~]", "?", text)[:100]


def alert(subject: str, details: dict[str, Any]) -> bool:
    """Tell operators (SNS) and the logs; returns whether a notification was sent."""
    s = settings()
    logger.error(f"ALERT: {subject}", extra={"alert": details})
    if not s.alert_topic_arn:
        logger.warning("alert not sent: BREEDLINE_ALERT_TOPIC_ARN is empty")
        return False
    clients.client("sns").publish(
        TopicArn=s.alert_topic_arn,
        Subject=_subject(f"Breedline: {subject}"),
        Message=json.dumps({"subject": subject, **details}, indent=1, default=str),
    )
    return True


def client_error() -> type[Exception]:
    """botocore's ClientError, imported on first use (boto3 stays out of the cold start)."""
    from botocore.exceptions import ClientError

    return ClientError


def idempotent(key_prefix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a step idempotent on its ``request`` keyword argument.

    Built lazily (importing the utility imports boto3) and one
    ``DynamoDBPersistenceLayer`` per step: sharing an instance between two
    decorated functions breaks them.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*, request: dict[str, Any], **kwargs: Any) -> Any:
            wrapped, config = _idempotent_step(fn, key_prefix)
            if _lambda_context is not None and hasattr(_lambda_context, "get_remaining_time_in_millis"):
                config.register_lambda_context(_lambda_context)
            from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

            try:
                return wrapped(request=request, **kwargs)
            except IdempotencyAlreadyInProgressError:
                logger.info("same step already in progress elsewhere; skipping", extra={"step": key_prefix})
                return {"outcome": "in_progress", "step": key_prefix}
            except NotYet as exc:
                logger.info("not yet; no idempotency record kept", extra={"step": key_prefix, "result": exc.result})
                return exc.result

        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call

    return decorate


def _idempotent_step(fn: Callable[..., Any], key_prefix: str) -> tuple[Callable[..., Any], Any]:
    """The idempotent wrapper of ``fn`` and its config, built once per step, table and expiry."""
    s = settings()
    cache_key = (key_prefix, s.idempotency_table, s.idempotency_ttl_seconds)
    entry = _idempotent_cache.get(cache_key)
    if entry is None:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        layer = DynamoDBPersistenceLayer(table_name=s.idempotency_table, boto3_client=clients.client("dynamodb"))
        config = IdempotencyConfig(expires_after_seconds=s.idempotency_ttl_seconds)
        wrapped = idempotent_function(
            fn, data_keyword_argument="request", persistence_store=layer, config=config, key_prefix=key_prefix
        )
        entry = (wrapped, config)
        _idempotent_cache[cache_key] = entry
    return entry
