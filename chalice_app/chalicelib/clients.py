"""Lazily created, cached boto3 clients.

Why lazy: importing boto3 costs more than the rest of the Lambda's cold start,
and the predict route never needs DynamoDB or S3. Why no endpoint arguments:
boto3 reads ``AWS_ENDPOINT_URL_<SERVICE>`` itself, which is how the local
runtime points the same code at its local services.
"""

from __future__ import annotations

import os
from typing import Any

_clients: dict[str, Any] = {}
_session: Any = None

#: The longest an InvokeEndpoint connection may take to open (the rest of the budget is the read).
CONNECT_TIMEOUT_SECONDS = 2.0
#: Every other client: botocore's standard retries, SageMaker's control plane answers quickly.
DEFAULT_READ_TIMEOUT_SECONDS = 60


def region() -> str:
    """The Lambda's region (``AWS_REGION`` in Lambda, ``AWS_DEFAULT_REGION`` elsewhere)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def config_options(service: str, budget_seconds: float | None = None) -> dict[str, Any]:
    """botocore ``Config`` arguments for ``service``.

    ``sagemaker-runtime`` gets one attempt whose connect plus read timeouts add up
    to ``budget_seconds`` (BREEDLINE_INVOKE_TIMEOUT_SECONDS): a retry after a read
    timeout would outlive API Gateway's 29 s (issue 15 measured 112 s), and a
    throttled call is answered 503 ``endpoint_busy`` for the client to retry.
    """
    if service == "sagemaker-runtime" and budget_seconds is not None:
        connect = min(CONNECT_TIMEOUT_SECONDS, budget_seconds / 2)
        return {
            "connect_timeout": connect,
            "read_timeout": budget_seconds - connect,
            "retries": {"mode": "standard", "total_max_attempts": 1},
        }
    return {"retries": {"mode": "standard", "max_attempts": 3}, "read_timeout": DEFAULT_READ_TIMEOUT_SECONDS}


def client(service: str, budget_seconds: float | None = None) -> Any:
    """The cached client for ``service``; created on first use (``budget_seconds``: see :func:`config_options`)."""
    found = _clients.get(service)
    if found is None:
        global _session
        import boto3
        from botocore.config import Config

        if _session is None:
            _session = boto3.session.Session()
        config = Config(**config_options(service, budget_seconds))
        found = _session.client(service, region_name=region(), config=config)
        _clients[service] = found
    return found


def set_client(service: str, value: Any) -> None:
    """Install a client (tests: a Stubber-wrapped or request-checking client)."""
    _clients[service] = value


def reset() -> None:
    """Forget every client, e.g. between tests or after endpoints change."""
    global _session
    _clients.clear()
    _session = None


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or '' for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", ""))
    return str(exc)
