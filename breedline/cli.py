"""The operator CLI: one entry point for local mode and a real AWS account.

Why one code path: every command talks to the services through boto3 (and the
predict API over HTTP). In local mode the only difference is configuration:
when ``.breedline/runtime.json`` names a running local runtime, the CLI points
boto3 at it with ``AWS_ENDPOINT_URL*``; with ``--aws`` (or no local runtime)
boto3 uses the operator's normal configuration (profile, region).

Commands::

    python -m breedline demo [--data DIR] [--name NAME]   # the whole pipeline locally
    python -m breedline up                                # just the local runtime, until Ctrl-C
    python -m breedline status                            # pipeline and endpoint states
    python -m breedline report JOB                        # metrics, loss curve, profiler, rules
    python -m breedline predict IMAGE [--api URL]         # classify one image
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from breedline.demo import DEMO_PER_CLASS
from breedline.local.runtime import DEFAULT_STATE_DIR, RuntimeInfo, client_env


def _settings() -> Any:
    """The app's settings as the environment gives them (``chalicelib`` comes with the editable install)."""
    from chalicelib.config import Settings  # type: ignore[import-not-found]

    return Settings.from_env()


def connect(args: argparse.Namespace) -> tuple[str, RuntimeInfo | None]:
    """Choose local or AWS mode and configure boto3 for it; return the mode."""
    info = None if args.aws else RuntimeInfo.read(Path(args.state_dir))
    if info is not None:
        os.environ.update(client_env(info))
        os.environ.update({k: v for k, v in info.env.items() if k not in os.environ})
        return "local", info
    return "aws", None


def cmd_up(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from breedline.local.runtime import LocalRuntime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime = LocalRuntime(Path(args.state_dir), api_port=args.api_port, fresh=not args.keep_state,
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
    per_class = None if args.per_class == 0 else args.per_class
    return run_demo(data, name, Path(args.state_dir), keep_running=args.keep_running, timeout=args.timeout,
                    per_class=per_class)


def cmd_status(args: argparse.Namespace) -> int:
    import boto3

    mode, info = connect(args)
    s = _settings()
    sm = boto3.client("sagemaker")
    print(f"mode: {mode}" + (f" (runtime pid {info.pid}, state {info.state_dir})" if info else ""))
    tunings = sm.list_hyper_parameter_tuning_jobs(NameContains=s.name_prefix, SortBy="CreationTime",
                                                  SortOrder="Descending", MaxResults=5)
    print("\ntuning jobs (newest first):")
    for t in tunings["HyperParameterTuningJobSummaries"] or []:
        c = t["TrainingJobStatusCounters"]
        print(f"  {t['HyperParameterTuningJobName']:<34} {t['HyperParameterTuningJobStatus']:<11} "
              f"trials: {c.get('Completed', 0)} completed, {c.get('InProgress', 0)} running, "
              f"{c.get('NonRetryableError', 0)} failed")
    if not tunings["HyperParameterTuningJobSummaries"]:
        print("  none")
    jobs = sm.list_training_jobs(NameContains=s.name_prefix, SortBy="CreationTime", SortOrder="Descending",
                                 MaxResults=10)
    print("\ntraining jobs (newest first):")
    for j in jobs["TrainingJobSummaries"] or []:
        print(f"  {j['TrainingJobName']:<50} {j['TrainingJobStatus']}")
    if not jobs["TrainingJobSummaries"]:
        print("  none")
    print("\nendpoint:")
    try:
        e = sm.describe_endpoint(EndpointName=s.endpoint_name)
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=e["EndpointArn"]).get("Tags", [])}
        print(f"  {s.endpoint_name}: {e['EndpointStatus']} (config {e['EndpointConfigName']})"
              + (f", failure: {e['FailureReason']}" if e.get("FailureReason") else ""))
        for key, value in sorted(tags.items()):
            print(f"    tag {key} = {value}")
    except Exception as exc:  # not deployed yet is a normal state
        print(f"  {s.endpoint_name}: not deployed ({getattr(exc, 'response', {}).get('Error', {}).get('Code', exc)})")
    if info is not None:
        import requests

        try:
            live = requests.get(f"{info.api_url}/status", timeout=10).json()
            print("\nGET /status:", json.dumps(live.get("live_model"), default=str))
        except Exception as exc:
            print(f"\nGET /status failed: {exc}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import boto3

    from breedline import job_report

    _, info = connect(args)
    sm, s3 = boto3.client("sagemaker"), boto3.client("s3")
    out = Path(args.out)
    name = args.job
    try:
        job, rows = job_report.tuning_trials(sm, name)
    except Exception:
        job = None
    if job is not None:
        objective = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        print(f"tuning job {name}: {job['HyperParameterTuningJobStatus']}; trials best first "
              f"({objective['Type']} {objective['MetricName']}):")
        print(job_report.format_trials(rows, objective["MetricName"]))
        best = job.get("BestTrainingJob", {}).get("TrainingJobName")
        if not best:
            return 0
        print(f"\nbest trial {best}:")
        name = best
    print(job_report.format_job(job_report.job_report(sm, s3, name, out, state_dir=info.state_dir if info else None)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    mode, info = connect(args)
    path = Path(args.image)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m breedline", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="local runtime folder (.breedline)")
    common.add_argument("--aws", action="store_true", help="ignore a local runtime; use boto3's normal config")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common], help="run the whole pipeline locally on the digits (or your) data")
    demo.add_argument("--data", help="folder with {train,valid,test}/<class>/ images (default: digits)")
    demo.add_argument("--name", help="data set name (default: the folder's name, or digits)")
    demo.add_argument("--per-class", type=int, default=DEMO_PER_CLASS,
                      help="digits per class for the built-in data set (0: all ~180)")
    demo.add_argument("--keep-running", action="store_true", help="leave the runtime up after the report")
    demo.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for the endpoint")
    demo.set_defaults(func=cmd_demo)
    up = sub.add_parser("up", parents=[common], help="run the local runtime until Ctrl-C")
    up.add_argument("--api-port", type=int, default=0)
    up.add_argument("--keep-state", action="store_true", help="do not wipe the state folder first")
    up.add_argument("--schedule-seconds", type=float, default=10.0,
                    help="how often scheduled handlers (check_quiet_datasets) run locally")
    up.add_argument("--job-threads", type=int, default=1,
                    help="OMP threads per training process (0: torch's default); 1 is fastest on a busy 2-core box")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", parents=[common], help="pipeline and endpoint states")
    status.set_defaults(func=cmd_status)
    report = sub.add_parser("report", parents=[common], help="metrics, loss curve, profiler summary and rules of a job")
    report.add_argument("job", help="training job name, or a tuning job name (reports its best trial)")
    report.add_argument("--out", default=str(DEFAULT_STATE_DIR / "report"), help="where plots and downloads go")
    report.set_defaults(func=cmd_report)
    predict = sub.add_parser("predict", parents=[common], help="classify one image through the predict API")
    predict.add_argument("image")
    predict.add_argument("--api", help="API base URL (default: the local runtime's, or $BREEDLINE_API_URL)")
    predict.add_argument("--content-type")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
