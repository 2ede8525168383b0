"""``python -m breedline demo``: the whole pipeline on this machine, driven by one upload.

Why the runtime runs in a child process: the demo is an operator watching from
outside, exactly as in AWS. The child (``python -m breedline up``) hosts moto,
the local SageMaker service, the app's handlers and its API; this process only
uploads the data set, watches the jobs through the SageMaker API, calls
``POST /predict`` and prints the report. Ctrl-C stops the child and every process it started.
"""

from __future__ import annotations

import mimetypes
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import requests
from contract import FAILED, STOPPED

from breedline.batch_runner import run_demo_batch
from breedline.build.paths import REPO_ROOT
from breedline.demo_progress import Clock, Watcher, drain_alerts, print_try_it, print_wall_times, say
from breedline.local.runtime import DEFAULT_STATE_DIR, LATEST_LINK, RUNS_DIR, RuntimeInfo, new_run_dir

#: What ``POST /predict`` takes, by the format Pillow finds in the file (not by its name).
PREDICT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
#: The folders a data set holds (contract.CHANNELS); DATA without any of them is not a data set.
SPLITS = ("train", "valid", "test")
#: boto3's default multipart threshold: below it one PutObject is what upload_file would send too.
SINGLE_PUT_BYTES = 8 * 1024 * 1024
UPLOAD_THREADS = 4


def is_state_root(path: Path) -> bool:
    """Whether ``path`` holds runs (``runs/``, ``latest``) rather than being one run's folder."""
    path = Path(path)
    return path.resolve() == DEFAULT_STATE_DIR.resolve() or (path / RUNS_DIR).is_dir() or \
        (path / LATEST_LINK).is_symlink()


def run_state_dir(state_dir: Path | None) -> Path:
    """The folder a new run writes to: a new ``runs/<time>/`` under a state root, else ``state_dir`` itself.

    Why: each demo used to delete the previous run's ``.breedline/``. Now the
    default (and any folder that already holds runs) gets a new run folder and
    its ``latest`` link; an explicit folder of one run (a benchmark's, a
    test's) is emptied first, as before, so what is in it is this run's alone.
    """
    if state_dir is None or is_state_root(state_dir):
        return new_run_dir(DEFAULT_STATE_DIR if state_dir is None else Path(state_dir))
    state_dir = Path(state_dir)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    return state_dir


def start_runtime(state_dir: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, RuntimeInfo]:
    """Start ``python -m breedline up`` on the (new, empty) run folder ``state_dir``; wait for ``runtime.json``."""
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "logs" / "runtime.log", "w")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(
        [sys.executable, "-m", "breedline", "up", "--state-dir", str(state_dir), "--keep-state"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = RuntimeInfo.read(state_dir)
        if info is not None and info.pid == child.pid:
            return child, info
        if child.poll() is not None:
            tail = (state_dir / "logs" / "runtime.log").read_text()[-3000:]
            raise RuntimeError(f"the local runtime exited with {child.returncode}:\n{tail}")
        time.sleep(0.3)
    stop_runtime(child)
    raise RuntimeError(f"the local runtime did not start in time; see {state_dir / 'logs' / 'runtime.log'}")


def stop_runtime(child: subprocess.Popen, timeout: float = 60) -> bool:
    """SIGTERM the runtime (it stops its jobs and servers), SIGKILL its group after ``timeout``.

    Returns False when it had to be killed, so tests can insist on a clean stop.
    """
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            return False
    return True


def upload_dataset(s3: Any, bucket: str, data_dir: Path, name: str, marker: str = "_READY") -> int:
    """Upload every file under ``data_dir`` to ``datasets/<name>/`` as ``aws s3 sync`` would, then the marker.

    Why every file: in AWS the operator runs ``aws s3 sync``, which sends
    every file (hidden ones, ``.webp``, ``.txt`` and zips included) with the
    content type ``mimetypes`` guesses from the name, and the app's
    validation decides what counts. A demo that sent only ``.jpg``/``.png``
    would accept folders AWS rejects. Like the CLI, a file that cannot be
    read is reported and skipped. Returns how many files were uploaded.

    Why ``put_object`` for small files: ``upload_file`` builds a transfer
    manager (and its threads) per call, which costs more client CPU than the
    PutObject itself for a 1 kB image; the object and its ``Object Created``
    event are the same. Files above the multipart threshold still go through
    ``upload_file``. The marker goes last, once every file is in.
    """
    from concurrent.futures import ThreadPoolExecutor

    files = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue
        if not os.access(path, os.R_OK):
            print(f"warning: Skipping file {path}. File/Directory is not readable.", flush=True)
            continue
        files.append(path)

    def upload(path: Path) -> None:
        key = f"datasets/{name}/{path.relative_to(data_dir).as_posix()}"
        content_type = mimetypes.guess_type(path.name)[0]
        extra = {"ContentType": content_type} if content_type else {}
        if path.stat().st_size < SINGLE_PUT_BYTES:
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), **extra)
        else:
            s3.upload_file(str(path), bucket, key, ExtraArgs=extra or None)

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(upload, files))
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/{marker}", Body=b"")
    return len(files)


