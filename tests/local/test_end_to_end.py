"""End to end, driven only by an upload: real app, real ML scripts, local AWS and SageMaker.

The test uploads a small slice of the digits data set plus the ``_READY`` marker
and then only observes: the app's rules route the S3 events to its handler,
which starts the tuning job; the local SageMaker runs real ``train.py`` trials;
their events drive the final training job and the deployment; the predict API
answers from the endpoint. Sizes are chosen for the 3-minute budget on 2 cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from runtime_harness import clients, endpoint_in_service, running_runtime, upload_folder, wait_for  # type: ignore[import-not-found]

#: A whole local pipeline run: make test-e2e runs it (CI too), make test leaves it out.
pytestmark = pytest.mark.e2e

#: Small and fast: 2 trials (both at once, a core each) + the final job, 2 epochs each at 32 px.
E2E_ENV = {
    "BREEDLINE_MODEL": "efficientnet_lite0",
    "BREEDLINE_EPOCHS": "2",
    "BREEDLINE_MAX_JOBS": "2",
    "BREEDLINE_MAX_PARALLEL_JOBS": "2",
    "BREEDLINE_BATCH_SIZES": "16",
    "BREEDLINE_LEARNING_RATE_RANGE": "0.003,0.008",
    "BREEDLINE_EXTRA_HYPERPARAMETERS": json.dumps({"image_size": "32", "trainable_blocks": "2", "num_workers": "0",
                                                   "profile_steps": "2", "debug_save_interval": "2"}),
    "BREEDLINE_ACCURACY_FLOOR": "0.3",
    # the Debugger service's hook and S3 layout, which this test reads back (tests/local/test_debugger_modes.py: all modes)
    "BREEDLINE_DEBUGGER": "service",
}
PER_CLASS = 20


def test_upload_alone_drives_tuning_training_deployment_and_prediction(tmp_path: Path) -> None:
    from breedline.demo_digits import write_digits

    started = time.monotonic()
    data = tmp_path / "digits"
    write_digits(data, per_class=PER_CLASS, size=32)
    with running_runtime(tmp_path / "state", E2E_ENV) as info:
        c = clients(info)
        s3, sm = c["s3"], c["sagemaker"]
        upload_folder(s3, info.bucket, data, "digits")

        endpoint = wait_for(lambda: endpoint_in_service(sm), timeout=170 - (time.monotonic() - started), what="endpoint InService")

        # Tuning: the requested number of trials ran, as real child processes, and one was best.
        tunings = sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
        assert len(tunings) == 1
        tuning = sm.describe_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tunings[0]["HyperParameterTuningJobName"])
        assert tuning["HyperParameterTuningJobStatus"] == "Completed"
        trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuning["HyperParameterTuningJobName"])["TrainingJobSummaries"]
        assert len(trials) == 2 and all(t["TrainingJobStatus"] == "Completed" for t in trials)
        best = tuning["BestTrainingJob"]
        assert best["TrainingJobName"] in {t["TrainingJobName"] for t in trials}

        # The final job: the app's own request, with the best hyperparameters and Debugger output.
        finals = [j for j in sm.list_training_jobs()["TrainingJobSummaries"]
                  if j["TrainingJobName"] not in {t["TrainingJobName"] for t in trials}]
        assert len(finals) == 1
        final = sm.describe_training_job(TrainingJobName=finals[0]["TrainingJobName"])
        assert final["TrainingJobStatus"] == "Completed"
        assert final["HyperParameters"]["learning_rate"] == best["TunedHyperParameters"]["learning_rate"]
        metrics = {m["MetricName"]: m["Value"] for m in final["FinalMetricDataList"]}
        assert metrics["test_accuracy"] > 0.3
        debug_prefix = final["DebugHookConfig"]["S3OutputPath"].rstrip("/")[5:].split("/", 1)
        listed = s3.list_objects_v2(Bucket=debug_prefix[0],
                                    Prefix=f"{debug_prefix[1]}/{final['TrainingJobName']}/debug-output/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        assert any("/events/" in k for k in keys), keys[:5]

        # The Debugger tensors read back with smdebug: train and valid CrossEntropyLoss.
        from breedline import job_report as report

        job_report = report.job_report(sm, s3, final["TrainingJobName"], tmp_path / "report",
                                       state_dir=tmp_path / "state")
        assert job_report.loss_points["train"] >= 2 and job_report.loss_points["valid"] >= 1
        assert job_report.loss_curve is not None and job_report.loss_curve.stat().st_size > 1000
        assert job_report.profiler is not None and job_report.profiler["steps"] == 2

        # Deployed: the endpoint serves the final job's model, and /predict answers correctly.
        config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        assert model["PrimaryContainer"]["ModelDataUrl"] == final["ModelArtifacts"]["S3ModelArtifacts"]
        # Every held-out test image through the API: the served model must score what the job reported.
        correct = total = 0
        for image in sorted((data / "test").glob("*/*.jpg")):
            # ?abstain=false (issue 13): the raw top-1, comparable with the job's test_accuracy
            answer = requests.post(f"{info.api_url}/predict?abstain=false", data=image.read_bytes(),
                                   headers={"Content-Type": "image/jpeg"}, timeout=60)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert set(body) >= {"label", "probability", "top_k", "abstained"} and body["abstained"] is False
            correct += body["label"] == image.parent.name
            total += 1
        served_accuracy = correct / total
        assert served_accuracy >= 0.3  # three times the 10% chance level
        assert abs(served_accuracy - metrics["test_accuracy"]) <= 0.1, (served_accuracy, metrics["test_accuracy"])
        pipeline_seconds = time.monotonic() - started
        bad = requests.post(f"{info.api_url}/predict", data=b"GIF89a....", headers={"Content-Type": "image/gif"},
                            timeout=30)
        assert bad.status_code == 415 and bad.json()["code"]

        # The operator CLI finds the running runtime through runtime.json.
        state = ["--state-dir", str(tmp_path / "state")]
        status = cli("status", *state)
        assert "mode: local" in status and "breedline-classifier: InService" in status
        image = sorted((data / "test" / "1").glob("*.jpg"))[0]
        predicted = json.loads(cli("predict", str(image), *state))
        assert predicted["label"] in {str(d) for d in range(10)}
        shown = cli("report", tuning["HyperParameterTuningJobName"], *state, "--out", str(tmp_path / "cli-report"))
        assert best["TrainingJobName"] in shown and "trials best first" in shown
        shown = cli("report", final["TrainingJobName"], *state, "--out", str(tmp_path / "cli-report"))
        assert "loss plot" in shown and "Debugger rules" in shown and "test_accuracy=" in shown and "profiler" in shown
    print(f"pipeline: upload to correct predictions in {pipeline_seconds:.0f} s; "
          f"whole test {time.monotonic() - started:.0f} s")
    assert pipeline_seconds < 180


def cli(*args: str) -> str:
    import subprocess
    import sys

    from breedline.build.paths import REPO_ROOT

    done = subprocess.run([sys.executable, "-m", "breedline", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
