"""Batch predictions, the pure parts: keys, listing, manifest, name, request, join and summary (no AWS)."""

from __future__ import annotations

import json

import pytest
from app_helpers import validate_request
from chalicelib import naming
from chalicelib import sagemaker_requests as build
from chalicelib.batch import (
    MAX_PAYLOAD_MB,
    MISSING_OUTPUT,
    batch_job_of_key,
    is_batch_marker,
    list_batch,
    manifest,
)
from chalicelib.batch_jobs import batch_tags
from chalicelib.batch_results import join, jsonl, summarize
from chalicelib.config import Settings
from chalicelib.datasets import ObjectRef

EXTENSIONS = (".jpg", ".jpeg", ".png")
KMS = "arn:aws:kms:us-east-1:123456789012:key/0b8a3f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def refs(*pairs: tuple[str, int]) -> list[ObjectRef]:
    return [ObjectRef(key=key, size=size, etag=f'"{key}"') for key, size in pairs]


def test_keys_under_a_batch_folder_name_their_batch_and_only_its_marker_starts_it():
    assert batch_job_of_key("batch/cats/a/b/1.jpg") == "cats"
    assert batch_job_of_key("batch/cats/") is None
    assert batch_job_of_key("batch/readme.txt") is None and batch_job_of_key("batch-results/cats/x") is None
    assert batch_job_of_key("datasets/cats/train/a/1.jpg") is None
    assert is_batch_marker("batch/cats/_READY", "_READY")
    assert not is_batch_marker("batch/cats/sub/_READY", "_READY")


def test_listing_keeps_images_at_any_depth_and_reports_the_rest():
    listing = list_batch("cats", refs(
        ("batch/cats/_READY", 0), ("batch/cats/", 0), ("batch/cats/z.JPG", 10), ("batch/cats/a/b/c.png", 5),
        ("batch/cats/notes.txt", 3), ("batch/cats/empty.jpg", 0), ("batch/cats/.DS_Store", 4),
        ("batch/cats/huge.jpeg", MAX_PAYLOAD_MB * 1024 * 1024 + 1), ("batch/other/x.jpg", 9),
    ), "_READY", EXTENSIONS)
    assert listing.images == ("a/b/c.png", "z.JPG")
    assert [file for file, _ in listing.skipped] == ["empty.jpg", "huge.jpeg", "notes.txt"]
    assert "MaxPayloadInMB" in dict(listing.skipped)["huge.jpeg"] and listing.problem is None
    assert manifest("bkt", listing) == [{"prefix": "s3://bkt/batch/cats/"}, "a/b/c.png", "z.JPG"]


def test_the_listing_digest_follows_the_images_not_the_order():
    a = list_batch("cats", refs(("batch/cats/1.jpg", 1), ("batch/cats/2.jpg", 2)), "_READY", EXTENSIONS)
    b = list_batch("cats", refs(("batch/cats/2.jpg", 2), ("batch/cats/1.jpg", 1)), "_READY", EXTENSIONS)
    c = list_batch("cats", refs(("batch/cats/1.jpg", 1), ("batch/cats/2.jpg", 3)), "_READY", EXTENSIONS)
    assert a.digest == b.digest != c.digest


def test_a_batch_without_images_or_with_a_bad_name_has_a_problem():
    assert "no image" in str(list_batch("cats", refs(("batch/cats/a.txt", 1)), "_READY", EXTENSIONS).problem)
    assert "batch name" in str(list_batch("c@ts", refs(("batch/c@ts/a.jpg", 1)), "_READY", EXTENSIONS).problem)


def test_transform_job_names_are_valid_short_and_change_with_the_marker_and_images():
    long = naming.transform_job_name("breedline", "Shelter_Intake " * 10, "etag", "digest")
    assert len(long) <= 63 and naming.NAME_PATTERN.match(long) and long.startswith("breedline-batch-shelter-intake")
    same = naming.transform_job_name("breedline", "cats", "etag", "digest")
    assert same == naming.transform_job_name("breedline", "cats", "etag", "digest")
    assert same != naming.transform_job_name("breedline", "cats", "etag2", "digest")
    assert same != naming.transform_job_name("breedline", "cats", "etag", "digest2")


@pytest.mark.parametrize("extra", [{}, {"BREEDLINE_KMS_KEY_ID": KMS, "BREEDLINE_BATCH_INSTANCE_COUNT": "3",
                                       "BREEDLINE_BATCH_INSTANCE_TYPE": "ml.c5.xlarge",
                                       "BREEDLINE_BATCH_MAX_CONCURRENT_TRANSFORMS": "4"}], ids=["defaults", "kms_fleet"])
