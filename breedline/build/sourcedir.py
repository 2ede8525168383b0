"""Build ``sourcedir.tar.gz``: the tarred ``ml_scripts/`` that SageMaker unpacks.

Why deterministic: the deploy helper uploads it and compares digests, and the
local runtime rebuilds it on every start; the same sources must give the same
bytes (sorted members, fixed mtime/owner, no caches, gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from breedline.build.paths import ML_SCRIPTS

#: Names never packed: caches and editor/test debris.
_EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ipynb_checkpoints", ".DS_Store"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".swp")
_FIXED_MTIME = 1_700_000_000


def _members(source: Path) -> list[Path]:
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _EXCLUDED_PARTS for part in rel.parts) or path.name.endswith(_EXCLUDED_SUFFIXES):
            continue
        if path.is_file():
            files.append(path)
    return files


def build_sourcedir(dest: Path | str, source: Path | str = ML_SCRIPTS) -> Path:
    """Write ``sourcedir.tar.gz`` for ``source`` (default ``ml_scripts/``) and return its path.

    ``dest`` is a directory (the file is named ``sourcedir.tar.gz`` in it) or a
    path ending in ``.tar.gz``. Members sit at the archive root (``train.py``,
    not ``ml_scripts/train.py``), as SageMaker's ``sagemaker_submit_directory``
    expects. Symlinks are stored as the file they point to: the archive holds
    only real files, whatever the checkout links.
    """
    source = Path(source)
    dest = Path(dest)
    target = dest if dest.name.endswith(".tar.gz") else dest / "sourcedir.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(source):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(source).as_posix())
            info.size = len(data)
            info.mtime = _FIXED_MTIME
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(target, "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
            gz.write(raw.getvalue())
    return target


def sha256(path: Path | str) -> str:
    """Hex digest of a file, for comparing an uploaded tarball with a fresh build."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
