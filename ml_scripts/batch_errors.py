"""Batch transform: a refused image answers a 200 error line instead of a 4xx.

Why: an endpoint must refuse a bad image with its 4xx (the predict API turns it
into a 4xx JSON answer). A SageMaker Batch Transform job treats any non-2xx
answer to a record as a failure of the input file and ends the whole job
``Failed`` (AWS Developer Guide, *Use Batch Transform*, "Batch Transform
Errors": "If a batch transform job fails to process an input file because of
a problem with the dataset, SageMaker marks the job as failed"; it suggests a
placeholder answer for bad records instead). One corrupt photo in a folder of
ten thousand must not cost the other results, so when the model's environment
says :data:`BATCH_ERRORS_VARIABLE` ``=lines`` (the app sets it in the transform
job's ``Environment``, never on the endpoint), a refusal becomes the 200 answer

    {"error": {"code": "undecodable_image", "message": "...", "status_code": 400}}

and the job writes it to that image's ``.out`` like any prediction.

How: the serving toolkit calls ``transform_fn`` *or* the ``input_fn`` /
``predict_fn`` / ``output_fn`` chain, never both (``sagemaker_inference``'s
Transformer raises a ValueError when a module defines ``transform_fn`` next to
the chain). So :func:`chain` wraps the three functions: a refusal raised by
``input_fn`` becomes a :class:`RecordError` that ``predict_fn`` passes through
and ``output_fn`` writes as the error line. Only refusals of the input (the
``refusal`` class, an HTTP 4xx) are answered so; a model failure (500) still
fails the record, as it should. The setting is read per request, so one model
archive serves both an endpoint and a transform job.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from contract import BATCH_ERRORS_LINES, BATCH_ERRORS_VARIABLE

#: The environment variable, and its value, that turn refusals into error lines.


def error_lines_enabled() -> bool:
    """Whether this process serves a transform job that wants error lines (read per request)."""
    return (os.environ.get(BATCH_ERRORS_VARIABLE) or "").strip().lower() == BATCH_ERRORS_LINES


@dataclass(frozen=True)
class RecordError:
    """One refused record, carried from ``input_fn`` to ``output_fn`` in place of an image."""

    code: str
    message: str
    status_code: int

    def to_line(self) -> str:
        """The error line (one JSON object, no newline), as the ``.out`` file holds it."""
        return json.dumps({"error": {"code": self.code, "message": self.message, "status_code": self.status_code}})


def record_error(exc: Exception) -> RecordError:
    """A refusal as a :class:`RecordError`: inference.py's ``code``/``detail``/``status_code`` when it has them."""
    status = int(getattr(exc, "status_code", 400))
    return RecordError(code=str(getattr(exc, "code", "bad_request")),
                       message=str(getattr(exc, "detail", exc)), status_code=status)


def chain(
    input_fn: Callable[[Any, Any], Any],
    predict_fn: Callable[[Any, Any], Any],
    output_fn: Callable[..., Any],
    refusal: type[Exception],
) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any], Callable[..., Any]]:
    """The serving chain with refusals answered as error lines when :func:`error_lines_enabled`.

    ``functools.wraps`` keeps each function's signature visible to the toolkit,
    which counts parameters to decide whether to pass its context.
    """

    @functools.wraps(input_fn)
    def batch_input_fn(body: Any, content_type: Any) -> Any:
        try:
            return input_fn(body, content_type)
        except refusal as exc:
            if not error_lines_enabled() or not 400 <= int(getattr(exc, "status_code", 500)) < 500:
                raise
            return record_error(exc)

    @functools.wraps(predict_fn)
    def batch_predict_fn(data: Any, model: Any) -> Any:
        if isinstance(data, RecordError):
            return data
        return predict_fn(data, model)

    @functools.wraps(output_fn)
    def batch_output_fn(prediction: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(prediction, RecordError):
            return prediction.to_line()
        return output_fn(prediction, *args, **kwargs)

    return batch_input_fn, batch_predict_fn, batch_output_fn
