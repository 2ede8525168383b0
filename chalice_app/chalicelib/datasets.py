"""Data set keys, layout validation, versions and readiness: pure functions.

Why here and pure: the upload handler must decide, before any GPU second is
paid for, whether a folder of objects is a usable data set. These rules are
the product's contract with uploaders, so they are tested without AWS.

Layout (relative to ``BREEDLINE_DATA_PREFIX``)::

    <name>/_READY                          optional "upload complete" marker
    <name>/{train,valid,test}/<class>/<image>.{jpg,jpeg,png}

A few unreadable files do not reject a data set: ``train.py`` skips and
counts what it cannot decode, so files that are empty, not images by suffix,
or fail the first/last-bytes check (:func:`sniff_problem`) are *skipped* and
listed. Only more than ``max_bad_share`` of them, or a class that falls below
its minimum once they are skipped, rejects the set (docs/reliability.md,
"The uploader's data set").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from contract import CHANNELS

#: Data set names become S3 prefixes, tag values and part of job names.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: How many offending keys a rejection reason quotes (the rest are counted).
_EXAMPLES = 3
#: How many skipped files a report lists by name (the notification stays small; the count is exact).
SKIPPED_LISTED = 50
#: Bytes read from each end of a sampled image: enough for every magic number and a format's end marker.
HEAD_BYTES = 16
TAIL_BYTES = 4096
#: Leading bytes of the formats Pillow (and so ``train.py``) reads; a file starting otherwise is not an image.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "gif": (b"GIF87a", b"GIF89a"),
    "bmp": (b"BM",),
    "tiff": (b"II*\x00", b"MM\x00*"),
}


@dataclass(frozen=True)
class ObjectRef:
    """One object of a listing: the fields that define a data set version."""

    key: str
    size: int = 0
    etag: str = ""


@dataclass(frozen=True)
class LayoutReport:
    """Outcome of :func:`validate_layout`.

    ``version`` is a content digest of every image (key, ETag, size): the same
    files always give the same version, whatever order the events came in.
    """

    dataset: str
    reasons: tuple[str, ...]
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(hash=False)
    image_count: int
    version: str
    #: ``(relative key, why)`` of files left out of the counts and the version (the first :data:`SKIPPED_LISTED`).
    skipped: tuple[tuple[str, str], ...] = ()
    skipped_count: int = 0
    #: Things the uploader should know that do not reject the set (empty class folders, zip archives).
    warnings: tuple[str, ...] = ()
    #: Estimated share of bad files (sampled first/last-bytes checks extrapolated to the unsampled images).
    bad_share: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reasons


def dataset_of_key(key: str, data_prefix: str) -> str | None:
    """Return the data set name of an object key, or None when it is not under one.

    ``datasets/dogs/train/a/1.jpg`` -> ``dogs``. A key directly under the prefix
    (``datasets/readme.txt``) belongs to no data set.
    """
    if not key.startswith(data_prefix):
        return None
    rest = key[len(data_prefix):]
    name, sep, tail = rest.partition("/")
    if not sep or not name or not tail:
        return None
    return name


def valid_dataset_name(name: str) -> bool:
    """Names must be usable as tag values and in job names."""
    return bool(_DATASET_NAME.match(name))


def is_marker(key: str, data_prefix: str, marker: str) -> bool:
    """True for ``<prefix><name>/<marker>``, the "upload complete" object."""
    name = dataset_of_key(key, data_prefix)
    return name is not None and key == f"{data_prefix}{name}/{marker}"


def _ignored(relative: str, marker: str) -> bool:
    """Folder placeholders, the marker and hidden files (.DS_Store) are not data."""
    if relative.endswith("/") or relative == marker:
        return True
    return any(part.startswith(".") for part in relative.split("/"))


def _quote(keys: list[str]) -> str:
    shown = ", ".join(keys[:_EXAMPLES])
    more = len(keys) - _EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


@dataclass
class _Sorted:
    """A listing sorted into image counts per split and class, and the objects that break a rule."""

    counts: dict[str, dict[str, int]]
    misplaced: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unknown_splits: set[str] = field(default_factory=set)
    digest_rows: list[str] = field(default_factory=list)
    #: ``split/class`` of every class folder seen, a folder placeholder (``train/x/``) included.
    folders: set[str] = field(default_factory=set)
    archives: list[str] = field(default_factory=list)
    files: int = 0

    def skipped(self) -> list[tuple[str, str]]:
        rows = [(k, "not an image file (suffix)") for k in self.not_images]
        rows += [(k, "empty (0 bytes)") for k in self.empty]
        return sorted(rows + self.unreadable)


def _placeholder_folder(relative: str) -> str | None:
    """``train/x/`` (how consoles and ``aws s3`` tools create an empty folder) -> ``train/x``."""
    parts = relative.rstrip("/").split("/")
    if not relative.endswith("/") or len(parts) != 2 or not all(parts) or parts[1].startswith("."):
        return None
    return "/".join(parts)


def _sort_objects(
    objects: Iterable[ObjectRef],
    base: str,
    marker: str,
    image_extensions: tuple[str, ...],
    unreadable: Mapping[str, str],
) -> _Sorted:
    found = _Sorted(counts={split: {} for split in CHANNELS})
    for obj in objects:
        if not obj.key.startswith(base):
            continue
        relative = obj.key[len(base):]
        if relative.lower().endswith(".zip"):
            found.archives.append(relative)
        placeholder = _placeholder_folder(relative)
        if placeholder is not None and placeholder.split("/")[0] in found.counts:
            found.folders.add(placeholder)
        if _ignored(relative, marker):
            continue
        parts = relative.split("/")
        if len(parts) != 3 or not all(parts):
            found.misplaced.append(relative)
            continue
        split, cls, filename = parts
        if split not in found.counts:
            found.unknown_splits.add(split)
            continue
        found.files += 1
        found.folders.add(f"{split}/{cls}")
        if not filename.lower().endswith(image_extensions):
            found.not_images.append(relative)
        elif obj.size == 0:
            found.empty.append(relative)
        elif obj.key in unreadable:
            found.unreadable.append((relative, unreadable[obj.key]))
        else:
            found.counts[split][cls] = found.counts[split].get(cls, 0) + 1
            found.digest_rows.append(f"{relative}\t{obj.etag.strip(chr(34))}\t{obj.size}")
    return found


def _file_reasons(dataset: str, found: _Sorted, image_extensions: tuple[str, ...]) -> list[str]:
    """What is wrong with the name and the layout: these reject the set whatever their number."""
    reasons: list[str] = []
    if not valid_dataset_name(dataset):
        reasons.append(
            f"data set name {dataset!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    if found.unknown_splits:
        reasons.append(f"unknown split folders {sorted(found.unknown_splits)}; expected only {list(CHANNELS)}")
    if found.misplaced:
        reasons.append(f"{len(found.misplaced)} objects not at <split>/<class>/<file>: {_quote(found.misplaced)}")
    return reasons


def _bad_file_reasons(found: _Sorted, image_extensions: tuple[str, ...], share: float, max_share: float) -> list[str]:
    """Too many unusable files: one summary, then one reason per kind (each quoting a few keys)."""
    if not found.files or share <= max_share:
        return []
    bad = len(found.not_images) + len(found.empty) + len(found.unreadable)
    reasons = [f"{share:.1%} of the {found.files} files are unusable ({bad} found); at most {max_share:.1%} may be skipped"]
    if found.not_images:
        allowed = ", ".join(image_extensions)
        reasons.append(f"{len(found.not_images)} files are not images ({allowed}): {_quote(found.not_images)}")
    if found.empty:
        reasons.append(f"{len(found.empty)} image files are empty: {_quote(found.empty)}")
    if found.unreadable:
        keys = [key for key, _ in found.unreadable]
        reasons.append(f"{len(keys)} image files are unreadable (first/last bytes): {_quote(keys)}")
    return reasons


def _folder_notes(found: _Sorted) -> tuple[list[str], list[str]]:
    """Class folders without usable images: (reasons, warnings).

    A folder whose files were all skipped is a class that fell below its
    minimum: a reason. A folder with no files at all (a placeholder) is only
    a warning: it holds nothing to train on or to skip.
    """
    with_files: set[str] = set()
    for key in [*found.not_images, *found.empty, *(k for k, _ in found.unreadable)]:
        with_files.add(key.rsplit("/", 1)[0])
    starved: dict[str, list[str]] = {}
    warnings: list[str] = []
    for folder in sorted(found.folders):
        split, cls = folder.split("/", 1)
        if found.counts[split].get(cls):
            continue
        if folder in with_files:
            starved.setdefault(split, []).append(cls)
        else:
            warnings.append(f"class folder {folder}/ is empty")
    reasons = [  # a split without any image already has its own reason
        f"split {split!r}: classes {_quote(classes)} have no usable images once unreadable files are skipped"
        for split, classes in starved.items() if found.counts[split]
    ]
    return reasons, warnings


def _class_reasons(
    counts: dict[str, dict[str, int]], min_images_per_class: int, skipped: int = 0
) -> tuple[list[str], list[str]]:
    """What is wrong with the splits and classes, and every class seen (sorted)."""
    reasons: list[str] = []
    for split in CHANNELS:
        if not counts[split]:
            reasons.append(f"split {split!r} has no images")
    present = [s for s in CHANNELS if counts[s]]
    all_classes = sorted(set().union(*(counts[s].keys() for s in present))) if present else []
    for split in present:
        missing = sorted(set(all_classes) - set(counts[split]))
        if missing:
            reasons.append(f"split {split!r} lacks classes {_quote(missing)}")
    if len(all_classes) == 1:
        reasons.append("only one class: a classifier needs at least two")
    after = f" once {skipped} unusable files are skipped" if skipped else ""
    for split in present:
        few = sorted(c for c, n in counts[split].items() if n < min_images_per_class)
        if few:
            reasons.append(
                f"split {split!r}: {len(few)} classes have fewer than {min_images_per_class} images{after}: {_quote(few)}"
            )
    return reasons, all_classes


def _bad_share(found: _Sorted, sniffed: int) -> float:
    """Share of bad files; unreadable ones found in a sample of ``sniffed`` images are extrapolated."""
    if not found.files:
        return 0.0
    candidates = sum(sum(c.values()) for c in found.counts.values()) + len(found.unreadable)
    unreadable = len(found.unreadable) * (candidates / sniffed if sniffed else 1.0)
    return (len(found.not_images) + len(found.empty) + unreadable) / found.files


def _archive_hints(found: _Sorted) -> list[str]:
    return [f"{key} is a zip archive: unzip it first and upload its folders (<split>/<class>/<image>)"
            for key in found.archives[:_EXAMPLES]]


def validate_layout(
    dataset: str,
    objects: Iterable[ObjectRef],
    *,
    data_prefix: str,
    marker: str,
    image_extensions: tuple[str, ...],
    min_images_per_class: int,
    max_bad_share: float = 0.0,
    unreadable: Mapping[str, str] | None = None,
    sniffed: int = 0,
) -> LayoutReport:
    """Check a data set's listing against the layout rules.

    Rules: a valid name; the three splits present; the same classes in each
    split; at least ``min_images_per_class`` usable images per class in every
    split; objects only at ``<split>/<class>/<file>``. Files that are not
    images by suffix, empty, or in ``unreadable`` (full key -> why, from
    :func:`sniff_problem` on ``sniffed`` sampled images) are skipped; more than
    ``max_bad_share`` of them (0 = none allowed) rejects the set. Every broken
    rule becomes one human-readable reason.
    """
    found = _sort_objects(objects, f"{data_prefix}{dataset}/", marker, image_extensions, unreadable or {})
    skipped = found.skipped()
    share = _bad_share(found, sniffed)
    class_reasons, all_classes = _class_reasons(found.counts, min_images_per_class, len(skipped))
    folder_reasons, warnings = _folder_notes(found)
    reasons = (_file_reasons(dataset, found, image_extensions)
               + _bad_file_reasons(found, image_extensions, share, max_bad_share) + folder_reasons + class_reasons)
    (reasons if reasons else warnings).extend(_archive_hints(found))
    digest = hashlib.sha256(dataset.encode())
    for row in sorted(found.digest_rows):
        digest.update(b"\n" + row.encode())
    return LayoutReport(
        dataset=dataset,
        reasons=tuple(reasons),
        classes=tuple(all_classes),
        counts=found.counts,
        image_count=len(found.digest_rows),
        version=digest.hexdigest()[:16],
        skipped=tuple(skipped[:SKIPPED_LISTED]),
        skipped_count=len(skipped),
        warnings=tuple(warnings),
        bad_share=round(share, 4),
    )


def listing_digest(objects: Iterable[ObjectRef]) -> str:
    """A digest of every object's key, ETag and size: equal digests mean equal bytes, so equal sniff results."""
    digest = hashlib.sha256()
    for row in sorted(f"{o.key}\t{o.etag.strip(chr(34))}\t{o.size}" for o in objects):
        digest.update(row.encode() + b"\n")
    return digest.hexdigest()[:32]


