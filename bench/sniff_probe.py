"""Probe: the settle-time first/last-bytes check against train.py's decoder (issue 15, item 13).

``python -m bench.sniff_probe [N]`` makes N real images of each kind with
Pillow (JPEG baseline, progressive, with EXIF, grayscale; PNG RGB, RGBA,
palette, 16-bit; GIF, BMP, WebP), each also cut at a random point (10-95%),
JPEGs with data appended after their end (zeros, a 20 kB random "Motion
Photo" trailer), and N text files named ``.jpg``, AppleDouble ``._*`` files
and empty files. For each it compares :func:`chalicelib.datasets.sniff_problem`
(what the Lambda sees: first 16 and last 4,096 bytes, and the size) with
``decoding.load_rgb`` (what train.py calls), and prints one row per kind.
The figures are in docs/reliability.md, "The uploader's data set".
"""

from __future__ import annotations

import collections
import io
import random
import sys
from collections.abc import Iterator

from chalicelib.datasets import HEAD_BYTES, TAIL_BYTES, sniff_problem
from decoding import load_rgb
from PIL import Image

COLUMNS = ("decodes, passed", "decodes, FLAGGED", "broken, flagged", "broken, PASSED")


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def corpus(n: int, seed: int = 15) -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of every probe file."""
    rng = random.Random(seed)

    def noise(mode: str = "RGB") -> Image.Image:
        size = (rng.randint(8, 600), rng.randint(8, 600))
        return Image.effect_noise(size, rng.uniform(20, 90)).convert(mode)

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: train.py undoes it
    for _ in range(n):
        made = {
            "jpeg": _save(noise(), "JPEG", quality=rng.randint(30, 95)),
            "jpeg-progressive": _save(noise(), "JPEG", progressive=True),
            "jpeg-exif": _save(noise(), "JPEG", exif=exif.tobytes()),
            "jpeg-gray": _save(noise("L"), "JPEG"),
            "png": _save(noise(), "PNG"),
            "png-rgba": _save(noise("RGBA"), "PNG"),
            "png-palette": _save(noise().convert("P"), "PNG"),
            "png-16bit": _save(noise("L").convert("I;16"), "PNG"),
            "gif": _save(noise().convert("P"), "GIF"),
            "bmp": _save(noise(), "BMP"),
            "webp": _save(noise(), "WEBP"),
        }
        for kind, data in made.items():
            yield kind, data
            yield f"{kind} truncated", data[: rng.randint(len(data) // 10, len(data) * 95 // 100)]
        jpeg = made["jpeg"]
        yield "jpeg + 300 zero bytes after its end", jpeg + b"\0" * 300
        yield "jpeg + 8 kB zero bytes after its end", jpeg + b"\0" * 8192
        yield "jpeg + 20 kB random trailer (Motion Photo)", jpeg + rng.randbytes(20_000)
        yield "text named .jpg", b"some notes, not an image\n" * rng.randint(1, 50)
        yield "AppleDouble ._x.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00" + rng.randbytes(rng.randint(50, 4000))
        yield "empty", b""


def decodes(data: bytes) -> bool:
    try:
        load_rgb(data)
    except Exception:  # noqa: BLE001 - any failure is "train.py skips it"
        return False
    return True


def probe(n: int) -> dict[str, list[int]]:
    """Per kind: counts in the order of :data:`COLUMNS`."""
    table: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for kind, data in corpus(n):
        flagged = sniff_problem(data[:HEAD_BYTES], data[-TAIL_BYTES:] if data else b"", len(data)) is not None
        column = (1 if flagged else 0) if decodes(data) else (2 if flagged else 3)
        table[kind][column] += 1
    return dict(table)


def main(argv: list[str]) -> int:
    table = probe(int(argv[0]) if argv else 100)
    print(f"| kind | {' | '.join(COLUMNS)} |")
    print("| --- |" + " ---: |" * len(COLUMNS))
    for kind in sorted(table):
        print(f"| {kind} | " + " | ".join(str(v) for v in table[kind]) + " |")
    totals = [sum(row[i] for row in table.values()) for i in range(len(COLUMNS))]
    print("| **total** | " + " | ".join(str(v) for v in totals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
