"""Section 1: one image through ``input_fn`` -> ``predict_fn`` -> ``output_fn`` vs the plain way.

The plain way (the baseline) is what most tutorials do: decode the whole image
with PIL, ``Resize(256)``, ``CenterCrop(224)``, ``ToTensor``, ``Normalize``,
then call the model in eval mode under ``no_grad``. Both run in this process,
interleaved, on the same bytes and the same weights.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from bench import images, models
from bench.core import Row, Section, Stats, time_calls, time_interleaved

ARCHITECTURES = ("vgg11", "efficientnet_lite0")
TOP_K = 5
#: Timed calls per turn (after one untimed call): each path in its own steady state (core.time_interleaved).
BLOCK = 3


def plain_pipeline(model: torch.nn.Module, meta: dict) -> Callable[[bytes], str]:
    """The baseline, start to finish, answering the same JSON the contract asks for."""
    import presets

    transform = presets.Preprocessing.from_meta(meta).plain_transform()
    names = meta["class_names"]

    def run(body: bytes) -> str:
        img = Image.open(io.BytesIO(body)).convert("RGB")
        x = transform(img).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        p, idx = probs.topk(min(TOP_K, len(names)))
        top = [{"label": names[i], "probability": float(v)} for v, i in zip(p.tolist(), idx.tolist())]
        return json.dumps({"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top})

    return run


def plain_preprocess(meta: dict) -> Callable[[bytes], torch.Tensor]:
    import presets

    transform = presets.Preprocessing.from_meta(meta).plain_transform()
    return lambda body: transform(Image.open(io.BytesIO(body)).convert("RGB")).unsqueeze(0)


def fast_pipeline(inference: Any, served: Any, content_type: str) -> Callable[[bytes], str]:
    def run(body: bytes) -> str:
        return inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), served),
                                   "application/json")

    return run


def fast_preprocess(inference: Any, served: Any, content_type: str) -> Callable[[bytes], torch.Tensor]:
    """The serving path's bytes -> NCHW tensor: ``input_fn`` plus the preprocessing ``predict_fn`` applies."""

    def run(body: bytes) -> torch.Tensor:
        data = inference.input_fn(body, content_type)
        if not isinstance(data, torch.Tensor):
            data = inference.preprocess(data, served)
        return data if data.dim() == 4 else data.unsqueeze(0)

    return run


def load_served(inference: Any, model_dir: Path, backend: str) -> Any:
    """``model_fn`` with ``BREEDLINE_SERVING_BACKEND=backend``, bypassing its per-directory cache."""
    import os

    before = os.environ.get("BREEDLINE_SERVING_BACKEND")
    os.environ["BREEDLINE_SERVING_BACKEND"] = backend
    try:
        inference._models.pop(str(model_dir.resolve()), None)
        return inference.model_fn(str(model_dir))
    finally:
        inference._models.pop(str(model_dir.resolve()), None)
        if before is None:
            os.environ.pop("BREEDLINE_SERVING_BACKEND", None)
        else:
            os.environ["BREEDLINE_SERVING_BACKEND"] = before


def _label(answer: str) -> str:
    return json.loads(answer)["label"]


def agreement(fast_pre: Callable[[bytes], torch.Tensor], fast_forward: Callable[[torch.Tensor], torch.Tensor],
              plain_pre: Callable[[bytes], torch.Tensor], plain_forward: Callable[[torch.Tensor], torch.Tensor],
              bodies: list[bytes], batch: int = 32) -> tuple[int, int]:
    """How many of ``bodies`` get the same top-1 class on both paths.

    Each path's own bytes->tensor step feeds its own model call; the tensors
    go through the model in batches (the same numbers as one by one, far
    cheaper for a few hundred images on a busy 2-core machine).
    """
    same = 0
    for start in range(0, len(bodies), batch):
        chunk = bodies[start : start + batch]
        with torch.inference_mode():
            fast = fast_forward(torch.cat([fast_pre(b) for b in chunk])).argmax(1)
            plain = plain_forward(torch.cat([plain_pre(b) for b in chunk])).argmax(1)
        same += int((fast == plain).sum())
    return same, len(bodies)


