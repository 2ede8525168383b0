"""Batch predictions through the handlers: a marker starts one transform job; its end is joined once.

Driven through chalice.test.Client under moto (S3, state, idempotency, SNS)
with the strict SageMaker fake of app_helpers (every request validated against
botocore's model, creates single-flight by name); each AWS call is checked
against the handler's IAM row (tests/app/conftest.py).
"""

from __future__ import annotations

import copy
import json

import boto3
from app_helpers import BUCKET, load_event
from chalicelib.state import StateStore

JOB = "shelter-intake"
MODEL = "breedline-dog-breeds-ee486b7b-final"
PREDICTION = {"label": "beagle", "probability": 0.91, "top_k": [{"label": "beagle", "probability": 0.91}],
              "abstained": False}
UNSURE = {"label": None, "probability": None, "top_k": [{"label": "pug", "probability": 0.3}], "abstained": True,
          "reason": "low_confidence"}
DECODE_ERROR = {"error": {"code": "not_an_image", "message": "cannot identify image file", "status_code": 400}}


def invoke(client, name: str, event: dict) -> dict:
    return client.lambda_.invoke(name, event).payload


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def make_live(env) -> None:
    assert state(env).set_live_model({"model": MODEL, "training_job": MODEL, "labels": ["beagle", "pug"]}, None)


def upload_batch(aws, files: dict[str, bytes]) -> None:
    for rel, body in files.items():
        aws.s3.put_object(Bucket=BUCKET, Key=f"batch/{JOB}/{rel}", Body=body)
    aws.s3.put_object(Bucket=BUCKET, Key=f"batch/{JOB}/_READY", Body=b"")


def read(aws, key: str) -> bytes:
    return aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


IMAGES = {"a/1.jpg": b"\xff\xd8\xff1", "a/b/2.png": b"\x89PNG3", "3.jpg": b"\xff\xd8\xff3", "4.jpg": b"\xff\xd8\xff4",
          "notes.txt": b"hello"}


def start(client, aws, sagemaker, env) -> str:
    """Upload IMAGES and the marker, handle the marker's event; the transform job's name."""
    make_live(env)
    upload_batch(aws, IMAGES)
    answer = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))
    assert answer["outcome"] == "started", answer
    return answer["transform_job"]


def end_event(name: str, status: str = "Completed", **extra) -> dict:
    event = copy.deepcopy(load_event("transform_completed.json" if status != "Failed" else "transform_failed.json"))
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{name}"
    event["detail"].update(TransformJobName=name, TransformJobArn=arn, TransformJobStatus=status, **extra)
    event["resources"] = [arn]
    return event


def write_outputs(aws, name: str, outputs: dict[str, dict | bytes]) -> None:
    """What SageMaker writes: ``<S3OutputPath><rel>.out`` per image it answered."""
    for rel, body in outputs.items():
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        aws.s3.put_object(Bucket=BUCKET, Key=f"batch-results/{JOB}/{name}/output/{rel}.out", Body=data)


def test_the_marker_starts_exactly_one_transform_job_with_the_contracts_fields(client, aws, sagemaker, env):
    image = load_event("s3_batch_ready_marker.json")
    image["detail"]["object"]["key"] = f"batch/{JOB}/a/1.jpg"
    assert invoke(client, "on_dataset_upload", image)["outcome"] == "ignored"  # images wait for the marker
    assert sagemaker.calls == [] and state(env).uploads(JOB) is None  # not taken for a data set either
    name = start(client, aws, sagemaker, env)
    (request,) = sagemaker.requests("CreateTransformJob")
    folder = f"s3://{BUCKET}/batch-results/{JOB}/{name}/"
    assert request["TransformJobName"] == name and request["ModelName"] == MODEL
    assert request["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "ManifestFile",
                                                                       "S3Uri": folder + "manifest.json"}
    assert request["TransformOutput"]["S3OutputPath"] == folder + "output/"
    assert request["Environment"] == {"BREEDLINE_BATCH_ERRORS": "lines"}
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags == {"breedline:pipeline": "breedline", "breedline:stage": "batch", "breedline:batch-job": JOB,
                    "breedline:bucket": BUCKET}
    body = json.loads(read(aws, f"batch-results/{JOB}/{name}/manifest.json"))
    assert body == [{"prefix": f"s3://{BUCKET}/batch/{JOB}/"}, "3.jpg", "4.jpg", "a/1.jpg", "a/b/2.png"]
    assert json.loads(read(aws, f"batch-results/{JOB}/{name}/skipped.json")) == [
        {"file": "notes.txt", "why": "not an image file (suffix)"}]
    assert state(env).job(name)["status"] == "InProgress"
    again = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))  # a duplicate delivery
    assert again["transform_job"] == name and len(sagemaker.requests("CreateTransformJob")) == 1
    newer = {"model": "breedline-dog-breeds-ffffffff-final", "training_job": "x", "labels": ["beagle", "pug"]}
    assert state(env).set_live_model(newer, MODEL)  # a new live model: the same marker is a new run on it
    rerun = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))
    assert rerun["outcome"] == "started" and rerun["transform_job"] != name
    assert sagemaker.requests("CreateTransformJob")[1]["ModelName"] == newer["model"]


def test_no_live_model_starts_nothing_and_says_why(client, aws, sagemaker, env):
    upload_batch(aws, IMAGES)
    answer = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))
    assert answer["outcome"] == "no_live_model" and sagemaker.calls == []
    summary = json.loads(read(aws, f"batch-results/{JOB}/{answer['transform_job']}/summary.json"))
    assert summary["status"] == "no_live_model" and summary["total"] == 0 and summary["skipped"] == 1
    (alert,) = aws.alerts()
    assert "no_live_model" in alert["subject"] and "no live model" in alert["message"]["failure_reason"]
    make_live(env)  # the refusal kept no idempotency record: the same marker again starts the batch
    again = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))
    assert again["outcome"] == "started" and len(sagemaker.requests("CreateTransformJob")) == 1


