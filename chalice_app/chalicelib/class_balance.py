"""Per-class image counts of a data set version and the imbalance warning.

Why a warning and not a rejection: an imbalanced set is often what the
uploader really has (rare breeds), and train.py weights its loss for it. But
accuracy then flatters a model that always answers the big class (100 images
of one class and 2 of another: 0.98 for a model that learned nothing), so the
uploader is told at once, with the counts, and the quality gate compares with
the majority-class baseline (:func:`chalicelib.decisions.majority_baseline`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract import CHANNELS


@dataclass(frozen=True)
class Imbalance:
    """One split whose largest class has more than the allowed ratio of images to its smallest."""

    split: str
    largest: str
    largest_count: int
    smallest: str
    smallest_count: int

    @property
    def ratio(self) -> float:
        return self.largest_count / self.smallest_count

    def warning(self, max_ratio: float) -> str:
        return (
            f"{self.split}: classes imbalanced {self.ratio:.1f}x (more than {max_ratio:g}x, "
            f"BREEDLINE_IMBALANCE_RATIO): {self.largest} has {self.largest_count} images, "
            f"{self.smallest} {self.smallest_count}; accepted, but a model that favours {self.largest} "
            "scores well on accuracy: judge it by macro-F1"
        )


def imbalances(counts: Mapping[str, Mapping[str, int]], max_ratio: float) -> list[Imbalance]:
    """Each split (in :data:`contract.CHANNELS` order) whose largest/smallest class ratio exceeds ``max_ratio``.

    Classes with no usable image are left to the layout rules (they reject
    the set); ties go to the class name that sorts first, so the text is stable.
    """
    found: list[Imbalance] = []
    for split in CHANNELS:
        present = sorted((name, int(n)) for name, n in (counts.get(split) or {}).items() if int(n) > 0)
        if len(present) < 2:
            continue
        largest = min(present, key=lambda item: (-item[1], item[0]))
        smallest = min(present, key=lambda item: (item[1], item[0]))
        if largest[1] > max_ratio * smallest[1]:
            found.append(Imbalance(split, largest[0], largest[1], smallest[0], smallest[1]))
    return found


def class_counts(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``{split: {class: images}}`` for every split, classes sorted: what the version record keeps."""
    return {
        split: {name: int(n) for name, n in sorted((counts.get(split) or {}).items())} for split in CHANNELS
    }
