"""Pure decisions: data set layout, readiness, names, event relevance, tuned values, gate, predict checks."""

from __future__ import annotations

import json

import pytest

from chalicelib import naming
from chalicelib.datasets import ObjectRef, dataset_of_key, is_marker, quiet_period_elapsed, validate_layout
from chalicelib.decisions import (
    Relevance,
    classify_training_job,
    classify_tuning_job,
    final_metric,
    tags_to_dict,
)
from chalicelib.predict import (
    ALL_ERRORS,
    PredictError,
    map_invoke_error,
    shape_prediction,
    validate_image_request,
)
from contract import sniff_image as sniff
from contract import unquote_hyperparameter, unquote_hyperparameters

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def listing(name: str, classes=("a", "b"), per_class=2, splits=("train", "valid", "test"), extra=()) -> list[ObjectRef]:
    objects = [
        ObjectRef(f"datasets/{name}/{split}/{cls}/{i}.jpg", 100 + i, f'"etag{split}{cls}{i}"')
        for split in splits
        for cls in classes
        for i in range(per_class)
    ]
    return objects + [ObjectRef(k, 10, '"x"') for k in extra]


def check(name: str, objects, **kw):
    options = dict(data_prefix="datasets/", marker="_READY", image_extensions=(".jpg", ".jpeg", ".png"), min_images_per_class=2)
    options.update(kw)
    return validate_layout(name, objects, **options)


# -- keys and layout -----------------------------------------------------------
def test_dataset_of_key():
    assert dataset_of_key("datasets/dogs/train/a/1.jpg", "datasets/") == "dogs"
    assert dataset_of_key("datasets/dogs/_READY", "datasets/") == "dogs"
    assert dataset_of_key("datasets/readme.txt", "datasets/") is None
    assert dataset_of_key("datasets/dogs/", "datasets/") is None
    assert dataset_of_key("code/sourcedir.tar.gz", "datasets/") is None
    assert is_marker("datasets/dogs/_READY", "datasets/", "_READY")
    assert not is_marker("datasets/dogs/train/_READY", "datasets/", "_READY")


def test_good_layout_accepted_with_sorted_classes():
    report = check("dogs", listing("dogs", classes=("corgi", "beagle")) + [ObjectRef("datasets/dogs/_READY", 0, "")])
    assert report.ok, report.reasons
    assert report.classes == ("beagle", "corgi")
    assert report.image_count == 12
    assert report.counts["valid"] == {"corgi": 2, "beagle": 2}


def test_ignores_hidden_files_and_folder_placeholders():
    extra = ("datasets/dogs/train/a/.DS_Store", "datasets/dogs/train/", "datasets/dogs/.hidden/x.txt")
    assert check("dogs", listing("dogs", extra=extra)).ok


@pytest.mark.parametrize(
    "objects, fragment",
    [
        (listing("dogs", splits=("train", "valid")), "split 'test' has no images"),
        (listing("dogs") + [ObjectRef("datasets/dogs/test/c/1.jpg", 5, "e"), ObjectRef("datasets/dogs/test/c/2.jpg", 5, "f")], "lacks classes c"),
        (listing("dogs", per_class=1), "fewer than 2 images"),
        (listing("dogs", extra=("datasets/dogs/train/a/notes.txt",)), "not images"),
        (listing("dogs", extra=("datasets/dogs/train/x.jpg",)), "not at <split>/<class>/<file>"),
        (listing("dogs", extra=("datasets/dogs/validation/a/1.jpg",)), "unknown split folders"),
        (listing("dogs", classes=("only",)), "only one class"),
        (listing("dogs") + [ObjectRef("datasets/dogs/train/a/empty.jpg", 0, "e")], "empty"),
        ([], "split 'train' has no images"),
    ],
)
def test_bad_layouts_rejected_with_a_reason(objects, fragment):
    report = check("dogs", objects)
    assert not report.ok
    assert any(fragment in reason for reason in report.reasons), report.reasons


def test_invalid_name_rejected():
    report = check("dog breeds!", listing("dog breeds!"))
    assert any("data set name" in r for r in report.reasons)


def test_min_images_configurable():
    assert not check("dogs", listing("dogs", per_class=2), min_images_per_class=3).ok
    assert check("dogs", listing("dogs", per_class=3), min_images_per_class=3).ok


def test_reasons_quote_only_a_few_examples():
    extra = tuple(f"datasets/dogs/train/a/{i}.txt" for i in range(50))
    (reason,) = [r for r in check("dogs", listing("dogs", extra=extra)).reasons if "not images" in r]
    assert reason.startswith("50 files") and "and 47 more" in reason


def test_version_is_content_digest_independent_of_order():
    objects = listing("dogs")
    a = check("dogs", objects).version
    assert check("dogs", list(reversed(objects))).version == a
    assert check("dogs", objects + objects[:0] + [ObjectRef("datasets/dogs/_READY", 0, "z")]).version == a
    changed = [ObjectRef(o.key, o.size, '"other"') if i == 0 else o for i, o in enumerate(objects)]
    assert check("dogs", changed).version != a
    assert check("cats", listing("cats")).version != check("dogs", listing("dogs")).version


