"""Fixtures for the local runtime's tests: moto on loopback and the local SageMaker service."""

from __future__ import annotations

import json
import time
from typing import Iterator

import pytest
from local_standins import BUCKET, make_sourcedir  # type: ignore[import-not-found]
from runtime_harness import (  # type: ignore[import-not-found]
    DigitsPipeline,
    clients,
    endpoint_in_service,
    running_runtime,
    upload_folder,
    wait_for,
)

from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_http import LocalSageMakerServer
from breedline.local.standins import MotoStandIns, create_data_bucket


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




#: Small and fast: 2 trials (both at once, a core each) + the final job, 2 epochs each at 32 px.
E2E_ENV = {
    "BREEDLINE_MODEL": "efficientnet_lite0",
    "BREEDLINE_EPOCHS": "2",
    "BREEDLINE_MAX_JOBS": "2",
    "BREEDLINE_MAX_PARALLEL_JOBS": "2",
    "BREEDLINE_BATCH_SIZES": "16",
    "BREEDLINE_LEARNING_RATE_RANGE": "0.003,0.008",
    "BREEDLINE_EXTRA_HYPERPARAMETERS": json.dumps({"image_size": "32", "trainable_blocks": "2", "num_workers": "0",
                                                   "profile_steps": "2", "debug_save_interval": "2"}),
    "BREEDLINE_ACCURACY_FLOOR": "0.3",
    # the Debugger service's hook and S3 layout, which the pipeline test reads back (test_debugger_modes.py: all modes)
    "BREEDLINE_DEBUGGER": "service",
}
PER_CLASS = 20


@pytest.fixture(scope="session")
def digits_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DigitsPipeline]:
    """One whole pipeline run (about 2.5 minutes), shared by every e2e test that needs a deployed model.

    Why shared: the upload-to-prediction test and the try-it page's browser test
    need the same thing, a real model behind the real API, and a second pipeline
    would double make test-e2e's longest part.
    """
    from breedline.demo_digits import write_digits

    started = time.monotonic()
    root = tmp_path_factory.mktemp("digits-pipeline")
    data = root / "digits"
    write_digits(data, per_class=PER_CLASS, size=32)
    with running_runtime(root / "state", E2E_ENV) as info:
        upload_folder(clients(info)["s3"], info.bucket, data, "digits")
        endpoint = wait_for(lambda: endpoint_in_service(clients(info)["sagemaker"]),
                            timeout=300 - (time.monotonic() - started), what="endpoint InService")
        yield DigitsPipeline(started=started, root=root, data=data, info=info, endpoint=endpoint,
                             in_service=time.monotonic())
