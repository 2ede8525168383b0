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


def region() -> str:
    """The Lambda's region (``AWS_REGION`` in Lambda, ``AWS_DEFAULT_REGION`` elsewhere)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(service: str) -> Any:
    """The cached client for ``service``; created on first use."""
    found = _clients.get(service)
    if found is None:
        global _session
        import boto3
        from botocore.config import Config

        if _session is None:
            _session = boto3.session.Session()
        # InvokeEndpoint answers within 60 s; API Gateway gives up after 29 s.
        timeout = 28 if service == "sagemaker-runtime" else 60
        config = Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=timeout)
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
