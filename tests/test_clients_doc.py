"""docs/clients.md shows the client examples as they are in their files, which the e2e tests run."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "clients.md"
EXAMPLES = [ROOT / "docs" / "examples" / "predict.sh", ROOT / "docs" / "examples" / "classify_image.py",
            ROOT / "chalice_app" / "chalicelib" / "web" / "client.js"]


def fenced_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_each_example_is_shown_verbatim(example: Path) -> None:
    assert example.read_text(encoding="utf-8") in fenced_blocks(DOC.read_text(encoding="utf-8")), (
        f"docs/clients.md does not show {example.relative_to(ROOT)} as it is; paste the file into its block")