def check_data_dir(data: Path) -> str | None:
    """Why ``DATA`` cannot be a data set, in one line; None when it can be uploaded.

    Checked before the runtime starts (half a minute) so a typo fails at
    once. Only what makes the upload meaningless is checked here; the rest
    (classes, image counts, unreadable files) is the app's validation, as in AWS.
    """
    if not data.exists():
        return f"DATA {data} does not exist"
    if not data.is_dir():
        hint = " (unzip it first)" if data.suffix.lower() == ".zip" else ""
        return f"DATA {data} is not a folder{hint}: expected DATA/{{train,valid,test}}/<class>/<image>"
    if not os.access(data, os.R_OK | os.X_OK):
        return f"DATA {data} is not readable"
    if not any((data / split).is_dir() for split in SPLITS):
        zips = sorted(p.name for p in data.glob("*.zip"))
        hint = f" ({zips[0]} is a zip archive: unzip it first)" if zips else ""
        return f"DATA {data} has no train/, valid/ or test/ folder{hint}: expected DATA/{{train,valid,test}}/<class>/<image>"
    return None


def predict_type(path: Path) -> str | None:
    """The Content-Type to send ``path`` with, if Pillow fully decodes it as a JPEG or PNG; else None.

    Why decode: a macOS ``._x.jpg`` (AppleDouble metadata), a truncated
    file or a PNG named ``.jpg`` would make the demo's predictions report
    the uploader's file, not the model.
    """
    if path.name.startswith("."):
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind = image.format
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return PREDICT_TYPES.get(kind or "")


class HeldOutImage(NamedTuple):
    """A held-out image the demo predicts, its true label and the Content-Type it is sent with."""

    path: Path
    label: str
    content_type: str


