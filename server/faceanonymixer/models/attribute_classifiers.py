"""Linear apparent-gender and age-group classifiers over a recognizer's embeddings, committed with
the weights. One format for two uses: the evaluation's judges (over FaceNet, which no loss sees)
and the protection loop's attribute term (over the loss recognizer's own embeddings, so that the
protected face keeps the photo's apparent gender and age group; ``engine/attribute_term.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faceanonymixer.models.weights import load_tagged_arrays, save_tagged_arrays

_CLASSIFIERS_FORMAT = "faceanonymixer/attribute-classifiers/v1"

GENDERS = ("male", "female")
AGE_GROUPS = ("16-29", "30-44", "45-59", "60+")


@dataclass(frozen=True, eq=False)
class AttributeClassifiers:
    """Linear classifiers over a recognizer's embeddings (numpy only at prediction time)."""

    #: (d,) and () of P(female) = sigmoid(x . coef + intercept)
    gender_coef: np.ndarray
    gender_intercept: np.ndarray
    #: (groups, d) and (groups,) of the age-group softmax
    age_coef: np.ndarray
    age_intercept: np.ndarray

    def gender(self, embeddings: np.ndarray) -> np.ndarray:
        """Index into :data:`GENDERS` per row; -1 for a missing (NaN) row."""
        rows = np.asarray(embeddings, dtype=np.float64)
        present = np.all(np.isfinite(rows), axis=1)
        scores = np.where(present, np.nan_to_num(rows) @ self.gender_coef + float(self.gender_intercept), 0)
        return np.where(present, (scores > 0).astype(np.int64), -1)

    def age_group(self, embeddings: np.ndarray) -> np.ndarray:
        """Index into :data:`AGE_GROUPS` per row; -1 for a missing (NaN) row."""
        rows = np.asarray(embeddings, dtype=np.float64)
        present = np.all(np.isfinite(rows), axis=1)
        scores = np.nan_to_num(rows) @ self.age_coef.T + self.age_intercept
        return np.where(present, np.argmax(scores, axis=1), -1)

    def save(self, path: Path) -> str:
        """Write the coefficients as a tagged .npz; returns its SHA-256."""
        return save_tagged_arrays(
            path,
            _CLASSIFIERS_FORMAT,
            gender_coef=self.gender_coef,
            gender_intercept=self.gender_intercept,
            age_coef=self.age_coef,
            age_intercept=self.age_intercept,
            genders=np.array(GENDERS),
            age_groups=np.array(AGE_GROUPS),
        )

    @classmethod
    def load(cls, path: Path, *, sha256: str | None = None) -> AttributeClassifiers:
        arrays = load_tagged_arrays(path, _CLASSIFIERS_FORMAT, "attribute classifiers", sha256=sha256)
        return cls(
            gender_coef=arrays["gender_coef"],
            gender_intercept=arrays["gender_intercept"],
            age_coef=arrays["age_coef"],
            age_intercept=arrays["age_intercept"],
        )
