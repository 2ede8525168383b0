"""One local training job: a child process under SageMaker's container contract.

Why a real process with the real folders: the same ``train.py`` runs in the AWS
PyTorch container, so locally it must see the same world. The runtime plays the
platform: it lays out ``.breedline/jobs/<job>/`` as the container's ``/opt/ml``
(channels under ``input/data/<channel>``, ``input/config/hyperparameters.json``,
``inputdataconfig.json``, ``debughookconfig.json``), then starts AWS's own
training toolkit on it (:mod:`.training_launch`), which downloads the source
dir, installs its requirements, parses the hyperparameters, sets ``SM_*`` and
runs the script, exactly as in the image. Afterwards the runtime uploads what
SageMaker uploads and reads ``output/failure`` as ``FailureReason``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from contract import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    STOPPED,
    STOPPING,
    TERMINAL_STATUSES,
    decode_hyperparameter,
    parse_metrics,
)

from .s3_transfers import download_prefix, make_tarball, split_s3_uri, upload_tree
from .sagemaker_state import DETAIL_TRAINING
from .sagemaker_wire import now
from .training_hosts import (
    MASTER_PORT_LOCK,
    HostProcess,
    distributed_environment,
    failure_reason,
    host_command,
    host_names,
    host_roots,
    merge_into,
    replicate_channels,
    resource_config,
    stop_all,
    supervise,
    wants_framework_module,
)
from .training_launch import LEDGER, container_paths, toolkit_command, toolkit_environment

log = logging.getLogger("runtime.training")

#: Secondary statuses that end a job (their transition gets an ``EndTime`` at once).
FINAL_SECONDARY_STATUSES: tuple[str, ...] = (
    *TERMINAL_STATUSES, "MaxRuntimeExceeded", "MaxWaitTimeExceeded", "Interrupted",
)


class TrainingRun:
    """Runs one job in a thread: download, train, upload, with SageMaker's status transitions."""

    def __init__(self, backend: Any, name: str, threads: int | None = None) -> None:
        self.backend = backend
        self.name = name
        self.root = backend.job_dir(name)
        self.threads = threads
        self.process: Any = None  # algo-1's Popen
        self.hosts: list[HostProcess] = []
        self.stop_requested = threading.Event()
        self.stop_reason = STOPPED
        self.thread = threading.Thread(target=self._run, name=f"training-{name}", daemon=True)
        self.done = threading.Event()
        self.history: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        return f"TrainingRun({self.name})"

    # --------------------------------------------------------------- state
    @property
    def job(self) -> dict:
        return self.backend.training_jobs[self.name]

    def transition(self, secondary: str, message: str, status: str | None = None, emit: bool = True) -> None:
        """Record a SecondaryStatus transition (closing the previous one) and emit the state event."""
        stamp = now()
        with self.backend.lock:
            job = self.job
            transitions = job["SecondaryStatusTransitions"]
            if transitions and "EndTime" not in transitions[-1]:
                transitions[-1]["EndTime"] = stamp
            transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
            if secondary in FINAL_SECONDARY_STATUSES:
                transitions[-1]["EndTime"] = stamp
            job["SecondaryStatus"] = secondary
            if status is not None:
                job["TrainingJobStatus"] = status
            job["LastModifiedTime"] = stamp
        if emit:
            self.emit()
        self.backend.changed()

    def emit(self) -> None:
        """Put the documented ``SageMaker Training Job State Change`` event."""
        keys = ("TrainingJobName", "TrainingJobArn", "TrainingJobStatus", "SecondaryStatus", "HyperParameters",
                "AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                "StoppingCondition", "CreationTime", "TrainingStartTime", "TrainingEndTime", "LastModifiedTime",
                "SecondaryStatusTransitions", "ModelArtifacts", "FailureReason", "TuningJobArn",
                "EnableManagedSpotTraining", "CheckpointConfig", "DebugHookConfig", "ProfilerConfig",
                "FinalMetricDataList")
        with self.backend.lock:
            job = self.job
            detail = {k: copy.deepcopy(job[k]) for k in keys if k in job}
            detail["Tags"] = self.backend.tag_dict(job["TrainingJobArn"])
            arn = job["TrainingJobArn"]
        self.backend.emit(DETAIL_TRAINING, detail, arn)

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def stop(self, quiet: bool = False, reason: str = STOPPED) -> None:
        """Ask the job to stop: SIGTERM to the process group, SIGKILL after a grace period."""
        self.stop_reason = reason
        self.stop_requested.set()
        if not quiet and self.job["TrainingJobStatus"] == IN_PROGRESS:
            self.transition("Stopping", "Stopping the training job", status=STOPPING)
        self._terminate()

    def _terminate(self) -> None:
        """SIGTERM to every host's process group, SIGKILL after a grace period."""
        stop_all(list(self.hosts))

    # ---------------------------------------------------------------- run
    def _run(self) -> None:
        try:
            self._run_inner()
        except Exception as exc:  # any local failure is the job's failure, never a hang
            log.exception("training job %s failed in the runtime", self.name)
            self._finish(FAILED, f"ClientError: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def _run_inner(self) -> None:
        """Downloading, Training, Uploading, then the end state: the job's whole life."""
        hosts = host_names(int(self.job["ResourceConfig"].get("InstanceCount", 1)))
        paths = {host: container_paths(root) for host, root in host_roots(self.root, hosts).items()}
        first = paths[hosts[0]]
        with self.backend.lock:
            self.job["TrainingStartTime"] = now()
        self.transition("Downloading", "Downloading input data")
        hyper = dict(self.job.get("HyperParameters", {}))
        input_config = self._download_channels(first)
        if input_config is None:
            return
        source = self._check_code(hyper)
        if source is None:
            return
        try:
            for host in hosts[1:]:
                replicate_channels(first["data"], paths[host]["data"], input_config)
        except ValueError as exc:
            return self._finish(FAILED, f"ClientError: {exc}")
        checkpoint = self.job.get("CheckpointConfig")
        for host in hosts:  # SageMaker restores the checkpoints to every instance
            if checkpoint:
                download_prefix(self.backend.s3, checkpoint["S3Uri"], paths[host]["checkpoints"])
            self._write_input_config(paths[host], hyper, input_config, host, hosts)
        if self.stop_requested.is_set():
            return self._finish(STOPPED)

        self.transition("Training", "Training image download completed. Training in progress.")
        failed = self._train(paths, hyper, source)
        if self.stop_requested.is_set():
            self._upload(paths, model=False)
            return self._finish(STOPPED, secondary=self.stop_reason)
        if failed is not None:
            # The script's own failure file, else the toolkit's (it writes one only if none exists).
            reason = failure_reason(failed, paths[failed.host]["output"] / "failure", hosts)
            self._upload(paths, model=False)
            return self._finish(FAILED, reason)
        LEDGER.record(*source)
        self.transition("Uploading", "Uploading generated training model")
        self._upload(paths, model=True)
        self._finish(COMPLETED)

    def _download_channels(self, paths: dict[str, Path]) -> dict[str, dict] | None:
        """Channels, exactly as File mode lays them out; the ``inputdataconfig.json`` entries, or None if failed."""
        job = self.job
        input_config: dict[str, dict] = {}
        for channel in job.get("InputDataConfig", []):
            source = channel["DataSource"].get("S3DataSource")
            if source is None:
                raise RuntimeError(f"channel {channel['ChannelName']}: only S3DataSource is supported locally")
            count = download_prefix(self.backend.s3, source["S3Uri"], paths["data"] / channel["ChannelName"],
                                    cache=self.backend.state_dir / "cache" / "s3")
            if count == 0:
                self._finish(FAILED, f"ClientError: No objects found under {source['S3Uri']} "
                                     f"(channel {channel['ChannelName']})")
                return None
            input_config[channel["ChannelName"]] = {
                "TrainingInputMode": channel.get("InputMode", job["AlgorithmSpecification"].get("TrainingInputMode")),
                "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
                "RecordWrapperType": channel.get("RecordWrapperType", "None"),
            }
        return input_config

    def _check_code(self, hyper: dict[str, str]) -> tuple[str, str] | None:
        """The source dir's S3 URI and ETag, or None (job failed) when script mode cannot start.

        The toolkit downloads and unpacks the source dir itself; this only turns
        a missing hyperparameter or object into a clear ``ClientError`` first.
        """
        submit = decode_hyperparameter(hyper.get("sagemaker_submit_directory", '""'))
        program = decode_hyperparameter(hyper.get("sagemaker_program", '""'))
        if not submit or not program:
            self._finish(FAILED, "ClientError: script mode needs the hyperparameters sagemaker_program "
                                 "and sagemaker_submit_directory")
            return None
        try:
            bucket, key = split_s3_uri(str(submit))
            etag = self.backend.s3.head_object(Bucket=bucket, Key=key)["ETag"]
        except Exception as exc:  # noqa: BLE001 - a bad URI or a missing object: the job's ClientError
            self._finish(FAILED, f"ClientError: cannot download {submit}: {exc}")
            return None
        return str(submit), str(etag)

    def _write_input_config(self, paths: dict[str, Path], hyper: dict[str, str],
                            input_config: dict[str, dict], host: str, hosts: list[str]) -> None:
        """One host's ``input/config``, as the platform writes it."""
        job = self.job
        (paths["config"] / "hyperparameters.json").write_text(json.dumps(hyper, indent=2))
        (paths["config"] / "inputdataconfig.json").write_text(json.dumps(input_config, indent=2))
        (paths["config"] / "resourceconfig.json").write_text(json.dumps(
            resource_config(host, hosts, job["ResourceConfig"].get("InstanceType", "local")), indent=2))
        debug = job.get("DebugHookConfig")
        if debug:
            hook = {
                "LocalPath": str(paths["debug"]),
                "S3OutputPath": debug["S3OutputPath"],
                "HookParameters": debug.get("HookParameters", {}),
                "CollectionConfigurations": debug.get("CollectionConfigurations", []),
            }
            (paths["config"] / "debughookconfig.json").write_text(json.dumps(hook, indent=2))
        if job.get("ProfilerConfig"):
            (paths["config"] / "profilerconfig.json").write_text(json.dumps(job["ProfilerConfig"], indent=2))

    def _train(self, paths: dict[str, dict[str, Path]], hyper: dict[str, str],
               source: tuple[str, str]) -> HostProcess | None:
        """Run the training toolkit on every host's folder; the failed host, or None when all succeeded."""
        hosts = list(paths)
        definitions = self.job["AlgorithmSpecification"].get("MetricDefinitions", [])
        for definition in definitions:  # a regex that does not compile fails the job before it starts
            re.compile(definition["Regex"])
        processes = []
        for host in hosts:
            root = paths[host]["input"].parent
            env = toolkit_environment(os.environ, root, self.name, s3_endpoint=self.backend.s3.meta.endpoint_url,
                                      region=self.backend.region, threads=self.threads,
                                      skip_dependency_walk=LEDGER.installed(*source))
            if wants_framework_module(hyper, hosts):
                env = distributed_environment(env, self.root / "bin", hosts)
            command = host_command(toolkit_command(), hosts, paths[host]["config"] / "hosts")
            processes.append(HostProcess(host, command, root, env, paths[host]["logs"],
                                         lambda line: self._parse_metrics(line, definitions)))
        deadline = time.monotonic() + self.job["StoppingCondition"].get("MaxRuntimeInSeconds", 86400)
        port = MASTER_PORT_LOCK if len(hosts) > 1 else contextlib.nullcontext()
        with port:
            if self.stop_requested.is_set():
                return None
            self.hosts = processes
            for process in processes:
                process.start()
            self.process = processes[0].popen
            watchdog = threading.Thread(target=self._watch_runtime, args=(deadline,), daemon=True)
            watchdog.start()
            return supervise(processes)

    def _watch_runtime(self, deadline: float) -> None:
        while any(not process.exited.is_set() for process in self.hosts):
            if time.monotonic() > deadline:
                self.stop(quiet=True, reason="MaxRuntimeExceeded")
                return
            time.sleep(0.5)

    def _parse_metrics(self, line: str, definitions: list[dict[str, str]]) -> None:
        """Apply the job's own MetricDefinitions; keep the latest value as SageMaker does.

        One definition at a time, so a definition whose regex has no number to
        capture is skipped without hiding the others on the same line.
        """
        updates = {}
        for definition in definitions:
            try:
                values = parse_metrics(line, [definition]).get(definition["Name"])
            except (IndexError, ValueError):
                continue
            if values:
                updates[definition["Name"]] = values[0]
        if not updates:
            return
        stamp = now()
        with self.backend.lock:
            current = {m["MetricName"]: m for m in self.job.get("FinalMetricDataList", [])}
            for name, value in updates.items():
                current[name] = {"MetricName": name, "Value": value, "Timestamp": stamp}
                self.history.setdefault(name, []).append(value)
            self.job["FinalMetricDataList"] = list(current.values())

    def _upload(self, hosts: dict[str, dict[str, Path]], model: bool) -> None:
        """Upload model, output, Debugger tensors, profiler output and checkpoints as SageMaker does.

        With several hosts, every host's ``model`` and ``output/data`` go into
        the one tarball each (SageMaker aggregates them; names must not clash),
        and every host's tensors and checkpoints sync to the same prefixes.
        """
        s3 = self.backend.s3
        job = self.job
        base = job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{self.name}"
        paths, others = next(iter(hosts.values())), list(hosts.values())[1:]
        for folder in ("model", "output_data"):
            clashes = merge_into(paths[folder], [other[folder] for other in others])
            if clashes:
                log.warning("training job %s: hosts wrote the same %s files, algo-1's kept: %s",
                            self.name, folder, clashes[:10])
        try:
            if model:
                tarball = make_tarball(paths["model"], paths["output"] / "model.tar.gz")
                bucket, key = split_s3_uri(f"{base}/output/model.tar.gz")
                s3.upload_file(str(tarball), bucket, key)
                with self.backend.lock:
                    job["ModelArtifacts"] = {"S3ModelArtifacts": f"{base}/output/model.tar.gz"}
            if any(paths["output_data"].iterdir()):
                tarball = make_tarball(paths["output_data"], paths["output"] / "output.tar.gz")
                bucket, key = split_s3_uri(f"{base}/output/output.tar.gz")
                s3.upload_file(str(tarball), bucket, key)
            debug = job.get("DebugHookConfig")
            for host_paths in hosts.values() if debug else ():
                upload_tree(s3, host_paths["debug"], debug["S3OutputPath"].rstrip("/") + f"/{self.name}/debug-output")
            profiler = job.get("ProfilerConfig")
            if profiler and profiler.get("S3OutputPath"):
                upload_tree(s3, paths["output_data"] / "profiler",
                            profiler["S3OutputPath"].rstrip("/") + f"/{self.name}/profiler-output")
            checkpoint = job.get("CheckpointConfig")
            for host_paths in hosts.values() if checkpoint else ():
                upload_tree(s3, host_paths["checkpoints"], checkpoint["S3Uri"])
        except Exception:
            log.exception("upload of %s output failed", self.name)
            raise

    def _finish(self, status: str, reason: str | None = None, secondary: str | None = None) -> None:
        stamp = now()
        with self.backend.lock:
            job = self.job
            if job["TrainingJobStatus"] in TERMINAL_STATUSES:
                return
            job["TrainingEndTime"] = stamp
            job.setdefault("TrainingStartTime", stamp)
            seconds = max(1, int((stamp - job["TrainingStartTime"]).total_seconds()))
            job["TrainingTimeInSeconds"] = seconds
            job["BillableTimeInSeconds"] = seconds
            if reason:
                job["FailureReason"] = reason
        message = {COMPLETED: "Training job completed", FAILED: reason or "Training job failed",
                   STOPPED: "Training job stopped"}[status]
        self.transition(secondary or status, message, status=status)
        log.info("training job %s %s%s", self.name, status, f": {reason}" if reason else "")

    def metric(self, name: str) -> float | None:
        with self.backend.lock:
            for item in self.job.get("FinalMetricDataList", []):
                if item["MetricName"] == name:
                    return float(item["Value"])
        return None
