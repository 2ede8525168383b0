"""Image URIs come from sagemaker-core's bundled configuration, per region."""

from __future__ import annotations

import pytest

from breedline.build.image_uris import ENV_NAMES, ImageSet, parse_image_uri, resolve_images


def test_images_follow_the_region_and_the_instance_type() -> None:
    east = resolve_images("us-east-1", training_instance_type="ml.g4dn.xlarge", endpoint_instance_type="ml.m5.large")
    frankfurt = resolve_images("eu-central-1", training_instance_type="ml.m5.xlarge", endpoint_instance_type="ml.g4dn.xlarge")

    t, i, r = (parse_image_uri(u) for u in (east.training, east.inference, east.debugger_rule))
    assert (t["region"], t["repository"]) == ("us-east-1", "pytorch-training")
    assert t["tag"].startswith("2.6-gpu-py312")  # GPU instance -> GPU image
    assert (i["repository"], i["tag"].split("-")[1]) == ("pytorch-inference", "cpu")
    assert r["repository"] == "sagemaker-debugger-rules"

    f_t, f_i, f_r = (parse_image_uri(u) for u in (frankfurt.training, frankfurt.inference, frankfurt.debugger_rule))
    assert f_t["region"] == f_i["region"] == f_r["region"] == "eu-central-1"
    assert f_t["tag"].split("-")[1] == "cpu" and f_i["tag"].split("-")[1] == "gpu"
    # The rule image lives in a different AWS account per region: a fixed table would be wrong somewhere.
    assert r["account"] != f_r["account"]


def test_serverless_endpoints_get_the_cpu_image() -> None:
    images = resolve_images("us-west-2", endpoint_instance_type="ml.g4dn.xlarge", serverless_memory_mb=2048)
    assert "-cpu-" in images.inference


def test_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="region"):
        resolve_images("xx-nowhere-1")


def test_env_and_ecr_repositories() -> None:
    images = resolve_images("eu-west-1")
    env = images.as_env()
    assert set(env) == set(ENV_NAMES.values()) == {
        "BREEDLINE_TRAINING_IMAGE",
        "BREEDLINE_INFERENCE_IMAGE",
        "BREEDLINE_DEBUGGER_RULE_IMAGE",
    }
    arns = images.ecr_repository_arns()
    assert len(arns) == 3 and all(a.startswith("arn:aws:ecr:eu-west-1:") for a in arns)
    assert ImageSet("cn-north-1", images.training, images.inference, images.debugger_rule).ecr_repository_arns("aws-cn")[0].startswith("arn:aws-cn:")
    with pytest.raises(ValueError):
        parse_image_uri("pytorch:latest")
