"""The same pipeline, end to end and locally, in every Debugger mode (issue 14).

Each case starts ``breedline up`` with one ``BREEDLINE_DEBUGGER`` value, uploads
the same tiny digits slice and waits for the endpoint; then it checks the final
job's request as the local SageMaker recorded it and asks ``/predict`` once.
``auto`` runs against an account without Debugger
(``BREEDLINE_LOCAL_DEBUGGER_SERVICE=closed``): its first CreateTrainingJob is
refused with the error shape ``chalicelib.decisions.debugger_refusal`` reads,
and the job runs in_job after one alert. Kept small for 2 shared cores: one
trial, two epochs at 32 px.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from chalicelib.decisions import debugger_refusal
from local_standins import sagemaker_client, training_request  # type: ignore[import-not-found]
from runtime_harness import clients, endpoint_in_service, running_runtime, upload_folder, wait_for  # type: ignore[import-not-found]

from breedline.local.sagemaker_jobs import check_debugger_request
from breedline.local.sagemaker_state import DEBUGGER_SERVICE_VARIABLE

BASE_ENV = {
    "BREEDLINE_MODEL": "efficientnet_lite0",
    "BREEDLINE_EPOCHS": "2",
    "BREEDLINE_MAX_JOBS": "1",
    "BREEDLINE_MAX_PARALLEL_JOBS": "1",
    "BREEDLINE_BATCH_SIZES": "16",
    "BREEDLINE_LEARNING_RATE_RANGE": "0.003,0.008",
    "BREEDLINE_EXTRA_HYPERPARAMETERS": json.dumps({"image_size": "32", "trainable_blocks": "2", "num_workers": "0",
                                                   "profile_steps": "2", "debug_save_interval": "2"}),
    # any model that gets one test image right deploys: this test is about the request, not the model
    "BREEDLINE_ACCURACY_FLOOR": "0.0",
}
#: case -> (environment, the mode the final job must really run with)
MODES: dict[str, tuple[dict[str, str], str]] = {
    "in_job": ({"BREEDLINE_DEBUGGER": "in_job"}, "in_job"),
    "service": ({"BREEDLINE_DEBUGGER": "service"}, "service"),
    "auto_without_debugger": ({"BREEDLINE_DEBUGGER": "auto", DEBUGGER_SERVICE_VARIABLE: "closed"}, "in_job"),
    "off": ({"BREEDLINE_DEBUGGER": "off"}, "off"),
}
SERVICE_FIELDS = {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"}
PER_CLASS = 10


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny data set for every mode."""
    from breedline.demo_digits import write_digits

    folder = tmp_path_factory.mktemp("digits")
    write_digits(folder, per_class=PER_CLASS, size=32)
    return folder


def test_a_closed_account_refuses_debugger_the_way_the_app_classifies(moto_stack, tmp_path):
    """The local refusal is the shape ``auto`` falls back on; a request without Debugger passes."""
    from breedline.local.sagemaker import SageMakerBackend
    from breedline.local.sagemaker_http import LocalSageMakerServer

    backend = SageMakerBackend(tmp_path / "state", moto_stack.client("s3"), None, debugger_service="closed")
    server = LocalSageMakerServer(backend).start()
    try:
        sm = sagemaker_client(server)
        request = training_request("closed-account-job")
        request["DebugHookConfig"] = {"S3OutputPath": "s3://breedline-data/jobs/"}
        with pytest.raises(ClientError) as caught:
            sm.create_training_job(**request)
    finally:
        server.stop()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert debugger_refusal(error["Error"]["Code"], error["Error"]["Message"])
    assert "DebugHookConfig" in error["Error"]["Message"] and backend.training_jobs == {}
    check_debugger_request({"ProfilerConfig": {"DisableProfiler": True}}, "123456789012")
    with pytest.raises(Exception, match="ProfilerConfig"):
        check_debugger_request({"ProfilerConfig": {"S3OutputPath": "s3://b/"}}, "123456789012")


def _alerts(info) -> list[dict]:
    sqs = clients(info)["sqs"]
    found = []
    for _ in range(3):
        for message in sqs.receive_message(QueueUrl=info.alert_queue_url, MaxNumberOfMessages=10).get("Messages", []):
            envelope = json.loads(message["Body"])
            found.append({"subject": envelope.get("Subject", ""), "message": json.loads(envelope["Message"])})
    return found


def _job_record(info, name: str) -> dict:
    ddb = boto3.client("dynamodb", endpoint_url=info.aws_url, region_name=info.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    item = ddb.get_item(TableName="breedline-state", Key={"pk": {"S": f"JOB#{name}"}, "sk": {"S": "JOB"}})["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(MODES))
def test_the_pipeline_deploys_in_every_debugger_mode(case, digits, tmp_path):
    env, ran_as = MODES[case]
    started = time.monotonic()
    with running_runtime(tmp_path / "state", {**BASE_ENV, **env}) as info:
        c = clients(info)
        s3, sm = c["s3"], c["sagemaker"]
        upload_folder(s3, info.bucket, digits, "digits")

        wait_for(lambda: endpoint_in_service(sm), timeout=240, what=f"endpoint InService ({case})")
        finals = [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]
                  if j["TrainingJobName"].endswith("-final")]
        assert len(finals) == 1, finals
        final = sm.describe_training_job(TrainingJobName=finals[0])
        assert final["TrainingJobStatus"] == "Completed"
        assert final["HyperParameters"]["debugger"] == ran_as
        if ran_as == "service":
            assert {"DebugHookConfig", "ProfilerConfig"} <= set(final) and "DisableProfiler" not in final["ProfilerConfig"]
        else:
            assert not SERVICE_FIELDS & set(final)
            assert final["ProfilerConfig"] == {"DisableProfiler": True}
        assert _job_record(info, finals[0])["debugger"] == ran_as
        alerts = _alerts(info)
        fallbacks = [a for a in alerts if "Debugger refused" in a["subject"]]
        if case == "auto_without_debugger":
            (alert,) = fallbacks
            assert alert["message"]["training_job"] == finals[0] and alert["message"]["error_code"] == "ValidationException"
            assert "Debugger" in alert["message"]["error"]
        else:
            assert fallbacks == []
        image = sorted((digits / "test").glob("*/*.jpg"))[0]
        answer = requests.post(f"{info.api_url}/predict", data=image.read_bytes(),
                               headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert answer.status_code == 200, answer.text
    print(f"{case}: deployed and answered in {time.monotonic() - started:.0f} s")
