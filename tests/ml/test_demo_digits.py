"""breedline/demo_digits.py: the digits demo data set is stratified, deterministic and runs both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from breedline import demo_digits
from contract import CHANNELS
from ml_jobs import ROOT


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_write_digits_is_stratified_and_deterministic(tmp_path: Path) -> None:
    counts = demo_digits.write_digits(tmp_path / "a", per_class=20, size=24)
    assert counts == {"train": 140, "valid": 30, "test": 30}
    for split in CHANNELS:
        classes = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        assert classes == [str(i) for i in range(10)], split
        for folder in (tmp_path / "a" / split).iterdir():
            assert len(list(folder.glob("*.jpg"))) == {"train": 14, "valid": 3, "test": 3}[split]
    demo_digits.write_digits(tmp_path / "b", per_class=20, size=24)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    names = {split: {p.name for p in (tmp_path / "a" / split).rglob("*.jpg")} for split in CHANNELS}
    assert not (names["train"] & names["valid"]) and not (names["train"] & names["test"])
    image = Image.open(next((tmp_path / "a" / "train" / "0").glob("*.jpg")))
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (24, 24))
    # Ink is dark on white paper: the corners are background.
    assert min(image.convert("L").getpixel((0, 0)), image.convert("L").getpixel((23, 23))) > 200


def test_all_digits_by_default(tmp_path: Path) -> None:
    counts = demo_digits.write_digits(tmp_path, size=8)
    assert sum(counts.values()) == 1797


def test_too_few_per_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use >= 3"):
        demo_digits.write_digits(tmp_path, per_class=2)


@pytest.mark.parametrize("how", ["module", "script"])
def test_command_line(tmp_path: Path, how: str) -> None:
    cmd = ["-m", "breedline.demo_digits"] if how == "module" else [str(ROOT / "breedline" / "demo_digits.py")]
    out = tmp_path / "digits"
    result = subprocess.run(
        [sys.executable, *cmd, "digits", str(out), "--per-class", "5", "--size", "16"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "train=30 valid=10 test=10" in result.stdout
    assert len(list(out.rglob("*.jpg"))) == 50
