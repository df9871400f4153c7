"""Key ids that carry their tenant: ``fk_`` + base32 of 15 random bytes and a 5-byte tenant tag.

The tag is HMAC-SHA256(tag key, tenant NUL random)[:5], with a tag key derived from the KEK, so
the store tells from the id alone whether it was issued to the caller's tenant: a foreign id is
refused without looking it up, and the answer never reveals whether that key exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Literal

PREFIX = "fk_"
RANDOM_BYTES = 15
TAG_BYTES = 5
#: 20 bytes are exactly 32 base32 characters, so ids need no padding and have one spelling
KEY_ID_LENGTH = len(PREFIX) + (RANDOM_BYTES + TAG_BYTES) * 8 // 5
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")

Classification = Literal["malformed", "foreign", "own"]


class KeyIds:
    """Mints and classifies key ids under one tag key (see ``KeyEncryptionKey.key_id_tag_key``)."""

    __slots__ = ("__tag_key",)

    def __init__(self, tag_key: bytes) -> None:
        if len(tag_key) < 16:
            raise ValueError("a key-id tag key is at least 16 bytes")
        self.__tag_key = tag_key

    def __repr__(self) -> str:
        return "KeyIds(<redacted>)"

    def mint(self, tenant: str) -> str:
        random = os.urandom(RANDOM_BYTES)
        raw = random + self._tag(tenant, random)
        return PREFIX + base64.b32encode(raw).decode("ascii").lower()

    def classify(self, tenant: str, key_id: str) -> Classification:
        raw = decode(key_id)
        if raw is None:
            return "malformed"
        random, tag = raw[:RANDOM_BYTES], raw[RANDOM_BYTES:]
        return "own" if hmac.compare_digest(tag, self._tag(tenant, random)) else "foreign"

    def _tag(self, tenant: str, random: bytes) -> bytes:
        message = tenant.encode("utf-8") + b"\0" + random
        return hmac.new(self.__tag_key, message, hashlib.sha256).digest()[:TAG_BYTES]


def decode(key_id: object) -> bytes | None:
    """The 20 raw bytes of a well-formed key id, or None."""
    if not isinstance(key_id, str) or len(key_id) != KEY_ID_LENGTH or not key_id.startswith(PREFIX):
        return None
    body = key_id[len(PREFIX) :]
    if not _ALPHABET.issuperset(body):
        return None
    try:
        return base64.b32decode(body.upper())
    except (binascii.Error, ValueError):
        return None
