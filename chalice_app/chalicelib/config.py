"""All configuration, read from environment variables with documented defaults.

Why one module: the same handler code runs in AWS and locally, and only this
configuration differs. Every knob is one :class:`Settings` field that carries
its variable name, default, meaning and parser (:func:`setting`), so parsing
(:meth:`Settings.from_env`), :data:`VARIABLES` and the README's configuration
table (:func:`markdown_table`) all come from the same place;
``tests/test_readme.py`` fails when the README drifts.

Per-stage values live in ``chalice_app/.chalice/config.json``; its ``local``
stage is the single source of the local runtime's values. Container and rule image URIs are
filled at configure/deploy time from ``sagemaker-core``'s ``image_uris``; they
are never hand-written here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from contract import DEBUGGER_MODES, SERVING_BACKENDS

#: Accepted values of BREEDLINE_API_AUTH.
API_AUTH_MODES: tuple[str, ...] = ("api_key", "iam", "none")
#: Accepted values of BREEDLINE_SUPERSEDE.
SUPERSEDE_MODES: tuple[str, ...] = ("stop", "queue")

# Service quotas the predict route must fit in (docs/app.md, "Body limits", cites and adds them up).
#: Lambda's synchronous invocation payload: the whole API Gateway proxy event, body base64-encoded.
LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024
#: Room kept in that payload for every field of the proxy event but the body (headers twice, context).
EVENT_ALLOWANCE_BYTES = 64 * 1024
#: Serverless Inference's InvokeEndpoint payload, read in decimal bytes (the smaller reading of AWS's unit).
SERVERLESS_PAYLOAD_BYTES = 4_000_000
#: API Gateway's REST integration timeout: after it the client gets API Gateway's own 504, not ours.
API_GATEWAY_TIMEOUT_SECONDS = 29.0
#: Room kept inside that timeout for the route's own work and its answer.
ROUTE_ALLOWANCE_SECONDS = 2.0
#: Accepted values of BREEDLINE_GATE_METRIC: test-split metrics train.py prints with a champion_ twin (ml_scripts/contract.py).
GATE_METRICS: tuple[str, ...] = ("test_macro_f1", "test_balanced_accuracy", "test_accuracy")
#: Serverless Inference's memory sizes (ProductionVariantServerlessConfig.MemorySizeInMB).
SERVERLESS_MEMORY_SIZES: tuple[int, ...] = (1024, 2048, 3072, 4096, 5120, 6144)


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default and what it is for."""

    name: str
    default: str
    doc: str


#: How a field's text becomes its value: ``parse(variable name, text)``; raises ValueError naming the variable.
Parser = Callable[[str, str], Any]


def text(name: str, raw: str) -> str:
    return raw


def integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid int") from exc


def number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a valid float") from exc


def flag(name: str, raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def one_of(allowed: tuple[str, ...]) -> Parser:
    """A parser that accepts only ``allowed`` values."""

    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
        return raw

    return parse


def folder(name: str, raw: str) -> str:
    """A key prefix that always ends in ``/``."""
    return raw if raw.endswith("/") else raw + "/"


_KMS_KEY = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]+)$")


def kms_key(name: str, raw: str) -> str:
    """Empty (AWS-managed encryption) or a key/alias ARN: SageMaker needs the ARN to find the key from the job."""
    if raw and not _KMS_KEY.match(raw):
        raise ValueError(f"{name}={raw!r} must be empty or a KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id>)")
    return raw


_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$")


def origins(name: str, raw: str) -> tuple[str, ...]:
    """Browser origins (``scheme://host[:port]``, lowercased), as a browser sends them in ``Origin``.

    Why strict: the route compares the header to these strings exactly, so a
    trailing slash, a path or a ``*`` would silently allow nothing or everything.
    """
    found = tuple(part.lower().rstrip("/") for part in comma_list(name, raw))
    for origin in found:
        if not _ORIGIN.match(origin):
            raise ValueError(
                f"{name}: {origin!r} is not an origin; list each as scheme://host[:port] "
                "(no path, no wildcard), e.g. https://app.example.com,http://localhost:8000"
            )
    return found


