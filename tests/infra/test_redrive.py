"""Issue 15, item 6: ``python -m breedline.deploy redrive`` against moto's SQS and Lambda.

An on-failure record as Lambda writes it goes into a handler's failure queue;
re-driving invokes the function asynchronously with the record's original
event and deletes the message only once the invoke was accepted.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest

from breedline.deploy import DeployError
from breedline.deploy.cli import main
from breedline.deploy.redrive import original_event, redrive

STACK, REGION = "breedline-dev", "us-east-1"
EVENT = {
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "detail": {"bucket": {"name": "b"}, "object": {"key": "datasets/dogs/_READY"}},
}


def on_failure_record(event: dict[str, Any], function: str) -> dict[str, Any]:
    """The body Lambda sends to an SQS on-failure destination (AWS's documented shape)."""
    return {
        "version": "1.0",
        "timestamp": "2026-12-02T10:00:00.000Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
            "functionArn": f"arn:aws:lambda:{REGION}:123456789012:function:{function}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "state table throttled", "errorType": "PipelineError"},
    }


def _moto(monkeypatch: pytest.MonkeyPatch, **config: Any) -> Any:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws(config=config):
        yield boto3.session.Session(region_name=REGION)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto with Lambda's invoke accepted without running the code (no Docker here)."""
    yield from _moto(monkeypatch, **{"lambda": {"use_docker": False}})


@pytest.fixture
def aws_lambda(monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's own Lambda, which refuses an invoke of a function it does not have."""
    yield from _moto(monkeypatch)


def _function(aws: Any, name: str) -> None:
    iam = aws.client("iam")
    role = iam.create_role(
        RoleName=f"{name}-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("app.py", "def handler(event, context):\n    return event\n")
    aws.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
    )


def _queue(aws: Any, logical_id: str, *records: dict[str, Any]) -> str:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"{STACK}-{logical_id}-failures")["QueueUrl"]
    for record in records:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(record))
    return url


def _messages(aws: Any, url: str) -> list[dict[str, Any]]:
    """The visible messages, left visible (a peek)."""
    return (
        aws.client("sqs")
        .receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        .get("Messages", [])
    )


def _record_invokes(aws: Any) -> list[dict[str, Any]]:
    invokes: list[dict[str, Any]] = []
    aws.events.register(
        "provide-client-params.lambda.Invoke", lambda params, **_: invokes.append(dict(params))
    )
    return invokes


def test_redrive_invokes_the_function_with_the_original_event_then_deletes_the_message(aws: Any) -> None:
    _function(aws, f"{STACK}-OnDatasetUpload")
    url = _queue(aws, "OnDatasetUpload", on_failure_record(EVENT, f"{STACK}-OnDatasetUpload"))
    invokes = _record_invokes(aws)
    lines: list[str] = []
    outcomes = redrive(aws, STACK, handler="on_dataset_upload", log=lines.append)
    assert [o.action for o in outcomes] == ["redriven"]
    (invoke,) = invokes
    assert invoke["FunctionName"] == f"{STACK}-OnDatasetUpload" and invoke["InvocationType"] == "Event"
    assert json.loads(invoke["Payload"]) == EVENT
    assert _messages(aws, url) == []
    assert "RetriesExhausted after 3 tries; PipelineError: state table throttled" in lines[0]
    assert lines[-1] == "1 message(s): 1 re-driven, 0 kept"


def test_a_failed_invoke_keeps_the_message(aws_lambda: Any) -> None:
    """No function by that name (e.g. the stack is being replaced): the invoke fails, the message stays."""
    aws = aws_lambda
    url = _queue(aws, "OnTuningStateChange", on_failure_record(EVENT, f"{STACK}-OnTuningStateChange"))
    invokes = _record_invokes(aws)
    outcomes = redrive(aws, STACK, handler="on_tuning_state_change", log=lambda _line: None)
    assert [o.action for o in outcomes] == ["kept"] and "ResourceNotFoundException" in outcomes[0].detail
    assert len(invokes) == 1
    (left,) = _messages(aws, url)  # visible again at once, not only after the visibility timeout
    assert json.loads(left["Body"])["requestPayload"] == EVENT


def test_dry_run_and_max_invoke_and_delete_nothing_beyond_what_they_say(aws: Any) -> None:
    _function(aws, f"{STACK}-CheckQuietDatasets")
    records = [on_failure_record({**EVENT, "id": str(i)}, f"{STACK}-CheckQuietDatasets") for i in range(3)]
    url = _queue(aws, "CheckQuietDatasets", *records, {"not": "an on-failure record"})
    invokes = _record_invokes(aws)
    dry = redrive(aws, STACK, handler="check_quiet_datasets", dry_run=True, log=lambda _line: None)
    assert sorted(o.action for o in dry) == ["skipped", "would redrive", "would redrive", "would redrive"]
    assert invokes == [] and len(_messages(aws, url)) == 4
    two = redrive(aws, STACK, handler="check_quiet_datasets", max_messages=2, log=lambda _line: None)
    assert len(two) == 2 and len(invokes) == sum(o.action == "redriven" for o in two)
    everything = redrive(aws, STACK, log=lambda _line: None)  # every handler: missing queues are passed over
    assert sorted(o.action for o in two + everything) == ["redriven", "redriven", "redriven", "skipped"]
    (left,) = _messages(aws, url)
    assert json.loads(left["Body"]) == {"not": "an on-failure record"}


def test_the_command_line_prints_one_line_per_message(aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _function(aws, f"{STACK}-OnTrainingStateChange")
    _queue(aws, "OnTrainingStateChange", *[on_failure_record(EVENT, "x") for _ in range(2)])
    assert (
        main(["redrive", "--stage", "dev", "--region", REGION, "--handler", "on_training_state_change"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(line.startswith("on_training_state_change ") for line in out[:2])
    assert main(["redrive", "--stage", "dev", "--region", REGION, "--handler", "api_handler"]) == 2
    assert "choose one of on_dataset_upload" in capsys.readouterr().err
    assert main(["redrive", "--stage", "dev", "--region", REGION, "--handler", "on_dataset_upload"]) == 2
    assert "no failure queue breedline-dev-OnDatasetUpload-failures" in capsys.readouterr().err


def test_records_that_are_not_on_failure_records_are_named() -> None:
    assert original_event("{")[0] is None
    assert "no requestPayload" in original_event(json.dumps(EVENT))[1]
    event, why = original_event(json.dumps(on_failure_record(EVENT, "f")))
    assert event == EVENT and why.startswith("RetriesExhausted")
    with pytest.raises(DeployError, match="--max"):
        redrive(None, STACK, max_messages=0)