def digits_test_jpegs(work: Path, quick: bool) -> list[tuple[str, bytes]]:
    from breedline import demo_digits

    out = work / "digits"
    demo_digits.write_digits(out, per_class=12 if quick else None)
    files = sorted((out / "test").rglob("*.jpg"))
    return [(str(p), p.read_bytes()) for p in files]


def draft_options(section: Section, inference: Any, served: Any, pre_plain: Callable[[bytes], torch.Tensor],
                  plain_model: torch.nn.Module, photo_bodies: list[bytes], phone: bytes, repeat: int) -> None:
    """Option: a smaller JPEG draft (1x, 2x, 3x the resize size) than the shipped ``JPEG_DRAFT_GAP``.

    Decoding at 1/8 scale straight to ~256 px differs a little from an
    antialiased resize of the full image; a larger draft costs decode time and
    buys agreement. Built from ``decoding``'s public functions.
    """
    import decoding

    prep = served.prep
    shipped = fast_preprocess(inference, served, "image/jpeg")
    for factor in range(1, inference.JPEG_DRAFT_GAP):
        def pre(body: bytes, factor: int = factor) -> torch.Tensor:
            image = decoding.decode_for_size(body, factor * prep.resize_size)
            square = decoding.resize_crop(image, prep.resize_size, prep.image_size)
            return prep.normalise_uint8(np.asarray(square)).unsqueeze(0)

        same, total = agreement(pre, served.forward, pre_plain, plain_model, photo_bodies)
        times = time_interleaved({"shipped": lambda: shipped(phone), "option": lambda: pre(phone)}, repeat,
                                 block=BLOCK)
        section.rows.append(Row("inference", f"option: JPEG draft to >= {factor}x resize_size instead of "
                                f"{inference.JPEG_DRAFT_GAP}x: 12 MP bytes->tensor vs shipped; top-1 agreement "
                                f"with plain on {total} photos {100.0 * same / total:.1f}%",
                                Stats.of(times["option"]), "s", baseline=Stats.of(times["shipped"])))


def model_step_options(section: Section, arch: str, model: torch.nn.Module, x: torch.Tensor, repeat: int,
                       onnx_session: Any | None) -> None:
    """The model call alone, each way the issue suggests trying, against plain ``no_grad``."""
    import copy

    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def inference_mode() -> None:
        with torch.inference_mode():
            model(x)

    def channels_last() -> None:
        with torch.inference_mode():
            cl_model(x_cl)

    def bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)

    options = {"plain": plain, "inference_mode": inference_mode, "inference_mode + channels_last": channels_last,
               "inference_mode + bfloat16 autocast": bf16}
    if onnx_session is not None:
        feed = {"image": x.numpy()}
        options["ONNX Runtime (CPU provider)"] = lambda: onnx_session.run(None, feed)
    samples = time_interleaved(options, repeat, block=BLOCK)
    with torch.inference_mode():
        ref = model(x)
        cl_diff = float((cl_model(x_cl) - ref).abs().max())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_diff = float((model(x).float() - ref).abs().max())
    diffs = {"inference_mode + channels_last": cl_diff, "inference_mode + bfloat16 autocast": bf_diff}
    for name, times in samples.items():
        if name == "plain":
            continue
        note = f"max |logit diff| {diffs[name]:.2g}" if name in diffs else ""
        section.rows.append(Row("inference", f"{arch}: model step option: {name} vs plain no_grad",
                                Stats.of(times), "s", baseline=Stats.of(samples["plain"]), note=note))
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            one = time_calls(inference_mode, repeat)
        finally:
            torch.set_num_threads(threads)
        section.rows.append(Row("inference", f"{arch}: model step option: 1 intra-op thread vs {threads} (inference_mode)",
                                Stats.of(one), "s", baseline=Stats.of(samples["inference_mode"])))


