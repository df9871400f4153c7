"""Training the identity-to-code network (``models.identity_code.IdentityCodeNetwork``).

The network's code makes the key's synthetic face; the protection loop starts from its blend with
the photo's latent. Training asks that start to *be* its target identity in the loss recognizer,
as the engine builds it: for a training photo and a fresh random key, the engine's target and the
subject offset its code map reads (``KeyedIdentities.subject_and_target``), the network's code
through the generator's mapping, the engine's blend with the photo's encoder latent
(``ProtectionEngine.mixed_start``), the generated face pasted into the photo's chip
(``ProtectionEngine.compositor``), one of the loop's views, the recognizer; the loss is the
distance to the target. A share of samples (``own_share``) asks for the photo's own identity,
so the network also learns the region where real faces are. The generator and recognizer are
frozen. Measured and screened: docs/decisions/2026-12-07-an-identity-code-network.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceanonymixer.engine.profiles import OptimisationConfig
from faceanonymixer.engine.protection import ProtectionEngine, view_transforms
from faceanonymixer.engine.protection_key import KEY_BYTES, ProtectionKey
from faceanonymixer.models.generator_base import LatentRole
from faceanonymixer.models.identity_code import IdentityCodeMap, IdentityCodeNetwork
from faceanonymixer.training.checkpoints import cached_for_photos, save_checkpoint
from faceanonymixer.training.identity_code import prepare_identity_faces
from faceanonymixer.utils.errors import FaceAnonyMixerError


@dataclass(frozen=True)
class CodeNetworkTraining:
    steps: int = 3000
    batch_size: int = 24
    learning_rate: float = 3e-3
    #: share of samples whose target is the photo's own identity (the rest: a random key's target)
    own_share: float = 0.2
    hidden: int = 512
    #: each sample's view also moved by a random small rotation, scale and shift, rescaled and
    #: recoloured: what a downstream recognizer's own alignment and resampling do to the face, so
    #: that the network renders identity another recognizer reads too (the screened network was
    #: trained about 2,860 steps without, then 1,500 with; the record)
    augment: bool = True
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.hidden < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size, hidden and checkpoint_every must be positive")
        if not 0.0 <= self.own_share <= 1.0 or not self.learning_rate > 0:
            raise ValueError("own_share must be between 0 and 1 and the learning rate above 0")


@dataclass(frozen=True)
class TrainingFaces:
    """Training photos as the engine prepares them, kept as compact tensors on the CPU."""

    #: (N, S, S, 3) uint8 recognizer chips
    chips: torch.Tensor
    #: (N, S, S, 2) float16 chip-to-crop grids
    grids: torch.Tensor
    #: (N, dim) the photos' own identities (the engine's ``original_views``)
    originals: torch.Tensor
    #: (N, rows, width) the encoder's latents
    reals: torch.Tensor

    def __len__(self) -> int:
        return len(self.chips)


def cached_training_faces(engine: ProtectionEngine, photos: Sequence[Path], cache: Path) -> TrainingFaces:
    """:func:`prepare_training_faces` of ``photos``, cached in ``cache``."""
    payload = cached_for_photos(cache, photos, lambda: vars(prepare_training_faces(engine, photos)))
    return TrainingFaces(**{field.name: payload[field.name] for field in fields(TrainingFaces)})


def prepare_training_faces(engine: ProtectionEngine, photos: Sequence[Path]) -> TrainingFaces:
    """The engine's view of every photo with one face; photos without one are skipped."""
    faces = prepare_identity_faces(engine, photos, "aligning, embedding and encoding faces")
    with torch.no_grad():
        reals = [engine.passes.invert(crop[None].to(engine.device))[0].cpu() for crop in faces.pixels]
    return TrainingFaces(faces.chips, faces.grids, faces.originals, torch.stack(reals))