def sniff_sample(
    objects: Iterable[ObjectRef], *, dataset: str, data_prefix: str, marker: str,
    image_extensions: tuple[str, ...], limit: int,
) -> list[ObjectRef]:
    """The images whose first and last bytes settling reads: at most ``limit``, the same for the same listing.

    Ordered by a digest of the key, so the sample is spread over classes and
    splits without any randomness (a re-settle reads the same objects).
    """
    if limit <= 0:
        return []
    objects = list(objects)
    base = f"{data_prefix}{dataset}/"
    found = _sort_objects(objects, base, marker, image_extensions, {})
    usable = {row.split("\t", 1)[0] for row in found.digest_rows}
    candidates = [o for o in objects if o.key.startswith(base) and o.key[len(base):] in usable]
    candidates.sort(key=lambda o: hashlib.sha256(o.key.encode()).digest())
    return candidates[:limit]


def _format_of(head: bytes) -> str | None:
    for name, prefixes in _MAGIC.items():
        if head.startswith(prefixes):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


#: A start-of-scan header's length field: 6 + 2 bytes per component, 1 to 4 components.
_SOS_LENGTHS = frozenset({8, 10, 12, 14})


def _entropy_coded(tail: bytes) -> bool:
    """Whether a JPEG's last bytes can be scan data cut short, rather than data appended after its end.

    Inside a scan every ``FF`` is followed by ``00`` (byte stuffing) or a
    restart marker ``D0``-``D7``. Data some cameras append after the image
    (a Motion Photo's video, a maker trailer) breaks that within a few kB,
    and a zero-filled tail is padding, not scan data. Only the bytes after
    the last start-of-scan header in the window are judged (a small file is
    read whole, headers included).
    """
    sos = tail.rfind(b"\xff\xda")
    length = int.from_bytes(tail[sos + 2:sos + 4], "big") if sos >= 0 else 0
    if sos >= 0 and (sos + 4 > len(tail) or length in _SOS_LENGTHS):  # a real header, not two random bytes
        if sos + 2 + length >= len(tail):
            return True  # the file ends inside a start-of-scan header
        tail = tail[sos + 2 + length:]
    if not tail.strip(b"\x00"):
        return False
    at = tail.find(b"\xff")
    while 0 <= at < len(tail) - 1:
        follower = tail[at + 1]
        if follower != 0x00 and not 0xD0 <= follower <= 0xD7:
            return False
        at = tail.find(b"\xff", at + 1)
    return True


