"""``python -m bench.serving_memory [ARCH ...]``: a serving worker's peak memory per architecture and artifact.

Why: a Serverless Inference endpoint has a fixed memory size (1024..6144 MB),
and the worker must load the model and decode the largest request in it. Each
case runs in a fresh process: ``inference.model_fn`` on the model directory,
then one prediction on each of the largest bodies a serverless endpoint lets
through (its payload limit, 4,000,000 bytes, ``chalicelib.config.SERVERLESS_PAYLOAD_BYTES``):
a JPEG of ~16 MP (the decode budget's default) and a 16 MP PNG. The peak is the
kernel's high-water mark of the process (``VmHWM``). Cases:

- ``model.onnx``: the artifact the job builds (``onnx_export.build_onnx_artifact``),
  served by ONNX Runtime without torch;
- ``model.onnx + torch``: the same after ``import torch``, as in the serving
  container, whose toolkit handler service imports torch before ``model_fn``;
- ``torch``: what serves when the job found ONNX unfit (``BREEDLINE_SERVING_BACKEND=torch``);
- ``in-memory export``: an artifact built before the job exported ONNX (the old peak).

The figures go to docs/aws.md (Serverless Inference) and feed
``breedline.deploy.serverless.MODEL_MEMORY_MB``. Not part of ``make bench``:
it measures a deployment precondition, not speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Classes of the head (the Stanford Dogs data set the project is sized for).
NUM_CLASSES = 120
CASES: dict[str, tuple[str, bool, bool]] = {  # name: (backend, keep model.onnx, import torch first)
    "model.onnx": ("auto", True, False),
    "model.onnx + torch": ("auto", True, True),
    "torch": ("torch", True, False),
    "in-memory export": ("auto", False, False),
}

_WRITE = """
import json, sys, numpy as np, torch
from backbones import build_model
from presets import Preprocessing
from onnx_export import build_onnx_artifact
arch, out, classes = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = build_model(arch, classes, pretrained=False).eval()
torch.save(model.state_dict(), out + "/model.pt")
meta = {"architecture": arch, "num_classes": classes, "class_names": [f"c{i}" for i in range(classes)],
        **Preprocessing().to_meta()}
probe = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
meta["onnx"] = build_onnx_artifact(model, out, probe)
open(out + "/model_meta.json", "w").write(json.dumps(meta))
print(json.dumps(meta["onnx"]["status"]))
"""

_MEASURE = """
import json, sys
def mib(key):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return round(int(status[key].split()[0]) / 1024)
if sys.argv[2] == "1":
    import torch
import inference
imported = mib("VmHWM")
model = inference.model_fn(sys.argv[1])
loaded = mib("VmHWM")
for path, kind in ((sys.argv[3], "image/jpeg"), (sys.argv[4], "image/png")):
    inference.predict_bytes(open(path, "rb").read(), kind, model)
print(json.dumps({"after_imports_mib": imported, "after_model_fn_mib": loaded, "peak_mib": mib("VmHWM"),
                  "rss_after_mib": mib("VmRSS"), "backend": model.backend,
                  "torch_imported": "torch" in sys.modules}))
"""


def largest_bodies(folder: Path) -> tuple[Path, Path]:
    """A JPEG and a PNG of about 16 MP, each within the 4,000,000-byte serverless payload."""
    import numpy as np
    from chalicelib.config import SERVERLESS_PAYLOAD_BYTES as PAYLOAD_BYTES
    from PIL import Image

    rng = np.random.default_rng(0)
    size = (4608, 3456)  # 15.9 MP, 4:3: inside the 16 MP decode budget
    gradient = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    jpeg = b""
    for quality in (90, 80, 70, 60, 50, 40):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
        jpeg = buf.getvalue()
        if len(jpeg) <= PAYLOAD_BYTES:
            break
    smooth = np.broadcast_to(gradient.astype(np.uint8), (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(smooth)).save(buf, "PNG")
    paths = folder / "largest.jpg", folder / "largest.png"
    paths[0].write_bytes(jpeg)
    paths[1].write_bytes(buf.getvalue())
    for path in paths:
        assert path.stat().st_size <= PAYLOAD_BYTES, path
    return paths


def env_for(backend: str, threads: int) -> dict[str, str]:
    env = {**os.environ, "BREEDLINE_SERVING_BACKEND": backend, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "ml_scripts"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def measure(architecture: str, cases: list[str], threads: int, bodies: tuple[Path, Path]) -> list[dict[str, object]]:
    """Write a model directory (with the job's model.onnx), then serve it in a fresh process per case."""
    results = []
    with tempfile.TemporaryDirectory() as model_dir:
        subprocess.run([sys.executable, "-c", _WRITE, architecture, model_dir, str(NUM_CLASSES)],
                       check=True, env=env_for("auto", threads), capture_output=True)
        meta_path = Path(model_dir) / "model_meta.json"
        meta = json.loads(meta_path.read_text())
        sizes = {name: round(p.stat().st_size / 2**20) for name in ("model.pt", "model.onnx")
                 if (p := Path(model_dir) / name).is_file()}
        for case in cases:
            backend, keep_onnx, torch_first = CASES[case]
            if not keep_onnx:
                (Path(model_dir) / "model.onnx").unlink(missing_ok=True)
                meta.pop("onnx", None)
                meta_path.write_text(json.dumps(meta))
            proc = subprocess.run([sys.executable, "-c", _MEASURE, model_dir, "1" if torch_first else "0",
                                   str(bodies[0]), str(bodies[1])], check=True, env=env_for(backend, threads),
                                  capture_output=True, text=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append({"architecture": architecture, "case": case, "file_mib": sizes, **result})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("architectures", nargs="*", default=["efficientnet_lite0", "resnet50", "vgg11"])
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="what to measure (default: all; 'in-memory export' runs last, it removes model.onnx)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    cases = [c for c in CASES if c in (args.case or list(CASES))]
    with tempfile.TemporaryDirectory() as tmp:
        bodies = largest_bodies(Path(tmp))
        print(json.dumps({"payloads": {p.suffix: p.stat().st_size for p in bodies}}), flush=True)
        for architecture in args.architectures:
            for result in measure(architecture, cases, args.threads, bodies):
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
