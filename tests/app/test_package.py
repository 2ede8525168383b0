"""Packaging: `chalice package` to CloudFormation, cfn-lint, zip size; rules match the sample events.

What is packaged is the Lambda build copy with the stage's environment
(``breedline.deploy.packaging.prepare_build_copy``), the same copy the deploy
tool packages; a raw ``chalice package`` of ``chalice_app/`` itself refuses.
Slowest module of the app tests (a few seconds): it runs the real chalice CLI
and cfn-lint as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from app_helpers import EVENTS, ROOT, load_event
from breedline.build.lambda_app import keep_deps_cache
from breedline.deploy.packaging import prepare_build_copy, resolve_stage_images
from breedline.deploy.stage import data_bucket_name, load_stage

APP_DIR = ROOT / "chalice_app"
BIN = Path(sys.executable).parent
ZIP_LIMIT = 10 * 1024 * 1024  # issue 6: the deployment zip stays under 10 MB
STACK, ACCOUNT, REGION = "breedline-dev", "123456789012", "us-east-1"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """``chalice package`` of the Lambda build copy, the same copy the deploy tool packages."""
    root = tmp_path_factory.mktemp("package")
    stage = load_stage("dev", APP_DIR)
    images = resolve_stage_images(stage, REGION, log=lambda _msg: None)
    build_app, _ = prepare_build_copy(root, APP_DIR, stage, images, stack=STACK, account=ACCOUNT, region=REGION,
                                      log=lambda _msg: None)
    out = root / "out"
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "dev", str(out)],
        cwd=build_app, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    keep_deps_cache(build_app)
    return out


def test_package_builds_a_small_zip_without_heavy_dependencies(packaged):
    archive = packaged / "deployment.zip"
    size = archive.stat().st_size
    assert size < ZIP_LIMIT, f"deployment.zip is {size} bytes"
    names = zipfile.ZipFile(archive).namelist()
    assert "app.py" in names and "chalicelib/sagemaker_requests.py" in names
    assert "contract.py" in names  # the shared vocabulary, from the build copy's vendor/
    # The predict route's fast base64 decoder, as a compiled Lambda-platform extension.
    assert any(n.startswith("pybase64/_pybase64") and n.endswith(".so") for n in names)
    # Forms on /predict (issue 16): the parser is in the zip; HEIC is never decoded there, so no pillow-heif.
    assert any(n.startswith("python_multipart/") for n in names)
    for heavy in ("torch/", "sagemaker/", "botocore/", "boto3/", "numpy/", "pillow_heif/", "PIL/"):
        assert not any(n.startswith(heavy) for n in names), heavy
    print(f"deployment.zip: {size} bytes ({size / 1024 / 1024:.2f} MiB), {len(names)} files")


def test_template_has_every_function_and_rule(packaged):
    template = json.loads((packaged / "sam.json").read_text())
    resources = template["Resources"]
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert {"OnDatasetUpload", "CheckQuietDatasets", "OnTuningStateChange", "OnTrainingStateChange", "OnEndpointStateChange",
            "OnTransformStateChange", "APIHandler"} <= functions
    patterns = [
        e["Properties"]["Pattern"]
        for f in functions
        for e in resources[f]["Properties"].get("Events", {}).values()
        if e["Type"] == "CloudWatchEvent"
    ]
    assert {p["detail-type"][0] for p in patterns} == {
        "Object Created", "SageMaker HyperParameter Tuning Job State Change", "SageMaker Training Job State Change",
        "SageMaker Endpoint State Change", "SageMaker Transform Job State Change",
    }
    env = resources["OnDatasetUpload"]["Properties"]["Environment"]["Variables"]
    # issue 12: the S3 rule watches the bucket the stack creates, not config.json's placeholder
    assert env["BREEDLINE_BUCKET"] == data_bucket_name(STACK, ACCOUNT, REGION)
    assert "BREEDLINE_NEEDS_MAKE_DEPLOY" not in env


def test_a_raw_chalice_package_of_the_dev_stage_refuses_and_points_at_make_deploy(tmp_path):
    """Issue 12: config.json's dev stage alone would package a stack watching a bucket it never creates."""
    out = tmp_path / "out"
    result = subprocess.run(
        [str(BIN / "chalice"), "package", "--stage", "dev", str(out)],
        cwd=APP_DIR, env={**os.environ, "AWS_DEFAULT_REGION": REGION}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    last_line = (result.stdout + result.stderr).strip().splitlines()[-1]
    assert "BREEDLINE_NEEDS_MAKE_DEPLOY is set" in last_line and "make deploy STAGE=" in last_line
    assert not out.exists()


def test_only_the_aws_stages_carry_the_make_deploy_marker():
    config = json.loads((APP_DIR / ".chalice" / "config.json").read_text())
    assert "BREEDLINE_NEEDS_MAKE_DEPLOY" not in config.get("environment_variables", {})
    assert config["stages"]["dev"]["environment_variables"]["BREEDLINE_NEEDS_MAKE_DEPLOY"] == "true"
    assert "BREEDLINE_NEEDS_MAKE_DEPLOY" not in config["stages"]["local"]["environment_variables"]


def test_cfn_lint_passes(packaged):
    result = subprocess.run([str(BIN / "cfn-lint"), str(packaged / "sam.json")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stage_config_uses_only_documented_variables():
    from chalicelib.config import VARIABLES, Settings

    known = {v.name for v in VARIABLES}
    config = json.loads((APP_DIR / ".chalice" / "config.json").read_text())
    stages = config["stages"]
    assert {"dev", "local"} <= set(stages)
    for name, stage in stages.items():
        merged = {**config.get("environment_variables", {}), **stage.get("environment_variables", {})}
        unknown = {k for k in merged if k.startswith(("BREEDLINE_", "POWERTOOLS_")) and k not in known}
        assert not unknown - {"POWERTOOLS_LOG_LEVEL"}, (name, unknown)
        Settings.from_env(merged)  # every stage parses


# -- the app's event rules route the sample events (moto EventBridge -> SQS) ----------
ROUTES = {
    "s3_object_created.json": "on_dataset_upload",
    "s3_ready_marker.json": "on_dataset_upload",
    "s3_object_created_outside_datasets.json": None,
    "tuning_completed.json": "on_tuning_state_change",
    "tuning_failed.json": "on_tuning_state_change",
    "training_completed.json": "on_training_state_change",
    "training_completed_trial.json": "on_training_state_change",  # reaches the handler, which ignores it
    "training_failed.json": "on_training_state_change",
    "training_completed_foreign.json": None,  # not even delivered
    "endpoint_in_service.json": "on_endpoint_state_change",
    "s3_batch_ready_marker.json": "on_dataset_upload",
    "transform_completed.json": "on_transform_state_change",
    "transform_failed.json": "on_transform_state_change",
    "transform_completed_foreign.json": None,  # not even delivered
}


def test_event_rules_route_each_sample_event(monkeypatch):
    monkeypatch.setenv("BREEDLINE_BUCKET", "breedline-data")
    import importlib

    import app as chalice_app

    app_module = importlib.reload(chalice_app)  # patterns are built from the environment at load
    assert {p.name for p in EVENTS.glob("*.json") if not p.name.startswith("api_")} == set(ROUTES)
    with mock_aws():
        events = boto3.client("events", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        queues = {}
        for source in app_module.app.event_sources:
            pattern = getattr(source, "event_pattern", None)
            if pattern is None:
                continue
            url = sqs.create_queue(QueueName=source.name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=source.name, EventPattern=json.dumps(pattern))
            events.put_targets(Rule=source.name, Targets=[{"Id": "q", "Arn": arn}])
            queues[source.name] = url
        for name, expected in ROUTES.items():
            event = load_event(name)
            events.put_events(Entries=[{
                "Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"]),
                "Resources": event["resources"],
            }])
            got = []
            for rule, url in queues.items():
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                if messages:
                    got.append(rule)
                    assert json.loads(messages[0]["Body"])["detail"] == event["detail"]
                for message in messages:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            assert got == ([expected] if expected else []), (name, got)


def test_cold_import_does_not_load_boto3():
    heavy = "('boto3', 'botocore.session', 'botocore.client', 'aws_xray_sdk')"
    code = f"import sys, app; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=APP_DIR, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
