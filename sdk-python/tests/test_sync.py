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
    b.start(wait_ms=60_000)
    await a_db.collection("notes").put({"text": "live"}, id=nid)
    await a.sync_now()
    for _ in range(100):
        if await b_db.collection("notes").get(nid) == {"text": "live"}:
            break
        await asyncio.sleep(0.1)
    assert await b_db.collection("notes").get(nid) == {"text": "live"}
    assert b.status.live

    # And the other way: in live mode, a local write is pushed at once, not when the long
    # poll runs out (the test server caps polls at 25 s; this waits at most 15 s).
    await b_db.collection("notes").put({"text": "pushed live"}, id=nid)
    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        await a.sync_now()
        if await a_db.collection("notes").get(nid) == {"text": "pushed live"}:
            break
        await asyncio.sleep(0.1)
    assert await a_db.collection("notes").get(nid) == {"text": "pushed live"}
    await b.stop()
    assert not b.status.live

    conflicts, _ = await a.conflicts()
    assert isinstance(conflicts, list)
    await a_db.close()
    await b_db.close()


async def test_pulled_pages_skip_the_disk_sync_unless_durable_pulls(
    tmp_path: Path, server: Server
) -> None:
    # Ten server transactions, pulled three per page: four pages.
    w_db = await entidb.open(tmp_path / "w")
    w = await entidb.sync.connect(
        w_db, server.url, token=server.mint("writer"), collections=["pages"]
    )
    for n in range(10):
        await w_db.collection("pages").put({"n": n})
        await w.sync_now()

    async def syncs_to_pull(name: str, durable: bool) -> int:
        db = await entidb.open(tmp_path / name)
        s = await entidb.sync.connect(
            db,
            server.url,
            token=server.mint(name),
            collections=["pages"],
            initial_bootstrap=False,
            pull_limit=3,
            durable_pulls=durable,
        )
        before = db.stats()["syncs"]
        report = await s.sync_now()
        assert report.pulled == 10
        assert await db.collection("pages").count() == 10
        n = int(db.stats()["syncs"] - before)
        await db.close()
        return n

    durable = await syncs_to_pull("durable", True)
    relaxed = await syncs_to_pull("relaxed", False)
    assert durable >= 4, durable
    assert relaxed < durable, (relaxed, durable)
    await w_db.close()


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
    with pytest.raises(entidb.AuthError) as err:
        await s.sync_now()
    assert err.value.retryable is False, "the same token will be refused again"
    with pytest.raises(entidb.InvalidArgument):
        await entidb.sync.connect(db, server.url, token="x", collections=["notes"])
    await db.close()


async def test_a_conflict_is_logged_notified_and_restorable(tmp_path: Path, server: Server) -> None:
    a_db = await entidb.open(tmp_path / "a")
    b_db = await entidb.open(tmp_path / "b")
    a = await entidb.sync.connect(a_db, server.url, token=server.mint("alice"), collections=["docs"])
    b = await entidb.sync.connect(b_db, server.url, token=server.mint("bob"), collections=["docs"])
    did = await a_db.collection("docs").put({"title": "v1"})
    await a.sync_now()
    await b.sync_now()
    assert await b_db.collection("docs").get(did) == {"title": "v1"}
    # Both edit the same entity offline; Alice's push reaches the server first, so under the
    # default policy (server wins) Bob's edit loses.
    await a_db.collection("docs").put({"title": "alice's"}, id=did)
    await b_db.collection("docs").put({"title": "bob's"}, id=did)
    await a.sync_now()
    report = await b.sync_now()
    assert report.rejected == [("docs", str(did))]
    assert b.status.rejected_ops == 1
    assert await b_db.collection("docs").get(did) == {"title": "alice's"}
    conflicts, _ = await b.conflicts()
    mine = [c for c in conflicts if c.id == did]
    assert len(mine) == 1
    lost = mine[0]
    assert lost.loser == {"title": "bob's"} and lost.policy == "server_wins"
    assert lost.client_id == "bob" and lost.collection == "docs"
    # Restoring the loser is a new write, which now wins.
    await b.restore(lost)
    await b.sync_now()
    await a.sync_now()
    assert await a_db.collection("docs").get(did) == {"title": "bob's"}
    await a_db.close()
    await b_db.close()


