"""Each serving path in a worker process of its own, timed in turns: how section 1 times the whole chain.

Why not one process: the plain path decodes a 12 MP photo to two 49 MB images
(the decode and ``convert``'s copy). Whether glibc hands those pages back to the
kernel after each call (and the next call faults ~24,000 fresh pages in, ~40 ms
here) depends on what else sits on the heap. Timed in the same process as the
fast path and the torch backend, the plain path kept its pages in some runs and
not in others, and its figure moved between 99 and 151 ms on the same code
(docs/benchmarks.md). An endpoint worker runs one path only, so each path gets a
process that loads only its model and serves only its requests. The parent asks
the workers in turns (one untimed and ``block`` timed calls each), so load drift
on a shared machine hits all of them alike; the child times each call itself
(no pipe in the figure), with the same torch thread count, and reports the page
faults of each call with it.

The child is ``python -m bench.path_workers SPEC`` (SPEC: JSON, below), reading
one JSON command per line on stdin: ``{"op": ..., "body": ..., "n": ...}``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent


class PathWorker:
    """One serving path in its own process: ``kind`` is ``plain`` (``plain-keep``: :func:`keep_freed_pages`),
    or a serving backend (``auto``, ``torch``)."""

    def __init__(self, kind: str, model_dir: Path, bodies: dict[str, tuple[Path, str]], threads: int) -> None:
        spec = {"kind": kind, "model_dir": str(model_dir), "threads": threads,
                "bodies": {name: [str(path), ctype] for name, (path, ctype) in bodies.items()}}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.path_workers", json.dumps(spec)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()  # {"ready": true} once the model is loaded

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):  # model_fn prints its own JSON log lines too
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"{self.kind} worker: {reply['error']}")
                if "times" in reply or "ready" in reply:
                    return reply
        raise RuntimeError(f"{self.kind} worker exited with {self.proc.wait()}")

    def call(self, op: str, body: str, n: int, warmup: int = 0) -> dict[str, list[float]]:
        """``warmup`` untimed then ``n`` timed calls of ``op`` on ``body``: {"times": [s], "faults": [pages]}."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "body": body, "n": n, "warmup": warmup}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def time_workers(turns: dict[str, tuple[PathWorker, str, str]], repeat: int,
                 block: int) -> dict[str, dict[str, list[float]]]:
    """``repeat`` timed calls per entry, ``block`` per turn after one untimed call, entries round-robin.

    ``turns`` maps a name to (worker, op, body); one worker may serve several names.
    """
    out: dict[str, dict[str, list[float]]] = {name: {"times": [], "faults": []} for name in turns}
    for name, (worker, op, body) in turns.items():
        worker.call(op, body, 0, warmup=1)
    for _ in range(-(-repeat // block)):
        for name, (worker, op, body) in turns.items():
            got = worker.call(op, body, block, warmup=1)
            out[name]["times"] += got["times"]
            out[name]["faults"] += got["faults"]
    return out


# ---------------------------------------------------------------- the child


def _plain_ops(model_dir: Path, bodies: dict[str, tuple[bytes, str]]) -> dict[str, Callable[[bytes, str], object]]:
    import torch

    from bench import inference_bench, models

    model, meta = models.load_plain(model_dir)
    chain = inference_bench.plain_pipeline(model, meta)
    pre = inference_bench.plain_preprocess(meta)
    x = pre(next(iter(bodies.values()))[0])

    def model_step(body: bytes, ctype: str) -> object:
        with torch.no_grad():
            return model(x)

    return {"chain": lambda b, c: chain(b), "pre": lambda b, c: pre(b), "model": model_step}


def _fast_ops(model_dir: Path, backend: str) -> dict[str, Callable[[bytes, str], object]]:
    import inference
    from PIL import Image

    from bench import inference_bench

    os.environ["BREEDLINE_SERVING_BACKEND"] = backend
    served = inference.model_fn(str(model_dir))
    decoded: dict[bytes, Any] = {}  # the breakdown's later steps start from the step before, done once

    def once(body: bytes, ctype: str) -> Any:
        key = body[:64] + body[-64:]
        if key not in decoded:
            image = inference.input_fn(body, ctype)
            x = inference.preprocess(image, served)
            decoded[key] = (image, x, inference.predict_fn(x, served))
        return decoded[key]

    def floor(body: bytes, ctype: str) -> object:
        # The smallest reduced-size decode of the same file: libjpeg at 1/8 scale, nothing else.
        image = Image.open(io.BytesIO(body))
        image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
        image.load()
        return image

    return {
        "chain": lambda b, c: inference.output_fn(inference.predict_fn(inference.input_fn(b, c), served),
                                                  inference.JSON),
        "pre": lambda b, c: inference_bench.fast_preprocess(inference, served, c)(b),
        "model": lambda b, c: inference.predict_fn(once(b, c)[1], served),
        "decode": lambda b, c: inference.input_fn(b, c),
        "resize": lambda b, c: inference.preprocess(once(b, c)[0], served),
        "forward": lambda b, c: served.forward(once(b, c)[1]),
        "output": lambda b, c: inference.output_fn(once(b, c)[2], inference.JSON),
        "floor": floor,
    }


def keep_freed_pages() -> None:
    """Tell glibc to keep freed memory in the heap (fixed mmap and trim thresholds): the plain path's lucky case.

    With its default, dynamic thresholds glibc gives the plain path's 49 MB images back to the
    kernel after each call, unless something else on the heap happens to pin them; this makes the
    lucky case the rule, for the row that shows what the page faults cost.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve up to 1 GiB from the heap, not fresh mmaps
    libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: never hand the heap's top back


def _serve(spec: dict[str, Any]) -> None:
    if spec["kind"] == "plain-keep":
        keep_freed_pages()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    bodies = {name: (Path(path).read_bytes(), ctype) for name, (path, ctype) in spec["bodies"].items()}
    model_dir = Path(spec["model_dir"])
    ops = _plain_ops(model_dir, bodies) if spec["kind"].startswith("plain") else _fast_ops(model_dir, spec["kind"])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        fn, (body, ctype) = ops[command["op"]], bodies[command["body"]]
        for _ in range(int(command.get("warmup", 0))):
            fn(body, ctype)
        times, faults = [], []
        gc.collect()
        gc.disable()  # as bench.core.time_interleaved: no collection of other garbage billed to a call
        try:
            for _ in range(int(command["n"])):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                fn(body, ctype)
                times.append(time.perf_counter() - start)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        finally:
            gc.enable()
        print(json.dumps({"times": times, "faults": faults}), flush=True)


if __name__ == "__main__":
    try:
        _serve(json.loads(sys.argv[1]))
    except Exception as exc:  # noqa: BLE001 - the parent reports it as the section's error
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        raise
