"""Section 11: cold start and worker memory, ``model.onnx`` built in the job against today's in-memory export.

What an operator pays when a worker starts (a new instance, a scaled-out
endpoint, a serverless cold start): a fresh Python process imports the serving
code, runs ``model_fn`` and answers one 500x400 JPEG. Measured from just before
the process is spawned to the moment the answer exists (``time.time()`` in both
processes, the same clock), for:

- **built in the job**: the model directory with the ``model.onnx``
  ``onnx_export.build_onnx_artifact`` wrote (what ``final_job.ship_onnx`` does
  after evaluation): ``model_fn`` opens it in ONNX Runtime and never imports torch;
- **today**: the same directory without it: ``model_fn`` imports torch, builds the
  module, loads ``model.pt`` and exports ONNX in memory (the baseline).

Resident memory (``VmRSS``) after the first answer, and the peak (``VmHWM``),
come from the same processes (not ``ru_maxrss``: a process spawned from this
one, which has torch loaded, inherits its high-water mark through the exec). The two ways alternate, repetition by repetition,
so load drift on this shared machine hits both alike. vgg11 has seeded random
weights (its hub weights can't be downloaded here; time and memory depend only
on the shapes); efficientnet_lite0 is the ImageNet classifier its package ships.

A last row measures what the serving toolkit adds in the container: its handler
service (``sagemaker_pytorch_serving_container.handler_service``) imports torch
at import (``default_pytorch_inference_handler``: ``import torch``), so there the
torch import is paid whatever our code does (docs/ml.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import images, models
from bench.core import Row, Section, Stats

ROOT = Path(__file__).resolve().parent.parent
ML = ROOT / "ml_scripts"

_CHILD = r"""
import json, sys, time
import inference
model = inference.model_fn(sys.argv[1])
answer = inference.predict_bytes(open(sys.argv[2], "rb").read(), "image/jpeg", model)
done = time.time()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"done": done, "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
                  "peak_mib": int(status["VmHWM"].split()[0]) / 1024,
                  "backend": model.backend, "torch_imported": "torch" in sys.modules,
                  "label": json.loads(answer)["top_k"][0]["label"]}))
