"""Test doubles for the Chalice app: a strict SageMaker, sample events, a tiny data set.

Why a fake SageMaker and not moto's: moto's SageMaker completes jobs at once
with made-up results and lacks UpdateEndpoint. This fake
checks every request against botocore's service model more strictly than
botocore does (max lengths, patterns, enums, ranges), records it, and answers
the describe calls with what each test sets up.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import boto3
import botocore.validate
from botocore.exceptions import ClientError

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
    "describe_training_job": ("DescribeTrainingJob", None),
    "describe_endpoint": ("DescribeEndpoint", None),
    "list_tags": ("ListTags", None),
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
        self.tags_by_arn: dict[str, list[dict[str, str]]] = {}

    def __getattr__(self, method: str) -> Any:
        if method not in _OPERATIONS:
            raise AttributeError(method)
        operation, name_key = _OPERATIONS[method]

        def call(**params: Any) -> dict[str, Any]:
            validate_request("sagemaker", operation, params)
            self.calls.append((operation, copy.deepcopy(params)))
            return self._answer(operation, name_key, params)

        return call

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
            self.endpoint["EndpointConfigName"] = params["EndpointConfigName"]
            self.endpoint["EndpointStatus"] = "Updating"
            return {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x"}
        if operation == "DescribeEndpoint":
            if self.endpoint is None:
                raise client_error("ValidationException", f"Could not find endpoint \"{params['EndpointName']}\".", operation)
            return dict(self.endpoint)
        if operation == "DescribeHyperParameterTuningJob":
            found = self.tuning.get(params["HyperParameterTuningJobName"])
            if found is None:
                raise client_error("ResourceNotFound", "Amazon SageMaker can't find a tuning job", operation)
            return found
        if operation == "DescribeTrainingJob":
            found = self.training.get(params["TrainingJobName"])
            if found is None:
                raise client_error("ValidationException", "Requested resource not found.", operation)
            return found
        if operation == "ListTags":
            return {"Tags": self.tags_by_arn.get(params["ResourceArn"], [])}
        raise AssertionError(operation)


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
