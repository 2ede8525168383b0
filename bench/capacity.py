"""Section 12: how many requests per second ONE endpoint instance holds, and the autoscaling target from it.

What it runs: the serving stack as the endpoint runs it. The model directory is laid
out as train.py leaves it (``code/`` included) and served by the local runtime's
model server (AWS's sagemaker-pytorch-inference ``HandlerService``, the project's
``inference.py`` and its default backend), with as many worker processes as the
container starts on an ml.m5.large: TorchServe's default, one per vCPU, so 2
(``breedline.local.worker_pool``, which says where that rule comes from). The
workers sit behind one loopback port that queues each request for the next free
worker, as TorchServe's frontend does. The workers get the container's thread
settings: none (no ``OMP_NUM_THREADS``), so torch and ONNX Runtime use their own
defaults, as they do in the container.

The load: 1, 2, 4 and 8 concurrent clients (closed loop: each sends its next
request when the last is answered), 30 s each, with data-set-sized JPEGs (500 x 400)
and 12 MP phone JPEGs (``bench/images.py``). Each level reports requests per
second (median and min-max over 5 s windows), p50 and p99 latency as the client
sees it, and errors (any answer but a 200 with a label). The baseline, at 8
clients: today's local endpoint server, one process, ``OMP_NUM_THREADS=1``.

From the figures, ``bench.capacity_target`` derives ``InvocationsPerInstanceTarget``
with AWS's formula; a full run records every figure in
``bench/recorded/capacity.json`` and writes the number into ``infra/breedline.yaml``.

What this machine predicts: it has 2 cores, as an ml.m5.large has 2 vCPUs, so the
worker count and the queueing are the instance's. What it does not: the clients and
the frontend run on the same 2 cores here (on SageMaker the clients are elsewhere and
the frontend is Java) and other jobs share this machine, which lower the figures; the
instance's 2 vCPUs are one physical Xeon core's two hyperthreads, which lowers the
instance's. docs/aws.md 4.4 says to confirm the number on one real instance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import requests

from bench import capacity_target as ct
from bench import images, models
from bench.core import Row, Section, Stats

ML = Path(__file__).resolve().parent.parent / "ml_scripts"
#: The endpoint's default instance type (BREEDLINE_ENDPOINT_INSTANCE_TYPE) and its vCPUs.
INSTANCE = "ml.m5.large"
INSTANCE_VCPUS = 2
#: ``TYPE:VCPUS`` to measure for another instance type (docs/aws.md 4.4), e.g. ``ml.c5.xlarge:4``.
INSTANCE_VARIABLE = "BENCH_CAPACITY_INSTANCE"
CONCURRENCY = (1, 2, 4, 8)
QUICK_CONCURRENCY = (1, 2)
DURATION_S = 30.0
QUICK_DURATION_S = 1.0
WINDOW_S = 5.0
QUICK_WINDOW_S = 0.5
MODELS = ("efficientnet_lite0", "vgg11")
QUICK_MODELS = ("efficientnet_lite0",)
#: How long a request may take before the client counts it as an error (SageMaker's invocation timeout is 60 s).
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Load:
    """What the clients of one level saw."""

    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    errors: int = 0
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def instance(env: dict[str, str] | None = None) -> tuple[str, int]:
    """The instance type the figures stand for and its vCPUs: ml.m5.large, or what BENCH_CAPACITY_INSTANCE names."""
    raw = (env if env is not None else os.environ).get(INSTANCE_VARIABLE, "").strip()
    if not raw:
        return INSTANCE, INSTANCE_VCPUS
    name, _, vcpus = raw.partition(":")
    if not name or not vcpus.isdigit() or int(vcpus) < 1:
        raise ValueError(f"{INSTANCE_VARIABLE}={raw!r}: write TYPE:VCPUS, e.g. ml.c5.xlarge:4")
    return name, int(vcpus)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * (len(ordered) - 1)))))]


def window_rates(finished_at: list[float], start: float, duration: float, window: float) -> list[float]:
    """Requests answered per second in each whole ``window`` of ``[start, start + duration]``."""
    count = max(1, int(duration // window))
    bins = [0] * count
    for t in finished_at:
        slot = int((t - start) // window)
        if 0 <= slot < count:
            bins[slot] += 1
    return [n / window for n in bins]


def client(url: str, bodies: list[bytes], offset: int, end: float, load: Load) -> None:
    """One closed-loop client: a request, its answer, the next request, until ``end``."""
    session = requests.Session()
    session.trust_env = False  # loopback only
    n = offset
    while time.monotonic() < end:
        body = bodies[n % len(bodies)]
        n += 1
        started = time.perf_counter()
        problem = None
        try:
            answer = session.post(f"{url}/invocations", data=body, timeout=REQUEST_TIMEOUT_S,
                                  headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
            if answer.status_code != 200 or b'"label"' not in answer.content:
                problem = f"{answer.status_code} {answer.content[:120]!r}"
        except requests.RequestException as exc:
            problem = type(exc).__name__
        elapsed = time.perf_counter() - started
        with load.lock:
            load.latencies.append(elapsed)
            load.finished_at.append(time.monotonic())
            if problem:
                load.errors += 1
                if len(load.examples) < 3:
                    load.examples.append(problem)
    session.close()


def drive(url: str, bodies: list[bytes], concurrency: int, duration: float,
          window: float) -> tuple[ct.Level, list[float], Load]:
    """``concurrency`` clients for ``duration`` seconds: the level's figures and its window rates."""
    load = Load()
    start = time.monotonic()
    end = start + duration
    threads = [threading.Thread(target=client, args=(url, bodies, i, end, load), daemon=True, name=f"capacity-{i}")
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + REQUEST_TIMEOUT_S + 5)
    if not load.latencies:
        raise RuntimeError(f"{concurrency} client(s) got no answer in {duration:g} s")
    in_time = sum(1 for t in load.finished_at if t <= end)
    level = ct.Level(concurrency, in_time / duration, percentile(load.latencies, 0.5),
                     percentile(load.latencies, 0.99), load.errors, len(load.latencies))
    return level, window_rates(load.finished_at, start, duration, window), load


