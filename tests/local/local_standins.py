"""Helpers for the local runtime's tests: a stand-in training script and request builders.

The stand-in training script below is tiny on purpose: unit tests of the
service check its protocol and process handling in seconds; the end-to-end
test uses the real ``ml_scripts/train.py``.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from breedline.local.sagemaker_http import LocalSageMakerServer


BUCKET = "breedline-unit"

STANDIN_TRAIN = textwrap.dedent('''
    """Stand-in for train.py: honours the container contract in a few milliseconds."""
    import argparse, json, os, pathlib, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--learning_rate", type=float, default=0.1)
    p.add_argument("--batch_size", default="8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--fail", default="no")
    p.add_argument("--sleep", type=float, default=0.0)
    args, _ = p.parse_known_args()
    out = pathlib.Path(os.environ["SM_OUTPUT_DIR"])
    if args.fail == "yes":
        (out / "failure").write_text("ValueError: train split has no images in " + os.environ["SM_CHANNEL_TRAIN"])
        print("about to fail", file=sys.stderr)
        sys.exit(3)
    classes = sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))
    cfg = pathlib.Path(os.environ["SM_INPUT_CONFIG_DIR"])
    hook = json.loads((cfg / "debughookconfig.json").read_text()) if (cfg / "debughookconfig.json").exists() else None
    for epoch in range(1, args.epochs + 1):
        time.sleep(args.sleep)
        loss = abs(args.learning_rate - 0.01) * 10 + 1.0 / epoch
        print(f"#breedline-metric epoch={epoch} train_loss={loss + 0.1:.6f}", flush=True)
        print(f"#breedline-metric epoch={epoch} valid_loss={loss:.6f}", flush=True)
        print(f"#breedline-metric epoch={epoch} valid_accuracy={1 - loss / 10:.6f}", flush=True)
    print("#breedline-metric test_accuracy=0.9", flush=True)
    model = pathlib.Path(os.environ["SM_MODEL_DIR"])
    (model / "code").mkdir(parents=True, exist_ok=True)
    (model / "model_meta.json").write_text(json.dumps({"class_names": classes,
                                                       "hp": json.loads(os.environ["SM_HPS"])}))
    (model / "code" / "inference.py").write_text(pathlib.Path("standin_inference.py").read_text())
    if hook:
        d = pathlib.Path(hook["LocalPath"]) / "events" / "000000000000"
        d.mkdir(parents=True, exist_ok=True)
        (d / "000000000000_worker_0.tfevents").write_text("tensor")
    prof = pathlib.Path(os.environ["SM_OUTPUT_DATA_DIR"]) / "profiler"
    prof.mkdir(parents=True, exist_ok=True)
    (prof / "summary.json").write_text("{}")
    ckpt = pathlib.Path(os.environ["BREEDLINE_CHECKPOINT_DIR"])
    (ckpt / "last.txt").write_text(str(args.epochs))
''')

STANDIN_INFERENCE = textwrap.dedent('''
    """Stand-in inference.py: answers with the model's first class name and a version tag."""
    import json, os, pathlib

    from sagemaker_inference.errors import BaseInferenceToolkitError

    class InferenceInputError(BaseInferenceToolkitError):
        """As ml_scripts/inference.py's: a toolkit error, so the serving toolkit answers its status."""
        def __init__(self, message, status_code=400):
            super().__init__(status_code, message, "Bad Request")

    def model_fn(model_dir):
        # As ml_scripts/inference.py does: a log line on stdout before the server says LISTENING.
        print(json.dumps({"message": "model loaded", "model_dir": model_dir}), flush=True)
        return json.loads((pathlib.Path(model_dir) / "model_meta.json").read_text())

    def input_fn(body, content_type):
        if content_type not in ("image/jpeg", "image/png", "application/x-image"):
            raise InferenceInputError(f"unsupported content type {content_type}", 415)
        if not body:
            raise InferenceInputError("empty body", 400)
        return body

    def predict_fn(data, model):
        return {"label": model["class_names"][0], "probability": 1.0, "top_k": [],
                "lr": model["hp"].get("learning_rate")}

    def output_fn(prediction, accept):
        return json.dumps(prediction)
''')


def make_sourcedir() -> bytes:
    """The stand-in source dir: :data:`STANDIN_TRAIN` as train.py and its inference module."""
    return tarball({"train.py": STANDIN_TRAIN, "standin_inference.py": STANDIN_INFERENCE})


def write_colour_dataset(root: Path) -> None:
    """Three 16 px JPEGs per class (red, blue) in each split: enough for the app to start a run."""
    from PIL import Image

    for split in ("train", "valid", "test"):
        for cls, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (16, 16), colour).save(folder / f"{i}.jpg")


def sagemaker_client(server: LocalSageMakerServer, validate: bool = True):
    return boto3.client("sagemaker", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(parameter_validation=validate, retries={"max_attempts": 1}))


def runtime_client(server: LocalSageMakerServer):
    return boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 1}))


def training_request(name: str, **hyper: str) -> dict:
    """A request shaped like the app's, pointing at the stand-in script."""
    from contract import METRIC_DEFINITIONS

    hyperparameters = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/code/standin.tar.gz"),
        "epochs": "2",
        **hyper,
    }
    return {
        "TrainingJobName": name,
        "HyperParameters": hyperparameters,
        "AlgorithmSpecification": {"TrainingImage": "local/pytorch-training:2.6", "TrainingInputMode": "File",
                                   "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": "arn:aws:iam::123456789012:role/breedline-sagemaker",
        "InputDataConfig": [
            {"ChannelName": ch, "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/datasets/toy/{ch}/",
                "S3DataDistributionType": "FullyReplicated"}}}
            for ch in ("train", "valid")
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs/"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "DebugHookConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs/debug",
                            "CollectionConfigurations": [{"CollectionName": "losses"}]},
        "ProfilerConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs/profiler"},
        "CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/jobs/checkpoints/{name}"},
        "Tags": [{"Key": "breedline:stage", "Value": "training"}],
    }


def tarball(files: dict[str, str]) -> bytes:
    """A gzipped tarball of text files (a source dir), as the runtime downloads it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
