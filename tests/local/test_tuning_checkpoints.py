"""Tuning trials get the tuning job's CheckpointConfig as it is, as AWS documents the job definition."""

from __future__ import annotations

import time

from local_standins import BUCKET, sagemaker_client, training_request  # type: ignore[import-not-found]


def test_every_trial_gets_the_tuning_jobs_checkpoint_prefix(local_sagemaker):
    """AWS: HyperParameterTrainingJobDefinition "Defines the training jobs launched by a
    hyperparameter tuning job".

    Nothing in AWS's documentation appends the trial's name to ``CheckpointConfig.S3Uri``, so the
    local tuner must not either (it used to, and so hid trials resuming each other's checkpoints).
    """
    sm = sagemaker_client(local_sagemaker)
    base = training_request("unused")
    prefix = f"s3://{BUCKET}/jobs/unit-tune-ckpt/checkpoints/"
    definition = {key: base[key] for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig",
                                             "OutputDataConfig", "ResourceConfig")}
    definition.update({
        "StaticHyperParameters": dict(base["HyperParameters"]),
        "StoppingCondition": {"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 1200},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": prefix, "LocalPath": "/opt/ml/checkpoints"},
    })
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="unit-tune-ckpt",
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "valid_loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"ContinuousParameterRanges": [
                {"Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.1",
                 "ScalingType": "Logarithmic"}]},
        },
        TrainingJobDefinition=definition,
    )
    deadline = time.monotonic() + 90
    while True:
        job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="unit-tune-ckpt")
        if job["HyperParameterTuningJobStatus"] != "InProgress" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["HyperParameterTuningJobStatus"] == "Completed", job.get("FailureReason")
    trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="unit-tune-ckpt")["TrainingJobSummaries"]
    assert len(trials) == 2
    for trial in trials:
        described = sm.describe_training_job(TrainingJobName=trial["TrainingJobName"])
        assert described["CheckpointConfig"] == {"S3Uri": prefix, "LocalPath": "/opt/ml/checkpoints"}
