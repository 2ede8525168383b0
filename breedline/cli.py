"""The operator CLI: one entry point for local mode and a real AWS account.

Why one code path: every command talks to the services through boto3 (and the
predict API over HTTP). In local mode the only difference is configuration:
when the state folder's ``runtime.json`` names a running local runtime, the CLI
points boto3 at it with ``AWS_ENDPOINT_URL*``; with ``--aws`` (or no local
runtime) boto3 uses the operator's normal configuration (profile, region).
The state folder is ``.breedline/latest`` (the newest run) unless
``--state-dir`` names another.

Commands::

    python -m breedline demo [--data DIR] [--name NAME]   # the whole pipeline locally
    python -m breedline up [--keep-state]                 # just the local runtime, until Ctrl-C
    python -m breedline status [--json]                   # pipeline and endpoint states
    python -m breedline report JOB [--json]               # metrics, evaluation, pictures, model card
    python -m breedline predict IMAGE [--api URL]         # classify one image
    python -m breedline batch FOLDER [--name N] [--wait]  # predictions for a folder (a Batch Transform job)

A command that cannot reach what it needs (no runtime and no AWS
configuration, an unknown job, a missing image) prints one line on stderr
that says what is wrong and what to run, and exits 2 (1 for an error answer).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from breedline.demo import DEMO_PER_CLASS, is_state_root
from breedline.local.runtime import DEFAULT_STATE_DIR, RuntimeInfo, client_env, new_run_dir, resolve_state_dir

#: Exit status of a command that could not run (nothing reachable, bad input); 1 is an error answer.
EXIT_UNUSABLE = 2


class OperatorError(Exception):
    """A failure the operator can act on: printed as one line, never as a traceback."""


def _settings() -> Any:
    """The app's settings as the environment gives them (``chalicelib`` comes with the editable install)."""
    from chalicelib.config import Settings  # type: ignore[import-not-found]

    return Settings.from_env()


def _state_dir(args: argparse.Namespace) -> Path:
    """The run folder the command reads: ``--state-dir`` (or ``.breedline``), following its ``latest`` link."""
    return resolve_state_dir(Path(args.state_dir) if args.state_dir else DEFAULT_STATE_DIR)


def connect(args: argparse.Namespace) -> tuple[str, RuntimeInfo | None]:
    """Choose local or AWS mode and configure boto3 for it; return the mode."""
    info = None if args.aws else RuntimeInfo.read(_state_dir(args))
    if info is not None:
        os.environ.update(client_env(info))
        os.environ.update({k: v for k, v in info.env.items() if k not in os.environ})
        return "local", info
    return "aws", None


def no_runtime_reason(state_dir: Path) -> str:
    """Why ``state_dir`` names no running runtime, in a few words."""
    path = state_dir / "runtime.json"
    if path.is_file():
        try:
            pid = json.loads(path.read_text()).get("pid")
        except (OSError, ValueError):
            pid = None
        return f"the runtime of {state_dir} (pid {pid}) is not running"
    if (state_dir / "sagemaker.json").is_file():
        return f"the runtime of {state_dir} has stopped"
    return f"no local runtime state in {state_dir}"


def explain(args: argparse.Namespace, exc: Exception) -> str:
    """One line for a failure: what is wrong, and what to run."""
    restart = "start it with `python -m breedline up --keep-state` (reloads the last run's jobs)"
    if isinstance(exc, (NoRegionError, NoCredentialsError)) and not getattr(args, "aws", False):
        state = _state_dir(args)
        return (f"{no_runtime_reason(state)}, and boto3 has no AWS {'region' if isinstance(exc, NoRegionError) else 'credentials'} "
                f"to fall back to: {restart}, or pass --aws with AWS_REGION/AWS_PROFILE set")
    if isinstance(exc, (NoRegionError, NoCredentialsError)):
        return f"{exc}: set AWS_REGION and AWS_PROFILE (or credentials) for --aws"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{exc.operation_name} answered {error.get('Code')}: {error.get('Message')}"
    if isinstance(exc, BotoCoreError):
        return f"{exc}; if this is a stopped local runtime, {restart}"
    return str(exc)


def up_state_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """The folder ``up`` runs in, and whether it starts empty.

    Under a state root (``.breedline`` by default): ``--keep-state`` reopens
    the ``latest`` run and reloads its jobs; otherwise a new run folder is
    made, so earlier runs stay. An explicit folder of one run is used as is,
    and emptied first unless ``--keep-state``.
    """
    given = Path(args.state_dir) if args.state_dir else DEFAULT_STATE_DIR
    if not is_state_root(given):
        return given, not args.keep_state
    latest = resolve_state_dir(given)
    if args.keep_state and latest != given:
        return latest, False
    return new_run_dir(given), False


