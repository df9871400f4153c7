"""The key-encryption keys (KEKs) that wrap every protection key at rest, and the keyring of them.

Key material is stored only as AES-256-GCM ciphertext under a KEK, with associated data that
binds it to its tenant, key id and version, so that a wrapped blob copied to another row fails to
open. The store's own secrets (the key-id tag key, the integrity keys) are sealed under the KEK
the same way. Each KEK has a public id (:attr:`KeyEncryptionKey.kek_id`, an HMAC of a constant
under it) recorded beside whatever it wraps, so a :class:`KeyRing` of several KEKs opens a store in
the middle of a rotation.

A KEK file writable by other users is refused; one readable by other users is accepted with a
loud warning (``chmod 600`` it); group access (a Kubernetes secret with ``fsGroup``) is fine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from faceanonymixer.utils.errors import KeyStoreError

log = logging.getLogger("faceanonymixer.keystore")

KEK_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ENV_KEK_FILE = "FACEANONYMIXER_KEK_FILE"
ENV_KEK = "FACEANONYMIXER_KEK"
#: more KEK files (``os.pathsep``-separated) the keyring holds besides the current one
ENV_ADDITIONAL_KEK_FILES = "FACEANONYMIXER_ADDITIONAL_KEK_FILES"

_PREFIX = b"faceanonymixer/v1"
_MATERIAL_AAD = _PREFIX + b"|key-material"
_CHECK_AAD = _PREFIX + b"|store-meta|kek-check"
_CHECK_PLAINTEXT = b"faceanonymixer/v1 key store: the key-encryption key opens this store"
_TAG_KEY_INFO = _PREFIX + b"|key-id-tag"
_KEK_ID_INFO = _PREFIX + b"|kek-id"
_SEALED_AAD = _PREFIX + b"|store-meta|"
_HOW_TO_MAKE_ONE = (
    f"make one with `head -c 32 /dev/urandom > kek.bin` and set {ENV_KEK_FILE}=/path/to/kek.bin"
)


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def material_aad(*, tenant: str, key_id: str, version: int) -> bytes:
    """Associated data of one wrapped key: length-prefixed fields, so no two triples collide."""
    if version < 1:
        raise ValueError(f"key version must be 1 or more, not {version}")
    return (
        _MATERIAL_AAD
        + _field(tenant.encode("utf-8"))
        + _field(key_id.encode("utf-8"))
        + struct.pack(">Q", version)
    )


class KeyEncryptionKey:
    """32 secret bytes. Its repr never shows them, and it cannot be pickled."""

    __slots__ = ("__key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEK_BYTES:
            size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
            raise KeyStoreError(f"a key-encryption key is exactly {KEK_BYTES} bytes, not {size}")
        self.__key = key

    def __repr__(self) -> str:
        return "KeyEncryptionKey(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a KeyEncryptionKey cannot be pickled")

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(os.urandom(KEK_BYTES))

    @property
    def kek_id(self) -> str:
        """A public name of this KEK (16 hex characters): what a wrapped value records."""
        return hmac.new(self.__key, _KEK_ID_INFO, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path) -> KeyEncryptionKey:
        """A file of exactly 32 raw bytes, not writable by other users (readable: a warning)."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise KeyStoreError(f"{path}: cannot read the key-encryption key file ({reason})") from None
        if mode & stat.S_IWOTH:  # anyone could swap the KEK: new keys would be wrapped under theirs
            raise KeyStoreError(
                f"{path}: the key-encryption key file is writable by other users "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        if mode & (stat.S_IROTH | stat.S_IXOTH):
            log.warning(
                "WARNING: %s: the key-encryption key file is readable by other users (mode %04o): "
                "anyone on this host who copies it and the key store has every key; run `chmod 600 %s`",
                path,
                stat.S_IMODE(mode),
                path,
            )
        if len(data) != KEK_BYTES:
            raise KeyStoreError(
                f"{path}: a key-encryption key file holds exactly {KEK_BYTES} raw bytes, not {len(data)}; "
                + _HOW_TO_MAKE_ONE
            )
        return cls(data)

    @classmethod
    def from_base64(cls, text: str) -> KeyEncryptionKey:
        try:
            data = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyStoreError(f"{ENV_KEK} is not valid base64; " + _HOW_TO_MAKE_ONE) from None
        if len(data) != KEK_BYTES:
            raise KeyStoreError(
                f"{ENV_KEK} must hold the base64 of exactly {KEK_BYTES} bytes, not {len(data)}; "
                + _HOW_TO_MAKE_ONE
            )
        return cls(data)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> KeyEncryptionKey:
        """From ``FACEANONYMIXER_KEK_FILE`` (a 32-byte file) or ``FACEANONYMIXER_KEK`` (base64)."""
        path = environ.get(ENV_KEK_FILE, "")
        text = environ.get(ENV_KEK, "")
        if path and text:
            raise KeyStoreError(f"set only one of {ENV_KEK_FILE} and {ENV_KEK}, not both")
        if path:
            return cls.from_file(path)
        if text:
            return cls.from_base64(text)
        raise KeyStoreError(
            f"no key-encryption key: {ENV_KEK_FILE} and {ENV_KEK} are unset; " + _HOW_TO_MAKE_ONE
        )

    # -- key material -----------------------------------------------------------------------------

    def wrap(self, material: bytes, *, tenant: str, key_id: str, version: int) -> bytes:
        """nonce (12 bytes) + AES-256-GCM ciphertext and tag, bound to (tenant, key_id, version)."""
        nonce = os.urandom(NONCE_BYTES)
        aad = material_aad(tenant=tenant, key_id=key_id, version=version)
        return nonce + AESGCM(self.__key).encrypt(nonce, material, aad)

    def unwrap(self, blob: bytes, *, tenant: str, key_id: str, version: int) -> bytes:
        aad = material_aad(tenant=tenant, key_id=key_id, version=version)
        plaintext = self._open(blob, aad)
        if plaintext is None:
            raise KeyStoreError(
                f"key material of {key_id} failed authentication (a different key-encryption key, "
                "or the stored record was altered or moved)"
            )
        return plaintext

    # -- the store's check value ------------------------------------------------------------------

    def seal(self, secret: bytes, *, name: str) -> bytes:
        """nonce + AES-256-GCM ciphertext of one of the store's own secrets, bound to its ``name``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.__key).encrypt(nonce, secret, _SEALED_AAD + name.encode("utf-8"))

    def unseal(self, blob: bytes, *, name: str) -> bytes:
        plaintext = self._open(blob, _SEALED_AAD + name.encode("utf-8"))
        if plaintext is None:
            raise KeyStoreError(
                f"the key store's {name} failed authentication (a different key-encryption key, "
                "or the stored value was altered)"
            )
        return plaintext

    def make_check(self) -> bytes:
        """A value only this KEK opens; the store keeps it to refuse a wrong KEK at open."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.__key).encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AAD)

    def opens_check(self, blob: bytes) -> bool:
        return self._open(blob, _CHECK_AAD) == _CHECK_PLAINTEXT

    # -- derived keys -----------------------------------------------------------------------------

    def key_id_tag_key(self) -> bytes:
        """The HMAC key that tags key ids with their tenant (HKDF-SHA256, no salt).

        A store derives it once, from the KEK it was created under, and keeps it sealed: key ids
        do not change when the KEK is rotated."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_TAG_KEY_INFO).derive(self.__key)

    def _open(self, blob: bytes, aad: bytes) -> bytes | None:
        if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
            return None
        try:
            return AESGCM(self.__key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            return None


class KeyRing:
    """The KEKs a process holds, by :attr:`KeyEncryptionKey.kek_id`; the first is the current one.

    A store records which KEK wraps each value and which is its current one; a process opens it
    while its keyring holds that KEK, and reads values wrapped under any KEK of the ring. During
    a rotation every replica holds both the old and the new KEK (``docs/security.md``).
    """

    __slots__ = ("_keks",)

    def __init__(self, keks: Sequence[KeyEncryptionKey]) -> None:
        if not keks:
            raise KeyStoreError("a keyring needs at least one key-encryption key")
        self._keks: dict[str, KeyEncryptionKey] = {}
        for kek in keks:
            if not isinstance(kek, KeyEncryptionKey):
                raise KeyStoreError("a keyring holds KeyEncryptionKey objects")
            self._keks.setdefault(kek.kek_id, kek)

    def __repr__(self) -> str:
        return f"KeyRing({', '.join(self._keks)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a KeyRing cannot be pickled")

    def __iter__(self) -> Iterator[KeyEncryptionKey]:
        return iter(self._keks.values())

    def __len__(self) -> int:
        return len(self._keks)

    @property
    def primary(self) -> KeyEncryptionKey:
        """The KEK a new store is created under."""
        return next(iter(self._keks.values()))

    @property
    def kek_ids(self) -> list[str]:
        return list(self._keks)

    def get(self, kek_id: str | None) -> KeyEncryptionKey | None:
        return None if kek_id is None else self._keks.get(kek_id)

    def with_kek(self, kek: KeyEncryptionKey) -> KeyRing:
        return KeyRing([*self._keks.values(), kek])

    @classmethod
    def of(cls, keks: KeyEncryptionKey | KeyRing) -> KeyRing:
        return keks if isinstance(keks, KeyRing) else cls([keks])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> KeyRing:
        """The current KEK (``FACEANONYMIXER_KEK_FILE`` or ``FACEANONYMIXER_KEK``) and the files of
        ``FACEANONYMIXER_ADDITIONAL_KEK_FILES`` (``os.pathsep``-separated)."""
        return cls.with_additional_from_env(KeyEncryptionKey.from_env(environ), environ)

    @classmethod
    def with_additional_from_env(
        cls, current: KeyEncryptionKey | KeyRing, environ: Mapping[str, str] = os.environ
    ) -> KeyRing:
        """``current`` and the KEK files of ``FACEANONYMIXER_ADDITIONAL_KEK_FILES``."""
        extra = [
            KeyEncryptionKey.from_file(path)
            for path in environ.get(ENV_ADDITIONAL_KEK_FILES, "").split(os.pathsep)
            if path.strip()
        ]
        return cls([*cls.of(current), *extra])
