"""Protection keys and what the engine derives from them.

Key material is 32 random bytes. It is never used as a seed itself: HKDF-SHA256 (RFC 5869)
expands it, with ``info`` = profile id + key version + purpose, into independent 64-bit seeds for
``torch.Generator``s (one per purpose: the synthetic latent, the identity target map). The same
key, profile and version give the same seeds, and so the same latents, on every machine; another
version (a re-issued key) or another profile gives unrelated ones.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceanonymixer.utils.errors import InvalidKeyError

KEY_BYTES = 32
_INFO_PREFIX = b"faceanonymixer/v1"


@dataclass(frozen=True)
class ProtectionKey:
    """A key handle: secret material plus the version it was issued as."""

    material: bytes = field(repr=False)
    version: int = 1
    key_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.material, bytes) or len(self.material) != KEY_BYTES:
            raise InvalidKeyError(f"key material must be exactly {KEY_BYTES} bytes")
        if self.version < 1:
            raise InvalidKeyError(f"key version must be 1 or more, not {self.version}")

    @classmethod
    def generate(cls, *, key_id: str | None = None) -> ProtectionKey:
        return cls(secrets.token_bytes(KEY_BYTES), key_id=key_id)

    @classmethod
    def from_file(cls, path: str | Path, *, version: int = 1) -> ProtectionKey:
        """A file holding exactly 32 raw bytes (``head -c 32 /dev/urandom > key.bin``)."""
        path = Path(path)
        try:
            material = path.read_bytes()
        except OSError as error:
            raise InvalidKeyError(f"{path}: cannot read the key file ({error.strerror})") from error
        if len(material) != KEY_BYTES:
            raise InvalidKeyError(
                f"{path}: a key file holds exactly {KEY_BYTES} raw bytes, not {len(material)}"
            )
        return cls(material, version=version, key_id=path.stem)


def derive_seed(key: ProtectionKey, profile_id: str, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` under ``profile_id``; HKDF-SHA256, no salt (the key is uniform)."""
    info = b"|".join([_INFO_PREFIX, profile_id.encode(), str(key.version).encode(), purpose.encode()])
    okm = HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=info).derive(key.material)
    return int.from_bytes(okm, "big") >> 1


def key_generator(key: ProtectionKey, profile_id: str, purpose: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for ``purpose``; CPU so that draws match across devices."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(key, profile_id, purpose))


def as_key(key: ProtectionKey | bytes) -> ProtectionKey:
    return key if isinstance(key, ProtectionKey) else ProtectionKey(key)
