"""Audit of key use, aggregated: protect calls counted per (tenant, key id, version), by outcome.

One event per protect call would make the audit chain as long as the traffic and put every call
behind the chain's lock; instead the server counts calls (by gRPC status code name) and photos
protected per key in memory, and appends one ``use`` event per key that was used, every
``audit_use_interval_seconds`` and at shutdown. Nothing of the images is recorded. A crash (not
SIGTERM) loses the counts of at most the last interval; a key store that is down keeps them for
the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from faceanonymixer.keystore import KeyStore
from faceanonymixer.keystore.store import KeyUse
from faceanonymixer.utils.errors import FaceAnonyMixerError

log = logging.getLogger("faceanonymixer.service")

ACTOR = "service"


@dataclass
class _Tally:
    calls: Counter[str] = field(default_factory=Counter)
    photos: int = 0
    first_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class UsageRecorder:
    """Counts key use between flushes; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str, int], _Tally] = {}

    def record(self, tenant: str, key_id: str, version: int, outcome: str, *, photos: int = 0) -> None:
        with self._lock:
            tally = self._tallies.setdefault((tenant, key_id, version), _Tally())
            tally.calls[outcome] += 1
            tally.photos += photos
            tally.last_at = datetime.now(UTC)

    def drain(self) -> list[KeyUse]:
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        return [
            KeyUse(tenant, key_id, version, dict(t.calls), t.photos, t.first_at, t.last_at)
            for (tenant, key_id, version), t in sorted(tallies.items())
        ]

    def restore(self, uses: list[KeyUse]) -> None:
        """Put back what a failed flush drained, merged with what came since."""
        with self._lock:
            for use in uses:
                tally = self._tallies.setdefault((use.tenant, use.key_id, use.version), _Tally())
                tally.calls.update(use.calls)
                tally.photos += use.photos
                tally.first_at = min(tally.first_at, use.first_at)

    async def flush(self, store: KeyStore, executor: Executor | None) -> int:
        uses = self.drain()
        if not uses:
            return 0
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, lambda: store.record_uses(uses, actor=ACTOR))
        except FaceAnonyMixerError as error:
            self.restore(uses)
            log.warning("key use not audited yet", extra={"fields": {"error": str(error), "keys": len(uses)}})
            return 0

    async def run(self, store: KeyStore, executor: Executor | None, interval: float) -> None:
        """Flush every ``interval`` seconds until cancelled (the server flushes once more after)."""
        while True:
            await asyncio.sleep(interval)
            await self.flush(store, executor)
