"""Every SageMaker request the pipeline sends, built in one place as plain dicts.

Why one module: these dicts are the contract with SageMaker (and with the
local SageMaker that replays it). Tests validate each one against botocore's
service model, so a field that AWS would reject fails here, offline.
Nothing in this module talks to AWS.
"""

from __future__ import annotations

from typing import Any, Mapping

from contract import (DEBUGGER_HYPERPARAMETER, DEBUGGER_MODES, METRIC_DEFINITIONS, METRIC_NAMES,
                      RULE_NAMES, TOOLKIT_PREFIX, check_objective, encode_hyperparameter)

from chalicelib.channels import champion_channel, input_channels, pretrained_channel, s3_uri  # noqa: F401 (build.*)
from chalicelib.config import SERVERLESS_MEMORY_SIZES, Settings, processes_per_job
from chalicelib.transform_requests import create_transform_job, describe_transform_job  # noqa: F401 (build.*)

#: Where the containers expect things (the SageMaker container contract).
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORS_LOCAL_PATH = "/opt/ml/output/tensors"
SERVING_CODE_DIR = "/opt/ml/model/code"
ENTRY_POINT = "train.py"
INFERENCE_ENTRY_POINT = "inference.py"

#: Debugger: how often tensors are saved (steps). Small data sets have few steps.
DEBUG_SAVE_INTERVAL = "10"
#: Profiler sampling interval.
PROFILING_INTERVAL_MS = 500
#: Steps train.py profiles in the final job (--profile_steps); overridable via extra hyperparameters.
FINAL_PROFILE_STEPS = "10"
#: Tensor collections those rules read (as smdebug's rule configs declare them).
DEBUG_COLLECTIONS: tuple[dict[str, Any], ...] = (
    {"CollectionName": "losses", "CollectionParameters": {"save_interval": DEBUG_SAVE_INTERVAL}},
    {"CollectionName": "gradients", "CollectionParameters": {"save_interval": DEBUG_SAVE_INTERVAL}},
    {
        "CollectionName": "relu_input",
        "CollectionParameters": {"include_regex": ".*relu_input", "save_interval": DEBUG_SAVE_INTERVAL},
    },
)
PROFILER_RULE = "ProfilerReport"
#: What the SageMaker SDK's PyTorch estimator sends for ``distribution={"torch_distributed": {"enabled": True}}``;
#: the PyTorch training toolkit (sagemaker_pytorch_container.training) then launches the script with torchrun.
TORCH_DISTRIBUTED_HYPERPARAMETER = "sagemaker_torch_distributed_enabled"


def job_output_uri(settings: Settings, job_name: str, what: str) -> str:
    """``s3://<bucket>/<output prefix><job>/<what>/`` for checkpoints, tensors, profiler output."""
    return s3_uri(settings, f"{settings.output_prefix}{job_name}/{what}/")


def static_hyperparameters(settings: Settings, region: str) -> dict[str, str]:
    """Hyperparameters every job gets; ``sagemaker_*`` values JSON-encoded as script mode expects."""
    values: dict[str, str] = {
        "epochs": str(settings.epochs),
        "model": settings.model,
    }
    values.update(settings.extra_hyperparameters)
    values.update(
        {
            "sagemaker_program": encode_hyperparameter(ENTRY_POINT),
            "sagemaker_submit_directory": encode_hyperparameter(settings.sourcedir_uri),
            "sagemaker_region": encode_hyperparameter(region),
            "sagemaker_container_log_level": encode_hyperparameter(20),
        }
    )
    return values


def _algorithm(settings: Settings) -> dict[str, Any]:
    """Image, File mode and the metric regexes (tuning's HyperParameterAlgorithmSpecification shape)."""
    return {
        "TrainingImage": settings.training_image,
        "TrainingInputMode": "File",
        "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS],
    }


def _stopping(settings: Settings) -> dict[str, int]:
    condition = {"MaxRuntimeInSeconds": settings.max_runtime_seconds}
    if settings.use_spot:
        condition["MaxWaitTimeInSeconds"] = max(settings.max_wait_seconds, settings.max_runtime_seconds)
    return condition


def distribution_hyperparameters(instance_type: str, count: int) -> dict[str, str]:
    """The torch_distributed switch when a job trains on more than one process, else nothing.

    Why only then: one process keeps the plain script launch (no torchrun in
    between), exactly as before. Several instances, or one with several GPUs,
    need torchrun to set ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and the
    rendezvous on ``algo-1`` for ``train.py``'s DistributedDataParallel.
    """
    if processes_per_job(instance_type, count) <= 1:
        return {}
    return {TORCH_DISTRIBUTED_HYPERPARAMETER: encode_hyperparameter(True)}


