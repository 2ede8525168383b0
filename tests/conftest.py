"""Put the three code roots first on the path, the way they are at run time.

The editable install (``make venv``) already puts them on the path through its
``.pth`` file (docs/architecture.md); this repeats them in front, so that
``pytest`` run from a second checkout or git worktree imports that checkout's
files rather than the installed one's.

- ``ml_scripts/`` is the SageMaker ``source_dir``: its modules import each other
  as top-level modules (``import contract``).
- ``chalice_app/`` is the Lambda root: ``app`` and ``chalicelib`` are top level.
- The repo root carries ``breedline`` (local runtime, CLI, deploy tool) and ``bench``.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "ml_scripts", ROOT / "chalice_app"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Never touch a real AWS account from tests, whatever the developer's shell has.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Breedline")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "breedline")


def _requirement_pins(path: Path) -> dict[str, str]:
    """``name==version`` pins of a requirements file (names lower-cased, comments dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {name.strip().lower(): version.strip() for name, version in
            (line.split("==", 1) for line in lines if "==" in line)}


@pytest.fixture
def requirement_pins():
    """:func:`_requirement_pins`, for the tests that keep a shipped pin equal to the tested one."""
    return _requirement_pins
