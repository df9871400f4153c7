"""Fine-tune the embedded DCGAN on real faces: ``faceanonymixer models train-generator``.

The DigiFace DCGAN draws synthetic renderings that recognizers find alike; the engine then pulls
every protected face from that narrow region. Fine-tuning it adversarially on real faces
(``lfw_train`` aligned to the generator's landmark template, never the evaluation sets) moves its
output distribution onto real faces of thousands of people, and training the encoder with it keeps
real photos invertible into the new latent space. Three networks, every step:

* discriminator D (a plain DCGAN critic, no normalisation): logistic loss on real crops against
  samples G(z) and reconstructions G(E(x)), with a lazy R1 penalty on real crops (stable
  fine-tuning without batch statistics);
* generator G (from the DigiFace weights; batch norm kept on its running statistics, so the
  trained network behaves the same in eval mode): fool D with samples and with reconstructions,
  plus the pixel loss of reconstructions;
* encoder E (from the committed embedded encoder): the pixel loss of reconstructions of real
  crops and the regression of the code of samples (E(G(z)) ~ z).

With ``identity_weight`` > 0, G and E also learn to render each real crop's *identity*
(:class:`IdentityTerm`): its reconstruction, pasted into the photo's recognizer chip as the
protection loop pastes a generated face and jittered, must read as the photo in the frozen loss
recognizer. Pixels alone let the reconstructions of different people merge, most for those least
like the training faces (docs/decisions/2026-12-07-where-shared-key-faces-become-alike.md). Through
the DCGAN's 100-d code alone the term made them merge more, toward the typical face of each group;
it is meant for a generator that takes the identity as an input
(docs/decisions/2026-12-08-a-generator-that-renders-a-given-identity.md).

The landmark template stays valid by construction: the real crops are cut onto it. Deterministic
for a seed (CPU, fixed thread count), resumable from its checkpoint (every network, optimiser and
the sampler), with a progress bar of the losses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.faces.imageio import write_png_atomic
from faceanonymixer.models.dcgan import IMAGE_SIZE, Z_DIM, DigiFaceDCGAN
from faceanonymixer.models.generator_base import Generator
from faceanonymixer.models.latent_encoder import LatentEncoder
from faceanonymixer.training.checkpoints import cached_for_photos, photo_names, save_checkpoint
from faceanonymixer.training.encoder import TrainingFaces, aligned_training_faces
from faceanonymixer.training.identity_code import IdentityFaces, prepare_identity_faces
from faceanonymixer.training.identity_code_network import RESCALED_SIDES, jittered
from faceanonymixer.utils.files import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorTraining:
    steps: int = 3000
    batch_size: int = 16
    generator_lr: float = 1e-4
    discriminator_lr: float = 1e-4
    encoder_lr: float = 1e-4
    #: weight of the pixel (L1) loss of reconstructed real crops, for the generator and the encoder
    reconstruction_weight: float = 5.0
    #: weight of the code regression E(G(z)) ~ z
    latent_weight: float = 1.0
    #: R1 penalty on real crops, applied every ``r1_every`` steps (scaled to match)
    r1_gamma: float = 1.0
    r1_every: int = 8
    #: weight of the loss recognizer's distance from each reconstructed real crop to its photo
    #: (:class:`IdentityTerm`); 0 trains on pixels alone, as the committed generator was
    identity_weight: float = 0.0
    #: how many of each batch's real crops the identity term reads (the recognizer is the cost)
    identity_batch: int = 8
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.identity_weight < 0 or self.identity_batch < 1:
            raise ValueError("identity_weight must be 0 or more and identity_batch positive")


class Critic(nn.Module):
    """64 px RGB in [-1, 1] -> one logit per image: DCGAN's discriminator without batch norm."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out_channels in (width, width * 2, width * 4, width * 8):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(channels, out_channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.main(image).flatten()


def cached_identity_faces(engine: ProtectionEngine, photos: Sequence[Path], cache: Path) -> IdentityFaces:
    """:func:`prepare_identity_faces` of ``photos``, cached in ``cache``."""

    def prepared() -> dict[str, Any]:
        faces = prepare_identity_faces(engine, photos)
        return {**vars(faces), "paths": photo_names(faces.paths)}

    payload = cached_for_photos(cache, photos, prepared)
    by_name = dict(zip(photo_names(photos), photos, strict=True))
    arrays = {field.name: payload[field.name] for field in fields(IdentityFaces) if field.name != "paths"}
    return IdentityFaces(**arrays, paths=[by_name[name] for name in payload["paths"]])