def extensions(name: str, raw: str) -> tuple[str, ...]:
    return tuple(e.lower() for e in comma_list(name, raw))


def float_range(name: str, raw: str) -> tuple[float, float]:
    bounds = comma_list(name, raw)
    if len(bounds) != 2:
        raise ValueError(f"{name} must be 'min,max'")
    return (float(bounds[0]), float(bounds[1]))


def json_object(name: str, raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def base64_length(size: int) -> int:
    """Characters of the padded base64 of ``size`` bytes, as API Gateway encodes a binary body."""
    return 4 * ((size + 2) // 3)


def largest_body_bytes() -> int:
    """The largest body whose base64 plus :data:`EVENT_ALLOWANCE_BYTES` fits :data:`LAMBDA_PAYLOAD_BYTES`."""
    return (LAMBDA_PAYLOAD_BYTES - EVENT_ALLOWANCE_BYTES) // 4 * 3


def body_limit(name: str, raw: str) -> int:
    """A body limit the predict route can reach: a larger body would fail in Lambda, not get our 413."""
    value = integer(name, raw)
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be a positive number of bytes")
    if value > largest_body_bytes():
        raise ValueError(
            f"{name}={value} cannot reach the predict function: its base64 ({base64_length(value)} bytes) "
            f"plus {EVENT_ALLOWANCE_BYTES} bytes for the rest of the API Gateway event exceeds Lambda's "
            f"{LAMBDA_PAYLOAD_BYTES}-byte synchronous payload; use at most {largest_body_bytes()}"
        )
    return value


def serverless_memory(name: str, raw: str) -> int:
    """0 (instance-backed endpoint) or one of AWS's Serverless Inference memory sizes."""
    value = integer(name, raw)
    if value != 0 and value not in SERVERLESS_MEMORY_SIZES:
        sizes = ", ".join(str(size) for size in SERVERLESS_MEMORY_SIZES)
        raise ValueError(
            f"{name}={value} is not a Serverless Inference memory size: use 0 (instances) or one of {sizes}"
        )
    return value


def megapixels(name: str, raw: str) -> float:
    """A positive, finite number of megapixels."""
    value = number(name, raw)
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}={raw!r} must be a positive number of megapixels")
    return value


def invoke_budget(name: str, raw: str) -> float:
    """InvokeEndpoint's whole time budget, which must end before API Gateway gives up on the request."""
    value = number(name, raw)
    longest = API_GATEWAY_TIMEOUT_SECONDS - ROUTE_ALLOWANCE_SECONDS
    if not 0 < value <= longest:
        raise ValueError(
            f"{name}={raw!r} must be more than 0 and at most {longest:g} seconds: API Gateway answers its own "
            f"504 after {API_GATEWAY_TIMEOUT_SECONDS:g} s, and the route needs {ROUTE_ALLOWANCE_SECONDS:g} s of that"
        )
    return value


def minutes(name: str, raw: str) -> int:
    """A schedule period: at least one minute."""
    return max(1, integer(name, raw))


def positive(name: str, raw: str) -> int:
    """A count of at least 1."""
    value = integer(name, raw)
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be at least 1")
    return value


def fraction(name: str, raw: str) -> float:
    """A share between 0 and 1 (0.05 is 5%)."""
    value = number(name, raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={raw!r} must be a share between 0 and 1 (0.05 is 5%)")
    return value


def ratio(name: str, raw: str) -> float:
    """A ratio of at least 1 (3 is "three times")."""
    value = number(name, raw)
    if not value >= 1.0:
        raise ValueError(f"{name}={raw!r} must be a ratio of at least 1 (3 is three times)")
    return value


#: GPUs per training instance type, for the types with more than one (sagemaker-core's
#: image_uri_config/instance_gpu_info.json; tests/app/test_requests.py checks the two agree).
MULTI_GPU_INSTANCES: dict[str, int] = {
    "ml.g4dn.12xlarge": 4, "ml.g5.12xlarge": 4, "ml.g5.24xlarge": 4, "ml.g5.48xlarge": 8,
    "ml.p2.8xlarge": 8, "ml.p2.16xlarge": 16, "ml.p3.8xlarge": 4, "ml.p3.16xlarge": 8,
    "ml.p3dn.24xlarge": 8, "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8, "ml.p5.48xlarge": 8,
}
_INSTANCE_TYPE = re.compile(r"^ml\.([a-z0-9-]+)\.([a-z0-9]+)$")


def processes_per_job(instance_type: str, count: int) -> int:
    """How many training processes a job runs: torchrun starts one per GPU, one on a CPU-only instance."""
    return count * MULTI_GPU_INSTANCES.get(instance_type, 1)


def check_instances(prefix: str, instance_type: str, count: int) -> None:
    """Refuse an instance type the torch_distributed launcher cannot use for our image, at load.

    Only a job of more than one process is checked (a single process runs as
    before). ``local``/``local_gpu`` are the SageMaker SDK's local mode, not
    instance types CreateTrainingJob takes; Trainium (``ml.trn*``) and
    Inferentia (``ml.inf*``) need the Neuron images, while the deploy tool
    fills in the PyTorch CPU/GPU training image.
    """
    if processes_per_job(instance_type, count) <= 1:
        return
    found = _INSTANCE_TYPE.match(instance_type)
    if found is None:
        raise ValueError(
            f"{prefix}_INSTANCE_COUNT={count} needs a SageMaker training instance type (ml.<family>.<size>); "
            f"{prefix}_INSTANCE_TYPE={instance_type!r} is not one"
        )
    if found.group(1).startswith(("trn", "inf")):
        raise ValueError(
            f"{prefix}_INSTANCE_TYPE={instance_type} with {prefix}_INSTANCE_COUNT={count}: distributed training on "
            "Trainium or Inferentia needs the Neuron training images, and this app runs the PyTorch CPU/GPU image; "
            "use a GPU type (ml.g*, ml.p*) or a CPU type"
        )


def setting(name: str, default: str, doc: str, parse: Parser = text, *, hash: bool = True) -> Any:
    """A :class:`Settings` field read from environment variable ``name`` (``default`` when unset)."""
    return field(metadata={"variable": Variable(name, default, doc), "parse": parse}, hash=hash)


@dataclass(frozen=True)
class Settings:
    """Every variable the app reads, typed; build it with :meth:`from_env`.

    Field order is the order of :data:`VARIABLES` and of the README table.
    """

    # Where things live
    bucket: str = setting("BREEDLINE_BUCKET", "breedline-data", "Data bucket: uploads, code, job output.")
    data_prefix: str = setting("BREEDLINE_DATA_PREFIX", "datasets/", "Key prefix under which each data set is a folder: datasets/<name>/{train,valid,test}/<class>/.", folder)
    output_prefix: str = setting("BREEDLINE_OUTPUT_PREFIX", "jobs/", "Key prefix for job output (model.tar.gz, Debugger tensors, profiler output, checkpoints).")
    sourcedir_uri: str = setting("BREEDLINE_SOURCEDIR_URI", "s3://breedline-data/code/sourcedir.tar.gz", "S3 URI of the tarred ml_scripts/ (sagemaker_submit_directory).")
    name_prefix: str = setting("BREEDLINE_NAME_PREFIX", "breedline", "Prefix of every job, model and config name; IAM policies are scoped to it.")
    role_arn: str = setting("BREEDLINE_ROLE_ARN", "arn:aws:iam::123456789012:role/breedline-sagemaker", "SageMaker execution role passed to jobs and models.")
    state_table: str = setting("BREEDLINE_STATE_TABLE", "breedline-state", "DynamoDB table for pipeline state (uploads, jobs, live model).")
    idempotency_table: str = setting("BREEDLINE_IDEMPOTENCY_TABLE", "breedline-idempotency", "DynamoDB table for the Powertools idempotency utility.")
    alert_topic_arn: str = setting("BREEDLINE_ALERT_TOPIC_ARN", "", "SNS topic for pipeline alerts; empty disables alerts (they are still logged).")
    idempotency_ttl_seconds: int = setting("BREEDLINE_IDEMPOTENCY_TTL_SECONDS", "86400", "How long a handled event is remembered as done (Powertools idempotency expiry).", integer)
    # Images, filled from sagemaker-core at configure time
    training_image: str = setting("BREEDLINE_TRAINING_IMAGE", "", "PyTorch training image URI (sagemaker-core image_uris, scope training).")
    inference_image: str = setting("BREEDLINE_INFERENCE_IMAGE", "", "PyTorch inference image URI (sagemaker-core image_uris, scope inference).")
    debugger_rule_image: str = setting("BREEDLINE_DEBUGGER_RULE_IMAGE", "", "Debugger built-in rule image URI for the region.")
    # Data set validation and readiness
    ready_marker: str = setting("BREEDLINE_READY_MARKER", "_READY", "Object name that marks a data set upload complete.")
    quiet_period_seconds: int = setting("BREEDLINE_QUIET_PERIOD_SECONDS", "300", "Without a marker, start once no upload has arrived for this long; 0 means only the marker starts a data set.", integer)
    quiet_check_minutes: int = setting("BREEDLINE_QUIET_CHECK_MINUTES", "1", "How often check_quiet_datasets runs (read when the app is packaged).", minutes)
    min_images_per_class: int = setting("BREEDLINE_MIN_IMAGES_PER_CLASS", "2", "Minimum images per class in every split.", integer)
    image_extensions: tuple[str, ...] = setting("BREEDLINE_IMAGE_EXTENSIONS", ".jpg,.jpeg,.png", "File extensions accepted as images (case-insensitive).", extensions)
    # The uploader's data set (issue 15, items 4 and 13; docs/reliability.md)
    max_bad_file_share: float = setting("BREEDLINE_MAX_BAD_FILE_SHARE", "0.05", "Share of a data set's files that may be unusable (empty, not an image by suffix, or failing the first/last-bytes check) and are then skipped and listed in the notification; above it the set is rejected. 0 rejects any unusable file.", fraction)
    sniff_max_objects: int = setting("BREEDLINE_SNIFF_MAX_OBJECTS", "500", "How many images settling checks by their first 16 and last 4,096 bytes (ranged GETs, a fixed sample of the listing) for text under an image name and truncated JPEG, PNG, WebP or BMP; 0 checks only sizes and suffixes.", integer)
    imbalance_ratio: float = setting("BREEDLINE_IMBALANCE_RATIO", "3", "Warn (never reject) when a split's largest class has more than this many times the images of its smallest; the notification and the version record carry the per-class counts.", ratio)
    # Model and tuning
    model: str = setting("BREEDLINE_MODEL", "vgg11", "Architecture passed to train.py --model.")
    pretrained_weights_uri: str = setting("BREEDLINE_PRETRAINED_WEIGHTS_URI", "", "S3 URI of one pretrained weights file (a state dict of the model's architecture) in the data bucket, under code/ (the SageMaker role reads it there). Every job gets it as the pretrained input channel and train.py uses it as --pretrained_weights, so no job downloads weights. Empty: vgg11 and resnet50 fetch theirs from the torchvision hub at job start (needs internet), efficientnet_lite0 uses its packaged file.")
    epochs: int = setting("BREEDLINE_EPOCHS", "5", "Epochs per training job (early stopping may end sooner).", integer)
    learning_rate_range: tuple[float, float] = setting("BREEDLINE_LEARNING_RATE_RANGE", "0.0001,0.1", "Continuous range for learning_rate (min,max).", float_range)
    learning_rate_scaling: str = setting("BREEDLINE_LEARNING_RATE_SCALING", "Logarithmic", "ScalingType of the learning-rate range.")
    batch_sizes: tuple[str, ...] = setting("BREEDLINE_BATCH_SIZES", "32,64,128,256", "Categorical values for batch_size.", comma_list)
    max_jobs: int = setting("BREEDLINE_MAX_JOBS", "4", "Tuning: MaxNumberOfTrainingJobs.", integer)
    max_parallel_jobs: int = setting("BREEDLINE_MAX_PARALLEL_JOBS", "2", "Tuning: MaxParallelTrainingJobs.", integer)
    tuning_strategy: str = setting("BREEDLINE_TUNING_STRATEGY", "Bayesian", "Tuning strategy: Bayesian, Random, Hyperband or Grid.")
    early_stopping: str = setting("BREEDLINE_EARLY_STOPPING", "Off", "Tuning TrainingJobEarlyStoppingType: Off or Auto.")
    objective_metric: str = setting("BREEDLINE_OBJECTIVE_METRIC", "valid_loss", "Tuning objective metric (one of the metric definitions).")
    objective_type: str = setting("BREEDLINE_OBJECTIVE_TYPE", "Minimize", "Minimize or Maximize the objective.")
    extra_hyperparameters: dict[str, str] = setting("BREEDLINE_EXTRA_HYPERPARAMETERS", "{}", "JSON object of static hyperparameters added to every job (e.g. image_size).", json_object, hash=False)
    # Cost guard (issue 15, item 16; docs/app.md "Cost guard")
    max_tuning_jobs_per_day: int = setting("BREEDLINE_MAX_TUNING_JOBS_PER_DAY", "3", "Cost guard: at most this many tuning jobs accepted (started, or queued) per data set per UTC day; a data set version over it is rejected with an alert, and its data stays in S3. At least 1.", positive)
    supersede: str = setting("BREEDLINE_SUPERSEDE", "stop", "Cost guard: at most one tuning job runs per data set. A newer version arriving while one runs: stop (StopHyperParameterTuningJob on the running one, which then starts no final job, and start the newer one) or queue (the newest waiting version starts when the running one ends; older waiting versions are dropped).", one_of(SUPERSEDE_MODES))
    # Instances
    tuning_instance_type: str = setting("BREEDLINE_TUNING_INSTANCE_TYPE", "ml.g4dn.xlarge", "Instance type of tuning trials.")
    tuning_instance_count: int = setting("BREEDLINE_TUNING_INSTANCE_COUNT", "1", "Instances per tuning trial (the TrainingJobDefinition's ResourceConfig.InstanceCount). Above 1, or on a type with several GPUs, each trial trains with PyTorch DDP through the training toolkit's torch_distributed launcher (torchrun: one process per GPU, one per CPU-only instance); a tuning job then holds this times BREEDLINE_MAX_PARALLEL_JOBS instances at once (docs/scale.md).", positive)
    training_instance_type: str = setting("BREEDLINE_TRAINING_INSTANCE_TYPE", "ml.g4dn.xlarge", "Instance type of the final training job.")
    training_instance_count: int = setting("BREEDLINE_TRAINING_INSTANCE_COUNT", "1", "Instances of the final training job (ResourceConfig.InstanceCount). Above 1, or on a type with several GPUs (ml.g4dn.12xlarge, ml.p3.8xlarge, ...), it trains with PyTorch DDP through the training toolkit's torch_distributed launcher; the local runtime runs one process per instance (docs/scale.md).", positive)
    volume_size_gb: int = setting("BREEDLINE_VOLUME_SIZE_GB", "30", "EBS volume per training instance.", integer)
    kms_key_id: str = setting("BREEDLINE_KMS_KEY_ID", "", "Customer KMS key ARN for the training jobs' volumes and output (VolumeKmsKeyId, OutputDataConfig.KmsKeyId) and the instance endpoint's storage (KmsKeyId). Empty: AWS-managed keys. make deploy sets it from the stack parameter KmsKeyArn (docs/aws.md).", kms_key)
    use_spot: bool = setting("BREEDLINE_USE_SPOT", "true", "Managed spot training (with checkpoints) for tuning and training.", flag)
    max_runtime_seconds: int = setting("BREEDLINE_MAX_RUNTIME_SECONDS", "7200", "StoppingCondition.MaxRuntimeInSeconds.", integer)
    max_wait_seconds: int = setting("BREEDLINE_MAX_WAIT_SECONDS", "14400", "StoppingCondition.MaxWaitTimeInSeconds (spot only, >= max runtime).", integer)
    # Debugger (issue 14): where hooks and rules run, and what a rule that found an issue does
    debugger: str = setting("BREEDLINE_DEBUGGER", "in_job", "Where the final job's Debugger hooks and rules run: in_job (smdebug inside the job; the request carries no Debugger service configuration and turns SageMaker's system profiler off), service (SageMaker Debugger, for accounts that have it), auto (service; retried once as in_job, with one alert, when CreateTrainingJob is refused for a Debugger reason) or off. docs/aws.md says how to pick.", one_of(DEBUGGER_MODES))
    rules_block_deploy: bool = setting("BREEDLINE_RULES_BLOCK_DEPLOY", "false", "true: a final job whose Debugger rules found an issue is not deployed. false: each such rule is alerted and logged, and the quality gate alone decides.", flag)
    # Deployment
    endpoint_name: str = setting("BREEDLINE_ENDPOINT_NAME", "breedline-classifier", "Name of the endpoint the predict API calls.")
    endpoint_instance_type: str = setting("BREEDLINE_ENDPOINT_INSTANCE_TYPE", "ml.m5.large", "Endpoint instance type (real-time inference).")
    endpoint_instance_count: int = setting("BREEDLINE_ENDPOINT_INSTANCE_COUNT", "1", "Initial instance count of the endpoint.", integer)
    variant_name: str = setting("BREEDLINE_VARIANT_NAME", "AllTraffic", "Production variant name, kept by every model: blue/green updates (canary, bake, auto-rollback) and endpoint autoscaling need the same name across updates. Empty names each variant after its model, which only a serverless endpoint accepts (it takes no blue/green guardrails).")
    serverless_memory_mb: int = setting("BREEDLINE_SERVERLESS_MEMORY_MB", "0", "0 deploys on instances; 1024, 2048, 3072, 4096, 5120 or 6144 deploys as Serverless Inference with that memory (make deploy refuses a size too small for BREEDLINE_MODEL, docs/aws.md), and caps the predict body at its 4,000,000-byte payload.", serverless_memory)
    serverless_max_concurrency: int = setting("BREEDLINE_SERVERLESS_MAX_CONCURRENCY", "5", "Serverless Inference MaxConcurrency.", integer)
    accuracy_floor: float = setting("BREEDLINE_ACCURACY_FLOOR", "0.5", "Quality gate: test_accuracy a model must exceed to be deployed at all.", number)
    gate_metric: str = setting("BREEDLINE_GATE_METRIC", "test_macro_f1", "Quality gate: the test-split metric a new model must improve: test_macro_f1, test_balanced_accuracy or test_accuracy. It is compared with the live model's champion_<metric> from the same job on the same test split, and must beat the majority-class baseline (docs/app.md, section Quality gate).", one_of(GATE_METRICS))
    gate_margin: float = setting("BREEDLINE_GATE_MARGIN", "0.01", "Quality gate: how much the new model's BREEDLINE_GATE_METRIC must exceed the live model's on the same test split (0.01 is one point), so retraining noise does not churn the endpoint.", fraction)
    baseline_margin: float = setting("BREEDLINE_BASELINE_MARGIN", "0.05", "Quality gate: how much BREEDLINE_GATE_METRIC must exceed what an always-majority-class model scores on the same test split (test_majority_* lines).", fraction)
    allow_class_change: bool = setting("BREEDLINE_ALLOW_CLASS_CHANGE", "false", "true: a model whose class list differs from the live model's may replace it (/labels changes). false: it waits for approval: recorded as awaiting approval and alerted with what changed; set this and re-send the job's Completed event to deploy it.", flag)
    rollback_alarms: tuple[str, ...] = setting("BREEDLINE_ROLLBACK_ALARMS", "", "Comma-separated CloudWatch alarm names for blue/green auto-rollback.", comma_list)
    canary_percent: int = setting("BREEDLINE_CANARY_PERCENT", "10", "Blue/green canary size in percent of capacity; 0 means all at once.", integer)
    serving_backend: str = setting("BREEDLINE_SERVING_BACKEND", "auto", "What runs the model on the endpoint: auto (ONNX Runtime on a CPU instance when its export matches torch, else torch), torch, or onnx (fail rather than fall back). Passed to the model container.", one_of(SERVING_BACKENDS))
    bake_seconds: int = setting("BREEDLINE_BAKE_SECONDS", "300", "Blue/green wait before the rest of the traffic shifts and before old fleet termination.", integer)
    # Batch predictions (batch/<job>/ and its _READY marker; docs/app.md, "Batch predictions")
    batch_instance_type: str = setting("BREEDLINE_BATCH_INSTANCE_TYPE", "ml.m5.large", "Instance type of a batch prediction's Batch Transform job (TransformResources.InstanceType); billed only while the job runs.")
    batch_instance_count: int = setting("BREEDLINE_BATCH_INSTANCE_COUNT", "1", "Instances of a batch prediction's transform job (TransformResources.InstanceCount); SageMaker splits the manifest's images between them.", positive)
    batch_max_concurrent_transforms: int = setting("BREEDLINE_BATCH_MAX_CONCURRENT_TRANSFORMS", "2", "Parallel requests to each transform instance (MaxConcurrentTransforms): AWS advises the number of the container's model-server workers, and TorchServe (which the PyTorch inference toolkit runs) starts one per vCPU by default: 2 on ml.m5.large. Raise it with the instance type.", positive)
    batch_invocation_timeout_seconds: int = setting("BREEDLINE_BATCH_INVOCATION_TIMEOUT_SECONDS", "60", "How long one image's invocation may take in a transform job (ModelClientConfig.InvocationsTimeoutInSeconds, 1-3600); it is not retried.", positive)
    # Predict API
    top_k: int = setting("BREEDLINE_TOP_K", "5", "How many label/probability pairs the predict API returns.", integer)
    max_image_bytes: int = setting("BREEDLINE_MAX_IMAGE_BYTES", "4500000", "Largest accepted image body, in bytes. API Gateway hands it to Lambda base64-encoded inside the event, and Lambda takes at most 6 MiB (6,291,456 bytes): the default's base64 is 6,000,000 bytes, leaving 291,456 for headers and the rest of the event. A value whose base64 leaves under 64 KiB is refused (at most 4,669,440; docs/app.md). A serverless endpoint lowers it to 4,000,000.", body_limit)
    # Predict hardening (issue 15, docs/reliability.md "The predict path")
    max_decode_megapixels: float = setting("BREEDLINE_MAX_DECODE_MEGAPIXELS", "16", "Decode budget of one predict image, checked on its header before any pixel is decoded, by the route (a lower bound) and by the model container (passed in the model's Environment): at most this many decoded megapixels (a JPEG counted at its reduced draft size), and at most this many megapixels of RGBA in estimated decode memory (20 bytes a pixel: 320 MB at 16; a 16-bit grey PNG costs 23, RGB 4). Larger images get 413 image_too_large. 16 accepts 12 MP phone photos in every mode (docs/reliability.md).", megapixels)
    invoke_timeout_seconds: float = setting("BREEDLINE_INVOKE_TIMEOUT_SECONDS", "25", "Time budget of the predict route's InvokeEndpoint call (connect plus read, one attempt, no botocore retry); when it runs out the route answers 504 endpoint_timeout. At most 27: API Gateway gives up after 29 s.", invoke_budget)
    try_page: bool = setting("BREEDLINE_TRY_PAGE", "true", "Serve the try-it page at GET /try (and its files at /try/<name>) from the API: public, like any web page, and holding no secret; a person types the API key into it, kept in their browser (docs/clients.md). false removes the routes (read when the app is packaged).", flag)
    api_auth: str = setting("BREEDLINE_API_AUTH", "api_key", "Auth of POST /predict: api_key (usage plan), iam or none. /status and /labels use iam when this is none (read when the app is packaged).", one_of(API_AUTH_MODES))
    cors_origins: tuple[str, ...] = setting("BREEDLINE_CORS_ORIGINS", "", "Comma-separated browser origins (scheme://host[:port]) allowed to call the API from a web page: /predict and /labels answer their preflights (OPTIONS), and every answer, errors included, carries Access-Control-Allow-Origin for an allowed Origin and nothing for any other. Empty: no CORS. The local runtime adds its own API's origin. Read per request; make deploy keeps the preflight (OPTIONS) methods in API Gateway only for a stage that sets it (docs/app.md, CORS).", origins)
    # Packaging
    needs_make_deploy: bool = setting("BREEDLINE_NEEDS_MAKE_DEPLOY", "false", "true in the AWS stages of config.json: the stack fills in their bucket, role, tables, name prefix and image URIs, so app.py refuses to load with it and a raw chalice package or deploy stops; make deploy's build copy removes it.", flag)
    # Observability (read by Powertools itself; listed so they are documented and validated per stage)
    service_name: str = setting("POWERTOOLS_SERVICE_NAME", "breedline", "Service name on every log line and metric.")
    metrics_namespace: str = setting("POWERTOOLS_METRICS_NAMESPACE", "Breedline", "CloudWatch namespace of the EMF metrics.")

    def __post_init__(self) -> None:
        """Refuse combinations that AWS would refuse later, far from their cause."""
        check_instances("BREEDLINE_TUNING", self.tuning_instance_type, self.tuning_instance_count)
        check_instances("BREEDLINE_TRAINING", self.training_instance_type, self.training_instance_count)
        if not self.variant_name and self.serverless_memory_mb == 0:
            raise ValueError(
                "BREEDLINE_VARIANT_NAME is empty (each variant named after its model), but an instance "
                "endpoint is updated blue/green with deployment guardrails (canary, bake, "
                "BREEDLINE_ROLLBACK_ALARMS), which SageMaker allows only when the new config keeps the old "
                "variant name; set a fixed name such as AllTraffic, or deploy serverless "
                "(BREEDLINE_SERVERLESS_MEMORY_MB), which takes no guardrails"
            )

    def image_limit(self) -> int:
        """The predict route's body limit: BREEDLINE_MAX_IMAGE_BYTES, within a serverless endpoint's payload.

        Why here: the InvokeEndpoint body is the image itself, so on a serverless
        endpoint a body over :data:`SERVERLESS_PAYLOAD_BYTES` would come back as
        SageMaker's validation error instead of the route's 413.
        """
        if self.serverless_memory_mb > 0:
            return min(self.max_image_bytes, SERVERLESS_PAYLOAD_BYTES)
        return self.max_image_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every variable, falling back to its documented default.

        Raises ``ValueError`` naming the variable when a value cannot be parsed,
        so a misconfigured stage fails at cold start with a clear message.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable: Variable = f.metadata["variable"]
            values[f.name] = f.metadata["parse"](variable.name, env.get(variable.name, variable.default))
        return cls(**values)


#: Every variable the app reads, from the :class:`Settings` fields. Order is the order of the README table.
VARIABLES: tuple[Variable, ...] = tuple(f.metadata["variable"] for f in fields(Settings))


def markdown_table() -> str:
    """Render :data:`VARIABLES` as the README's configuration table."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "(empty)"
        rows.append(f"| `{var.name}` | {default} | {var.doc} |")
    return "\n".join(rows)
