"""The shapes the local SageMaker service answers in: its errors, timestamps and JSON.

Why a module of its own: the service, the training runner, the tuner and the
endpoint host all need the same notion of an API error and of time as the
wire and the events carry it, and none of them should import the others for it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any


class ServiceError(Exception):
    """An error answered in SageMaker's JSON error format (``__type`` + ``message``)."""

    def __init__(self, code: str, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields


def not_found(message: str) -> ServiceError:
    return ServiceError("ResourceNotFound", message)


def validation(message: str) -> ServiceError:
    return ServiceError("ValidationException", message)


def in_use(message: str) -> ServiceError:
    return ServiceError("ResourceInUse", message)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def to_epoch(value: dt.datetime) -> float:
    return value.timestamp()


def to_millis(value: dt.datetime) -> int:
    return int(value.timestamp() * 1000)


def wire_json(obj: Any) -> str:
    """JSON for the SageMaker wire: timestamps as epoch seconds, as botocore parses them."""
    return json.dumps(obj, default=lambda v: to_epoch(v) if isinstance(v, dt.datetime) else str(v))
