"""The local SageMaker account's resources: stores, tags, state-change events, the saved snapshot.

Why one base for every operation: jobs, models and endpoints share one lock,
one tag store and one way of telling the world that something changed. A
change goes out twice: as the event SageMaker puts on EventBridge (``Source:
aws.sagemaker``, the documented detail-types, times in epoch milliseconds
spelled as AWS's examples spell them: :func:`event_detail`),
which is what drives the app's handlers, and as ``sagemaker.json``, a snapshot
of every resource as Describe* returns it, so a run can be inspected afterwards.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from .sagemaker_wire import to_millis, validation, wire_json

log = logging.getLogger("runtime.sagemaker")

#: The ``detail-type`` of each SageMaker state-change event.
DETAIL_TRAINING = "SageMaker Training Job State Change"
DETAIL_TUNING = "SageMaker HyperParameter Tuning Job State Change"
DETAIL_ENDPOINT = "SageMaker Endpoint State Change"
DETAIL_TRANSFORM = "SageMaker Transform Job State Change"

#: Whether the local account has the SageMaker Debugger service: ``open`` (an account
#: from before Debugger closed to new customers on 2026-07-30) or ``closed`` (one
#: opened after, which CreateTrainingJob answers as :func:`.sagemaker_jobs.check_debugger_request`
#: says). Read from the runtime's environment, so ``breedline up`` can play either.
DEBUGGER_SERVICE_VARIABLE = "BREEDLINE_LOCAL_DEBUGGER_SERVICE"
DEBUGGER_SERVICE_STATES: tuple[str, ...] = ("open", "closed")


def debugger_service_from_env() -> str:
    """``open`` or ``closed`` from :data:`DEBUGGER_SERVICE_VARIABLE`; anything else is a clear error."""
    value = os.environ.get(DEBUGGER_SERVICE_VARIABLE, "open").strip().lower()
    if value not in DEBUGGER_SERVICE_STATES:
        raise ValueError(f"{DEBUGGER_SERVICE_VARIABLE}={value!r} must be one of {', '.join(DEBUGGER_SERVICE_STATES)}")
    return value


#: ``1``: every blue/green UpdateEndpoint of the local service rolls back, as SageMaker's
#: does when the new fleet fails its health check or a rollback alarm fires: the
#: endpoint goes RollingBack, then InService on the old config, with a FailureReason.
#: Read from the runtime's environment (issue 15: the app must follow what is served).
ENDPOINT_ROLLBACK_VARIABLE = "BREEDLINE_LOCAL_ENDPOINT_ROLLBACK"


def endpoint_rollback_from_env() -> bool:
    """Whether :data:`ENDPOINT_ROLLBACK_VARIABLE` asks updates to roll back; anything but 0/1 is a clear error."""
    value = os.environ.get(ENDPOINT_ROLLBACK_VARIABLE, "0").strip().lower()
    if value not in ("0", "1", "", "false", "true"):
        raise ValueError(f"{ENDPOINT_ROLLBACK_VARIABLE}={value!r} must be 0 or 1")
    return value in ("1", "true")


#: Events whose times AWS's documented examples write as strings of epoch
#: milliseconds (``"CreationTime": "1583831889050"``); the endpoint example
#: writes numbers. Sources: events/README.md.
TIMES_AS_TEXT: frozenset[str] = frozenset({DETAIL_TRAINING, DETAIL_TUNING})
#: Events whose times AWS's example writes as ISO 8601 text (``"CreationTime": "2018-10-06T12:26:13Z"``).
TIMES_AS_ISO: frozenset[str] = frozenset({DETAIL_TRANSFORM})


def event_detail(detail_type: str, detail: Any) -> Any:
    """``detail`` as SageMaker puts it on EventBridge: every time in epoch milliseconds,
    a string for training and tuning jobs and a number for endpoints, as in AWS's examples.

    Why not one spelling: the app must survive the events AWS really sends, and
    the local runtime is how the tests see them.
    """
    if isinstance(detail, dt.datetime):
        if detail_type in TIMES_AS_ISO:
            return detail.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        millis = to_millis(detail)
        return str(millis) if detail_type in TIMES_AS_TEXT else millis
    if isinstance(detail, dict):
        return {k: event_detail(detail_type, v) for k, v in detail.items()}
    if isinstance(detail, list):
        return [event_detail(detail_type, v) for v in detail]
    return detail


class BackendState:
    """All resources of one local account and region, their tags, and how changes are announced."""

    def __init__(
        self,
        state_dir: Path,
        s3: Any,
        events: Any | None,
        region: str = "us-east-1",
        account: str = "123456789012",
        event_bus: str = "default",
        job_threads: int | None = 1,
        debugger_service: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.s3 = s3
        self.events = events
        self.region = region
        self.account = account
        self.event_bus = event_bus
        # Threads per training process (OMP_NUM_THREADS). One by default: spinning OpenMP
        # threads on a busy machine slow an epoch down; None leaves torch's default.
        self.job_threads = job_threads
        # "closed": an account without Debugger (see DEBUGGER_SERVICE_VARIABLE); None reads the environment.
        self.debugger_service = debugger_service or debugger_service_from_env()
        if self.debugger_service not in DEBUGGER_SERVICE_STATES:
            raise ValueError(f"debugger_service={self.debugger_service!r} must be one of {DEBUGGER_SERVICE_STATES}")
        # True: blue/green updates fail their health check and roll back (ENDPOINT_ROLLBACK_VARIABLE)
        self.endpoint_rollback = endpoint_rollback_from_env()
        self.lock = threading.RLock()
        self.training_jobs: dict[str, dict] = {}
        self.tuning_jobs: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.endpoint_configs: dict[str, dict] = {}
        self.endpoints: dict[str, dict] = {}
        self.transform_jobs: dict[str, dict] = {}
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

    @staticmethod
    def _listing(items: list[dict], p: dict, name_key: str, status_key: str, sort_keys: dict[str, str]) -> list[dict]:
        """A List* call's filters, sort order and page size (one page: no ``NextToken``)."""
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

    # ------------------------------------------------------------------- events
    def emit(self, detail_type: str, detail: dict, resource_arn: str) -> None:
        """Put one state-change event on the local EventBridge, as SageMaker does."""
        body = event_detail(detail_type, detail)
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

    # -------------------------------------------------------------------- state
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
                "transform_jobs": self.transform_jobs,
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

    # --------------------------------------------------------------------- tags
    def _add_tags(self, arn: str, tags: list[dict] | None) -> None:
        if not tags:
            return
        current = {t["Key"]: t for t in self.tags.get(arn, [])}
        for tag in tags:
            current[tag["Key"]] = {"Key": tag["Key"], "Value": tag.get("Value", "")}
        self.tags[arn] = list(current.values())

    def _known_arn(self, arn: str) -> bool:
        collections = (self.training_jobs, self.tuning_jobs, self.models, self.endpoint_configs, self.endpoints,
                       self.transform_jobs)
        keys = ("TrainingJobArn", "HyperParameterTuningJobArn", "ModelArn", "EndpointConfigArn", "EndpointArn",
                "TransformJobArn")
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
