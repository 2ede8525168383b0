"""Test doubles for the Chalice app: a strict SageMaker, sample events, a tiny data set.

Why a fake SageMaker and not moto's: moto's SageMaker completes jobs at once
with made-up results and lacks UpdateEndpoint. This fake
checks every request against botocore's service model more strictly than
botocore does (max lengths, patterns, enums, ranges), records it, and answers
the describe calls with what each test sets up.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.validate
from botocore.exceptions import ClientError

#: The data bucket of the tests' settings (tests/app/conftest.py sets BREEDLINE_BUCKET to it).
BUCKET = "breedline-data"
ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
_SERVICE_MODELS: dict[str, Any] = {}


def service_model(service: str) -> Any:
    if service not in _SERVICE_MODELS:
        _SERVICE_MODELS[service] = boto3.session.Session(region_name="us-east-1").client(service)._service_model
    return _SERVICE_MODELS[service]


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _strict(value: Any, shape: Any, path: str, errors: list[str]) -> None:
    """The checks botocore's validator leaves to the service: max, pattern, enum, ranges."""
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        for name, member in shape.members.items():
            if name in value:
                _strict(value[name], member, f"{path}.{name}", errors)
        return
    if kind == "list":
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: {len(value)} items > max {meta['max']}")
        for i, item in enumerate(value):
            _strict(item, shape.member, f"{path}[{i}]", errors)
        return
    if kind == "map":
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: {len(value)} entries > max {meta['max']}")
        for k, v in value.items():
            _strict(k, shape.key, f"{path}.key({k})", errors)
            _strict(v, shape.value, f"{path}[{k}]", errors)
        return
    if kind == "string":
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: length {len(value)} > max {meta['max']}")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not in {shape.enum}")
        pattern = meta.get("pattern")
        if pattern:
            try:
                compiled = re.compile(pattern)
            except re.error:  # Java-only syntax (\p{...}); the service checks it
                compiled = None
            if compiled is not None and not compiled.fullmatch(value):
                errors.append(f"{path}: {value!r} does not match {pattern}")
        return
    if kind in ("integer", "long", "float", "double"):
        if "min" in meta and value < meta["min"]:
            errors.append(f"{path}: {value} < min {meta['min']}")
        if "max" in meta and value > meta["max"]:
            errors.append(f"{path}: {value} > max {meta['max']}")


