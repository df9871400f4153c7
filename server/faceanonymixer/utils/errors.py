"""Typed errors of the engine. Each maps to one row of the error table in docs/errors.md.

Each subclasses the client SDK's error of the same row (``faceanonymixer_client.errors``), so
``except KeyRevokedError`` from the SDK catches a local engine's refusal and a server's alike.
"""

from __future__ import annotations

from faceanonymixer_client import errors as sdk


class FaceAnonyMixerError(sdk.FaceAnonyMixerError):
    """Base class of every error the engine raises on purpose."""

    #: exit code of the CLI for this kind of error
    exit_code: int = 1


class InvalidImageError(FaceAnonyMixerError, sdk.InvalidImageError):
    """Not an image, an unsupported or truncated file, a decompression bomb, or too small/large."""

    exit_code = 2

    def __init__(self, message: str, *, field: str = "image") -> None:
        super().__init__(message)
        #: the request field at fault (for gRPC BadRequest field violations)
        self.field = field


class FacePolicyError(FaceAnonyMixerError, sdk.FacePolicyError):
    """The image is valid but the face policy cannot be met (no face, or several)."""

    exit_code = 3


class NoFaceError(FacePolicyError, sdk.NoFaceError):
    """No face was found in the image."""


class MultipleFacesError(FacePolicyError, sdk.MultipleFacesError):
    """Several faces were found and the policy asks for exactly one."""

    def __init__(self, message: str, *, count: int) -> None:
        super().__init__(message)
        self.count = count


class ModelFormatError(FaceAnonyMixerError, ValueError):
    """A weights file is not in the format its loader expects (truncated, wrong layer, bad version)."""


class ModelLoadError(FaceAnonyMixerError):
    """The models of a profile could not be loaded (missing weights, no such device, out of memory)."""


class InvalidKeyError(FaceAnonyMixerError, ValueError):
    """Key material that is not 32 bytes, an unreadable key file, or a bad version."""

    exit_code = 4


class ProtectionCancelledError(FaceAnonyMixerError, sdk.CancelledError):
    """The caller cancelled the protection (or its deadline passed); nothing was produced."""


class InvalidRequestError(FaceAnonyMixerError, sdk.InvalidArgumentError):
    """A request field other than the image is malformed (a page token, a size, an empty list)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        #: the request field at fault (for gRPC BadRequest field violations)
        self.field = field


class KeyNotFoundError(FaceAnonyMixerError, sdk.KeyNotFoundError):
    """No key with this id exists in the caller's tenant."""

    exit_code = 4


class KeyRevokedError(FaceAnonyMixerError, sdk.KeyRevokedError):
    """The key version was revoked; it refuses all use."""

    exit_code = 4


class ProfileMismatchError(FaceAnonyMixerError, sdk.ProfileMismatchError):
    """The key is bound to another model profile: faces enrolled with it were protected with
    other models or settings, and would silently stop matching."""

    exit_code = 4


class KeyAccessDeniedError(FaceAnonyMixerError, sdk.PermissionDeniedError):
    """The key id was not issued to the caller's tenant. Says nothing about whether it exists."""

    exit_code = 5


class KeyStoreError(FaceAnonyMixerError):
    """The key store cannot be opened or used: bad URL, missing or malformed key-encryption key,
    a schema it cannot migrate, an unreachable database."""


class WrongKeyEncryptionKeyError(KeyStoreError):
    """The key-encryption key given does not open this key store."""