def test_the_transform_request_is_what_sagemaker_accepts_and_what_the_contract_says(extra):
    s = Settings.from_env(extra)
    name = naming.transform_job_name(s.name_prefix, "cats", "etag", "digest")
    request = build.create_transform_job(s, name=name, batch_job="cats", model_name="breedline-x-final",
                                         tags=batch_tags(s, "cats"))
    validate_request("sagemaker", "CreateTransformJob", request)
    validate_request("sagemaker", "DescribeTransformJob", build.describe_transform_job(name))
    folder = f"s3://{s.bucket}/batch-results/cats/{name}/"
    assert request["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": folder + "manifest.json"}},
        "ContentType": "application/x-image", "SplitType": "None", "CompressionType": "None",
    }
    assert request["TransformOutput"]["S3OutputPath"] == folder + "output/"
    assert request["TransformOutput"]["Accept"] == "application/json" and request["TransformOutput"]["AssembleWith"] == "None"
    assert (request["BatchStrategy"], request["MaxPayloadInMB"]) == ("SingleRecord", 6)
    assert request["Environment"] == {"BREEDLINE_BATCH_ERRORS": "lines"}
    assert request["ModelClientConfig"]["InvocationsMaxRetries"] == 0
    assert request["TransformResources"]["InstanceType"] == s.batch_instance_type
    assert request["TransformResources"]["InstanceCount"] == s.batch_instance_count
    assert request["MaxConcurrentTransforms"] == s.batch_max_concurrent_transforms
    assert ("KmsKeyId" in request["TransformOutput"]) == bool(extra)
    assert {t["Key"]: t["Value"] for t in request["Tags"]}["breedline:batch-job"] == "cats"
    assert "RoleArn" not in request  # the job runs as the model's role: no iam:PassRole


def test_join_gives_every_manifest_image_one_line_sorted_by_file():
    good = {"label": "beagle", "probability": 0.9, "top_k": [{"label": "beagle", "probability": 0.9}], "abstained": False}
    unsure = {"label": None, "probability": None, "top_k": [{"label": "corgi", "probability": 0.4}],
              "abstained": True, "reason": "low_confidence"}
    error = {"error": {"code": "not_an_image", "message": "cannot decode", "status_code": 400}}
    outputs = {"b.jpg": json.dumps(good).encode(), "a/c.jpg": json.dumps(unsure).encode(),
               "d.jpg": json.dumps(error).encode(), "e.jpg": b"<html>oops</html>"}
    lines = join(["e.jpg", "d.jpg", "b.jpg", "a/c.jpg", "missing.jpg"], outputs)
    assert [line["file"] for line in lines] == ["a/c.jpg", "b.jpg", "d.jpg", "e.jpg", "missing.jpg"]
    assert lines[0] == {"file": "a/c.jpg", **unsure}
    assert lines[1] == {"file": "b.jpg", **good, "reason": None}
    assert lines[2] == {"file": "d.jpg", **error}
    assert lines[3]["error"]["code"] == "bad_output"
    assert lines[4]["error"]["code"] == MISSING_OUTPUT
    assert [json.loads(row) for row in jsonl(lines).decode().splitlines()] == lines


def test_summary_counts_predicted_abstained_failed_and_labels():
    lines = join(["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"], {
        "1.jpg": b'{"label": "corgi", "probability": 0.8, "top_k": [], "abstained": false}',
        "2.jpg": b'{"label": "beagle", "probability": 0.7, "top_k": [], "abstained": false}',
        "3.jpg": b'{"label": "corgi", "probability": 0.6, "top_k": [], "abstained": false}',
        "4.jpg": b'{"label": null, "probability": null, "top_k": [], "abstained": true, "reason": "ood"}',
    })
    summary = summarize(job="cats", transform_job="t", status="Completed", lines=lines, skipped=2, results_uri="s3://b/r")
    assert (summary["total"], summary["predicted"], summary["abstained"], summary["failed"]) == (5, 3, 1, 1)
    assert summary["counts"] == {"corgi": 2, "beagle": 1} and summary["skipped"] == 2
    assert summary["errors"] == {MISSING_OUTPUT: 1} and "failure_reason" not in summary


def test_an_output_under_the_input_prefix_still_belongs_to_its_image():
    body = b'{"label": "pug", "probability": 0.5, "top_k": [], "abstained": false}'
    (line,) = join(["a/1.jpg"], {"batch/cats/a/1.jpg": body}, input_prefix="batch/cats/")
    assert line["label"] == "pug"
    (line,) = join(["a/1.jpg"], {"batch/cats/a/1.jpg": body})
    assert line["error"]["code"] == MISSING_OUTPUT