def validate_request(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise AssertionError if AWS would reject these parameters."""
    shape = service_model(service).operation_model(operation).input_shape
    botocore.validate.validate_parameters(params, shape)  # required, types, unknown keys, min
    errors: list[str] = []
    _strict(params, shape, operation, errors)
    assert not errors, "\n".join(errors)


def client_error(code: str, message: str, operation: str, **extra: Any) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, **extra}, operation)


_OPERATIONS = {
    "create_hyper_parameter_tuning_job": ("CreateHyperParameterTuningJob", "HyperParameterTuningJobName"),
    "create_training_job": ("CreateTrainingJob", "TrainingJobName"),
    "create_model": ("CreateModel", "ModelName"),
    "create_endpoint_config": ("CreateEndpointConfig", "EndpointConfigName"),
    "create_endpoint": ("CreateEndpoint", "EndpointName"),
    "update_endpoint": ("UpdateEndpoint", None),
    "describe_hyper_parameter_tuning_job": ("DescribeHyperParameterTuningJob", None),
    "stop_hyper_parameter_tuning_job": ("StopHyperParameterTuningJob", None),
    "describe_training_job": ("DescribeTrainingJob", None),
    "describe_endpoint": ("DescribeEndpoint", None),
    "list_tags": ("ListTags", None),
    "create_transform_job": ("CreateTransformJob", "TransformJobName"),
    "describe_transform_job": ("DescribeTransformJob", None),
}
_EXISTS_MESSAGE = {
    "CreateModel": "Cannot create already existing model",
    "CreateEndpointConfig": "Cannot create already existing endpoint configuration",
    "CreateEndpoint": "Cannot create already existing endpoint",
}


class FakeSageMaker:
    """Records and validates every call; creates are single-flight by name like SageMaker's."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.created: dict[str, dict[str, dict[str, Any]]] = {}
        self.tuning: dict[str, dict[str, Any]] = {}
        self.training: dict[str, dict[str, Any]] = {}
        self.endpoint: dict[str, Any] | None = None
        #: the config an UpdateEndpoint asked for; DescribeEndpoint shows the old one until the update ends
        self.pending_config: str | None = None
        self.tags_by_arn: dict[str, list[dict[str, str]]] = {}
        self.stopped: list[str] = []  # tuning jobs StopHyperParameterTuningJob was accepted for
        self.transform: dict[str, dict[str, Any]] = {}  # DescribeTransformJob answers a test sets up

    def __getattr__(self, method: str) -> Any:
        if method not in _OPERATIONS:
            raise AttributeError(method)
        operation, name_key = _OPERATIONS[method]

        def call(**params: Any) -> dict[str, Any]:
            validate_request("sagemaker", operation, params)
            self.calls.append((operation, copy.deepcopy(params)))
            return self._answer(operation, name_key, params)

        return call

    def finish_endpoint(self, roll_back: bool = False, status: str = "InService", failure: str = "") -> dict[str, Any]:
        """SageMaker ending a Create/UpdateEndpoint; returns the state-change event it sends.

        ``roll_back``: the update did not take and the old config still serves
        (an alarm or a failed health check); ``status="Failed"``: a failed endpoint.
        """
        assert self.endpoint is not None
        if self.pending_config and not roll_back and status == "InService":
            self.endpoint["EndpointConfigName"] = self.pending_config
        self.pending_config = None
        self.endpoint["EndpointStatus"] = status
        if failure:
            self.endpoint["FailureReason"] = failure
        return endpoint_event(self.endpoint["EndpointConfigName"], status)

    def names(self, operation: str) -> list[str]:
        return [p for op, p in self.calls if op == operation]  # type: ignore[misc]

    def requests(self, operation: str) -> list[dict[str, Any]]:
        return [params for op, params in self.calls if op == operation]

    def _answer(self, operation: str, name_key: str | None, params: dict[str, Any]) -> dict[str, Any]:
        if operation.startswith("Create"):
            name = params[name_key]  # type: ignore[index]
            bucket = self.created.setdefault(operation, {})
            if name in bucket:
                if operation in _EXISTS_MESSAGE:
                    raise client_error("ValidationException", f"{_EXISTS_MESSAGE[operation]} \"{name}\"", operation)
                raise client_error("ResourceInUse", f"Job {name} already exists", operation)
            bucket[name] = params
            if operation == "CreateEndpoint":
                self.endpoint = {"EndpointName": name, "EndpointConfigName": params["EndpointConfigName"], "EndpointStatus": "Creating"}
            return {"Arn": f"arn:aws:sagemaker:us-east-1:123456789012:{operation[6:].lower()}/{name}"}
        if operation == "UpdateEndpoint":
            if self.endpoint is None:
                raise client_error("ValidationException", "Could not find endpoint", operation)
            if self.endpoint["EndpointStatus"] != "InService":
                raise client_error("ValidationException", f"Cannot update in-progress endpoint \"{params['EndpointName']}\".", operation)
            self.pending_config = params["EndpointConfigName"]
            self.endpoint["EndpointStatus"] = "Updating"
            return {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x"}
        if operation == "DescribeEndpoint":
            if self.endpoint is None:
                raise client_error("ValidationException", f"Could not find endpoint \"{params['EndpointName']}\".", operation)
            return dict(self.endpoint)
        if operation == "DescribeHyperParameterTuningJob":
            found = self.tuning.get(params["HyperParameterTuningJobName"])
            if found is None and params["HyperParameterTuningJobName"] in self.created.get("CreateHyperParameterTuningJob", {}):
                return {"HyperParameterTuningJobName": params["HyperParameterTuningJobName"],
                        "HyperParameterTuningJobStatus": "InProgress"}  # created, and no test has ended it
            if found is None:
                raise client_error("ResourceNotFound", "Amazon SageMaker can't find a tuning job", operation)
            return found
        if operation == "StopHyperParameterTuningJob":
            name = params["HyperParameterTuningJobName"]
            if name not in self.created.get("CreateHyperParameterTuningJob", {}):
                raise client_error("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}", operation)
            if name in self.stopped:
                raise client_error("ValidationException", f"The hyperparameter tuning job {name} is Stopping", operation)
            self.stopped.append(name)
            return {}
        if operation == "DescribeTrainingJob":
            found = self.training.get(params["TrainingJobName"])
            if found is None:
                raise client_error("ValidationException", "Requested resource not found.", operation)
            return found
        if operation == "DescribeTransformJob":
            if params["TransformJobName"] not in self.transform:
                raise client_error("ValidationException", "Could not find requested job", operation)
            return self.transform[params["TransformJobName"]]
        if operation == "ListTags":
            return {"Tags": self.tags_by_arn.get(params["ResourceArn"], [])}
        raise AssertionError(operation)


def endpoint_event(config: str, status: str = "InService", name: str = "breedline-classifier") -> dict[str, Any]:
    """events/endpoint_in_service.json for ``config`` and ``status``, spelled as AWS's event spells it (IN_SERVICE)."""
    event = load_event("endpoint_in_service.json")
    shouted = re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()
    event["detail"].update(EndpointName=name, EndpointConfigName=config, EndpointStatus=shouted)
    event["detail"]["EndpointArn"] = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}"
    return event


def completed_tuning(name: str, best: str, tuned: dict[str, str], objective: float = 0.31) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob's answer for a completed job (the fields we read)."""
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobStatus": "Completed",
        "BestTrainingJob": {
            "TrainingJobName": best,
            "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{best}",
            "TuningJobName": name,
            "CreationTime": "2026-11-25T18:01:00Z",
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": tuned,
            "FinalHyperParameterTuningJobObjectiveMetric": {"Type": "Minimize", "MetricName": "valid_loss", "Value": objective},
        },
    }


