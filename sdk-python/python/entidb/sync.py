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
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Sequence

from . import _entidb
from ._entidb import Closed, Error

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


def _status(s: tuple[Any, ...], live: bool) -> SyncStatus:
    online, pending, cursor, last_sync, last_error, bootstrap, rejected = s
    return SyncStatus(
        online=online,
        pending_ops=pending,
        cursor=cursor,
        last_sync_ms=last_sync,
        last_error=last_error,
        bootstrap=bootstrap,
        rejected_ops=rejected,
        live=live,
    )


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

    def _live_now(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def status(self) -> SyncStatus:
        """The current status (no I/O)."""
        return _status(self._native.status(), self._live_now())

    async def statuses(self) -> AsyncIterator[SyncStatus]:
        """The status as it changes: the current one first, then each new one (a slow
        consumer skips intermediate ones and gets the latest). For a UI: online/offline,
        pending writes, bootstrap progress `(done, total)`, rejected ops. Runs until the
        consumer stops iterating."""
        stream = self._native.status_stream()
        while True:
            s = await stream.next()
            if s is None:
                return
            yield _status(s, self._live_now())

    async def capture(self) -> int:
        """Step 1 of a round: copy new local writes of the synced collections into the
        durable outbox; returns how many. (`sync_now` does every step, with retries.)"""
        return await self._native.capture()

    async def push(self) -> tuple[int, list[tuple[str, uuid.UUID]]]:
        """Step 2: push the outbox once, without retrying; returns (ops acknowledged,
        [(collection, id) rejected by a conflict])."""
        return await self._native.push()

    async def pull(self) -> tuple[int, bool]:
        """Step 3: pull remote changes once (bootstrapping when needed), without retrying;
        returns (changes applied, whether it bootstrapped)."""
        return await self._native.pull()

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
            except Exception as e:  # noqa: BLE001 - kept and retried, never lost
                # Not only `entidb.Error`: any other exception ended live mode silently.
                self.last_live_error = e
                if isinstance(e, Closed):
                    return  # the database was closed: nothing to sync any more
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
    push_batch: Optional[int] = None,
    push_bytes: Optional[int] = None,
    pull_limit: Optional[int] = None,
    bootstrap_limit: Optional[int] = None,
    max_attempts: Optional[int] = None,
    retry_base_ms: Optional[int] = None,
    durable_pulls: bool = False,
) -> Sync:
    """Attach a replicator to `db` for `collections` on the server at `url`. The server
    database and the client id default to the token's `db` and `sub` claims.

    `initial_bootstrap=False` makes a new client pull the whole retained oplog instead of a
    snapshot. Tuning (None: the default): `push_batch` ops per push (500), `push_bytes`
    bytes of documents per push (4 MiB; keep it under the server's `max_body_bytes`; a push
    the server refuses as too large is sent again in halves), `pull_limit`
    changes per pull page (500), `bootstrap_limit` entities per bootstrap page (1000),
    `max_attempts` per request in `sync_now` before it raises (6; network errors, 408 and
    5xx only), `retry_base_ms` first retry delay, doubled per attempt with full jitter (100).
    Pulled pages and push acknowledgements are committed without waiting for a disk sync: a
    power loss may lose the last ones, and pages are pulled again with their cursor,
    acknowledged ops sent again and answered as duplicates (an application crash loses
    nothing); `durable_pulls=True` syncs every one.
    A `SyncError` says in `e.retryable` whether trying again later may succeed."""
    if isinstance(collections, str):
        raise TypeError("collections is a list of names, not one string")
    native = await _entidb.Replicator.connect(
        db._native,
        url,
        token,
        list(collections),
        database=database,
        client_id=client_id,
        push_batch=push_batch,
        push_bytes=push_bytes,
        pull_limit=pull_limit,
        initial_bootstrap=initial_bootstrap,
        bootstrap_limit=bootstrap_limit,
        max_attempts=max_attempts,
        retry_base_ms=retry_base_ms,
        durable_pulls=durable_pulls,
    )
    s = Sync(db, native)
    if live:
        s.start()
    return s
