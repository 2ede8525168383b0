"""Bad images through the whole local serving path: the app's predict route, the local SageMaker
runtime and a model server running AWS's serving toolkit on a real (untrained, tiny) model.

What it proves end to end: a garbage JPEG passes the route's cheap checks, the real
``HandlerService`` answers 400 with inference.py's JSON as the first line of its body,
the local runtime turns that into the ``ModelError`` AWS sends (``OriginalStatusCode``,
``OriginalMessage``), and the route answers 400 with the container's code, not a 502.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from backbones import build_model
from breedline.build.paths import REPO_ROOT
from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_http import LocalSageMakerServer
from local_standins import BUCKET, runtime_client, sagemaker_client  # type: ignore[import-not-found]
from presets import Preprocessing

ENDPOINT = "serving-errors"
VARIANT = "tiny-model"


def tiny_model_archive(folder: Path) -> bytes:
    """model.tar.gz as train.py lays it out (model.pt, model_meta.json, code/), with untrained weights.

    Its abstention statistics are fitted on random features with an OOD threshold below
    any score, so every good image is answered "I don't know" (issue 13).
    """
    import numpy as np

    import abstention

    prep = Preprocessing(image_size=32)
    module = build_model("efficientnet_lite0", 2, image_size=32, pretrained=False)
    model = folder / "model"
    (model / "code").mkdir(parents=True)
    torch.save(module.state_dict(), model / "model.pt")
    rng = np.random.default_rng(0)
    abstention.fit_gaussian(rng.normal(size=(8, 1280)), np.arange(8) % 2, 2).save(model / abstention.STATS_FILE)
    meta = {"architecture": "efficientnet_lite0", "class_names": ["cat", "dog"], "num_classes": 2, **prep.to_meta(),
            "abstention": {"method": abstention.METHOD, "confidence_threshold": 0.0, "ood_threshold": -1.0}}
    (model / "model_meta.json").write_text(json.dumps(meta))
    for name in train.SERVING_FILES:
        shutil.copyfile(REPO_ROOT / "ml_scripts" / name, model / "code" / name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model.rglob("*")):
            tar.add(path, arcname=path.relative_to(model).as_posix(), recursive=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def endpoint(moto_stack, tmp_path_factory):
    """One InService endpoint for the module: every test only invokes it, and a model server's start is slow."""
    base = tmp_path_factory.mktemp("serving-errors")
    s3 = moto_stack.client("s3")
    s3.put_object(Bucket=BUCKET, Key="models/tiny/model.tar.gz", Body=tiny_model_archive(base))
    local_sagemaker = LocalSageMakerServer(
        SageMakerBackend(base / "state", s3, moto_stack.client("events"))).start()
    sm = sagemaker_client(local_sagemaker)
    sm.create_model(ModelName="tiny", ExecutionRoleArn="arn:aws:iam::123456789012:role/x", PrimaryContainer={
        "Image": "local/pytorch-inference:2.6", "ModelDataUrl": f"s3://{BUCKET}/models/tiny/model.tar.gz",
        "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "BREEDLINE_SERVING_BACKEND": "torch"}})
    sm.create_endpoint_config(EndpointConfigName="tiny", ProductionVariants=[{
        "VariantName": VARIANT, "ModelName": "tiny", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="tiny")
    deadline = time.monotonic() + 120
    while (described := sm.describe_endpoint(EndpointName=ENDPOINT))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline, "the endpoint did not leave Creating"
        time.sleep(0.2)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    yield local_sagemaker
    local_sagemaker.stop()


@pytest.fixture
def http(endpoint, monkeypatch, tmp_path):
    """The app's predict route (chalice.test.Client) pointed at the local SageMaker runtime."""
    from chalice.test import Client

    from chalicelib import clients, lambda_runtime

    env = {
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint.url,
        "BREEDLINE_BUCKET": BUCKET, "BREEDLINE_ENDPOINT_NAME": ENDPOINT,
        "BREEDLINE_ROLE_ARN": "arn:aws:iam::123456789012:role/breedline-sagemaker",
        "BREEDLINE_SOURCEDIR_URI": f"s3://{BUCKET}/code/sourcedir.tar.gz",
        "BREEDLINE_TRAINING_IMAGE": "local/pytorch-training:2.6", "BREEDLINE_INFERENCE_IMAGE": "local/pytorch-inference:2.6",
        "BREEDLINE_DEBUGGER_RULE_IMAGE": "local/debugger-rules:latest",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lambda_runtime.reset()
    clients.reset()
    import app as chalice_app

    with Client(chalice_app.app, project_dir=str(tmp_path)) as client:
        yield client.http
    lambda_runtime.reset()
    clients.reset()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def _post(http, body: bytes, content_type: str) -> tuple[int, dict]:
    response = http.post("/predict", body=body, headers={"Content-Type": content_type})
    return response.status_code, json.loads(response.body)


def test_bad_images_get_4xx_json_through_the_local_serving_path(http, endpoint) -> None:
    status, answer = _post(http, _jpeg(), "image/jpeg")
    assert status == 200 and answer["top_k"][0]["label"] in ("cat", "dog") and answer["model"] == VARIANT

    # A garbage JPEG passes the route's magic-byte check; the model's toolkit refuses it.
    status, answer = _post(http, b"\xff\xd8\xff" + b"garbage, not a JPEG" * 20, "image/jpeg")
    assert (status, answer["code"]) == (400, "undecodable_image"), answer
    assert answer["message"].startswith("could not decode the image") and "Traceback" not in answer["message"]

    # text/plain: the route answers 415 itself, before the endpoint.
    status, answer = _post(http, b"hello", "text/plain")
    assert (status, answer["code"]) == (415, "unsupported_media_type")


def test_the_container_refusal_is_aws_shaped_model_error(endpoint) -> None:
    """InvokeEndpoint itself: a 4xx from the toolkit is a ModelError with the container's status and body."""
    rt = runtime_client(endpoint)
    for body, content_type, status, code in (
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"\xff\xd8\xffjunk", "image/jpeg", 400, "undecodable_image"),
    ):
        with pytest.raises(Exception) as caught:
            rt.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType=content_type)
        response = caught.value.response  # type: ignore[attr-defined]
        assert response["Error"]["Code"] == "ModelError"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert response["OriginalStatusCode"] == status
        assert response["Error"]["Message"].startswith(f"Received client error ({status}) from primary")
        first_line, _, trace = response["OriginalMessage"].partition("\n")
        assert json.loads(first_line)["code"] == code and "Traceback" in trace


def test_abstention_and_abstain_false_through_the_local_serving_path(http, endpoint) -> None:
    """The route, the local runtime and the toolkit: "I don't know" passes through; ?abstain=false is the raw answer."""
    status, answer = _post(http, _jpeg(), "image/jpeg")
    assert status == 200, answer
    assert (answer["label"], answer["abstained"], answer["reason"]) == (None, True, "out_of_distribution")
    assert [item["label"] for item in answer["top_k"]] in (["cat", "dog"], ["dog", "cat"])
    response = http.post("/predict?abstain=false", body=_jpeg(), headers={"Content-Type": "image/jpeg"})
    raw = json.loads(response.body)
    assert response.status_code == 200, raw
    assert raw["abstained"] is False and raw["label"] == raw["top_k"][0]["label"] and "reason" not in raw
    response = http.post("/predict?abstain=perhaps", body=_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert (response.status_code, json.loads(response.body)["code"]) == (400, "invalid_parameter")
