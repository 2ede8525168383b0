"""The Lambda build copy: ``chalice_app/`` plus what its zip needs from elsewhere.

Why a copy: ``chalice package`` zips the folder it runs in. The deploy tool
writes stage-specific settings (image URIs, stack-owned names) into the copy's
``.chalice/config.json``, so the tracked config stays clean, and the copy adds
``vendor/contract.py``: Chalice puts the contents of ``vendor/`` at the zip's
root, so the Lambda runs ``import contract`` exactly as the checkout and the
SageMaker containers do. The copy lives under ``build/``, never inside
``chalice_app/`` itself.

Chalice caches the Lambda's built dependencies in ``.chalice/deployments/``,
keyed by the requirements' hash. :func:`make_build_copy` seeds the copy with
that cache and :func:`keep_deps_cache` saves it back, so the package registry
is only asked when ``chalice_app/requirements.txt`` changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from breedline.build.paths import APP_DIR, BUILD_DIR, CONTRACT

#: Built Lambda dependencies kept across build copies (see the module docstring).
DEPS_CACHE = BUILD_DIR / "deploy-cache"
_NOT_COPIED = ("deployments", "__pycache__", "*.pyc", ".pytest_cache")


def make_build_copy(dest: Path, app_dir: Path = APP_DIR) -> Path:
    """Replace ``dest`` with a copy of ``app_dir`` that ``chalice package`` can zip as deployed; return it.

    Symlinks are copied as the files they point to, so the zip never holds a
    link into the checkout.
    """
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(app_dir, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    vendor = dest / "vendor"
    vendor.mkdir(exist_ok=True)
    shutil.copyfile(CONTRACT, vendor / CONTRACT.name)
    cached = dest / ".chalice" / "deployments"
    cached.mkdir(parents=True, exist_ok=True)
    for source in (DEPS_CACHE, app_dir / ".chalice" / "deployments"):
        if source.is_dir():
            for zipped in source.glob("*-python*.zip"):
                if not (cached / zipped.name).exists():
                    _atomic_copy(zipped, cached / zipped.name)
    return dest


def keep_deps_cache(build_app: Path) -> None:
    """Save the dependency zips ``chalice package`` built in ``build_app`` for the next build copy."""
    DEPS_CACHE.mkdir(parents=True, exist_ok=True)
    for zipped in (build_app / ".chalice" / "deployments").glob("*-python*.zip"):
        if not (DEPS_CACHE / zipped.name).exists():
            _atomic_copy(zipped, DEPS_CACHE / zipped.name)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy then rename, so a parallel build never reads half a zip."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    shutil.copy2(source, tmp)
    os.replace(tmp, target)
