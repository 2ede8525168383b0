"""Section 2: what the predict route costs in Lambda, minus the model.

- The handler's own time: the Lambda entry point ``app(event, context)`` with an
  API Gateway proxy event carrying a 4 MB JPEG (base64, as API Gateway sends a
  binary body), through botocore's real request serialisation and response
  parsing, against the same handler on the stdlib base64 decoder (the route
  before it decoded with pybase64), interleaved. Only the HTTP send is
  replaced: a ``before-send`` hook answers every AWS call with a canned
  reply, so no network or endpoint time is counted.
  The AWS calls each request makes are listed, because in AWS each is a
  network round trip that this figure does not contain.
- The cold import of ``app.py`` as Lambda does it, with ``python -X importtime``.
- The deployment zip from ``chalice package``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench import images
from bench.core import Row, Section, Stats, fmt_seconds, time_calls, time_interleaved

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "chalice_app"
BODY_BYTES = 4 * 1024 * 1024

PREDICTION = {"label": "class_001", "probability": 0.9,
              "top_k": [{"label": "class_001", "probability": 0.9}, {"label": "class_002", "probability": 0.05}]}


class _Raw:
    """The ``raw`` object botocore reads a response from (a streaming body reads it directly)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def stream(self, **_: Any):
        yield self._buf.read()

    def read(self, amt: int | None = None) -> bytes:
        return self._buf.read(amt) if amt is not None else self._buf.read()


