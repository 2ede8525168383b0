"""The handlers take SageMaker's events whichever way their times are spelled.

AWS's documented training- and tuning-job events write times as strings of
epoch milliseconds (``"CreationTime": "1583831889050"``, as ``events/`` does now),
its endpoint event and DescribeTrainingJob as numbers. The handlers must not
depend on either: the same event in both spellings gets the same outcome.
"""

from __future__ import annotations

import boto3
import pytest

from app_helpers import completed_training, completed_tuning, load_event
from chalicelib import naming
from chalicelib.state import StateStore

TUNING_EVENT = load_event("tuning_completed.json")
TUNING = TUNING_EVENT["detail"]["HyperParameterTuningJobName"]
FINAL = naming.training_job_name(TUNING)
DATASET = "dog-breeds"
VERSION = TUNING_EVENT["detail"]["Tags"]["breedline:version"]


def spelled(event: dict, spelling: str) -> dict:
    """``event`` with every time in ``detail`` as a string or a number of epoch milliseconds."""
    def convert(value, key=""):
        if isinstance(value, dict):
            return {k: convert(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if key.endswith("Time"):
            return str(int(value)) if spelling == "text" else int(value)
        return value
    return {**event, "detail": convert(event["detail"])}


def test_the_sample_events_spell_times_as_aws_examples_do():
    for name in ("tuning_completed.json", "training_completed.json", "training_failed.json"):
        detail = load_event(name)["detail"]
        assert isinstance(detail["CreationTime"], str) and detail["CreationTime"].isdigit(), name
        assert isinstance(detail["LastModifiedTime"], str), name


@pytest.mark.parametrize("spelling", ["text", "number"])
def test_tuning_completed_in_either_spelling(client, sagemaker, aws, env, spelling):
    best = f"{TUNING}-002-9f8e7d6c"
    sagemaker.tuning[TUNING] = completed_tuning(TUNING, best, {"learning_rate": "0.003", "batch_size": '"64"'})
    result = client.lambda_.invoke("on_tuning_state_change", spelled(TUNING_EVENT, spelling)).payload
    assert result["outcome"] == "started" and result["training_job"] == FINAL


@pytest.mark.parametrize("spelling", ["text", "number"])
def test_training_completed_in_either_spelling(client, sagemaker, aws, env, spelling):
    store = StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])
    store.save_version(DATASET, VERSION, ["beagle", "corgi", "husky"], 27, TUNING)
    sagemaker.training[FINAL] = completed_training(FINAL, 0.83)
    event = spelled(load_event("training_completed.json"), spelling)
    result = client.lambda_.invoke("on_training_state_change", event).payload
    assert result["outcome"] == "deployed" and result["action"] == "created"
