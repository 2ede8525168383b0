"""sourcedir.tar.gz: deterministic, rooted at ml_scripts/, no caches, symlinks as files."""

from __future__ import annotations

import tarfile

from breedline.build.paths import ML_SCRIPTS
from breedline.build.sourcedir import build_sourcedir, sha256


def test_build_sourcedir_is_deterministic_and_clean(tmp_path):
    (ML_SCRIPTS / "__pycache__").mkdir(exist_ok=True)
    first = build_sourcedir(tmp_path / "a")
    second = build_sourcedir(tmp_path / "b" / "custom.tar.gz")
    assert first.name == "sourcedir.tar.gz" and second.name == "custom.tar.gz"
    assert sha256(first) == sha256(second)
    with tarfile.open(first) as tar:
        names = tar.getnames()
        members = {m.name: m for m in tar.getmembers()}
    assert "train.py" in names and "inference.py" in names and "contract.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert all(m.isfile() and m.mtime == members["train.py"].mtime for m in members.values())
    assert names == sorted(names)
