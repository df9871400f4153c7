"""What makes the key store tamper-evident: keyed MACs over key rows, audit events and the head.

Every store holds a random **integrity key** per epoch, sealed under the current KEK in
``store_meta`` (``integrity_key:<epoch>``); HKDF-SHA256 derives from it one sub-key for key rows
and one for the audit log. Each row of ``keys`` carries ``row_mac`` = ``<epoch>:<hex>``, an
HMAC-SHA256 over every other column (the material as its SHA-256), so ``UPDATE keys SET
state='active'`` is caught by the next read of that key and by ``keys audit --verify``. The audit
log is an HMAC chain (each link keyed, so an edited event cannot be re-chained without the key),
and ``audit_head.mac`` authenticates the newest (seq, hash), so the head cannot be re-pointed at
an earlier event. ``keys rotate-kek`` rolls the epoch: rows are re-MACed, and the chain goes on
under the new key from the rotation event on.

What it cannot catch: a rollback of the whole database to an earlier consistent copy, and edits
by someone who holds the KEK. Deletion is detected, not prevented.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import RowMapping

from faceanonymixer.utils.errors import KeyStoreError

_PREFIX = b"faceanonymixer/v1|integrity|"
ROW_FIELDS = (
    "key_id",
    "tenant",
    "lineage_id",
    "version",
    "state",
    "subject",
    "labels",
    "profile_id",
    "profile_revision",
    "created_at",
    "revoked_at",
    "replaces_key_id",
    "replaced_by_key_id",
    "kek_id",
)


class KeyIntegrityError(KeyStoreError):
    """A stored key row or the store's metadata fails its MAC: it was altered outside the store."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _derive(secret: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PREFIX + purpose.encode()).derive(
        secret
    )


@dataclass
class IntegrityKeys:
    """The integrity keys of a store by epoch (opened with the KEK), and its current epoch."""

    current_epoch: int
    secrets: dict[int, bytes] = field(default_factory=dict)
    _derived: dict[tuple[int, str], bytes] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"IntegrityKeys(epochs={sorted(self.secrets)}, current={self.current_epoch})"

    def _key(self, epoch: int, purpose: str) -> bytes:
        cached = self._derived.get((epoch, purpose))
        if cached is None:
            secret = self.secrets.get(epoch)
            if secret is None:
                raise KeyIntegrityError(f"the key store has no integrity key of epoch {epoch}")
            cached = self._derived[(epoch, purpose)] = _derive(secret, purpose)
        return cached

    # -- key rows ---------------------------------------------------------------------------------

    def row_mac(self, row: Mapping[str, Any] | RowMapping, *, epoch: int | None = None) -> str:
        """``<epoch>:<hex>`` over the row's columns (``ROW_FIELDS``) and its material's SHA-256."""
        epoch = self.current_epoch if epoch is None else epoch
        body = {name: row[name] for name in ROW_FIELDS}
        body["version"] = int(body["version"])
        body["material_sha256"] = hashlib.sha256(bytes(row["wrapped_material"])).hexdigest()
        digest = hmac.new(self._key(epoch, "keys"), _canonical(body), hashlib.sha256).hexdigest()
        return f"{epoch}:{digest}"

    def row_is_authentic(self, row: Mapping[str, Any] | RowMapping, *, current_only: bool = False) -> bool:
        epoch = parse_epoch(row.get("row_mac"))
        if epoch is None or epoch not in self.secrets:
            return False
        if current_only and epoch != self.current_epoch:
            return False
        return hmac.compare_digest(self.row_mac(row, epoch=epoch), str(row["row_mac"]))

    # -- the audit log ----------------------------------------------------------------------------

    def event_mac(self, prev_hash: str, body: bytes, *, epoch: int) -> str:
        return hmac.new(
            self._key(epoch, "audit"), prev_hash.encode("ascii") + body, hashlib.sha256
        ).hexdigest()

    def head_mac(self, seq: int, head_hash: str, *, epoch: int | None = None) -> str:
        epoch = self.current_epoch if epoch is None else epoch
        message = _canonical({"seq": int(seq), "hash": head_hash})
        return f"{epoch}:{hmac.new(self._key(epoch, 'audit-head'), message, hashlib.sha256).hexdigest()}"

    def head_is_authentic(self, seq: int, head_hash: str, mac: str | None) -> bool:
        epoch = parse_epoch(mac)
        if epoch is None or epoch != self.current_epoch:
            return False
        return hmac.compare_digest(self.head_mac(seq, head_hash, epoch=epoch), str(mac))


def parse_epoch(mac: object) -> int | None:
    if not isinstance(mac, str):
        return None
    epoch, sep, digest = mac.partition(":")
    if not sep or not epoch.isdigit() or len(digest) != 64:
        return None
    return int(epoch)
