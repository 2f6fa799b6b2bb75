"""Offline-first sync with an `entidb serve` server.

```python
sync = await entidb.sync.connect(db, "http://127.0.0.1:7420", token=token,
                                 collections=["users"])
await sync.sync_now()      # one round: push local writes, pull remote ones
sync.status                # online, pending ops, cursor, last error, ...
sync.start()               # live mode: keep syncing in the background
await sync.stop()
```

Local writes to the synced collections are captured from the database's change feed into a
durable outbox (they survive restarts) and pushed; remote changes are applied locally and
never echoed back. Conflicts are decided by the server's policy; the losers are in its
conflict log (`await sync.conflicts()`), and `restore` writes one back as a new write.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Sequence

from . import _entidb
from ._entidb import Error

if TYPE_CHECKING:
    from . import Database

__all__ = ["ConflictRecord", "SyncReport", "SyncStatus", "Sync", "connect"]


@dataclass(frozen=True)
class SyncReport:
    """What one round did."""

    captured: int
    pushed: int
    pulled: int
    bootstrapped: bool
    rejected: list[tuple[str, str]]


@dataclass(frozen=True)
class SyncStatus:
    """What can be seen of a replicator."""

    online: bool
    pending_ops: int
    cursor: int
    last_sync_ms: Optional[int]
    last_error: Optional[str]
    bootstrap: Optional[tuple[int, Optional[int]]]
    rejected_ops: int
    live: bool


@dataclass(frozen=True)
class ConflictRecord:
    """One overwritten loser in the server's conflict log."""

    conflict_id: uuid.UUID
    collection: str
    id: uuid.UUID
    policy: str
    loser: Any
    loser_client: Optional[str]
    client_id: str
    op_id: int
    version: Optional[int]
    at_ms: int


def _report(d: dict[str, Any]) -> SyncReport:
    return SyncReport(
        captured=d["captured"],
        pushed=d["pushed"],
        pulled=d["pulled"],
        bootstrapped=d["bootstrapped"],
        rejected=[(c, i) for c, i in d["rejected"]],
    )


class Sync:
    """A replicator attached to a database (`entidb.sync.connect`)."""

    def __init__(self, db: Database, native: _entidb.Replicator) -> None:
        self._db = db
        self._native = native
        self._task: Optional[asyncio.Task[None]] = None
        self.last_live_error: Optional[BaseException] = None

    async def sync_now(self) -> SyncReport:
        """One round: capture local writes, push them, pull remote changes (bootstrapping
        a new client). Network errors are retried with backoff before it raises."""
        return _report(await self._native.sync_now())

    @property
    def status(self) -> SyncStatus:
        """The current status (no I/O)."""
        s = self._native.status()
        return SyncStatus(
            online=s["online"],
            pending_ops=s["pending_ops"],
            cursor=s["cursor"],
            last_sync_ms=s["last_sync_millis"],
            last_error=s["last_error"],
            bootstrap=s["bootstrap"],
            rejected_ops=s["rejected_ops"],
            live=self._task is not None and not self._task.done(),
        )

    async def pending_ops(self) -> int:
        """Local writes not yet acknowledged by the server."""
        return await self._native.pending_ops()

    def start(self, *, wait_ms: int = 25_000) -> None:
        """Live mode: sync in a background task, waiting on the server for remote changes
        (long poll) between rounds. Errors are kept in `last_live_error` and retried with
        backoff."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.get_running_loop().create_task(self._live(wait_ms))

    async def _live(self, wait_ms: int) -> None:
        delay = 0.1
        while True:
            try:
                await self._native.sync_wait(wait_ms)
                delay = 0.1
            except Error as e:
                self.last_live_error = e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        """Leave live mode (the round in flight is cancelled; nothing is lost: the outbox
        is durable)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def conflicts(
        self, *, after: Optional[uuid.UUID] = None, limit: int = 100
    ) -> tuple[list[ConflictRecord], Optional[uuid.UUID]]:
        """A page of the server's conflict log, oldest first, and the id to continue after."""
        rows, nxt = await self._native.conflicts(after, limit)
        return [ConflictRecord(*r) for r in rows], nxt

    async def restore(self, conflict: ConflictRecord) -> None:
        """Write a conflict's loser back as a new local write (synced like any other); a
        deleted loser deletes the entity."""
        coll = self._db.collection(conflict.collection)
        if conflict.loser is None:
            await coll.delete(conflict.id)
        else:
            await coll.put(conflict.loser, id=conflict.id)

    async def __aenter__(self) -> Sync:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop()


async def connect(
    db: Database,
    url: str,
    *,
    token: str,
    collections: Sequence[str],
    database: Optional[str] = None,
    client_id: Optional[str] = None,
    initial_bootstrap: bool = True,
    live: bool = False,
) -> Sync:
    """Attach a replicator to `db` for `collections` on the server at `url`. The server
    database and the client id default to the token's `db` and `sub` claims."""
    native = await _entidb.Replicator.connect(
        db._native,
        url,
        token,
        list(collections),
        database=database,
        client_id=client_id,
        initial_bootstrap=initial_bootstrap,
    )
    s = Sync(db, native)
    if live:
        s.start()
    return s
