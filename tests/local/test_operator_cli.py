"""The operator after the demo (issue 15, item 20): make's ARGS, kept runs, reload on ``up``, clear errors, --json.

Fast on purpose: the CLI functions run against state folders and an in-process
local SageMaker service with the stand-in training script; no runtime child.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import boto3
import pytest
from local_standins import BUCKET, sagemaker_client, training_request  # type: ignore[import-not-found]

from breedline import cli
from breedline.build.paths import REPO_ROOT
from breedline.demo import run_state_dir
from breedline.local.runtime import LATEST_LINK, RuntimeInfo, client_env, new_run_dir, resolve_state_dir
from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_http import LocalSageMakerServer
from breedline.local.sagemaker_restore import INTERRUPTED_REASON, restore_state

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


# ----------------------------------------------------------------------- make
def test_make_demo_passes_data_and_args_on():
    out = subprocess.run(["make", "-n", "demo", "DATA=/tmp/my set", "ARGS=--keep-running --per-class 3"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "-m breedline demo" in x)
    assert line.endswith("--data /tmp/my set --keep-running --per-class 3"), line


def test_every_documented_make_variable_is_one_the_makefile_reads():
    makefile = (REPO_ROOT / "Makefile").read_text()
    documented = set()
    for doc in DOCS:
        for match in re.finditer(r"\bmake\s+[a-z][\w-]*((?:\s+[A-Z][A-Z0-9_]*=\S+)+)", doc.read_text()):
            documented |= set(re.findall(r"([A-Z][A-Z0-9_]*)=", match.group(1)))
    assert {"DATA", "ARGS", "STAGE"} <= documented
    unread = sorted(v for v in documented if f"$({v})" not in makefile)
    assert not unread, f"documented but ignored by the Makefile: {unread}"


# ------------------------------------------------------------------ run folders
def test_each_run_gets_its_own_folder_and_latest_follows(tmp_path):
    root = tmp_path / ".breedline"
    first = new_run_dir(root, stamp=0)
    (first / "sagemaker.json").write_text("{}")
    second = new_run_dir(root, stamp=0)
    assert first != second and second.name == f"{first.name}-2"
    assert (first / "sagemaker.json").is_file(), "the earlier run was lost"
    assert (root / LATEST_LINK).is_symlink() and resolve_state_dir(root) == second.resolve()
    assert resolve_state_dir(first) == first  # a run's own folder is read as is


def test_demo_keeps_earlier_runs_under_a_root_and_empties_only_a_single_run_folder(tmp_path):
    root = tmp_path / "state"
    run_a = new_run_dir(root)
    (run_a / "marker").write_text("a")
    run_b = run_state_dir(root)
    assert run_b != run_a and (run_a / "marker").read_text() == "a"
    assert resolve_state_dir(root) == run_b.resolve()
    single = tmp_path / "bench-run"
    (single / "jobs").mkdir(parents=True)
    assert run_state_dir(single) == single and not (single / "jobs").exists()


def test_cli_commands_read_the_latest_run(tmp_path):
    root = tmp_path / ".breedline"
    run = new_run_dir(root)
    info = RuntimeInfo(aws_url="http://127.0.0.1:1", sagemaker_url="http://127.0.0.1:2", api_url="http://127.0.0.1:3",
                       region="us-east-1", bucket="b", state_dir=str(run), alert_queue_url="q", alert_topic_arn="t",
                       pid=os.getpid())
    info.write(run / "runtime.json")
    assert RuntimeInfo.read(root) == info
    args = cli.build_parser().parse_args(["report", "job", "--state-dir", str(root)])
    assert cli._state_dir(args) == run.resolve()


def test_up_keep_state_reopens_the_latest_run_and_plain_up_starts_a_new_one(tmp_path):
    root = tmp_path / ".breedline"
    run = new_run_dir(root)
    parse = cli.build_parser().parse_args
    assert cli.up_state_dir(parse(["up", "--keep-state", "--state-dir", str(root)])) == (run.resolve(), False)
    fresh, wipe = cli.up_state_dir(parse(["up", "--state-dir", str(root)]))
    assert fresh != run and fresh.parent == run.parent and not wipe and run.is_dir()
    assert resolve_state_dir(root) == fresh.resolve()


# ------------------------------------------------------------------ reload
def wait_for(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def tuning_request(name: str) -> dict:
    base = training_request("unused")
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "valid_loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {"ContinuousParameterRanges": [
                {"Name": "learning_rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]},
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": dict(base["HyperParameters"]),
            **{k: base[k] for k in ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig",
                                    "ResourceConfig", "StoppingCondition")},
        },
    }


@pytest.fixture(scope="module")
def finished_run_template(moto_stack, tmp_path_factory):
    """One run folder whose runtime has ended: a finished tuning job, one job cut off mid-run, one endpoint.

    Module-scoped because the tuning job (two stand-in trials) is this file's slowest set-up;
    each test gets its own copy (:func:`finished_run`), since reloading marks the run.
    """
    run = new_run_dir(tmp_path_factory.mktemp("finished") / ".breedline")
    server = LocalSageMakerServer(SageMakerBackend(run, moto_stack.client("s3"), None)).start()
    sm = sagemaker_client(server)
    sm.create_hyper_parameter_tuning_job(**tuning_request("unit-tune"))
    wait_for(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="unit-tune")[
        "HyperParameterTuningJobStatus"] == "Completed")
    server.stop()
    snapshot = json.loads((run / "sagemaker.json").read_text())
    # A crash leaves a job InProgress and an endpoint InService in the snapshot.
    crashed = dict(next(iter(snapshot["training_jobs"].values())), TrainingJobName="unit-crashed",
                   TrainingJobStatus="InProgress")
    crashed.pop("TuningJobArn", None)
    snapshot["training_jobs"]["unit-crashed"] = crashed
    snapshot["endpoints"]["unit-endpoint"] = {"EndpointName": "unit-endpoint", "EndpointStatus": "InService",
                                              "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x"}
    (run / "sagemaker.json").write_text(json.dumps(snapshot))
    return run


@pytest.fixture
def finished_run(finished_run_template, tmp_path):
    """This test's copy of :func:`finished_run_template`, ``latest`` link and all, under ``tmp_path/.breedline``."""
    root = tmp_path / ".breedline"
    shutil.copytree(finished_run_template.parent.parent, root, symlinks=True)
    return root / finished_run_template.relative_to(finished_run_template.parent.parent)


