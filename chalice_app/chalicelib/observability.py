"""Logger, metrics and tracer shared by every handler, plus the metric names.

Why the names are constants: the CloudWatch dashboard and alarms in ``infra/``
refer to these metrics by name, and a test compares both sides. Emit metrics
only through these constants.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from aws_lambda_powertools import Logger, Metrics

# Pipeline stage metrics (Count), dimension "service" only.
UPLOADS_SEEN = "UploadsSeen"
DATASETS_ACCEPTED = "DatasetsAccepted"
DATASETS_REJECTED = "DatasetsRejected"
TUNING_STARTED = "TuningJobsStarted"
TUNING_COMPLETED = "TuningJobsCompleted"
TUNING_FAILED = "TuningJobsFailed"
TRAINING_STARTED = "TrainingJobsStarted"
TRAINING_COMPLETED = "TrainingJobsCompleted"
TRAINING_FAILED = "TrainingJobsFailed"
MODELS_DEPLOYED = "ModelsDeployed"
GATE_REJECTIONS = "GateRejections"
# Model quality (None unit): test accuracy of each completed final job.
MODEL_ACCURACY = "ModelAccuracy"
# Predict API.
PREDICT_REQUESTS = "PredictRequests"
PREDICT_LATENCY = "PredictLatency"  # Milliseconds, whole handler
PREDICT_ERRORS = "PredictErrors"  # Count, extra dimension "code" (the error code)

PIPELINE_METRICS: tuple[str, ...] = (
    UPLOADS_SEEN,
    DATASETS_ACCEPTED,
    DATASETS_REJECTED,
    TUNING_STARTED,
    TUNING_COMPLETED,
    TUNING_FAILED,
    TRAINING_STARTED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    MODELS_DEPLOYED,
    GATE_REJECTIONS,
    MODEL_ACCURACY,
)
PREDICT_METRICS: tuple[str, ...] = (PREDICT_REQUESTS, PREDICT_LATENCY, PREDICT_ERRORS)
ALL_METRICS: tuple[str, ...] = PIPELINE_METRICS + PREDICT_METRICS

#: Dimension that carries the stable error code on PREDICT_ERRORS.
ERROR_CODE_DIMENSION = "code"



class _NoTracer:
    """Stand-in when the X-Ray SDK is absent: same decorators, no tracing."""

    def capture_method(self, method: Callable[..., Any]) -> Callable[..., Any]:
        return method

    def capture_lambda_handler(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        return handler

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str | None = None) -> None:
        return None


class LazyTracer:
    """A Powertools ``Tracer`` created on first use.

    Why: constructing ``Tracer()`` imports the X-Ray SDK, whose recorder builds
    a botocore client at import time (0.3-0.7 s measured here). The predict
    route's cold start should not pay for that; the pipeline handlers pay it
    on their first traced call instead. Use it exactly like ``Tracer``.
    """

    def __init__(self) -> None:
        self._tracer: Any = None

    @property
    def real(self) -> Any:
        if self._tracer is None:
            try:
                import aws_xray_sdk  # noqa: F401  (not in the Lambda zip; see requirements.txt)

                from aws_lambda_powertools import Tracer

                self._tracer = Tracer()
            except ImportError:
                logger.warning("aws-xray-sdk is not installed; tracing is off")
                self._tracer = _NoTracer()
        return self._tracer

    def capture_method(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """Like ``Tracer.capture_method``, but the tracer is built at the first call."""
        wrapped: Callable[..., Any] | None = None

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal wrapped
            if wrapped is None:
                wrapped = self.real.capture_method(method)
            return wrapped(*args, **kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


logger = Logger()
metrics = Metrics()
tracer = LazyTracer()