#: The always-majority model's figures on a balanced 3-class test split (majority share 0.34).
MAJORITY_3 = {"test_majority_accuracy": 0.34, "test_majority_macro_f1": 0.169}


def completed_training(
    name: str, accuracy: float | None, artifacts: bool = True, extra: dict[str, float] | None = None
) -> dict[str, Any]:
    """DescribeTrainingJob's answer for a completed final job.

    With ``accuracy``, the issue-13 lines too: macro-F1 and balanced accuracy
    equal to it (a balanced test split) and the 3-class majority baseline;
    ``extra`` adds or overrides lines (``champion_test_macro_f1`` ...).
    """
    metrics = [
        {"MetricName": "valid_loss", "Value": 0.42},
        {"MetricName": "test_loss", "Value": 0.45},
    ]
    if accuracy is not None:
        lines = {"test_accuracy": accuracy, "test_balanced_accuracy": accuracy, "test_macro_f1": accuracy, **MAJORITY_3}
        lines.update(extra or {})
        metrics.extend({"MetricName": k, "Value": v} for k, v in lines.items())
    elif extra:
        metrics.extend({"MetricName": k, "Value": v} for k, v in extra.items())
    answer: dict[str, Any] = {
        "TrainingJobName": name,
        "TrainingJobStatus": "Completed",
        "FinalMetricDataList": metrics,
    }
    if artifacts:
        answer["ModelArtifacts"] = {"S3ModelArtifacts": f"s3://breedline-data/jobs/{name}/output/model.tar.gz"}
    return answer


# --------------------------------------------------------------------------- which function made which AWS call

#: The function whose code is running now ("api_handler" for every route). A plain
#: global, not a contextvar: the upload handler reads objects in a thread pool.
_running: list[str | None] = [None]
#: Operations whose IAM action has another name.
_ACTION_OF = {"s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject"}


def _note(calls: list[tuple[str, str]], signing_name: str, operation: str) -> None:
    function = _running[0]
    if function is not None:
        action = f"{signing_name}:{operation}"
        calls.append((function, _ACTION_OF.get(action, action)))


def _as(function: str, handler: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        before, _running[0] = _running[0], function
        try:
            return handler(*args, **kwargs)
        finally:
            _running[0] = before

    return run


def record_handler_calls(app: Any, monkeypatch: Any) -> list[tuple[str, str]]:
    """Record (function, IAM action) of every AWS call the app's handlers make from now on.

    botocore clients (moto, Stubber) are seen in ``BaseClient._make_api_call``,
    :class:`FakeSageMaker` in its request validation. The Lambda function is
    the Chalice handler name; every route runs in ``api_handler``.
    """
    import sys

    import botocore.client

    calls: list[tuple[str, str]] = []
    original_call = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation_name: str, api_params: Any) -> Any:
        _note(calls, self.meta.service_model.signing_name, operation_name)
        return original_call(self, operation_name, api_params)

    original_validate = validate_request

    def validate(service: str, operation: str, params: dict[str, Any]) -> None:
        _note(calls, service_model(service).signing_name, operation)
        original_validate(service, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", make_api_call)
    monkeypatch.setattr(sys.modules[__name__], "validate_request", validate)
    routes = {entry.view_name for methods in app.routes.values() for entry in methods.values()}
    for methods in app.routes.values():
        for entry in methods.values():
            monkeypatch.setattr(entry, "view_function", _as("api_handler", entry.view_function))
    for name, handler in list(app.handler_map.items()):
        if name not in routes:
            monkeypatch.setitem(app.handler_map, name, _as(name, handler))
    return calls


def calls_the_roles_refuse(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The recorded (function, action) pairs that the function's row in FUNCTIONS does not grant."""
    from breedline.deploy.functions import granted_actions

    granted = granted_actions()
    return sorted({(fn, action) for fn, action in calls if action not in granted.get(fn, set())})


@contextlib.contextmanager
def serving_app_locally() -> Iterator[str]:
    """The app behind the local runtime's API server on a free loopback port; yields its URL."""
    import app as chalice_app

    from breedline.local.runtime import start_api_server

    server, thread, url = start_api_server(chalice_app.app, 0)
    try:
        yield url
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(5)
