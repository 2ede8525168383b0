"""The local SageMaker service on the wire: one loopback HTTP server for both protocols.

Why one server: boto3's ``sagemaker`` client speaks JSON 1.1 (``POST /`` with
``X-Amz-Target: SageMaker.<Op>``) and its ``sagemaker-runtime`` client REST
(``POST /endpoints/<name>/invocations``); ``AWS_ENDPOINT_URL_SAGEMAKER`` and
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` both point here. Errors come back in
SageMaker's shape (``__type`` + ``message``, HTTP 400), so boto3 raises the
same ClientErrors as against AWS; a model's non-2xx answer becomes
``ModelError`` (HTTP 424, with ``OriginalStatusCode`` and ``OriginalMessage``),
as SageMaker's runtime answers it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any, Callable

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .sagemaker import SageMakerBackend
from .sagemaker_wire import ServiceError, wire_json
from .validation import validate_request

log = logging.getLogger("runtime.sagemaker")

#: InvokeEndpoint's largest request body (SageMaker real-time inference: 6 MB).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024


def _error_response(err: ServiceError, rest: bool = False) -> Response:
    body = {"__type": err.code, "message": err.message, **err.fields}
    if rest:
        body["Message"] = err.message
    response = Response(json.dumps(body), status=err.status, content_type="application/x-amz-json-1.1")
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    if rest:
        response.headers["x-amzn-ErrorType"] = err.code
    return response


class LocalSageMakerApp:
    """WSGI application for both the control-plane and runtime protocols."""

    def __init__(self, backend: SageMakerBackend) -> None:
        self.backend = backend
        self.url_map = Map([
            Rule("/endpoints/<endpoint>/invocations", endpoint="invoke", methods=["POST"]),
            Rule("/", endpoint="api", methods=["POST"]),
        ])

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            route, args = adapter.match()
        except MethodNotAllowed as exc:
            return exc.get_response()
        except HTTPException as exc:
            if request.headers.get("X-Amz-Target"):
                route, args = "api", {}
            else:
                return exc.get_response()
        if route == "invoke":
            return self.invoke(request, args["endpoint"])
        return self.api(request)

    def api(self, request: Request) -> Response:
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, op_name = target.partition(".")
        try:
            if prefix != "SageMaker" or not op_name:
                raise ServiceError("UnknownOperationException", f"bad X-Amz-Target {target!r}")
            try:
                params = json.loads(request.get_data() or b"{}")
            except json.JSONDecodeError as exc:
                raise ServiceError("SerializationException", f"request body is not JSON: {exc}") from None
            result = self.backend.call(op_name, params)
        except ServiceError as err:
            if err.status >= 500:
                log.error("%s: %s", op_name, err.message)
            return _error_response(err)
        except Exception as exc:  # a bug in the service: say so in SageMaker's shape
            log.exception("%s failed", op_name)
            return _error_response(ServiceError("InternalFailure", f"{type(exc).__name__}: {exc}", 500))
        response = Response(wire_json(result), content_type="application/x-amz-json-1.1")
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response

    def invoke(self, request: Request, endpoint_name: str) -> Response:
        """``InvokeEndpoint``: validated like the real call, forwarded to the endpoint's model server."""
        params: dict[str, Any] = {"EndpointName": endpoint_name, "Body": request.get_data()}
        if request.content_type:
            params["ContentType"] = request.headers["Content-Type"]
        if request.headers.get("Accept"):
            params["Accept"] = request.headers["Accept"]
        if request.headers.get("X-Amzn-SageMaker-Target-Variant"):
            params["TargetVariant"] = request.headers["X-Amzn-SageMaker-Target-Variant"]
        try:
            validate_request("sagemaker-runtime", "InvokeEndpoint", params)
            if len(params["Body"]) > MAX_PAYLOAD_BYTES:
                raise ServiceError("ValidationError", "Request payload is larger than the 6 MB limit")
            with self.backend.lock:
                host = self.backend.hosts.get(endpoint_name)
                endpoint = self.backend.endpoints.get(endpoint_name)
            if host is None or endpoint is None:
                raise ServiceError("ValidationError",
                                   f"Endpoint {endpoint_name} of account {self.backend.account} not found.")
            status, headers, body, variant = host.invoke(params)
        except ServiceError as err:
            return _error_response(err, rest=True)
        except Exception as exc:
            log.exception("InvokeEndpoint failed")
            return _error_response(ServiceError("InternalFailure", f"{type(exc).__name__}: {exc}", 500), rest=True)
        if not 200 <= status < 300:
            return _error_response(self._model_error(endpoint_name, status, body), rest=True)
        response = Response(body, status=200, content_type=headers.get("Content-Type", "application/json"))
        response.headers["x-Amzn-Invoked-Production-Variant"] = variant
        return response


    def _model_error(self, endpoint_name: str, status: int, body: bytes) -> ServiceError:
        """A model's non-2xx answer as SageMaker's runtime reports it: ``ModelError``, HTTP 424.

        ``OriginalStatusCode`` is the container's status and ``OriginalMessage`` its
        whole body (through the serving toolkit: the error's message, a newline and
        the trace), which the app's predict route reads.
        """
        text = body.decode("utf-8", "replace")
        side = "client" if 400 <= status < 500 else "server"
        return ServiceError(
            "ModelError",
            f'Received {side} error ({status}) from primary with message "{text}". '
            f"See the endpoint's log in {self.backend.state_dir / 'endpoints' / endpoint_name} for more information.",
            424,
            OriginalStatusCode=status,
            OriginalMessage=text,
            LogStreamArn=f"arn:aws:logs:{self.backend.region}:{self.backend.account}:log-group:"
                         f"/aws/sagemaker/Endpoints/{endpoint_name}",
        )


class LocalSageMakerServer:
    """The service on a loopback port, in a background thread."""

    def __init__(self, backend: SageMakerBackend, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self.server = make_server(host, port, LocalSageMakerApp(backend), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-sagemaker", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def start(self) -> "LocalSageMakerServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.backend.shutdown()
        self.server.shutdown()
        self.thread.join(timeout=10)


def quiet_werkzeug() -> None:
    """Keep werkzeug's per-request access log out of the operator's terminal."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
