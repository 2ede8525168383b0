"""A final training job whose script fails ends Failed with its reason, and the app alerts.

The real app and the real runtime run in a child process; only the training
script is a stand-in (uploaded over the runtime's ``sourcedir.tar.gz``) so the
test takes seconds: trials succeed, the final job (the one with a Debugger hook
configuration) writes a failure file and exits non-zero, as a broken script in
SageMaker's container would.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from local_standins import write_colour_dataset  # type: ignore[import-not-found]
from runtime_harness import runtime_with_script, upload_folder, wait_for  # type: ignore[import-not-found]

#: A whole local pipeline run: make test-e2e runs it (CI too), make test leaves it out.
pytestmark = pytest.mark.e2e

FAILING_FINAL = textwrap.dedent('''
    import json, os, pathlib, sys
    cfg = pathlib.Path(os.environ["SM_INPUT_CONFIG_DIR"])
    # the final job (only it gets the "debugger" hyperparameter): fail like a broken script
    if "debugger" in json.loads((cfg / "hyperparameters.json").read_text()):
        reason = "RuntimeError: CUDA error: out of memory (simulated by the test)"
        (pathlib.Path(os.environ["SM_OUTPUT_DIR"]) / "failure").write_text(reason)
        print(reason, file=sys.stderr)
        sys.exit(1)
    print("#breedline-metric epoch=1 valid_loss=0.5", flush=True)
    print("#breedline-metric test_accuracy=0.9", flush=True)
    (pathlib.Path(os.environ["SM_MODEL_DIR"]) / "model_meta.json").write_text("{}")
''')


def test_failed_final_job_reports_its_reason_and_alerts(tmp_path):
    env = {
        "BREEDLINE_MAX_JOBS": "2",
        "BREEDLINE_MAX_PARALLEL_JOBS": "2",
        "BREEDLINE_EPOCHS": "1",
    }
    data = tmp_path / "data"
    write_colour_dataset(data)
    with runtime_with_script(tmp_path / "state", env, FAILING_FINAL) as (info, c):
        s3, sqs, sm = c["s3"], c["sqs"], c["sagemaker"]
        upload_folder(s3, info.bucket, data, "colours")

        def final_job():
            jobs = sm.list_training_jobs(NameContains="breedline-colours")["TrainingJobSummaries"]
            finals = [j for j in jobs
                      if "TuningJobArn" not in sm.describe_training_job(TrainingJobName=j["TrainingJobName"])]
            if finals and finals[0]["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                return sm.describe_training_job(TrainingJobName=finals[0]["TrainingJobName"])
            return None

        job = wait_for(final_job, timeout=90, what="final job ended")
        assert job["TrainingJobStatus"] == "Failed"
        assert job["SecondaryStatus"] == "Failed"
        assert job["FailureReason"].startswith("AlgorithmError: RuntimeError: CUDA error: out of memory")
        tuning = sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
        assert tuning[0]["TrainingJobStatusCounters"]["Completed"] == 2

        def alerts():
            answer = sqs.receive_message(QueueUrl=info.alert_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            return [json.loads(m["Body"]) for m in answer.get("Messages", [])]

        found: list[dict] = []
        wait_for(lambda: found.extend(alerts()) or any(job["TrainingJobName"] in m["Message"] for m in found),
                 timeout=30, what="SNS alert about the failed job")
        alert = next(m for m in found if job["TrainingJobName"] in m["Message"])
        assert alert["TopicArn"] == info.alert_topic_arn
        assert "out of memory" in alert["Message"]
        endpoints = sm.list_endpoints()["Endpoints"]
        assert endpoints == []  # a failed job deploys nothing


def test_upload_without_marker_starts_after_the_quiet_period(tmp_path):
    """No _READY marker: the scheduled check_quiet_datasets handler starts the data set."""
    import time

    data = tmp_path / "data"
    write_colour_dataset(data)
    env = {"BREEDLINE_QUIET_PERIOD_SECONDS": "3", "BREEDLINE_MAX_JOBS": "1", "BREEDLINE_MAX_PARALLEL_JOBS": "1"}
    with runtime_with_script(tmp_path / "state", env, FAILING_FINAL) as (info, c):
        s3, sm = c["s3"], c["sagemaker"]
        for path in sorted(data.rglob("*.jpg")):
            s3.upload_file(str(path), info.bucket, f"datasets/quiet/{path.relative_to(data).as_posix()}")
        uploaded = time.monotonic()
        tuning = wait_for(lambda: sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"],
                          timeout=40, what="tuning job from the quiet-period check")
        assert time.monotonic() - uploaded >= 3  # not before the quiet period
        assert tuning[0]["HyperParameterTuningJobName"].startswith("breedline-quiet-")
        events = (tmp_path / "state" / "logs" / "app.log").read_text()
        assert '"handler":"check_quiet_datasets"' in events