def served_model(folder: Path, architecture: str) -> Path:
    """``model/`` as train.py leaves it, ``code/`` included, for ``architecture`` (seeded weights)."""
    import train

    model_dir = models.write_model_dir(folder / architecture / "model", architecture)
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    for name in train.SERVING_FILES:
        shutil.copyfile(ML / name, code / name)
    return model_dir


def container_env(single_thread: bool = False) -> dict[str, str]:
    """The workers' environment: the container sets no thread counts; today's local server sets OMP to 1."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", SAGEMAKER_PROGRAM="inference.py")
    for key in [k for k in env if k.startswith("AWS_ENDPOINT_URL")] + ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]:
        env.pop(key, None)
    if single_thread:
        env["OMP_NUM_THREADS"] = "1"
    return env


def workloads(quick: bool) -> dict[str, list[bytes]]:
    """Request bodies per workload: the sample photos at 500 x 400, two as 12 MP phone JPEGs.

    Quick (the smoke run inside ``make test``): two 500 x 400 JPEGs only; the 12 MP
    requests go through the same code and would cost the test seconds it does not have.
    """
    photos = list(images.sample_photos().values())
    if quick:
        return {"500x400": [images.dataset_jpeg(p) for p in photos[:2]]}
    return {
        "500x400": [images.dataset_jpeg(p) for p in photos],
        "12mp": [images.phone_jpeg(p, seed=i) for i, p in enumerate(photos[:2])],
    }


def warm(url: str, bodies: list[bytes], workers: int) -> None:
    """Untimed requests, each body once per worker: first predictions build lazy pieces in each process.

    One client, so the pool hands them to its workers in turn.
    """
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(workers):
            for body in bodies:
                session.post(f"{url}/invocations", data=body, timeout=REQUEST_TIMEOUT_S,
                             headers={"Content-Type": "image/jpeg", "Accept": "application/json"})


def sweep(url: str, bodies: list[bytes], levels: tuple[int, ...], duration: float,
          window: float) -> Iterator[tuple[ct.Level, list[float], Load]]:
    for concurrency in levels:
        yield drive(url, bodies, concurrency, duration, window)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


Measured = dict[str, list[tuple[ct.Level, list[float], Load]]]


def level_row(section: Section, label: str, level: ct.Level, rates: list[float], load: Load,
              baseline: tuple[str, ct.Level, list[float]] | None = None) -> None:
    """One level as a row: req/s over windows as the figure, p50/p99/errors in the note."""
    note = (f"p50 {_ms(level.p50_s)}, p99 {_ms(level.p99_s)}, {level.errors} errors of {level.requests} requests, "
            f"{level.rps:.1f} req/s over the whole run" + (f"; {e}" if (e := "; ".join(load.examples[:1])) else ""))
    if baseline:
        what, base, _ = baseline
        note += f"; baseline: {what}, p50 {_ms(base.p50_s)}, p99 {_ms(base.p99_s)}, {base.errors} errors"
    section.rows.append(Row(section.key, f"{label}, {level.concurrency} client(s): requests answered per second",
                            Stats.of(rates), "req/s", baseline=Stats.of(baseline[2]) if baseline else None,
                            higher_is_better=True, note=note))


def pool_sweep(model_dir: Path, log_dir: Path, env: dict[str, str], workers: int, bodies: dict[str, list[bytes]],
               levels: tuple[int, ...], duration: float, window: float, parallel: bool = False) -> Measured:
    """Start a pool, warm it, run every workload at every level, stop it."""
    from breedline.local.worker_pool import WorkerPool

    pool = WorkerPool(model_dir, log_dir, env, workers)
    pool.start(parallel=parallel)
    try:
        out: Measured = {}
        for workload, payloads in bodies.items():
            warm(pool.url, payloads, workers)
            out[workload] = list(sweep(pool.url, payloads, levels, duration, window))
        return out
    finally:
        pool.stop()


def single_server(model_dir: Path, log: Path, bodies: dict[str, list[bytes]], concurrency: int, duration: float,
                  window: float) -> dict[str, tuple[ct.Level, list[float], Load]]:
    """Today's local endpoint server (one threaded process, OMP_NUM_THREADS=1) at one level."""
    from breedline.local.endpoints import ModelServer

    single = ModelServer(model_dir, log, container_env(single_thread=True))
    single.start()
    try:
        out = {}
        for workload, payloads in bodies.items():
            warm(single.url, payloads, 1)
            out[workload] = drive(single.url, payloads, concurrency, duration, window)
        return out
    finally:
        single.stop()


