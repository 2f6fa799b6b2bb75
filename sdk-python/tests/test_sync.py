"""A sync round trip between two Python clients through a real `entidb serve`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import entidb

from conftest import Server


async def test_two_clients_sync_through_the_server(tmp_path: Path, server: Server) -> None:
    a_db = await entidb.open(tmp_path / "a")
    b_db = await entidb.open(tmp_path / "b")
    a = await entidb.sync.connect(
        a_db, server.url, token=server.mint("alice"), collections=["notes"]
    )
    b = await entidb.sync.connect(
        b_db, server.url, token=server.mint("bob"), collections=["notes"]
    )
    first = await a.sync_now()
    assert first.bootstrapped
    nid = await a_db.collection("notes").put({"text": "from alice", "n": 1})
    assert await a.pending_ops() >= 0
    report = await a.sync_now()
    assert report.pushed == 1
    assert a.status.pending_ops == 0 and a.status.online
    await b.sync_now()
    assert await b_db.collection("notes").get(nid) == {"text": "from alice", "n": 1}

    # Bob edits; Alice receives it, and her own write is not echoed back as a change.
    await b_db.collection("notes").put({"text": "edited by bob", "n": 2}, id=nid)
    await b.sync_now()
    r = await a.sync_now()
    assert r.pulled == 1
    assert await a_db.collection("notes").get(nid) == {"text": "edited by bob", "n": 2}

    # Live mode: a change reaches the other client without an explicit round.
    b.start(wait_ms=2_000)
    await a_db.collection("notes").put({"text": "live"}, id=nid)
    await a.sync_now()
    for _ in range(100):
        if await b_db.collection("notes").get(nid) == {"text": "live"}:
            break
        await asyncio.sleep(0.1)
    assert await b_db.collection("notes").get(nid) == {"text": "live"}
    assert b.status.live
    await b.stop()
    assert not b.status.live

    conflicts, _ = await a.conflicts()
    assert isinstance(conflicts, list)
    await a_db.close()
    await b_db.close()


async def test_bad_token_raises_auth_error(tmp_path: Path, server: Server) -> None:
    db = await entidb.open(tmp_path / "c")
    s = await entidb.sync.connect(
        db,
        server.url,
        token="not.a.token",
        collections=["notes"],
        database="app",
        client_id="mallory",
    )
    with pytest.raises(entidb.AuthError):
        await s.sync_now()
    with pytest.raises(entidb.InvalidArgument):
        await entidb.sync.connect(db, server.url, token="x", collections=["notes"])
    await db.close()
