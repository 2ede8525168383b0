"""The whole pipeline on one machine: AWS stand-ins, local SageMaker, the app, its API.

Why this shape: the Chalice app is imported unchanged and configured only
through environment variables (``AWS_ENDPOINT_URL*`` and ``BREEDLINE_*``), the
way it is configured in AWS. Its EventBridge rules come from its own
decorators, its handlers run when their events arrive, and the local SageMaker
service emits the events real SageMaker would. Nothing here calls a pipeline
step directly: an upload is the only trigger.

A run's state folder holds everything it leaves behind: ``runtime.json``
(where each service listens), ``sagemaker.json`` (every job, model and
endpoint), ``jobs/<job>/`` (the container folders and logs),
``endpoints/<name>/`` and ``logs/``. By default each run gets a folder of its
own, ``.breedline/runs/<UTC time>/``, and ``.breedline/latest`` links to the
newest (:func:`new_run_dir`), so a demo never deletes the one before it; every
command that reads state follows that link (:func:`resolve_state_dir`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from breedline.build.paths import REPO_ROOT
from breedline.build.sourcedir import build_sourcedir

from .s3_transfers import split_s3_uri
from .sagemaker import SageMakerBackend
from .sagemaker_http import LocalSageMakerServer, quiet_werkzeug
from .sagemaker_restore import restore_state
from .standins import Dispatcher, MotoStandIns, create_alert_topic, create_data_bucket, create_tables, install_app_rules

log = logging.getLogger("runtime.runtime")

CHALICE_DIR = REPO_ROOT / "chalice_app"
#: The default state root: runs under ``runs/``, the newest one linked as ``latest``.
DEFAULT_STATE_DIR = REPO_ROOT / ".breedline"
RUNS_DIR = "runs"
LATEST_LINK = "latest"
REGION = "us-east-1"

#: The Chalice stage whose ``environment_variables`` configure the app in local mode.
LOCAL_STAGE = "local"


def new_run_dir(root: Path = DEFAULT_STATE_DIR, stamp: float | None = None) -> Path:
    """Create ``root/runs/<UTC time>/`` and point ``root/latest`` at it; return the new folder.

    Why a folder per run: the operator reads an earlier run's jobs, logs and
    report after the next demo has started. The link is replaced atomically
    (a new link renamed over the old), so a reader sees the old run or the new
    one, never none. Two runs in the same second get ``-2``, ``-3``, ...
    """
    runs = Path(root) / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if stamp is None else stamp))
    run, n = runs / base, 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            n += 1
            run = runs / f"{base}-{n}"
    link = Path(root) / LATEST_LINK
    tmp = Path(root) / f".{LATEST_LINK}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path(RUNS_DIR) / run.name)
    tmp.replace(link)
    return run


def resolve_state_dir(path: Path) -> Path:
    """The run folder that ``path`` names: its ``latest`` link's target when it has one, else ``path``.

    ``.breedline`` itself (the default) and a folder laid out as before runs
    existed (``runtime.json`` at its top) both work.
    """
    link = Path(path) / LATEST_LINK
    if link.is_symlink() and link.resolve().is_dir():
        return link.resolve()
    return Path(path)


def local_settings(chalice_dir: Path = CHALICE_DIR, stage: str = LOCAL_STAGE) -> dict[str, str]:
    """The app's configuration in local mode: the ``local`` stage of ``.chalice/config.json``.

    Why that file: it is Chalice's own place for per-stage settings, so the
    local values (the offline pretrained model, small images, few epochs and
    trials: what fits a 2-core laptop) sit next to the ``dev`` stage's, in one
    place. The top-level ``environment_variables`` and the stage's are merged
    as Chalice merges them (the stage wins), by Chalice's own ``Config``.
    :class:`LocalRuntime` lets any variable already in the environment win.
    """
    from chalice.config import Config

    config_from_disk = json.loads((chalice_dir / ".chalice" / "config.json").read_text())
    merged = Config(chalice_stage=stage, config_from_disk=config_from_disk).environment_variables
    return {str(k): str(v) for k, v in merged.items()}


def local_image_env(region: str) -> dict[str, str]:
    """Real image URIs from sagemaker-core (as deploy fills them); locally they only label the job."""
    try:
        from breedline.build.image_uris import resolve_images

        return resolve_images(region, training_instance_type="ml.m5.xlarge").as_env()
    except Exception as exc:  # the local runtime does not need them to run
        log.warning("could not resolve image URIs (%s); using labels", exc)
        return {
            "BREEDLINE_TRAINING_IMAGE": "local/pytorch-training:2.6",
            "BREEDLINE_INFERENCE_IMAGE": "local/pytorch-inference:2.6",
            "BREEDLINE_DEBUGGER_RULE_IMAGE": "local/debugger-rules:latest",
        }


def load_app(chalice_dir: Path = CHALICE_DIR) -> Any:
    """Import ``chalice_app/app.py`` as Lambda would, as the top-level module ``app``.

    Its folder is the code root: ``chalicelib`` and ``contract`` are importable
    from it through the project's editable install, as from the Lambda zip's root.
    """
    if "app" in sys.modules and Path(getattr(sys.modules["app"], "__file__", "")).resolve() == \
            (chalice_dir / "app.py").resolve():
        return sys.modules["app"].app
    spec = importlib.util.spec_from_file_location("app", chalice_dir / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    spec.loader.exec_module(module)
    return module.app


def start_api_server(app: Any, port: int = 0) -> tuple[Any, threading.Thread, str]:
    """Chalice's local dev server around ``app`` on loopback, serving in a thread; its URL is allowed by CORS."""
    from chalice.config import Config
    from chalice.local import CustomLocalChalice, LocalDevServer, create_local_server

    config = Config.create(chalice_stage="local", app_name="breedline", project_dir=str(CHALICE_DIR))
    if isinstance(app, CustomLocalChalice):  # served before in this process: create_local_server converts only once
        server = LocalDevServer(app, config, "127.0.0.1", port)
    else:
        server = create_local_server(app, config, "127.0.0.1", port)
    import chalice.local

    # The local server logs every request to stderr; API Gateway's access log is not wanted here.
    chalice.local.ChaliceRequestHandler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.server.serve_forever, name="predict-api", daemon=True)
    thread.start()
    host, bound = server.server.server_address[:2]
    url = f"http://{host}:{bound}"
    allow_own_origin(url, bound)
    return server, thread, url