class IdentityTerm:
    """The loss recognizer's distance from reconstructed real crops to their photos' identities,
    seen as the protection loop sees a generated face: pasted into the photo's recognizer chip
    with the engine's feathered mask (``ProtectionEngine.compositor``), then moved, rescaled and
    recoloured at random (``jittered``, so that what is learnt is identity another recognizer
    reads too, not one network's reading of exact pixels). The recognizer is frozen."""

    def __init__(self, engine: ProtectionEngine, faces: IdentityFaces) -> None:
        self.engine, self.faces = engine, faces
        engine.recognizer.requires_grad_(False)

    def distances(
        self, reconstructions: torch.Tensor, picks: torch.Tensor, flipped: torch.Tensor
    ) -> torch.Tensor:
        """(N,) distances for reconstructions (N, 3, S, S) of the crops ``picks``, mirrored where
        ``flipped`` (they are mirrored back onto their chips)."""
        device = self.engine.device
        faces = torch.where(flipped[:, None, None, None], reconstructions.flip(-1), reconstructions)
        chips = self.faces.chips[picks].permute(0, 3, 1, 2).float().to(device)
        composite = self.engine.compositor(chips, self.faces.grids[picks].float().to(device))
        side = RESCALED_SIDES[int(torch.randint(len(RESCALED_SIDES), ()))]
        embedded = self.engine.recognizer(jittered(composite(faces.to(device)), side)).float()
        return (embedded - self.faces.originals[picks].to(device)).norm(dim=1).cpu()


@dataclass
class GeneratorTrainingState:
    generator: DigiFaceDCGAN
    encoder: LatentEncoder
    critic: Critic
    step: int = 0


def train_generator(
    generator: DigiFaceDCGAN,
    encoder: LatentEncoder,
    real_faces: torch.Tensor,
    *,
    config: GeneratorTraining = GeneratorTraining(),
    checkpoint: Path | None = None,
    stop_at: int | None = None,
    identity: IdentityTerm | None = None,
) -> GeneratorTrainingState:
    """Fine-tune ``generator`` and ``encoder`` (in place) on ``real_faces`` (N, 3, 64, 64) in
    [-1, 1]; resume from ``checkpoint`` when it exists and save it every ``checkpoint_every`` steps.
    ``stop_at`` ends this run early (a later run continues from the checkpoint). ``identity`` is
    the identity term over the same faces, in the same order (needed when ``identity_weight`` > 0)."""
    if real_faces.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"real faces must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), not {tuple(real_faces.shape)}"
        )
    if config.identity_weight and (identity is None or len(identity.faces.pixels) != len(real_faces)):
        raise ValueError("identity_weight > 0 needs the identity term over the same real faces")
    torch.manual_seed(config.seed)
    critic = Critic()
    # batch norm on its running statistics throughout: eval mode, but every weight trains
    generator.eval().requires_grad_(True)
    encoder.train().requires_grad_(True)
    betas = (0.5, 0.99)
    optimisers: dict[str, torch.optim.Optimizer] = {
        "generator": torch.optim.Adam(generator.parameters(), lr=config.generator_lr, betas=betas),
        "encoder": torch.optim.Adam(encoder.parameters(), lr=config.encoder_lr, betas=betas),
        "critic": torch.optim.Adam(critic.parameters(), lr=config.discriminator_lr, betas=betas),
    }
    sampler = torch.Generator().manual_seed(config.seed)
    state = GeneratorTrainingState(generator, encoder, critic)
    if checkpoint is not None and checkpoint.exists():
        _load_checkpoint(checkpoint, state, optimisers, sampler, config)
        log.info("resuming generator training at step %d", state.step)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    progress = tqdm(range(state.step, end), initial=state.step, total=config.steps, desc="train-generator")
    for step in progress:
        losses = _train_step(state, optimisers, real_faces, sampler, config, step, identity)
        progress.set_postfix({name: f"{value:.3f}" for name, value in losses.items()})
        state.step = step + 1
        if checkpoint is not None and (state.step % config.checkpoint_every == 0 or state.step == end):
            _save_checkpoint(checkpoint, state, optimisers, sampler, config)
    generator.eval().requires_grad_(False)
    encoder.eval().requires_grad_(False)
    return state


