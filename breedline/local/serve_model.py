"""Serve one unpacked ``model.tar.gz`` over HTTP through AWS's own PyTorch serving toolkit.

Run as a child process: ``python serve_model.py MODEL_DIR``. Each request goes
through ``sagemaker_pytorch_serving_container.handler_service.HandlerService``,
the handler TorchServe calls inside SageMaker's PyTorch inference container: its
``initialize`` imports ``code/inference.py`` (``SAGEMAKER_PROGRAM``) and loads the
model once with ``model_fn``; its ``handle`` runs the toolkit's Transformer, with
its content-type and accept handling and its error-to-status mapping (a
``sagemaker_inference`` toolkit error answers its own status, anything else a
500, the body being the error's message, a newline and the trace). Only
TorchServe's Java frontend is replaced: a small HTTP server answers ``GET /ping``
and ``POST /invocations`` and hands each request to the handler with a context
shaped like TorchServe's. It prints ``LISTENING <port>`` once ready so the
parent knows where it is.

Why standalone: it must not import the ``breedline`` package, so the endpoint
runs the model's own code and the toolkit, like the container. Its launcher
(``endpoints.ModelServer``) puts ``MODEL_DIR/code`` first on ``PYTHONPATH`` and
runs it with ``python -P``, as the container's toolkit puts the code folder on
the path, so ``inference.py`` imports its neighbours from the model archive.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

#: The toolkit's module for the user script when the model sets no SAGEMAKER_PROGRAM (its own default).
DEFAULT_PROGRAM = "inference.py"


class _RequestProcessor:
    """TorchServe's per-request processor, as far as the toolkit reads it: the request headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class ServingContext:
    """The part of TorchServe's ``ts.context.Context`` that the toolkit's handler service uses.

    One per request (and one for ``initialize``): TorchServe gives the handler
    the model directory, the request's headers, and takes back the status and
    content type the handler sets.
    """

    def __init__(self, model_dir: str, headers: Mapping[str, str] | None = None) -> None:
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_processor = [_RequestProcessor(headers or {})]
        self.status = 200
        self.phrase = "OK"
        self.content_type = "application/json"

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status = int(code)
        self.phrase = phrase

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type = value


def load_service(model_dir: Path) -> Any:
    """The toolkit's handler service, initialised on ``model_dir`` (imports inference.py, runs model_fn)."""
    if not (model_dir / "code" / "inference.py").is_file():
        raise SystemExit(f"no code/inference.py in {model_dir}: the model archive cannot serve on its own")
    os.environ.setdefault("SAGEMAKER_PROGRAM", DEFAULT_PROGRAM)
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    service = HandlerService()
    service.initialize(ServingContext(str(model_dir)))
    return service


def invoke(service: Any, model_dir: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str, bytes]:
    """One request through the handler service: ``(status, content type, body)`` as TorchServe answers."""
    context = ServingContext(model_dir, headers)
    (answer,) = service.handle([{"body": body}], context)
    if isinstance(answer, str):
        answer = answer.encode("utf-8")
    return context.status, context.content_type, bytes(answer)


def build_app(service: Any, model_dir: str):
    def app(environ, start_response):
        request = Request(environ)
        if request.path == "/ping" and request.method == "GET":
            return Response("", status=200)(environ, start_response)
        if request.path != "/invocations" or request.method != "POST":
            return Response("not found", status=404)(environ, start_response)
        status, content_type, body = invoke(service, model_dir, request.get_data(), request.headers)
        if status >= 500:
            print(body.decode("utf-8", "replace"), file=sys.stderr, flush=True)
        return Response(body, status=status, content_type=content_type)(environ, start_response)

    return app


def main() -> None:
    model_dir = Path(sys.argv[1])
    service = load_service(model_dir)
    server = make_server("127.0.0.1", 0, build_app(service, str(model_dir)), threaded=True)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"LISTENING {server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
