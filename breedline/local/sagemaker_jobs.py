"""Training and tuning jobs of the local SageMaker service: the API side of each call.

Why here and not in the runners: these methods check a request the way
SageMaker does (beyond what botocore's model can say), record the resource as
Describe* will return it and hand it to a runner (:class:`.training.TrainingRun`,
:class:`.tuning.TuningRun`), which does the work in its own thread.
"""

from __future__ import annotations

import copy

from contract import IN_PROGRESS, STOPPING

from .sagemaker_state import BackendState
from .sagemaker_wire import in_use, not_found, now, validation


class JobOperations(BackendState):
    """Create/Describe/Stop/List of training and tuning jobs."""

    # ------------------------------------------------------------ training jobs
    def CreateTrainingJob(self, p: dict, tuning: dict | None = None, threads: int | None = None) -> dict:
        from .training import TrainingRun

        name = p["TrainingJobName"]
        with self.lock:
            if name in self.training_jobs:
                raise in_use(f"Training job {name} already exists")
            check_training_request(p)
            if self.debugger_service == "closed":
                check_debugger_request(p, self.account)
            arn = self.arn("training-job", name)
            created = now()
            job = copy.deepcopy(p)
            job.pop("Tags", None)
            job.update(
                TrainingJobArn=arn,
                TrainingJobStatus=IN_PROGRESS,
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
            if job["TrainingJobStatus"] != IN_PROGRESS:
                raise validation(f"The job status is {job['TrainingJobStatus']}: only InProgress jobs can be stopped")
            run = self.runners.get(p["TrainingJobName"])
        if run is not None:
            run.stop()
        return {}

    def ListTrainingJobs(self, p: dict) -> dict:
        with self.lock:
            jobs = list(self.training_jobs.values())
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
            check_tuning_request(p)
            arn = self.arn("hyper-parameter-tuning-job", name)
            created = now()
            job = copy.deepcopy(p)
            job.pop("Tags", None)
            job.update(
                HyperParameterTuningJobArn=arn,
                HyperParameterTuningJobStatus=IN_PROGRESS,
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
            if job["HyperParameterTuningJobStatus"] != IN_PROGRESS:
                raise validation(f"The tuning job is {job['HyperParameterTuningJobStatus']}")
            job["HyperParameterTuningJobStatus"] = STOPPING
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


def check_training_request(p: dict) -> None:
    """What SageMaker refuses in a CreateTrainingJob request beyond botocore's model."""
    spec = p["AlgorithmSpecification"]
    if not spec.get("TrainingImage") and not spec.get("AlgorithmName"):
        raise validation("AlgorithmSpecification needs TrainingImage or AlgorithmName")
    resources = p["ResourceConfig"]
    if "InstanceGroups" not in resources and resources.get("InstanceCount", 0) < 1:
        raise validation("ResourceConfig.InstanceCount must be at least 1 when no InstanceGroups are given")
    if p.get("EnableManagedSpotTraining") and "MaxWaitTimeInSeconds" not in p["StoppingCondition"]:
        raise validation("MaxWaitTimeInSeconds is required for managed spot training")
    wait = p["StoppingCondition"].get("MaxWaitTimeInSeconds")
    if wait is not None and wait < p["StoppingCondition"].get("MaxRuntimeInSeconds", 86400):
        raise validation("MaxWaitTimeInSeconds must be >= MaxRuntimeInSeconds")


#: The CreateTrainingJob fields that ask for the Debugger service (ProfilerConfig unless it turns the profiler off).
DEBUGGER_FIELDS: tuple[str, ...] = ("DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations",
                                    "TensorBoardOutputConfig")


def check_debugger_request(p: dict, account: str) -> None:
    """Refuse Debugger in an account without it, the way the app expects AWS to (docs/aws.md, "Debugger").

    What AWS really answers is not documented. The shape chosen is the one
    SageMaker uses for a field it will not take: ``ValidationException``, HTTP
    400, a message that names Debugger and the fields. ``ProfilerConfig`` with
    only ``DisableProfiler: true`` is the documented way to turn monitoring
    off and is accepted.
    """
    asked = [f for f in DEBUGGER_FIELDS if p.get(f)]
    profiler = p.get("ProfilerConfig")
    if profiler and not profiler.get("DisableProfiler"):
        asked.append("ProfilerConfig")
    if asked:
        raise validation(
            f"Amazon SageMaker Debugger is not available to account {account}: it closed to new customers on "
            f"2026-07-30. Remove {', '.join(asked)} from the request, or set ProfilerConfig.DisableProfiler to true."
        )


def check_tuning_request(p: dict) -> None:
    """What SageMaker (or the local service: one definition only) refuses in a tuning request."""
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