def _resources(instance_type: str, count: int, settings: Settings) -> dict[str, Any]:
    resources: dict[str, Any] = {"InstanceType": instance_type, "InstanceCount": count,
                                 "VolumeSizeInGB": settings.volume_size_gb}
    if settings.kms_key_id:
        resources["VolumeKmsKeyId"] = settings.kms_key_id
    return resources


def _output(settings: Settings) -> dict[str, Any]:
    """Job output under the output prefix, encrypted with the customer key when one is set (issue 15.18)."""
    output: dict[str, Any] = {"S3OutputPath": s3_uri(settings, settings.output_prefix)}
    if settings.kms_key_id:
        output["KmsKeyId"] = settings.kms_key_id
    return output


def _spot(settings: Settings, checkpoint_owner: str) -> dict[str, Any]:
    """Managed spot and the checkpoints that let an interrupted job resume.

    The tuning job's one definition gives every trial the same prefix
    (``jobs/<tuning>/checkpoints/``); train.py keeps each job's checkpoints in
    a folder named after the job, so a trial resumes only itself.
    """
    if not settings.use_spot:
        return {"EnableManagedSpotTraining": False}
    return {
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {
            "S3Uri": job_output_uri(settings, checkpoint_owner, "checkpoints"),
            "LocalPath": CHECKPOINT_LOCAL_PATH,
        },
    }


def parameter_ranges(settings: Settings) -> dict[str, Any]:
    """learning_rate continuous, batch_size categorical."""
    low, high = settings.learning_rate_range
    if not 0 < low < high:
        raise ValueError("BREEDLINE_LEARNING_RATE_RANGE must be 0 < min < max")
    if not settings.batch_sizes:
        raise ValueError("BREEDLINE_BATCH_SIZES must list at least one value")
    return {
        "ContinuousParameterRanges": [
            {
                "Name": "learning_rate",
                "MinValue": repr(low),
                "MaxValue": repr(high),
                "ScalingType": settings.learning_rate_scaling,
            }
        ],
        "CategoricalParameterRanges": [{"Name": "batch_size", "Values": list(settings.batch_sizes)}],
    }


def tuning_job_config(settings: Settings) -> dict[str, Any]:
    """Strategy, objective, limits, ranges and early stopping."""
    strategy = settings.tuning_strategy
    if settings.objective_metric not in METRIC_NAMES:
        raise ValueError(f"BREEDLINE_OBJECTIVE_METRIC={settings.objective_metric!r} is not one of {METRIC_NAMES}")
    check_objective(settings.objective_metric, settings.objective_type)  # Maximize macro-F1, Minimize a loss
    if strategy == "Grid":
        raise ValueError("BREEDLINE_TUNING_STRATEGY=Grid needs categorical ranges only; learning_rate is continuous")
    config: dict[str, Any] = {
        "Strategy": strategy,
        "HyperParameterTuningJobObjective": {
            "Type": settings.objective_type,
            "MetricName": settings.objective_metric,
        },
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": settings.max_jobs,
            "MaxParallelTrainingJobs": settings.max_parallel_jobs,
        },
        "ParameterRanges": parameter_ranges(settings),
        "TrainingJobEarlyStoppingType": settings.early_stopping,
    }
    if strategy == "Hyperband":
        # Hyperband stops trials itself, per epoch; SageMaker requires early stopping Off with it.
        config["TrainingJobEarlyStoppingType"] = "Off"
        config["StrategyConfig"] = {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": max(settings.epochs, 1)}
        }
    return config


def create_tuning_job(
    settings: Settings, *, name: str, dataset: str, region: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """CreateHyperParameterTuningJob: trials on spot with checkpoints, metrics from METRIC_DEFINITIONS."""
    static = static_hyperparameters(settings, region)
    static.update(distribution_hyperparameters(settings.tuning_instance_type, settings.tuning_instance_count))
    definition: dict[str, Any] = {
        "StaticHyperParameters": static,
        "AlgorithmSpecification": _algorithm(settings),
        "RoleArn": settings.role_arn,
        "InputDataConfig": input_channels(settings, dataset),
        "OutputDataConfig": _output(settings),
        "ResourceConfig": _resources(settings.tuning_instance_type, settings.tuning_instance_count, settings),
        "StoppingCondition": _stopping(settings),
    }
    definition.update(_spot(settings, name))
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": tuning_job_config(settings),
        "TrainingJobDefinition": definition,
        "Tags": tags,
    }


def _rule(name: str, image: str) -> dict[str, Any]:
    return {"RuleConfigurationName": name, "RuleEvaluatorImage": image, "RuleParameters": {"rule_to_invoke": name}}


