"""Logger and metrics shared by every handler, plus the metric names.

Why the names are constants: the CloudWatch dashboard and alarms in ``infra/``
refer to these metrics by name, and a test compares both sides. Emit metrics
only through these constants.
"""

from __future__ import annotations

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

logger = Logger()
metrics = Metrics()


def flush() -> None:
    """Write the metrics added so far (EMF on stdout), if there are any."""
    if metrics.metric_set:
        metrics.flush_metrics()
