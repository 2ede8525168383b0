"""Issue 13 "Show it": the report's evaluation tables and pictures, and ``model_card.html`` in a real browser.

One real small pipeline for the module: the digits as JPEGs in moto's S3, a
tuning job of two trials and its final job on the in-process local SageMaker
service, each a real process under the container contract running
``card_job.py`` (a softmax regression whose ``evaluation.json`` comes from its
own test predictions), and the gate's decision recorded in the app's state
table by the app's own ``quality_gate`` and ``StateStore``. The report and the
card are then built the way ``python -m breedline report`` builds them.
"""

from __future__ import annotations

import copy
import io
import json
import re
import tarfile
import time
from pathlib import Path

import pytest
from card_job import sourcedir  # type: ignore[import-not-found]
from contract import METRIC_DEFINITIONS
from local_standins import BUCKET, sagemaker_client  # type: ignore[import-not-found]
from PIL import Image

from breedline import card_facts, cli, job_evaluation, job_report, model_card
from breedline.demo_digits import write_digits
from breedline.local.sagemaker import SageMakerBackend
from breedline.local.sagemaker_http import LocalSageMakerServer

DATASET, VERSION, TUNING = "digits-card", "v-card-1", "card-tune"
FINAL = f"{TUNING}-final"
TABLE = "card-state"
DATA_URI = f"s3://{BUCKET}/datasets/{DATASET}"


def wait_for(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def _definition() -> dict:
    channels = [
        {
            "ChannelName": s,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": f"{DATA_URI}/{s}/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
        for s in ("train", "valid", "test")
    ]
    return {
        "StaticHyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/code/card.tar.gz"),
            "epochs": "3",
        },
        "AlgorithmSpecification": {
            "TrainingImage": "local/pytorch-training:2.6",
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": "arn:aws:iam::123456789012:role/breedline-sagemaker",
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/jobs/"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def record_gate(dynamodb, sm) -> object:
    """What ``deploy_if_better`` records: the job Completed, then the live model or ``not deployed: <reason>``."""
    from chalicelib.decisions import GatePolicy, final_metric, quality_gate, read_metrics
    from chalicelib.state import TABLE_DEFINITIONS

    dynamodb.create_table(TableName=TABLE, **TABLE_DEFINITIONS["state_table"])
    state = card_facts.state_store(dynamodb, TABLE)
    state.record_job(FINAL, stage="training", dataset=DATASET, version=VERSION, status="Completed")
    metric_data = sm.describe_training_job(TrainingJobName=FINAL)["FinalMetricDataList"]
    accuracy = final_metric(metric_data)
    # no live model yet: the class list is compared with nothing
    decision = quality_gate(read_metrics(metric_data), [], None, GatePolicy(), job=FINAL)
    if decision.deploy:
        state.set_live_model(
            {
                "model": FINAL,
                "training_job": FINAL,
                "accuracy": accuracy,
                "dataset": DATASET,
                "version": VERSION,
                "endpoint": "card-endpoint",
            },
            None,
        )
    else:
        state.record_job(
            FINAL,
            stage="training",
            dataset=DATASET,
            version=VERSION,
            status="Completed",
            reason=f"not deployed: {decision.reason}",
        )
    return state, decision


@pytest.fixture(scope="module")
def pipeline(moto_stack, tmp_path_factory):
    """The digits uploaded, a tuning job, its final job, the gate's record: (sm, s3, state, decision, data)."""
    s3 = moto_stack.client("s3")
    data = tmp_path_factory.mktemp("digits") / DATASET
    write_digits(data, per_class=20, size=24)
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        s3.put_object(
            Bucket=BUCKET,
            Key=f"datasets/{DATASET}/{path.relative_to(data).as_posix()}",
            Body=path.read_bytes(),
        )
    s3.put_object(Bucket=BUCKET, Key="code/card.tar.gz", Body=sourcedir())
    server = LocalSageMakerServer(SageMakerBackend(tmp_path_factory.mktemp("sm"), s3, None)).start()
    try:
        sm = sagemaker_client(server)
        sm.create_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=TUNING,
            HyperParameterTuningJobConfig={
                "Strategy": "Random",
                "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "valid_loss"},
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
                "ParameterRanges": {
                    "ContinuousParameterRanges": [
                        {
                            "Name": "learning_rate",
                            "MinValue": "0.1",
                            "MaxValue": "1.0",
                            "ScalingType": "Logarithmic",
                        }
                    ]
                },
                "TrainingJobEarlyStoppingType": "Off",
            },
            TrainingJobDefinition=_definition(),
        )
        tuning = wait_for(
            lambda: (
                (t := sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=TUNING))[
                    "HyperParameterTuningJobStatus"
                ]
                in ("Completed", "Failed")
                and t
            )
        )
        assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
        definition = _definition()
        best = tuning["BestTrainingJob"]["TunedHyperParameters"]
        sm.create_training_job(
            TrainingJobName=FINAL,
            HyperParameters={**definition.pop("StaticHyperParameters"), **best},
            Tags=[
                {"Key": "breedline:stage", "Value": "training"},
                {"Key": card_facts.TAG_DATASET, "Value": DATASET},
                {"Key": card_facts.TAG_VERSION, "Value": VERSION},
            ],
            **definition,
        )
        job = wait_for(
            lambda: (
                (j := sm.describe_training_job(TrainingJobName=FINAL))["TrainingJobStatus"]
                in ("Completed", "Failed")
                and j
            )
        )
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        state, decision = record_gate(moto_stack.client("dynamodb"), sm)
        yield sm, s3, state, decision, data
    finally:
        server.stop()