def test_quiet_period():
    assert quiet_period_elapsed(1000, 1300, 300)
    assert not quiet_period_elapsed(1000, 1299, 300)
    assert not quiet_period_elapsed(0, 10**9, 0)  # 0 disables the debounce


# -- names ---------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["dogs", "dog_breeds", "a" * 128, "Stanford.Dogs-120_v2", "x"])
def test_names_fit_sagemaker_limits(dataset):
    tuning = naming.tuning_job_name("breedline", dataset, "0123456789abcdef")
    assert len(tuning) <= 32 and naming.NAME_PATTERN.match(tuning)
    final = naming.training_job_name(tuning)
    assert len(final) <= 63 and naming.NAME_PATTERN.match(final)
    assert len(naming.endpoint_config_name(naming.model_name(final), True)) <= 63


def test_names_are_deterministic_and_distinct_per_version():
    a = naming.tuning_job_name("breedline", "dogs", "v1")
    assert a == naming.tuning_job_name("breedline", "dogs", "v1")
    assert a != naming.tuning_job_name("breedline", "dogs", "v2")
    # truncated slugs still differ through the hash of the full name
    long_a, long_b = "x" * 40 + "a", "x" * 40 + "b"
    assert naming.tuning_job_name("breedline", long_a, "v") != naming.tuning_job_name("breedline", long_b, "v")


def test_bad_prefix_refused():
    for prefix in ("Breedline", "a" * 21, "bad_prefix", ""):
        with pytest.raises(ValueError):
            naming.tuning_job_name(prefix, "dogs", "v")


def test_final_job_name_never_looks_like_a_trial():
    tuning = naming.tuning_job_name("breedline", "dogs", "v")
    final = naming.training_job_name(tuning)
    assert classify_training_job(final, {}, "breedline") is Relevance.LOOKUP
    assert classify_training_job(f"{tuning}-001-0a1b2c3d", {}, "breedline") is Relevance.TRIAL


# -- relevance -------------------------------------------------------------------------
OURS = {"breedline:pipeline": "breedline", "breedline:stage": "training"}
TRIAL = {"breedline:pipeline": "breedline", "breedline:stage": "tuning"}


def test_classify_training_jobs():
    assert classify_training_job("breedline-dogs-1234abcd-final", OURS, "breedline") is Relevance.OURS
    assert classify_training_job("breedline-dogs-1234abcd-002-0a1b2c3d", TRIAL, "breedline") is Relevance.TRIAL
    assert classify_training_job("breedline-dogs-1234abcd-final", TRIAL, "breedline") is Relevance.TRIAL
    assert classify_training_job("churn-xgboost-1", {"team": "x"}, "breedline") is Relevance.FOREIGN
    other_stack = {"breedline:pipeline": "breedline-prod", "breedline:stage": "training"}
    assert classify_training_job("breedline-dogs-1234abcd-final", other_stack, "breedline") is Relevance.FOREIGN
    # a job of ours named like a final job but not marked final is not deployed
    assert classify_training_job("breedline-manual-run", OURS, "breedline") is Relevance.FOREIGN
    assert classify_training_job("breedline-manual-run", {}, "breedline") is Relevance.FOREIGN


def test_classify_tuning_jobs():
    assert classify_tuning_job("breedline-dogs-1234abcd", TRIAL, "breedline") is Relevance.OURS
    assert classify_tuning_job("breedline-dogs-1234abcd", {}, "breedline") is Relevance.LOOKUP
    assert classify_tuning_job("someone-else", {}, "breedline") is Relevance.FOREIGN


def test_tags_both_shapes():
    assert tags_to_dict({"a": "1"}) == {"a": "1"}
    assert tags_to_dict([{"Key": "a", "Value": "1"}]) == {"a": "1"}
    assert tags_to_dict(None) == {}


# -- tuned values ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, expected",
    [("32", "32"), ('"32"', "32"), (json.dumps(json.dumps("32")), "32"), ("0.001", "0.001"), (' "vgg11" ', "vgg11"), ('"', '"'), (64, "64")],
)
def test_unquote_hyperparameter(raw, expected):
    assert unquote_hyperparameter(raw) == expected


def test_unquote_hyperparameters_drops_sagemaker_keys():
    tuned = {"batch_size": '"64"', "learning_rate": "0.01", "sagemaker_program": '"train.py"'}
    assert unquote_hyperparameters(tuned) == {"batch_size": "64", "learning_rate": "0.01"}


# -- quality gate ---------------------------------------------------------------------------
def test_final_metric():
    data = [{"MetricName": "valid_loss", "Value": 0.3}, {"MetricName": "test_accuracy", "Value": 0.81}]
    assert final_metric(data) == pytest.approx(0.81)
    assert final_metric([{"MetricName": "test_accuracy", "Value": float("nan")}]) is None
    assert final_metric([]) is None


# -- predict checks -------------------------------------------------------------------------
def test_sniff():
    assert sniff(JPEG) == "jpeg" and sniff(PNG) == "png" and sniff(b"GIF89a") is None


