"""Batch transform jobs of the local SageMaker service: Create/Describe/Stop/List, as SageMaker answers them.

Why the API side is apart from :mod:`.sagemaker_transform_run`: these methods
check and record a job the way SageMaker does (a unique name, a known model,
the statuses ``InProgress`` -> ``Completed`` / ``Failed`` / ``Stopping`` ->
``Stopped``); the work, model servers through AWS's serving toolkit, one per
instance, fed from S3 and writing ``<key>.out`` back, lives in
:class:`.sagemaker_transform_run.TransformRun`.

What the local service refuses that AWS would run, with a clear error instead
of a wrong result: split records (``SplitType`` other than ``None``), compressed
input, assembled output, ``DataProcessing`` joins and augmented manifests.
Breedline sends one image per record, so none of them is needed.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from contract import IN_PROGRESS, STOPPING

from .sagemaker_state import DETAIL_TRANSFORM, BackendState
from .sagemaker_wire import not_found, now, validation

#: The fields of a job that are ours, not DescribeTransformJob's (kept in the record, dropped on the wire).
PRIVATE_FIELDS: tuple[str, ...] = ("LastModifiedTime",)
#: The fields of the documented ``SageMaker Transform Job State Change`` detail, besides times and tags.
EVENT_FIELDS: tuple[str, ...] = (
    "TransformJobName", "TransformJobArn", "TransformJobStatus", "FailureReason", "ModelName",
    "MaxConcurrentTransforms", "MaxPayloadInMB", "BatchStrategy", "Environment", "TransformInput",
    "TransformOutput", "TransformResources", "CreationTime", "TransformStartTime", "TransformEndTime",
)
#: SageMaker's defaults for what a request may leave out (CreateTransformJob's reference).
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_MAX_CONCURRENT = 1


def _epoch(value: Any) -> float:
    """A record's time as epoch seconds: a datetime, or a number as a reloaded snapshot keeps a private field."""
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def check_transform_request(p: dict) -> None:
    """Refuse what the local service cannot run the way AWS would (see the module's docstring)."""
    source = p["TransformInput"]["DataSource"].get("S3DataSource")
    if source is None:
        raise validation("The local service reads transform input from S3 only (TransformInput.DataSource.S3DataSource)")
    if source["S3DataType"] not in ("S3Prefix", "ManifestFile"):
        raise validation(f"S3DataType {source['S3DataType']} is not supported locally; use S3Prefix or ManifestFile")
    for field, allowed in ((p["TransformInput"].get("SplitType"), "None"),
                           (p["TransformInput"].get("CompressionType"), "None"),
                           (p["TransformOutput"].get("AssembleWith"), "None")):
        if field not in (None, allowed):
            raise validation(f"{field!r} is not supported locally: each record is one whole object (use None)")
    if "DataProcessing" in p:
        raise validation("DataProcessing is not supported by the local service")
    if p.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB) > 100:
        raise validation("MaxPayloadInMB must be at most 100")


class TransformOperations(BackendState):
    """CreateTransformJob, DescribeTransformJob, StopTransformJob, ListTransformJobs."""

    def CreateTransformJob(self, p: dict) -> dict:
        from .sagemaker_transform_run import TransformRun

        name = p["TransformJobName"]
        with self.lock:
            arn = self.arn("transform-job", name)
            if name in self.transform_jobs:
                raise validation(f"Job name must be unique within an AWS account and region, and a job with this "
                                 f"name already exists ({arn})")
            if p["ModelName"] not in self.models:
                raise validation(f"Could not find model \"{self.arn('model', p['ModelName'])}\".")
            check_transform_request(p)
            created = now()
            job = copy.deepcopy(p)
            job.pop("Tags", None)
            job.setdefault("MaxConcurrentTransforms", DEFAULT_MAX_CONCURRENT)
            job.setdefault("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB)
            job.update(TransformJobArn=arn, TransformJobStatus=IN_PROGRESS, CreationTime=created,
                       LastModifiedTime=created)
            self.transform_jobs[name] = job
            self._add_tags(arn, p.get("Tags"))
            run = TransformRun(self, name)
            self.runners[f"transform-job/{name}"] = run
        self.emit_transform(name)
        run.start()
        return {"TransformJobArn": arn}

    def _transform(self, name: str) -> dict:
        job = self.transform_jobs.get(name)
        if job is None:
            raise not_found(f"Could not find job to describe: {self.arn('transform-job', name)}")
        return job

    def DescribeTransformJob(self, p: dict) -> dict:
        with self.lock:
            job = copy.deepcopy(self._transform(p["TransformJobName"]))
        for field in PRIVATE_FIELDS:
            job.pop(field, None)
        return job

    def StopTransformJob(self, p: dict) -> dict:
        """Stopping, then Stopped once the records in flight are answered; a finished job is left as it is."""
        name = p["TransformJobName"]
        with self.lock:
            job = self._transform(name)
            if job["TransformJobStatus"] != IN_PROGRESS:
                return {}
            job["TransformJobStatus"] = STOPPING
            job["LastModifiedTime"] = now()
            run = self.runners.get(f"transform-job/{name}")
        self.emit_transform(name)
        if run is not None:
            run.stop()
        return {}

    def ListTransformJobs(self, p: dict) -> dict:
        keys = ("TransformJobName", "TransformJobArn", "CreationTime", "TransformEndTime", "LastModifiedTime",
                "TransformJobStatus", "FailureReason")
        with self.lock:
            jobs = list(self.transform_jobs.values())
            for field, op in (("LastModifiedTimeAfter", "gt"), ("LastModifiedTimeBefore", "lt")):
                if field in p:
                    bound = p[field].timestamp() if hasattr(p[field], "timestamp") else float(p[field])
                    jobs = [j for j in jobs if (_epoch(j["LastModifiedTime"]) > bound) == (op == "gt")]
            picked = self._listing(jobs, p, "TransformJobName", "TransformJobStatus",
                                   {"Name": "TransformJobName", "CreationTime": "CreationTime",
                                    "Status": "TransformJobStatus"})
            summaries = [{k: j[k] for k in keys if k in j} for j in picked]
        for summary in summaries:  # a reloaded snapshot's LastModifiedTime is a number (no shape says otherwise)
            if "LastModifiedTime" in summary and not hasattr(summary["LastModifiedTime"], "timestamp"):
                summary["LastModifiedTime"] = dt.datetime.fromtimestamp(float(summary["LastModifiedTime"]), dt.UTC)
        return {"TransformJobSummaries": summaries}

    def emit_transform(self, name: str) -> None:
        """Put the documented ``SageMaker Transform Job State Change`` event for the job as it is now."""
        with self.lock:
            job = copy.deepcopy(self.transform_jobs[name])
            detail: dict[str, Any] = {k: job[k] for k in EVENT_FIELDS if k in job}
            detail["Tags"] = self.tag_dict(job["TransformJobArn"])
        self.emit(DETAIL_TRANSFORM, detail, job["TransformJobArn"])
