"""Train the embedded profile's latent encoder: ``faceanonymixer models train-encoder``.

Two kinds of batches, every step:

The encoder predicts the Gaussian code z (the engine maps it into the layout's latent space):

* generator samples (z ~ N(0, I), x = G(z)): regression ||E(x) - z||^2 plus the pixel loss
  |G(E(x)) - x|, so that the encoder inverts the generator on its own domain;
* real faces from ``lfw_train`` aligned to the generator's landmark template (never the evaluation
  sets): pixel loss |G(E(x)) - x| alone, since their latents are unknown. Without them the encoder
  sees only synthetic DigiFace renderings and lands far from real photos.

Deterministic for a seed (CPU, fixed thread count), resumable from its checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceanonymixer.faces.alignment import FaceAligner, crop_to_template
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.faces.imageio import load_image
from faceanonymixer.models.generator_base import Generator
from faceanonymixer.models.latent_encoder import LatentEncoder, save_latent_encoder
from faceanonymixer.training.checkpoints import save_checkpoint
from faceanonymixer.utils.errors import FaceAnonyMixerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderTraining:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    pixel_weight: float = 1.0
    latent_weight: float = 1.0
    #: at most this many real training photos are aligned (the first ones, sorted by identity)
    max_real_photos: int = 4000
    seed: int = 0
    checkpoint_every: int = 250


@dataclass(frozen=True)
class TrainingFaces:
    #: (N, 3, S, S) in [-1, 1], cut onto the generator's landmark template
    pixels: torch.Tensor
    #: the photo each crop was cut from, in the same order (photos without a face are left out)
    paths: list[Path]


def aligned_training_faces(
    photos: Sequence[Path], generator: Generator, *, aligner: FaceAligner | None = None
) -> TrainingFaces:
    """The ``photos`` that align (``datasets.training_photos`` picks them), cut onto the generator's
    landmark template."""
    aligner = aligner or FaceAligner()
    crops, used = [], []
    for path in tqdm(photos, desc="aligning training faces", unit="photo"):
        try:
            pixels = load_image(path)
            aligned = aligner.align(pixels)
        except FaceAnonyMixerError:
            continue
        crop, _ = crop_to_template(
            pixels, aligned.landmarks, generator.require_landmark_template(), generator.image_size
        )
        crops.append(crop)
        used.append(path)
    if not crops:
        raise FaceAnonyMixerError("no face could be aligned in the training photos")
    return TrainingFaces(chips_to_tensor(crops) / 127.5 - 1.0, used)


def train_encoder(
    generator: Generator,
    real_faces: torch.Tensor,
    out: Path,
    *,
    config: EncoderTraining = EncoderTraining(),
    checkpoint: Path | None = None,
) -> str:
    """Train (or resume from ``checkpoint``) and write the weights to ``out``; returns their SHA-256."""
    torch.manual_seed(config.seed)
    encoder = LatentEncoder(rows=1, width=generator.z_dim, image_size=generator.image_size)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=config.learning_rate)
    sampler = torch.Generator().manual_seed(config.seed)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        encoder.load_state_dict(state["encoder"])
        optimiser.load_state_dict(state["optimiser"])
        sampler.set_state(state["sampler"])
        start = state["step"]
        log.info("resuming encoder training at step %d", start)
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-encoder")
    for step in progress:
        z = torch.randn(config.batch_size, generator.z_dim, generator=sampler)
        with torch.no_grad():
            synthetic = generator.synthesize(generator.mapping(z))
        picks = torch.randint(len(real_faces), (config.batch_size,), generator=sampler)
        real = real_faces[picks]
        flips = torch.rand(config.batch_size, generator=sampler) < 0.5
        real = torch.where(flips[:, None, None, None], real.flip(-1), real)

        predicted = encoder(torch.cat([synthetic, real])).flatten(1)
        reconstructed = generator.synthesize(generator.mapping(predicted))
        latent_loss = F.mse_loss(predicted[: config.batch_size], z)
        pixel_loss = F.l1_loss(reconstructed, torch.cat([synthetic, real]))
        loss = config.latent_weight * latent_loss + config.pixel_weight * pixel_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        progress.set_postfix(latent=f"{latent_loss.item():.3f}", pixel=f"{pixel_loss.item():.3f}")
        done = step + 1
        if checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            state = {
                "encoder": encoder.state_dict(),
                "optimiser": optimiser.state_dict(),
                "sampler": sampler.get_state(),
                "step": done,
            }
            save_checkpoint(state, checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_latent_encoder(encoder.eval(), out)
