"""Every SageMaker request the app builds, validated against botocore's service model.

``validate_request`` runs botocore's own validation (required members, types,
unknown keys, minimums) and then the constraints the service checks (maximum
lengths, patterns, enums, ranges), for every optional block and variant.
"""

from __future__ import annotations

import json

import pytest

from app_helpers import validate_request
from chalicelib import naming
from chalicelib import sagemaker_requests as build
from chalicelib.config import Settings
from chalicelib.decisions import pipeline_tags
from contract import CHANNELS, METRIC_DEFINITIONS, PRETRAINED_CHANNEL, RULE_NAMES

BASE = {
    "BREEDLINE_TRAINING_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6.0-gpu-py312",
    "BREEDLINE_INFERENCE_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
    "BREEDLINE_DEBUGGER_RULE_IMAGE": "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest",
    "BREEDLINE_ROLLBACK_ALARMS": "breedline-endpoint-5xx,breedline-endpoint-latency",
}
VARIANTS = {
    "defaults": {},
    "no_spot": {"BREEDLINE_USE_SPOT": "false"},
    "random_auto_stop": {"BREEDLINE_TUNING_STRATEGY": "Random", "BREEDLINE_EARLY_STOPPING": "Auto"},
    "hyperband": {"BREEDLINE_TUNING_STRATEGY": "Hyperband", "BREEDLINE_EARLY_STOPPING": "Auto"},
    "maximize_accuracy": {"BREEDLINE_OBJECTIVE_METRIC": "valid_accuracy", "BREEDLINE_OBJECTIVE_TYPE": "Maximize"},
    # issue 13: the class-balanced objectives
    "maximize_macro_f1": {"BREEDLINE_OBJECTIVE_METRIC": "valid_macro_f1",
                          "BREEDLINE_OBJECTIVE_TYPE": "Maximize"},
    "maximize_balanced_accuracy": {"BREEDLINE_OBJECTIVE_METRIC": "valid_balanced_accuracy",
                                   "BREEDLINE_OBJECTIVE_TYPE": "Maximize"},
    "no_rule_image": {"BREEDLINE_DEBUGGER_RULE_IMAGE": ""},
    "serverless": {"BREEDLINE_SERVERLESS_MEMORY_MB": "3072"},
    "canary_fleet": {"BREEDLINE_ENDPOINT_INSTANCE_COUNT": "3", "BREEDLINE_CANARY_PERCENT": "25"},
    "no_alarms": {"BREEDLINE_ROLLBACK_ALARMS": ""},
    "extra_hyperparameters": {"BREEDLINE_EXTRA_HYPERPARAMETERS": json.dumps({"image_size": 160, "patience": 2})},
    # issue 12: per-model variant names only where no guardrails go (serverless); instances refuse them
    "per_model_variant": {"BREEDLINE_VARIANT_NAME": "", "BREEDLINE_SERVERLESS_MEMORY_MB": "4096"},
    "cpu_instances": {"BREEDLINE_TUNING_INSTANCE_TYPE": "ml.m5.xlarge", "BREEDLINE_TRAINING_INSTANCE_TYPE": "ml.c5.2xlarge"},
    "pretrained_weights": {"BREEDLINE_PRETRAINED_WEIGHTS_URI": "s3://breedline-data/code/weights/vgg11-8a719046.pth"},
    # issue 14: every Debugger mode, and the service without a rule image
    "debugger_in_job": {"BREEDLINE_DEBUGGER": "in_job"},
    "debugger_service": {"BREEDLINE_DEBUGGER": "service"},
    "debugger_auto": {"BREEDLINE_DEBUGGER": "auto"},
    "debugger_off": {"BREEDLINE_DEBUGGER": "off"},
    "debugger_service_no_rule_image": {"BREEDLINE_DEBUGGER": "service", "BREEDLINE_DEBUGGER_RULE_IMAGE": ""},
    # issue 18: several instances (spot and not, CPU and GPU) and one instance with several GPUs
    "two_gpu_instances": {"BREEDLINE_TRAINING_INSTANCE_COUNT": "2", "BREEDLINE_TUNING_INSTANCE_COUNT": "2"},
    "two_cpu_instances_on_demand": {"BREEDLINE_TRAINING_INSTANCE_COUNT": "2", "BREEDLINE_USE_SPOT": "false",
                                    "BREEDLINE_TRAINING_INSTANCE_TYPE": "ml.m5.xlarge"},
    "multi_gpu_instance": {"BREEDLINE_TRAINING_INSTANCE_TYPE": "ml.g4dn.12xlarge",
                           "BREEDLINE_TUNING_INSTANCE_TYPE": "ml.g5.12xlarge", "BREEDLINE_DEBUGGER": "service"},
}
WEIGHTS_URI = VARIANTS["pretrained_weights"]["BREEDLINE_PRETRAINED_WEIGHTS_URI"]
DATASET, VERSION = "Stanford_Dogs.v2-with-a-rather-long-name", "0123456789abcdef"