def pick_test_images(data_dir: Path, count: int, seed: int = 7) -> list[HeldOutImage]:
    """A few held-out test images, spread over the classes, each one that really decodes."""
    test = data_dir / "test"
    if not test.is_dir():
        return []
    by_class = {d.name: sorted(p for p in d.iterdir() if p.is_file())
                for d in sorted(test.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    rng = random.Random(seed)
    classes = sorted(by_class)
    rng.shuffle(classes)
    picked = []
    for cls in classes[:count]:
        candidates = list(by_class[cls])
        rng.shuffle(candidates)
        for path in candidates:
            content_type = predict_type(path)
            if content_type is not None:
                picked.append(HeldOutImage(path, cls, content_type))
                break
    return picked


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


#: Digits per class in the demo data set (of ~180): sized for a demo of a few minutes on a laptop.
DEMO_PER_CLASS = 100


def run_demo(data: Path | None, dataset: str, state_dir: Path | None = None, predictions: int = 6,
             timeout: float = 900.0, keep_running: bool | None = None, per_class: int | None = DEMO_PER_CLASS,
             batch: Path | None = None) -> int:
    """The demo; returns the process exit code. ``state_dir``: see :func:`run_state_dir`.

    ``keep_running`` None: keep the runtime up when a person watches (stdin and
    stdout are terminals), so the try-it page it prints can be opened; stop it
    under CI, pipes and scripts.
    """
    if keep_running is None:
        keep_running = sys.stdin.isatty() and sys.stdout.isatty()
    clock = Clock()
    state_dir = run_state_dir(state_dir).resolve()
    # `timeout`, CI and process managers send SIGTERM: treat it as Ctrl-C so the runtime is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background with SIGINT ignored
    problem = None if data is None else check_data_dir(Path(data))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 2
    print("Breedline local demo: S3 upload -> EventBridge -> tuning -> training -> deployment -> /predict",
          flush=True)
    say(clock, "STAGE 0  starting the local AWS stand-ins, SageMaker service, app handlers and API ...")
    child, info = start_runtime(state_dir)
    try:
        announce_runtime(clock, info)
        clock.stage_done("runtime start")
        data = prepare_data(clock, data, dataset, state_dir, per_class)
        s3, sqs, sm = demo_clients(info)
        count = upload_dataset(s3, info.bucket, Path(data), dataset)
        say(clock, f"  uploaded {count} files to s3://{info.bucket}/datasets/{dataset}/ and the _READY marker;"
                   " from here on, events drive everything")
        clock.stage_done("write + upload data")

        prefix = os.environ.get("BREEDLINE_NAME_PREFIX", "breedline")
        endpoint_name = os.environ.get("BREEDLINE_ENDPOINT_NAME", "breedline-classifier")
        watcher = Watcher(sm, clock, prefix, endpoint_name, info.api_url)
        if not wait_for_deployment(watcher, sqs, info, child, timeout):
            if watcher.tuning_name:  # still show what was trained and why it stopped there
                print_report(sm, s3, watcher, state_dir, clock, demo_state_store(info))
            say(clock, f"the pipeline did not deploy; logs: {state_dir / 'logs'}, jobs: {state_dir / 'jobs'}")
            return 1
        clock.stage_done("deployment (endpoint InService)")

        picked = predict_test_images(clock, info.api_url, Path(data), predictions)
        clock.stage_done("predictions")
        if not run_demo_batch(lambda line: say(clock, line), s3, info.bucket, batch):  # make demo BATCH=folder
            return 1
        print_report(sm, s3, watcher, state_dir, clock, demo_state_store(info))
        print_wall_times(clock, state_dir)
        print_try_it(info.api_url, picked[0][0] if picked else None, keep_running)
        if keep_running:
            print("The runtime keeps running; also try `python -m breedline status` or `predict IMAGE`. "
                  "Ctrl-C stops it.", flush=True)
            child.wait()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the runtime and every job and model server ...", flush=True)
        return 130
    finally:
        stop_runtime(child)


def announce_runtime(clock: Clock, info: RuntimeInfo) -> None:
    """Where each service listens, and the settings the app runs with."""
    say(clock, f"  moto (S3, EventBridge, SQS, SNS, DynamoDB)  {info.aws_url}")
    say(clock, f"  local SageMaker + runtime                    {info.sagemaker_url}")
    say(clock, f"  predict API (chalice local)                  {info.api_url}")

    def setting(name: str) -> str | None:
        return info.env.get(name) or os.environ.get(name)

    say(clock, f"  settings: model={setting('BREEDLINE_MODEL')}, epochs={setting('BREEDLINE_EPOCHS')}, "
               f"trials={setting('BREEDLINE_MAX_JOBS')} ({setting('BREEDLINE_MAX_PARALLEL_JOBS')} at a time), "
               f"extra hyperparameters={setting('BREEDLINE_EXTRA_HYPERPARAMETERS')}")
    if (instances := setting("BREEDLINE_TRAINING_INSTANCE_COUNT") or "1") != "1":
        say(clock, f"  final training job: {instances} instances, one local process each (torchrun, gloo)")


def prepare_data(clock: Clock, data: Path | None, dataset: str, state_dir: Path, per_class: int | None) -> Path:
    """The operator's data set, or the digits written as JPEGs under the state folder."""
    if data is None:
        from breedline.demo_digits import write_digits

        data = state_dir / "demo-data" / dataset
        counts = write_digits(data, per_class=per_class, size=48)
        say(clock, f"STAGE 1  wrote scikit-learn digits as JPEGs to {data}: {counts}")
    else:
        say(clock, f"STAGE 1  using your data set {data}")
    return data


def demo_clients(info: RuntimeInfo) -> tuple[Any, Any, Any]:
    """S3 and SQS clients on moto, and a SageMaker client on the local service."""
    import boto3

    kw = dict(endpoint_url=info.aws_url, region_name=info.region,
              aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", **kw)
    sqs = boto3.client("sqs", **kw)
    sm = boto3.client("sagemaker", endpoint_url=info.sagemaker_url, region_name=info.region,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    return s3, sqs, sm


def wait_for_deployment(watcher: Watcher, sqs: Any, info: RuntimeInfo, child: subprocess.Popen,
                        timeout: float) -> bool:
    """Watch until the endpoint is InService (True), or until nothing can deploy any more (False)."""
    clock = watcher.clock
    deadline = time.monotonic() + timeout
    upload_done = time.monotonic()
    alerts_seen = 0
    while time.monotonic() < deadline:
        state = watcher.poll()
        for alert in drain_alerts(sqs, info.alert_queue_url):
            say(clock, f"  ALERT (SNS): {alert['subject']}: {alert['message'][:400]}")
            # "accepted, N files skipped" tells what was left out; the tuning job follows it
            alerts_seen += " accepted, " not in alert["subject"]
        if alerts_seen and watcher.tuning_name is None and time.monotonic() - upload_done > 20:
            say(clock, "  the app rejected the data set (see the alert); nothing was started")
            return False
        endpoint = state["endpoint"]
        if endpoint is not None and endpoint["EndpointStatus"] == "InService":
            return True
        if endpoint is not None and endpoint["EndpointStatus"] == "Failed":
            say(clock, f"  endpoint failed: {endpoint.get('FailureReason')}")
            return False
        if child.poll() is not None:
            say(clock, "  the local runtime died; see .breedline/logs/runtime.log")
            return False
        if _pipeline_failed(watcher.sm, watcher):
            return False
        training = ((state["app"] or {}).get("jobs") or {}).get("training") or {}
        if training.get("name") == watcher.final_name and str(training.get("reason", "")).startswith(
                "not deployed"):
            say(clock, "  the quality gate kept the model out; nothing to predict with")
            return False
        time.sleep(1.0)
    say(clock, f"  timed out after {timeout:.0f} s")
    return False


def predict_test_images(clock: Clock, api_url: str, data: Path, predictions: int) -> list[tuple[Path, str, str]]:
    """A few held-out test images through ``POST /predict``, each with its verdict; returns those picked."""
    say(clock, f"STAGE 5  predictions through POST {api_url}/predict (held-out test images)")
    correct = 0
    picked = pick_test_images(data, predictions)
    for path, true_label, content_type in picked:
        answer = requests.post(f"{api_url}/predict", data=path.read_bytes(),
                               headers={"Content-Type": content_type}, timeout=60)
        body = answer.json()
        if answer.status_code == 200 and body.get("abstained"):  # issue 13: "I don't know", with its candidates
            top = body["top_k"][0] if body.get("top_k") else {"label": "?", "probability": 0.0}
            say(clock, f"  {path.name:<22} true={true_label:<6} abstained ({body.get('reason')}), "
                       f"top-1 {top['label']} p={top['probability']:.3f}")
        elif answer.status_code == 200:
            mark = "ok" if body["label"] == true_label else "WRONG"
            correct += body["label"] == true_label
            say(clock, f"  {path.name:<22} true={true_label:<6} predicted={body['label']:<6} "
                       f"p={body['probability']:.3f}  {mark}")
        else:
            say(clock, f"  {path.name:<22} HTTP {answer.status_code}: {body}")
    say(clock, f"  {correct}/{len(picked)} correct")
    return picked


def _pipeline_failed(sm: Any, watcher: Watcher) -> bool:
    """Stop waiting once the app cannot deploy anything any more."""
    if watcher.tuning_name:
        t = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=watcher.tuning_name)
        if t["HyperParameterTuningJobStatus"] in (FAILED, STOPPED):
            say(watcher.clock, f"  tuning ended {t['HyperParameterTuningJobStatus']}: {t.get('FailureReason', '')}")
            return True
    if watcher.final_name:
        j = sm.describe_training_job(TrainingJobName=watcher.final_name)
        if j["TrainingJobStatus"] in (FAILED, STOPPED):
            return True
    return False


def demo_state_store(info: RuntimeInfo) -> Any:
    """The app's state table on moto, where the model card reads the gate's decision."""
    import boto3
    from chalicelib.config import Settings  # type: ignore[import-not-found]

    from breedline.card_facts import state_store

    dynamodb = boto3.client("dynamodb", endpoint_url=info.aws_url, region_name=info.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")
    return state_store(dynamodb, Settings.from_env({**os.environ, **info.env}).state_table)


def print_report(sm: Any, s3: Any, watcher: Watcher, state_dir: Path, clock: Clock, state: Any = None) -> None:
    """The report: trials, the final job's figures and pictures, and its model card (uploaded to its output)."""
    from breedline import job_report, model_card

    print("\n" + "=" * 100)
    print("REPORT")
    if watcher.tuning_name:
        job, rows = job_report.tuning_trials(sm, watcher.tuning_name)
        objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        print(f"\nTuning job {watcher.tuning_name} ({job['HyperParameterTuningJobConfig']['Strategy']}, "
              f"objective: {objective['Type']} {objective['MetricName']}), trials best first:")
        print(job_report.format_trials(rows, objective["MetricName"]))
    if watcher.final_name:
        print(f"\nFinal training job {watcher.final_name}:")
        report = job_report.job_report(sm, s3, watcher.final_name, state_dir / "report", state_dir=state_dir)
        card = model_card.write_model_card(sm, s3, report, state_dir / "report", state=state,
                                           tuning_name=watcher.tuning_name)
        print(job_report.format_job(report))
        opened = [f"  loss plot        {report.loss_curve}"] if report.loss_curve else []
        pictures = report.evaluation.pictures if report.evaluation else {}
        opened += [f"  {what}  {path}" for what, path in pictures.items()]
        if card is not None:
            opened.append(f"  model card       {card.path.resolve().as_uri()}")
        if "profiler report" in report.links:
            opened.append(f"  profiler report  {report.links['profiler report']}")
        if opened:
            print("\nOpen in a browser or viewer:\n" + "\n".join(opened))
    print("=" * 100)
