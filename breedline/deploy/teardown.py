"""Tear one stage down: its running jobs, the stack, and what the pipeline made outside it.

The pipeline's Lambdas create SageMaker endpoints, endpoint configs and
models at run time, so CloudFormation does not know them; they all start with
``<stack>-``, which is how they are found here.
"""

from __future__ import annotations

from typing import Any, Iterable

from breedline.deploy.packaging import Log
from breedline.deploy.stack import stack_exists
from breedline.deploy.stage import (
    artifacts_bucket_name,
    check_stack_name,
    data_bucket_name,
    default_stack_name,
)


def destroy(
    stage_name: str,
    *,
    region: str,
    stack_name: str | None = None,
    delete_bucket: bool = False,
    session: Any = None,
    log: Log = print,
) -> dict[str, list[str]]:
    """Stop this stage's running jobs, delete the stack, then the endpoint, configs and models the pipeline made.

    The data bucket is retained by the template (DeletionPolicy: Retain);
    ``delete_bucket`` empties and deletes it too. The artifacts bucket holds
    only deploy artifacts and always goes.
    """
    import boto3

    session = session or boto3.session.Session(region_name=region)
    stack = check_stack_name(stack_name or default_stack_name(stage_name))
    account = session.client("sts").get_caller_identity()["Account"]
    sm = session.client("sagemaker")
    done: dict[str, list[str]] = {"jobs_stopped": [], "endpoints": [], "endpoint_configs": [], "models": [], "buckets": []}
    prefix = f"{stack}-"

    done["jobs_stopped"] = stop_running_jobs(sm, prefix)
    delete_stack(session.client("cloudformation"), stack, log)
    # After the stack: its Lambdas can no longer create an endpoint behind our back,
    # and the endpoint's scaling target is already deregistered.
    done.update(delete_pipeline_resources(sm, prefix))
    for kind, names in done.items():
        if names:
            log(f"deleted {kind}: {', '.join(names)}")

    buckets = [artifacts_bucket_name(stack, account, region)]
    if delete_bucket:
        buckets.append(data_bucket_name(stack, account, region))
    else:
        log(f"kept the data bucket {data_bucket_name(stack, account, region)} (--delete-bucket removes it)")
    done["buckets"] = delete_buckets(session.resource("s3"), buckets, log)
    return done


def stop_running_jobs(sm: Any, prefix: str) -> list[str]:
    """Stop the stage's tuning and training jobs that are still running; return their names."""
    stopped = []
    for job in _paginate(sm, "list_hyper_parameter_tuning_jobs", "HyperParameterTuningJobSummaries",
                         NameContains=prefix, StatusEquals="InProgress"):
        name = job["HyperParameterTuningJobName"]
        if name.startswith(prefix):
            sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            stopped.append(name)
    for job in _paginate(sm, "list_training_jobs", "TrainingJobSummaries", NameContains=prefix,
                         StatusEquals="InProgress"):
        name = job["TrainingJobName"]
        if name.startswith(prefix):
            sm.stop_training_job(TrainingJobName=name)
            stopped.append(name)
    return stopped


def delete_stack(cfn: Any, stack: str, log: Log) -> None:
    """Delete the stack and wait until it is gone (a missing stack is fine)."""
    if stack_exists(cfn, stack):
        log(f"deleting stack {stack} ...")
        cfn.delete_stack(StackName=stack)
        cfn.get_waiter("stack_delete_complete").wait(StackName=stack, WaiterConfig={"Delay": 10, "MaxAttempts": 360})
    else:
        log(f"stack {stack} does not exist")


def delete_pipeline_resources(sm: Any, prefix: str) -> dict[str, list[str]]:
    """Delete the endpoints, endpoint configs and models named ``<prefix>...``; return their names by kind."""
    done: dict[str, list[str]] = {"endpoints": [], "endpoint_configs": [], "models": []}
    for ep in _paginate(sm, "list_endpoints", "Endpoints", NameContains=prefix):
        if ep["EndpointName"].startswith(prefix):
            sm.delete_endpoint(EndpointName=ep["EndpointName"])
            done["endpoints"].append(ep["EndpointName"])
    for cfg in _paginate(sm, "list_endpoint_configs", "EndpointConfigs", NameContains=prefix):
        if cfg["EndpointConfigName"].startswith(prefix):
            sm.delete_endpoint_config(EndpointConfigName=cfg["EndpointConfigName"])
            done["endpoint_configs"].append(cfg["EndpointConfigName"])
    for model in _paginate(sm, "list_models", "Models", NameContains=prefix):
        if model["ModelName"].startswith(prefix):
            sm.delete_model(ModelName=model["ModelName"])
            done["models"].append(model["ModelName"])
    return done


def delete_buckets(s3: Any, names: list[str], log: Log) -> list[str]:
    """Empty (every version) and delete each bucket; return the ones deleted (a missing bucket is skipped)."""
    deleted = []
    for name in names:
        bucket = s3.Bucket(name)
        try:
            bucket.object_versions.delete()
            bucket.objects.all().delete()
            bucket.delete()
            deleted.append(name)
            log(f"deleted bucket {name}")
        except Exception as exc:  # noqa: BLE001 - a missing bucket is fine; say what happened
            if "NoSuchBucket" not in str(exc):
                raise
    return deleted


def _paginate(client: Any, op: str, key: str, **kwargs: Any) -> Iterable[dict[str, Any]]:
    for page in client.get_paginator(op).paginate(**kwargs):
        yield from page.get(key, [])
