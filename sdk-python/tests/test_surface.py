"""The rest of the engine's API, reached from Python as a user would: explicit transactions,
origins, collections and indexes inside transactions, raw CBOR, versions, paging cursors,
the change feed without waiting, engine options, encrypted restore."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

import entidb


async def test_snapshot_isolation_between_coroutines(db: entidb.Database) -> None:
    users = db.collection("users")
    first = await users.put({"name": "Grace"})
    snapshot_taken = asyncio.Event()
    committed = asyncio.Event()
    seen: dict[str, object] = {}

    async def reader() -> None:
        snap = db.snapshot()
        snapshot_taken.set()
        await committed.wait()
        # The writer has committed by now, and the latest state shows it...
        assert await users.count() == 2
        # ...but the snapshot taken before does not move.
        seen["snapshot"] = [d async for d in snap.collection("users").scan()]
        seen["first"] = await snap.collection("users").get(first)

    async def writer() -> None:
        await snapshot_taken.wait()
        async with db.transaction() as tx:
            await tx.collection("users").put({"name": "Barbara"})
            await tx.collection("users").put({"name": "Grace H."}, id=first)
        committed.set()

    await asyncio.gather(reader(), writer())
    assert seen["snapshot"] == [{"name": "Grace"}]
    assert seen["first"] == {"name": "Grace"}
    assert await users.get(first) == {"name": "Grace H."}


async def test_uncommitted_writes_are_invisible_to_other_coroutines(
    db: entidb.Database,
) -> None:
    users = db.collection("users")
    written = asyncio.Event()
    checked = asyncio.Event()
    uid = db.new_id()

    async def writer() -> None:
        tx = await db.begin()
        await tx.collection("users").put({"name": "pending"}, id=uid)
        written.set()
        await checked.wait()
        await tx.commit()

    async def other() -> None:
        await written.wait()
        # Another coroutine reading the latest state does not see the open transaction.
        assert await users.get(uid) is None
        assert await users.count() == 0
        checked.set()

    await asyncio.gather(writer(), other())
    assert await users.get(uid) == {"name": "pending"}


async def test_explicit_transactions_and_finished_ones(db: entidb.Database) -> None:
    notes = db.collection("notes")
    tx = await db.begin()
    read_at = await tx.read_sequence()
    assert read_at == db.last_sequence
    nid = await tx.collection("notes").put({"text": "kept"})
    seq = await tx.commit()
    assert seq == read_at + 1 and tx.sequence == seq
    assert await notes.version(nid) == seq
    # A finished transaction refuses further use with `Closed`.
    with pytest.raises(entidb.Closed, match="finished"):
        await tx.collection("notes").put({"text": "late"})
    with pytest.raises(entidb.Closed):
        await tx.commit()

    tx = await db.begin()
    await tx.collection("notes").put({"text": "dropped"})
    await tx.abort()
    assert await notes.count() == 1
    with pytest.raises(entidb.Closed):
        await tx.collection("notes").get(nid)

    # Relaxed commits are visible at once, like durable ones, and durable only once a
    # later sync covers them.
    assert db.durable_sequence == db.last_sequence
    async with db.transaction(relaxed=True) as rtx:
        rid = await rtx.collection("notes").put({"text": "relaxed"})
    assert await notes.get(rid) == {"text": "relaxed"}
    assert db.durable_sequence < db.last_sequence
    await notes.put({"text": "durable"})
    assert db.durable_sequence == db.last_sequence
    assert await notes.delete(rid, relaxed=True) is True
    assert await notes.get(rid) is None


async def test_origin_tags_collections_and_indexes_inside_a_transaction(
    db: entidb.Database,
) -> None:
    async with db.transaction(origin="importer") as tx:
        await tx.create_collection("people")
        assert "people" in await tx.collections()
        await tx.collection("people").put({"email": "ada@x", "age": 36})
        name = await tx.collection("people").create_index("email", unique=True)
        # The new index already answers inside the transaction.
        assert (await tx.collection("people").find_one(name, "ada@x")) == {
            "email": "ada@x",
            "age": 36,
        }
    assert db.collections() == ["people"]
    assert [i.name for i in await db.collection("people").indexes()] == ["email"]
    feed = await db.changes_page(0, 10)
    assert len(feed) == 1
    assert {c.origin for c in feed[0]} == {"importer"}
    assert [c.op for c in feed[0]] == ["collection_created", "put"]

    snap = db.snapshot()
    async with db.transaction() as tx:
        await tx.set_origin("cleanup")
        assert await tx.collection("people").drop_index("email") is True
        assert await tx.drop_collection("people") is True
        assert await tx.collections() == []
    assert db.collections() == []
    assert await snap.collections() == ["people"], "the snapshot still has it"
    last = (await db.changes_page(feed[0][0].sequence, 10))[-1]
    assert last[0].origin == "cleanup"
    with pytest.raises(entidb.InvalidArgument):
        await db.create_collection("")
    await db.create_collection("empty")
    with pytest.raises(entidb.InvalidArgument, match="exists"):
        await db.create_collection("empty")
    assert db.oldest_retained_sequence <= 1
    assert db.last_maintenance_error() is None


async def test_feed_holds_keep_records_past_retention(tmp_path: Path) -> None:
    db = await entidb.open(tmp_path / "held", feed_retention=3)
    try:
        await db.hold_feed("exporter", 0)
        notes = db.collection("notes")
        for i in range(10):
            await notes.put({"n": i})
        await db.compact()
        assert db.feed_holds() == {"exporter": 0}
        assert db.oldest_retained_sequence == 1
        assert len(await db.changes_page(0, 100)) == 11
        # The consumer moves its hold with its own bookkeeping, in one transaction.
        async with db.transaction() as tx:
            await tx.collection("exports").put({"upto": 6})
            await tx.hold_feed("exporter", 6)
        assert db.oldest_retained_sequence == 7
        with pytest.raises(entidb.FeedTruncated):
            await db.changes_page(5, 100)
        async with db.transaction() as tx:
            with pytest.raises(entidb.FeedTruncated):
                await tx.hold_feed("late", 2)
            with pytest.raises(entidb.InvalidArgument):
                await tx.hold_feed("", 7)
            assert await tx.release_feed_hold("exporter") is True
        assert db.feed_holds() == {}
        assert db.oldest_retained_sequence == db.last_sequence - 2
        assert await db.release_feed_hold("exporter") is False
    finally:
        await db.close()


async def test_filtered_change_pages_keep_every_transaction(db: entidb.Database) -> None:
    async with db.transaction() as tx:
        note = await tx.collection("notes").put({"n": 1})
        await tx.collection("audit").put({"a": 1})
    async with db.transaction(origin="replicator") as tx:
        await tx.collection("notes").put({"n": 2})
    async with db.transaction() as tx:
        await tx.collection("audit").put({"a": 2})

    page = await db.changes_page_filtered(
        0, 10, collections=["notes"], exclude_origin="replicator"
    )
    full = await db.changes_page(0, 10)
    # Every transaction is there, so the last one says where to continue.
    assert [b.sequence for b in page] == [batch[0].sequence for batch in full]
    assert [(c.collection, c.op, c.id) for c in page[0].changes] == [
        ("notes", "collection_created", None),
        ("notes", "put", note),
    ]
    assert page[0].changes[1].document == {"n": 1}
    assert page[1].origin == "replicator" and page[1].changes == []
    assert page[2].changes == []
    assert await db.changes_page_filtered(page[-1].sequence, 10) == []
    everything = await db.changes_page_filtered(0, 10)
    assert [b.changes for b in everything] == full


async def test_raw_cbor_versions_and_optimistic_writes(db: entidb.Database) -> None:
    blobs = db.collection("blobs")
    # {"a": 1} in canonical CBOR.
    raw = bytes([0xA1, 0x61, 0x61, 0x01])
    bid = await blobs.put_raw(raw)
    assert await blobs.get(bid) == {"a": 1}
    assert await blobs.get_raw(bid) == raw
    assert await blobs.get_raw(db.new_id()) is None
    # Valid but not canonical (a 2-byte head for the integer 1): stored canonicalized.
    lid = await blobs.put_raw(bytes([0xA1, 0x61, 0x61, 0x18, 0x01]))
    assert await blobs.get_raw(lid) == raw
    # Not CBOR, or trailing bytes after the item: refused, nothing stored.
    with pytest.raises(entidb.DocumentError):
        await blobs.put_raw(b"\xff\x00")
    with pytest.raises(entidb.DocumentError):
        await blobs.put_raw(raw + b"\x00")
    assert await blobs.count() == 2
    async with db.transaction() as tx:
        tid = await tx.collection("blobs").put_raw(raw)
        assert await tx.collection("blobs").get_raw(tid) == raw
    uid, v1 = await blobs.put_versioned({"n": 1})
    assert await blobs.version(uid) == v1
    v2 = await blobs.put_if({"n": 2}, uid, v1)
    assert v2 > v1
    with pytest.raises(entidb.Conflict):
        await blobs.put_if({"n": 3}, uid, v1)
    assert await blobs.get(uid) == {"n": 2}


async def test_documents_python_cannot_key_raise_type_error_naming_the_path(
    db: entidb.Database,
) -> None:
    c = db.collection("odd")
    # {"k": {[1, 2]: "pair"}}: an array as a map key reads back as a tuple key.
    pair_key = bytes([0xA1, 0x61, 0x6B, 0xA1, 0x82, 0x01, 0x02, 0x64]) + b"pair"
    pid = await c.put_raw(pair_key)
    assert await c.get(pid) == {"k": {(1, 2): "pair"}}
    # {"k": {{}: 1}}: valid CBOR another client may write; a Python dict cannot hold it.
    map_key = bytes([0xA1, 0x61, 0x6B, 0xA1, 0xA0, 0x01])
    mid = await c.put_raw(map_key)
    with pytest.raises(TypeError, match=r"\$\.k"):
        await c.get(mid)
    assert await c.get_raw(mid) == map_key, "the raw bytes are still readable"


async def test_lookup_pages_resume_from_a_cursor(db: entidb.Database) -> None:
    people = db.collection("people")
    await people.create_index("age")
    await people.create_index(["city", "age"], name="city_age")
    for i in range(25):
        await people.put({"age": i, "city": "Lyon" if i % 2 else "Osaka"})
    ages: list[int] = []
    cursor: bytes | None = None
    while True:
        page, cursor = await people.lookup_page("age", lower=5, upper=20, limit=4, after=cursor)
        ages += [d.value["age"] for d in page]
        if cursor is None:
            break
    assert ages == list(range(5, 20))
    page, cursor = await people.lookup_page("city_age", equal="Lyon", limit=3, reverse=True)
    assert [d.value["age"] for d in page] == [23, 21, 19] and cursor is not None
    page, _ = await people.lookup_page("city_age", equal="Lyon", limit=3, reverse=True, after=cursor)
    assert [d.value["age"] for d in page] == [17, 15, 13]
    everything, end = await people.lookup_page("age", limit=100)
    assert len(everything) == 25 and end is None
    with pytest.raises(entidb.InvalidArgument, match="search mode"):
        async for _ in people.search("x", index="age", mode="fuzzy"):
            pass
    # A filter resumes after an id too.
    all_docs = [d async for d in people.scan_documents()]
    rest = [
        d.value["age"]
        async for d in people.filter(lambda v: v["age"] % 5 == 0, after=all_docs[10].id)
    ]
    assert rest == [15, 20]


async def test_engine_options_reach_the_engine(tmp_path: Path) -> None:
    db = await entidb.open(
        tmp_path / "db",
        memtable_bytes=1 << 20,
        ingest_bytes=64 << 10,
        block_size=4096,
        compression=False,
        compaction_trigger=4,
        max_document_bytes=1000,
        wal_preallocate=0,
        auto_maintenance=True,
        background_maintenance=False,
    )
    with pytest.raises(entidb.TooLarge):
        await db.collection("c").put({"blob": bytes(2000)})
    async with db.transaction() as tx:
        for i in range(2000):
            await tx.collection("c").put({"i": i, "pad": "x" * 40})
    stats = db.stats()
    assert stats["ingests"] == 1, stats
    assert await db.collection("c").count() == 2000
    await db.close()
    mem = await entidb.open_memory(ingest_bytes=0, memtable_bytes=1 << 20)
    async with mem.transaction() as tx:
        for i in range(2000):
            await tx.collection("c").put({"i": i, "pad": "x" * 40})
    assert mem.stats()["ingests"] == 0
    await mem.close()


async def test_restore_into_an_encrypted_database(tmp_path: Path) -> None:
    async with await entidb.open(tmp_path / "db") as db:
        await db.collection("users").create_search_index("bio")
        uid = await db.collection("users").put({"bio": "writes compilers"})
        info = (await db.collection("users").indexes())[0]
        assert info.kind == "search" and info.text is not None
        assert info.text["fold_case"] is True
        await db.backup(tmp_path / "b.entidb")
    restored = await entidb.restore(tmp_path / "b.entidb", tmp_path / "enc", key="s3cret")
    assert restored.restore_summary is not None
    assert restored.restore_summary["entities"] == 1
    assert await restored.collection("users").get(uid) == {"bio": "writes compilers"}
    await restored.close()
    with pytest.raises(entidb.WrongKey):
        await entidb.open(tmp_path / "enc", key="wrong")
    # Opening an encrypted database with no key is `EncryptionError` itself (not WrongKey).
    with pytest.raises(entidb.EncryptionError) as e:
        await entidb.open(tmp_path / "enc")
    assert type(e.value) is entidb.EncryptionError
    async with await entidb.open(tmp_path / "enc", key="s3cret") as db:
        # The search index was rebuilt in the restored database.
        hits = [h.id async for h in db.collection("users").search("compil", prefix=True)]
        assert hits == [uid]


async def test_backup_to_and_restore_from_file_objects(tmp_path: Path) -> None:
    async with await entidb.open(tmp_path / "db") as db:
        notes = db.collection("notes")
        await notes.create_index("n")
        ids = [await notes.put({"n": i, "blob": bytes(300)}) for i in range(50)]
        buf = io.BytesIO()
        summary = await db.backup(buf)
        assert summary["entities"] == 50 and len(buf.getvalue()) == summary["bytes"]
    # The same bytes as a backup to a file.
    assert (await entidb.verify_backup(io.BytesIO(buf.getvalue())))["entities"] == 50
    restored = await entidb.restore(io.BytesIO(buf.getvalue()), tmp_path / "restored")
    assert restored.restore_summary is not None and restored.restore_summary["entities"] == 50
    assert await restored.collection("notes").get(ids[9]) == {"n": 9, "blob": bytes(300)}
    assert [d.value["n"] async for d in restored.collection("notes").range("n", 47)] == [47, 48, 49]
    await restored.close()
    # A truncated stream is refused, and nothing is left open.
    with pytest.raises(entidb.Corruption):
        await entidb.verify_backup(io.BytesIO(buf.getvalue()[:-3]))
    with pytest.raises(entidb.Corruption):
        await entidb.restore(io.BytesIO(buf.getvalue()[:-3]), tmp_path / "cut")

    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            raise OSError("disk full")

    async with await entidb.open(tmp_path / "db") as db:
        with pytest.raises(entidb.IoError, match="disk full"):
            await db.backup(Broken())
