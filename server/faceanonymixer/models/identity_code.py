"""The generator code of an identity: a linear map from the loss recognizer's embedding space to
the generator's input code, fitted on real faces and committed with the weights.

With ``synthetic_identity_weight`` w > 0 part of the key's synthetic face is drawn from the
subject. Where the profile has a fitted map, that part is the code of the subject's key-derived
*target* identity (``identity_target.py``): the synthetic face the optimisation starts from already
leans toward where the loss pulls, so people sharing one key start from faces as different as
their targets, and photos of one person (close targets) from close faces.

The map is the least-squares slope of the generator encoder's codes of real photos on their
centred embeddings. Only the direction of ``slope @ offset`` is kept, at the mean length of those
codes: a real face's code, not an extrapolation far outside the generator's training range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceanonymixer.models.weights import load_tagged_arrays_of, save_tagged_arrays
from faceanonymixer.utils.errors import ModelFormatError

_FORMAT = "faceanonymixer/identity-code-map/v1"
_NETWORK_FORMAT = "faceanonymixer/identity-code-network/v1"


@dataclass(frozen=True)
class IdentityCodeMap:
    #: (z_dim, embedding_dim) least-squares slope of codes on centred embeddings
    slope: torch.Tensor
    #: mean length of the real photos' codes; every code this map gives has this length
    code_norm: float

    def __post_init__(self) -> None:
        if self.slope.ndim != 2 or not self.code_norm > 0:
            raise ModelFormatError("an identity code map is a 2-D slope and a positive code length")

    @property
    def z_dim(self) -> int:
        return int(self.slope.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.slope.shape[1])

    def code(self, offsets: torch.Tensor) -> torch.Tensor:
        """Generator codes (N, z_dim) for (N, embedding_dim) offsets from the real-face centre."""
        if offsets.ndim != 2 or offsets.shape[1] != self.embedding_dim:
            raise ValueError(f"offsets must be (N, {self.embedding_dim}), not {tuple(offsets.shape)}")
        slope = self.slope.to(device=offsets.device)
        return self.code_norm * F.normalize(offsets.float() @ slope.T, dim=1)


class IdentityCodeNetwork(nn.Module):
    """A trained map from identities to generator codes: a linear map (initialised from the
    fitted :class:`IdentityCodeMap`) plus a small MLP's correction of its direction, trained
    through the frozen generator and loss recognizer so that the key's face *renders* its target
    identity (``training/identity_code_network.py``); the fitted map gives a face of the target's
    group, not of the person (docs/decisions/2026-12-07-where-shared-key-faces-become-alike.md,
    section 9). Codes keep the fitted map's length, as :meth:`IdentityCodeMap.code` does.
    """

    def __init__(self, linear: IdentityCodeMap, *, hidden: int = 512, input_scale: float = 10.0) -> None:
        super().__init__()
        if hidden < 1 or not input_scale > 0:
            raise ValueError("hidden must be positive and input_scale above 0")
        self.linear = nn.Linear(linear.embedding_dim, linear.z_dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(linear.slope)
        last = nn.Linear(hidden, linear.z_dim)
        # the correction starts at 0: an untrained network gives the fitted map's codes
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.correction = nn.Sequential(
            nn.Linear(linear.embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), last
        )
        self.code_norm = linear.code_norm
        #: offsets are multiplied by this before the MLP (dlib's spread about 0.05 per dimension)
        self.input_scale = input_scale
        self.hidden = hidden

    @property
    def z_dim(self) -> int:
        return int(self.linear.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.linear.weight.shape[1])

    def code(self, offsets: torch.Tensor) -> torch.Tensor:
        """Generator codes (N, z_dim) for (N, embedding_dim) offsets from the real-face centre."""
        if offsets.ndim != 2 or offsets.shape[1] != self.embedding_dim:
            raise ValueError(f"offsets must be (N, {self.embedding_dim}), not {tuple(offsets.shape)}")
        offsets = offsets.to(self.linear.weight)
        direction = F.normalize(self.linear(offsets), dim=1)
        return self.code_norm * F.normalize(direction + self.correction(self.input_scale * offsets), dim=1)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        return self.code(offsets)


#: what a profile's ``identity_code_map`` may name: a fitted linear map or a trained network
IdentityCoder = IdentityCodeMap | IdentityCodeNetwork


def save_identity_code_map(code_map: IdentityCodeMap, path: Path) -> str:
    """Write atomically (``utils.files.write_atomic``); returns the SHA-256."""
    return save_tagged_arrays(
        path,
        _FORMAT,
        slope=code_map.slope.numpy().astype(np.float32),
        code_norm=np.array(code_map.code_norm, dtype=np.float64),
    )


def save_identity_code_network(network: IdentityCodeNetwork, path: Path) -> str:
    """Write atomically (``utils.files.write_atomic``); returns the SHA-256."""
    state = {
        name: value.detach().cpu().numpy().astype(np.float32) for name, value in network.state_dict().items()
    }
    return save_tagged_arrays(
        path,
        _NETWORK_FORMAT,
        code_norm=np.array(network.code_norm, dtype=np.float64),
        input_scale=np.array(network.input_scale, dtype=np.float64),
        hidden=np.array(network.hidden, dtype=np.int64),
        **{f"state.{name}": value for name, value in state.items()},
    )


def load_identity_code_map(path: Path, *, sha256: str | None = None) -> IdentityCoder:
    """A fitted map or a trained network, by the file's format tag."""
    format_tag, arrays = load_tagged_arrays_of(
        path, (_FORMAT, _NETWORK_FORMAT), "an identity code map", sha256=sha256
    )
    try:
        if format_tag == _FORMAT:
            return IdentityCodeMap(torch.from_numpy(arrays["slope"]).float(), float(arrays["code_norm"]))
        state = {
            name.removeprefix("state."): torch.from_numpy(value)
            for name, value in arrays.items()
            if name.startswith("state.")
        }
        z_dim, embedding_dim = state["linear.weight"].shape
        network = IdentityCodeNetwork(
            IdentityCodeMap(torch.zeros(z_dim, embedding_dim), float(arrays["code_norm"])),
            hidden=int(arrays["hidden"]),
            input_scale=float(arrays["input_scale"]),
        )
        network.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ModelFormatError(f"{path}: not an identity code map ({error})") from error
    return network.eval().requires_grad_(False)