"""

_TOOLKIT = r"""
import json, sys, time
import sagemaker_pytorch_serving_container.handler_service
print(json.dumps({"done": time.time(), "torch_imported": "torch" in sys.modules}))
"""


def child_env() -> dict[str, str]:
    """The serving code from ``ml_scripts/`` as ``code/`` would give it; the default backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREEDLINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ML), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def fresh_process(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a new interpreter; its JSON last line, with ``seconds`` from spawn to ``done``."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", script, *args], env=child_env(), capture_output=True,
                          text=True, timeout=600, cwd=ML)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {proc.stderr[-1500:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = out["done"] - start
    return out


def build_artifacts(work: Path, architecture: str, image_size: int) -> tuple[Path, Path, dict[str, Any]]:
    """Two model directories of one network: with the job's ``model.onnx`` and (today's) without."""
    import onnx_export
    import presets
    from decoding import load_rgb, resize_crop

    job_dir = models.write_model_dir(work / f"{architecture}-job", architecture, image_size=image_size)
    old_dir = work / f"{architecture}-old"
    old_dir.mkdir()
    os.link(job_dir / "model.pt", old_dir / "model.pt")
    (old_dir / "model_meta.json").write_bytes((job_dir / "model_meta.json").read_bytes())
    prep = presets.Preprocessing(image_size=image_size)
    probe = np.concatenate([
        prep.normalise_numpy(np.asarray(resize_crop(load_rgb(body), prep.resize_size, image_size)))
        for _, body in images.photo_variants(8, max_side=800)
    ])
    module, _meta = models.load_plain(job_dir)
    facts = onnx_export.build_onnx_artifact(module, job_dir, probe)
    meta = json.loads((job_dir / "model_meta.json").read_text(encoding="utf-8"))
    (job_dir / "model_meta.json").write_text(json.dumps({**meta, "onnx": facts}), encoding="utf-8")
    if facts["status"] != "ok":
        raise RuntimeError(f"{architecture}: the job-side export failed: {facts['reason']}")
    return job_dir, old_dir, facts


def measure(section: Section, work: Path, architecture: str, image_size: int, repeat: int, photo: Path) -> None:
    """Cold start and memory of one architecture, both ways, ``repeat`` alternating runs each."""
    job_dir, old_dir, facts = build_artifacts(work, architecture, image_size)
    runs: dict[str, list[dict[str, Any]]] = {"job": [], "old": []}
    for _ in range(repeat):
        for way, folder in (("job", job_dir), ("old", old_dir)):
            runs[way].append(fresh_process(_CHILD, str(folder), str(photo)))
    job, old = runs["job"], runs["old"]
    if job[0]["backend"] != "onnx" or job[0]["torch_imported"] or old[0]["backend"] != "onnx":
        section.notes.append(f"{architecture}: unexpected serving path: job {job[0]}, today {old[0]}")
    if job[0]["label"] != old[0]["label"]:
        section.notes.append(f"{architecture}: the two ways answered differently ({job[0]['label']} vs "
                             f"{old[0]['label']})")
    seconds = Row("cold_start", f"{architecture}: fresh process to first answer (import + model_fn + one 500x400 "
                  "JPEG), model.onnx built in the job vs today's in-memory export at load",
                  Stats.of(r["seconds"] for r in job), "s", baseline=Stats.of(r["seconds"] for r in old))
    rss = Row("cold_start", f"{architecture}: worker resident memory after the first answer (VmRSS), model.onnx "
              "vs in-memory export", Stats.of(r["rss_mib"] for r in job), "MiB",
              baseline=Stats.of(r["rss_mib"] for r in old), target="at most half")
    rss.met = (rss.speedup or 0) >= 2.0
    if architecture == "efficientnet_lite0":
        seconds.target = ">= 5x faster and < 1.5 s"
        seconds.met = (seconds.speedup or 0) >= 5.0 and seconds.value is not None and seconds.value.median < 1.5
    section.rows.append(seconds)
    section.rows.append(rss)
    section.rows.append(Row("cold_start", f"{architecture}: peak resident memory of the worker (VmHWM), "
                            "model.onnx vs in-memory export", Stats.of(r["peak_mib"] for r in job), "MiB",
                            baseline=Stats.of(r["peak_mib"] for r in old)))
    section.notes.append(
        f"{architecture} ({image_size} px): model.onnx {facts['bytes'] / 2**20:.1f} MiB, opset {facts['opset']}; "
        f"job-side parity on {facts['parity']['probe_images']} photo crops: max |diff| logits "
        f"{facts['parity']['max_abs_diff_logits']:.2g}, top-1 agreement {facts['parity']['top1_agreement']:.3f}."
    )


def toolkit_row(section: Section, repeat: int) -> None:
    """The serving toolkit's handler service import alone, in a fresh process: what the container pays first."""
    try:
        import sagemaker_pytorch_serving_container  # noqa: F401
    except ImportError:
        section.notes.append("sagemaker-pytorch-inference is not installed: no toolkit import row")
        return
    results = [fresh_process(_TOOLKIT) for _ in range(repeat)]
    section.rows.append(Row("cold_start", "fresh process: import sagemaker_pytorch_serving_container.handler_service "
                            f"alone (imports torch: {results[0]['torch_imported']})",
                            Stats.of(r["seconds"] for r in results), "s"))


def run(section: Section, quick: bool) -> None:
    repeat = 1 if quick else 5
    # --quick: the small model at 64 px (vgg11 cannot export below 224 px: its adaptive pooling).
    plan = [("efficientnet_lite0", 64)] if quick else [("efficientnet_lite0", 224), ("vgg11", 224)]
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp:
        work = Path(tmp)
        photo = work / "photo.jpg"
        photo.write_bytes(images.dataset_jpeg(images.sample_photos()["coffee"]))
        for architecture, image_size in plan:
            measure(section, work, architecture, image_size, repeat, photo)
    if not quick:  # a smoke run skips it: one more torch import, no code of ours
        toolkit_row(section, repeat)
    section.notes.append(
        f"Each figure: {repeat} fresh processes per way, the ways alternating; torch and ONNX Runtime use their "
        "default thread counts. The model directories have no abstention (the job's artifacts add abstention.npz "
        "and a features output, the same on both ways). In the serving container the toolkit's handler service "
        "imports torch before model_fn runs (last row), so there the gain is the export and the module, not the "
        "torch import; the memory of an imported torch stays too."
    )
