"""Logger and metrics shared by every handler, plus the metric names.

Why the names are constants: the CloudWatch dashboard and alarms in ``infra/``
refer to these metrics by name, and a test compares both sides. Emit metrics
only through these constants.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from aws_lambda_powertools import Logger, Metrics

from chalicelib.config import VARIABLES

# Pipeline stage metrics (Count), dimension "service" only.
UPLOADS_SEEN = "UploadsSeen"
DATASETS_ACCEPTED = "DatasetsAccepted"
DATASETS_REJECTED = "DatasetsRejected"
TUNING_STARTED = "TuningJobsStarted"
TUNING_COMPLETED = "TuningJobsCompleted"
TUNING_FAILED = "TuningJobsFailed"
TUNING_OVER_BUDGET = "TuningJobsOverBudget"  # versions rejected by the cost guard (chalicelib.budget)
TRAINING_STARTED = "TrainingJobsStarted"
TRAINING_COMPLETED = "TrainingJobsCompleted"
TRAINING_FAILED = "TrainingJobsFailed"
MODELS_DEPLOYED = "ModelsDeployed"
GATE_REJECTIONS = "GateRejections"
DEPLOYMENTS_QUEUED = "DeploymentsQueued"  # the endpoint was busy: the deployment waits for InService
DEPLOYMENTS_FAILED = "DeploymentsFailed"  # refused, rolled back, or the endpoint Failed (each alerted)
# Batch predictions (chalicelib/batch_jobs.py, batch_events.py).
BATCH_STARTED = "BatchJobsStarted"
BATCH_COMPLETED = "BatchJobsCompleted"
BATCH_FAILED = "BatchJobsFailed"  # refused (no live model, no images), failed or stopped: each alerted
BATCH_IMAGES_FAILED = "BatchImagesFailed"  # images of a finished batch with an error line
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
    TUNING_OVER_BUDGET,
    TRAINING_STARTED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    MODELS_DEPLOYED,
    GATE_REJECTIONS,
    DEPLOYMENTS_QUEUED,
    DEPLOYMENTS_FAILED,
    BATCH_STARTED,
    BATCH_COMPLETED,
    BATCH_FAILED,
    BATCH_IMAGES_FAILED,
    MODEL_ACCURACY,
)
PREDICT_METRICS: tuple[str, ...] = (PREDICT_REQUESTS, PREDICT_LATENCY, PREDICT_ERRORS)
ALL_METRICS: tuple[str, ...] = PIPELINE_METRICS + PREDICT_METRICS

#: Dimension that carries the stable error code on PREDICT_ERRORS.
ERROR_CODE_DIMENSION = "code"

SERVICE_VARIABLE = "POWERTOOLS_SERVICE_NAME"
NAMESPACE_VARIABLE = "POWERTOOLS_METRICS_NAMESPACE"


def documented_default(name: str) -> str:
    """The default :mod:`chalicelib.config` documents for variable ``name`` (the README table's)."""
    return next(variable.default for variable in VARIABLES if variable.name == name)


def powertools_names(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(service, namespace)``: the environment's, else the documented defaults.

    Why applied here: Powertools has no namespace default of its own, and its flush
    raises without one, which made every /predict a 500 (issue 15, item 11).
    """
    env = os.environ if environ is None else environ
    service = env.get(SERVICE_VARIABLE) or documented_default(SERVICE_VARIABLE)
    namespace = env.get(NAMESPACE_VARIABLE) or documented_default(NAMESPACE_VARIABLE)
    return service, namespace


_SERVICE, _NAMESPACE = powertools_names()
logger = Logger(service=_SERVICE)
metrics = Metrics(namespace=_NAMESPACE, service=_SERVICE)


def report_failure(what: str, exc: BaseException) -> None:
    """Say that observability itself failed, without ever raising: the logger first, else stderr."""
    try:
        logger.warning(what, extra={"error": f"{type(exc).__name__}: {exc}"})
    except Exception:  # noqa: BLE001 - the logger is what failed; stderr is all that is left
        try:
            print(f"{what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001, S110 - nothing left to tell
            pass


def flush() -> None:
    """Write the metrics added so far (EMF on stdout), if there are any; never raises.

    A failed flush drops this invocation's metrics and is reported: an answer or
    a handled event must not fail because CloudWatch would not get its figures.
    """
    try:
        if metrics.metric_set:
            metrics.flush_metrics()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        try:
            metrics.clear_metrics()
        except Exception:  # noqa: BLE001, S110 - the set is rebuilt on the next add
            pass
        report_failure("metrics flush failed; this invocation's metrics are dropped", exc)
