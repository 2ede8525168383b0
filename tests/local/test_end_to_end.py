"""End to end, driven only by an upload: real app, real ML scripts, local AWS and SageMaker.

The test uploads a small slice of the digits data set plus the ``_READY`` marker
and then only observes: the app's rules route the S3 events to its handler,
which starts the tuning job; the local SageMaker runs real ``train.py`` trials;
their events drive the final training job and the deployment; the predict API
answers from the endpoint. Sizes keep it near 2-3 minutes on 2 cores (printed, not asserted: make bench times the pipeline).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from runtime_harness import DigitsPipeline, clients, wait_for  # type: ignore[import-not-found]

#: A whole local pipeline run: make test-e2e runs it (CI too), make test leaves it out.
pytestmark = pytest.mark.e2e

def test_upload_alone_drives_tuning_training_deployment_and_prediction(digits_pipeline: DigitsPipeline) -> None:
    """The runtime stays up after this test for the others of the session (tests/local/test_try_page.py)."""
    started, data, info, endpoint = digits_pipeline.started, digits_pipeline.data, digits_pipeline.info, digits_pipeline.endpoint
    tmp_path = digits_pipeline.root
    c = clients(info)
    s3, sm = c["s3"], c["sagemaker"]

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
    # (The session's runtime also runs other tests' jobs, e.g. the 2-host digits job: only this tuning's count.)
    finals = [j for j in sm.list_training_jobs()["TrainingJobSummaries"]
              if j["TrainingJobName"].startswith(tuning["HyperParameterTuningJobName"])
              and j["TrainingJobName"] not in {t["TrainingJobName"] for t in trials}]
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
    # The app's LIVE record came from the endpoint's InService event (issue 15, item 1): the served config.
    live = wait_for(lambda: requests.get(f"{info.api_url}/status", timeout=10).json().get("live_model"),
                    timeout=30, interval=0.5, what="LIVE after the endpoint's InService event")
    assert live["endpoint_config"] == endpoint["EndpointConfigName"]
    assert live["model"] == config["ProductionVariants"][0]["ModelName"] and live["live_since"]
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
    pipeline_seconds = digits_pipeline.in_service - started  # upload to InService (other tests may run first)
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
    # The model card, with the decision the app recorded in its state table (it deployed this model).
    assert "quality gate  deployed:" in shown and "model card  " in shown
    card = tmp_path / "cli-report" / final["TrainingJobName"] / "model_card.html"
    output = final["OutputDataConfig"]["S3OutputPath"][5:].rstrip("/").split("/", 1)
    uploaded = s3.get_object(Bucket=output[0],
                             Key=f"{output[1]}/{final['TrainingJobName']}/output/model_card.html")
    assert uploaded["Body"].read() == card.read_bytes() and 'data-decision="deployed"' in card.read_text()
    # The abstention block comes from the real job's evaluation.json (train.py's Mahalanobis fit), with
    # the threshold /status shows for the live model.
    html = card.read_text()
    assert "method mahalanobis" in html and "confidence threshold " in html and "valid: coverage " in html
    assert "not in evaluation.json" not in html and metrics.get("confidence_threshold") is not None
    print(f"pipeline: upload to InService in {pipeline_seconds:.0f} s; "
          f"whole test {time.monotonic() - started:.0f} s")


def cli(*args: str) -> str:
    import subprocess
    import sys

    from breedline.build.paths import REPO_ROOT

    done = subprocess.run([sys.executable, "-m", "breedline", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
