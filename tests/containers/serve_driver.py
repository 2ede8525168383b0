"""Serve requests through sagemaker-pytorch-inference's HandlerService, as TorchServe calls it.

Run as a child process (tests/containers/test_toolkits.py) with ``<model_dir>/code``
on ``PYTHONPATH`` and ``SAGEMAKER_PROGRAM=inference.py``, as the serving container
starts TorchServe. TorchServe itself (Java) is not needed: this script plays its
part, a context with the model dir, the request headers and the response status.

Usage: ``python serve_driver.py <model_dir> <requests.json>``; each request is
``{"content_type": ..., "accept": ..., "body_file": ...}``. Prints one JSON line
per request after ``ANSWER ``: the status, the response content type and the body as text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sagemaker_pytorch_serving_container.handler_service import HandlerService


#: Starts each answer line, so the toolkit's and the script's own output can share stdout.
MARK = "ANSWER "


class RequestProcessor:
    """TorchServe's per-request view: the request headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self.headers


class Context:
    """The parts of TorchServe's context that the toolkit uses."""

    def __init__(self, model_dir: str, headers: dict[str, str]) -> None:
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_processor = [RequestProcessor(headers)]
        self.status = 200
        self.phrase = "OK"
        self.content_type = ""

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status, self.phrase = code, phrase

    def set_response_content_type(self, index: int, content_type: str) -> None:
        self.content_type = content_type


def main() -> None:
    model_dir, requests_file = sys.argv[1], sys.argv[2]
    service = HandlerService()
    service.initialize(Context(model_dir, {}))
    for request in json.loads(Path(requests_file).read_text()):
        headers = {"Content-Type": request["content_type"], "Accept": request.get("accept", "application/json")}
        context = Context(model_dir, headers)
        answer = service.handle([{"body": Path(request["body_file"]).read_bytes()}], context)
        body = answer[0]
        text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
        print(MARK + json.dumps({"status": context.status, "content_type": context.content_type, "body": text}), flush=True)


if __name__ == "__main__":
    main()
