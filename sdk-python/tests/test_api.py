"""The Python SDK used as a Python developer would use it."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from pathlib import Path

import pytest

import entidb


async def test_crud_and_value_mapping(db: entidb.Database) -> None:
    users = db.collection("users")
    when = datetime.datetime(2026, 11, 27, 12, 30, tzinfo=datetime.timezone.utc)
    ref = uuid.uuid4()
    doc = {
        "name": "Ada",
        "age": 36,
        "score": 1.5,
        "big": 2**70,
        "neg": -(2**64),
        "photo": b"\x00\x01\xff",
        "tags": ["math", "poetry"],
        "address": {"city": "London", "zip": None},
        "active": True,
        "joined": when,
        "ref": ref,
        "tagged": entidb.Tag(100, "x"),
        1: "int key",
    }
    uid = await users.put(doc)
    assert isinstance(uid, uuid.UUID)
    got = await users.get(uid)
    assert got == {**doc, "tags": ["math", "poetry"]}
    assert got["joined"] == when and got["joined"].tzinfo is not None
    assert got["big"] == 2**70 and got["neg"] == -(2**64)
    assert await users.get(str(uid)) == got, "ids as text work too"
    assert await users.get(uid.bytes) == got, "and as 16 bytes"
    d = await users.get_document(uid)
    assert d is not None and d.id == uid and d.version == db.last_sequence
    assert await users.exists(uid)
    assert await users.count() == 1
    # Replace, then delete.
    v1 = d.version
    await users.put({"name": "Ada L."}, id=uid)
    assert (await users.version(uid) or 0) > v1
    assert await users.delete(uid) is True
    assert await users.get(uid) is None
    assert await users.delete(uid) is False


async def test_unmappable_values_raise_type_error_naming_the_path(db: entidb.Database) -> None:
    users = db.collection("users")
    with pytest.raises(TypeError, match=r"\$\.tags\[1\]"):
        await users.put({"tags": ["ok", {1, 2}]})
    with pytest.raises(TypeError, match=r"\$\.when.*naive"):
        await users.put({"when": datetime.datetime(2026, 1, 1)})
    with pytest.raises(TypeError, match=r"object"):
        await users.put({"x": object()})
    assert await users.count() == 0, "nothing was stored"
    with pytest.raises(ValueError):
        await users.get("not-an-id")


async def test_transactions_commit_abort_and_isolation(db: entidb.Database) -> None:
    users = db.collection("users")
    other = db.new_id()
    async with db.transaction() as tx:
        await tx.collection("users").put({"name": "Grace"}, id=other)
        # The transaction sees its own write; others do not yet.
        assert await tx.collection("users").get(other) == {"name": "Grace"}
        assert await users.get(other) is None
    assert await users.get(other) == {"name": "Grace"}

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with db.transaction() as tx:
            await tx.collection("users").put({"name": "Lost"})
            await tx.collection("users").delete(other)
            raise Boom()
    assert await users.count() == 1, "the failed block wrote nothing"
    assert await users.get(other) == {"name": "Grace"}

    # Snapshot isolation seen from two coroutines.
    snap = db.snapshot()
    started = asyncio.Event()

    async def writer() -> None:
        await started.wait()
        await users.put({"name": "Barbara"})
        await users.delete(other)

    async def reader() -> list[object]:
        started.set()
        await asyncio.sleep(0.05)
        seen = [d async for d in snap.collection("users").scan()]
        return seen

    _, seen = await asyncio.gather(writer(), reader())
    assert seen == [{"name": "Grace"}], "the snapshot does not move"
    assert await users.count() == 1
    assert [d["name"] async for d in users.scan()] == ["Barbara"]


async def test_scan_pages_limits_and_cursors(db: entidb.Database) -> None:
    items = db.collection("items")
    ids = [await items.put({"n": i}) for i in range(25)]
    assert [d["n"] async for d in items.scan(page_size=7)] == list(range(25))
    assert [d["n"] async for d in items.scan(limit=10, page_size=4)] == list(range(10))
    after = [d["n"] async for d in items.scan(after=ids[19])]
    assert after == list(range(20, 25))


async def test_indexes_find_range_prefix_and_unique(db: entidb.Database) -> None:
    users = db.collection("users")
    await users.put({"email": "ada@example.com", "age": 36, "name": "Ada", "address": {"city": "London"}})
    await users.put({"email": "alan@example.com", "age": 41, "name": "Alan", "address": {"city": "London"}})
    await users.put({"email": "grace@example.com", "age": 45, "name": "Grace", "address": {"city": "NYC"}})
    assert await users.create_index("email", unique=True) == "email"
    await users.create_index("age")
    await users.create_index(["address.city", "age"], name="city_age")
    await users.create_index("name")
    ada = [d async for d in users.find("email", "ada@example.com")]
    assert [d["name"] for d in ada] == ["Ada"]
    assert (await users.find_one("email", "nobody@example.com")) is None
    in_range = [d.value["name"] async for d in users.range("age", 36, 45)]
    assert in_range == ["Ada", "Alan"]
    london = [d.value["name"] async for d in users.find_documents("city_age", ("London",))]
    assert london == ["Ada", "Alan"]
    older = [d.value["name"] async for d in users.range("city_age", ("London", 40), ("London",), include_upper=True)]
    assert older == ["Alan"]
    al = [d.value["name"] async for d in users.prefix("name", "Al")]
    assert al == ["Alan"]
    with pytest.raises(entidb.UniqueViolation, match="ada@example.com"):
        await users.put({"email": "ada@example.com", "age": 1})
    with pytest.raises(entidb.NotFound):
        async for _ in users.find("nope", 1):
            pass
    infos = {i.name: i for i in await users.indexes()}
    assert infos["email"].unique and infos["city_age"].fields == ["address.city", "age"]
    assert infos["email"].text is None, "text options belong to search indexes"
    assert await users.drop_index("name") is True
    report = await db.verify_indexes()
    assert report["ok"] is True, report
    stats = db.stats()
    assert stats["index_lookups"] >= 5


async def test_full_text_search(db: entidb.Database) -> None:
    posts = db.collection("posts")
    await posts.create_search_index(["title", "body"])
    a = await posts.put({"title": "Distributed systems", "body": "Consensus and replication."})
    await posts.put({"title": "Crème brûlée", "body": "A French dessert."})
    await posts.put({"title": "Systems of equations", "body": "Linear algebra."})
    hits = [h async for h in posts.search("distributed systems", limit=10)]
    assert [h.id for h in hits] == [a]
    assert hits[0].score > 0 and hits[0].document["title"] == "Distributed systems"
    assert len([h async for h in posts.search("creme brulee")]) == 1
    assert len([h async for h in posts.search("systems", mode="any")]) == 2
    assert len([h async for h in posts.search("distributed repl", prefix=True)]) == 1
    assert len([h async for h in posts.search("systems distributed", mode="phrase")]) == 0


async def test_change_feed(db: entidb.Database) -> None:
    notes = db.collection("notes")
    uid = await notes.put({"text": "one"})
    await notes.delete(uid)
    feed = db.changes(since=0)
    seen = []
    async for ch in feed:
        seen.append((ch.op, ch.collection, ch.id, ch.document))
        if len(seen) == 3:
            break
    assert seen == [
        ("collection_created", "notes", None, None),
        ("put", "notes", uid, {"text": "one"}),
        ("delete", "notes", uid, None),
    ]

    # The feed follows new commits.
    async def follow() -> entidb.Change:
        async for ch in db.changes(since=db.last_sequence):
            return ch
        raise AssertionError("feed ended")

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    later = await notes.put({"text": "two"})
    ch = await asyncio.wait_for(task, 10)
    assert ch.id == later and ch.document == {"text": "two"}


async def test_exceptions_form_a_hierarchy(tmp_path: Path) -> None:
    for cls in (
        entidb.NotFound,
        entidb.Conflict,
        entidb.UniqueViolation,
        entidb.Corruption,
        entidb.Closed,
        entidb.Locked,
        entidb.InvalidArgument,
        entidb.DocumentError,
        entidb.TooLarge,
        entidb.FullScanForbidden,
        entidb.FeedTruncated,
        entidb.IoError,
        entidb.SyncError,
        entidb.AuthError,
        entidb.MigrationError,
        entidb.EncryptionError,
        entidb.WrongKey,
        entidb.ReadOnly,
    ):
        assert issubclass(cls, entidb.Error)
    assert issubclass(entidb.UniqueViolation, entidb.Conflict)
    assert issubclass(entidb.AuthError, entidb.SyncError)

    path = tmp_path / "locked"
    db = await entidb.open(path)
    with pytest.raises(entidb.Locked):
        await entidb.open(path)
    with pytest.raises(entidb.InvalidArgument):
        await db.collection("").put({"x": 1})
    with pytest.raises(entidb.InvalidArgument):
        await db.collection("c").create_index("x", kind="bogus")
    await db.close()
    with pytest.raises(entidb.Closed):
        await db.collection("c").get(uuid.uuid4())
    with pytest.raises(entidb.Error):
        await entidb.open(tmp_path / "missing", create=False)

    # A damaged segment is reported as corruption, never as wrong data.
    async with await entidb.open(tmp_path / "damaged") as d2:
        for i in range(200):
            await d2.collection("c").put({"i": i, "pad": "x" * 100})
        await d2.checkpoint()
    seg = sorted((tmp_path / "damaged").glob("*.sst"))[0]
    raw = bytearray(seg.read_bytes())
    raw[100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with pytest.raises(entidb.Corruption):
        # Found when the catalog is read at open, or else by verify.
        d3 = await entidb.open(tmp_path / "damaged")
        await d3.verify()

    memdb = await entidb.open_memory(forbid_full_scans=True)
    assert await memdb.collection("c").count() == 0


async def test_reopen_keeps_data_and_indexes(tmp_path: Path) -> None:
    async with await entidb.open(tmp_path / "db") as db:
        users = db.collection("users")
        await users.create_index("email", unique=True, kind="equality")
        uid = await users.put({"email": "a@b.c"})
    async with await entidb.open(tmp_path / "db") as db:
        users = db.collection("users")
        assert await users.get(uid) == {"email": "a@b.c"}
        assert (await users.find_one("email", "a@b.c")) == {"email": "a@b.c"}


async def test_many_coroutines_keep_the_loop_responsive(db: entidb.Database) -> None:
    items = db.collection("items")
    ticks = 0
    max_gap = 0.0
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def ticker() -> None:
        nonlocal ticks, max_gap
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            max_gap = max(max_gap, now - last)
            last = now
            ticks += 1

    async def worker(w: int) -> None:
        for i in range(100):
            await items.put({"w": w, "i": i})

    t = asyncio.create_task(ticker())
    await asyncio.gather(*(worker(w) for w in range(100)))
    done.set()
    await t
    assert await items.count() == 10_000
    # The ticker kept ticking: no call held the loop (the whole run takes seconds; a
    # blocking call would leave a gap of about that size).
    assert ticks >= 10, ticks
    assert max_gap < 1.0, max_gap


async def test_optimistic_writes_and_more_error_classes(tmp_path: Path) -> None:
    db = await entidb.open(tmp_path / "db", feed_retention=3)
    users = db.collection("users")
    uid = db.new_id()
    v1 = await users.put_if({"n": 1}, uid, None)
    with pytest.raises(entidb.Conflict):
        await users.put_if({"n": 2}, uid, None)  # it exists now
    with pytest.raises(entidb.Conflict, match="expected version"):
        await users.put_if({"n": 2}, uid, v1 + 100)
    v2 = await users.put_if({"n": 2}, uid, v1)
    assert v2 > v1 and await users.get(uid) == {"n": 2}
    with pytest.raises(entidb.Conflict):
        await users.delete_if(uid, v1)
    assert await users.delete_if(uid, v2) is True

    with pytest.raises(entidb.TooLarge):
        await users.put({"blob": b"x" * (17 << 20)})

    for i in range(10):
        await users.put({"i": i})
    await db.compact()
    with pytest.raises(entidb.FeedTruncated):
        async for _ in db.changes(since=1):
            break
    await db.close()


async def test_unreachable_server_raises_sync_error(tmp_path: Path) -> None:
    db = await entidb.open(tmp_path / "db")
    s = await entidb.sync.connect(
        db,
        "http://127.0.0.1:9",  # nothing listens on the discard port
        token="x.e30.y",
        collections=["notes"],
        database="app",
        client_id="offline",
    )
    await db.collection("notes").put({"text": "written offline"})
    with pytest.raises(entidb.SyncError) as err:
        await s.sync_now()
    assert not isinstance(err.value, entidb.AuthError)
    assert err.value.retryable is True, "a network error may succeed later"
    assert not s.status.online and s.status.last_error
    # The write waits in the outbox; nothing is lost.
    assert await s.pending_ops() == 1
    await db.close()


async def test_backup_verify_restore(tmp_path: Path) -> None:
    async with await entidb.open(tmp_path / "db") as db:
        users = db.collection("users")
        await users.create_index("email", unique=True)
        ids = [await users.put({"email": f"u{i}@x", "blob": bytes([i])}) for i in range(20)]
        summary = await db.backup(tmp_path / "backup.entidb")
        assert summary["entities"] == 20 and summary["indexes"] == 1
    checked = await entidb.verify_backup(tmp_path / "backup.entidb")
    assert checked["entities"] == 20
    restored = await entidb.restore(tmp_path / "backup.entidb", tmp_path / "restored")
    users = restored.collection("users")
    assert await users.get(ids[3]) == {"email": "u3@x", "blob": b"\x03"}
    assert (await users.find_one("email", "u7@x")) is not None
    await restored.close()
    raw = (tmp_path / "backup.entidb").read_bytes()
    (tmp_path / "cut.entidb").write_bytes(raw[:-5])
    with pytest.raises(entidb.Corruption, match="truncated"):
        await entidb.verify_backup(tmp_path / "cut.entidb")
    with pytest.raises(entidb.Corruption):
        await entidb.restore(tmp_path / "cut.entidb", tmp_path / "again")


async def test_migrations(tmp_path: Path) -> None:
    async def v1(tx: entidb.Transaction) -> None:
        await tx.collection("settings").put({"theme": "dark"}, id=uuid.UUID(int=1))

    async def v2(tx: entidb.Transaction) -> None:
        await tx.collection("settings").put({"theme": "light"}, id=uuid.UUID(int=1))
        raise RuntimeError("v2 is broken")

    db = await entidb.open(tmp_path / "db", migrations={1: v1})
    assert await db.schema_version() == 1
    with pytest.raises(entidb.MigrationError, match="v2 is broken"):
        await db.migrate({1: v1, 2: v2})
    assert await db.schema_version() == 1, "the failed step left the previous version"
    assert await db.collection("settings").get(uuid.UUID(int=1)) == {"theme": "dark"}

    async def v2_fixed(tx: entidb.Transaction) -> None:
        await tx.collection("settings").put({"theme": "light"}, id=uuid.UUID(int=1))

    assert await db.migrate({1: v1, 2: v2_fixed}) == (1, 2)
    with pytest.raises(entidb.MigrationError, match="newer"):
        await db.migrate({1: v1})
    await db.close()


async def test_descending_ranges(db: entidb.Database) -> None:
    people = db.collection("people")
    await people.create_index("age")
    for age in [30, 41, 36, 45, 72]:
        await people.put({"age": age})
    oldest = [d.value["age"] async for d in people.range("age", reverse=True, limit=3, page_size=2)]
    assert oldest == [72, 45, 41]
    under_45 = [d.value["age"] async for d in people.range("age", upper=45, reverse=True)]
    assert under_45 == [41, 36, 30]


async def test_encryption_with_the_wrong_key(tmp_path: Path) -> None:
    marker = "py-secret-marker-91c2"
    db = await entidb.open(tmp_path / "enc", key="correct horse")
    await db.collection("notes").put({"text": marker})
    await db.checkpoint()
    await db.close()
    for f in (tmp_path / "enc").iterdir():
        assert marker.encode() not in f.read_bytes(), f"plaintext in {f.name}"
    with pytest.raises(entidb.WrongKey):
        await entidb.open(tmp_path / "enc", key="wrong horse")
    with pytest.raises(entidb.EncryptionError):
        await entidb.open(tmp_path / "enc")  # no key
    with pytest.raises(ValueError):
        await entidb.open(tmp_path / "other", key=b"too short")
    await entidb.rekey(tmp_path / "enc", "correct horse", bytes(32))
    with pytest.raises(entidb.Error):
        await entidb.open(tmp_path / "enc", key="correct horse")
    async with await entidb.open(tmp_path / "enc", key=bytes(32)) as db:
        assert [d["text"] async for d in db.collection("notes").scan()] == [marker]


async def test_remaining_exception_classes(tmp_path: Path) -> None:
    db = await entidb.open(tmp_path / "db")
    items = db.collection("items")
    for i in range(10):
        await items.put({"i": i})
    # A predicate scan works, and is a scan.
    odd = [d.value["i"] async for d in items.filter(lambda v: v["i"] % 2 == 1, page_size=3)]
    assert odd == [1, 3, 5, 7, 9]
    assert db.stats()["scans"] >= 1
    with pytest.raises(ZeroDivisionError):
        async for _ in items.filter(lambda v: 1 / 0):
            pass
    # Two NaN keys are two Python keys but one CBOR key: no canonical form.
    with pytest.raises(entidb.DocumentError):
        await items.put({float("nan"): 1, float("nan"): 2})
    # The backup target's directory does not exist.
    with pytest.raises(entidb.IoError):
        await db.backup(tmp_path / "missing-dir" / "b.entidb")
    await db.close()
    strict = await entidb.open(tmp_path / "strict", forbid_full_scans=True)
    await strict.collection("items").put({"i": 1})
    with pytest.raises(entidb.FullScanForbidden):
        async for _ in strict.collection("items").filter(lambda v: True):
            pass
    await strict.close()


async def test_read_only_snapshot_beside_a_writer(tmp_path: Path) -> None:
    writer = await entidb.open(tmp_path / "db")
    await writer.collection("c").put({"n": 1})
    ro = await entidb.open(tmp_path / "db", read_only=True)
    await writer.collection("c").put({"n": 2})
    assert await ro.collection("c").count() == 1, "the state at open"
    with pytest.raises(entidb.ReadOnly):
        await ro.collection("c").put({"n": 3})
    await ro.close()
    await writer.close()


async def test_a_second_writer_in_the_same_task_is_an_error_not_a_hang(
    tmp_path: Path,
) -> None:
    """The database has one writer and it is not re-entrant: a write outside the open
    transaction, from the task that holds it, waited for itself forever."""
    db = await entidb.open(tmp_path / "db")
    notes = db.collection("notes")
    async with db.transaction() as tx:
        await tx.collection("notes").put({"n": 1})
        for write in (
            lambda: notes.put({"n": 2}),
            lambda: notes.delete(uuid.uuid4()),
            lambda: db.begin(),
            lambda: notes.create_index("n"),
            lambda: db.create_collection("other"),
        ):
            # `asyncio.timeout` keeps the call in this task (`wait_for` would run it in
            # a task of its own, which waits for the transaction instead).
            with pytest.raises(entidb.InvalidArgument, match="open transaction"):
                async with asyncio.timeout(10):
                    await write()
        # Another task waits for the transaction, as it should, and writes after it.
        later = asyncio.create_task(notes.put({"n": 3}))
        await asyncio.sleep(0.05)
        assert not later.done()
    await asyncio.wait_for(later, 10)
    assert await notes.count() == 2
    # A transaction from `begin` used with `async with` is not begun a second time.
    tx2 = await db.begin()
    async with tx2:
        await tx2.collection("notes").put({"n": 4})
    assert tx2.sequence is not None and await notes.count() == 3
    # Closing with a transaction open in this task aborts it instead of waiting for it.
    tx3 = await db.begin()
    await tx3.collection("notes").put({"n": 5})
    async with asyncio.timeout(10):
        await db.close()
    db = await entidb.open(tmp_path / "db")
    assert await db.collection("notes").count() == 3
    await db.close()


async def test_failed_and_cancelled_transactions_give_the_writer_back(
    tmp_path: Path,
) -> None:
    db = await entidb.open(tmp_path / "db")
    # An origin over 255 bytes fails after the transaction began: it is aborted.
    with pytest.raises(entidb.TooLarge):
        async with db.transaction(origin="x" * 256):
            pass
    await asyncio.wait_for(db.collection("c").put({"ok": True}), 10)
    await db.close()

    # A migration step cancelled by a timeout: open gives up, and the writer is free.
    async def slow(tx: entidb.Transaction) -> None:
        await tx.collection("c").put({"step": 1})
        await asyncio.sleep(30)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(entidb.open(tmp_path / "db", migrations={1: slow}), 0.5)
    db = await asyncio.wait_for(entidb.open(tmp_path / "db"), 10)
    assert await db.schema_version() == 0
    await db.close()


async def test_values_the_serde_path_refused_and_stamps_python_cannot_hold(
    db: entidb.Database,
) -> None:
    c = db.collection("odd")
    # Undefined and simple values are stored by a plain put too, as by a transaction's.
    nid = await c.put({"u": entidb.Undefined, "s": entidb.Simple(99)})
    assert await c.get(nid) == {"u": entidb.Undefined, "s": entidb.Simple(99)}
    # An aware datetime.max rounds past year 9999 on the way in: it reads back as its tag
    # (every read of the document raised ValueError).
    far = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    fid = await c.put({"until": far})
    got = await c.get(fid)
    assert isinstance(got["until"], entidb.Tag) and got["until"].tag == 1
    assert len([d async for d in c.scan()]) == 2
    # A page size of 0 would never move: refused.
    with pytest.raises(entidb.InvalidArgument, match="page_size"):
        async for _ in c.scan(page_size=0):
            pass


async def test_exists_and_version_do_not_convert_the_document(db: entidb.Database) -> None:
    """A document with no Python form (a map used as a map key) exists and has a version:
    both read it as a value and raised."""
    c = db.collection("raw")
    rid = await c.put_raw(bytes([0xA1, 0xA1, 0x01, 0x02, 0x03]))
    with pytest.raises(TypeError):  # a dict cannot be a dict key
        await c.get(rid)
    assert await c.exists(rid)
    version = await c.version(rid)
    assert isinstance(version, int) and version > 0


async def test_an_abandoned_transaction_is_freed_and_a_finished_one_can_run_again(
    tmp_path: Path,
) -> None:
    """The database handle tracks the open transaction weakly: one the application drops
    without committing or aborting is freed, and the writer with it (a strong reference
    kept it, and every later write waited forever). A finished transaction object starts a
    new transaction when used again."""
    import gc

    db = await entidb.open(tmp_path / "db")
    tx = await db.begin()
    await tx.collection("c").put({"lost": True})
    del tx
    gc.collect()
    async with asyncio.timeout(10):
        await db.collection("c").put({"after": True})
    assert await db.collection("c").count() == 1
    t = db.transaction()
    for n in range(2):
        async with t:
            await t.collection("c").put({"n": n})
        assert t.sequence is not None
    assert await db.collection("c").count() == 3
    await db.close()
