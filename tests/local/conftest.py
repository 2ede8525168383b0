"""Fixtures for the local runtime's tests: moto on loopback and the local SageMaker service."""

from __future__ import annotations

import pytest

from breedline.local.standins import MotoStandIns, create_data_bucket
from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_http import LocalSageMakerServer
from local_standins import BUCKET, make_sourcedir  # type: ignore[import-not-found]


@pytest.fixture(scope="module")
def moto_stack():
    stack = MotoStandIns()
    s3 = stack.client("s3")
    create_data_bucket(s3, BUCKET, stack.region)
    s3.put_object(Bucket=BUCKET, Key="code/standin.tar.gz", Body=make_sourcedir())
    for split in ("train", "valid"):
        for cls in ("a", "b"):
            s3.put_object(Bucket=BUCKET, Key=f"datasets/toy/{split}/{cls}/1.jpg", Body=b"\xff\xd8\xff")
    yield stack
    stack.stop()


@pytest.fixture
def local_sagemaker(moto_stack, tmp_path):
    """A fresh local SageMaker service whose events go to moto's default bus."""
    backend = SageMakerBackend(tmp_path / "state", moto_stack.client("s3"), moto_stack.client("events"))
    server = LocalSageMakerServer(backend).start()
    yield server
    server.stop()