def canned_response(service: str, operation: str) -> tuple[int, dict[str, str], bytes]:
    """A plausible successful reply for the calls the predict route may make."""
    if operation == "InvokeEndpoint":
        return 200, {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": "AllTraffic"}, \
            json.dumps(PREDICTION).encode()
    if operation == "DescribeEndpoint":
        body = {"EndpointName": "breedline-classifier", "EndpointArn":
                "arn:aws:sagemaker:us-east-1:123456789012:endpoint/breedline-classifier",
                "EndpointConfigName": "c", "EndpointStatus": "InService", "CreationTime": 0, "LastModifiedTime": 0}
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(body).encode()
    if service == "dynamodb" and operation == "GetItem":
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps({"Item": {}}).encode()
    return 200, {"Content-Type": "application/x-amz-json-1.1"}, b"{}"


def install_stub(client: Any, calls: Counter) -> None:
    """Answer every call ``client`` makes with a canned reply instead of sending it.

    botocore still validates and serialises the request and parses the reply,
    exactly as in Lambda; only the socket is skipped.
    """
    from botocore.awsrequest import AWSResponse

    def before_send(request: Any, event_name: str = "", **_: Any) -> AWSResponse:
        _, service, operation = event_name.split(".", 2)
        calls[f"{service}.{operation}"] += 1
        status, headers, body = canned_response(service, operation)
        return AWSResponse(request.url, status, headers, _Raw(body))

    client.meta.events.register("before-send", before_send)


class _Discard(io.TextIOBase):
    """stdout for the timed requests: Powertools' JSON logs and EMF metrics go nowhere."""

    def write(self, text: str) -> int:
        return len(text)


class LambdaContext:
    """The attributes Lambda's context object has and Powertools reads."""

    function_name = "breedline-dev"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:breedline-dev"
    memory_limit_in_mb = 512
    log_group_name = "/aws/lambda/breedline-dev"
    log_stream_name = "bench"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


def proxy_event(body: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    """An API Gateway REST proxy event for ``POST /predict`` with a binary body (base64)."""
    return {
        "resource": "/predict",
        "path": "/predict",
        "httpMethod": "POST",
        "headers": {"Content-Type": content_type, "Accept": "application/json", "Host": "x.execute-api"},
        "multiValueHeaders": {"Content-Type": [content_type], "Accept": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/predict", "httpMethod": "POST", "path": "/api/predict", "stage": "api",
            "requestId": "bench", "accountId": "123456789012", "apiId": "x",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "bench"},
        },
        "body": base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": True,
    }


def four_mb_jpeg() -> bytes:
    """A real 12 MP phone JPEG of about 4 MB (4.1 MB = 3.9 MiB at quality 95)."""
    return images.phone_jpeg(images.sample_photos()["chelsea"], quality=95)


def handler_time(section: Section, quick: bool) -> None:
    """The handler as shipped (pybase64) against the same handler on the stdlib decoder, interleaved.

    The baseline is what the route cost before: Chalice's ``Request.raw_body``
    decodes with ``base64.b64decode`` after an ASCII encode, which is exactly
    the fallback path of ``decode_event_body`` (a zip without pybase64).
    """
    calls: Counter = Counter()
    body = four_mb_jpeg() if not quick else images.phone_jpeg(images.sample_photos()["chelsea"], size=(1600, 1200))
    event = proxy_event(body)
    stdout = sys.stdout
    sys.stdout = _Discard()  # before the import: Powertools binds its handler to sys.stdout then
    try:
        import app as app_module  # chalice_app/app.py
        from chalicelib import clients as aws
        from chalicelib import predict as predict_module

        app = app_module.app
        fast_decoder = predict_module._fast_base64
        install_stub(aws.client("sagemaker-runtime"), calls)
        handled = Counter()

        def shipped(e: dict[str, Any] = event) -> dict[str, Any]:
            handled["n"] += 1
            return app(e, LambdaContext())

        def stdlib(e: dict[str, Any] = event) -> dict[str, Any]:
            handled["n"] += 1
            predict_module._fast_base64 = None
            try:
                return app(e, LambdaContext())
            finally:
                predict_module._fast_base64 = fast_decoder

        first, first_stdlib = shipped(), stdlib()
        calls.clear()
        handled.clear()
        repeat, warmup = (20, 2) if quick else (300, 5)
        timed = time_interleaved({"shipped": shipped, "stdlib": stdlib}, repeat=repeat, warmup=warmup)
        per_request = {k: v / handled["n"] for k, v in calls.items()}
        small_body = images.dataset_jpeg(images.sample_photos()["coffee"])
        small_event = proxy_event(small_body)
        small = time_calls(lambda: shipped(small_event), repeat=repeat, warmup=warmup)
        text = event["body"]
        decode = {"stdlib": lambda: base64.b64decode(text.encode("ascii"))}
        if fast_decoder is not None:
            decode["pybase64"] = lambda: fast_decoder.b64decode(text, validate=True)
        decoded = time_interleaved(decode, repeat=50)
        digest = time_calls(lambda: hashlib.sha256(body).hexdigest(), repeat=50)
    finally:
        sys.stdout = stdout
    _handler_rows(section, body=body, small_body=small_body, first=first, first_stdlib=first_stdlib,
                  timed=timed, small=small, decoded=decoded, digest=digest, per_request=per_request,
                  fast_decoder=fast_decoder)


def _handler_rows(section: Section, *, body: bytes, small_body: bytes, first: dict[str, Any],
                  first_stdlib: dict[str, Any], timed: dict[str, list[float]], small: list[float],
                  decoded: dict[str, list[float]], digest: list[float], per_request: dict[str, float],
                  fast_decoder: Any) -> None:
    """:func:`handler_time`'s figures as the section's rows and notes."""
    status, status_stdlib = first.get("statusCode"), first_stdlib.get("statusCode")
    stats, baseline = Stats.of(timed["shipped"]), Stats.of(timed["stdlib"])
    decoder = "pybase64" if fast_decoder is not None else "stdlib base64 (pybase64 is not installed)"
    calls_note = ", ".join(f"{k} x{v:g}" for k, v in sorted(per_request.items())) or "none"
    section.rows.append(Row(
        "route", f"POST /predict handler, app(event, context), {len(body) / 1e6:.2f} MB JPEG body "
                 f"(base64 in the event), body decoded with {decoder}; baseline: the same handler "
                 "decoding with the stdlib as Chalice's raw_body does",
        stats, "s", baseline=baseline, target="p50 <= 2 ms (4 MB body)", met=stats.median <= 0.002,
        note=f"p99 {fmt_seconds(stats.p99 or stats.high)} vs {fmt_seconds(baseline.p99 or baseline.high)}; "
             f"status {status} (baseline {status_stdlib}); AWS calls per request: {calls_note}",
    ))
    section.rows.append(Row(
        "route", f"same handler, {len(small_body) / 1e3:.0f} kB JPEG body: the fixed per-request cost",
        Stats.of(small), "s"))
    if fast_decoder is not None:
        section.rows.append(Row(
            "route", "of which: base64-decoding the body, pybase64 (validate=True, what the route does) "
                     "vs stdlib ascii-encode + base64.b64decode (Chalice's raw_body)",
            Stats.of(decoded["pybase64"]), "s", baseline=Stats.of(decoded["stdlib"])))
    else:
        section.rows.append(Row(
            "route", "of which: base64-decoding the body with the stdlib (pybase64 is not installed)",
            Stats.of(decoded["stdlib"]), "s"))
        section.notes.append("pybase64 is not installed, so the route ran on its stdlib fallback.")
    section.rows.append(Row(
        "route", "of which: SHA-256 of the body alone (SigV4 signs the InvokeEndpoint payload; kept)",
        Stats.of(digest), "s"))
    for name, code in (("shipped", status), ("stdlib", status_stdlib)):
        if code != 200:
            reply = first if name == "shipped" else first_stdlib
            reply_body = str(reply.get("body", ""))[:300]
            section.notes.append(f"The stubbed request ({name}) answered {code}: {reply_body}")


def import_time(section: Section, quick: bool) -> None:
    """Cumulative ``-X importtime`` of ``app`` in a fresh interpreter, as in a Lambda cold start."""
    env = dict(os.environ)
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "PYTHONDONTWRITEBYTECODE": "0"})
    samples, heavy = [], Counter()
    for i in range(2 if quick else 7):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app"], cwd=APP_DIR, env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"import app failed: {proc.stderr.strip().splitlines()[-1:]}")
        total, children = None, []
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not m:
                continue
            cumulative, depth, name = int(m.group(2)), len(m.group(3)), m.group(4)
            if depth == 1:  # a top-level import; its children were printed just before it
                if name == "app":
                    total = cumulative / 1e6
                    if i == 0:
                        heavy.update(dict(children))
                children = []
            elif depth == 3:
                children.append((name, cumulative / 1e6))
        if total is None:
            raise RuntimeError("no importtime line for app")
        if i > 0 or quick:  # the first run also compiles .pyc files, which a deployed zip may not ship
            samples.append(total)
    stats = Stats.of(samples)
    top = ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in heavy.most_common(5))
    section.rows.append(Row("route", "cold import of chalice_app/app.py (python -X importtime, cumulative)", stats, "s",
                            target="<= 300 ms", met=stats.median <= 0.300,
                            note=f"heaviest top-level imports: {top}"))


