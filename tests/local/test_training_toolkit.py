"""Local training jobs run through AWS's training toolkit (``sagemaker-training``), as the image runs them.

Each test starts a real job on the local SageMaker service and looks for what
only the toolkit does: downloading the source dir from (moto's) S3 into
``code/``, installing its ``requirements.txt``, ``SM_TRAINING_ENV`` and the
other variables it alone sets, its log lines, its failure file.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid

import pytest
from local_standins import BUCKET, sagemaker_client, tarball, training_request  # type: ignore[import-not-found]

from breedline.local import training_launch

PROBE = textwrap.dedent('''
    """Writes what it was started with into the model dir, then exits as --exit_code says."""
    import json, os, pathlib, sys
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
            "code": sorted(os.listdir(os.getcwd()))}
    (pathlib.Path(os.environ["SM_MODEL_DIR"]) / "probe.json").write_text(json.dumps(seen))
    print("#breedline-metric epoch=1 valid_loss=0.25", flush=True)
    sys.exit(int(args.get("--exit_code", "0")))
''')


def upload_source(s3, files: dict[str, str]) -> str:
    """A source dir tarball under a fresh key (the requirements ledger is per URI and ETag)."""
    key = f"code/probe-{uuid.uuid4().hex[:8]}.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=tarball(files))
    return f"s3://{BUCKET}/{key}"


def run_job(server, name: str, source: str, **hyper: str) -> dict:
    sm = sagemaker_client(server)
    sm.create_training_job(**training_request(name, sagemaker_submit_directory=json.dumps(source), **hyper))
    return wait_ended(sm, name)


def wait_ended(sm, name: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"{name} did not end")


def probe_of(server, name: str) -> dict:
    return json.loads((server.backend.state_dir / "jobs" / name / "model" / "probe.json").read_text())


def stderr_of(server, name: str) -> str:
    return (server.backend.state_dir / "jobs" / name / "logs" / "stderr.log").read_text()


def test_a_job_runs_through_the_toolkit_which_fetches_installs_and_launches(local_sagemaker):
    s3 = local_sagemaker.backend.s3
    source = upload_source(s3, {"train.py": PROBE, "requirements.txt": "boto3\n"})
    job = run_job(local_sagemaker, "toolkit-probe-1", source, learning_rate="0.05")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    seen = probe_of(local_sagemaker, "toolkit-probe-1")
    root = local_sagemaker.backend.state_dir / "jobs" / "toolkit-probe-1"

    # SM_TRAINING_ENV, SM_USER_ARGS and SM_MODULE_NAME exist only because the toolkit set them.
    training_env = json.loads(seen["env"]["SM_TRAINING_ENV"])
    assert training_env["job_name"] == "toolkit-probe-1"
    assert training_env["module_dir"] == source
    assert json.loads(seen["env"]["SM_USER_ARGS"]) == seen["argv"]
    assert seen["env"]["SM_MODULE_NAME"] == "train"
    assert seen["argv"][seen["argv"].index("--learning_rate") + 1] == "0.05"
    assert not any(arg.startswith("--sagemaker_") for arg in seen["argv"])
    # It downloaded the source dir from moto into code/ and ran the script there.
    assert seen["cwd"] == str(root / "code")
    assert seen["code"] == ["requirements.txt", "train.py"]
    assert seen["env"]["AWS_ENDPOINT_URL_S3"] == s3.meta.endpoint_url
    assert "AWS_ENDPOINT_URL" not in seen["env"]
    # Its pip step ran on the source dir's requirements.txt, free of any global constraint file.
    log = stderr_of(local_sagemaker, "toolkit-probe-1")
    assert "Installing dependencies from requirements.txt" in log
    assert "Reporting training SUCCESS" in log
    assert seen["env"]["PIP_CONSTRAINT"] == "/dev/null"
    assert "PIP_NO_DEPS" not in seen["env"]
    assert (root / "output" / "success").is_file()
    assert {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}["valid_loss"] == pytest.approx(0.25)

    # The same source dir again: pip still runs, but need not re-walk the tree it just walked.
    again = run_job(local_sagemaker, "toolkit-probe-2", source)
    assert again["TrainingJobStatus"] == "Completed", again.get("FailureReason")
    assert probe_of(local_sagemaker, "toolkit-probe-2")["env"]["PIP_NO_DEPS"] == "1"
    assert "Installing dependencies from requirements.txt" in stderr_of(local_sagemaker, "toolkit-probe-2")


def test_a_failed_job_does_not_excuse_the_next_from_the_full_install(local_sagemaker):
    source = upload_source(local_sagemaker.backend.s3, {"train.py": PROBE, "requirements.txt": "boto3\n"})
    job = run_job(local_sagemaker, "toolkit-exit-1", source, exit_code="4")
    assert job["TrainingJobStatus"] == "Failed"
    # No failure file from the script: the toolkit's own reason, with the script's exit code in it.
    assert job["FailureReason"].startswith("AlgorithmError: ExecuteUserScriptError"), job["FailureReason"]
    assert "ExitCode 4" in job["FailureReason"] and job["FailureReason"].endswith("exit code: 1")
    bucket, key = source[len("s3://"):].split("/", 1)
    etag = local_sagemaker.backend.s3.head_object(Bucket=bucket, Key=key)["ETag"]
    assert not training_launch.LEDGER.installed(source, etag)


def test_a_bad_hyperparameter_ends_failed_with_the_scripts_complaint(local_sagemaker):
    """The stand-in train.py parses --epochs as an int; argparse rejects "many" and exits 2."""
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**training_request("toolkit-badhp-1", epochs="many"))
    job = wait_ended(sm, "toolkit-badhp-1")
    assert job["TrainingJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError"), reason
    assert "ExitCode 2" in reason and "--epochs" in reason and "many" in reason, reason
    assert job["SecondaryStatus"] == "Failed"


def test_the_toolkit_environment_drops_the_operators_endpoints_and_toolkit_inputs(tmp_path):
    base = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:2",
            "SM_MODEL_DIR": "/elsewhere", "SAGEMAKER_BASE_DIR": "/elsewhere", "PIP_CONSTRAINT": "/etc/cap.txt",
            "PATH": "/usr/bin", "AWS_ACCESS_KEY_ID": "mine"}
    env = training_launch.toolkit_environment(base, tmp_path, "job-1", s3_endpoint="http://127.0.0.1:3",
                                              region="eu-west-1", threads=2)
    assert env["SAGEMAKER_BASE_DIR"] == str(tmp_path) and env["TRAINING_JOB_NAME"] == "job-1"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:3"
    assert not {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "SM_MODEL_DIR"} & set(env)
    assert (env["PIP_CONSTRAINT"], env["AWS_REGION"], env["OMP_NUM_THREADS"]) == ("/dev/null", "eu-west-1", "2")
    assert (env["PATH"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("/usr/bin", "mine", "testing")
