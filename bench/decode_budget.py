"""Section 6: the decode budget (issue 15, item 7): the largest accepted image against the refused bombs.

What it shows: ``inference.input_fn``'s peak memory and time on the largest images
``BREEDLINE_MAX_DECODE_MEGAPIXELS`` accepts (an RGBA PNG right at the budget, a 12 MP
RGB PNG, a 12 MP JPEG), and on the 8,900 x 8,900 PNGs of the issue (16-bit grey and
RGBA, a few hundred KB each), which are refused from their header. Each case runs
in a fresh process, and its peak is how far that process's peak resident set
(``VmHWM``, reset to the current RSS through ``/proc/self/clear_refs`` just before
the call) rose above its RSS before the call, so neither the imports' peak nor
another case's memory counts. A full run also decodes one bomb without a budget
(``decoding.load_rgb``, the path before the fix) for the contrast.

``--quick`` uses a 1-megapixel budget and a header-only bomb (signature, IHDR,
IEND: the same refusal, without encoding 79 MP), in this process (torch is already
imported here), so it takes a second: a smoke run, not figures.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from bench.core import Row, Section, Stats

ML = Path(__file__).resolve().parent.parent / "ml_scripts"

_CHILD = """
import json, sys, time
import inference, decoding
from bench_rss import peak_since, reset_peak
path, content_type, plain = sys.argv[1], sys.argv[2], sys.argv[3] == "plain"
data = open(path, "rb").read()
# Warm, as an endpoint after its first request: Pillow's plugins and the decoders are loaded.
for warm, kind in ((sys.argv[4], "image/png"), (sys.argv[5], "image/jpeg")):
    inference.input_fn(open(warm, "rb").read(), kind)
before = reset_peak()
started = time.perf_counter()
try:
    image = decoding.load_rgb(data) if plain else inference.input_fn(data, content_type)
    outcome = "accepted, decoded to %d x %d" % image.size
except inference.InferenceInputError as exc:
    outcome = "refused: %d %s" % (exc.status_code, exc.code)
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "peak_mb": peak_since(before), "outcome": outcome, "bytes": len(data)}))
"""

#: The child's peak-memory probe (a module next to it): Linux's VmHWM, reset through clear_refs.
_RSS = """
def _kb(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


def reset_peak():
    # Reset the kernel's peak RSS (VmHWM) to the current RSS; return the current RSS in kB.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _kb("VmRSS:")


def peak_since(before_kb):
    # MB the peak RSS rose above before_kb since reset_peak.
    return (_kb("VmHWM:") - before_kb) / 1024
"""


def _png(mode: str, size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.zeros(size[::-1], dtype=np.uint16)) if mode == "I;16" else Image.new(mode, size)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header_only_png(size: tuple[int, int], depth: int, colour: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", size[0], size[1], depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _jpeg(size: tuple[int, int]) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize(size, Image.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def _measure(data: bytes, content_type: str, megapixels: float, plain: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "image"
        image.write_bytes(data)
        (Path(folder) / "bench_rss.py").write_text(_RSS)
        warm = [Path(folder) / "warm.png", Path(folder) / "warm.jpg"]
        warm[0].write_bytes(_png("RGB", (64, 64)))
        warm[1].write_bytes(_jpeg((64, 64)))
        env = dict(os.environ, BREEDLINE_MAX_DECODE_MEGAPIXELS=f"{megapixels:g}", OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([folder, str(ML), env.get("PYTHONPATH", "")])
        done = subprocess.run([sys.executable, "-c", _CHILD, str(image), content_type, "plain" if plain else "-",
                               *map(str, warm)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=ML, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"decode child failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_here(data: bytes, content_type: str, megapixels: float) -> dict:
    """The same measurement in this process (``--quick``): its peak only grows, so it is a smoke figure."""
    import resource
    import time

    os.environ["BREEDLINE_MAX_DECODE_MEGAPIXELS"] = f"{megapixels:g}"
    import inference

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        image = inference.input_fn(data, content_type)
        outcome = f"accepted, decoded to {image.size[0]} x {image.size[1]}"
    except inference.InferenceInputError as exc:
        outcome = f"refused: {exc.status_code} {exc.code}"
    finally:
        del os.environ["BREEDLINE_MAX_DECODE_MEGAPIXELS"]
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"seconds": elapsed, "peak_mb": peak / 1024, "outcome": outcome}


def _cases(quick: bool, megapixels: float) -> list[tuple[str, bytes, str, bool]]:
    side = int((megapixels * 1_000_000) ** 0.5)
    cases = [(f"largest accepted: {side} x {side} RGBA PNG (at the budget)", _png("RGBA", (side, side)), "image/png",
              False)]
    if quick:
        cases.append(("issue 15 bomb, header only: 8900 x 8900 16-bit grey PNG",
                      _header_only_png((8900, 8900), 16, 0), "image/png", False))
        return cases
    cases += [
        ("12 MP phone photo: 4032 x 3024 RGB PNG", _png("RGB", (4032, 3024)), "image/png", False),
        ("12 MP phone photo: 4032 x 3024 JPEG (draft decode)", _jpeg((4032, 3024)), "image/jpeg", False),
    ]
    for mode, label in (("I;16", "16-bit grey"), ("RGBA", "RGBA")):
        cases.append((f"issue 15 bomb: 8900 x 8900 {label} PNG", _png(mode, (8900, 8900)), "image/png", False))
    cases.append(("before the fix: 8900 x 8900 RGBA PNG, decoded without a budget", cases[-1][1], "image/png", True))
    return cases


def run(section: Section, quick: bool) -> None:
    megapixels = 1.0 if quick else 16.0
    for case, data, content_type, plain in _cases(quick, megapixels):
        result = _measure_here(data, content_type, megapixels) if quick else _measure(
            data, content_type, megapixels, plain)
        section.rows.append(Row(section.key, f"{case} ({len(data) / 1000:.0f} KB)", Stats.of([result["seconds"]]),
                                "s", note=f"{result['outcome']}; peak +{result['peak_mb']:.0f} MB"))
    section.notes.append(
        f"Budget BREEDLINE_MAX_DECODE_MEGAPIXELS={megapixels:g}: at most that many decoded megapixels and "
        f"{megapixels * 20:g} MB of estimated decode memory (20 bytes a pixel, RGBA's peak). Peak = how far the "
        "case's own process's peak RSS (VmHWM, reset just before the call) rose above its RSS before it; "
        "--quick measures in the bench process, where it is a smoke value.")
