"""Demographic labels of evaluation photos, for the per-group (cell) tables.

A *labeller* maps one photo (its set name, identity folder and path) to :class:`PhotoLabels`, or
None when it knows nothing of it. Labellers are plain functions tried in order
(:data:`LABELLERS`); the first that labels a photo wins, so a new set with its own labels only
needs one more function here.

``utk``
    UTKFace's file names, ``<age>_<gender>_<race>_<date>.jpg.chip.jpg`` with gender 0 male, 1
    female and race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others (the dataset's own coding).
    Cell: ``<race>-<gender>``, e.g. ``black-female``. UTKFace is for non-commercial research
    only: numbers computed from it carry that restriction.
``lfw-names``
    LFW identities by name (``lfw_gender.tsv`` beside this module): the apparent gender of the
    120 people of the ``lfw`` evaluation set, written down by the project from their photos. Cell:
    ``male`` or ``female``. LFW carries no race labels, so there are no race cells for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from faceanonymixer.models.attribute_classifiers import GENDERS

RACES = ("white", "black", "asian", "indian", "others")
#: lower bounds of the apparent-age groups (``attribute_classifiers.AGE_GROUPS``: 16-29, ..., 60+)
AGE_GROUP_STARTS = (16, 30, 45, 60)

_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_")
_LFW_NAMES = Path(__file__).with_name("lfw_gender.tsv")


@dataclass(frozen=True)
class PhotoLabels:
    """What is known of one photo; None where a label is absent."""

    cell: str
    gender: str | None = None
    race: str | None = None
    age: int | None = None

    @property
    def age_group(self) -> int | None:
        return age_group(self.age) if self.age is not None else None


Labeller = Callable[[str, str, Path], PhotoLabels | None]


def age_group(age: float) -> int | None:
    """Index into ``AGE_GROUPS`` of an age in years; None under 16 (no group)."""
    if age < AGE_GROUP_STARTS[0]:
        return None
    return sum(age >= start for start in AGE_GROUP_STARTS) - 1


def utk_labels(set_name: str, identity: str, path: Path) -> PhotoLabels | None:
    """Labels from a UTKFace file name; None for any other name."""
    match = _UTK_NAME.match(path.name)
    if match is None:
        return None
    age, gender, race = int(match[1]), GENDERS[int(match[2])], RACES[int(match[3])]
    return PhotoLabels(cell=f"{race}-{gender}", gender=gender, race=race, age=age)


@cache
def lfw_genders(path: Path = _LFW_NAMES) -> dict[str, str]:
    """identity -> "male" / "female" from a two-column TSV (``#`` comments allowed)."""
    genders: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, gender = line.partition("\t")
        if gender.strip() not in GENDERS:
            raise ValueError(f"{path}:{number}: the gender must be male or female, got {gender!r}")
        genders[name.strip()] = gender.strip()
    return genders


def lfw_name_labels(set_name: str, identity: str, path: Path) -> PhotoLabels | None:
    """Apparent gender of a listed LFW identity (any set named ``lfw``); None otherwise."""
    if set_name != "lfw":
        return None
    gender = lfw_genders().get(identity)
    return PhotoLabels(cell=gender, gender=gender) if gender else None


#: tried in order; the first labeller that knows a photo labels it
LABELLERS: tuple[Labeller, ...] = (utk_labels, lfw_name_labels)


def label_photo(
    set_name: str, identity: str, path: Path, labellers: Sequence[Labeller] = LABELLERS
) -> PhotoLabels | None:
    for labeller in labellers:
        labels = labeller(set_name, identity, path)
        if labels is not None:
            return labels
    return None
