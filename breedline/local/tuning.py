"""One local hyperparameter tuning job: Optuna picks, local training jobs evaluate.

Why Optuna: SageMaker's Bayesian strategy is a model-based search; Optuna's TPE
sampler is a maintained model-based optimizer with an ask/tell API that fits a
scheduler which launches at most ``MaxParallelTrainingJobs`` trials at a time.
``Random`` uses Optuna's random sampler, ``Grid`` its grid sampler over the
categorical values. Each trial is an ordinary local training job named as
SageMaker names them (``<tuning-job>-<NNN>-<8 hex>``), so it emits its own
training state events, which the app must ignore.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from typing import Any

import optuna

from contract import COMPLETED, FAILED, IN_PROGRESS, STOPPED, STOPPING, TERMINAL_STATUSES

from .sagemaker_state import DETAIL_TUNING
from .sagemaker_wire import now

log = logging.getLogger("runtime.tuning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(ranges: dict[str, list[dict]]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Turn SageMaker ``ParameterRanges`` into Optuna distributions."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for r in ranges.get("ContinuousParameterRanges", []):
        log_scale = r.get("ScalingType") in ("Logarithmic", "ReverseLogarithmic")
        dists[r["Name"]] = optuna.distributions.FloatDistribution(float(r["MinValue"]), float(r["MaxValue"]),
                                                                  log=log_scale)
    for r in ranges.get("IntegerParameterRanges", []):
        dists[r["Name"]] = optuna.distributions.IntDistribution(int(r["MinValue"]), int(r["MaxValue"]),
                                                                log=r.get("ScalingType") == "Logarithmic")
    for r in ranges.get("CategoricalParameterRanges", []):
        dists[r["Name"]] = optuna.distributions.CategoricalDistribution(list(r["Values"]))
    return dists


def format_value(value: Any) -> str:
    """Hyperparameter values are strings on the wire; keep floats short but exact enough."""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def trial_name(tuning_name: str, index: int, params: dict[str, str]) -> str:
    digest = hashlib.sha1(f"{tuning_name}{index}{sorted(params.items())}".encode()).hexdigest()[:8]
    return f"{tuning_name}-{index:03d}-{digest}"


class TuningRun:
    """Schedules the trials of one tuning job in a background thread."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend = backend
        self.name = name
        self.stop_requested = threading.Event()
        self.trials: dict[str, optuna.trial.Trial | None] = {}  # job name -> Optuna trial
        self.tuned: dict[str, dict[str, str]] = {}
        self.objective_values: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name=f"tuning-{name}", daemon=True)

    def __repr__(self) -> str:
        return f"TuningRun({self.name})"

    @property
    def job(self) -> dict:
        return self.backend.tuning_jobs[self.name]

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def stop(self, quiet: bool = False) -> None:
        self.stop_requested.set()
        for job_name in list(self.trials):
            run = self.backend.runners.get(job_name)
            if run is not None and self.backend.training_jobs[job_name]["TrainingJobStatus"] == IN_PROGRESS:
                run.stop(quiet=quiet)

    # --------------------------------------------------------------- events
    def emit(self) -> None:
        """Put the documented ``SageMaker HyperParameter Tuning Job State Change`` event (no BestTrainingJob)."""
        keys = ("HyperParameterTuningJobName", "HyperParameterTuningJobArn", "TrainingJobDefinition",
                "HyperParameterTuningJobStatus", "CreationTime", "LastModifiedTime", "HyperParameterTuningEndTime",
                "TrainingJobStatusCounters", "ObjectiveStatusCounters", "FailureReason")
        with self.backend.lock:
            job = self.job
            detail = {k: copy.deepcopy(job[k]) for k in keys if k in job}
            detail["Tags"] = self.backend.tag_dict(job["HyperParameterTuningJobArn"])
            arn = job["HyperParameterTuningJobArn"]
        self.backend.emit(DETAIL_TUNING, detail, arn)

    # ------------------------------------------------------------ summaries
    def summaries(self) -> list[dict]:
        """``HyperParameterTrainingJobSummary`` for every trial launched so far (caller holds the lock)."""
        out = []
        objective = self.job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        for job_name in self.trials:
            trial = self.backend.training_jobs[job_name]
            summary = {
                "TrainingJobName": job_name,
                "TrainingJobArn": trial["TrainingJobArn"],
                "TuningJobName": self.name,
                "CreationTime": trial["CreationTime"],
                "TrainingJobStatus": trial["TrainingJobStatus"],
                "TunedHyperParameters": dict(self.tuned.get(job_name, {})),
            }
            for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
                if key in trial:
                    summary[key] = trial[key]
            value = self.objective_values.get(job_name)
            if value is not None:
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": value}
                summary["ObjectiveStatus"] = "Succeeded"
            elif trial["TrainingJobStatus"] in TERMINAL_STATUSES:
                summary["ObjectiveStatus"] = "Failed"
            else:
                summary["ObjectiveStatus"] = "Pending"
            out.append(summary)
        return out

    # ------------------------------------------------------------------ run
    def _sampler(self, strategy: str, dists: dict, seed: int) -> optuna.samplers.BaseSampler:
        if strategy == "Random":
            return optuna.samplers.RandomSampler(seed=seed)
        if strategy == "Grid":
            grid = {name: list(d.choices) for name, d in dists.items()
                    if isinstance(d, optuna.distributions.CategoricalDistribution)}
            if len(grid) != len(dists):
                raise ValueError("Grid strategy needs categorical ranges only")
            return optuna.samplers.GridSampler(grid, seed=seed)
        # Bayesian (and Hyperband, whose local stand-in is the same model-based search).
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)

    def _run(self) -> None:
        try:
            self._run_inner()
        except Exception as exc:
            log.exception("tuning job %s failed in the runtime", self.name)
            self._finish(FAILED, f"{type(exc).__name__}: {exc}")

    def _run_inner(self) -> None:
        config = self.job["HyperParameterTuningJobConfig"]
        definition = self.job["TrainingJobDefinition"]
        limits = config["ResourceLimits"]
        max_jobs = int(limits.get("MaxNumberOfTrainingJobs", 1))
        parallel = max(1, int(limits.get("MaxParallelTrainingJobs", 1)))
        objective = config["HyperParameterTuningJobObjective"]
        dists = distributions(config.get("ParameterRanges", {}))
        if config["Strategy"] == "Grid":
            max_jobs = min(max_jobs, math.prod(len(d.choices) for d in dists.values()))
        seed = int(hashlib.sha1(self.name.encode()).hexdigest()[:8], 16) if config.get("RandomSeed") is None \
            else int(config["RandomSeed"])
        study = optuna.create_study(
            direction="minimize" if objective["Type"] == "Minimize" else "maximize",
            sampler=self._sampler(config["Strategy"], dists, seed),
        )
        threads = max(1, (os.cpu_count() or 1) // parallel)
        running: dict[str, optuna.trial.Trial] = {}
        counter = itertools.count(1)
        launched = 0
        while True:
            if self.stop_requested.is_set():
                break
            while len(running) < parallel and launched < max_jobs:
                trial = study.ask(dists)
                tuned = {name: format_value(trial.params[name]) for name in dists}
                index = next(counter)
                job_name = trial_name(self.name, index, tuned)
                self._launch(job_name, definition, tuned, threads)
                running[job_name] = trial
                launched += 1
            finished = [n for n in running if self.backend.training_jobs[n]["TrainingJobStatus"]
                        in TERMINAL_STATUSES]
            for job_name in finished:
                trial = running.pop(job_name)
                run = self.backend.runners[job_name]
                value = run.metric(objective["MetricName"]) \
                    if self.backend.training_jobs[job_name]["TrainingJobStatus"] == COMPLETED else None
                with self.backend.lock:
                    if value is not None and math.isfinite(value):
                        self.objective_values[job_name] = value
                        study.tell(trial, value)
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    self._update_counters()
                self.backend.changed()
            if not running and launched >= max_jobs:
                break
            time.sleep(0.3)
        # Stopping: wait for the trials we asked to stop.
        for job_name in list(running):
            run = self.backend.runners.get(job_name)
            if run is not None:
                run.join(timeout=30)
        with self.backend.lock:
            self._update_counters()
        if self.stop_requested.is_set():
            return self._finish(STOPPED)
        if not self.objective_values:
            return self._finish(FAILED, "All training jobs failed or reported no objective metric "
                                          f"{objective['MetricName']}")
        self._finish(COMPLETED)

    def _launch(self, job_name: str, definition: dict, tuned: dict[str, str], threads: int) -> None:
        request = {
            "TrainingJobName": job_name,
            "HyperParameters": {**definition.get("StaticHyperParameters", {}), **tuned},
        }
        for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                    "StoppingCondition", "EnableManagedSpotTraining", "CheckpointConfig", "VpcConfig",
                    "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption", "Environment",
                    "RetryStrategy"):
            if key in definition:
                request[key] = copy.deepcopy(definition[key])
        # CheckpointConfig too is copied as it is: AWS documents no per-trial checkpoint prefix, so every
        # trial gets the same S3Uri (train.py keeps each job's checkpoints in a folder named after the job).
        with self.backend.lock:
            self.tuned[job_name] = tuned
            self.trials[job_name] = None
            # SageMaker copies the tuning job's tags onto each trial job.
            tags = list(self.backend.tags.get(self.job["HyperParameterTuningJobArn"], []))
        if tags:
            request["Tags"] = tags
        self.backend.CreateTrainingJob(request, tuning=self.job, threads=threads)
        with self.backend.lock:
            self._update_counters()
        log.info("tuning job %s launched %s with %s", self.name, job_name, tuned)

    def _update_counters(self) -> None:
        statuses = [self.backend.training_jobs[n]["TrainingJobStatus"] for n in self.trials]
        job = self.job
        job["TrainingJobStatusCounters"] = {
            "Completed": statuses.count(COMPLETED),
            "InProgress": statuses.count(IN_PROGRESS) + statuses.count(STOPPING),
            "RetryableError": 0,
            "NonRetryableError": statuses.count(FAILED),
            "Stopped": statuses.count(STOPPED),
        }
        succeeded = len(self.objective_values)
        pending = statuses.count(IN_PROGRESS) + statuses.count(STOPPING)
        job["ObjectiveStatusCounters"] = {"Succeeded": succeeded, "Pending": pending,
                                          "Failed": len(statuses) - succeeded - pending}
        job["LastModifiedTime"] = now()

    def _finish(self, status: str, reason: str | None = None) -> None:
        with self.backend.lock:
            job = self.job
            job["HyperParameterTuningJobStatus"] = status
            job["HyperParameterTuningEndTime"] = job["LastModifiedTime"] = now()
            if reason:
                job["FailureReason"] = reason
            summaries = self.summaries()
            if self.objective_values:
                minimize = job["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Minimize"
                scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
                best = sorted(scored, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
                              reverse=not minimize)[0]
                job["BestTrainingJob"] = best
        self.backend.changed()
        self.emit()
        log.info("tuning job %s %s", self.name, status)
