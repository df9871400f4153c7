"""Statistics of real faces in a recognizer's embedding space, committed with the weights.

* The centre: raw dlib descriptors share a large common component, so cosines and projections
  only mean something about *identity* once it is removed. The engine measures anonymity and
  builds key-derived target identities around it.
* The principal axes of real identities around that centre, with their variances. Real faces
  vary along few of dlib's 128 directions (the top 64 axes hold 97% of the variance of lfw_train,
  the last ones almost none): a target drawn in random directions of the whole space lies partly
  where no face can be, and the optimisation cannot reach it. Profiles with a ``target_subspace``
  draw their targets inside the top axes, and with ``source_axes`` read the photo's identity there
  (``identity_target.key_target_map``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from faceanonymixer.models.weights import check_sha256, load_tagged_arrays, save_tagged_arrays
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256, write_atomic

_BASIS_FORMAT = "faceanonymixer/identity-basis/v1"


@dataclass(frozen=True)
class IdentityBasis:
    """Principal axes of real identities: orthonormal columns, by variance, largest first."""

    #: (dim, dim), column i the i-th axis
    axes: torch.Tensor
    #: (dim,) variance of real faces along each axis
    variances: torch.Tensor

    def __post_init__(self) -> None:
        dim = self.variances.shape[0] if self.variances.ndim == 1 else -1
        if self.axes.shape != (dim, dim):
            raise ModelFormatError("an identity basis is (dim, dim) axes and (dim,) variances")

    @property
    def dim(self) -> int:
        return int(self.axes.shape[0])

    def top(self, count: int) -> torch.Tensor:
        """The ``count`` axes of largest variance, (dim, count)."""
        if not 1 <= count <= self.dim:
            raise ValueError(f"the subspace must have between 1 and {self.dim} axes, not {count}")
        return self.axes[:, :count]


def save_identity_mean(mean: torch.Tensor, path: Path) -> str:
    """Write atomically (``utils.files.write_atomic``); returns the SHA-256."""
    buffer = io.BytesIO()
    np.save(buffer, mean.numpy().astype(np.float32))
    write_atomic(path, buffer.getvalue())
    return file_sha256(path)


def load_identity_mean(path: Path, *, sha256: str | None = None) -> torch.Tensor:
    check_sha256(path, sha256)
    return torch.from_numpy(np.load(path, allow_pickle=False)).float()


def save_identity_basis(basis: IdentityBasis, path: Path) -> str:
    """Write atomically (``utils.files.write_atomic``); returns the SHA-256."""
    return save_tagged_arrays(
        path,
        _BASIS_FORMAT,
        axes=basis.axes.numpy().astype(np.float32),
        variances=basis.variances.numpy().astype(np.float32),
    )


def load_identity_basis(path: Path, *, sha256: str | None = None) -> IdentityBasis:
    arrays = load_tagged_arrays(path, _BASIS_FORMAT, "an identity basis", sha256=sha256)
    try:
        return IdentityBasis(
            torch.from_numpy(arrays["axes"]).float(), torch.from_numpy(arrays["variances"]).float()
        )
    except KeyError as error:
        raise ModelFormatError(f"{path}: not an identity basis (no {error})") from error
