"""A local SageMaker service: the wire protocols boto3 speaks, backed by real processes.

Why it exists: moto's SageMaker completes jobs instantly with fake results and
lacks several calls the pipeline needs (see DESIGN.md). This service answers
the ``sagemaker`` JSON 1.1 API (``X-Amz-Target: SageMaker.<Op>``) and the
``sagemaker-runtime`` ``InvokeEndpoint`` REST call on loopback, validates every
request against botocore's model of the real service, and really runs the work:
training jobs are child processes under the container contract, tuning jobs run
Optuna-driven trials, endpoints are HTTP servers around ``inference.py``. Every
state change is put on the local EventBridge in SageMaker's documented shape.

boto3 reaches it through ``AWS_ENDPOINT_URL_SAGEMAKER`` and
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (both point at the same server).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .common import ServiceError, event_json, in_use, not_found, now, validation, wire_json
from .validation import validate_request, validate_response

log = logging.getLogger("runtime.sagemaker")

TERMINAL = {"Completed", "Failed", "Stopped"}

DETAIL_TRAINING = "SageMaker Training Job State Change"
DETAIL_TUNING = "SageMaker HyperParameter Tuning Job State Change"
DETAIL_ENDPOINT = "SageMaker Endpoint State Change"


class SageMakerBackend:
    """All resources of one local account and region, and the operations on them."""

    def __init__(
        self,
        state_dir: Path,
        s3: Any,
        events: Any | None,
        region: str = "us-east-1",
        account: str = "123456789012",
        event_bus: str = "default",
        job_threads: int | None = 1,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.s3 = s3
        self.events = events
        self.region = region
        self.account = account
        self.event_bus = event_bus
        # Threads per training process (OMP_NUM_THREADS). One by default: measured here, a 2-thread
        # torch job on a busy 2-core machine ran an epoch 8x slower than a 1-thread one (spinning
        # OpenMP threads); None leaves torch's default.
        self.job_threads = job_threads
        self.lock = threading.RLock()
        self.training_jobs: dict[str, dict] = {}
        self.tuning_jobs: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.endpoint_configs: dict[str, dict] = {}
        self.endpoints: dict[str, dict] = {}
        self.tags: dict[str, list[dict]] = {}
        self.runners: dict[str, Any] = {}  # job name -> TrainingRun / TuningRun
        self.hosts: dict[str, Any] = {}  # endpoint name -> EndpointHost
        self.emitted: list[dict] = []  # every event put, for tests and the report
        self.listeners: list[Callable[[str, dict], None]] = []
        self.closing = threading.Event()

    # ------------------------------------------------------------------ helpers
    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def job_dir(self, name: str) -> Path:
        path = self.state_dir / "jobs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def tag_dict(self, arn: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.tags.get(arn, [])}

    def emit(self, detail_type: str, detail: dict, resource_arn: str) -> None:
        """Put one state-change event on the local EventBridge, as SageMaker does."""
        body = event_json(detail)
        record = {"detail-type": detail_type, "detail": body, "resources": [resource_arn]}
        with self.lock:
            self.emitted.append(record)
            with open(self.state_dir / "events.jsonl", "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        for listener in list(self.listeners):
            try:
                listener(detail_type, body)
            except Exception:  # a progress printer must never break the service
                log.exception("event listener failed")
        if self.events is None:
            return
        try:
            answer = self.events.put_events(
                Entries=[
                    {
                        "Source": "aws.sagemaker",
                        "DetailType": detail_type,
                        "Detail": json.dumps(body),
                        "Resources": [resource_arn],
                        "EventBusName": self.event_bus,
                    }
                ]
            )
            if answer.get("FailedEntryCount"):
                log.error("EventBridge refused %s: %s", detail_type, answer)
        except Exception:
            log.exception("could not put %s on EventBridge", detail_type)

    def _save_state(self) -> None:
        """Write a JSON snapshot of every resource, so a run can be inspected afterwards.

        Snapshot and write happen under the backend lock: two threads sharing the
        temporary file raced (one renamed it away under the other), and an older
        snapshot could overwrite a newer one.
        """
        with self.lock:
            snapshot = {
                "training_jobs": self.training_jobs,
                "tuning_jobs": self.tuning_jobs,
                "models": self.models,
                "endpoint_configs": self.endpoint_configs,
                "endpoints": self.endpoints,
                "tags": self.tags,
            }
            text = wire_json(snapshot)
            tmp = self.state_dir / "sagemaker.json.tmp"
            tmp.write_text(text)
            tmp.replace(self.state_dir / "sagemaker.json")

    def changed(self) -> None:
        try:
            self._save_state()
        except Exception:
            log.exception("could not save state")

    def _add_tags(self, arn: str, tags: list[dict] | None) -> None:
        if not tags:
            return
        current = {t["Key"]: t for t in self.tags.get(arn, [])}
        for tag in tags:
            current[tag["Key"]] = {"Key": tag["Key"], "Value": tag.get("Value", "")}
        self.tags[arn] = list(current.values())

    # ------------------------------------------------------------ training jobs
    def CreateTrainingJob(self, p: dict, tuning: dict | None = None, threads: int | None = None) -> dict:
        from .training import TrainingRun

        name = p["TrainingJobName"]
        with self.lock:
            if name in self.training_jobs:
                raise in_use(f"Training job {name} already exists")
            spec = p["AlgorithmSpecification"]
            if not spec.get("TrainingImage") and not spec.get("AlgorithmName"):
                raise validation("AlgorithmSpecification needs TrainingImage or AlgorithmName")
            if p.get("EnableManagedSpotTraining") and "MaxWaitTimeInSeconds" not in p["StoppingCondition"]:
                raise validation("MaxWaitTimeInSeconds is required for managed spot training")
            wait = p["StoppingCondition"].get("MaxWaitTimeInSeconds")
            if wait is not None and wait < p["StoppingCondition"].get("MaxRuntimeInSeconds", 86400):
                raise validation("MaxWaitTimeInSeconds must be >= MaxRuntimeInSeconds")
            arn = self.arn("training-job", name)
            created = now()
            job = copy.deepcopy(p)
            job.pop("Tags", None)
            job.update(
                TrainingJobArn=arn,
                TrainingJobStatus="InProgress",
                SecondaryStatus="Starting",
                ModelArtifacts={"S3ModelArtifacts": ""},
                CreationTime=created,
                LastModifiedTime=created,
                SecondaryStatusTransitions=[],
            )
            job.setdefault("HyperParameters", {})
            if tuning is not None:
                job["TuningJobArn"] = tuning["HyperParameterTuningJobArn"]
            self.training_jobs[name] = job
            self._add_tags(arn, p.get("Tags"))
            if self.job_threads is not None:
                threads = min(threads or self.job_threads, self.job_threads)
            run = TrainingRun(self, name, threads=threads)
            self.runners[name] = run
        run.transition("Starting", "Launching requested ML instances")
        run.start()
        return {"TrainingJobArn": arn}

    def _training(self, name: str) -> dict:
        job = self.training_jobs.get(name)
        if job is None:
            raise not_found(f"Requested resource not found: training job {name}")
        return job

    def DescribeTrainingJob(self, p: dict) -> dict:
        with self.lock:
            return copy.deepcopy(self._training(p["TrainingJobName"]))

    def StopTrainingJob(self, p: dict) -> dict:
        with self.lock:
            job = self._training(p["TrainingJobName"])
            if job["TrainingJobStatus"] != "InProgress":
                raise validation(f"The job status is {job['TrainingJobStatus']}: only InProgress jobs can be stopped")
            run = self.runners.get(p["TrainingJobName"])
        if run is not None:
            run.stop()
        return {}

    @staticmethod
    def _listing(items: list[dict], p: dict, name_key: str, status_key: str, sort_keys: dict[str, str]) -> list[dict]:
        if "NameContains" in p:
            items = [i for i in items if p["NameContains"].lower() in i[name_key].lower()]
        if "StatusEquals" in p:
            items = [i for i in items if i[status_key] == p["StatusEquals"]]
        for field, op in (("CreationTimeAfter", "gt"), ("CreationTimeBefore", "lt")):
            if field in p:
                bound = dt.datetime.fromtimestamp(float(p[field]), dt.timezone.utc)
                items = [i for i in items if (i["CreationTime"] > bound if op == "gt" else i["CreationTime"] < bound)]
        key = sort_keys.get(p.get("SortBy", "CreationTime"), "CreationTime")
        reverse = p.get("SortOrder", "Descending" if key == "CreationTime" else "Ascending") == "Descending"
        items = sorted(items, key=lambda i: (i.get(key) is None, i.get(key)), reverse=reverse)
        if "MaxResults" in p:
            items = items[: p["MaxResults"]]
        return items

    def ListTrainingJobs(self, p: dict) -> dict:
        with self.lock:
            jobs = [j for j in self.training_jobs.values()]
            picked = self._listing(jobs, p, "TrainingJobName", "TrainingJobStatus",
                                   {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"})
            summaries = [
                {k: j[k] for k in ("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingEndTime",
                                   "LastModifiedTime", "TrainingJobStatus") if k in j}
                for j in picked
            ]
        return {"TrainingJobSummaries": summaries}

    # -------------------------------------------------------------- tuning jobs
    def CreateHyperParameterTuningJob(self, p: dict) -> dict:
        from .tuning import TuningRun

        name = p["HyperParameterTuningJobName"]
        with self.lock:
            if name in self.tuning_jobs:
                raise in_use(f"Tuning job {name} already exists")
            if "TrainingJobDefinition" not in p:
                raise validation("TrainingJobDefinition is required (TrainingJobDefinitions is not supported locally)")
            config = p["HyperParameterTuningJobConfig"]
            definition = p["TrainingJobDefinition"]
            objective = config.get("HyperParameterTuningJobObjective")
            if objective is None:
                raise validation("HyperParameterTuningJobObjective is required")
            metric_names = {m["Name"] for m in definition["AlgorithmSpecification"].get("MetricDefinitions", [])}
            if objective["MetricName"] not in metric_names:
                raise validation(f"The objective metric {objective['MetricName']} is not in the MetricDefinitions")
            limits = config["ResourceLimits"]
            if limits.get("MaxParallelTrainingJobs", 1) > limits.get("MaxNumberOfTrainingJobs", 1):
                raise validation("MaxParallelTrainingJobs cannot exceed MaxNumberOfTrainingJobs")
            ranges = config.get("ParameterRanges", {})
            tuned = [r["Name"] for kind in ranges.values() for r in kind]
            static = definition.get("StaticHyperParameters", {})
            clash = sorted(set(tuned) & set(static))
            if clash:
                raise validation(f"Hyperparameters {clash} are both static and tuned")
            if not tuned:
                raise validation("ParameterRanges must name at least one hyperparameter")
            arn = self.arn("hyper-parameter-tuning-job", name)
            created = now()
            job = copy.deepcopy(p)
            job.pop("Tags", None)
            job.update(
                HyperParameterTuningJobArn=arn,
                HyperParameterTuningJobStatus="InProgress",
                CreationTime=created,
                LastModifiedTime=created,
                TrainingJobStatusCounters={"Completed": 0, "InProgress": 0, "RetryableError": 0,
                                           "NonRetryableError": 0, "Stopped": 0},
                ObjectiveStatusCounters={"Succeeded": 0, "Pending": 0, "Failed": 0},
            )
            self.tuning_jobs[name] = job
            self._add_tags(arn, p.get("Tags"))
            run = TuningRun(self, name)
            self.runners[name] = run
        run.emit()
        run.start()
        return {"HyperParameterTuningJobArn": arn}

    def _tuning(self, name: str) -> dict:
        job = self.tuning_jobs.get(name)
        if job is None:
            raise not_found(f"Amazon SageMaker can't find a tuning job with name {name}")
        return job

    def DescribeHyperParameterTuningJob(self, p: dict) -> dict:
        with self.lock:
            return copy.deepcopy(self._tuning(p["HyperParameterTuningJobName"]))

    def StopHyperParameterTuningJob(self, p: dict) -> dict:
        with self.lock:
            job = self._tuning(p["HyperParameterTuningJobName"])
            if job["HyperParameterTuningJobStatus"] != "InProgress":
                raise validation(f"The tuning job is {job['HyperParameterTuningJobStatus']}")
            job["HyperParameterTuningJobStatus"] = "Stopping"
            run = self.runners.get(p["HyperParameterTuningJobName"])
        if run is not None:
            run.stop()
        return {}

    def ListHyperParameterTuningJobs(self, p: dict) -> dict:
        keys = ("HyperParameterTuningJobName", "HyperParameterTuningJobArn", "HyperParameterTuningJobStatus",
                "CreationTime", "HyperParameterTuningEndTime", "LastModifiedTime", "TrainingJobStatusCounters",
                "ObjectiveStatusCounters")
        with self.lock:
            picked = self._listing(list(self.tuning_jobs.values()), p, "HyperParameterTuningJobName",
                                   "HyperParameterTuningJobStatus",
                                   {"Name": "HyperParameterTuningJobName", "Status": "HyperParameterTuningJobStatus",
                                    "CreationTime": "CreationTime"})
            out = []
            for job in picked:
                summary = {k: job[k] for k in keys if k in job}
                summary["Strategy"] = job["HyperParameterTuningJobConfig"]["Strategy"]
                summary["ResourceLimits"] = job["HyperParameterTuningJobConfig"]["ResourceLimits"]
                out.append(summary)
        return {"HyperParameterTuningJobSummaries": out}

    def ListTrainingJobsForHyperParameterTuningJob(self, p: dict) -> dict:
        with self.lock:
            tuning = self._tuning(p["HyperParameterTuningJobName"])
            run = self.runners.get(p["HyperParameterTuningJobName"])
            summaries = run.summaries() if run is not None else []
        if "StatusEquals" in p:
            summaries = [s for s in summaries if s["TrainingJobStatus"] == p["StatusEquals"]]
        sort_by = p.get("SortBy", "Name")
        if sort_by == "FinalObjectiveMetricValue":
            minimize = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Minimize"
            scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
            rest = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" not in s]
            scored.sort(key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
                        reverse=(p.get("SortOrder", "Ascending" if minimize else "Descending") == "Descending"))
            summaries = scored + rest
        else:
            key = {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"}[sort_by]
            summaries.sort(key=lambda s: s[key], reverse=p.get("SortOrder", "Ascending") == "Descending")
        if "MaxResults" in p:
            summaries = summaries[: p["MaxResults"]]
        return {"TrainingJobSummaries": summaries}

    # ------------------------------------------------------------------- models
    def CreateModel(self, p: dict) -> dict:
        name = p["ModelName"]
        with self.lock:
            if name in self.models:
                raise validation(f'Cannot create already existing model "{self.arn("model", name)}".')
            container = p.get("PrimaryContainer") or (p.get("Containers") or [None])[0]
            if container is None or not container.get("ModelDataUrl"):
                raise validation("The model needs a PrimaryContainer with a ModelDataUrl locally")
            arn = self.arn("model", name)
            model = copy.deepcopy(p)
            model.pop("Tags", None)
            model.update(ModelArn=arn, CreationTime=now())
            self.models[name] = model
            self._add_tags(arn, p.get("Tags"))
        return {"ModelArn": arn}

    def DescribeModel(self, p: dict) -> dict:
        with self.lock:
            model = self.models.get(p["ModelName"])
            if model is None:
                raise validation(f"Could not find model \"{self.arn('model', p['ModelName'])}\".")
            return copy.deepcopy(model)

    def DeleteModel(self, p: dict) -> dict:
        with self.lock:
            if self.models.pop(p["ModelName"], None) is None:
                raise validation(f"Could not find model \"{self.arn('model', p['ModelName'])}\".")
        return {}

    def ListModels(self, p: dict) -> dict:
        with self.lock:
            picked = self._listing(list(self.models.values()), p, "ModelName", "ModelName",
                                   {"Name": "ModelName", "CreationTime": "CreationTime"})
            return {"Models": [{k: m[k] for k in ("ModelName", "ModelArn", "CreationTime")} for m in picked]}

    # --------------------------------------------------------- endpoint configs
    def CreateEndpointConfig(self, p: dict) -> dict:
        name = p["EndpointConfigName"]
        with self.lock:
            if name in self.endpoint_configs:
                raise validation(
                    f'Cannot create already existing endpoint configuration "{self.arn("endpoint-config", name)}".')
            for variant in p["ProductionVariants"]:
                if variant.get("ModelName") not in self.models:
                    raise validation(f"Could not find model \"{self.arn('model', str(variant.get('ModelName')))}\".")
            arn = self.arn("endpoint-config", name)
            config = copy.deepcopy(p)
            config.pop("Tags", None)
            config.update(EndpointConfigArn=arn, CreationTime=now())
            self.endpoint_configs[name] = config
            self._add_tags(arn, p.get("Tags"))
        return {"EndpointConfigArn": arn}

    def DescribeEndpointConfig(self, p: dict) -> dict:
        with self.lock:
            config = self.endpoint_configs.get(p["EndpointConfigName"])
            if config is None:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            return copy.deepcopy(config)

    def DeleteEndpointConfig(self, p: dict) -> dict:
        with self.lock:
            if self.endpoint_configs.pop(p["EndpointConfigName"], None) is None:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
        return {}

    # ---------------------------------------------------------------- endpoints
    def CreateEndpoint(self, p: dict) -> dict:
        from .endpoints import EndpointHost

        name = p["EndpointName"]
        with self.lock:
            if name in self.endpoints:
                raise validation(f'Cannot create already existing endpoint "{self.arn("endpoint", name)}".')
            if p["EndpointConfigName"] not in self.endpoint_configs:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            arn = self.arn("endpoint", name)
            created = now()
            self.endpoints[name] = {
                "EndpointName": name,
                "EndpointArn": arn,
                "EndpointConfigName": p["EndpointConfigName"],
                "EndpointStatus": "Creating",
                "CreationTime": created,
                "LastModifiedTime": created,
            }
            self._add_tags(arn, p.get("Tags"))
            host = EndpointHost(self, name)
            self.hosts[name] = host
        host.emit()
        host.deploy(p["EndpointConfigName"], update=False)
        return {"EndpointArn": arn}

    def _endpoint(self, name: str) -> dict:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise validation(f"Could not find endpoint \"{self.arn('endpoint', name)}\".")
        return endpoint

    def UpdateEndpoint(self, p: dict) -> dict:
        name = p["EndpointName"]
        with self.lock:
            endpoint = self._endpoint(name)
            if endpoint["EndpointStatus"] != "InService":
                raise validation(f"Cannot update in-progress endpoint \"{endpoint['EndpointArn']}\".")
            if p["EndpointConfigName"] not in self.endpoint_configs:
                raise validation(
                    f"Could not find endpoint configuration \"{self.arn('endpoint-config', p['EndpointConfigName'])}\".")
            endpoint["EndpointStatus"] = "Updating"
            endpoint["LastModifiedTime"] = now()
            endpoint.pop("FailureReason", None)
            if "DeploymentConfig" in p:
                endpoint["LastDeploymentConfig"] = copy.deepcopy(p["DeploymentConfig"])
            host = self.hosts[name]
        host.emit()
        host.deploy(p["EndpointConfigName"], update=True)
        return {"EndpointArn": endpoint["EndpointArn"]}

    def DescribeEndpoint(self, p: dict) -> dict:
        with self.lock:
            return copy.deepcopy(self._endpoint(p["EndpointName"]))

    def DeleteEndpoint(self, p: dict) -> dict:
        with self.lock:
            endpoint = self._endpoint(p["EndpointName"])
            host = self.hosts.pop(p["EndpointName"], None)
            self.endpoints.pop(p["EndpointName"])
            self.tags.pop(endpoint["EndpointArn"], None)
        if host is not None:
            host.shutdown()
        return {}

    def ListEndpoints(self, p: dict) -> dict:
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        with self.lock:
            picked = self._listing(list(self.endpoints.values()), p, "EndpointName", "EndpointStatus",
                                   {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"})
            return {"Endpoints": [{k: e[k] for k in keys} for e in picked]}

    # --------------------------------------------------------------------- tags
    def _known_arn(self, arn: str) -> bool:
        collections = (self.training_jobs, self.tuning_jobs, self.models, self.endpoint_configs, self.endpoints)
        keys = ("TrainingJobArn", "HyperParameterTuningJobArn", "ModelArn", "EndpointConfigArn", "EndpointArn")
        return any(item.get(key) == arn for coll, key in zip(collections, keys) for item in coll.values())

    def ListTags(self, p: dict) -> dict:
        with self.lock:
            if not self._known_arn(p["ResourceArn"]):
                raise validation(f"Could not find resource {p['ResourceArn']}")
            return {"Tags": copy.deepcopy(self.tags.get(p["ResourceArn"], []))}

    def AddTags(self, p: dict) -> dict:
        with self.lock:
            if not self._known_arn(p["ResourceArn"]):
                raise validation(f"Could not find resource {p['ResourceArn']}")
            self._add_tags(p["ResourceArn"], p["Tags"])
            return {"Tags": copy.deepcopy(self.tags[p["ResourceArn"]])}

    def DeleteTags(self, p: dict) -> dict:
        with self.lock:
            self.tags[p["ResourceArn"]] = [t for t in self.tags.get(p["ResourceArn"], []) if t["Key"] not in p["TagKeys"]]
        return {}

    OPERATIONS = (
        "CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob", "ListTrainingJobs",
        "CreateHyperParameterTuningJob", "DescribeHyperParameterTuningJob", "StopHyperParameterTuningJob",
        "ListHyperParameterTuningJobs", "ListTrainingJobsForHyperParameterTuningJob",
        "CreateModel", "DescribeModel", "DeleteModel", "ListModels",
        "CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig",
        "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint", "ListEndpoints",
        "ListTags", "AddTags", "DeleteTags",
    )

    def call(self, op_name: str, params: dict) -> dict:
        """Validate, run and check one API operation (the path every request takes)."""
        validate_request("sagemaker", op_name, params)
        if op_name not in self.OPERATIONS:
            raise ServiceError("UnknownOperationException", f"{op_name} is not supported by the local SageMaker service")
        result = getattr(self, op_name)(params)
        validate_response("sagemaker", op_name, result)
        if op_name.startswith(("Create", "Update", "Stop", "Delete", "Add")):
            self.changed()
        return result

    # ---------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Stop every running job and endpoint process (Ctrl-C path)."""
        self.closing.set()
        with self.lock:
            runners = list(self.runners.values())
            hosts = list(self.hosts.values())
        for runner in runners:
            try:
                runner.stop(quiet=True)
            except Exception:
                log.exception("stopping %s failed", runner)
        for host in hosts:
            host.shutdown()
        for runner in runners:
            runner.join(timeout=30)
        self.changed()


