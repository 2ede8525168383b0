"""Our scripts through AWS's own toolkits, on the PyTorch 2.6 images' versions.

Why: in AWS, ``sagemaker-training`` launches ``train.py`` and
``sagemaker-pytorch-inference`` serves ``inference.py``, under torch 2.6 and
Python 3.12. These tests do the same here (``make test-containers``, in
``.venv-containers``): a tuning trial and the final job with the Debugger hook
run through the training toolkit's entry point on an ``/opt/ml``-shaped tree,
their ``model.tar.gz`` is served through the handler service TorchServe calls,
and the same job configuration is started as the local runtime starts it and
as the image's entry point does, to compare what the script sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from breedline import demo_digits
from breedline.local import training_launch
from chalicelib import config, sagemaker_requests
from contract import CHANNELS

ROOT = Path(__file__).resolve().parents[2]
ML = ROOT / "ml_scripts"
HERE = Path(__file__).resolve().parent
TINY = {"model": "efficientnet_lite0", "image_size": "32", "epochs": "1"}


def test_the_environment_is_the_containers():
    """The versions the PyTorch 2.6 images ship (requirements-containers.txt)."""
    import sagemaker_pytorch_serving_container  # noqa: F401  (imports on torch 2.6)
    import sagemaker_training  # noqa: F401

    assert sys.version_info[:2] == (3, 12)
    assert torch.__version__.split("+")[0] == "2.6.0"


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    demo_digits.write_digits(out, per_class=12, size=32)
    return out


def opt_ml(base: Path, data: Path, request: dict) -> Path:
    """The tree SageMaker writes before the container starts, for one CreateTrainingJob request."""
    config_dir = base / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(request["HyperParameters"]))
    (config_dir / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    (config_dir / "inputdataconfig.json").write_text(json.dumps({
        channel["ChannelName"]: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                                 "RecordWrapperType": "None"}
        for channel in request["InputDataConfig"]}))
    hook = request.get("DebugHookConfig")
    if hook:
        hook = {**hook, "LocalPath": str(base / "output" / "tensors")}
        (config_dir / "debughookconfig.json").write_text(json.dumps(hook))
    for channel in CHANNELS:
        shutil.copytree(data / channel, base / "input" / "data" / channel)
    shutil.copytree(ML, base / "code", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return base


def toolkit_train(base: Path, job_name: str, timeout: int = 420) -> subprocess.CompletedProcess:
    """``python -m sagemaker_training.cli.train``, the training container's entry point, on ``base``.

    ``SM_STUDIO_LOCAL_MODE`` skips the toolkit's wait for the ``algo-1`` host name,
    which only SageMaker's network resolves; nothing else differs from the container.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_", "BREEDLINE_"))}
    env.update({"SAGEMAKER_BASE_DIR": str(base), "TRAINING_JOB_NAME": job_name, "SM_STUDIO_LOCAL_MODE": "true",
                "PIP_CONSTRAINT": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "BREEDLINE_CHECKPOINT_DIR": str(base / "checkpoints"), "OMP_NUM_THREADS": "1"})
    return subprocess.run([sys.executable, "-m", "sagemaker_training.cli.train"], env=env, cwd=base,
                          capture_output=True, text=True, timeout=timeout)


def settings() -> config.Settings:
    return config.Settings.from_env({})


def trial_request() -> dict:
    """A tuning trial: the tuning job's static hyperparameters plus the tuner's values."""
    tuning = sagemaker_requests.create_tuning_job(settings(), name="t", dataset="digits", region="us-east-1",
                                                  tags=[])
    definition = tuning["TrainingJobDefinition"]
    values = {**definition["StaticHyperParameters"], **TINY, "learning_rate": "0.01", "batch_size": '"8"'}
    return {**definition, "HyperParameters": values}


def final_request() -> dict:
    return sagemaker_requests.create_training_job(
        settings(), name="final", dataset="digits", region="us-east-1",
        hyperparameters={**TINY, "learning_rate": "0.01", "batch_size": "8"}, tags=[],
        debugger="service")  # the hook from debughookconfig.json, as SageMaker Debugger configures it


def model_tarball(base: Path) -> Path:
    """``model.tar.gz`` as SageMaker packs ``/opt/ml/model`` after the job."""
    tarball = base / "output" / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted((base / "model").iterdir()):
            tar.add(path, arcname=path.name)
    return tarball


@pytest.fixture(scope="module")
def final_job(tmp_path_factory, digits) -> Path:
    base = opt_ml(tmp_path_factory.mktemp("final") / "opt" / "ml", digits, final_request())
    result = toolkit_train(base, "final")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return base


def test_a_trial_runs_through_the_training_toolkit(tmp_path, digits):
    base = opt_ml(tmp_path / "opt" / "ml", digits, trial_request())
    result = toolkit_train(base, "t-001-abcdef12")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert (base / "output" / "success").is_file()  # the toolkit's own verdict
    assert (base / "model" / "model.pt").is_file()
    assert "valid_accuracy" in result.stdout + result.stderr


