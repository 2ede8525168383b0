"""The serving script's refusals: :class:`InferenceInputError` and the stable code of each.

Why apart from ``inference.py``: the error contract (status, code, JSON body)
is one concern, shared by the request checks and the answer, and the serving
script stays within the layout's module size. Copied into ``code/`` with the
other serving modules (``final_job.SERVING_FILES``); ``inference`` re-exports
every name here, which is where callers read them.
"""

from __future__ import annotations

import json
from http import HTTPStatus

try:  # the serving containers ship the toolkit; its error class is what sets the HTTP status
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # anywhere else (the bench, a plain venv) the scripts still run

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        """The toolkit's error contract (``status_code``, ``message``, ``phrase``) without the toolkit."""

        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)


#: The stable error code of each refusal, the same words the predict API answers with.
ERROR_CODES: dict[int, str] = {
    400: "undecodable_image",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
#: Refusals with a code of their own (the status alone would give ERROR_CODES' code).
IMAGE_TOO_LARGE = "image_too_large"
CONTENT_TYPE_MISMATCH = "content_type_mismatch"


class InferenceInputError(_ToolkitError, ValueError):
    """A request the endpoint refuses; ``status_code`` is the HTTP status to answer.

    Why a toolkit error: the serving toolkit's Transformer answers any other
    exception with a 500, which the Lambda turns into a 502 and the endpoint's
    server-error alarm counts. Its ``message`` is the whole client body:
    the toolkit answers ``message``, a newline, then the trace, so the first
    line is this JSON (``{"code", "message", "status_code"}``).
    """

    def __init__(self, message: str, status_code: int = 400, code: str | None = None) -> None:
        self.detail = message
        self.code = code or ERROR_CODES.get(status_code, "bad_request")
        body = json.dumps({"code": self.code, "message": message, "status_code": status_code})
        super().__init__(status_code, body, HTTPStatus(status_code).phrase)

    def __str__(self) -> str:
        return self.detail

    def to_json(self) -> str:
        """The JSON error body (one line), as the client gets it first."""
        return self.message


class ServingBackendError(RuntimeError):
    """BREEDLINE_SERVING_BACKEND asks for something this process cannot do."""