@pytest.fixture
def reloaded(finished_run, moto_stack, monkeypatch):
    """``up --keep-state`` on that run, in process: a new backend restored from its sagemaker.json."""
    backend = SageMakerBackend(finished_run, moto_stack.client("s3"), None)
    counts = restore_state(backend, finished_run / "sagemaker.json")
    server = LocalSageMakerServer(backend).start()
    info = RuntimeInfo(aws_url=moto_stack.url, sagemaker_url=server.url, api_url="http://127.0.0.1:9",
                       region="us-east-1", bucket=BUCKET, state_dir=str(finished_run), alert_queue_url="q",
                       alert_topic_arn="t", pid=os.getpid(), env={})
    info.write(finished_run / "runtime.json")
    for name in [*client_env(info), "BREEDLINE_NAME_PREFIX", "BREEDLINE_ENDPOINT_NAME"]:
        monkeypatch.delenv(name, raising=False)  # connect() sets them; teardown puts the originals back
    monkeypatch.setenv("BREEDLINE_NAME_PREFIX", "unit")
    monkeypatch.setenv("BREEDLINE_ENDPOINT_NAME", "unit-endpoint")
    yield counts, server
    server.stop()


def test_reload_restores_jobs_trials_and_marks_the_cut_off_job(reloaded):
    counts, server = reloaded
    assert counts["training_jobs"] == 3 and counts["tuning_jobs"] == 1
    assert counts["interrupted"] == 1 and counts["endpoints_dropped"] == 1
    sm = sagemaker_client(server)
    listed = {j["TrainingJobName"]: j["TrainingJobStatus"] for j in sm.list_training_jobs()["TrainingJobSummaries"]}
    assert listed.pop("unit-crashed") == "Stopped" and set(listed.values()) == {"Completed"}
    assert sm.describe_training_job(TrainingJobName="unit-crashed")["FailureReason"] == INTERRUPTED_REASON
    trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="unit-tune")["TrainingJobSummaries"]
    assert len(trials) == 2 and all(t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] > 0 for t in trials)
    assert all(set(t["TunedHyperParameters"]) == {"learning_rate"} for t in trials)
    assert not sm.list_endpoints()["Endpoints"]


def test_up_keep_state_starts_the_sagemaker_service_with_the_run_reloaded(finished_run, moto_stack, monkeypatch):
    from breedline.local.runtime import LocalRuntime

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
                 "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(name, raising=False)  # _start_sagemaker points boto3 at the stand-ins
    runtimes = {fresh: LocalRuntime(finished_run, fresh=fresh) for fresh in (False, True)}
    try:
        for fresh, runtime in runtimes.items():
            runtime.moto = moto_stack
            runtime._start_sagemaker()
            names = {j["TrainingJobName"] for j in
                     sagemaker_client(runtime.sagemaker).list_training_jobs()["TrainingJobSummaries"]}
            assert bool(names) is not fresh
    finally:
        for runtime in runtimes.values():
            if runtime.sagemaker is not None:
                runtime.sagemaker.stop()


