"""``python -m bench.serving_memory [ARCH ...]``: peak memory of ``inference.model_fn`` per architecture.

Why: a Serverless Inference endpoint has a fixed memory size, and the model
must load in it. ``model_fn`` builds the network, loads ``model.pt`` and, with
the default serving backend, exports it to ONNX in memory and opens an ONNX
Runtime session: that is the peak. Each architecture is measured in a fresh
process (``resource.getrusage``'s ``ru_maxrss``, the kernel's own peak
resident set), so one model's memory never counts for the next. The figures
go to docs/aws.md (Serverless Inference) and feed
``breedline.deploy.serverless.MODEL_MEMORY_MB``. Not part of ``make bench``:
it measures a deployment precondition, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Classes of the head (the Stanford Dogs data set the project is sized for).
NUM_CLASSES = 120

_WRITE = """
import json, sys, torch
from backbones import build_model
from presets import Preprocessing
arch, out = sys.argv[1], sys.argv[2]
model = build_model(arch, int(sys.argv[3]), pretrained=False)
torch.save(model.state_dict(), out + "/model.pt")
meta = {"architecture": arch, "num_classes": int(sys.argv[3]),
        "class_names": [f"c{i}" for i in range(int(sys.argv[3]))], **Preprocessing().to_meta()}
open(out + "/model_meta.json", "w").write(json.dumps(meta))
"""

_MEASURE = """
import json, resource, sys
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import torch, inference
imported = peak_mib()
model = inference.model_fn(sys.argv[1])
print(json.dumps({"after_imports_mib": round(imported), "peak_mib": round(peak_mib()),
                  "backend": model.backend}))
"""


def measure(architecture: str, backend: str, threads: int) -> dict[str, object]:
    """Write a bare model directory, then load it with ``model_fn`` in a fresh process."""
    env = {**os.environ, "BREEDLINE_SERVING_BACKEND": backend, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as model_dir:
        subprocess.run([sys.executable, "-c", _WRITE, architecture, model_dir, str(NUM_CLASSES)],
                       check=True, env=env)
        size_mib = (Path(model_dir) / "model.pt").stat().st_size / 2**20
        proc = subprocess.run([sys.executable, "-c", _MEASURE, model_dir], check=True, env=env,
                              capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"architecture": architecture, "requested_backend": backend, "model_pt_mib": round(size_mib),
            **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("architectures", nargs="*", default=["efficientnet_lite0", "resnet50", "vgg11"])
    parser.add_argument("--backend", action="append", choices=["auto", "torch"],
                        help="serving backend(s) to measure (default: auto, then torch)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for architecture in args.architectures:
        for backend in args.backend or ["auto", "torch"]:
            print(json.dumps(measure(architecture, backend, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