# ---------------------------------------------------------------------- HTTP
def _error_response(err: ServiceError, rest: bool = False) -> Response:
    body = {"__type": err.code, "message": err.message, **err.fields}
    if rest:
        body["Message"] = err.message
    response = Response(json.dumps(body), status=err.status, content_type="application/x-amz-json-1.1")
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    if rest:
        response.headers["x-amzn-ErrorType"] = err.code
    return response


class LocalSageMakerApp:
    """WSGI application for both the control-plane and runtime protocols."""

    def __init__(self, backend: SageMakerBackend) -> None:
        self.backend = backend
        self.url_map = Map([
            Rule("/endpoints/<endpoint>/invocations", endpoint="invoke", methods=["POST"]),
            Rule("/", endpoint="api", methods=["POST"]),
        ])

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            route, args = adapter.match()
        except MethodNotAllowed as exc:
            return exc.get_response()
        except HTTPException as exc:
            if request.headers.get("X-Amz-Target"):
                route, args = "api", {}
            else:
                return exc.get_response()
        if route == "invoke":
            return self.invoke(request, args["endpoint"])
        return self.api(request)

    def api(self, request: Request) -> Response:
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, op_name = target.partition(".")
        try:
            if prefix != "SageMaker" or not op_name:
                raise ServiceError("UnknownOperationException", f"bad X-Amz-Target {target!r}")
            try:
                params = json.loads(request.get_data() or b"{}")
            except json.JSONDecodeError as exc:
                raise ServiceError("SerializationException", f"request body is not JSON: {exc}") from None
            result = self.backend.call(op_name, params)
        except ServiceError as err:
            if err.status >= 500:
                log.error("%s: %s", op_name, err.message)
            return _error_response(err)
        except Exception as exc:  # a bug in the service: say so in SageMaker's shape
            log.exception("%s failed", op_name)
            return _error_response(ServiceError("InternalFailure", f"{type(exc).__name__}: {exc}", 500))
        response = Response(wire_json(result), content_type="application/x-amz-json-1.1")
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response

    def invoke(self, request: Request, endpoint_name: str) -> Response:
        params: dict[str, Any] = {"EndpointName": endpoint_name, "Body": request.get_data()}
        if request.content_type:
            params["ContentType"] = request.headers["Content-Type"]
        if request.headers.get("Accept"):
            params["Accept"] = request.headers["Accept"]
        if request.headers.get("X-Amzn-SageMaker-Target-Variant"):
            params["TargetVariant"] = request.headers["X-Amzn-SageMaker-Target-Variant"]
        try:
            validate_request("sagemaker-runtime", "InvokeEndpoint", params)
            if len(params["Body"]) > 6 * 1024 * 1024:
                raise ServiceError("ValidationError", "Request payload is larger than the 6 MB limit")
            with self.backend.lock:
                host = self.backend.hosts.get(endpoint_name)
                endpoint = self.backend.endpoints.get(endpoint_name)
            if host is None or endpoint is None:
                raise ServiceError("ValidationError",
                                   f"Endpoint {endpoint_name} of account {self.backend.account} not found.")
            status, headers, body, variant = host.invoke(params)
        except ServiceError as err:
            return _error_response(err, rest=True)
        except Exception as exc:
            log.exception("InvokeEndpoint failed")
            return _error_response(ServiceError("InternalFailure", f"{type(exc).__name__}: {exc}", 500), rest=True)
        if not 200 <= status < 300:
            text = body.decode("utf-8", "replace")
            err = ServiceError(
                "ModelError",
                f'Received client error ({status}) from primary with message "{text}". '
                f"See the endpoint's log in {self.backend.state_dir / 'endpoints' / endpoint_name} for more information.",
                424,
                OriginalStatusCode=status,
                OriginalMessage=text,
                LogStreamArn=f"arn:aws:logs:{self.backend.region}:{self.backend.account}:log-group:"
                             f"/aws/sagemaker/Endpoints/{endpoint_name}",
            )
            return _error_response(err, rest=True)
        response = Response(body, status=200, content_type=headers.get("Content-Type", "application/json"))
        response.headers["x-Amzn-Invoked-Production-Variant"] = variant
        return response


class LocalSageMakerServer:
    """The service on a loopback port, in a background thread."""

    def __init__(self, backend: SageMakerBackend, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self.server = make_server(host, port, LocalSageMakerApp(backend), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-sagemaker", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def start(self) -> "LocalSageMakerServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.backend.shutdown()
        self.server.shutdown()
        self.thread.join(timeout=10)


def quiet_werkzeug() -> None:
    """Keep werkzeug's per-request access log out of the operator's terminal."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
