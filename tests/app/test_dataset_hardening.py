"""Issue 15, items 4 and 13: a few unusable files are skipped and listed; one damaged pending item blocks nothing.

Pure rules first (sniffing bytes, the bad-file share, empty folders, zips),
then the handlers under moto: the issue's 171 + 3 data set, the bounded
number of GETs, and the quiet check with a damaged upload record.
"""

from __future__ import annotations

import io
import random

import boto3
import pytest
from app_helpers import load_event
from chalicelib import uploads
from chalicelib.datasets import (
    HEAD_BYTES,
    TAIL_BYTES,
    ObjectRef,
    sniff_problem,
    sniff_sample,
    validate_layout,
)
from chalicelib.state import StateStore
from PIL import Image

BUCKET = "breedline-data"
DATASET = "dog-breeds"
OPTIONS = {"data_prefix": "datasets/", "marker": "_READY", "image_extensions": (".jpg", ".jpeg", ".png"),
           "min_images_per_class": 2}


def image_bytes(fmt: str, size: int = 64) -> bytes:
    """A real, decodable image of noise (noise does not compress: the file is a few kB)."""
    rng = random.Random(size)
    pixels = bytes(rng.randrange(256) for _ in range(size * size * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(out, format=fmt)
    return out.getvalue()


def ends(data: bytes) -> tuple[bytes, bytes, int]:
    """What settling reads of an object: its first and last bytes, and the listing's size."""
    return data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data)


def listing(per_class: int = 19, classes=("beagle", "corgi", "husky")) -> list[ObjectRef]:
    return [ObjectRef(f"datasets/dogs/{split}/{cls}/{i}.jpg", 1000 + i, f'"{split}{cls}{i}"')
            for split in ("train", "valid", "test") for cls in classes for i in range(per_class)]


def check(objects, **kw):
    return validate_layout("dogs", objects, **{**OPTIONS, **kw})


# -- sniffing the first and last bytes ---------------------------------------------------------------
def test_sniff_accepts_real_images_and_finds_text_and_truncation():
    jpeg, png = image_bytes("JPEG"), image_bytes("PNG")
    assert sniff_problem(*ends(jpeg)) is None
    assert sniff_problem(*ends(png)) is None
    assert sniff_problem(*ends(image_bytes("GIF"))) is None  # a GIF named .jpg still decodes in train.py
    assert "truncated JPEG" in sniff_problem(*ends(jpeg[: len(jpeg) // 2]))
    assert "truncated PNG" in sniff_problem(*ends(png[: len(png) // 2]))
    assert sniff_problem(*ends(b"hello, this is a text file\n")).startswith("not an image (starts with 68 65")
    assert sniff_problem(b"", b"") == "not an image (starts with nothing)"
    assert sniff_problem(*ends(jpeg[:200])) == "truncated JPEG (ends before its image data)"


def test_sniff_passes_data_appended_after_a_jpeg_and_finds_short_webp_and_bmp():
    big = image_bytes("JPEG", size=160)  # read with two ranged GETs, not whole
    assert len(big) > HEAD_BYTES + TAIL_BYTES
    rng = random.Random(1)
    trailer = bytes(rng.randrange(256) for _ in range(20_000))  # e.g. a Motion Photo's video after the image
    assert sniff_problem(*ends(big + trailer)) is None
    assert sniff_problem(*ends(big + b"\x00" * 8192)) is None  # zero padding
    assert sniff_problem(*ends(big[: len(big) * 2 // 3])) == "truncated JPEG (no end-of-image marker)"
    webp, bmp = image_bytes("WEBP"), image_bytes("BMP")
    assert sniff_problem(*ends(webp)) is None and sniff_problem(*ends(bmp)) is None
    assert sniff_problem(*ends(webp[:-10])).startswith("truncated WEBP")
    assert sniff_problem(*ends(bmp[:-10])) == f"truncated BMP ({len(bmp) - 10} of {len(bmp)} bytes)"


# -- the bad-file share -------------------------------------------------------------------------------
def test_three_bad_files_of_174_are_skipped_and_listed_not_rejected():
    good = listing()  # 171 images
    bad = [ObjectRef("datasets/dogs/train/beagle/empty.jpg", 0, '"e"'),
           ObjectRef("datasets/dogs/train/corgi/notes.jpg", 27, '"t"'),
           ObjectRef("datasets/dogs/valid/husky/cut.jpg", 900, '"c"')]
    why = {"datasets/dogs/train/corgi/notes.jpg": "not an image", "datasets/dogs/valid/husky/cut.jpg": "truncated JPEG"}
    report = check(good + bad, max_bad_share=0.05, unreadable=why, sniffed=174)
    assert report.ok, report.reasons
    assert report.image_count == 171 and report.skipped_count == 3
    assert dict(report.skipped) == {"train/beagle/empty.jpg": "empty (0 bytes)",
                                    "train/corgi/notes.jpg": "not an image", "valid/husky/cut.jpg": "truncated JPEG"}
    assert report.counts["train"] == {"beagle": 19, "corgi": 19, "husky": 19}
    assert report.version == check(good).version  # skipped files are not part of the version
    # the strict pure default (0) and a share above the setting both reject, naming the kinds
    strict = check(good + bad, unreadable=why, sniffed=174)
    assert not strict.ok and any("image files are empty" in r for r in strict.reasons)
    many = [ObjectRef(f"datasets/dogs/train/beagle/{i}.txt", 5, '"x"') for i in range(10)]
    over = check(good + many, max_bad_share=0.05)
    assert over.reasons[0].startswith("5.5% of the 181 files are unusable (10 found); at most 5.0% may be skipped")
    assert any(r.startswith("10 files are not images") for r in over.reasons)


def test_sampled_unreadable_files_are_extrapolated_to_the_share():
    good = listing()
    why = {good[0].key: "truncated JPEG", good[1].key: "not an image"}
    # 2 bad of 20 sampled: about 10% of all 171 images, over 5% although only 2 were seen
    assert not check(good, max_bad_share=0.05, unreadable=why, sniffed=20).ok
    assert check(good, max_bad_share=0.05, unreadable=why, sniffed=171).ok


def test_a_class_below_its_minimum_after_skipping_rejects():
    good = listing(per_class=2)
    why = {"datasets/dogs/valid/corgi/0.jpg": "truncated JPEG"}
    report = check(good, max_bad_share=0.5, unreadable=why, sniffed=18)
    assert not report.ok
    assert any("classes have fewer than 2 images once 1 unusable files are skipped: corgi" in r for r in report.reasons)
    starved = {"datasets/dogs/valid/corgi/0.jpg": "x", "datasets/dogs/valid/corgi/1.jpg": "y"}
    report = check(good, max_bad_share=0.5, unreadable=starved, sniffed=18)
    assert any("classes corgi have no usable images once unreadable files are skipped" in r for r in report.reasons)


def test_empty_class_folder_warns_and_zip_hints_unzip_first():
    placeholder = ObjectRef("datasets/dogs/valid/poodle/", 0, '"d"')
    hidden = ObjectRef("datasets/dogs/train/.Trash/", 0, '"d"')
    report = check(listing() + [placeholder, hidden], max_bad_share=0.05)
    assert report.ok and report.warnings == ("class folder valid/poodle/ is empty",)
    zipped = check([ObjectRef("datasets/dogs/dogs.zip", 10_000_000, '"z"')], max_bad_share=0.05)
    assert not zipped.ok
    assert any("dogs.zip is a zip archive: unzip it first" in r for r in zipped.reasons)
    inside = check(listing() + [ObjectRef("datasets/dogs/train/beagle/more.zip", 500, '"z"')], max_bad_share=0.05)
    assert inside.ok and any("unzip it first" in w for w in inside.warnings)


def test_sniff_sample_is_bounded_deterministic_and_only_usable_images():
    objects = listing() + [ObjectRef("datasets/dogs/train/beagle/empty.jpg", 0, '"e"'),
                           ObjectRef("datasets/dogs/train/beagle/a.txt", 4, '"t"')]
    sample = sniff_sample(objects, dataset="dogs", limit=20, **{k: OPTIONS[k] for k in ("data_prefix", "marker", "image_extensions")})
    again = sniff_sample(list(reversed(objects)), dataset="dogs", limit=20, data_prefix="datasets/", marker="_READY",
                         image_extensions=(".jpg",))
    assert len(sample) == 20 and sample == again
    assert all(o.size > 0 and o.key.endswith(".jpg") for o in sample)
    assert len({o.key.split("/")[3] for o in sample}) == 3  # spread over the classes
    assert sniff_sample(objects, dataset="dogs", limit=0, data_prefix="datasets/", marker="_READY", image_extensions=(".jpg",)) == []


# -- handlers under moto -------------------------------------------------------------------------------
def invoke(client, name: str, event: dict):
    return client.lambda_.invoke(name, event).payload


def run_quiet_check(client):
    return invoke(client, "check_quiet_datasets", client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]))


def state(env) -> StateStore:
    return StateStore(boto3.client("dynamodb", region_name="us-east-1"), env["BREEDLINE_STATE_TABLE"])


def test_the_issues_data_set_is_accepted_with_its_three_bad_files_listed(client, sagemaker, aws, monkeypatch):
    monkeypatch.setenv("BREEDLINE_SNIFF_MAX_OBJECTS", "1000")
    jpeg = image_bytes("JPEG")
    aws.put_dataset(DATASET, classes={"beagle": 19, "corgi": 19, "husky": 19}, extra={
        "train/beagle/truncated.jpg": jpeg[: len(jpeg) // 2],
        "train/corgi/text.jpg": b"not an image at all, just text\n" * 4,
        "valid/husky/empty.jpg": b"",
    })
    result = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert result["outcome"] == "started" and result["skipped_files"] == 3
    (alert,) = aws.alerts()
    assert alert["subject"] == f"Breedline: data set {DATASET} accepted, 3 files skipped"
    message = alert["message"]
    assert message["skipped"] == ["train/beagle/truncated.jpg: truncated JPEG (no end-of-image marker)",
                                  "train/corgi/text.jpg: not an image (starts with 6e 6f 74 20 61 6e 20 69)",
                                  "valid/husky/empty.jpg: empty (0 bytes)"]
    assert message["counts"]["valid"] == {"beagle": 19, "corgi": 19, "husky": 19}
    assert message["images"] == 171 and len(sagemaker.requests("CreateHyperParameterTuningJob")) == 1


def test_sniffing_reads_at_most_the_configured_number_of_objects(client, sagemaker, aws, monkeypatch):
    monkeypatch.setenv("BREEDLINE_SNIFF_MAX_OBJECTS", "7")
    aws.put_dataset(DATASET, classes={"beagle": 5, "corgi": 5})
    reads: list[str] = []
    real = uploads._read_range
    monkeypatch.setattr(uploads, "_read_range", lambda s3, b, key, r: reads.append(key) or real(s3, b, key, r))
    assert invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))["outcome"] == "started"
    assert len(set(reads)) == 7 and len(reads) <= 14  # small objects are read whole: one GET each


def test_a_damaged_pending_item_is_alerted_once_and_blocks_no_other_data_set(client, sagemaker, aws, env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_QUIET_PERIOD_SECONDS", "1")
    store = state(env)
    keys = aws.put_dataset(DATASET)
    store.record_upload(DATASET, keys[0], 1_000_000_000)
    store.record_upload("broken", "datasets/broken/train/a/1.jpg", 1_000_000_000)
    store._update("DATASET#broken", "UPLOADS", "SET last_upload = :t", {":t": "yesterday"})
    results = run_quiet_check(client)
    by_dataset = {r["dataset"]: r for r in results}
    assert by_dataset[DATASET]["outcome"] == "started"
    assert by_dataset["broken"] == {"outcome": "error", "dataset": "broken",
                                    "problem": "TypeError: last_upload is str 'yesterday', not a number of seconds"}
    (alert,) = aws.alerts()
    assert alert["subject"] == "Breedline: data set broken cannot be settled"
    assert run_quiet_check(client) == [by_dataset["broken"]]  # skipped again, logged, but not alerted again
    assert aws.alerts() == []
    # the next upload repairs the record; the data set then settles (and is rejected: it has one image)
    assert store.record_upload("broken", "datasets/broken/train/a/2.jpg", 1_000_000_100)
    (settled,) = run_quiet_check(client)
    assert settled["dataset"] == "broken" and settled["outcome"] == "rejected"
    assert "problem" not in store.uploads("broken")


def test_a_failing_settlement_is_alerted_once_per_problem(client, sagemaker, aws, env, monkeypatch):
    monkeypatch.setenv("BREEDLINE_QUIET_PERIOD_SECONDS", "1")
    state(env).record_upload(DATASET, f"datasets/{DATASET}/train/a/1.jpg", 1_000_000_000)

    def boom(*args, **kwargs):
        raise RuntimeError("listing failed")

    monkeypatch.setattr(uploads, "list_dataset", boom)
    assert run_quiet_check(client)[0]["problem"] == "RuntimeError: listing failed"
    assert run_quiet_check(client)[0]["outcome"] == "error"
    assert [a["subject"] for a in aws.alerts()] == [f"Breedline: data set {DATASET} cannot be settled"]


@pytest.mark.parametrize("raw", ["0.2", "-1"])
def test_bad_file_share_setting_is_a_fraction(raw, monkeypatch):
    from chalicelib.config import Settings

    monkeypatch.setenv("BREEDLINE_MAX_BAD_FILE_SHARE", raw)
    if raw == "-1":
        with pytest.raises(ValueError, match="BREEDLINE_MAX_BAD_FILE_SHARE='-1' must be a share between 0 and 1"):
            Settings.from_env()
    else:
        assert Settings.from_env().max_bad_file_share == 0.2


def test_an_unchanged_listing_is_not_read_again(client, sagemaker, aws, monkeypatch):
    aws.put_dataset(DATASET, extra={"train/beagle/text.jpg": b"plain text"})
    reads: list[str] = []
    real = uploads._read_range
    monkeypatch.setattr(uploads, "_read_range", lambda s3, b, key, r: reads.append(key) or real(s3, b, key, r))
    monkeypatch.setenv("BREEDLINE_MAX_BAD_FILE_SHARE", "0.1")
    first = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert first["outcome"] == "started" and first["skipped_files"] == 1 and len(reads) == 28
    again = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))  # a duplicate marker event
    assert again == first and len(reads) == 28
    aws.s3.put_object(Bucket=BUCKET, Key=f"datasets/{DATASET}/train/corgi/new.jpg", Body=b"\xff\xd8\xffnew\xff\xd9")
    newer = invoke(client, "on_dataset_upload", load_event("s3_ready_marker.json"))
    assert newer["version"] != first["version"] and newer["skipped_files"] == 1 and len(reads) == 28 + 29
