"""Issue 12: what ``make deploy`` refuses before it builds anything, and what its build copy leaves out.

A serverless memory size the model cannot load in, and settings the Lambda
would refuse at cold start, end as one ``error:`` line at package time; the
build copy drops the marker that makes a raw ``chalice package`` refuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from breedline import deploy
from breedline.deploy.serverless import MODEL_MEMORY_MB, check_serverless_memory
from breedline.deploy.stage import NEEDS_MAKE_DEPLOY
from chalicelib.config import SERVERLESS_MEMORY_SIZES, Settings
from infra_helpers import REPO


def app_with_dev_stage(tmp_path: Path, **variables: str) -> Path:
    """A copy of chalice_app/ whose dev stage has these extra variables."""
    app_dir = tmp_path / "chalice_app"
    shutil.copytree(REPO / "chalice_app", app_dir, ignore=shutil.ignore_patterns("__pycache__", "deployments"))
    path = app_dir / ".chalice" / "config.json"
    config = json.loads(path.read_text())
    config["stages"]["dev"]["environment_variables"].update(variables)
    path.write_text(json.dumps(config))
    return app_dir


def refusal(tmp_path: Path, **variables: str) -> str:
    """The DeployError of packaging the dev stage with these variables; nothing may have been built."""
    out = tmp_path / "out"
    with pytest.raises(deploy.DeployError) as caught:
        deploy.package("dev", region="us-east-1", app_dir=app_with_dev_stage(tmp_path, **variables), out_dir=out,
                       log=lambda _msg: None)
    assert not out.exists() or not any(out.iterdir())
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "variables, model, need",
    [
        ({"BREEDLINE_SERVERLESS_MEMORY_MB": "2048"}, "vgg11", 3072),  # the dev stage's model
        ({"BREEDLINE_SERVERLESS_MEMORY_MB": "1024", "BREEDLINE_MODEL": "efficientnet_lite0"}, "efficientnet_lite0", 2048),
        ({"BREEDLINE_SERVERLESS_MEMORY_MB": "2048", "BREEDLINE_MODEL": "efficientnet_lite0",
          "BREEDLINE_EXTRA_HYPERPARAMETERS": '{"model": "vgg11"}'}, "vgg11", 3072),
    ],
)
def test_a_serverless_memory_size_too_small_for_the_model_is_refused(tmp_path, variables, model, need):
    memory = variables["BREEDLINE_SERVERLESS_MEMORY_MB"]
    assert refusal(tmp_path, **variables) == (
        f"BREEDLINE_SERVERLESS_MEMORY_MB={memory} is too small for model {model}: it needs at least {need} MB "
        "to load on a serverless endpoint (docs/aws.md, section 5)"
    )


def test_settings_the_lambda_would_refuse_are_refused_at_package_time(tmp_path):
    message = refusal(tmp_path, BREEDLINE_SERVERLESS_MEMORY_MB="1500")
    assert message.startswith("stage dev: BREEDLINE_SERVERLESS_MEMORY_MB=1500 is not a Serverless Inference memory size")
    message = refusal(tmp_path / "b", BREEDLINE_MAX_IMAGE_BYTES="4718592")
    assert message.startswith("stage dev: BREEDLINE_MAX_IMAGE_BYTES=4718592 cannot reach the predict function")
    message = refusal(tmp_path / "c", BREEDLINE_VARIANT_NAME="")
    assert message.startswith("stage dev: BREEDLINE_VARIANT_NAME is empty")


@pytest.mark.parametrize("model, memory", [("vgg11", 3072), ("vgg11", 6144), ("efficientnet_lite0", 2048),
                                           ("resnet50", 2048), ("vgg11", 0)])
def test_a_large_enough_memory_size_or_an_instance_endpoint_passes(model, memory):
    check_serverless_memory(Settings.from_env({"BREEDLINE_MODEL": model, "BREEDLINE_SERVERLESS_MEMORY_MB": str(memory)}))


def test_a_model_without_a_measured_size_is_refused_with_how_to_measure_it():
    settings = Settings.from_env({"BREEDLINE_MODEL": "mobilenet", "BREEDLINE_SERVERLESS_MEMORY_MB": "6144"})
    with pytest.raises(deploy.DeployError, match="python -m bench.serving_memory mobilenet"):
        check_serverless_memory(settings)


def test_every_architecture_has_a_minimum_that_aws_offers():
    import backbones

    assert set(MODEL_MEMORY_MB) == set(backbones.ARCHITECTURES)
    assert set(MODEL_MEMORY_MB.values()) <= set(SERVERLESS_MEMORY_SIZES)


def test_the_build_copy_drops_the_make_deploy_marker(packaged: deploy.Package):
    config = json.loads((packaged.out_dir / "app" / ".chalice" / "config.json").read_text())
    assert NEEDS_MAKE_DEPLOY not in config.get("environment_variables", {})
    assert NEEDS_MAKE_DEPLOY not in config["stages"]["dev"]["environment_variables"]
    tracked = json.loads((REPO / "chalice_app" / ".chalice" / "config.json").read_text())
    assert tracked["stages"]["dev"]["environment_variables"][NEEDS_MAKE_DEPLOY] == "true"