class CodeNetworkTrainer:
    """One training run: the network, its optimiser and the step reached; resumable."""

    def __init__(
        self,
        engine: ProtectionEngine,
        faces: TrainingFaces,
        training: CodeNetworkTraining,
        config: OptimisationConfig | None = None,
    ) -> None:
        linear = engine.identities.code_map
        if not isinstance(linear, IdentityCodeMap):
            raise FaceAnonyMixerError(
                f"profile {engine.profile.profile_id!r}: training starts from a fitted linear "
                "identity code map (`faceanonymixer models fit-identity-code`)"
            )
        self.engine, self.faces, self.training = engine, faces, training
        self.config = config or engine.config
        if self.config.synthetic_identity_weight != 1.0:
            raise FaceAnonyMixerError("the network is trained for synthetic_identity_weight 1")
        torch.manual_seed(training.seed)
        self.network = IdentityCodeNetwork(linear, hidden=training.hidden)
        self.optimiser = torch.optim.Adam(self.network.parameters(), lr=training.learning_rate)
        self.step = 0
        self.draws = random.Random(training.seed)
        self.views = view_transforms(4, engine.device)
        for module in (engine.generator, engine.recognizer):
            module.requires_grad_(False)

    def distances(
        self,
        indices: Sequence[int],
        keys: Sequence[ProtectionKey | None],
        view: int = 0,
        *,
        augment: bool = False,
    ) -> torch.Tensor:
        """Each sample's distance from its start face to its target, through view ``view`` (and
        with ``augment`` a random :func:`jittered` copy); a key of None asks for the photo's own
        identity."""
        engine, faces, ids = self.engine, self.faces, self.engine.identities
        subjects, targets = [], []
        for index, key in zip(indices, keys, strict=True):
            original = faces.originals[index : index + 1].to(engine.device)
            if key is None:
                subjects.append(original - ids.centre)
                targets.append(original)
                continue
            subject, target = ids.subject_and_target(key, original, self.config)
            assert subject is not None
            subjects.append(subject)
            targets.append(target)
        picked = list(indices)
        codes = self.network.code(torch.cat(subjects).cpu()).to(engine.device)
        base, initial = engine.mixed_start(
            faces.reals[picked].to(engine.device), engine.generator.mapping(codes)
        )
        base[:, engine.generator.layout.rows(LatentRole.OPTIMISED)] = initial
        chips = faces.chips[picked].permute(0, 3, 1, 2).float().to(engine.device)
        composite = engine.compositor(chips, faces.grids[picked].float().to(engine.device))
        seen = self.views[view](composite(engine.generator.synthesize(base)))
        if augment:
            seen = jittered(seen, self.draws.choice(RESCALED_SIDES))
        embedded = engine.recognizer(seen)
        return (embedded.float() - torch.cat(targets)).norm(dim=1)

    def train_step(self) -> float:
        count = min(self.training.batch_size, len(self.faces))
        indices = self.draws.sample(range(len(self.faces)), count)
        keys = [
            None
            if self.draws.random() < self.training.own_share
            else ProtectionKey(self.draws.randbytes(KEY_BYTES))
            for _ in indices
        ]
        view = self.draws.randrange(len(self.views))
        loss = self.distances(indices, keys, view, augment=self.training.augment).mean()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.step += 1
        return float(loss.detach())

    def state(self) -> dict[str, object]:
        return {
            "network": self.network.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "step": self.step,
            "draws": self.draws.getstate(),
            "torch_rng": torch.get_rng_state(),
        }

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.network.load_state_dict(state["network"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.step = int(state["step"])
        self.draws.setstate(state["draws"])
        torch.set_rng_state(state["torch_rng"])

    def run(self, checkpoint: Path | None = None) -> IdentityCodeNetwork:
        """Train to ``training.steps``, resuming from ``checkpoint`` where it exists and saving
        it every ``checkpoint_every`` steps (an interrupted run keeps its last one)."""
        if checkpoint is not None and checkpoint.exists():
            self.resume(checkpoint)
        with tqdm(
            total=self.training.steps, initial=self.step, desc="training", unit="step", disable=None
        ) as bar:
            recent: list[float] = []
            while self.step < self.training.steps:
                recent = [*recent[-24:], self.train_step()]
                bar.update(1)
                bar.set_postfix(distance=f"{sum(recent) / len(recent):.3f}")
                if checkpoint is not None and self.step % self.training.checkpoint_every == 0:
                    save_checkpoint(self.state(), checkpoint)
        if checkpoint is not None:
            save_checkpoint(self.state(), checkpoint)
        return self.network.eval().requires_grad_(False)


#: sides a jittered chip is resampled through (150: the chip's own; smaller: a lower resolution)
RESCALED_SIDES = (150, 112, 96, 80)


def jittered(chips: torch.Tensor, side: int) -> torch.Tensor:
    """``chips`` (N, 3, S, S) in [0, 255], each turned by up to 5 degrees, scaled by up to 5% and
    shifted by up to 3% (torch's global generator), resampled through ``side`` pixels and given
    a random gain (12%) and offset (12 grey levels)."""
    count = len(chips)
    angle = (torch.rand(count) * 2 - 1) * math.radians(5.0)
    scale = 1 + (torch.rand(count) * 2 - 1) * 0.05
    shift = (torch.rand(count, 2) * 2 - 1) * 0.03
    rows = [
        torch.stack([angle.cos() / scale, -angle.sin() / scale, shift[:, 0]], dim=1),
        torch.stack([angle.sin() / scale, angle.cos() / scale, shift[:, 1]], dim=1),
    ]
    matrix = torch.stack(rows, dim=1).to(chips)
    grid = F.affine_grid(matrix, list(chips.shape), align_corners=False)
    moved = F.grid_sample(chips, grid, align_corners=False, padding_mode="border")
    if side != chips.shape[-1]:
        smaller = F.interpolate(moved, size=side, mode="bilinear", antialias=True, align_corners=False)
        moved = F.interpolate(smaller, size=chips.shape[-1], mode="bilinear", align_corners=False)
    gain = (1 + (torch.rand(count, 1, 1, 1) * 2 - 1) * 0.12).to(chips)
    offset = ((torch.rand(count, 1, 1, 1) * 2 - 1) * 12.0).to(chips)
    return (moved * gain + offset).clamp(0, 255)
