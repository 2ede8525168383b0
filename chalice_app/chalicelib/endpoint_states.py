"""SageMaker endpoint statuses and deployment errors: the one spelling of each, pure.

Why apart from :mod:`chalicelib.decisions`: the endpoint's own events (issue 15,
items 1 and 2) are one concern, and :mod:`chalicelib.decisions` re-exports these
names for its callers.
"""

from __future__ import annotations

import re
from typing import Any, Iterable


#: EndpointStatus values, as DescribeEndpoint spells them.
ENDPOINT_IN_SERVICE = "InService"
ENDPOINT_FAILED = "Failed"
ENDPOINT_ROLLBACK_FAILED = "UpdateRollbackFailed"
#: Endpoint states in which UpdateEndpoint is refused: a deployment then waits in the queue.
ENDPOINT_BUSY: frozenset[str] = frozenset(
    {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "OutOfService"}
)
#: The states the endpoint state-change handler acts on (its rule matches only these).
ENDPOINT_SETTLED: tuple[str, ...] = (ENDPOINT_IN_SERVICE, ENDPOINT_FAILED, ENDPOINT_ROLLBACK_FAILED)


def endpoint_status(value: Any) -> str:
    """One spelling of an EndpointStatus: the API's (``InService``) for the event's (``IN_SERVICE``) too.

    Why: AWS's documented endpoint state-change event writes ``IN_SERVICE``,
    ``UPDATING``, ``FAILED``; DescribeEndpoint answers ``InService``,
    ``Updating``, ``Failed``. Every comparison goes through this function.
    """
    text = str(value or "").strip()
    if "_" in text or text.isupper():
        return "".join(part.capitalize() for part in text.split("_") if part)
    return text


def endpoint_event_spellings(statuses: Iterable[str]) -> list[str]:
    """Both spellings of each status, for an EventBridge pattern (it matches strings exactly)."""
    found: list[str] = []
    for status in statuses:
        shouted = re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()
        found += [status, shouted]
    return found


#: Error codes of a Create*/UpdateEndpoint call that a later try may not get: the
#: deployment is retried (the Lambda's retries). Every other refusal (a quota such as
#: ResourceLimitExceeded, a validation error, a denied permission) is final: recorded and alerted.
RETRIABLE_ERROR_CODES: frozenset[str] = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "InternalServerError",
    "InternalServerException",
})


def busy_refusal(code: str, message: str) -> bool:
    """UpdateEndpoint refused because the endpoint is mid-update (DescribeEndpoint said InService a moment ago)."""
    text = (message or "").lower()
    return code in ("ValidationException", "ResourceInUse") and ("in-progress" in text or "in progress" in text)