def package_size(section: Section) -> None:
    """The dev stage's zip as make deploy builds it: a raw ``chalice package`` of chalice_app/ refuses."""
    from breedline.deploy.packaging import prepare_build_copy, resolve_stage_images
    from breedline.deploy.stage import load_stage

    chalice = Path(sys.executable).with_name("chalice")
    out = Path(tempfile.mkdtemp(prefix="bench-package-"))
    try:
        stage = load_stage("dev", APP_DIR)
        images = resolve_stage_images(stage, "us-east-1", log=lambda _msg: None)
        build_app, _ = prepare_build_copy(out, APP_DIR, stage, images, stack="breedline-dev",
                                          account="123456789012", region="us-east-1", log=lambda _msg: None)
        env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
        proc = subprocess.run([str(chalice), "package", "--stage", "dev", "--pkg-format", "cloudformation",
                               str(out / "pkg")], cwd=build_app, env=env, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"chalice package failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        zip_path = out / "pkg" / "deployment.zip"
        size = zip_path.stat().st_size
        with zipfile.ZipFile(zip_path) as zf:
            tops = Counter()
            for info in zf.infolist():
                tops[info.filename.split("/", 1)[0]] += info.compress_size
        top = ", ".join(f"{n} {s / 1e6:.2f} MB" for n, s in tops.most_common(5))
        section.rows.append(Row("route", "deployment.zip from chalice package", Stats.of([size / 1e6]), "MB",
                                target="<= 10 MB", met=size <= 10e6, note=f"largest entries: {top}"))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def multipart_parse(section: Section, quick: bool) -> None:
    """A form upload's parse (issue 16): python-multipart, as the route does it, against the stdlib's email parser.

    The body is one 4 MB file part, as a browser's form sends a phone photo; both
    paths return the same bytes (checked), so only the parser's time differs.
    """
    import email.parser
    import email.policy

    from chalicelib.multipart import form_image

    size = 64 * 1024 if quick else BODY_BYTES
    photo = b"\xff\xd8\xff\xe0" + os.urandom(size - 4)
    boundary = "----breedline-bench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"

    def ours() -> bytes:
        return form_image(body, content_type, len(body))[0]

    def stdlib() -> bytes:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        return next(message.iter_parts()).get_payload(decode=True)

    assert ours() == stdlib() == photo
    samples = time_interleaved({"ours": ours, "stdlib": stdlib}, repeat=3 if quick else 15)
    section.rows.append(Row("route", f"multipart form, one {size / 1e6:.1f} MB file part: parse (python-multipart)",
                            Stats.of(samples["ours"]), "s", baseline=Stats.of(samples["stdlib"]),
                            note="baseline: the stdlib's email.parser (policy=HTTP) on the same body"))


def run(section: Section, quick: bool) -> None:
    multipart_parse(section, quick)
    handler_time(section, quick)
    import_time(section, quick)
    if quick:
        section.notes.append("--quick skips `chalice package` (it installs the Lambda's requirements, ~1 min).")
    else:
        package_size(section)