def request_debugger_mode(mode: str) -> str:
    """The mode a request is built for: ``auto`` tries ``service`` first (``jobs`` retries it as ``in_job``)."""
    if mode not in DEBUGGER_MODES:
        raise ValueError(f"BREEDLINE_DEBUGGER={mode!r} must be one of {', '.join(DEBUGGER_MODES)}")
    return "service" if mode == "auto" else mode


def debugger_config(settings: Settings, mode: str) -> dict[str, Any]:
    """The Debugger part of CreateTrainingJob for a resolved mode (``service``, ``in_job`` or ``off``).

    ``service``: hook, built-in rules (with the region's rule image), system
    profiler and its ProfilerReport rule. ``in_job`` and ``off``: no hook, no
    rules, and ``ProfilerConfig.DisableProfiler``: the API does not promise
    that an absent ProfilerConfig keeps SageMaker's default system monitoring
    off, and SageMaker's own SDK sends ``DisableProfiler`` instead of relying
    on it (docs/aws.md, section 4.2).
    """
    if mode != "service":
        return {"ProfilerConfig": {"DisableProfiler": True}}
    config: dict[str, Any] = {
        "DebugHookConfig": {
            "LocalPath": TENSORS_LOCAL_PATH,
            # SageMaker appends "<job>/debug-output" itself, as it does for model output.
            "S3OutputPath": s3_uri(settings, settings.output_prefix),
            "HookParameters": {"save_interval": DEBUG_SAVE_INTERVAL},
            "CollectionConfigurations": [dict(c) for c in DEBUG_COLLECTIONS],
        },
        "ProfilerConfig": {
            # ... and "<job>/profiler-output" here.
            "S3OutputPath": s3_uri(settings, settings.output_prefix),
            "ProfilingIntervalInMilliseconds": PROFILING_INTERVAL_MS,
        },
    }
    if settings.debugger_rule_image:
        config["DebugRuleConfigurations"] = [_rule(r, settings.debugger_rule_image) for r in RULE_NAMES]
        config["ProfilerRuleConfigurations"] = [_rule(PROFILER_RULE, settings.debugger_rule_image)]
    return config


def create_training_job(
    settings: Settings,
    *,
    name: str,
    dataset: str,
    region: str,
    hyperparameters: Mapping[str, str],
    tags: list[dict[str, str]],
    debugger: str | None = None,
    champion_uri: str | None = None,
) -> dict[str, Any]:
    """CreateTrainingJob for the final model: best hyperparameters, Debugger mode, profiler, spot.

    ``hyperparameters`` are the tuned values, already unquoted; they override
    the static ones. ``debugger`` is the mode to build (default
    ``BREEDLINE_DEBUGGER``, ``auto`` meaning ``service``); train.py learns it
    from the ``debugger`` hyperparameter. Service rules need the region's rule
    image; without one (local stage) the hook and profiler still run.
    ``champion_uri``: the live model's model.tar.gz when it predicts the same
    classes (:func:`champion_channel`); None sends no champion channel.
    """
    mode = request_debugger_mode(debugger or settings.debugger)
    values = static_hyperparameters(settings, region)
    values.setdefault("profile_steps", FINAL_PROFILE_STEPS)
    values.update({k: str(v) for k, v in hyperparameters.items() if not k.startswith(TOOLKIT_PREFIX)})
    values[DEBUGGER_HYPERPARAMETER] = mode
    values.update(distribution_hyperparameters(settings.training_instance_type, settings.training_instance_count))
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "HyperParameters": values,
        "AlgorithmSpecification": {**_algorithm(settings), "EnableSageMakerMetricsTimeSeries": True},
        "RoleArn": settings.role_arn,
        "InputDataConfig": input_channels(settings, dataset)
        + ([champion_channel(settings, champion_uri)] if champion_uri else []),
        "OutputDataConfig": _output(settings),
        "ResourceConfig": _resources(settings.training_instance_type, settings.training_instance_count, settings),
        "StoppingCondition": _stopping(settings),
        **debugger_config(settings, mode),
        "Tags": tags,
    }
    request.update(_spot(settings, name))
    return request