def settings(**overrides: str) -> Settings:
    return Settings.from_env({**BASE, **overrides})


def all_requests(s: Settings) -> dict[str, dict]:
    tuning = naming.tuning_job_name(s.name_prefix, DATASET, VERSION)
    final = naming.training_job_name(tuning)
    model = naming.model_name(final)
    config = naming.endpoint_config_name(model, build.serverless(s))
    tags = pipeline_tags(s.name_prefix, "tuning", DATASET, VERSION)
    artifacts = f"s3://{s.bucket}/jobs/{final}/output/model.tar.gz"
    return {
        "CreateHyperParameterTuningJob": build.create_tuning_job(s, name=tuning, dataset=DATASET, region="eu-west-1", tags=tags),
        "CreateTrainingJob": build.create_training_job(
            s, name=final, dataset=DATASET, region="eu-west-1", hyperparameters={"learning_rate": "0.003", "batch_size": "64"}, tags=tags
        ),
        "CreateModel": build.create_model(s, name=model, model_data_url=artifacts, region="eu-west-1", tags=tags),
        "CreateEndpointConfig": build.create_endpoint_config(s, name=config, model_name=model, tags=tags),
        "CreateEndpoint": build.create_endpoint(s, config_name=config, tags=tags),
        "UpdateEndpoint": build.update_endpoint(s, config_name=config),
        "DescribeHyperParameterTuningJob": build.describe_tuning_job(tuning),
        "StopHyperParameterTuningJob": build.stop_tuning_job(tuning),
        "DescribeTrainingJob": build.describe_training_job(final),
        "DescribeEndpoint": build.describe_endpoint(s),
        "ListTags": build.list_tags(f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{final}"),
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_request_is_valid_for_the_service(variant):
    for operation, request in all_requests(settings(**VARIANTS[variant])).items():
        validate_request("sagemaker", operation, request)


def test_invoke_endpoint_request_is_valid():
    request = build.invoke_endpoint(settings(), body=b"\xff\xd8\xff", content_type="image/jpeg")
    validate_request("sagemaker-runtime", "InvokeEndpoint", request)
    raw = build.invoke_endpoint(settings(), body=b"\xff\xd8\xff", content_type="image/jpeg", abstain=False)
    assert raw["Accept"] == "application/json; abstain=false"
    validate_request("sagemaker-runtime", "InvokeEndpoint", raw)


def test_the_validator_catches_what_botocore_leaves_to_the_service():
    request = all_requests(settings())["CreateHyperParameterTuningJob"]
    request["HyperParameterTuningJobName"] = "x" * 33
    with pytest.raises(AssertionError, match="max 32"):
        validate_request("sagemaker", "CreateHyperParameterTuningJob", request)
    request["HyperParameterTuningJobName"] = "bad_name"
    with pytest.raises(AssertionError, match="does not match"):
        validate_request("sagemaker", "CreateHyperParameterTuningJob", request)


def test_tuning_job_contents():
    s = settings()
    request = all_requests(s)["CreateHyperParameterTuningJob"]
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "valid_loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 2}
    (lr,) = config["ParameterRanges"]["ContinuousParameterRanges"]
    assert lr["Name"] == "learning_rate" and float(lr["MinValue"]) == 0.0001 and float(lr["MaxValue"]) == 0.1
    assert lr["ScalingType"] == "Logarithmic"
    (bs,) = config["ParameterRanges"]["CategoricalParameterRanges"]
    assert bs == {"Name": "batch_size", "Values": ["32", "64", "128", "256"]}
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    definition = request["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert json.loads(static["sagemaker_program"]) == "train.py"
    assert json.loads(static["sagemaker_submit_directory"]) == s.sourcedir_uri
    assert static["epochs"] == "5" and static["model"] == "vgg11"
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert [c["ChannelName"] for c in definition["InputDataConfig"]] == ["train", "valid", "test"]
    assert definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://breedline-data/datasets/{DATASET}/train/"
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert definition["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert definition["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert {t["Key"] for t in request["Tags"]} >= {"breedline:pipeline", "breedline:stage", "breedline:dataset"}


def test_training_job_contents():
    request = all_requests(settings(BREEDLINE_DEBUGGER="service"))["CreateTrainingJob"]
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert request["HyperParameters"]["batch_size"] == "64" and request["HyperParameters"]["learning_rate"] == "0.003"
    assert json.loads(request["HyperParameters"]["sagemaker_program"]) == "train.py"
    hook = request["DebugHookConfig"]
    assert "losses" in [c["CollectionName"] for c in hook["CollectionConfigurations"]]
    # SageMaker appends <job>/debug-output to the path; it must not hold the job name already.
    assert request["TrainingJobName"] not in hook["S3OutputPath"]
    assert hook["S3OutputPath"] == request["OutputDataConfig"]["S3OutputPath"]
    assert request["TrainingJobName"] not in request["ProfilerConfig"]["S3OutputPath"]
    rules = {r["RuleConfigurationName"]: r for r in request["DebugRuleConfigurations"]}
    assert set(rules) == {"LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient", "PoorWeightInitialization"}
    assert all(r["RuleParameters"]["rule_to_invoke"] == name for name, r in rules.items())
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert [r["RuleConfigurationName"] for r in request["ProfilerRuleConfigurations"]] == ["ProfilerReport"]
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["S3Uri"].endswith(f"{request['TrainingJobName']}/checkpoints/")
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS


def test_pretrained_weights_reach_every_job_as_their_own_channel():
    """Set: the tuning trials and the final job both get the ``pretrained`` channel; unset: neither does."""
    requests = all_requests(settings(BREEDLINE_PRETRAINED_WEIGHTS_URI=WEIGHTS_URI))
    for config in (requests["CreateHyperParameterTuningJob"]["TrainingJobDefinition"]["InputDataConfig"],
                   requests["CreateTrainingJob"]["InputDataConfig"]):
        assert [c["ChannelName"] for c in config] == [*CHANNELS, PRETRAINED_CHANNEL]
        source = config[-1]["DataSource"]["S3DataSource"]
        assert source == {"S3DataType": "S3Prefix", "S3Uri": WEIGHTS_URI, "S3DataDistributionType": "FullyReplicated"}
        assert config[-1]["InputMode"] == "File"
    plain = all_requests(settings())
    for config in (plain["CreateHyperParameterTuningJob"]["TrainingJobDefinition"]["InputDataConfig"],
                   plain["CreateTrainingJob"]["InputDataConfig"]):
        assert [c["ChannelName"] for c in config] == list(CHANNELS)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://another-bucket/code/weights/vgg11.pth",  # the execution role cannot read it
        "s3://breedline-data/code/weights/",  # a folder, not one file
        "s3://breedline-data/",
        "https://download.pytorch.org/models/vgg11-8a719046.pth",
        "s3://breedline-data/datasets/vgg11.pth",  # would be taken for a data set upload
    ],
)
def test_pretrained_weights_outside_the_data_bucket_are_refused(uri):
    with pytest.raises(ValueError, match="BREEDLINE_PRETRAINED_WEIGHTS_URI=.* must name one object in the data bucket"):
        all_requests(settings(BREEDLINE_PRETRAINED_WEIGHTS_URI=uri))


def test_tuned_values_override_static_but_not_sagemaker_keys():
    s = settings()
    request = build.create_training_job(
        s, name="breedline-x-final", dataset="d", region="us-east-1",
        hyperparameters={"epochs": "9", "sagemaker_program": '"evil.py"'}, tags=[],
    )
    assert request["HyperParameters"]["epochs"] == "9"
    assert json.loads(request["HyperParameters"]["sagemaker_program"]) == "train.py"


def test_spot_off_drops_wait_time_and_checkpoints():
    request = all_requests(settings(BREEDLINE_USE_SPOT="false"))["CreateTrainingJob"]
    assert request["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in request and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]


def test_without_rule_image_hooks_stay_and_rules_go():
    request = all_requests(settings(BREEDLINE_DEBUGGER="service", BREEDLINE_DEBUGGER_RULE_IMAGE=""))["CreateTrainingJob"]
    assert "DebugHookConfig" in request and "ProfilerConfig" in request
    assert "DebugRuleConfigurations" not in request and "ProfilerRuleConfigurations" not in request


def test_model_serves_inference_py_from_the_tarball():
    request = all_requests(settings())["CreateModel"]
    container = request["PrimaryContainer"]
    assert container["ModelDataUrl"].endswith("/output/model.tar.gz")
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert container["Image"] == BASE["BREEDLINE_INFERENCE_IMAGE"]
    assert container["Environment"]["BREEDLINE_SERVING_BACKEND"] == "auto"
    torch_only = all_requests(settings(BREEDLINE_SERVING_BACKEND="torch"))["CreateModel"]
    assert torch_only["PrimaryContainer"]["Environment"]["BREEDLINE_SERVING_BACKEND"] == "torch"
    with pytest.raises(ValueError, match="BREEDLINE_SERVING_BACKEND='tensorrt' must be one of auto, torch, onnx"):
        settings(BREEDLINE_SERVING_BACKEND="tensorrt")


def test_variant_name_is_stable_or_per_model():
    (variant,) = all_requests(settings())["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    per_model = settings(BREEDLINE_VARIANT_NAME="", BREEDLINE_SERVERLESS_MEMORY_MB="4096")
    (variant,) = all_requests(per_model)["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["VariantName"] == variant["ModelName"]


def test_per_model_variant_names_are_refused_where_updates_send_guardrails():
    """Issue 12: SageMaker's deployment guardrails need the new config to keep the old variant name."""
    with pytest.raises(ValueError, match="BREEDLINE_VARIANT_NAME is empty .* keeps the old variant name"):
        settings(BREEDLINE_VARIANT_NAME="")
    with pytest.raises(ValueError, match="BREEDLINE_VARIANT_NAME is empty"):
        settings(BREEDLINE_VARIANT_NAME="", BREEDLINE_ROLLBACK_ALARMS="", BREEDLINE_CANARY_PERCENT="0")


def _endpoint_configs_of_two_models(s: Settings) -> tuple[dict, dict]:
    first, second = (naming.model_name(f"breedline-dogs-{n}-final") for n in (1, 2))
    configs = tuple(
        build.create_endpoint_config(s, name=naming.endpoint_config_name(m, build.serverless(s)), model_name=m, tags=[])
        for m in (first, second)
    )
    for config in configs:
        validate_request("sagemaker", "CreateEndpointConfig", config)
    return configs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_update_with_guardrails_always_keeps_the_variant_name(variant):
    """Every configuration that parses: an UpdateEndpoint with a DeploymentConfig moves between configs whose
    production variant has the same name, as the guardrails' exclusions require (docs/aws.md)."""
    s = settings(**VARIANTS[variant])
    old, new = _endpoint_configs_of_two_models(s)
    update = build.update_endpoint(s, config_name=new["EndpointConfigName"])
    validate_request("sagemaker", "UpdateEndpoint", update)
    if "DeploymentConfig" in update:
        assert [v["VariantName"] for v in old["ProductionVariants"]] == [v["VariantName"] for v in new["ProductionVariants"]]
    else:
        assert build.serverless(s)


def test_endpoint_config_instances_or_serverless():
    (variant,) = all_requests(settings())["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert "ServerlessConfig" not in variant
    (variant,) = all_requests(settings(BREEDLINE_SERVERLESS_MEMORY_MB="2048"))["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant
    with pytest.raises(ValueError):
        all_requests(settings(BREEDLINE_SERVERLESS_MEMORY_MB="1500"))


def test_update_endpoint_blue_green_with_rollback_alarms():
    request = all_requests(settings())["UpdateEndpoint"]
    policy = request["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    # one instance: a canary would be the whole fleet, so all at once (still blue/green)
    assert policy["TrafficRoutingConfiguration"] == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300}
    assert policy["TerminationWaitInSeconds"] == 300
    assert request["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "breedline-endpoint-5xx"}, {"AlarmName": "breedline-endpoint-latency"}]
    }
    canary = all_requests(settings(BREEDLINE_ENDPOINT_INSTANCE_COUNT="4"))["UpdateEndpoint"]
    routing = canary["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == "CANARY" and routing["CanarySize"] == {"Type": "CAPACITY_PERCENT", "Value": 10}
    no_alarms = all_requests(settings(BREEDLINE_ROLLBACK_ALARMS=""))["UpdateEndpoint"]
    assert "AutoRollbackConfiguration" not in no_alarms["DeploymentConfig"]


def test_serverless_update_has_no_deployment_config():
    request = all_requests(settings(BREEDLINE_SERVERLESS_MEMORY_MB="2048"))["UpdateEndpoint"]
    assert "DeploymentConfig" not in request


def test_hyperband_gets_its_strategy_config():
    config = all_requests(settings(BREEDLINE_TUNING_STRATEGY="Hyperband", BREEDLINE_EARLY_STOPPING="Auto"))[
        "CreateHyperParameterTuningJob"
    ]["HyperParameterTuningJobConfig"]
    assert config["StrategyConfig"]["HyperbandStrategyConfig"] == {"MinResource": 1, "MaxResource": 5}
    assert config["TrainingJobEarlyStoppingType"] == "Off"


@pytest.mark.parametrize(
    "overrides",
    [
        {"BREEDLINE_TUNING_STRATEGY": "Grid"},
        {"BREEDLINE_OBJECTIVE_METRIC": "accuracy"},
        {"BREEDLINE_OBJECTIVE_METRIC": "valid_macro_f1"},  # better higher, but the type is Minimize
        {"BREEDLINE_OBJECTIVE_METRIC": "valid_loss", "BREEDLINE_OBJECTIVE_TYPE": "Maximize"},
        {"BREEDLINE_LEARNING_RATE_RANGE": "0.1,0.01"},
        {"BREEDLINE_BATCH_SIZES": ""},
    ],
)
def test_misconfiguration_fails_loudly(overrides):
    with pytest.raises(ValueError):
        all_requests(settings(**overrides))


# -- issue 14: the Debugger modes --------------------------------------------------------------
SERVICE_FIELDS = {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"}


@pytest.mark.parametrize("mode", ["in_job", "off"])
def test_in_job_and_off_carry_no_debugger_service_configuration(mode):
    """Only the documented switch that keeps SageMaker's default system monitoring off remains."""
    request = all_requests(settings(BREEDLINE_DEBUGGER=mode))["CreateTrainingJob"]
    validate_request("sagemaker", "CreateTrainingJob", request)
    assert not SERVICE_FIELDS & set(request)
    assert request["ProfilerConfig"] == {"DisableProfiler": True}
    assert request["HyperParameters"]["debugger"] == mode
    assert "TensorBoardOutputConfig" not in request


@pytest.mark.parametrize("mode", ["service", "auto"])
def test_service_and_auto_send_todays_request_and_tell_train_py_service(mode):
    request = all_requests(settings(BREEDLINE_DEBUGGER=mode))["CreateTrainingJob"]
    assert SERVICE_FIELDS <= set(request)
    assert request["HyperParameters"]["debugger"] == "service"
    assert [r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]] == list(RULE_NAMES)
    assert "DisableProfiler" not in request["ProfilerConfig"]


def test_an_explicit_mode_overrides_the_setting_and_tuned_values_cannot_change_it():
    s = settings(BREEDLINE_DEBUGGER="auto")
    request = build.create_training_job(s, name="breedline-x-final", dataset="d", region="us-east-1",
                                        hyperparameters={"debugger": "service"}, tags=[], debugger="in_job")
    assert request["HyperParameters"]["debugger"] == "in_job" and "DebugHookConfig" not in request
    with pytest.raises(ValueError, match="BREEDLINE_DEBUGGER='smdebug' must be one of in_job, service, auto, off"):
        build.create_training_job(s, name="breedline-x-final", dataset="d", region="us-east-1",
                                  hyperparameters={}, tags=[], debugger="smdebug")


def test_debugger_settings_parse_and_refuse_unknown_modes():
    s = settings()
    assert s.debugger == "in_job" and s.rules_block_deploy is False
    assert settings(BREEDLINE_RULES_BLOCK_DEPLOY="true").rules_block_deploy is True
    with pytest.raises(ValueError, match="BREEDLINE_DEBUGGER='Service' must be one of in_job, service, auto, off"):
        settings(BREEDLINE_DEBUGGER="Service")



KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("extra", [{}, {"BREEDLINE_SERVERLESS_MEMORY_MB": "3072"}])
def test_a_customer_key_encrypts_volumes_output_and_the_endpoint(extra):
    """Issue 15.18: one key for the jobs' volumes and output and the endpoint's storage; botocore accepts each."""
    requests = all_requests(settings(BREEDLINE_KMS_KEY_ID=KMS_KEY, **extra))
    for operation, request in requests.items():
        validate_request("sagemaker", operation, request)
    tuning = requests["CreateHyperParameterTuningJob"]["TrainingJobDefinition"]
    for job in (tuning, requests["CreateTrainingJob"]):
        assert job["ResourceConfig"]["VolumeKmsKeyId"] == KMS_KEY
        assert job["OutputDataConfig"]["KmsKeyId"] == KMS_KEY
    assert requests["CreateEndpointConfig"]["KmsKeyId"] == KMS_KEY


def test_without_a_key_the_requests_name_none():
    text = json.dumps(all_requests(settings()))
    assert "KmsKeyId" not in text and "VolumeKmsKeyId" not in text


@pytest.mark.parametrize("raw", ["1234abcd-12ab-34cd-56ef-1234567890ab", "alias/breedline", "arn:aws:s3:::bucket"])
def test_a_key_that_is_not_an_arn_is_refused(raw):
    with pytest.raises(ValueError, match="BREEDLINE_KMS_KEY_ID"):
        settings(BREEDLINE_KMS_KEY_ID=raw)
    settings(BREEDLINE_KMS_KEY_ID="arn:aws:kms:eu-west-1:123456789012:alias/breedline")
