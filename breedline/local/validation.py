"""Request validation against botocore's copy of the real service model.

Why: the local service must refuse exactly what SageMaker refuses, or code that
works here breaks in AWS. ``botocore.validate.validate_parameters`` checks
required members, types and minimums; SageMaker also enforces the model's
``max``, ``pattern`` and ``enum`` traits server-side, which botocore leaves to
the service, so :func:`check_constraints` adds those.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.exceptions import ParamValidationError
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.validate import validate_parameters

from .sagemaker_wire import ServiceError


@lru_cache(maxsize=None)
def service_model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


def operation(service: str, name: str) -> OperationModel:
    model = service_model(service)
    if name not in model.operation_names:
        raise ServiceError("UnknownOperationException", f"Unknown operation {name}")
    return model.operation_model(name)


@lru_cache(maxsize=None)
def _pattern(text: str) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error:  # Java-only syntax (\p{..}); SageMaker checks it, we cannot
        return None


def check_constraints(value: Any, shape: Shape, path: str, errors: list[str]) -> None:
    """Collect violations of ``max``, ``pattern`` and ``enum`` below ``shape``."""
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, member_value in value.items():
            if key in shape.members:
                check_constraints(member_value, shape.members[key], f"{path}.{key}", errors)
    elif shape.type_name == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: at most {meta['max']} items allowed, got {len(value)}")
        for i, item in enumerate(value):
            check_constraints(item, shape.member, f"{path}[{i}]", errors)
    elif shape.type_name == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: at most {meta['max']} entries allowed, got {len(value)}")
        for key, item in value.items():
            check_constraints(key, shape.key, f"{path}.<key {key}>", errors)
            check_constraints(item, shape.value, f"{path}.{key}", errors)
    elif shape.type_name == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: length {len(value)} exceeds the maximum of {meta['max']}")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} is not one of {list(shape.enum)}")
        pattern = _pattern(meta["pattern"]) if "pattern" in meta else None
        if pattern is not None and not pattern.fullmatch(value):
            errors.append(f"{path}: {value!r} fails to satisfy the pattern {meta['pattern']}")
    elif shape.type_name in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
        if "max" in meta and value > meta["max"]:
            errors.append(f"{path}: {value} is above the maximum of {meta['max']}")
        if "min" in meta and value < meta["min"]:
            errors.append(f"{path}: {value} is below the minimum of {meta['min']}")


def validate_request(service: str, op_name: str, params: Any) -> OperationModel:
    """Validate ``params`` for ``op_name``; raise a ``ValidationException`` ServiceError."""
    op = operation(service, op_name)
    if not isinstance(params, dict):
        raise ServiceError("SerializationException", "request body must be a JSON object")
    try:
        validate_parameters(params, op.input_shape)
    except ParamValidationError as exc:
        raise ServiceError("ValidationException", str(exc)) from None
    errors: list[str] = []
    check_constraints(params, op.input_shape, op_name, errors)
    if errors:
        raise ServiceError("ValidationException", f"{len(errors)} validation error(s): " + "; ".join(errors))
    return op


def validate_response(service: str, op_name: str, result: dict) -> None:
    """Check our own answers against the output shape (a bug here is ours, not the caller's)."""
    op = operation(service, op_name)
    if op.output_shape is None:
        return
    try:
        validate_parameters(result, op.output_shape)
    except ParamValidationError as exc:
        raise ServiceError("InternalFailure", f"local service produced an invalid {op_name} answer: {exc}", 500)