def allow_own_origin(url: str, port: int) -> None:
    """Add the local API's own origin (as 127.0.0.1 and as localhost) to BREEDLINE_CORS_ORIGINS.

    Why after the server starts: its port is only known then, and the app reads
    the setting per request. The operator's own origins stay first.
    """
    current = [o for o in os.environ.get("BREEDLINE_CORS_ORIGINS", "").split(",") if o.strip()]
    for origin in (url, f"http://localhost:{port}"):
        if origin not in current:
            current.append(origin)
    os.environ["BREEDLINE_CORS_ORIGINS"] = ",".join(current)


@dataclass
class RuntimeInfo:
    """What ``runtime.json`` records: where everything listens, for the CLI and tests."""

    aws_url: str
    sagemaker_url: str
    api_url: str
    region: str
    bucket: str
    state_dir: str
    alert_queue_url: str
    alert_topic_arn: str
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def read(cls, state_dir: Path) -> "RuntimeInfo | None":
        path = resolve_state_dir(Path(state_dir)) / "runtime.json"
        if not path.is_file():
            return None
        try:
            info = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):  # half-written or from another version: it names no runtime we can use
            return None
        try:
            os.kill(info.pid, 0)
        except OSError:
            return None
        return info


def client_env(info: RuntimeInfo) -> dict[str, str]:
    """Environment that points boto3 at a running local runtime."""
    return {
        "AWS_ENDPOINT_URL": info.aws_url,
        "AWS_ENDPOINT_URL_SAGEMAKER": info.sagemaker_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": info.sagemaker_url,
        "AWS_DEFAULT_REGION": info.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


class LocalRuntime:
    """Starts and stops every local piece; use as a context manager."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, api_port: int = 0,
                 schedule_period: float | None = 10.0, overrides: dict[str, str] | None = None,
                 on_invoke: Callable[..., None] | None = None, fresh: bool = True,
                 job_threads: int | None = 1) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.api_port = api_port
        self.schedule_period = schedule_period
        self.overrides = overrides or {}
        self.on_invoke = on_invoke
        self.fresh = fresh
        self.job_threads = job_threads
        self.moto: MotoStandIns | None = None
        self.sagemaker: LocalSageMakerServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.api_server: Any = None
        self.api_thread: threading.Thread | None = None
        self.app: Any = None
        self.info: RuntimeInfo | None = None

    # ------------------------------------------------------------------ start
    def start(self) -> RuntimeInfo:
        """Stand-ins, configuration, local SageMaker, AWS resources, then the app: in that order."""
        if self.fresh and self.state_dir.exists():
            import shutil

            shutil.rmtree(self.state_dir)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        quiet_werkzeug()
        image_env = self._start_moto()
        env, alert_queue = self._configure(image_env)
        self._start_sagemaker()
        from chalicelib.config import Settings  # type: ignore[import-not-found]

        settings = Settings.from_env()
        self._create_resources(settings)
        api_url = self._start_app()
        assert self.moto is not None and self.sagemaker is not None
        self.info = RuntimeInfo(
            aws_url=self.moto.url, sagemaker_url=self.sagemaker.url, api_url=api_url, region=REGION,
            bucket=settings.bucket, state_dir=str(self.state_dir), alert_queue_url=alert_queue,
            alert_topic_arn=env["BREEDLINE_ALERT_TOPIC_ARN"], pid=os.getpid(), env=env,
        )
        self.info.write(self.state_dir / "runtime.json")
        return self.info

    def _start_moto(self) -> dict[str, str]:
        """Start the moto child; return the image URIs, resolved meanwhile."""
        # Resolving the image URIs imports sagemaker-core, which takes a while: do it
        # while the moto child boots instead of after.
        with ThreadPoolExecutor(max_workers=1) as pool:
            images = pool.submit(local_image_env, REGION)
            self.moto = MotoStandIns(region=REGION, in_process=False,
                                     log_path=self.state_dir / "logs" / "moto.log")
            return images.result()

    def _configure(self, image_env: dict[str, str]) -> tuple[dict[str, str], str]:
        """Put the app's configuration into the environment; return it and the alert inbox's URL.

        Configuration first: the app reads it at import, as a Lambda cold start does.
        The operator's own variables win over the ``local`` stage's values.
        """
        assert self.moto is not None
        env = {k: v for k, v in local_settings().items() if k not in os.environ}
        env.update({k: v for k, v in image_env.items() if not os.environ.get(k)})
        env.update(self.overrides)
        sqs, sns = self.moto.client("sqs"), self.moto.client("sns")
        topic, alert_queue = create_alert_topic(sns, sqs)
        env["BREEDLINE_ALERT_TOPIC_ARN"] = topic
        os.environ.update(env)
        return env, alert_queue

    def _start_sagemaker(self) -> None:
        """The local SageMaker service; then point boto3 (the app's included) at the stand-ins."""
        assert self.moto is not None
        backend = SageMakerBackend(self.state_dir, self.moto.client("s3"), self.moto.client("events"), REGION,
                                   job_threads=self.job_threads)
        if not self.fresh:  # `up --keep-state`: the jobs, models and configs of the run in this folder
            restore_state(backend, self.state_dir / "sagemaker.json")
        self.sagemaker = LocalSageMakerServer(backend).start()
        os.environ.update({
            "AWS_ENDPOINT_URL": self.moto.url,
            "AWS_ENDPOINT_URL_SAGEMAKER": self.sagemaker.url,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.sagemaker.url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "breedline")
        os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Breedline")
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)

    def _create_resources(self, settings: Any) -> None:
        """What ``infra/`` creates in AWS: the data bucket, the tables, the uploaded ``sourcedir.tar.gz``."""
        assert self.moto is not None
        s3 = self.moto.client("s3")
        create_data_bucket(s3, settings.bucket, REGION)
        try:
            from chalicelib.state import TABLE_DEFINITIONS  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError("chalice_app/chalicelib/state.py with TABLE_DEFINITIONS is missing") from exc
        create_tables(self.moto.client("dynamodb"), settings, TABLE_DEFINITIONS)
        tarball = build_sourcedir(self.state_dir / "code")
        bucket, key = split_s3_uri(settings.sourcedir_uri)
        if bucket != settings.bucket:
            create_data_bucket(s3, bucket, REGION)
        s3.upload_file(str(tarball), bucket, key)

    def _start_app(self) -> str:
        """Import the app, install its rules, start its dispatcher and its API; return the API's URL."""
        assert self.moto is not None
        self.app = load_app()
        self._route_app_logs()
        routes = install_app_rules(self.app, self.moto.client("events"), self.moto.client("sqs"))
        self.dispatcher = Dispatcher(self.app, routes, self.moto.client("sqs"), REGION,
                                     schedule_period=self.schedule_period, on_invoke=self.on_invoke).start()
        return self._start_api()

    def _route_app_logs(self) -> None:
        """The app's JSON logs and EMF metrics go to ``logs/app.log``, as CloudWatch would keep them."""
        path = self.state_dir / "logs" / "app.log"
        stream = open(path, "a", encoding="utf-8", buffering=1)
        self._app_log = stream
        for name in ("breedline", os.environ.get("POWERTOOLS_SERVICE_NAME", "breedline")):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setStream(stream)

    def _start_api(self) -> str:
        """Chalice's local dev server around the same app object: ``POST /predict`` etc."""
        self.api_server, self.api_thread, url = start_api_server(self.app, self.api_port)
        return url

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop handlers, API, every job and endpoint process, then moto (the Ctrl-C path)."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.api_server is not None:
            try:
                self.api_server.server.shutdown()
                self.api_server.server.server_close()
            except Exception:
                log.exception("API server shutdown failed")
        if self.sagemaker is not None:
            self.sagemaker.stop()
        if self.moto is not None:
            self.moto.stop()
        runtime_file = self.state_dir / "runtime.json"
        if runtime_file.exists():
            runtime_file.unlink()

    def __enter__(self) -> "LocalRuntime":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def backend(self) -> SageMakerBackend:
        assert self.sagemaker is not None
        return self.sagemaker.backend
