"""Helpers shared by the ML tests: a train.py job laid out like /opt/ml."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML = ROOT / "ml_scripts"


@dataclass
class Job:
    """One train.py run laid out like /opt/ml."""

    base: Path
    data: Path
    result: subprocess.CompletedProcess | None = None
    #: More of the container's variables, e.g. ``TRAINING_JOB_NAME`` or ``SM_CHANNEL_PRETRAINED``.
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.base / "output" / "data"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"

    def env(self) -> dict[str, str]:
        own = ("SM_", "BREEDLINE_", "TRAINING_JOB_NAME")
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env.update(
            {
                "SM_CHANNEL_TRAIN": str(self.data / "train"),
                "SM_CHANNEL_VALID": str(self.data / "valid"),
                "SM_CHANNEL_TEST": str(self.data / "test"),
                "SM_MODEL_DIR": str(self.model_dir),
                "SM_OUTPUT_DIR": str(self.output_dir),
                "SM_OUTPUT_DATA_DIR": str(self.output_data_dir),
                "SM_INPUT_CONFIG_DIR": str(self.config_dir),
                "SM_NUM_GPUS": "0",
                "SM_NUM_CPUS": "2",
                "BREEDLINE_CHECKPOINT_DIR": str(self.checkpoint_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.environment)
        return env

    def run(self, args: list[str], hyperparameters: dict[str, str] | None = None, timeout: int = 240):
        """Run train.py the way SageMaker does: cwd = source dir, env vars, JSON file, CLI."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if hyperparameters is not None:
            (self.config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        self.result = subprocess.run(
            [sys.executable, "train.py", *args],
            cwd=ML,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return self.result


#: SageMaker writes every hyperparameter as a JSON string; the tuner may quote twice.
HYPERPARAMETERS = {
    "batch_size": '"\\"16\\""',
    "learning_rate": '"0.003"',
    "model": '"efficientnet_lite0"',
    "image_size": "32",
    "sagemaker_program": '"train.py"',
    "sagemaker_submit_directory": '"s3://bucket/sourcedir.tar.gz"',
}


@functools.lru_cache(maxsize=None)
def photo_jpeg(name: str, size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """A scikit-image sample photo as JPEG bytes, optionally resized (e.g. to 12 MP); cached."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(getattr(data, name)())
    if size is not None:
        photo = photo.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# Stated tolerance of the fast path (draft decoding + one fused resize) against
# the plain path (full decode, Resize, CenterCrop, ToTensor, Normalize), in
# normalised units (1.0 ~ 57 grey levels): mean |diff| and 99th percentile.
FAST_PATH_MEAN_TOLERANCE = 0.05
FAST_PATH_P99_TOLERANCE = 0.4


def jpeg_bytes(image, **kwargs) -> bytes:
    """``image`` saved as a quality-90 JPEG (``kwargs`` go to ``Image.save``, e.g. ``exif``)."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def sample_photos() -> dict:
    """Three scikit-image sample photos as PIL images, by name."""
    from PIL import Image
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "astronaut", "coffee")}


def serve_in_bare_process(model_dir: Path, image: Path, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (argv: model dir, image) as the serving container would: ``code/`` first on the path.

    ``-S`` and a bare environment: no site hooks, no editable install, so only the model's own
    ``code/`` and the installed packages (after it) are importable.
    """
    installed = sysconfig.get_paths()
    pythonpath = os.pathsep.join(dict.fromkeys([str(model_dir / "code"), installed["purelib"], installed["platlib"]]))
    return subprocess.run(
        [sys.executable, "-S", "-c", script, str(model_dir), str(image)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath},
    )


def fresh_model(model_dir: Path, monkeypatch, backend: str | None):
    """``inference.model_fn`` with an empty cache and the given BREEDLINE_SERVING_BACKEND (None: unset)."""
    import inference

    monkeypatch.setattr(inference, "_models", {})
    if backend is None:
        monkeypatch.delenv("BREEDLINE_SERVING_BACKEND", raising=False)
    else:
        monkeypatch.setenv("BREEDLINE_SERVING_BACKEND", backend)
    return inference.model_fn(str(model_dir))