def agreement_rows(section: Section, arch: str, inference: Any, served: Any, served_torch: Any, meta: dict,
                   pre_plain: Callable[[bytes], torch.Tensor], plain_model: torch.nn.Module,
                   digit_bodies: list[bytes], photo_bodies: list[bytes]) -> None:
    """Top-1 agreement of the shipped path (and of the torch backend) with the plain path, on many images."""
    # First check that the batched check sees what the served path answers.
    fast_pre_jpeg = fast_preprocess(inference, served, "image/jpeg")
    fast_jpeg = fast_pipeline(inference, served, "image/jpeg")
    for body in photo_bodies[:3]:
        batched = meta["class_names"][int(served.forward(fast_pre_jpeg(body)).argmax(1))]
        if batched != _label(fast_jpeg(body)):
            section.notes.append(f"{arch}: the batched agreement check disagrees with predict_fn on one image.")
    # vgg11's forward pass costs many times efficientnet_lite0's: it checks every other image (a spread subset).
    step_of = 2 if arch == "vgg11" else 1
    for name, bodies in (("digits test JPEGs", digit_bodies[::step_of]),
                         ("resized sample photos", photo_bodies[::step_of])):
        same, total = agreement(fast_pre_jpeg, served.forward, pre_plain, plain_model, bodies)
        section.rows.append(Row("inference", f"{arch}: top-1 agreement as shipped ({served.backend}) vs plain, "
                                f"{total} {name}", Stats.of([100.0 * same / total]), "%", target=">= 99%",
                                met=100.0 * same / total >= 99.0, higher_is_better=True))
    same, total = agreement(fast_pre_jpeg, served_torch.forward, pre_plain, plain_model, photo_bodies[::step_of])
    section.rows.append(Row("inference", f"{arch}: top-1 agreement, torch backend vs plain, {total} resized "
                            "sample photos", Stats.of([100.0 * same / total]), "%", higher_is_better=True))


def run(section: Section, quick: bool) -> None:
    import inference  # ml_scripts/inference.py

    # --quick is a smoke run: the small model at 64 px and small images, so it takes seconds, not minutes.
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        _run(section, quick, inference, Path(tmp))


def _cases(quick: bool, work: Path) -> list[tuple[str, bytes, str]]:
    """(label, bytes, content type) of the three timed inputs, each also written to ``work`` for the workers."""
    photos = images.sample_photos()
    phone = images.phone_jpeg(photos["chelsea"], size=(800, 600) if quick else images.PHONE_SIZE)
    small = images.dataset_jpeg(photos["coffee"])
    png = images.png_bytes(Image.fromarray(photos["astronaut"]))
    phone_label = "phone JPEG (quick: 800x600)" if quick else f"12 MP phone JPEG ({len(phone) / 1e6:.1f} MB)"
    cases = [(phone_label, phone, "image/jpeg"), (f"500x400 JPEG ({len(small) / 1e3:.0f} kB)", small, "image/jpeg"),
             (f"512x512 PNG ({len(png) / 1e3:.0f} kB)", png, "image/png")]
    for i, (_, body, _) in enumerate(cases):
        (work / f"case{i}.bin").write_bytes(body)
    return cases


def _input_notes(section: Section, cases: list[tuple[str, bytes, str]], repeat: int) -> None:
    section.notes.append(
        "Inputs: the 12 MP photo is scikit-image's `chelsea` upscaled to 4032x3024 with sensor-like noise "
        f"(sigma 5) saved at JPEG quality 95 ({len(cases[0][1]) / 1e6:.2f} MB); the 500x400 JPEG is `coffee` at "
        "quality 90; the PNG is `astronaut` (512x512). vgg11 has seeded random-init weights (its ImageNet "
        "weights can't be downloaded here; the timing is the same) and a 133-class head; efficientnet_lite0 is "
        "the genuine ImageNet classifier its package ships (1,000 classes), so its top-1 agreement is that of "
        "a real trained model. The photo set for agreement: crops of the six bundled scikit-image photos, "
        "flipped at random and resized so the longer side is 300 to 4032 px, JPEG quality 80-95. Timing: "
        "each path (plain, as shipped, torch backend) serves in a worker process of its own, as an endpoint "
        "runs only one (bench/path_workers.py); the workers take turns of one untimed and "
        f"{BLOCK} timed calls, {repeat} timed calls each, with the same torch thread count, so load drift "
        "hits all alike. Page faults are each call's minor faults (4 KiB pages the kernel had to map)."
    )


