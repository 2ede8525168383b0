"""Local endpoints: one model server process per variant, swapped without dropping requests.

Why the swap works the way it does: SageMaker's blue/green update keeps the old
fleet serving until the new one is healthy. Here the new server is started and
must answer ``/ping`` before the variant pointer moves; requests already sent to
the old server finish (a counter tracks them) before it is stopped.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from .s3_transfers import download_prefix, extract_tarball, split_s3_uri
from .sagemaker_state import DETAIL_ENDPOINT, ENDPOINT_ROLLBACK_VARIABLE
from .sagemaker_wire import ServiceError, now

log = logging.getLogger("runtime.endpoints")
SERVE_SCRIPT = Path(__file__).with_name("serve_model.py")


def serving_env(env: dict[str, str], model_dir: Path) -> dict[str, str]:
    """``env`` with the model's ``code/`` first on ``PYTHONPATH``, as the serving container puts it.

    The server runs with ``python -P`` (its own folder is not put on the path), so
    ``code/`` comes first and ``inference.py`` imports its neighbours (``contract``
    ...) from the model archive, not from the checkout.
    """
    code = str(model_dir / "code")
    existing = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": code + os.pathsep + existing if existing else code}


class ModelServer:
    """One child process serving one model; tracks requests in flight."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.in_flight = 0
        self.cond = threading.Condition()

    def start(self, timeout: float = 120.0) -> None:
        log_file = open(self.log_path, "a", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(SERVE_SCRIPT), str(self.model_dir)],
            stdout=subprocess.PIPE, stderr=log_file, text=True, env=serving_env(self.env, self.model_dir),
            start_new_session=True,
        )
        log_file.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        # The model's own code may print first (model_fn logs to stdout, which the
        # serving container sends to CloudWatch): keep those lines, wait for ours.
        with open(self.log_path, "a", encoding="utf-8") as out:
            for line in self.process.stdout:
                if line.startswith("LISTENING "):
                    break
                out.write(line)
            else:
                self.stop()
                raise RuntimeError(f"model server did not start; see {self.log_path}")
        self.port = int(line.split()[1])
        threading.Thread(target=self._drain, daemon=True).start()
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"model server failed its /ping health check; see {self.log_path}")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as out:
            for line in self.process.stdout:
                out.write(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def acquire(self) -> None:
        """Count a request in flight; called under the host's swap lock so a swap cannot miss it."""
        with self.cond:
            self.in_flight += 1

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, dict[str, str], bytes]:
        """Forward one request; the caller has called :meth:`acquire`."""
        try:
            answer = requests.post(f"{self.url}/invocations", data=body, timeout=60,
                                   headers={"Content-Type": content_type, "Accept": accept})
            return answer.status_code, dict(answer.headers), answer.content
        finally:
            with self.cond:
                self.in_flight -= 1
                self.cond.notify_all()

    def drain_and_stop(self, timeout: float = 60.0) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.in_flight == 0, timeout=timeout)
        self.stop()

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def start_model_server(s3: Any, model: dict, folder: Path, extra_env: dict[str, str] | None = None) -> ModelServer:
    """Download ``model``'s data into ``folder`` and start a :class:`ModelServer` on it, ready to serve.

    Why one function: endpoints and batch transform jobs must serve a model the
    same way (its ``model.tar.gz`` unpacked, its own ``code/``, its container's
    ``Environment``). A transform job adds its own ``Environment`` on top
    (``extra_env``), as SageMaker passes it to the container.
    """
    container = model.get("PrimaryContainer") or model["Containers"][0]
    archive = folder / "model.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    bucket, key = split_s3_uri(container["ModelDataUrl"])
    if key.endswith(".tar.gz"):
        s3.download_file(bucket, key, str(archive))
        extract_tarball(archive, folder / "model")
    else:
        download_prefix(s3, container["ModelDataUrl"], folder / "model")
    env = dict(os.environ)
    env.update(container.get("Environment", {}))
    env.update(extra_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    for key_name in [k for k in env if k.startswith("AWS_ENDPOINT_URL")]:
        env.pop(key_name)
    server = ModelServer(folder / "model", folder / "server.log", env)
    server.start()
    return server


class EndpointHost:
    """The serving side of one endpoint: its current variant servers and deployments."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name
        self.root = backend.state_dir / "endpoints" / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, ModelServer] = {}  # variant name -> server
        self.weights: dict[str, float] = {}
        self.swap_lock = threading.Lock()
        self.deploy_thread: threading.Thread | None = None
        self.generation = 0

    def emit(self) -> None:
        """Put the documented ``SageMaker Endpoint State Change`` event (status spelled as in AWS's example)."""
        spelled = {"InService": "IN_SERVICE", "Creating": "CREATING", "Updating": "UPDATING", "Failed": "FAILED",
                   "Deleting": "DELETING", "RollingBack": "ROLLING_BACK", "SystemUpdating": "SYSTEM_UPDATING",
                   "OutOfService": "OUT_OF_SERVICE", "UpdateRollbackFailed": "UPDATE_ROLLBACK_FAILED"}
        with self.backend.lock:
            endpoint = copy.deepcopy(self.backend.endpoints.get(self.name))
            if endpoint is None:
                return
            detail = {
                "EndpointName": endpoint["EndpointName"],
                "EndpointArn": endpoint["EndpointArn"],
                "EndpointConfigName": endpoint["EndpointConfigName"],
                "ProductionVariants": endpoint.get("ProductionVariants", []),
                "EndpointStatus": spelled.get(endpoint["EndpointStatus"], endpoint["EndpointStatus"]),
                "CreationTime": endpoint["CreationTime"],
                "LastModifiedTime": endpoint["LastModifiedTime"],
                "Tags": self.backend.tag_dict(endpoint["EndpointArn"]),
            }
            if "FailureReason" in endpoint:
                detail["FailureReason"] = endpoint["FailureReason"]
        self.backend.emit(DETAIL_ENDPOINT, detail, detail["EndpointArn"])

    def deploy(self, config_name: str, update: bool) -> None:
        self.deploy_thread = threading.Thread(target=self._deploy, args=(config_name, update),
                                              name=f"endpoint-{self.name}", daemon=True)
        self.deploy_thread.start()

    def _start_variant(self, variant: dict, generation: int) -> ModelServer:
        with self.backend.lock:
            model = copy.deepcopy(self.backend.models[variant["ModelName"]])
        folder = self.root / f"{generation:03d}-{variant['VariantName']}"
        return start_model_server(self.backend.s3, model, folder)

    def _deploy(self, config_name: str, update: bool) -> None:
        with self.backend.lock:
            config = copy.deepcopy(self.backend.endpoint_configs[config_name])
            self.generation += 1
            generation = self.generation
        started: dict[str, ModelServer] = {}
        try:
            for variant in config["ProductionVariants"]:
                if self.backend.closing.is_set():
                    raise RuntimeError("runtime is shutting down")
                started[variant["VariantName"]] = self._start_variant(variant, generation)
            if update and self.backend.endpoint_rollback:
                raise RuntimeError(f"the new fleet failed its health check ({ENDPOINT_ROLLBACK_VARIABLE}=1)")
        except Exception as exc:
            log.exception("endpoint %s: deployment of %s failed", self.name, config_name)
            for server in started.values():
                server.stop()
            with self.backend.lock:
                endpoint = self.backend.endpoints.get(self.name)
                if endpoint is None:
                    return
                endpoint["FailureReason"] = f"{type(exc).__name__}: {exc}"
                rolling_back = update and bool(self.servers)
                endpoint["EndpointStatus"] = "RollingBack" if rolling_back else "Failed"
                endpoint["LastModifiedTime"] = now()
            self.backend.changed()
            self.emit()
            if not rolling_back:
                return
            # A failed update leaves the old fleet serving, as blue/green rollback does.
            with self.backend.lock:
                endpoint = self.backend.endpoints.get(self.name)
                if endpoint is None:
                    return
                endpoint["EndpointStatus"] = "InService"
                endpoint["LastModifiedTime"] = now()
            self.backend.changed()
            self.emit()
            return
        with self.swap_lock:
            old = self.servers
            self.servers = started
            self.weights = {v["VariantName"]: float(v.get("InitialVariantWeight", 1.0))
                            for v in config["ProductionVariants"]}
        with self.backend.lock:
            endpoint = self.backend.endpoints.get(self.name)
            if endpoint is not None:
                endpoint["EndpointConfigName"] = config_name
                endpoint["EndpointStatus"] = "InService"
                endpoint["LastModifiedTime"] = now()
                endpoint["ProductionVariants"] = [
                    {
                        "VariantName": v["VariantName"],
                        "DeployedImages": [{
                            "SpecifiedImage": (self.backend.models[v["ModelName"]].get("PrimaryContainer") or {})
                            .get("Image", "local"),
                            "ResolutionTime": now(),
                        }],
                        "CurrentWeight": float(v.get("InitialVariantWeight", 1.0)),
                        "DesiredWeight": float(v.get("InitialVariantWeight", 1.0)),
                        "CurrentInstanceCount": int(v.get("InitialInstanceCount", 1)),
                        "DesiredInstanceCount": int(v.get("InitialInstanceCount", 1)),
                    }
                    for v in config["ProductionVariants"]
                ]
        self.backend.changed()
        self.emit()
        for server in old.values():
            server.drain_and_stop()

    def invoke(self, params: dict) -> tuple[int, dict[str, str], bytes, str]:
        with self.swap_lock:
            servers = dict(self.servers)
            if not servers:
                raise ServiceError("ValidationError", f"Endpoint {self.name} is not ready to serve requests yet.")
            variant = params.get("TargetVariant")
            if variant is None:
                names = sorted(servers)
                variant = random.choices(names, weights=[self.weights.get(n, 1.0) or 0.0001 for n in names])[0]
            if variant not in servers:
                raise ServiceError("ValidationError", f"Variant {variant} is not part of endpoint {self.name}.")
            servers[variant].acquire()
        status, headers, body = servers[variant].invoke(
            params["Body"], params.get("ContentType", "application/octet-stream"),
            params.get("Accept", "application/json"))
        return status, headers, body, variant

    def shutdown(self) -> None:
        with self.swap_lock:
            servers = list(self.servers.values())
            self.servers = {}
        for server in servers:
            server.stop()
