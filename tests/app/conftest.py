"""Fixtures for the Chalice app tests: env, moto (S3, DynamoDB, SNS+SQS), fake SageMaker, client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from app_helpers import BUCKET, FakeSageMaker, calls_the_roles_refuse, record_handler_calls

ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "BREEDLINE_BUCKET": BUCKET,
    "BREEDLINE_DATA_PREFIX": "datasets/",
    "BREEDLINE_OUTPUT_PREFIX": "jobs/",
    "BREEDLINE_NAME_PREFIX": "breedline",
    "BREEDLINE_SOURCEDIR_URI": f"s3://{BUCKET}/code/sourcedir.tar.gz",
    "BREEDLINE_ROLE_ARN": "arn:aws:iam::123456789012:role/breedline-sagemaker",
    "BREEDLINE_STATE_TABLE": "breedline-test-state",
    "BREEDLINE_IDEMPOTENCY_TABLE": "breedline-test-idempotency",
    "BREEDLINE_TRAINING_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6.0-gpu-py312",
    "BREEDLINE_INFERENCE_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
    "BREEDLINE_DEBUGGER_RULE_IMAGE": "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest",
    "BREEDLINE_ROLLBACK_ALARMS": "breedline-endpoint-5xx,breedline-endpoint-latency",
    "BREEDLINE_QUIET_PERIOD_SECONDS": "300",
    "BREEDLINE_MIN_IMAGES_PER_CLASS": "2",
    "BREEDLINE_ACCURACY_FLOOR": "0.5",
    "BREEDLINE_ENDPOINT_NAME": "breedline-classifier",
    "POWERTOOLS_METRICS_NAMESPACE": "Breedline",
    "POWERTOOLS_SERVICE_NAME": "breedline",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_REGION", "BREEDLINE_SERVERLESS_MEMORY_MB", "BREEDLINE_ALERT_TOPIC_ARN"):
        monkeypatch.delenv(key, raising=False)
    return dict(ENV)


class Aws:
    """Handles on the moto services a test inspects."""

    def __init__(self, queue_url: str, topic_arn: str) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.queue_url = queue_url
        self.topic_arn = topic_arn

    def alerts(self) -> list[dict[str, Any]]:
        """Every SNS alert published so far (delivered to an SQS subscription)."""
        found: list[dict[str, Any]] = []
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = resp.get("Messages", [])
            if not messages:
                return found
            for message in messages:
                envelope = json.loads(message["Body"])
                found.append({"subject": envelope.get("Subject"), "message": json.loads(envelope["Message"])})
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def put_dataset(self, name: str, classes: dict[str, int] | None = None, splits=("train", "valid", "test"), extra: dict[str, bytes] | None = None) -> list[str]:
        """Upload a small data set; returns the keys written (marker excluded)."""
        classes = classes or {"beagle": 3, "corgi": 3, "husky": 3}
        keys: list[str] = []
        for split in splits:
            for cls, n in classes.items():
                for i in range(n):
                    key = f"datasets/{name}/{split}/{cls}/{cls}_{i:03d}.jpg"
                    self.s3.put_object(Bucket=BUCKET, Key=key, Body=b"\xff\xd8\xff" + f"{key}".encode() + b"\xff\xd9")
                    keys.append(key)
        for key, body in (extra or {}).items():
            self.s3.put_object(Bucket=BUCKET, Key=f"datasets/{name}/{key}", Body=body)
            keys.append(f"datasets/{name}/{key}")
        return keys


@pytest.fixture
def aws(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    from chalicelib import lambda_runtime
    from chalicelib.state import TABLE_DEFINITIONS

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        for attr, definition in TABLE_DEFINITIONS.items():
            table = env[{"state_table": "BREEDLINE_STATE_TABLE", "idempotency_table": "BREEDLINE_IDEMPOTENCY_TABLE"}[attr]]
            ddb.create_table(TableName=table, **definition)
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="breedline-alerts")["TopicArn"]
        queue = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        monkeypatch.setenv("BREEDLINE_ALERT_TOPIC_ARN", topic)
        lambda_runtime.reset()
        yield Aws(queue, topic)
        lambda_runtime.reset()


@pytest.fixture
def sagemaker(aws: Aws) -> FakeSageMaker:
    from chalicelib import clients as aws_clients

    fake = FakeSageMaker()
    aws_clients.set_client("sagemaker", fake)
    return fake


@pytest.fixture
def client(aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """chalice.test.Client over the app; no project config, so the test's env rules.

    Every AWS call a handler makes through it is checked against that function's
    row of ``breedline.deploy.functions.FUNCTIONS`` (what its IAM role allows):
    a call its role would refuse fails the test (issue 15, item 15).
    """
    from chalice.test import Client

    import app as chalice_app

    calls = record_handler_calls(chalice_app.app, monkeypatch)
    with Client(chalice_app.app, project_dir=str(tmp_path)) as test_client:
        yield test_client
    refused = calls_the_roles_refuse(calls)
    assert not refused, f"calls outside the function's role (breedline/deploy/functions.py): {refused}"


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[Stubber]:
    """A Stubber on the ``sagemaker-runtime`` client the predict route calls; the app's caches reset around it."""
    from chalicelib import clients as aws_clients
    from chalicelib.lambda_runtime import reset

    reset()
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        aws_clients.set_client("sagemaker-runtime", client)
        yield stub
    reset()