def sniff_problem(head: bytes, tail: bytes, size: int | None = None) -> str | None:
    """Why a file cannot be an image, from its first :data:`HEAD_BYTES`, last :data:`TAIL_BYTES` and size.

    Catches text or other data under an image name (no known magic number),
    a JPEG cut short inside its scan data (no end-of-image marker and a tail
    that is still scan data, :func:`_entropy_coded`) or, read whole, before
    it (no start of scan), a PNG without its
    ``IEND`` chunk, and a WebP or BMP shorter than its header says. None
    means plausible: a file corrupt inside still passes, and ``train.py``
    skips and counts those (docs/reliability.md lists what is missed).
    """
    kind = _format_of(head)
    if kind is None:
        shown = head[:8].hex(" ")
        return f"not an image (starts with {shown or 'nothing'})"
    whole = size is not None and len(tail) >= size
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        if whole and b"\xff\xda" not in tail:
            return "truncated JPEG (ends before its image data)"
        if _entropy_coded(tail):
            return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    if size is not None and len(head) >= 12:
        declared = {"webp": int.from_bytes(head[4:8], "little") + 8, "bmp": int.from_bytes(head[2:6], "little")}
        if declared.get(kind, 0) > size:
            return f"truncated {kind.upper()} ({size} of {declared[kind]} bytes)"
    return None


def quiet_period_elapsed(last_upload_epoch: float, now_epoch: float, quiet_seconds: int) -> bool:
    """Debounce: start when no upload arrived for ``quiet_seconds``; 0 disables it."""
    return quiet_seconds > 0 and now_epoch - last_upload_epoch >= quiet_seconds
