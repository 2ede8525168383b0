"""Fixtures for the infrastructure tests: one ``chalice package`` per session.

Why session-scoped: packaging copies the app, builds the Lambda zip and
resolves the images, the slowest step of these tests; every test reads the
same artifact, which is also exactly what ``make deploy`` would upload.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from breedline import deploy

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account, so names agree with the moto stack


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> deploy.Package:
    """The dev stage packaged with the merge template, as ``make deploy`` builds it."""
    out = tmp_path_factory.mktemp("package")
    return deploy.package("dev", region=REGION, account=ACCOUNT, out_dir=out, log=lambda _msg: None)


@pytest.fixture(scope="session")
def template(packaged: deploy.Package) -> dict[str, Any]:
    """The packaged SAM template (read back from disk: what would be uploaded)."""
    return json.loads(packaged.template_path.read_text())


@pytest.fixture(scope="session")
def expanded(packaged: deploy.Package, template: dict[str, Any]) -> dict[str, Any]:
    """The template after the SAM transform, with a placeholder code location."""
    t = copy.deepcopy(template)
    deploy.point_code_at(t, "artifacts-bucket", "lambda.zip")
    return deploy.sam_to_cloudformation(t, packaged.parameters, REGION)


@pytest.fixture
def quiet_moto_warnings() -> Any:
    """moto warns once per resource type it skips; the tests record those types instead."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