def evaluation_in_s3(s3) -> dict:
    """``evaluation.json`` read straight from the job's ``model.tar.gz``, independently of the report."""
    body = s3.get_object(Bucket=BUCKET, Key=f"jobs/{FINAL}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return json.loads(tar.extractfile("evaluation.json").read())


@pytest.fixture(scope="module")
def reported(pipeline, tmp_path_factory):
    """``report JOB`` of the final job, as the CLI collects it (this writes and uploads the card)."""
    sm, s3, state, _, _ = pipeline
    out = tmp_path_factory.mktemp("report")
    return cli.collect_report(sm, s3, FINAL, out, state=state), out


def test_report_shows_per_class_table_pictures_and_abstention(pipeline, reported):
    _, s3, _, _, _ = pipeline
    report = reported[0].training
    expected = evaluation_in_s3(s3)
    assert report.evaluation is not None and report.evaluation.data == expected
    text = job_report.format_job(report)
    # One table row per class, with the file's precision, recall, F1 and support.
    for row in expected["per_class"]:
        line = f"    {row['class']:<5}  {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}"
        assert line in text, line
    assert f"macro-F1 {expected['macro_f1']:.4f}" in text
    assert f"always {expected['majority_baseline']['class']}" in text
    share = expected["abstention"]["test"]["abstained_share"]
    assert f"test: {share:.3f} of images abstained" in text
    assert (
        f"ECE {expected['calibration']['ece_before']:.3f} -> {expected['calibration']['ece_after']:.3f}"
        in text
    )
    # The three pictures, real PNGs; the mistakes' images came from the job's test channel.
    pictures = report.evaluation.pictures
    assert set(pictures) == set(job_evaluation.PICTURES)
    for path in pictures.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 300
    mistakes = expected["worst_mistakes"]
    assert mistakes and len(report.evaluation.mistake_images) == len(mistakes)
    for mistake, image in zip(mistakes, report.evaluation.mistake_images):
        assert (
            image is not None
            and image.read_bytes()
            == s3.get_object(Bucket=BUCKET, Key=f"datasets/{DATASET}/test/{mistake['file']}")["Body"].read()
        )
    assert not [n for n in report.notes if "evaluation" in n or "mistake" in n], report.notes


def test_report_json_has_the_numbers_and_the_card(reported, pipeline):
    found, _ = reported
    _, _, _, decision, _ = pipeline
    data = json.loads(json.dumps(cli.report_data(found), default=str))
    evaluation = data["training"]["evaluation"]
    assert evaluation["per_class"] == found.training.evaluation.data["per_class"]
    assert evaluation["confusion_matrix"] == found.training.evaluation.data["confusion_matrix"]
    assert evaluation["abstention"]["test"]["abstained_share"] >= 0
    assert set(evaluation["pictures"]) == set(job_evaluation.PICTURES)
    card = data["training"]["model_card"]
    assert card["s3_uri"] == f"s3://{BUCKET}/jobs/{FINAL}/output/{model_card.MODEL_CARD_FILE}"
    assert card["dataset"] == DATASET and card["version"] == VERSION
    assert card["gate"]["decision"] == ("deployed" if decision.deploy else "rejected")
    assert card["class_counts"]["test"] == {r["class"]: r["support"] for r in evaluation["per_class"]}


#: Injected into a copy of the card (the card itself has no script): after load, each image's
#: naturalWidth and every resource the page fetched, written into the DOM for --dump-dom.
PROBE = """<script>window.addEventListener('load', function () {
  document.querySelectorAll('img').forEach(function (i) { i.setAttribute('data-natural-width', i.naturalWidth); });
  var fetched = performance.getEntriesByType('resource').map(function (r) { return r.name; });
  document.body.setAttribute('data-fetched', JSON.stringify(fetched));
  document.body.setAttribute('data-probed', 'yes');
});</script></body>"""


def test_model_card_renders_in_chromium_with_every_part_and_fetches_nothing(pipeline, reported, tmp_path):
    from headless_browser import render

    sm, s3, _, decision, _ = pipeline
    # The card as uploaded to the job's output, not the local copy.
    page = s3.get_object(Bucket=BUCKET, Key=f"jobs/{FINAL}/output/{model_card.MODEL_CARD_FILE}")[
        "Body"
    ].read()
    card = page.decode("utf-8")
    assert card == Path(reported[0].training.model_card["path"]).read_text(encoding="utf-8")
    # Self-contained: no script, no stylesheet link, no URL but data: (the text may name s3:// objects).
    assert "<script" not in card and "<link" not in card and "url(" not in card
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", card)
    expected = evaluation_in_s3(s3)
    probed = tmp_path / "probed.html"
    probed.write_text(card.replace("</body>", PROBE), encoding="utf-8")
    rendered = render(probed, tmp_path / "model_card.png")
    dom = rendered.dom
    assert f"<title>Model card: {FINAL}</title>" in dom and 'data-probed="yes"' in dom
    for section_id, _ in model_card.SECTIONS:
        assert f'<section id="{section_id}">' in dom
    rows = re.findall(r'<tr data-class="([^"]*)"', dom)
    assert rows == expected["classes"]
    widths = re.findall(r'data-natural-width="(\d+)"', dom)
    assert len(widths) == 4 and all(int(w) > 0 for w in widths), (
        widths
    )  # loss, confusion, reliability, mistakes
    assert 'data-fetched="[]"' in dom
    assert f'data-decision="{"deployed" if decision.deploy else "rejected"}"' in dom
    for trial in sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=TUNING)[
        "TrainingJobSummaries"
    ]:
        assert trial["TrainingJobName"] in dom
    assert f"version <b>{VERSION}</b>" in dom
    assert rendered.ink > 0.05
    print(f"model card screenshot: {rendered.screenshot}")


