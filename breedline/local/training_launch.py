"""How a local training job's process is started: AWS's own training toolkit, as the container does.

Why the toolkit and not our own launcher: in the PyTorch training image the
container's entry point is ``sagemaker-training``. It downloads
``sagemaker_submit_directory`` from S3 into ``/opt/ml/code``, runs
``pip install -r requirements.txt`` when the source dir has one, turns
``hyperparameters.json`` into ``--name value`` arguments, sets its ``SM_*``
variables and runs the script, then writes ``output/success`` or ``output/failure``.
Running the same entry point here (``python -m sagemaker_training.cli.train``
with ``SAGEMAKER_BASE_DIR`` as ``/opt/ml``) makes every one of those steps the
toolkit's, not a copy of it.

What differs from the container, and why:

- ``SM_STUDIO_LOCAL_MODE=true`` skips the toolkit's wait for the ``algo-1`` host
  name, which only SageMaker's network resolves.
- ``AWS_ENDPOINT_URL_S3`` points the toolkit's S3 download at moto on loopback,
  with moto's credentials and the runtime's region; no other AWS endpoint is
  passed on, so a job cannot reach the operator's other stand-ins by accident.
- ``PIP_CONSTRAINT=/dev/null``: some machines set a global pip constraint file
  that would make the toolkit's install downgrade the runtime's own torch.
- ``PIP_NO_DEPS=1`` once the same source dir's requirements were fully resolved
  by an earlier job in this interpreter (:class:`RequirementsLedger`): pip still
  runs and still checks every listed pin, but skips re-walking a dependency tree
  it has just walked (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

#: The training image's entry point (``ENTRYPOINT``/``train`` in the image runs this module).
TOOLKIT_MODULE = "sagemaker_training.cli.train"

#: What the operator's environment must not hand the job: the toolkit's own inputs and our endpoints.
_DROPPED_PREFIXES = ("SM_", "SAGEMAKER_", "AWS_ENDPOINT_URL", "PIP_CONSTRAINT", "PIP_NO_DEPS")

#: Moto accepts any credentials; these are used when the runtime's environment has none.
_MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def container_paths(ml: Path) -> dict[str, Path]:
    """The container's ``/opt/ml`` folders under the job's own folder, created.

    ``code/`` stays empty: the toolkit downloads the source dir only into an empty one.
    """
    paths = {
        "input": ml / "input",
        "data": ml / "input" / "data",
        "config": ml / "input" / "config",
        "model": ml / "model",
        "output": ml / "output",
        "output_data": ml / "output" / "data",
        "checkpoints": ml / "checkpoints",
        "code": ml / "code",
        "debug": ml / "debug-output",
        "logs": ml / "logs",
    }
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    return paths


def toolkit_command() -> list[str]:
    """The container's entry point, on the runtime's own interpreter (pip installs into it too)."""
    return [sys.executable, "-m", TOOLKIT_MODULE]


def toolkit_environment(
    base: Mapping[str, str],
    root: Path,
    job_name: str,
    *,
    s3_endpoint: str | None,
    region: str,
    threads: int | None = None,
    skip_dependency_walk: bool = False,
) -> dict[str, str]:
    """The environment the toolkit process starts with; it adds every ``SM_*`` variable itself.

    ``base`` is the runtime's own environment, minus what would change the
    toolkit's view of the job (see the module docstring for each addition).
    """
    env = {k: v for k, v in base.items() if not k.startswith(_DROPPED_PREFIXES)}
    for name, value in _MOTO_CREDENTIALS.items():
        env.setdefault(name, value)
    env.update({
        "SAGEMAKER_BASE_DIR": str(root),
        "TRAINING_JOB_NAME": job_name,
        "SM_STUDIO_LOCAL_MODE": "true",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PIP_CONSTRAINT": "/dev/null",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "BREEDLINE_CHECKPOINT_DIR": str(root / "checkpoints"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    if s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if skip_dependency_walk:
        env["PIP_NO_DEPS"] = "1"
    return env


class RequirementsLedger:
    """Source dirs whose ``requirements.txt`` a finished job has installed into this interpreter.

    Why: the toolkit runs ``pip install -r requirements.txt`` before every job,
    and a full no-op resolve of ours costs seconds per job. A source dir is
    identified by its S3 URI and ETag (same bytes, same requirements); after one
    job with it completed, the whole dependency tree is known to be present, so
    later jobs keep the install step but let pip skip the tree walk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed: set[tuple[str, str, str]] = set()

    def key(self, uri: str, etag: str) -> tuple[str, str, str]:
        return (os.path.realpath(sys.executable), uri, etag)

    def installed(self, uri: str, etag: str) -> bool:
        with self._lock:
            return self.key(uri, etag) in self._installed

    def record(self, uri: str, etag: str) -> None:
        with self._lock:
            self._installed.add(self.key(uri, etag))


#: One ledger per runtime process: every job of this interpreter shares its site-packages.
LEDGER = RequirementsLedger()
