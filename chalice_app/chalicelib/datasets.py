"""Data set keys, layout validation, versions and readiness: pure functions.

Why here and pure: the upload handler must decide, before any GPU second is
paid for, whether a folder of objects is a usable data set. These rules are
the product's contract with uploaders, so they are tested without AWS.

Layout (relative to ``BREEDLINE_DATA_PREFIX``)::

    <name>/_READY                          optional "upload complete" marker
    <name>/{train,valid,test}/<class>/<image>.{jpg,jpeg,png}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable

from contract import CHANNELS

#: Data set names become S3 prefixes, tag values and part of job names.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: How many offending keys a rejection reason quotes (the rest are counted).
_EXAMPLES = 3


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
    unknown_splits: set[str] = field(default_factory=set)
    digest_rows: list[str] = field(default_factory=list)


def _sort_objects(objects: Iterable[ObjectRef], base: str, marker: str, image_extensions: tuple[str, ...]) -> _Sorted:
    found = _Sorted(counts={split: {} for split in CHANNELS})
    for obj in objects:
        if not obj.key.startswith(base):
            continue
        relative = obj.key[len(base):]
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
        if not filename.lower().endswith(image_extensions):
            found.not_images.append(relative)
            continue
        if obj.size == 0:
            found.empty.append(relative)
            continue
        found.counts[split][cls] = found.counts[split].get(cls, 0) + 1
        found.digest_rows.append(f"{relative}\t{obj.etag.strip(chr(34))}\t{obj.size}")
    return found


def _file_reasons(dataset: str, found: _Sorted, image_extensions: tuple[str, ...]) -> list[str]:
    """What is wrong with the name and the individual objects."""
    reasons: list[str] = []
    if not valid_dataset_name(dataset):
        reasons.append(
            f"data set name {dataset!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    if found.unknown_splits:
        reasons.append(f"unknown split folders {sorted(found.unknown_splits)}; expected only {list(CHANNELS)}")
    if found.misplaced:
        reasons.append(f"{len(found.misplaced)} objects not at <split>/<class>/<file>: {_quote(found.misplaced)}")
    if found.not_images:
        allowed = ", ".join(image_extensions)
        reasons.append(f"{len(found.not_images)} files are not images ({allowed}): {_quote(found.not_images)}")
    if found.empty:
        reasons.append(f"{len(found.empty)} image files are empty: {_quote(found.empty)}")
    return reasons


def _class_reasons(counts: dict[str, dict[str, int]], min_images_per_class: int) -> tuple[list[str], list[str]]:
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
    for split in present:
        few = sorted(c for c, n in counts[split].items() if n < min_images_per_class)
        if few:
            reasons.append(
                f"split {split!r}: {len(few)} classes have fewer than {min_images_per_class} images: {_quote(few)}"
            )
    return reasons, all_classes


def validate_layout(
    dataset: str,
    objects: Iterable[ObjectRef],
    *,
    data_prefix: str,
    marker: str,
    image_extensions: tuple[str, ...],
    min_images_per_class: int,
) -> LayoutReport:
    """Check a data set's listing against the layout rules.

    Rules: a valid name; the three splits present; the same classes in each
    split; at least ``min_images_per_class`` images per class in every split;
    only image files (by extension) and only at ``<split>/<class>/<file>``.
    Every broken rule becomes one human-readable reason.
    """
    found = _sort_objects(objects, f"{data_prefix}{dataset}/", marker, image_extensions)
    class_reasons, all_classes = _class_reasons(found.counts, min_images_per_class)
    reasons = _file_reasons(dataset, found, image_extensions) + class_reasons
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
    )


def quiet_period_elapsed(last_upload_epoch: float, now_epoch: float, quiet_seconds: int) -> bool:
    """Debounce: start when no upload arrived for ``quiet_seconds``; 0 disables it."""
    return quiet_seconds > 0 and now_epoch - last_upload_epoch >= quiet_seconds