def _train_step(
    state: GeneratorTrainingState,
    optimisers: dict[str, torch.optim.Optimizer],
    real_faces: torch.Tensor,
    sampler: torch.Generator,
    config: GeneratorTraining,
    step: int,
    identity: IdentityTerm | None = None,
) -> dict[str, float]:
    generator, encoder, critic = state.generator, state.encoder, state.critic
    size = config.batch_size
    picks = torch.randint(len(real_faces), (size,), generator=sampler)
    flips = torch.rand(size, generator=sampler) < 0.5
    real = real_faces[picks]
    real = torch.where(flips[:, None, None, None], real.flip(-1), real)
    z = torch.randn(size, Z_DIM, generator=sampler)

    # critic: real crops against samples and reconstructions
    with torch.no_grad():
        fakes = torch.cat([generator(z), generator(encoder(real).flatten(1))])
    real.requires_grad_(step % config.r1_every == 0)
    real_logits = critic(real)
    critic_loss = F.softplus(-real_logits).mean() + F.softplus(critic(fakes)).mean()
    if real.requires_grad:
        (gradient,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        r1 = gradient.square().flatten(1).sum(1).mean()
        critic_loss = critic_loss + 0.5 * config.r1_gamma * config.r1_every * r1
    optimisers["critic"].zero_grad(set_to_none=True)
    critic_loss.backward()
    optimisers["critic"].step()
    real = real.detach()

    # generator and encoder: fool the critic, reconstruct real crops, recover the codes of samples
    critic.requires_grad_(False)
    samples = generator(z)
    reconstructions = generator(encoder(real).flatten(1))
    adversarial = F.softplus(-critic(torch.cat([samples, reconstructions]))).mean()
    reconstruction = F.l1_loss(reconstructions, real)
    latent = F.mse_loss(encoder(samples.detach()).flatten(1), z)
    loss = adversarial + config.reconstruction_weight * reconstruction + config.latent_weight * latent
    read = {}
    if identity is not None and config.identity_weight:
        count = min(config.identity_batch, size)
        distance = identity.distances(reconstructions[:count], picks[:count], flips[:count]).mean()
        loss = loss + config.identity_weight * distance
        read["identity"] = distance.item()
    optimisers["generator"].zero_grad(set_to_none=True)
    optimisers["encoder"].zero_grad(set_to_none=True)
    loss.backward()
    optimisers["generator"].step()
    optimisers["encoder"].step()
    critic.requires_grad_(True)
    return {
        "critic": critic_loss.item(),
        "adversarial": adversarial.item(),
        "pixel": reconstruction.item(),
        "latent": latent.item(),
        **read,
    }


def _save_checkpoint(
    path: Path,
    state: GeneratorTrainingState,
    optimisers: dict[str, torch.optim.Optimizer],
    sampler: torch.Generator,
    config: GeneratorTraining,
) -> None:
    payload = {
        "config": asdict(config),
        "step": state.step,
        "generator": state.generator.state_dict(),
        "encoder": state.encoder.state_dict(),
        "critic": state.critic.state_dict(),
        "optimisers": {name: optimiser.state_dict() for name, optimiser in optimisers.items()},
        "sampler": sampler.get_state(),
        # the identity term's jitter draws from torch's global generator
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(payload, path)


def _load_checkpoint(
    path: Path,
    state: GeneratorTrainingState,
    optimisers: dict[str, torch.optim.Optimizer],
    sampler: torch.Generator,
    config: GeneratorTraining,
) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if _resumable(payload["config"]) != _resumable(asdict(config)):
        raise ValueError(f"{path} was written with other training settings: {payload['config']}")
    state.generator.load_state_dict(payload["generator"])
    state.encoder.load_state_dict(payload["encoder"])
    state.critic.load_state_dict(payload["critic"])
    for name, optimiser in optimisers.items():
        optimiser.load_state_dict(payload["optimisers"][name])
    sampler.set_state(payload["sampler"])
    if "torch_rng" in payload:  # checkpoints written before the identity term have none
        torch.set_rng_state(payload["torch_rng"])
    state.step = payload["step"]


def _resumable(settings: dict[str, object]) -> dict[str, object]:
    """The settings a continued run must share: all but how long it runs and how often it saves."""
    return {name: value for name, value in settings.items() if name not in ("steps", "checkpoint_every")}


def cached_training_faces(photos: Sequence[Path], generator: Generator, cache: Path) -> TrainingFaces:
    """Aligned crops of ``photos`` (those that align), cached in ``cache``."""

    def aligned() -> dict[str, Any]:
        faces = aligned_training_faces(photos, generator)
        return {"pixels": faces.pixels, "photos": photo_names(faces.paths)}

    payload = cached_for_photos(cache, photos, aligned)
    by_name = dict(zip(photo_names(photos), photos, strict=True))
    return TrainingFaces(payload["pixels"], [by_name[name] for name in payload["photos"]])


def write_training_record(
    state: GeneratorTrainingState, faces: TrainingFaces, out_dir: Path, stem: str
) -> tuple[Path, Path]:
    """What was trained on and what came out: ``<stem>_photos.txt`` (the photos as
    ``<set>/<identity>/<image>``) and ``<stem>_samples.png`` (two rows of samples from seed 0,
    then real crops over their reconstructions G(E(x)))."""
    photos = out_dir / f"{stem}_photos.txt"
    write_atomic(photos, "".join(f"{name}\n" for name in photo_names(faces.paths)).encode())
    columns = 12
    with torch.no_grad():
        z = torch.randn(2 * columns, Z_DIM, generator=torch.Generator().manual_seed(0))
        samples = state.generator(z)
        real = faces.pixels[torch.linspace(0, len(faces.pixels) - 1, columns).long()]
        reconstructions = state.generator(state.encoder(real).flatten(1))
    rows = [samples[:columns], samples[columns:], real, reconstructions]
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
    pixels = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return photos, write_png_atomic(out_dir / f"{stem}_samples.png", np.ascontiguousarray(pixels))