@pytest.mark.parametrize(
    "content_type, body, code",
    [
        ("text/plain", JPEG, "unsupported_media_type"),
        (None, JPEG, "unsupported_media_type"),
        ("image/gif", b"GIF89a....", "unsupported_media_type"),
        ("image/jpeg", b"", "empty_body"),
        ("image/jpeg", None, "empty_body"),
        ("image/jpeg", JPEG + b"\x00" * 2000, "payload_too_large"),
        ("image/jpeg", b"hello world", "not_an_image"),
        ("image/jpeg", PNG, "content_type_mismatch"),
        ("image/png", JPEG, "content_type_mismatch"),
    ],
)
def test_validate_image_request_errors(content_type, body, code):
    with pytest.raises(PredictError) as info:
        validate_image_request(content_type, body, 1000)
    assert info.value.code == code
    assert info.value.body() == {"code": code, "message": info.value.message}
    assert info.value.status in (400, 413, 415)


def test_validate_image_request_accepts_and_normalises():
    assert validate_image_request("Image/JPEG; charset=binary", JPEG, 1000) == "image/jpeg"
    assert validate_image_request("image/png", PNG, 1000) == "image/png"


@pytest.mark.parametrize(
    "code, message, original, expected",
    [
        ("ModelError", "x", 400, (400, "undecodable_image")),
        ("ModelError", "x", 413, (413, "payload_too_large")),
        ("ModelError", "x", 415, (415, "unsupported_media_type")),
        ("ModelError", "x", 500, (502, "model_error")),
        ("ModelError", "x", 406, (406, "not_acceptable")),
        ("ModelError", "x", 409, (400, "model_rejected_request")),
        ("ValidationError", "Endpoint breedline-classifier of account 123456789012 not found.", None, (503, "model_not_deployed")),
        ("ValidationError", "Endpoint is in Creating state", None, (503, "endpoint_not_ready")),
        ("ModelNotReadyException", "loading", None, (503, "endpoint_not_ready")),
        ("ThrottlingException", "slow down", None, (503, "endpoint_busy")),
        ("InternalFailure", "boom", None, (502, "model_error")),
    ],
)
def test_map_invoke_error(code, message, original, expected):
    error = map_invoke_error(code, message, original)
    assert (error.status, error.code) == expected


@pytest.mark.parametrize(
    "status, original_message, expected, message",
    [
        # inference.py's body through the serving toolkit: its JSON, a newline, the trace.
        (400, '{"code": "undecodable_image", "message": "could not decode the image: truncated", "status_code": 400}'
              "\nTraceback (most recent call last):\n  File ...", (400, "undecodable_image"),
         "could not decode the image: truncated"),
        (400, '{"code": "empty_body", "message": "empty request body", "status_code": 400}\nTraceback',
         (400, "empty_body"), "empty request body"),
        (413, '{"code": "payload_too_large", "message": "too many pixels", "status_code": 413}\n',
         (413, "payload_too_large"), "too many pixels"),
        # A code that is not one of the API's client codes is not passed on; the status decides.
        (415, '{"code": "internal_error", "message": "x"}\nTraceback', (415, "unsupported_media_type"),
         "The model refused the image type"),
        (400, "cannot identify image file", (400, "undecodable_image"), "The model could not decode the image"),
    ],
)
def test_model_refusals_keep_the_container_code(status, original_message, expected, message):
    error = map_invoke_error("ModelError", "Received client error", status, original_message)
    assert (error.status, error.code, error.message) == (*expected, message)
    assert "Traceback" not in json.dumps(error.body())


def test_shape_prediction():
    payload = json.dumps({"label": "corgi", "probability": 0.9, "top_k": [{"label": "corgi", "probability": 0.9}, {"label": "beagle", "probability": 0.1}]})
    shaped = shape_prediction(payload.encode(), "m1", top_k=1)
    assert shaped == {"label": "corgi", "probability": 0.9, "top_k": [{"label": "corgi", "probability": 0.9}],
                      "abstained": False, "model": "m1"}
    for bad in ({"label": "corgi", "abstained": True, "reason": "low_confidence", "top_k": []},
                {"label": None, "abstained": True, "reason": "bored", "top_k": []},
                {"label": "corgi", "probability": 0.9, "abstained": "yes", "top_k": []}):
        with pytest.raises(PredictError) as info:
            shape_prediction(json.dumps(bad).encode(), "m1", 5)
        assert info.value.code == "bad_model_response"
    with pytest.raises(PredictError) as info:
        shape_prediction(b"<html>oops</html>", "m1", 5)
    assert info.value.code == "bad_model_response"


def test_error_codes_are_unique_and_never_500():
    codes = [code for _, code in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert all(status != 500 and 400 <= status < 600 for status, _ in ALL_ERRORS)


def test_serving_backends_match_the_inference_script() -> None:
    """The Lambda accepts exactly the serving backends the inference script does: both read contract's."""
    import contract

    from chalicelib import config

    assert config.SERVING_BACKENDS is contract.SERVING_BACKENDS
    assert config.Settings.from_env({}).serving_backend == "auto"
