"""The cost guard in the whole local runtime: a newer version stops the running tuning job (issue 15, item 16).

The real app and runtime run in a child process; the training script is a
stand-in whose trials train "forever", so the first version's tuning job is
still running when the second version's marker arrives.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from local_standins import write_colour_dataset  # type: ignore[import-not-found]
from runtime_harness import runtime_with_script, upload_folder, wait_for  # type: ignore[import-not-found]

#: A whole local pipeline run: make test-e2e runs it (CI too), make test leaves it out.
pytestmark = pytest.mark.e2e


SLOW_TRIAL = textwrap.dedent("""
    import time
    print("epoch=1 valid_loss=0.5", flush=True)
    time.sleep(300)  # stopped long before this ends
""")


def test_a_newer_version_stops_the_running_tuning_job_without_an_alert(tmp_path):
    data = tmp_path / "data"
    write_colour_dataset(data)
    env = {"BREEDLINE_MAX_JOBS": "1", "BREEDLINE_MAX_PARALLEL_JOBS": "1", "BREEDLINE_EPOCHS": "1"}
    with runtime_with_script(tmp_path / "state", env, SLOW_TRIAL) as (info, c):
        s3, sqs, sm = c["s3"], c["sqs"], c["sagemaker"]
        upload_folder(s3, info.bucket, data, "colours")

        def tuning_jobs():
            return sm.list_hyper_parameter_tuning_jobs(SortBy="CreationTime", SortOrder="Ascending")[
                "HyperParameterTuningJobSummaries"
            ]

        (first,) = wait_for(tuning_jobs, timeout=40, what="the first version's tuning job")
        (data / "train" / "red" / "3.jpg").write_bytes(
            (data / "train" / "red" / "0.jpg").read_bytes() + b"\0"
        )
        upload_folder(s3, info.bucket, data, "colours")  # a new version: one more image, the marker again
        jobs = wait_for(
            lambda: len(tuning_jobs()) == 2 and tuning_jobs(), timeout=40, what="the second tuning job"
        )
        old, new = jobs[0]["HyperParameterTuningJobName"], jobs[1]["HyperParameterTuningJobName"]
        assert old == first["HyperParameterTuningJobName"]
        stopped = wait_for(
            lambda: (
                (d := sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=old))[
                    "HyperParameterTuningJobStatus"
                ]
                == "Stopped"
                and d
            ),
            timeout=60,
            what="the old job stopped",
        )
        assert stopped["TrainingJobStatusCounters"]["Stopped"] == 1
        assert (
            sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=new)[
                "HyperParameterTuningJobStatus"
            ]
            == "InProgress"
        )
        log = tmp_path / "state" / "logs" / "app.log"
        wait_for(
            lambda: '"outcome":"superseded"' in log.read_text(), timeout=30, what="the Stopped event handled"
        )
        handled = [
            json.loads(line)["result"]
            for line in log.read_text().splitlines()
            if '"message":"handled"' in line
        ]
        tags = sm.list_tags(ResourceArn=jobs[1]["HyperParameterTuningJobArn"])["Tags"]
        new_version = next(t["Value"] for t in tags if t["Key"] == "breedline:version")
        ends = [r for r in handled if r.get("tuning_job") == old and "status" in r]
        assert ends == [
            {
                "outcome": "superseded",
                "tuning_job": old,
                "status": "Stopped",
                "superseded_by": new_version,
            }
        ]
        answer = sqs.receive_message(QueueUrl=info.alert_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        assert answer.get("Messages", []) == []  # the superseded job's Stopped alerts nothing
        assert sm.list_training_jobs(NameContains="final")["TrainingJobSummaries"] == []
