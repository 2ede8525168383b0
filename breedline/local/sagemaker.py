"""A local SageMaker service: the wire protocols boto3 speaks, backed by real processes.

Why it exists: moto's SageMaker completes jobs instantly with fake results (no
training process, no metrics from a log, no model artifact, no serving
container) and lacks calls the pipeline needs, e.g. the trials of a tuning job
(``ListTrainingJobsForHyperParameterTuningJob``) with their objective values,
and the SageMaker state-change events the app's handlers run on. This service
answers the ``sagemaker`` JSON 1.1 API (``X-Amz-Target: SageMaker.<Op>``) and
the ``sagemaker-runtime`` ``InvokeEndpoint`` REST call on loopback, validates
every request against botocore's model of the real service, and really runs
the work: training jobs are child processes under the container contract,
tuning jobs run Optuna-driven trials, endpoints are HTTP servers around
``inference.py``. Every state change is put on the local EventBridge in
SageMaker's documented shape. docs/local.md describes the whole local runtime.

The service in modules:

- :mod:`.sagemaker_state`: the resources, tags, events and the saved snapshot;
- :mod:`.sagemaker_jobs`: training and tuning job operations;
- :mod:`.sagemaker_hosting`: model, endpoint config and endpoint operations;
- :mod:`.sagemaker_transform`: batch transform job operations (the work: :mod:`.sagemaker_transform_run`);
- this module: :class:`SageMakerBackend`, the one path every request takes;
- :mod:`.sagemaker_http`: the HTTP server boto3 talks to;
- :mod:`.training`, :mod:`.tuning`, :mod:`.endpoints`: the work behind them.

boto3 reaches it through ``AWS_ENDPOINT_URL_SAGEMAKER`` and
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (both point at the same server).
"""

from __future__ import annotations

import logging

from .sagemaker_hosting import HostingOperations
from .sagemaker_jobs import JobOperations
from .sagemaker_transform import TransformOperations
from .sagemaker_wire import ServiceError
from .validation import validate_request, validate_response

log = logging.getLogger("runtime.sagemaker")


class SageMakerBackend(JobOperations, HostingOperations, TransformOperations):
    """All resources of one local account and region, and the operations on them."""

    OPERATIONS = (
        "CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob", "ListTrainingJobs",
        "CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob", "StopHyperParameterTuningJob",
        "ListHyperParameterTuningJobs", "ListTrainingJobsForHyperParameterTuningJob",
        "CreateModel", "DescribeModel", "DeleteModel", "ListModels",
        "CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig",
        "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint", "ListEndpoints",
        "ListTags", "AddTags", "DeleteTags",
        "CreateTransformJob", "DescribeTransformJob", "StopTransformJob", "ListTransformJobs",
    )

    def call(self, op_name: str, params: dict) -> dict:
        """Validate, run and check one API operation (the path every request takes)."""
        validate_request("sagemaker", op_name, params)
        if op_name not in self.OPERATIONS:
            raise ServiceError("UnknownOperationException", f"{op_name} is not supported by the local SageMaker service")
        result = getattr(self, op_name)(params)
        validate_response("sagemaker", op_name, result)
        if op_name.startswith(("Create", "Update", "Stop", "Delete", "Add")):
            self.changed()
        return result

    # ---------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Stop every running job and endpoint process (Ctrl-C path)."""
        self.closing.set()
        with self.lock:
            runners = list(self.runners.values())
            hosts = list(self.hosts.values())
        for runner in runners:
            try:
                runner.stop(quiet=True)
            except Exception:
                log.exception("stopping %s failed", runner)
        for host in hosts:
            host.shutdown()
        for runner in runners:
            runner.join(timeout=30)
        self.changed()