def test_status_json_after_reload(reloaded, tmp_path, capsys):
    root = str(tmp_path / ".breedline")
    assert cli.main(["status", "--json", "--state-dir", root]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"mode", "runtime", "tuning_jobs", "training_jobs", "endpoint", "live_model",
                         "live_model_error"}
    assert data["mode"] == "local" and data["runtime"]["pid"] == os.getpid()
    [tuning] = data["tuning_jobs"]
    assert tuning["name"] == "unit-tune" and tuning["status"] == "Completed" and tuning["trials"]["completed"] == 2
    assert {j["status"] for j in data["training_jobs"]} == {"Completed", "Stopped"} and len(data["training_jobs"]) == 3
    assert data["endpoint"]["deployed"] is False and data["endpoint"]["name"] == "unit-endpoint"
    assert data["live_model"] is None and data["live_model_error"]
    assert cli.main(["status", "--state-dir", root]) == 0
    text = capsys.readouterr().out
    assert "unit-tune" in text and "2 completed" in text and "not deployed" in text


def test_report_json_of_a_tuning_job_after_reload(reloaded, tmp_path, capsys):
    root = tmp_path / ".breedline"
    assert cli.main(["report", "unit-tune", "--json", "--state-dir", str(root)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"job", "tuning", "training"}
    tuning = data["tuning"]
    assert tuning["objective"] == {"type": "Minimize", "metric": "valid_loss"} and len(tuning["trials"]) == 2
    best = min(tuning["trials"], key=lambda t: t["objective"])
    assert tuning["best_trial"] == best["name"] == data["training"]["name"]
    assert data["training"]["status"] == "Completed" and "valid_loss" in data["training"]["metrics"]
    assert set(data["training"]) >= {"name", "status", "failure_reason", "metrics", "hyperparameters", "seconds",
                                     "artifacts", "loss_curve", "loss_points", "profiler", "rules", "notes"}
    assert (resolve_state_dir(root) / "report" / best["name"]).is_dir()  # the run's own report/ by default
    assert cli.main(["report", "unit-tune", "--state-dir", str(root)]) == 0
    assert f"best trial {best['name']}" in capsys.readouterr().out


def test_report_of_an_unknown_job_is_one_line(reloaded, tmp_path, capsys):
    assert cli.main(["report", "unit-nope", "--state-dir", str(tmp_path / ".breedline")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DescribeTrainingJob" in err and "Traceback" not in err


# ---------------------------------------------------------- no runtime, no AWS
@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """A shell with no AWS configuration at all, as on an operator's laptop after the demo."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "BREEDLINE_API_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER",
                 "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["report", "breedline-x"],
                                     ["predict", "IMAGE"]])
def test_without_a_runtime_each_command_says_what_to_run_in_one_line(no_aws, tmp_path, capsys, command):
    root = tmp_path / ".breedline"
    run = new_run_dir(root)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    RuntimeInfo(aws_url="http://127.0.0.1:1", sagemaker_url="http://127.0.0.1:2", api_url="http://127.0.0.1:3",
                region="us-east-1", bucket="b", state_dir=str(run), alert_queue_url="q", alert_topic_arn="t",
                pid=int(ended.stdout)).write(run / "runtime.json")  # a runtime that has ended
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    argv = [str(image) if part == "IMAGE" else part for part in command]
    assert cli.main([*argv, "--state-dir", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert "is not running" in captured.err and "python -m breedline up --keep-state" in captured.err
    assert "--aws" in captured.err and "Traceback" not in captured.err


def test_predict_of_a_missing_image_is_one_line(no_aws, tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "nope.jpg"), "--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"breedline predict: no image file {tmp_path / 'nope.jpg'}"


def test_a_reloaded_report_reuses_the_runs_earlier_download(tmp_path):
    """After ``up --keep-state`` the S3 objects are gone, but the run's report/ folder still holds the output."""
    from breedline import job_artifacts

    class NoObjects:
        def download_file(self, bucket, key, target):
            raise FileNotFoundError(key)

    folder = tmp_path / "report" / "job-final"
    notes: list[str] = []
    assert job_artifacts.extract_output(NoObjects(), "s3://b/jobs/job-final/output/output.tar.gz", folder, notes) is None
    (folder / "output" / "profiler").mkdir(parents=True)
    (folder / "output" / "profiler" / "summary.json").write_text(json.dumps({"steps": 3}))
    found = job_artifacts.extract_output(NoObjects(), "s3://b/jobs/job-final/output/output.tar.gz", folder, notes)
    assert found == folder / "output"
    assert notes == [f"output data read from this run's earlier download in {folder / 'output'}"]