def measure_model(section: Section, work: Path, model: str, bodies: dict[str, list[bytes]], workers: int,
                  quick: bool, with_baseline: bool) -> dict[str, list[dict]]:
    """Every workload at every level against a pool of ``workers``; returns the record's levels.

    With ``with_baseline``, the top level also runs against today's local server and
    against the same pool with ``OMP_NUM_THREADS=1`` per worker (what an operator could
    set in the model's environment), each shown with its ratio.
    """
    levels = QUICK_CONCURRENCY if quick else CONCURRENCY
    timing = (QUICK_DURATION_S, QUICK_WINDOW_S) if quick else (DURATION_S, WINDOW_S)
    model_dir = served_model(work, model)
    top = levels[-1]
    measured = pool_sweep(model_dir, work / f"{model}-pool", container_env(), workers, bodies, levels, *timing,
                          parallel=quick)
    single = single_server(model_dir, work / f"{model}-single.log", bodies, top, *timing) if with_baseline else {}
    omp1 = pool_sweep(model_dir, work / f"{model}-pool-omp1", container_env(single_thread=True), workers, bodies,
                      (top,), *timing) if with_baseline else {}
    record: dict[str, list[dict]] = {}
    for workload, results in measured.items():
        record[workload] = [{**asdict(level), "windows": rates} for level, rates, _ in results]
        label = f"{model}, {workload} JPEG, {workers} worker{'s' if workers != 1 else ''}"
        for level, rates, load in results:
            base = single.get(workload) if level.concurrency == top else None
            level_row(section, label, level, rates, load,
                      ("today's local server (1 process, OMP_NUM_THREADS=1)", base[0], base[1]) if base else None)
        if workload in omp1:
            (level, rates, load), = omp1[workload]
            _, pool_rates, _ = results[-1]
            level_row(section, f"{label} with OMP_NUM_THREADS=1 each", level, rates, load,
                      ("the container's defaults (no thread setting)", results[-1][0], pool_rates))
    return record


def derivations(measured: dict[str, dict[str, list[dict]]]) -> list[ct.Derivation]:
    return [ct.derive(f"{model} {workload}", ct.levels_from(raw), ct.LATENCY_BUDGETS_S[workload])
            for model, per_workload in measured.items() for workload, raw in per_workload.items()]


