"""Issue 18: the request fields of PyTorch distributed training, and the settings that ask for them.

The words are checked against their owners: the hyperparameter against the
PyTorch training toolkit that reads it in the image (``sagemaker-pytorch-training``),
the GPU counts against sagemaker-core's ``instance_gpu_info.json``. botocore
validates every variant in ``test_requests.py`` (its VARIANTS).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chalicelib import sagemaker_requests as build
from chalicelib.config import MULTI_GPU_INSTANCES, processes_per_job
from test_requests import all_requests, settings  # type: ignore[import-not-found]

FLAG = build.TORCH_DISTRIBUTED_HYPERPARAMETER


def test_the_hyperparameter_is_the_one_the_pytorch_toolkit_reads():
    training = pytest.importorskip("sagemaker_pytorch_container.training")
    assert FLAG == training.LAUNCH_TORCH_DISTRIBUTED_ENV_NAME


def test_the_gpu_table_agrees_with_sagemaker_core():
    import sagemaker.core

    path = Path(sagemaker.core.__file__).parent / "image_uri_config" / "instance_gpu_info.json"
    counts: dict[str, set[int]] = {}
    for region in json.loads(path.read_text()).values():
        for instance_type, info in region.items():
            counts.setdefault(instance_type, set()).add(info["Count"])
    multi = {t: c.pop() for t, c in counts.items() if max(c) > 1 and len(c) == 1}
    assert MULTI_GPU_INSTANCES == multi


def test_one_process_sends_no_distribution_and_one_instance():
    requests = all_requests(settings())
    training, tuning = requests["CreateTrainingJob"], requests["CreateHyperParameterTuningJob"]
    assert training["ResourceConfig"]["InstanceCount"] == 1
    assert tuning["TrainingJobDefinition"]["ResourceConfig"]["InstanceCount"] == 1
    assert FLAG not in training["HyperParameters"]
    assert FLAG not in tuning["TrainingJobDefinition"]["StaticHyperParameters"]


def test_several_instances_send_the_count_and_torch_distributed_to_both_jobs():
    s = settings(BREEDLINE_TRAINING_INSTANCE_COUNT="3", BREEDLINE_TUNING_INSTANCE_COUNT="2")
    requests = all_requests(s)
    training, definition = requests["CreateTrainingJob"], requests["CreateHyperParameterTuningJob"]["TrainingJobDefinition"]
    assert training["ResourceConfig"]["InstanceCount"] == 3
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    # JSON-encoded like every sagemaker_* value: the toolkit json-decodes it to True.
    assert json.loads(training["HyperParameters"][FLAG]) is True
    assert json.loads(definition["StaticHyperParameters"][FLAG]) is True
    # Spot stays on with one CheckpointConfig: SageMaker restores it to every instance (docs/scale.md).
    assert training["EnableManagedSpotTraining"] is True and "CheckpointConfig" in training


def test_a_tuned_value_cannot_turn_the_launcher_off():
    s = settings(BREEDLINE_TRAINING_INSTANCE_COUNT="2")
    request = build.create_training_job(s, name="breedline-x-final", dataset="d", region="us-east-1",
                                        hyperparameters={FLAG: "false", "batch_size": "32"}, tags=[])
    assert json.loads(request["HyperParameters"][FLAG]) is True


def test_one_instance_with_several_gpus_is_distributed_too():
    s = settings(BREEDLINE_TRAINING_INSTANCE_TYPE="ml.g4dn.12xlarge")
    assert processes_per_job("ml.g4dn.12xlarge", 1) == 4
    training = all_requests(s)["CreateTrainingJob"]
    assert training["ResourceConfig"] == {**training["ResourceConfig"], "InstanceType": "ml.g4dn.12xlarge",
                                          "InstanceCount": 1}
    assert json.loads(training["HyperParameters"][FLAG]) is True
    tuning = all_requests(s)["CreateHyperParameterTuningJob"]["TrainingJobDefinition"]
    assert FLAG not in tuning["StaticHyperParameters"]  # trials stay on the one-GPU default


@pytest.mark.parametrize("overrides, message", [
    ({"BREEDLINE_TRAINING_INSTANCE_COUNT": "0"}, "BREEDLINE_TRAINING_INSTANCE_COUNT='0' must be at least 1"),
    ({"BREEDLINE_TUNING_INSTANCE_COUNT": "-2"}, "BREEDLINE_TUNING_INSTANCE_COUNT='-2' must be at least 1"),
    ({"BREEDLINE_TRAINING_INSTANCE_COUNT": "two"}, "is not a valid int"),
    ({"BREEDLINE_TRAINING_INSTANCE_COUNT": "2", "BREEDLINE_TRAINING_INSTANCE_TYPE": "ml.trn1.32xlarge"}, "Neuron"),
    ({"BREEDLINE_TUNING_INSTANCE_COUNT": "2", "BREEDLINE_TUNING_INSTANCE_TYPE": "local_gpu"},
     "BREEDLINE_TUNING_INSTANCE_TYPE='local_gpu' is not one"),
])
def test_counts_and_types_sagemaker_would_refuse_fail_at_load(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**overrides)


def test_one_process_on_any_type_loads_as_before():
    assert settings(BREEDLINE_TRAINING_INSTANCE_TYPE="ml.trn1.2xlarge").training_instance_count == 1
