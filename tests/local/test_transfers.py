"""The local runtime's S3 transfers: channel downloads and the demo's upload."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from breedline.build.paths import REPO_ROOT
from breedline.demo import upload_dataset
from breedline.local.standins import MotoStandIns, create_data_bucket
from breedline.local.s3_transfers import download_prefix
from local_standins import BUCKET  # type: ignore[import-not-found]


class CountingS3:
    """Wraps a boto3 S3 client: counts GETs and the most that were in flight at once."""

    def __init__(self, s3, delay: float = 0.0, after_listing=None) -> None:
        self.s3 = s3
        self.delay = delay
        self.after_listing = after_listing
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.gets: list[str] = []
        self.puts: list[str] = []

    def get_paginator(self, name):
        paginator = self.s3.get_paginator(name)
        outer = self

        class Paginator:
            def paginate(self, **kwargs):
                pages = list(paginator.paginate(**kwargs))
                if outer.after_listing is not None:
                    outer.after_listing()
                return pages

        return Paginator()

    def get_object(self, **kwargs):
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.gets.append(kwargs["Key"])
        try:
            time.sleep(self.delay)  # long enough for the pool's threads to overlap
            return self.s3.get_object(**kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1

    def put_object(self, **kwargs):
        with self.lock:
            self.puts.append(kwargs["Key"])
        return self.s3.put_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.s3, name)


@pytest.fixture
def channel(moto_stack):
    """Twelve objects in three nested folders under a fresh prefix."""
    s3 = moto_stack.client("s3")
    prefix = f"transfers/{time.monotonic_ns()}"
    files = {f"{split}/{cls}/img{i}.jpg": f"{split}-{cls}-{i}".encode() * 50
             for split in ("train", "valid") for cls in ("cat", "dog") for i in range(3)}
    for rel, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{rel}", Body=body)
    return s3, prefix, files


def test_download_prefix_fetches_every_object_in_parallel_keeping_the_layout(channel, tmp_path):
    s3, prefix, files = channel
    counting = CountingS3(s3, delay=0.05)
    count = download_prefix(counting, f"s3://{BUCKET}/{prefix}", tmp_path / "data")
    assert count == len(files)
    got = {p.relative_to(tmp_path / "data").as_posix(): p.read_bytes()
           for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert got == files  # same folders, same bytes, no leftover .part files
    assert sorted(counting.gets) == sorted(f"{prefix}/{rel}" for rel in files)  # one GET each
    assert counting.most_in_flight > 1


def test_download_prefix_cache_fetches_each_version_once(channel, tmp_path):
    s3, prefix, files = channel
    counting = CountingS3(s3)
    cache = tmp_path / "cache"
    download_prefix(counting, f"s3://{BUCKET}/{prefix}/train", tmp_path / "job1", cache=cache)
    download_prefix(counting, f"s3://{BUCKET}/{prefix}/train", tmp_path / "job2", cache=cache)
    train = {rel[len("train/"):]: body for rel, body in files.items() if rel.startswith("train/")}
    assert len(counting.gets) == len(train)
    for job in ("job1", "job2"):
        assert {p.relative_to(tmp_path / job).as_posix(): p.read_bytes()
                for p in (tmp_path / job).rglob("*") if p.is_file()} == train
    # A new version of one object (new ETag) is fetched again, and only that one.
    key = f"{prefix}/train/cat/img0.jpg"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"changed")
    download_prefix(counting, f"s3://{BUCKET}/{prefix}/train", tmp_path / "job3", cache=cache)
    assert counting.gets[len(train):] == [key]
    assert (tmp_path / "job3" / "cat" / "img0.jpg").read_bytes() == b"changed"


def test_download_prefix_fails_clearly_when_an_object_vanishes(channel, tmp_path):
    s3, prefix, _ = channel
    gone = f"{prefix}/valid/dog/img2.jpg"
    counting = CountingS3(s3, after_listing=lambda: s3.delete_object(Bucket=BUCKET, Key=gone))
    with pytest.raises(RuntimeError, match=f"cannot download s3://{BUCKET}/{gone}"):
        download_prefix(counting, f"s3://{BUCKET}/{prefix}", tmp_path / "data")
    assert not list((tmp_path / "data").rglob("*.part"))


def test_download_prefix_refuses_an_object_changed_since_the_listing(channel, tmp_path):
    s3, prefix, _ = channel
    key = f"{prefix}/train/dog/img1.jpg"
    counting = CountingS3(s3, after_listing=lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"newer"))
    with pytest.raises(RuntimeError, match=f"cannot download s3://{BUCKET}/{key}"):
        download_prefix(counting, f"s3://{BUCKET}/{prefix}", tmp_path / "data", cache=tmp_path / "cache")
    # Nothing was cached under the listed (old) ETag with the new bytes.
    assert all(p.read_bytes() != b"newer" for p in (tmp_path / "cache").glob("*"))


def test_upload_dataset_puts_every_file_then_the_marker_last(moto_stack, tmp_path):
    s3 = moto_stack.client("s3")
    data = tmp_path / "set"
    images = {f"{split}/{cls}/{i}.jpg": bytes([i]) * 100
              for split in ("train", "valid", "test") for cls in ("a", "b") for i in range(4)}
    for rel, body in images.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    (data / "train" / "a" / "notes.txt").write_text("not an image")
    name = f"up{time.monotonic_ns()}"
    counting = CountingS3(s3)
    # every file, as `aws s3 sync` sends it: the app's validation decides what counts (issue 15, item 14)
    assert upload_dataset(counting, BUCKET, data, name) == len(images) + 1
    assert counting.puts[-1] == f"datasets/{name}/_READY"
    assert sorted(counting.puts[:-1]) == sorted(f"datasets/{name}/{rel}" for rel in [*images, "train/a/notes.txt"])
    for rel, body in images.items():
        assert s3.get_object(Bucket=BUCKET, Key=f"datasets/{name}/{rel}")["Body"].read() == body


def test_moto_launcher_answers_like_moto(tmp_path):
    """The runtime's moto child (breedline.local.moto_server) serves S3 and SQS as moto does."""
    stack = MotoStandIns(in_process=False, log_path=tmp_path / "moto.log")
    try:
        s3, sqs = stack.client("s3"), stack.client("sqs")
        create_data_bucket(s3, "launcher-bucket", stack.region)
        s3.put_object(Bucket="launcher-bucket", Key="a/b.jpg", Body=b"x")
        assert s3.get_object(Bucket="launcher-bucket", Key="a/b.jpg")["Body"].read() == b"x"
        queue = sqs.create_queue(QueueName="launcher")["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody="hello")
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        assert attrs["ApproximateNumberOfMessages"] == "1"
    finally:
        stack.stop()


def test_moto_launcher_caches_give_moto_s_own_answers():
    """In a fresh interpreter (the patches are process-wide): same listing, same names, fresh lists."""
    import moto.backends
    import moto.core.utils

    words = ("ApproximateNumberOfMessages", "QueueArn", "MessageRetentionPeriod", "")
    expected = [list(moto.backends.list_of_moto_modules()), [moto.core.utils.camelcase_to_underscores(w) for w in words]]
    script = (
        "import json\n"
        "from breedline.local.moto_server import cache_module_list, memoise_pure_helpers\n"
        "cache_module_list(); import moto.server; memoise_pure_helpers()\n"
        "import moto.backends, moto.core.utils, moto.sqs.models, moto.core.responses as r\n"
        "u = moto.core.utils\n"
        "assert moto.sqs.models.camelcase_to_underscores is u.camelcase_to_underscores\n"
        "assert r.method_names_from_class is u.method_names_from_class\n"
        "names = u.method_names_from_class(r.BaseResponse); names.append('x')\n"
        "assert 'x' not in u.method_names_from_class(r.BaseResponse)\n"
        f"words = {words!r}\n"
        "print(json.dumps([list(moto.backends.list_of_moto_modules()),"
        " [u.camelcase_to_underscores(w) for w in words]]))\n"
    )
    check = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == expected