def _faults(samples: dict[str, list[float]]) -> str:
    return f"{int(np.median(samples['faults'])):,}"


def chain_rows(section: Section, arch: str, served_backend: str, workers: dict[str, Any],
               cases: list[tuple[str, bytes, str]], repeat: int) -> None:
    """Each case's whole chain and its bytes->tensor part, each path in its own worker process."""
    from bench.path_workers import time_workers

    weights = "random init" if arch == "vgg11" else "genuine ImageNet classifier"
    for i, (label, _, _) in enumerate(cases):
        body = f"case{i}"
        samples = time_workers({name: (w, "chain", body) for name, w in workers.items()
                                if i == 0 or name != "plain-keep"}, repeat, BLOCK)
        row = Row("inference", f"{arch} ({weights}), {label}: input_fn->predict_fn->output_fn, as shipped "
                  f"(backend {served_backend})", Stats.of(samples["fast"]["times"]), "s",
                  baseline=Stats.of(samples["plain"]["times"]),
                  note=f"page faults per call: {_faults(samples['fast'])}, plain {_faults(samples['plain'])}")
        if i == 0:
            row.target = ">= 3x faster"
            row.met = (row.speedup or 0) >= 3.0
        section.rows.append(row)
        if "plain-keep" in samples:
            section.rows.append(Row("inference", f"{arch}, {label}: the plain path with glibc keeping freed pages "
                                    "(mallopt: fixed mmap and trim thresholds) vs the plain path as it runs",
                                    Stats.of(samples["plain-keep"]["times"]), "s",
                                    baseline=Stats.of(samples["plain"]["times"]),
                                    note=f"page faults per call: {_faults(samples['plain-keep'])}"))
        if "torch" in samples:
            section.rows.append(Row("inference", f"{arch}, {label}: same, BREEDLINE_SERVING_BACKEND=torch "
                                    "(channels-last, inference_mode)", Stats.of(samples["torch"]["times"]), "s",
                                    baseline=Stats.of(samples["plain"]["times"])))
        pre = time_workers({"plain": (workers["plain"], "pre", body), "fast": (workers["fast"], "pre", body)},
                           repeat, BLOCK)
        section.rows.append(Row("inference", f"{arch}, {label}: of which bytes->tensor (decode, resize, crop, "
                                "normalise) vs PIL decode + torchvision transforms",
                                Stats.of(pre["fast"]["times"]), "s", baseline=Stats.of(pre["plain"]["times"])))
    step = time_workers({"plain": (workers["plain"], "model", "case1"), "fast": (workers["fast"], "model", "case1")},
                        repeat, BLOCK)
    section.rows.append(Row("inference", f"{arch}: of which model step, predict_fn(tensor) ({served_backend}) vs "
                            "model(x) under no_grad", Stats.of(step["fast"]["times"]), "s",
                            baseline=Stats.of(step["plain"]["times"])))