def cmd_up(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from breedline.local.runtime import LocalRuntime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    state_dir, fresh = up_state_dir(args)
    runtime = LocalRuntime(state_dir, api_port=args.api_port, fresh=fresh,
                           schedule_period=args.schedule_seconds,
                           job_threads=None if args.job_threads == 0 else args.job_threads)
    try:
        info = runtime.start()
        print(json.dumps({k: v for k, v in info.__dict__.items() if k != "env"}, indent=2), flush=True)
        print("local runtime ready; Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from breedline.demo import run_demo

    data = Path(args.data).resolve() if args.data else None
    name = args.name or (data.name if data else "digits")
    if args.instances is not None:  # the runtime and the app read it from the environment (docs/scale.md)
        if args.instances < 1:
            print("error: --instances must be at least 1", file=sys.stderr)
            return 2
        os.environ["BREEDLINE_TRAINING_INSTANCE_COUNT"] = str(args.instances)
    per_class = None if args.per_class == 0 else args.per_class
    return run_demo(data, name, Path(args.state_dir) if args.state_dir else None, keep_running=args.keep_running, timeout=args.timeout,
                    per_class=per_class, batch=Path(args.batch).resolve() if args.batch else None)


def _iso(value: Any) -> str | None:
    """A boto3 timestamp as ISO 8601 (UTC), for ``--json``."""
    return value.astimezone(dt.UTC).isoformat() if isinstance(value, dt.datetime) else None


def status_data(sm: Any, settings: Any, mode: str, info: RuntimeInfo | None) -> dict[str, Any]:
    """What ``status`` shows, as one dict with stable keys (``status --json`` prints it; docs/local.md lists them)."""
    tunings = sm.list_hyper_parameter_tuning_jobs(NameContains=settings.name_prefix, SortBy="CreationTime",
                                                  SortOrder="Descending", MaxResults=5)
    jobs = sm.list_training_jobs(NameContains=settings.name_prefix, SortBy="CreationTime", SortOrder="Descending",
                                 MaxResults=10)
    data: dict[str, Any] = {
        "mode": mode,
        "runtime": None if info is None else {"pid": info.pid, "state_dir": info.state_dir, "api_url": info.api_url},
        "tuning_jobs": [{
            "name": t["HyperParameterTuningJobName"], "status": t["HyperParameterTuningJobStatus"],
            "created": _iso(t.get("CreationTime")),
            "trials": {"completed": t["TrainingJobStatusCounters"].get("Completed", 0),
                       "in_progress": t["TrainingJobStatusCounters"].get("InProgress", 0),
                       "failed": t["TrainingJobStatusCounters"].get("NonRetryableError", 0),
                       "stopped": t["TrainingJobStatusCounters"].get("Stopped", 0)},
        } for t in tunings.get("HyperParameterTuningJobSummaries") or []],
        "training_jobs": [{"name": j["TrainingJobName"], "status": j["TrainingJobStatus"],
                           "created": _iso(j.get("CreationTime"))} for j in jobs.get("TrainingJobSummaries") or []],
        "endpoint": {"name": settings.endpoint_name, "deployed": False, "status": None, "config": None,
                     "failure_reason": None, "tags": {}, "error": None},
        "live_model": None,
        "live_model_error": None,
    }
    endpoint = data["endpoint"]
    try:
        e = sm.describe_endpoint(EndpointName=settings.endpoint_name)
        tags = sm.list_tags(ResourceArn=e["EndpointArn"]).get("Tags", [])
        endpoint.update(deployed=True, status=e["EndpointStatus"], config=e["EndpointConfigName"],
                        failure_reason=e.get("FailureReason"), tags={t["Key"]: t["Value"] for t in tags})
    except ClientError as exc:  # not deployed yet is a normal state
        endpoint["error"] = exc.response.get("Error", {}).get("Code", str(exc))
    if info is not None:
        import requests

        try:
            data["live_model"] = requests.get(f"{info.api_url}/status", timeout=10).json().get("live_model")
        except (requests.RequestException, ValueError) as exc:  # the report still shows SageMaker's side
            data["live_model_error"] = f"{type(exc).__name__}: {exc}"
    return data


def format_status(data: dict[str, Any]) -> str:
    """``status_data`` as the operator reads it."""
    runtime = data["runtime"]
    lines = [f"mode: {data['mode']}" + (f" (runtime pid {runtime['pid']}, state {runtime['state_dir']})"
                                        if runtime else ""), "", "tuning jobs (newest first):"]
    for t in data["tuning_jobs"]:
        c = t["trials"]
        lines.append(f"  {t['name']:<34} {t['status']:<11} trials: {c['completed']} completed, "
                     f"{c['in_progress']} running, {c['failed']} failed")
    lines += ["  none"] if not data["tuning_jobs"] else []
    lines += ["", "training jobs (newest first):"]
    lines += [f"  {j['name']:<50} {j['status']}" for j in data["training_jobs"]] or ["  none"]
    lines += ["", "endpoint:"]
    e = data["endpoint"]
    if e["deployed"]:
        lines.append(f"  {e['name']}: {e['status']} (config {e['config']})"
                     + (f", failure: {e['failure_reason']}" if e["failure_reason"] else ""))
        lines += [f"    tag {key} = {value}" for key, value in sorted(e["tags"].items())]
    else:
        lines.append(f"  {e['name']}: not deployed ({e['error']})")
    if data["live_model_error"]:
        lines.append(f"\nGET /status failed: {data['live_model_error']}")
    elif runtime:
        lines.append("\nGET /status: " + json.dumps(data["live_model"], default=str))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    import boto3

    mode, info = connect(args)
    data = status_data(boto3.client("sagemaker"), _settings(), mode, info)
    print(json.dumps(data, indent=2, default=str) if args.json else format_status(data))
    return 0


@dataclasses.dataclass
class Report:
    """What ``report JOB`` found: the tuning job (or None) with its trials, and the training job's report."""

    job: str
    tuning: dict[str, Any] | None = None
    trials: list[Any] = dataclasses.field(default_factory=list)
    training: Any = None


def collect_report(sm: Any, s3: Any, name: str, out: Path, state_dir: Path | None = None,
                   state: Any = None) -> Report:
    """The tuning job and its best trial's report, or the training job ``name``'s report and model card.

    ``training`` is None for a tuning job with no best trial yet. A name that is
    neither a tuning job nor a training job raises the service's ClientError.
    A training job named directly (a final job: a model the gate judged) also
    gets ``model_card.html`` (:mod:`breedline.model_card`); ``state`` is the
    app's state store the card reads the gate's decision from.
    """
    from breedline import job_report, model_card

    found = Report(job=name)
    try:
        found.tuning, found.trials = job_report.tuning_trials(sm, name)
    except ClientError:
        found.tuning = None
    if found.tuning is not None:
        name = found.tuning.get("BestTrainingJob", {}).get("TrainingJobName")
        if not name:
            return found
    found.training = job_report.job_report(sm, s3, name, out, state_dir=state_dir)
    if found.tuning is None:
        model_card.write_model_card(sm, s3, found.training, out, state=state)
    return found


def report_data(found: Report) -> dict[str, Any]:
    """``report --json``: stable keys ``job``, ``tuning`` (or null) and ``training`` (its best trial, or JOB)."""
    data: dict[str, Any] = {"job": found.job, "tuning": None, "training": None}
    if found.tuning is not None:
        job = found.tuning
        objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        data["tuning"] = {"name": found.job, "status": job["HyperParameterTuningJobStatus"],
                          "strategy": job["HyperParameterTuningJobConfig"].get("Strategy"),
                          "objective": {"type": objective["Type"], "metric": objective["MetricName"]},
                          "best_trial": job.get("BestTrainingJob", {}).get("TrainingJobName"),
                          "trials": [dataclasses.asdict(r) for r in found.trials]}
    report = found.training
    if report is not None:
        training = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)
                    if f.name not in ("loss_plot", "rule_table", "evaluation")}
        training.update(loss_curve=str(report.loss_curve) if report.loss_curve else None,
                        loss_points=report.loss_points, rules=report.rules,
                        evaluation=report.evaluation.figures() if report.evaluation else None)
        data["training"] = training
    return data


