"""Typed errors of the engine. Each maps to one row of the error table in ARCHITECTURE.md."""

from __future__ import annotations


class FaceAnonyMixerError(Exception):
    """Base class of every error the engine raises on purpose."""

    #: exit code of the CLI for this kind of error
    exit_code: int = 1


class InvalidImageError(FaceAnonyMixerError, ValueError):
    """Not an image, an unsupported or truncated file, a decompression bomb, or too small/large."""

    exit_code = 2

    def __init__(self, message: str, *, field: str = "image") -> None:
        super().__init__(message)
        #: the request field at fault (for gRPC BadRequest field violations)
        self.field = field


class FacePolicyError(FaceAnonyMixerError):
    """The image is valid but the face policy cannot be met (no face, or several)."""

    exit_code = 3


class NoFaceError(FacePolicyError):
    """No face was found in the image."""


class MultipleFacesError(FacePolicyError):
    """Several faces were found and the policy asks for exactly one."""

    def __init__(self, message: str, *, count: int) -> None:
        super().__init__(message)
        self.count = count


class ModelFormatError(FaceAnonyMixerError, ValueError):
    """A weights file is not in the format its loader expects (truncated, wrong layer, bad version)."""


class InvalidKeyError(FaceAnonyMixerError, ValueError):
    """Key material that is not 32 bytes, an unreadable key file, or a bad version."""

    exit_code = 4


class ProtectionCancelledError(FaceAnonyMixerError):
    """The caller cancelled the protection (or its deadline passed); nothing was produced."""


class InvalidRequestError(FaceAnonyMixerError, ValueError):
    """A request field other than the image is malformed (a page token, a size, an empty list)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        #: the request field at fault (for gRPC BadRequest field violations)
        self.field = field


class KeyNotFoundError(FaceAnonyMixerError, LookupError):
    """No key with this id exists in the caller's tenant."""

    exit_code = 4


class KeyRevokedError(FaceAnonyMixerError):
    """The key version was revoked; it refuses all use."""

    exit_code = 4


class KeyAccessDeniedError(FaceAnonyMixerError, PermissionError):
    """The key id was not issued to the caller's tenant. Says nothing about whether it exists."""

    exit_code = 5


class KeyStoreError(FaceAnonyMixerError):
    """The key store cannot be opened or used: bad URL, missing or malformed key-encryption key,
    a schema it cannot migrate, an unreachable database."""


class WrongKeyEncryptionKeyError(KeyStoreError):
    """The key-encryption key given does not open this key store."""