def test_completed_job_is_joined_into_one_line_per_image_and_notified_once(client, aws, sagemaker, env):
    name = start(client, aws, sagemaker, env)
    write_outputs(aws, name, {"3.jpg": PREDICTION, "a/1.jpg": UNSURE, "a/b/2.png": DECODE_ERROR})  # no 4.jpg.out
    answer = invoke(client, "on_transform_state_change", end_event(name))
    assert answer["outcome"] == "completed" and answer["total"] == 4
    folder = f"batch-results/{JOB}/{name}/"
    lines = [json.loads(row) for row in read(aws, folder + "results.jsonl").decode().splitlines()]
    assert [line["file"] for line in lines] == ["3.jpg", "4.jpg", "a/1.jpg", "a/b/2.png"]
    assert lines[0] == {"file": "3.jpg", **PREDICTION, "reason": None}
    assert lines[1]["error"]["code"] == "missing_output"
    assert lines[2] == {"file": "a/1.jpg", **UNSURE}
    assert lines[3] == {"file": "a/b/2.png", **DECODE_ERROR}
    summary = json.loads(read(aws, folder + "summary.json"))
    assert {k: summary[k] for k in ("status", "total", "predicted", "abstained", "failed", "skipped", "counts")} == {
        "status": "Completed", "total": 4, "predicted": 1, "abstained": 1, "failed": 2, "skipped": 1,
        "counts": {"beagle": 1}}
    assert summary["results"] == f"s3://{BUCKET}/{folder}results.jsonl"
    (note,) = aws.alerts()
    assert note["subject"].startswith(f"Breedline: batch {JOB} Completed") and note["message"] == summary
    assert invoke(client, "on_transform_state_change", end_event(name))["transform_job"] == name  # duplicate
    late = invoke(client, "on_transform_state_change", end_event(name, "Failed", FailureReason="late"))
    assert late["outcome"] == "ignored" and aws.alerts() == []
    assert json.loads(read(aws, folder + "summary.json")) == summary and state(env).job(name)["status"] == "Completed"


def test_a_failed_job_gets_a_summary_with_its_reason_and_an_alert(client, aws, sagemaker, env):
    name = start(client, aws, sagemaker, env)
    write_outputs(aws, name, {"3.jpg": PREDICTION})
    answer = invoke(client, "on_transform_state_change", end_event(name, "Failed", FailureReason="ClientError: 400"))
    assert answer["outcome"] == "failed"
    summary = json.loads(read(aws, f"batch-results/{JOB}/{name}/summary.json"))
    assert summary["status"] == "Failed" and summary["failure_reason"] == "ClientError: 400"
    assert (summary["predicted"], summary["failed"]) == (1, 3)
    (alert,) = aws.alerts()
    assert "Failed" in alert["subject"] and alert["message"]["failure_reason"] == "ClientError: 400"


def test_foreign_transform_jobs_change_nothing(client, aws, sagemaker, env):
    ours_elsewhere = {"breedline:pipeline": "breedline", "breedline:stage": "batch", "breedline:batch-job": JOB,
                      "breedline:bucket": "other-bucket"}
    for tags in ({"team": "risk"}, ours_elsewhere):
        event = end_event("breedline-batch-someone-else-12345678", Tags=tags)
        assert invoke(client, "on_transform_state_change", event)["outcome"] == "ignored"
    assert sagemaker.calls == [] and aws.alerts() == []


def test_an_event_without_tags_asks_list_tags(client, aws, sagemaker, env):
    name = start(client, aws, sagemaker, env)
    event = end_event(name, Tags={})
    sagemaker.tags_by_arn[event["detail"]["TransformJobArn"]] = sagemaker.requests("CreateTransformJob")[0]["Tags"]
    assert invoke(client, "on_transform_state_change", event)["outcome"] == "completed"
    assert [op for op, _ in sagemaker.calls] == ["CreateTransformJob", "ListTags"]


def test_after_the_idempotency_record_expires_the_name_still_starts_nothing(client, aws, sagemaker, env):
    name = start(client, aws, sagemaker, env)
    table = env["BREEDLINE_IDEMPOTENCY_TABLE"]
    for item in aws.ddb.scan(TableName=table)["Items"]:  # what the 24 h expiry does
        aws.ddb.delete_item(TableName=table, Key={"id": item["id"]})
    again = invoke(client, "on_dataset_upload", load_event("s3_batch_ready_marker.json"))
    assert again == {"outcome": "already_started", "transform_job": name, "batch_job": JOB}
    assert len(sagemaker.names("CreateTransformJob")) == 2  # the second was refused: ResourceInUse
    assert state(env).job(name)["status"] == "InProgress" and aws.alerts() == []


def test_a_stopped_job_without_a_reason_asks_describe(client, aws, sagemaker, env):
    name = start(client, aws, sagemaker, env)
    sagemaker.transform[name] = {"TransformJobName": name, "TransformJobStatus": "Stopped",
                                 "FailureReason": "stopped by the operator"}
    assert invoke(client, "on_transform_state_change", end_event(name, "Stopped"))["outcome"] == "stopped"
    summary = json.loads(read(aws, f"batch-results/{JOB}/{name}/summary.json"))
    assert summary["status"] == "Stopped" and summary["failure_reason"] == "stopped by the operator"
    assert summary["failed"] == 4 and {c for c in summary["errors"]} == {"missing_output"}
    (alert,) = aws.alerts()
    assert "Stopped" in alert["subject"]