def test_a_rejected_model_says_why_on_its_card(pipeline, reported, tmp_path):
    sm, s3, _, _, _ = pipeline
    from chalicelib.state import TABLE_DEFINITIONS

    dynamodb = boto_dynamodb(s3)
    dynamodb.create_table(TableName="card-rejected", **TABLE_DEFINITIONS["state_table"])
    state = card_facts.state_store(dynamodb, "card-rejected")
    state.record_job(
        FINAL,
        stage="training",
        dataset=DATASET,
        version=VERSION,
        status="Completed",
        reason="not deployed: test_accuracy 0.4000 does not beat the floor 0.5000",
    )
    report = copy.deepcopy(reported[0].training)  # the module's report stays as the CLI left it
    card = model_card.write_model_card(sm, s3, report, tmp_path, state=state, upload=False)
    assert card is not None and card.s3_uri is None
    assert 'data-decision="rejected"' in card.html
    assert "rejected: test_accuracy 0.4000 does not beat the floor 0.5000" in card.html
    assert report.model_card["gate"]["decision"] == "rejected"


def boto_dynamodb(s3):
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url=s3.meta.endpoint_url,
        region_name=s3.meta.region_name,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_a_job_without_evaluation_json_gets_a_note_and_still_a_card(moto_stack, tmp_path):
    """An older job: model_meta.json only. The report says so once; the card says what it lacks."""
    from test_job_report import FakeSageMaker, described, meta, put_job  # type: ignore[import-not-found]

    s3, name, prefix = moto_stack.client("s3"), "job-old-card", "t-old-card"
    put_job(s3, name, prefix, {"model_meta.json": meta()}, {"profiler/summary.json": b"{}"})
    sm = FakeSageMaker(described(name, prefix, {"test_accuracy": 0.7}))
    report = job_report.job_report(sm, s3, name, tmp_path)
    assert report.evaluation is None
    assert sum(job_evaluation.EVALUATION_FILE in n for n in report.notes) == 1
    card = model_card.write_model_card(sm, s3, report, tmp_path, state=None)
    assert card is not None and "no per-class figures" in card.html and "test_accuracy" in card.html
    assert 'data-decision="unknown"' in card.html
    assert cli.report_data(cli.Report(job=name, training=report))["training"]["evaluation"] is None


