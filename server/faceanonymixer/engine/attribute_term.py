"""The protection loop's attribute-classifier term: the protected face keeps the photo's apparent
gender and age group as the loss recognizer itself reads them.

The pooled-pixel term (``protection.py``) keeps pose, light and colour, but not who a face looks
like in kind: the key's target identity carries a face from one group towards the generator's
commonest faces (middle-aged men, on LFW), and a woman's photo came out as a man's. Linear
classifiers fitted on the loss recognizer's embeddings of labelled photos
(``models.attribute_classifiers``, ``faceanonymixer models fit-attributes --recognizer dlib``) read
both faces in the loop, and the term is the KL divergence from the photo's predicted gender and
age-group distributions to the protected face's: 0 when they agree, whatever the identity.
The evaluation's judges are other classifiers over another network (FaceNet), which no loss sees.
docs/decisions/2026-12-07-attribute-classifiers-in-the-loss.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from faceanonymixer.models.attribute_classifiers import AttributeClassifiers
from faceanonymixer.models.weights import weights_entry
from faceanonymixer.utils.errors import ModelFormatError


@dataclass(frozen=True)
class AttributeTerm:
    """The classifiers as tensors on the engine's device."""

    #: (dim,) and () of the female logit
    gender_coef: torch.Tensor
    gender_intercept: torch.Tensor
    #: (groups, dim) and (groups,) of the age-group logits
    age_coef: torch.Tensor
    age_intercept: torch.Tensor

    @classmethod
    def load(cls, name: str, *, embedding_dim: int, device: torch.device) -> AttributeTerm:
        """The committed classifiers ``name``, checked against the recognizer's size."""
        entry = weights_entry(name)
        classifiers = AttributeClassifiers.load(entry.path, sha256=entry.sha256)
        if classifiers.gender_coef.shape != (embedding_dim,) or classifiers.age_coef.shape[1:] != (
            embedding_dim,
        ):
            raise ModelFormatError(
                f"{entry.path}: classifiers of {classifiers.gender_coef.shape[0]}-d embeddings, "
                f"the recognizer's are {embedding_dim}-d"
            )

        def tensor(array: object) -> torch.Tensor:
            return torch.as_tensor(array, dtype=torch.float32, device=device)

        return cls(
            tensor(classifiers.gender_coef),
            tensor(classifiers.gender_intercept),
            tensor(classifiers.age_coef),
            tensor(classifiers.age_intercept),
        )

    def directions(self) -> torch.Tensor:
        """(k, dim): the directions along which the classifiers read an embedding, the female logit's
        and the age-group logits' relative to their mean (a softmax ignores a common shift)."""
        age = self.age_coef - self.age_coef.mean(dim=0, keepdim=True)
        return torch.cat([self.gender_coef[None], age])

    def log_probabilities(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (N, 2) of male / female and (N, groups) of the age groups."""
        female = embeddings @ self.gender_coef + self.gender_intercept
        gender = torch.stack([F.logsigmoid(-female), F.logsigmoid(female)], dim=1)
        age = F.log_softmax(embeddings @ self.age_coef.T + self.age_intercept, dim=1)
        return gender, age

    def divergence(
        self, protected: torch.Tensor, original: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Per face (N,): KL(original || protected) of gender plus that of age group, with
        ``original`` the photos' :meth:`log_probabilities`."""
        return sum(
            (
                F.kl_div(mine, theirs, reduction="none", log_target=True).sum(dim=1)
                for mine, theirs in zip(self.log_probabilities(protected), original, strict=True)
            ),
            start=torch.zeros(len(protected), device=protected.device),
        )
