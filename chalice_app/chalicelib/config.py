"""All configuration, read from environment variables with documented defaults.

Why one module: the same handler code runs in AWS and locally, and only this
configuration differs. Every knob is listed here once, with its variable name,
default and meaning; the README's configuration table is :func:`markdown_table`'s output, and
``tests/test_readme.py`` fails when the two drift.

Per-stage values live in ``chalice_app/.chalice/config.json`` (AWS) and in the
local runtime's environment (local mode). Container and rule image URIs are
filled at configure/deploy time from ``sagemaker-core``'s ``image_uris``; they
are never hand-written here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default and what it is for."""

    name: str
    default: str
    doc: str


#: Every variable the app reads. Order is the order of the README table.
VARIABLES: tuple[Variable, ...] = (
    # Where things live
    Variable("BREEDLINE_BUCKET", "breedline-data", "Data bucket: uploads, code, job output."),
    Variable("BREEDLINE_DATA_PREFIX", "datasets/", "Key prefix under which each data set is a folder: datasets/<name>/{train,valid,test}/<class>/."),
    Variable("BREEDLINE_OUTPUT_PREFIX", "jobs/", "Key prefix for job output (model.tar.gz, Debugger tensors, profiler output, checkpoints)."),
    Variable("BREEDLINE_SOURCEDIR_URI", "s3://breedline-data/code/sourcedir.tar.gz", "S3 URI of the tarred ml_scripts/ (sagemaker_submit_directory)."),
    Variable("BREEDLINE_NAME_PREFIX", "breedline", "Prefix of every job, model and config name; IAM policies are scoped to it."),
    Variable("BREEDLINE_ROLE_ARN", "arn:aws:iam::123456789012:role/breedline-sagemaker", "SageMaker execution role passed to jobs and models."),
    Variable("BREEDLINE_STATE_TABLE", "breedline-state", "DynamoDB table for pipeline state (uploads, jobs, live model)."),
    Variable("BREEDLINE_IDEMPOTENCY_TABLE", "breedline-idempotency", "DynamoDB table for the Powertools idempotency utility."),
    Variable("BREEDLINE_ALERT_TOPIC_ARN", "", "SNS topic for pipeline alerts; empty disables alerts (they are still logged)."),
    Variable("BREEDLINE_IDEMPOTENCY_TTL_SECONDS", "86400", "How long a handled event is remembered as done (Powertools idempotency expiry)."),
    # Images, filled from sagemaker-core at configure time
    Variable("BREEDLINE_TRAINING_IMAGE", "", "PyTorch training image URI (sagemaker-core image_uris, scope training)."),
    Variable("BREEDLINE_INFERENCE_IMAGE", "", "PyTorch inference image URI (sagemaker-core image_uris, scope inference)."),
    Variable("BREEDLINE_DEBUGGER_RULE_IMAGE", "", "Debugger built-in rule image URI for the region."),
    # Data set validation and readiness
    Variable("BREEDLINE_READY_MARKER", "_READY", "Object name that marks a data set upload complete."),
    Variable("BREEDLINE_QUIET_PERIOD_SECONDS", "300", "Without a marker, start once no upload has arrived for this long; 0 means only the marker starts a data set."),
    Variable("BREEDLINE_QUIET_CHECK_MINUTES", "1", "How often check_quiet_datasets runs (read when the app is packaged)."),
    Variable("BREEDLINE_MIN_IMAGES_PER_CLASS", "2", "Minimum images per class in every split."),
    Variable("BREEDLINE_IMAGE_EXTENSIONS", ".jpg,.jpeg,.png", "File extensions accepted as images (case-insensitive)."),
    # Model and tuning
    Variable("BREEDLINE_MODEL", "vgg11", "Architecture passed to train.py --model."),
    Variable("BREEDLINE_EPOCHS", "5", "Epochs per training job (early stopping may end sooner)."),
    Variable("BREEDLINE_LEARNING_RATE_RANGE", "0.0001,0.1", "Continuous range for learning_rate (min,max)."),
    Variable("BREEDLINE_LEARNING_RATE_SCALING", "Logarithmic", "ScalingType of the learning-rate range."),
    Variable("BREEDLINE_BATCH_SIZES", "32,64,128,256", "Categorical values for batch_size."),
    Variable("BREEDLINE_MAX_JOBS", "4", "Tuning: MaxNumberOfTrainingJobs."),
    Variable("BREEDLINE_MAX_PARALLEL_JOBS", "2", "Tuning: MaxParallelTrainingJobs."),
    Variable("BREEDLINE_TUNING_STRATEGY", "Bayesian", "Tuning strategy: Bayesian, Random, Hyperband or Grid."),
    Variable("BREEDLINE_EARLY_STOPPING", "Off", "Tuning TrainingJobEarlyStoppingType: Off or Auto."),
    Variable("BREEDLINE_OBJECTIVE_METRIC", "valid_loss", "Tuning objective metric (one of the metric definitions)."),
    Variable("BREEDLINE_OBJECTIVE_TYPE", "Minimize", "Minimize or Maximize the objective."),
    Variable("BREEDLINE_EXTRA_HYPERPARAMETERS", "{}", "JSON object of static hyperparameters added to every job (e.g. image_size)."),
    # Instances
    Variable("BREEDLINE_TUNING_INSTANCE_TYPE", "ml.g4dn.xlarge", "Instance type of tuning trials."),
    Variable("BREEDLINE_TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge", "Instance type of the final training job."),
    Variable("BREEDLINE_VOLUME_SIZE_GB", "30", "EBS volume per training instance."),
    Variable("BREEDLINE_USE_SPOT", "true", "Managed spot training (with checkpoints) for tuning and training."),
    Variable("BREEDLINE_MAX_RUNTIME_SECONDS", "7200", "StoppingCondition.MaxRuntimeInSeconds."),
    Variable("BREEDLINE_MAX_WAIT_SECONDS", "14400", "StoppingCondition.MaxWaitTimeInSeconds (spot only, >= max runtime)."),
    # Deployment
    Variable("BREEDLINE_ENDPOINT_NAME", "breedline-classifier", "Name of the endpoint the predict API calls."),
    Variable("BREEDLINE_ENDPOINT_INSTANCE_TYPE", "ml.m5.large", "Endpoint instance type (real-time inference)."),
    Variable("BREEDLINE_ENDPOINT_INSTANCE_COUNT", "1", "Initial instance count of the endpoint."),
    Variable("BREEDLINE_VARIANT_NAME", "AllTraffic", "Production variant name. A fixed name lets endpoint autoscaling survive model updates; empty names each variant after its model."),
    Variable("BREEDLINE_SERVERLESS_MEMORY_MB", "0", "If > 0, deploy as Serverless Inference with this memory (1024-6144) instead of instances."),
    Variable("BREEDLINE_SERVERLESS_MAX_CONCURRENCY", "5", "Serverless Inference MaxConcurrency."),
    Variable("BREEDLINE_ACCURACY_FLOOR", "0.5", "Quality gate: test_accuracy a model must exceed to be deployed at all."),
    Variable("BREEDLINE_ROLLBACK_ALARMS", "", "Comma-separated CloudWatch alarm names for blue/green auto-rollback."),
    Variable("BREEDLINE_CANARY_PERCENT", "10", "Blue/green canary size in percent of capacity; 0 means all at once."),
    Variable("BREEDLINE_SERVING_BACKEND", "auto", "What runs the model on the endpoint: auto (ONNX Runtime on a CPU instance when its export matches torch, else torch), torch, or onnx (fail rather than fall back). Passed to the model container."),
    Variable("BREEDLINE_BAKE_SECONDS", "300", "Blue/green wait before the rest of the traffic shifts and before old fleet termination."),
    # Predict API
    Variable("BREEDLINE_TOP_K", "5", "How many label/probability pairs the predict API returns."),
    Variable("BREEDLINE_MAX_IMAGE_BYTES", "4718592", "Largest accepted image body (4.5 MiB: a 6 MB Lambda payload after base64)."),
    Variable("BREEDLINE_API_AUTH", "api_key", "Auth of POST /predict: api_key (usage plan), iam or none. /status and /labels use iam when this is none (read when the app is packaged)."),
    # Observability
    Variable("POWERTOOLS_SERVICE_NAME", "breedline", "Service name on every log line and metric."),
    Variable("POWERTOOLS_METRICS_NAMESPACE", "Breedline", "CloudWatch namespace of the EMF metrics."),
)