def format_report(found: Report) -> str:
    """The report as the operator reads it."""
    from breedline import job_report

    lines = []
    if found.tuning is not None:
        objective = found.tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        lines.append(f"tuning job {found.job}: {found.tuning['HyperParameterTuningJobStatus']}; trials best first "
                     f"({objective['Type']} {objective['MetricName']}):")
        lines.append(job_report.format_trials(found.trials, objective["MetricName"]))
        if found.training is not None:
            lines.append(f"\nbest trial {found.training.name}:")
    if found.training is not None:
        lines.append(job_report.format_job(found.training))
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    import boto3

    connect(args)
    out = Path(args.out) if args.out else _state_dir(args) / "report"
    from breedline.card_facts import state_store

    found = collect_report(boto3.client("sagemaker"), boto3.client("s3"), args.job, out, _state_dir(args),
                           state=state_store(boto3.client("dynamodb"), _settings().state_table))
    print(json.dumps(report_data(found), indent=2, default=str) if args.json else format_report(found))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    _, info = connect(args)
    path = Path(args.image)
    if not path.is_file():
        raise OperatorError(f"no image file {path}")
    body = path.read_bytes()
    content_type = args.content_type or {".png": "image/png"}.get(path.suffix.lower(), "image/jpeg")
    api = args.api or (info.api_url if info else os.environ.get("BREEDLINE_API_URL"))
    if api:
        answer = requests.post(f"{api.rstrip('/')}/predict", data=body, headers={"Content-Type": content_type},
                               timeout=60)
        print(json.dumps(answer.json(), indent=2))
        return 0 if answer.status_code == 200 else 1
    # No API URL known: call the endpoint directly, as the predict route does.
    import boto3

    s = _settings()
    reply = boto3.client("sagemaker-runtime").invoke_endpoint(EndpointName=s.endpoint_name, Body=body,
                                                              ContentType=content_type, Accept="application/json")
    print(json.dumps(json.loads(reply["Body"].read()), indent=2))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    import boto3

    from breedline.batch_runner import BatchError, batch_name, run_batch

    connect(args)
    folder = Path(args.folder)
    try:
        run_batch(boto3.client("s3"), _settings().bucket, folder, args.name or batch_name(folder), wait=args.wait,
                  timeout=args.timeout, say=lambda line: print(line, flush=True))
    except BatchError as exc:
        raise OperatorError(str(exc)) from exc
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m breedline", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=None,
                        help="state folder: a root of runs (default .breedline, read through its latest link) "
                             "or one run's folder")
    common.add_argument("--aws", action="store_true", help="ignore a local runtime; use boto3's normal config")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common], help="run the whole pipeline locally on the digits (or your) data")
    demo.add_argument("--data", help="folder with {train,valid,test}/<class>/ images (default: digits)")
    demo.add_argument("--name", help="data set name (default: the folder's name, or digits)")
    demo.add_argument("--per-class", type=int, default=DEMO_PER_CLASS,
                      help="digits per class for the built-in data set (0: all ~180)")
    demo.add_argument("--keep-running", action=argparse.BooleanOptionalAction, default=None,
                      help="leave the runtime up after the report, for the try-it page and the CLI "
                           "(default: yes on a terminal, no otherwise; --no-keep-running stops it)")
    demo.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the endpoint")
    demo.add_argument("--instances", type=int, default=None,
                      help="instances of the final training job, each a local process (sets "
                           "BREEDLINE_TRAINING_INSTANCE_COUNT; default 1)")
    demo.add_argument("--batch", help="then run batch predictions for this folder against the demo's model")
    demo.set_defaults(func=cmd_demo)
    up = sub.add_parser("up", parents=[common], help="run the local runtime until Ctrl-C")
    up.add_argument("--api-port", type=int, default=0)
    up.add_argument("--keep-state", action="store_true",
                    help="reopen the latest run (or --state-dir) and reload its jobs instead of starting a new run")
    up.add_argument("--schedule-seconds", type=float, default=10.0,
                    help="how often scheduled handlers (check_quiet_datasets) run locally")
    up.add_argument("--job-threads", type=int, default=1,
                    help="OMP threads per training process (0: torch's default); 1 is fastest on a busy 2-core box")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", parents=[common], help="pipeline and endpoint states")
    status.add_argument("--json", action="store_true", help="one JSON object with stable keys (docs/local.md)")
    status.set_defaults(func=cmd_status)
    report = sub.add_parser("report", parents=[common], help="metrics, evaluation pictures, loss curve, profiler, rules and model card of a job")
    report.add_argument("job", help="training job name, or a tuning job name (reports its best trial)")
    report.add_argument("--out", default=None, help="where plots and downloads go (default: the run's report/)")
    report.add_argument("--json", action="store_true", help="one JSON object with stable keys (docs/local.md)")
    report.set_defaults(func=cmd_report)
    predict = sub.add_parser("predict", parents=[common], help="classify one image through the predict API")
    predict.add_argument("image")
    predict.add_argument("--api", help="API base URL (default: the local runtime's, or $BREEDLINE_API_URL)")
    predict.add_argument("--content-type")
    predict.set_defaults(func=cmd_predict)
    batch = sub.add_parser("batch", parents=[common], help="predictions for every image of a folder (Batch Transform)")
    batch.add_argument("folder")
    batch.add_argument("--name", help="batch name (default: the folder's name and the time)")
    batch.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                       help="wait for the app's summary and print it (default; --no-wait returns after the upload)")
    batch.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the summary")
    batch.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure the operator can act on is one line on stderr and exit status 2."""
    import requests

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OperatorError, BotoCoreError, ClientError, requests.ConnectionError, requests.Timeout) as exc:
        print(f"breedline {args.command}: {explain(args, exc)}", file=sys.stderr)
        return EXIT_UNUSABLE