def breakdown_rows(section: Section, arch: str, fast: Any, label: str, repeat: int) -> None:
    """Where the shipped chain's time goes on the 12 MP photo, against the decode floor (1/8-scale draft)."""
    from bench.path_workers import time_workers

    steps = {"chain": "whole chain", "floor": "decode floor: the same file decoded at 1/8 scale (draft), nothing else",
             "decode": "input_fn (sniff, reduced-size decode, EXIF, RGB)", "resize": "resize + crop + normalise",
             "forward": "network (served.forward)", "output": "softmax, top-k and output_fn's JSON"}
    samples = time_workers({name: (fast, name, "case0") for name in steps}, repeat, BLOCK)
    chain = Stats.of(samples["chain"]["times"]).median
    floor = Stats.of(samples["floor"]["times"])
    for name, what in steps.items():
        if name == "chain":
            continue
        stats = Stats.of(samples[name]["times"])
        note = (f"the chain ({chain * 1e3:.1f} ms) is {(chain - floor.median) * 1e3:.1f} ms, "
                f"{chain / floor.median:.2f}x, above it" if name == "floor"
                else f"{100 * stats.median / chain:.0f}% of the chain")
        section.rows.append(Row("inference", f"{arch}, {label}, as shipped, breakdown: {what}", stats, "s", note=note))


def in_process_row(section: Section, arch: str, inference: Any, served: Any, plain_model: torch.nn.Module,
                   meta: dict, label: str, body: bytes, repeat: int) -> None:
    """The old way, for contrast: both paths timed in this one process, whose heap they share."""
    plain = plain_pipeline(plain_model, meta)
    fast = fast_pipeline(inference, served, "image/jpeg")
    samples = time_interleaved({"plain": lambda: plain(body), "fast": lambda: fast(body)}, repeat, block=BLOCK)
    section.rows.append(Row("inference", f"{arch}, {label}: whole chain with both paths in one process "
                            "(how this section timed it before; the plain path's figure depends on the heap)",
                            Stats.of(samples["fast"]), "s", baseline=Stats.of(samples["plain"])))


def _run(section: Section, quick: bool, inference: Any, work: Path) -> None:
    from bench.path_workers import PathWorker

    repeat = 2 if quick else 9
    image_size = 64 if quick else 224
    cases = _cases(quick, work)
    if not quick:
        _input_notes(section, cases, repeat)
    agreement_bodies = [b for _, b in digits_test_jpegs(work, quick)][: 10 if quick else None]
    photo_bodies = [b for _, b in images.photo_variants(4 if quick else 200, max_side=1024 if quick else 4032)]
    bodies = {f"case{i}": (work / f"case{i}.bin", ctype) for i, (_, _, ctype) in enumerate(cases)}
    kinds = {"plain": "plain", "fast": "auto"} if quick else {"plain": "plain", "fast": "auto", "torch": "torch",
                                                                  "plain-keep": "plain-keep"}
    for arch in ARCHITECTURES[1:] if quick else ARCHITECTURES:
        model_dir = models.write_model_dir(work / arch, arch, image_size=image_size)
        served = load_served(inference, model_dir, "auto")  # what an endpoint runs by default
        workers = {name: PathWorker(kind, model_dir, bodies, torch.get_num_threads()) for name, kind in kinds.items()}
        try:
            chain_rows(section, arch, served.backend, workers, cases, repeat)
            breakdown_rows(section, arch, workers["fast"], cases[0][0], repeat)
        finally:
            for worker in workers.values():
                worker.close()
        served_torch = load_served(inference, model_dir, "torch")
        if served.backend != "onnx":
            section.notes.append(f"{arch}: ONNX Runtime not used ({served.backend_reason}): every 'shipped' row "
                                 "is the torch backend.")
        plain_model, meta = models.load_plain(model_dir)
        in_process_row(section, arch, inference, served, plain_model, meta, cases[0][0], cases[0][1], repeat)
        x = plain_preprocess(meta)(cases[1][1])
        pre_plain = plain_preprocess(meta)
        agreement_rows(section, arch, inference, served, served_torch, meta, pre_plain, plain_model,
                       agreement_bodies, photo_bodies)
        if arch == "efficientnet_lite0":
            draft_options(section, inference, served, pre_plain, plain_model, photo_bodies, cases[0][1], repeat)
        model_step_options(section, arch, plain_model, x, repeat, served.session)