def add_target_rows(section: Section, instance_type: str, workers: int, found: list[ct.Derivation],
                    verdict: bool) -> None:
    """Per model and workload: the peak held under its budget; then the governing target.

    ``verdict``: whether the template's Default is judged against this run (not for a quick run's figures).
    """
    for d in found:
        if d.target_per_minute is None:
            note = ("no level held it, not even 1 client: more instances do not make one request faster, so no "
                    "scaling target meets this budget here (a larger instance or a lighter model can)")
        else:
            note = (f"at {d.at_concurrency} client(s); x {d.safety_factor} x 60 = {d.target_per_minute} "
                    "invocations per minute")
        plural = "s" if workers != 1 else ""
        section.rows.append(Row(
            section.key,
            f"{d.workload} JPEG: peak req/s one {instance_type}-sized instance holds ({workers} worker{plural})",
            Stats.of([d.max_rps]), "req/s", higher_is_better=True, target=f"p99 <= {_ms(d.budget_s)} and no errors",
            met=d.target_per_minute is not None, note=note))
    chosen = ct.governing(found)
    if chosen is None:
        section.notes.append("No workload held its budget at any level: no target derived, the template is as it was.")
        return
    default = ct.template_default()
    section.rows.append(Row(
        section.key, f"{ct.PARAMETER} (invocations per instance per minute) = peak req/s x {chosen.safety_factor} "
        f"x 60, smallest over the models and workloads that held their budget ({chosen.workload})",
        Stats.of([chosen.target_per_minute]), "per minute",
        target=f"infra/breedline.yaml Default equals it (now {default})" if verdict else "",
        met=default == chosen.target_per_minute if verdict else None,
        note="" if verdict else f"quick run: not compared with the template's Default ({default})"))


def run(section: Section, quick: bool) -> None:
    from breedline.local.worker_pool import container_workers

    instance_type, vcpus = instance()
    # Quick (inside make test): one worker, which starts in half the time; the pool's queueing across
    # workers is tested on its own (tests/bench/test_capacity.py) and the full run uses the container's count.
    workers = 1 if quick else container_workers(vcpus)
    bodies = workloads(quick)
    work = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    measured: dict[str, dict[str, list[dict]]] = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = list(os.getloadavg())
    try:
        for index, model in enumerate(QUICK_MODELS if quick else MODELS):
            measured[model] = measure_model(section, work, model, bodies, workers, quick,
                                            with_baseline=index == 0 and not quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = derivations(measured)
    chosen = ct.governing(found)
    section.notes.append(
        ("Quick run: 1 worker. The full run uses " if quick else f"{workers} workers: ")
        + f"what SageMaker's PyTorch container starts on an {instance_type} ({vcpus} vCPUs; "
        "TorchServe's default, one per vCPU, unless SAGEMAKER_MODEL_SERVER_WORKERS is set), behind one loopback "
        "port that queues requests for the next free worker. Latency is the client's, queueing included. "
        f"Budgets: p99 <= {_ms(ct.LATENCY_BUDGETS_S['500x400'])} for 500 x 400, "
        f"<= {_ms(ct.LATENCY_BUDGETS_S['12mp'])} for 12 MP (bench/capacity_target.py says why).")
    section.notes.append(
        "Clients, frontend and workers share this machine's 2 cores (on SageMaker the clients are elsewhere), "
        "which lowers these figures; an ml.m5.large's 2 vCPUs are one physical core's two hyperthreads, which "
        "lowers the instance's (docs/aws.md 4.4). A workload that no level held is left out of the target "
        "(no instance count fixes one slow request).")
    if quick:
        section.notes.append("Quick run: nothing recorded, the template is left as it is.")
        add_target_rows(section, instance_type, workers, found, verdict=False)
        return
    if chosen is not None:
        ct.write_record({"date": started, "command": "python -m bench --only capacity", "instance": instance_type,
                         "vcpus": vcpus, "workers": workers, "budgets_s": ct.LATENCY_BUDGETS_S,
                         "safety_factor": ct.SAFETY_FACTOR, "load_average_start": load_start,
                         "load_average_end": list(os.getloadavg()), "workloads": measured,
                         "derived": ct.as_dict(chosen)})
        before = ct.set_template_default(chosen.target_per_minute)
        section.notes.append(f"Recorded in bench/recorded/capacity.json; infra/breedline.yaml {ct.PARAMETER} "
                             f"Default {before} -> {chosen.target_per_minute}.")
    add_target_rows(section, instance_type, workers, found, verdict=True)