def create_model(
    settings: Settings, *, name: str, model_data_url: str, region: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """CreateModel: the PyTorch inference image serving code/inference.py from model.tar.gz."""
    return {
        "ModelName": name,
        "PrimaryContainer": {
            "Image": settings.inference_image,
            "ModelDataUrl": model_data_url,
            "Environment": {
                "SAGEMAKER_PROGRAM": INFERENCE_ENTRY_POINT,
                "SAGEMAKER_SUBMIT_DIRECTORY": SERVING_CODE_DIR,
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                "SAGEMAKER_REGION": region,
                "BREEDLINE_TOP_K": str(settings.top_k),
                "BREEDLINE_SERVING_BACKEND": settings.serving_backend,
                # The decode budget, checked on each image's header by inference.input_fn (issue 15).
                "BREEDLINE_MAX_DECODE_MEGAPIXELS": f"{settings.max_decode_megapixels:g}",
            },
        },
        "ExecutionRoleArn": settings.role_arn,
        "Tags": tags,
    }


def serverless(settings: Settings) -> bool:
    """Serverless Inference is chosen by a memory size > 0."""
    return settings.serverless_memory_mb > 0


def create_endpoint_config(
    settings: Settings, *, name: str, model_name: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """CreateEndpointConfig: one variant, named ``BREEDLINE_VARIANT_NAME`` or else after its model.

    A fixed name (default ``AllTraffic``) keeps an autoscaling registration
    valid across updates: SageMaker refuses an UpdateEndpoint whose new config
    drops a variant registered for autoscaling.
    """
    variant: dict[str, Any] = {"VariantName": settings.variant_name or model_name, "ModelName": model_name}
    if serverless(settings):
        if settings.serverless_memory_mb not in SERVERLESS_MEMORY_SIZES:
            raise ValueError(f"BREEDLINE_SERVERLESS_MEMORY_MB must be one of {SERVERLESS_MEMORY_SIZES}")
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": settings.serverless_memory_mb,
            "MaxConcurrency": settings.serverless_max_concurrency,
        }
    else:
        variant.update(
            {
                "InitialInstanceCount": settings.endpoint_instance_count,
                "InstanceType": settings.endpoint_instance_type,
                "InitialVariantWeight": 1.0,
            }
        )
    config: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tags}
    if settings.kms_key_id:
        # The instances' ML storage volume (serverless: the copied image). Instance types with local NVMe
        # storage (ml.g4dn, ml.m5d, ...) refuse it; docs/aws.md says so.
        config["KmsKeyId"] = settings.kms_key_id
    return config


def create_endpoint(settings: Settings, *, config_name: str, tags: list[dict[str, str]]) -> dict[str, Any]:
    return {"EndpointName": settings.endpoint_name, "EndpointConfigName": config_name, "Tags": tags}


def deployment_config(settings: Settings) -> dict[str, Any] | None:
    """Blue/green with auto-rollback on the configured alarms; None where SageMaker forbids it.

    Serverless endpoints take no DeploymentConfig. A canary needs a fleet of at
    least two instances (it is at most half the fleet), so one instance shifts
    all at once, still blue/green with the bake time and the rollback alarms.
    SageMaker's guardrails also need the new config to keep the old variant's
    name, which is why :class:`Settings` refuses per-model variant names on
    instance endpoints: every config sent with this policy has the fixed name.
    """
    if serverless(settings):
        return None
    if settings.canary_percent > 0 and settings.endpoint_instance_count >= 2:
        routing: dict[str, Any] = {
            "Type": "CANARY",
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": min(settings.canary_percent, 50)},
            "WaitIntervalInSeconds": settings.bake_seconds,
        }
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": settings.bake_seconds}
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": settings.bake_seconds,
        }
    }
    if settings.rollback_alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in settings.rollback_alarms]}
    return config


def update_endpoint(settings: Settings, *, config_name: str) -> dict[str, Any]:
    """UpdateEndpoint to a new config, blue/green where allowed."""
    request: dict[str, Any] = {"EndpointName": settings.endpoint_name, "EndpointConfigName": config_name}
    guard = deployment_config(settings)
    if guard is not None:
        request["DeploymentConfig"] = guard
    return request


# Read-only requests, here too so every request shape lives in one module.
def describe_tuning_job(name: str) -> dict[str, Any]:
    return {"HyperParameterTuningJobName": name}


def stop_tuning_job(name: str) -> dict[str, Any]:
    """StopHyperParameterTuningJob: the cost guard's stop of a superseded tuning job (chalicelib.budget)."""
    return {"HyperParameterTuningJobName": name}


def describe_training_job(name: str) -> dict[str, Any]:
    return {"TrainingJobName": name}


def describe_endpoint(settings: Settings) -> dict[str, Any]:
    return {"EndpointName": settings.endpoint_name}


def list_tags(arn: str) -> dict[str, Any]:
    return {"ResourceArn": arn, "MaxResults": 50}


def invoke_endpoint(settings: Settings, *, body: bytes, content_type: str, abstain: bool = True) -> dict[str, Any]:
    """sagemaker-runtime InvokeEndpoint; ``abstain=False`` (``?abstain=false``): an Accept parameter, the raw answer."""
    return {
        "EndpointName": settings.endpoint_name,
        "Body": body,
        "ContentType": content_type,
        "Accept": "application/json" if abstain else "application/json; abstain=false",
    }