async def test_status_stream_steps_and_oplog_start(tmp_path: Path, server: Server) -> None:
    seed_db = await entidb.open(tmp_path / "seed")
    seed = await entidb.sync.connect(
        seed_db, server.url, token=server.mint("seed"), collections=["items"]
    )
    async with seed_db.transaction() as tx:
        for i in range(30):
            await tx.collection("items").put({"i": i})
    # The steps of a round, one by one.
    assert await seed.capture() == 30
    pushed, rejected = await seed.push()
    assert pushed == 30 and rejected == []
    assert await seed.pending_ops() == 0
    await seed_db.close()

    # A new client bootstraps in pages of 5 and reports its progress on the status stream.
    fresh_db = await entidb.open(tmp_path / "fresh")
    fresh = await entidb.sync.connect(
        fresh_db,
        server.url,
        token=server.mint("fresh"),
        collections=["items"],
        bootstrap_limit=5,
        max_attempts=2,
        retry_base_ms=10,
    )
    progress: list[tuple[int, int | None]] = []
    stream = fresh.statuses()

    async def watch() -> None:
        async for st in stream:
            if st.bootstrap is not None:
                progress.append(st.bootstrap)
            if st.last_sync_ms is not None:
                return

    watcher = asyncio.create_task(watch())
    applied, bootstrapped = await fresh.pull()
    assert bootstrapped and applied >= 30
    report = await fresh.sync_now()
    await asyncio.wait_for(watcher, timeout=10)
    assert report.pulled == 0
    assert progress and progress[-1][1] == 30, progress
    assert all(done <= 30 for done, _ in progress)
    assert await fresh_db.collection("items").count() == 30
    await fresh_db.close()

    # `initial_bootstrap=False`: the whole oplog, change by change, from cursor 0.
    log_db = await entidb.open(tmp_path / "log")
    log = await entidb.sync.connect(
        log_db,
        server.url,
        token=server.mint("log"),
        collections=["items"],
        initial_bootstrap=False,
        pull_limit=7,
    )
    r = await log.sync_now()
    assert not r.bootstrapped and r.pulled == 30
    assert log.status.cursor > 0
    with pytest.raises(TypeError):
        await entidb.sync.connect(log_db, server.url, token="x", collections="items")
    await log_db.close()


async def test_large_offline_writes_push_in_batches_under_the_body_limit(
    tmp_path: Path, server: Server
) -> None:
    """Six 1.5 MB documents written offline (9 MB, over the server's 8 MiB body limit)
    reach the other client: pushes end at `push_bytes` of documents."""
    a_db = await entidb.open(tmp_path / "a")
    b_db = await entidb.open(tmp_path / "b")
    a = await entidb.sync.connect(
        a_db,
        server.url,
        token=server.mint("alice"),
        collections=["files"],
        push_bytes=2_000_000,
    )
    ids = [
        await a_db.collection("files").put({"n": i, "body": "x" * 1_500_000})
        for i in range(6)
    ]
    report = await a.sync_now()
    assert report.pushed == 6 and a.status.pending_ops == 0
    b = await entidb.sync.connect(
        b_db, server.url, token=server.mint("bob"), collections=["files"]
    )
    await b.sync_now()
    for i, nid in enumerate(ids):
        doc = await b_db.collection("files").get(nid)
        assert doc is not None and doc["n"] == i and len(doc["body"]) == 1_500_000
    # The limit is checked like the other batch sizes.
    with pytest.raises(entidb.InvalidArgument):
        await entidb.sync.connect(
            b_db,
            server.url,
            token=server.mint("bob"),
            collections=["files"],
            push_bytes=0,
        )
    await a_db.close()
    await b_db.close()


async def test_live_mode_ends_when_the_database_closes(tmp_path: Path, server: Server) -> None:
    """Live mode kept retrying `Closed` every 30 s after the database closed."""
    db = await entidb.open(tmp_path / "a")
    s = await entidb.sync.connect(
        db, server.url, token=server.mint("alice"), collections=["notes"], live=True
    )
    await asyncio.sleep(0.2)
    assert s.status.live
    await db.close()
    for _ in range(100):
        if isinstance(s.last_live_error, entidb.Closed):
            break
        await asyncio.sleep(0.1)
    assert isinstance(s.last_live_error, entidb.Closed), s.last_live_error
    await asyncio.sleep(0.1)
    assert not s.status.live, "the live task ended"
    await s.stop()