def test_malformed_evaluation_parts_cost_only_those_parts_and_names_are_escaped(moto_stack, tmp_path):
    from test_job_report import FakeSageMaker, described, meta, put_job  # type: ignore[import-not-found]

    s3, name, prefix = moto_stack.client("s3"), "job-bad-eval", "t-bad-eval"
    evaluation = {
        "schema": 1,
        "split": "test",
        "classes": ["<b>cat</b>", "dog"],
        "num_images": 4,
        "accuracy": 0.5,
        "macro_f1": "NaN",
        "per_class": [
            {"class": "<b>cat</b>", "precision": 1, "recall": 0.5, "f1": 0.66, "support": 2},
            "junk",
        ],
        "confusion_matrix": [[1, 1], [1]],  # not square
        "calibration": {"bins": "none"},
        "worst_mistakes": [
            {"file": "../../etc/passwd", "true": "dog", "predicted": "<b>cat</b>", "probability": 0.9}
        ],
    }
    put_job(
        s3,
        name,
        prefix,
        {"model_meta.json": meta(), "evaluation.json": json.dumps(evaluation).encode()},
        None,
    )
    sm = FakeSageMaker(
        described(
            name,
            prefix,
            {},
            InputDataConfig=[
                {
                    "ChannelName": "test",
                    "DataSource": {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/{prefix}/data/test/"}},
                }
            ],
        )
    )
    report = job_report.job_report(sm, s3, name, tmp_path)
    ev = report.evaluation
    assert ev is not None and set(ev.pictures) == {"most confident mistakes"}
    assert ev.mistake_images == [None] and not (tmp_path / name / "mistakes").exists()
    notes = " | ".join(report.notes)
    assert (
        "not square" in notes and "reliability diagram not drawn" in notes and "'../../etc/passwd'" in notes
    )
    text = job_report.format_job(report)
    assert "macro-F1 -" in text
    card = model_card.write_model_card(sm, s3, report, tmp_path, upload=False)
    assert card is not None and "<b>cat</b>" not in card.html and "&lt;b&gt;cat&lt;/b&gt;" in card.html


def test_gate_facts_read_each_state_the_app_leaves(moto_stack):
    """Pending, rejected (a failed job), replaced, unknown: each from the real StateStore's records."""
    from chalicelib.state import TABLE_DEFINITIONS

    dynamodb = moto_stack.client("dynamodb")
    dynamodb.create_table(TableName="card-states", **TABLE_DEFINITIONS["state_table"])
    state = card_facts.state_store(dynamodb, "card-states")
    state.record_job("a-final", stage="training", dataset="d", version="1", status="Completed")
    assert card_facts.gate_facts(state, "a-final").decision == "pending"
    state.record_job("b-final", stage="training", dataset="d", version="1", status="Failed", reason="OOM")
    failed = card_facts.gate_facts(state, "b-final")
    assert failed.decision == "rejected" and "Failed: OOM" in failed.reason
    state.set_live_model({"model": "a-final", "training_job": "a-final"}, None)
    assert card_facts.gate_facts(state, "a-final").decision == "deployed"
    state.set_live_model({"model": "c-final", "training_job": "c-final"}, "a-final")
    replaced = card_facts.gate_facts(state, "a-final")
    assert replaced.decision == "replaced" and "c-final" in replaced.reason
    assert card_facts.gate_facts(state, "nobody").decision == "unknown"
    missing = card_facts.gate_facts(card_facts.state_store(dynamodb, "no-such-table"), "a-final")
    assert missing.decision == "unknown" and "could not be read" in missing.reason


def test_files_the_job_left_out_are_on_the_card() -> None:
    facts = card_facts.DatasetFacts("photos", "v1", {"train": {"cat": 31, "dog": 30}}, "objects in each channel's S3 prefix")
    html = model_card._dataset_section(facts, {"train": 2, "valid": 1})
    assert "left out: 2 in train, 1 in valid" in html
    assert "left out" not in model_card._dataset_section(facts, {})