def test_the_final_job_runs_with_the_debugger_hook(final_job):
    assert (final_job / "output" / "success").is_file()
    tensors = final_job / "output" / "tensors"
    assert any(tensors.rglob("*.tfevents")) or any(tensors.rglob("*")), "smdebug wrote no tensors"
    members = tarfile.open(model_tarball(final_job)).getnames()
    assert "model.pt" in members and "code/inference.py" in members


def serve(model_dir: Path, requests: list[dict], tmp_path: Path) -> list[dict]:
    """Run the requests through the handler service in a child process, as the serving container does."""
    for index, request in enumerate(requests):
        body_file = tmp_path / f"body-{index}"
        body_file.write_bytes(request.pop("body"))
        request["body_file"] = str(body_file)
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update({"PYTHONPATH": str(model_dir / "code"), "SAGEMAKER_PROGRAM": "inference.py", "OMP_NUM_THREADS": "1"})
    result = subprocess.run([sys.executable, str(HERE / "serve_driver.py"), str(model_dir),
                             str(tmp_path / "requests.json")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    answers = [json.loads(line[len("ANSWER "):]) for line in result.stdout.splitlines() if line.startswith("ANSWER ")]
    assert len(answers) == len(requests), result.stdout[-3000:] + result.stderr[-3000:]
    return answers


def test_model_tar_gz_serves_through_the_handler_service(final_job, digits, tmp_path):
    model_dir = tmp_path / "model"
    with tarfile.open(model_tarball(final_job)) as tar:
        tar.extractall(model_dir, filter="data")
    image = next((digits / "test").rglob("*.jpg")).read_bytes()
    good, text, garbage = serve(model_dir, [
        {"content_type": "image/jpeg", "body": image},
        {"content_type": "text/plain", "body": b"not an image"},
        {"content_type": "image/jpeg", "body": b"\xff\xd8\xff\xe0 not really a jpeg"},
    ], tmp_path)
    assert good["status"] == 200, good
    predictions = json.loads(good["body"])
    assert predictions, good
    assert (text["status"], garbage["status"]) == (415, 400), (text, garbage)
    for answer in (text, garbage):  # the project's JSON error body is the first line
        assert isinstance(json.loads(answer["body"].splitlines()[0]), dict), answer


PROBE = """import json, os, sys
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}, out)
"""


def probe_tree(base: Path, digits: Path) -> tuple[Path, dict]:
    request = final_request()
    request["HyperParameters"]["sagemaker_program"] = '"probe.py"'
    base = opt_ml(base, digits, request)
    (base / "code" / "probe.py").write_text(PROBE)
    return base, request


def local_launch(base: Path, out: Path) -> subprocess.CompletedProcess:
    """The local runtime's real launch (breedline/local/training_launch.py): its command and environment."""
    env = training_launch.toolkit_environment(os.environ, base, "final", s3_endpoint=None, region="us-east-1",
                                              threads=1)
    env["PROBE_OUT"] = str(out)
    return subprocess.run(training_launch.toolkit_command(), cwd=base, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def same(ours: str, theirs: str | None) -> bool:
    """Equal as the script reads them: as JSON where both are JSON, else as text."""
    if theirs is None:
        return False
    try:
        return json.loads(ours) == json.loads(theirs)
    except ValueError:
        return ours == theirs


def variables_the_scripts_read() -> set[str]:
    return {name for path in ML.glob("*.py") for name in re.findall(r'"(SM_[A-Z_]+)"', path.read_text())}


def test_the_local_launch_gives_the_script_what_the_container_gives(tmp_path, digits):
    """Same job, started as the local runtime starts it and as the training image's entry point does.

    Both run sagemaker-training; what is compared is that the runtime's command
    and environment (moto endpoint, pip settings, host-name bypass) change
    nothing the script sees.
    """
    base, _ = probe_tree(tmp_path / "opt" / "ml", digits)
    launched = local_launch(base, tmp_path / "ours.json")
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "Invoking script with the following command" in launched.stderr
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert json.loads(ours["env"]["SM_TRAINING_ENV"])["job_name"] == "final"  # the toolkit's alone
    os.environ["PROBE_OUT"] = str(tmp_path / "toolkit.json")
    try:
        result = toolkit_train(base, "final", timeout=120)
    finally:
        del os.environ["PROBE_OUT"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    toolkit = json.loads((tmp_path / "toolkit.json").read_text())

    assert ours["argv"] == toolkit["argv"]
    assert Path(ours["cwd"]).resolve() == Path(toolkit["cwd"]).resolve()
    ours_sm = {k: v for k, v in ours["env"].items() if k.startswith("SM_") or k == "TRAINING_JOB_NAME"}
    differ = {k: (v, toolkit["env"].get(k)) for k, v in ours_sm.items() if not same(v, toolkit["env"].get(k))}
    assert not differ, differ
    read = variables_the_scripts_read()
    assert read and read <= set(ours_sm) & set(toolkit["env"]), read - set(ours_sm) - set(toolkit["env"])
