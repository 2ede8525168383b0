"""The demo's stages: bench/demo_bench.py's reading of its output; its upload, DATA check and test images.

The upload must behave like ``aws s3 sync`` (every file, the CLI's content
types) so the app's validation decides, as in AWS (issue 15, item 14).
"""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path

import pytest
from PIL import Image

from bench.demo_bench import parse_phases
from breedline import demo


def test_parse_phases_splits_each_job_by_status() -> None:
    text = "\n".join([
        "[  10.0s]   trial breedline-x-001: InProgress / Starting (batch_size=16, learning_rate=0.01)",
        "[  10.5s]   trial breedline-x-001: InProgress / Downloading",
        "[  12.0s]     trial breedline-x-001: valid_loss=0.5",  # a metrics line is not a status
        "[  15.5s]   trial breedline-x-001: InProgress / Training",
        "[  30.0s]   trial breedline-x-001: InProgress / Uploading",
        "[  31.5s]   trial breedline-x-001: Completed / Completed",
        "[  31.5s]   final job breedline-x-final: InProgress / Training",
        "[  40.0s]   final job breedline-x-final: Failed / Failed: AlgorithmError: boom, exit code: 1",
    ])
    phases = parse_phases(text)
    assert phases["breedline-x-001"] == {"Starting": 0.5, "Downloading": 5.0, "Training": 14.5, "Uploading": 1.5}
    assert phases["breedline-x-final"] == {"Training": 8.5}


# -- issue 15, item 14: the demo uploads as `aws s3 sync` would, checks DATA, predicts only real images --------
class RecordingS3:
    """What upload_dataset sends, in order, without a server."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, str | None]] = []

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str | None = None) -> None:
        self.puts.append((Key, ContentType))


def image(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return root


def test_upload_sends_every_file_with_the_clis_content_type_then_the_marker(tmp_path):
    files = {"train/a/1.jpg": image("JPEG"), "train/a/2.webp": b"RIFF....WEBP", "train/a/3.HEIC": b"heic",
             "train/a/._1.jpg": b"\x00\x05\x16\x07", "train/a/notes.txt": b"hi", "valid/b/x.gif": b"GIF89a",
             "test/b/y.bmp": b"BM", "dogs.zip": b"PK\x03\x04", "train/a/noext": b"?"}
    data = write(tmp_path / "set", files)
    s3 = RecordingS3()
    assert demo.upload_dataset(s3, "bucket", data, "dogs") == len(files)
    assert s3.puts[-1] == ("datasets/dogs/_READY", None)
    sent = dict(s3.puts[:-1])
    assert set(sent) == {f"datasets/dogs/{rel}" for rel in files}
    for rel in files:  # the CLI guesses with mimetypes from the name; unknown names get S3's default
        assert sent[f"datasets/dogs/{rel}"] == mimetypes.guess_type(rel)[0]
    assert sent["datasets/dogs/train/a/1.jpg"] == "image/jpeg" and sent["datasets/dogs/train/a/noext"] is None


@pytest.mark.parametrize("layout, fragment", [
    (None, "does not exist"),
    ({"dogs.zip": b"PK"}, "has no train/, valid/ or test/ folder (dogs.zip is a zip archive: unzip it first)"),
    ({"a/1.jpg": b"x"}, "has no train/, valid/ or test/ folder"),
])
def test_data_is_checked_before_the_runtime_starts(tmp_path, monkeypatch, capsys, layout, fragment):
    data = tmp_path / "set"
    if layout is not None:
        write(data, layout)

    def never(*args, **kwargs):
        raise AssertionError("the runtime must not start for a bad DATA")

    monkeypatch.setattr(demo, "start_runtime", never)
    monkeypatch.setattr(demo.signal, "signal", lambda *a: None)
    assert demo.run_demo(data, "set", tmp_path / "state") == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: DATA ") and fragment in err[0]
    assert captured.out == ""  # the one line is all the operator sees


def test_a_file_is_not_a_data_folder(tmp_path):
    archive = tmp_path / "dogs.zip"
    archive.write_bytes(b"PK")
    assert "is not a folder (unzip it first)" in demo.check_data_dir(archive)
    assert demo.check_data_dir(write(tmp_path / "ok", {"train/a/1.jpg": b"x"})) is None


def test_test_images_are_only_files_pillow_really_decodes(tmp_path):
    jpeg = image("JPEG")
    data = write(tmp_path / "set", {
        "test/a/._good.jpg": b"\x00\x05\x16\x07" + b"\x00" * 100,  # macOS AppleDouble
        "test/a/cut.jpg": jpeg[: len(jpeg) // 2],
        "test/a/text.jpg": b"not an image",
        "test/a/good.jpg": jpeg,
        "test/b/really_png.jpg": image("PNG"),
        "test/c/only.gif": image("GIF"),  # decodable, but not a type /predict takes
        "test/c/._x.png": b"\x00\x05\x16\x07",
    })
    picked = demo.pick_test_images(data, 3)
    assert {(p.path.name, p.label, p.content_type) for p in picked} == {
        ("good.jpg", "a", "image/jpeg"), ("really_png.jpg", "b", "image/png")}
    assert demo.pick_test_images(tmp_path / "nothing", 3) == []


def test_an_accepted_with_skipped_files_notification_is_not_read_as_a_rejection(monkeypatch):
    class Clock:  # the demo's time, advanced by its own sleeps
        now = 0.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds

    class Watcher:
        clock, sm, tuning_name, final_name = None, None, None, None

        def poll(self) -> dict:
            return {"endpoint": None, "app": None}

    class Info:
        alert_queue_url = "queue"

    class Child:
        def poll(self) -> None:
            return None

    fake_time = Clock()
    monkeypatch.setattr(demo, "time", fake_time)
    monkeypatch.setattr(demo, "say", lambda clock, text: None)

    def alerts(subject: str):
        sent = [{"subject": subject, "message": "{}"}]
        return lambda sqs, queue: [sent.pop()] if sent else []

    monkeypatch.setattr(demo, "drain_alerts", alerts("Breedline: data set digits accepted, 2 files skipped"))
    assert demo.wait_for_deployment(Watcher(), None, Info(), Child(), timeout=60) is False
    assert fake_time.now >= 60  # it waited for the tuning job until the timeout, not 20 s
    fake_time.now = 0.0
    monkeypatch.setattr(demo, "drain_alerts", alerts("Breedline: data set digits rejected"))
    assert demo.wait_for_deployment(Watcher(), None, Info(), Child(), timeout=60) is False
    assert 20 < fake_time.now < 25
