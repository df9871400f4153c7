"""The key store: protection keys wrapped under a key-encryption key, in SQLite or PostgreSQL,
with an insert-only, hash-chained audit log."""

from __future__ import annotations

from faceanonymixer.keystore.audit import AuditEvent
from faceanonymixer.keystore.kek import KeyEncryptionKey
from faceanonymixer.keystore.store import KeyRecord, KeyStore
from faceanonymixer.keystore.verify import IntegrityReport

__all__ = ["AuditEvent", "IntegrityReport", "KeyEncryptionKey", "KeyRecord", "KeyStore"]