_DEFAULTS = {v.name: v.default for v in VARIABLES}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


#: Accepted values of BREEDLINE_API_AUTH.
API_AUTH_MODES: tuple[str, ...] = ("api_key", "iam", "none")
#: ml_scripts/inference.py's BACKENDS (the Lambda zip cannot import ml_scripts; a test keeps them equal).
SERVING_BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    return value


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Typed view of :data:`VARIABLES`; build it with :meth:`from_env`."""

    bucket: str
    data_prefix: str
    output_prefix: str
    sourcedir_uri: str
    name_prefix: str
    role_arn: str
    state_table: str
    idempotency_table: str
    alert_topic_arn: str
    training_image: str
    inference_image: str
    debugger_rule_image: str
    ready_marker: str
    quiet_period_seconds: int
    min_images_per_class: int
    image_extensions: tuple[str, ...]
    model: str
    epochs: int
    learning_rate_range: tuple[float, float]
    learning_rate_scaling: str
    batch_sizes: tuple[str, ...]
    max_jobs: int
    max_parallel_jobs: int
    tuning_strategy: str
    early_stopping: str
    objective_metric: str
    objective_type: str
    extra_hyperparameters: dict[str, str] = field(hash=False)
    tuning_instance_type: str = "ml.g4dn.xlarge"
    training_instance_type: str = "ml.g4dn.xlarge"
    volume_size_gb: int = 30
    use_spot: bool = True
    max_runtime_seconds: int = 7200
    max_wait_seconds: int = 14400
    endpoint_name: str = "breedline-classifier"
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_instance_count: int = 1
    variant_name: str = "AllTraffic"
    serverless_memory_mb: int = 0
    serverless_max_concurrency: int = 5
    accuracy_floor: float = 0.5
    rollback_alarms: tuple[str, ...] = ()
    canary_percent: int = 10
    bake_seconds: int = 300
    serving_backend: str = "auto"
    top_k: int = 5
    max_image_bytes: int = 4718592
    idempotency_ttl_seconds: int = 86400
    quiet_check_minutes: int = 1
    api_auth: str = "api_key"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every variable, falling back to its documented default.

        Raises ``ValueError`` naming the variable when a value cannot be parsed,
        so a misconfigured stage fails at cold start with a clear message.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, _DEFAULTS[name])

        def number(name: str, kind: type) -> int | float:
            raw = get(name)
            try:
                return kind(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc

        lr = _csv(get("BREEDLINE_LEARNING_RATE_RANGE"))
        if len(lr) != 2:
            raise ValueError("BREEDLINE_LEARNING_RATE_RANGE must be 'min,max'")
        try:
            extra = json.loads(get("BREEDLINE_EXTRA_HYPERPARAMETERS"))
        except json.JSONDecodeError as exc:
            raise ValueError("BREEDLINE_EXTRA_HYPERPARAMETERS must be a JSON object") from exc
        if not isinstance(extra, dict):
            raise ValueError("BREEDLINE_EXTRA_HYPERPARAMETERS must be a JSON object")
        prefix = get("BREEDLINE_DATA_PREFIX")
        return cls(
            bucket=get("BREEDLINE_BUCKET"),
            data_prefix=prefix if prefix.endswith("/") else prefix + "/",
            output_prefix=get("BREEDLINE_OUTPUT_PREFIX"),
            sourcedir_uri=get("BREEDLINE_SOURCEDIR_URI"),
            name_prefix=get("BREEDLINE_NAME_PREFIX"),
            role_arn=get("BREEDLINE_ROLE_ARN"),
            state_table=get("BREEDLINE_STATE_TABLE"),
            idempotency_table=get("BREEDLINE_IDEMPOTENCY_TABLE"),
            alert_topic_arn=get("BREEDLINE_ALERT_TOPIC_ARN"),
            training_image=get("BREEDLINE_TRAINING_IMAGE"),
            inference_image=get("BREEDLINE_INFERENCE_IMAGE"),
            debugger_rule_image=get("BREEDLINE_DEBUGGER_RULE_IMAGE"),
            ready_marker=get("BREEDLINE_READY_MARKER"),
            quiet_period_seconds=int(number("BREEDLINE_QUIET_PERIOD_SECONDS", int)),
            min_images_per_class=int(number("BREEDLINE_MIN_IMAGES_PER_CLASS", int)),
            image_extensions=tuple(e.lower() for e in _csv(get("BREEDLINE_IMAGE_EXTENSIONS"))),
            model=get("BREEDLINE_MODEL"),
            epochs=int(number("BREEDLINE_EPOCHS", int)),
            learning_rate_range=(float(lr[0]), float(lr[1])),
            learning_rate_scaling=get("BREEDLINE_LEARNING_RATE_SCALING"),
            batch_sizes=_csv(get("BREEDLINE_BATCH_SIZES")),
            max_jobs=int(number("BREEDLINE_MAX_JOBS", int)),
            max_parallel_jobs=int(number("BREEDLINE_MAX_PARALLEL_JOBS", int)),
            tuning_strategy=get("BREEDLINE_TUNING_STRATEGY"),
            early_stopping=get("BREEDLINE_EARLY_STOPPING"),
            objective_metric=get("BREEDLINE_OBJECTIVE_METRIC"),
            objective_type=get("BREEDLINE_OBJECTIVE_TYPE"),
            extra_hyperparameters={str(k): str(v) for k, v in extra.items()},
            tuning_instance_type=get("BREEDLINE_TUNING_INSTANCE_TYPE"),
            training_instance_type=get("BREEDLINE_TRAINING_INSTANCE_TYPE"),
            volume_size_gb=int(number("BREEDLINE_VOLUME_SIZE_GB", int)),
            use_spot=_bool(get("BREEDLINE_USE_SPOT")),
            max_runtime_seconds=int(number("BREEDLINE_MAX_RUNTIME_SECONDS", int)),
            max_wait_seconds=int(number("BREEDLINE_MAX_WAIT_SECONDS", int)),
            endpoint_name=get("BREEDLINE_ENDPOINT_NAME"),
            endpoint_instance_type=get("BREEDLINE_ENDPOINT_INSTANCE_TYPE"),
            endpoint_instance_count=int(number("BREEDLINE_ENDPOINT_INSTANCE_COUNT", int)),
            variant_name=get("BREEDLINE_VARIANT_NAME"),
            serverless_memory_mb=int(number("BREEDLINE_SERVERLESS_MEMORY_MB", int)),
            serverless_max_concurrency=int(number("BREEDLINE_SERVERLESS_MAX_CONCURRENCY", int)),
            accuracy_floor=float(number("BREEDLINE_ACCURACY_FLOOR", float)),
            rollback_alarms=_csv(get("BREEDLINE_ROLLBACK_ALARMS")),
            canary_percent=int(number("BREEDLINE_CANARY_PERCENT", int)),
            bake_seconds=int(number("BREEDLINE_BAKE_SECONDS", int)),
            serving_backend=_choice("BREEDLINE_SERVING_BACKEND", get("BREEDLINE_SERVING_BACKEND"), SERVING_BACKENDS),
            top_k=int(number("BREEDLINE_TOP_K", int)),
            max_image_bytes=int(number("BREEDLINE_MAX_IMAGE_BYTES", int)),
            idempotency_ttl_seconds=int(number("BREEDLINE_IDEMPOTENCY_TTL_SECONDS", int)),
            quiet_check_minutes=max(1, int(number("BREEDLINE_QUIET_CHECK_MINUTES", int))),
            api_auth=_choice("BREEDLINE_API_AUTH", get("BREEDLINE_API_AUTH"), API_AUTH_MODES),
        )


def markdown_table() -> str:
    """Render :data:`VARIABLES` as the README's configuration table."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        rows.append(f"| `{var.name}` | {default} | {var.doc} |")
    return "\n".join(rows)
