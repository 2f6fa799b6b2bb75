"""EntiDB for Python: an asyncio-native embedded entity database with offline-first sync.

```python
import entidb

db = await entidb.open("app.db")
users = db.collection("users")
uid = await users.put({"name": "Ada", "age": 36})
doc = await users.get(uid)
async with db.transaction() as tx:
    await tx.collection("users").put({"name": "Grace"}, id=other_id)
```

Every call is a coroutine that runs the engine on a native thread pool without the GIL, so the
event loop stays responsive and many coroutines can share one database. Documents are
dicts (any value of the table in the README maps to canonical CBOR); ids are `uuid.UUID`.
Errors derive from `entidb.Error`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Union,
)

from . import _entidb
from ._entidb import (
    AuthError,
    Closed,
    Conflict,
    Corruption,
    DocumentError,
    EncryptionError,
    Error,
    FeedTruncated,
    FullScanForbidden,
    InvalidArgument,
    IoError,
    Locked,
    MigrationError,
    NotFound,
    ReadOnly,
    SyncError,
    TooLarge,
    UniqueViolation,
    WrongKey,
)
from ._types import Simple, Tag, Undefined

__all__ = [
    "AuthError",
    "Change",
    "ChangeBatch",
    "Closed",
    "Collection",
    "Conflict",
    "Corruption",
    "Database",
    "Document",
    "DocumentError",
    "EncryptionError",
    "Error",
    "FeedTruncated",
    "FullScanForbidden",
    "IndexInfo",
    "InvalidArgument",
    "IoError",
    "Locked",
    "MigrationError",
    "Migrations",
    "Readable",
    "Writable",
    "NotFound",
    "ReadOnly",
    "SearchHit",
    "Simple",
    "Snapshot",
    "SyncError",
    "Tag",
    "TooLarge",
    "Transaction",
    "Undefined",
    "UniqueViolation",
    "WrongKey",
    "open",
    "rekey",
    "open_memory",
    "restore",
    "verify_backup",
    "sync",
]

__version__ = _entidb.__version__

IdLike = Union[uuid.UUID, str, bytes]
#: Migration steps: the version each step produces -> an async function of the transaction
#: it runs in.
Migrations = Mapping[int, Callable[["Transaction"], Awaitable[None]]]
PathLike = Union[str, "os.PathLike[str]"]


def _current_task() -> Optional[asyncio.Task[Any]]:
    """The running task, or None outside one (a transaction begun there is not tracked)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _check_page_size(page_size: int) -> None:
    if page_size < 1:
        # A page of 0 would end where it started: the iteration would never move.
        raise InvalidArgument(f"page_size must be at least 1, not {page_size}")


class Writable(Protocol):
    """Where `Database.backup` can write: any binary file object with `write`."""

    def write(self, data: bytes, /) -> object: ...


class Readable(Protocol):
    """What `verify_backup` and `restore` can read: any binary file object with `read`."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class Document:
    """A stored entity: its id, its version (the sequence of the commit that last wrote
    it) and its value."""

    id: uuid.UUID
    version: int
    value: Any


@dataclass(frozen=True)
class SearchHit:
    """One full-text search result, best first."""

    id: uuid.UUID
    score: float
    version: int
    document: Any


@dataclass(frozen=True)
class Change:
    """One change of a committed transaction, from `Database.changes()`.

    `op` is "put", "delete", "superseded" (the put's value is gone: a later commit
    overwrote it or dropped its collection, and the feed reports that later), "collection_created"
    or "collection_dropped". `document` is the new value of a put. A put that a later commit
    overwrote is usually left out of its transaction altogether once compaction discards its
    version (the later change carries the newer state); the transaction itself stays.
    """

    sequence: int
    timestamp_ms: int
    origin: Optional[str]
    collection: str
    id: Optional[uuid.UUID]
    version: int
    op: str
    document: Any


@dataclass(frozen=True)
class ChangeBatch:
    """One committed transaction of the change feed, from `Database.changes_page_filtered()`:
    its sequence, commit time, origin tag and the changes the filter kept (possibly none)."""

    sequence: int
    timestamp_ms: int
    origin: Optional[str]
    changes: list[Change]


@dataclass(frozen=True)
class IndexInfo:
    """A declared index: name, field paths, kind ("ordered", "equality" or "search"), and
    for a search index its text options (`{"stem_english": ..., "fold_case": ...,
    "fold_diacritics": ...}`; None for other kinds)."""

    name: str
    fields: list[str]
    kind: str
    unique: bool
    text: Optional[dict[str, Any]] = None


def _doc(row: tuple[uuid.UUID, int, Any]) -> Document:
    return Document(id=row[0], version=row[1], value=row[2])


def _values(value: Any) -> list[Any]:
    """One index value, or a tuple of values for a composite index."""
    return list(value) if isinstance(value, tuple) else [value]


class _Reads:
    """Reads of one collection from one source (latest state, snapshot or transaction)."""

    def __init__(self, reader: _entidb.Reader, name: str) -> None:
        self._reader = reader
        self._name = name

    @property
    def name(self) -> str:
        """The collection's name."""
        return self._name

    async def get(self, id: IdLike) -> Any:
        """The document with this id, or None."""
        row = await self._reader.get(self._name, id)
        return None if row is None else row[2]

    async def get_document(self, id: IdLike) -> Optional[Document]:
        """The document with its id and version, or None."""
        row = await self._reader.get(self._name, id)
        return None if row is None else _doc(row)

    async def get_raw(self, id: IdLike) -> Optional[bytes]:
        """The stored document as canonical CBOR bytes, or None (no conversion: pass it on
        to another CBOR reader or back to `put_raw`)."""
        row = await self._reader.get_raw(self._name, id)
        return None if row is None else row[2]

    async def exists(self, id: IdLike) -> bool:
        """Whether the entity exists."""
        # The version alone, not the value: a document with no Python form (a map used as
        # a key) exists all the same, and nothing is converted or copied.
        return await self._reader.version(self._name, id) is not None

    async def version(self, id: IdLike) -> Optional[int]:
        """The entity's version, or None."""
        return await self._reader.version(self._name, id)

    async def count(self) -> int:
        """Number of entities (a full scan of the collection)."""
        return await self._reader.count(self._name)

    async def scan_documents(
        self,
        *,
        limit: Optional[int] = None,
        after: Optional[IdLike] = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Document]:
        """Documents in id order, fetched a page at a time."""
        async for d in self._pages(
            lambda a, n: self._reader.scan(self._name, a, n), limit, page_size, after
        ):
            yield d

    async def _pages(
        self,
        fetch: Callable[
            [Optional[IdLike], int], Awaitable[tuple[list[tuple[uuid.UUID, int, Any]], Optional[uuid.UUID]]]
        ],
        limit: Optional[int],
        page_size: int,
        after: Optional[IdLike],
    ) -> AsyncIterator[Document]:
        _check_page_size(page_size)
        left = limit
        while left is None or left > 0:
            n = page_size if left is None else min(page_size, left)
            rows, nxt = await fetch(after, n)
            for row in rows:
                yield _doc(row)
            if left is not None:
                left -= len(rows)
            if nxt is None:
                return
            after = nxt

    async def scan(
        self,
        *,
        limit: Optional[int] = None,
        after: Optional[IdLike] = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Any]:
        """Document values in id order, fetched a page at a time."""
        async for d in self.scan_documents(limit=limit, after=after, page_size=page_size):
            yield d.value

    async def filter(
        self,
        predicate: Callable[[Any], object],
        *,
        limit: Optional[int] = None,
        after: Optional[IdLike] = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Document]:
        """Documents whose value `predicate` accepts, in id order, after the id `after` if
        given: a full scan (counted in `stats()["scans"]`; raises `FullScanForbidden` if the
        database was opened with `forbid_full_scans=True`). Use an index for anything
        frequent."""
        async for d in self._pages(
            lambda a, n: self._reader.scan_where(self._name, predicate, a, n),
            limit,
            page_size,
            after,
        ):
            yield d

    async def _lookup(
        self, index: str, kind: str, limit: Optional[int], page_size: int, **q: Any
    ) -> AsyncIterator[Document]:
        _check_page_size(page_size)
        left = limit
        cursor: Optional[bytes] = None
        while left is None or left > 0:
            n = page_size if left is None else min(page_size, left)
            rows, cursor = await self._reader.lookup(
                self._name, index, kind, limit=n, after=cursor, **q
            )
            for row in rows:
                yield _doc(row)
            if left is not None:
                left -= len(rows)
            if cursor is None or not rows:
                return

    async def lookup_page(
        self,
        index: str,
        *,
        equal: Any = None,
        lower: Any = None,
        upper: Any = None,
        include_lower: bool = True,
        include_upper: bool = False,
        prefix: Union[str, bytes, None] = None,
        limit: int = 100,
        after: Optional[bytes] = None,
        reverse: bool = False,
    ) -> tuple[list[Document], Optional[bytes]]:
        """One page of an index lookup and the cursor to pass as `after` for the next page
        (None at the end), so that a lookup can resume later (a web request's next page).

        The lookup is: `prefix` (after leading fields `equal`) if given; else a range if
        `lower` or `upper` is given; else equality with `equal`; else every entry. Values
        of composite indexes are tuples."""
        q: dict[str, Any] = {"reverse": reverse}
        if prefix is not None:
            kind = "prefix"
            q.update(values=[] if equal is None else _values(equal), prefix=prefix)
        elif lower is not None or upper is not None:
            kind = "range"
            q.update(
                lower=None if lower is None else _values(lower),
                lower_inclusive=include_lower,
                upper=None if upper is None else _values(upper),
                upper_inclusive=include_upper,
            )
        elif equal is not None:
            kind = "eq"
            q.update(values=_values(equal))
        else:
            kind = "all"
        rows, cursor = await self._reader.lookup(
            self._name, index, kind, limit=limit, after=after, **q
        )
        return [_doc(r) for r in rows], cursor

    async def find_documents(
        self,
        index: str,
        value: Any,
        *,
        limit: Optional[int] = None,
        page_size: int = 1000,
        reverse: bool = False,
    ) -> AsyncIterator[Document]:
        """Documents whose indexed value equals `value` (a tuple for the leading fields of
        a composite index), in index order (descending with `reverse=True`)."""
        async for d in self._lookup(
            index, "eq", limit, page_size, values=_values(value), reverse=reverse
        ):
            yield d

    async def find(
        self, index: str, value: Any, *, limit: Optional[int] = None, page_size: int = 1000
    ) -> AsyncIterator[Any]:
        """Values of the documents whose indexed value equals `value`."""
        async for d in self.find_documents(index, value, limit=limit, page_size=page_size):
            yield d.value

    async def find_one(self, index: str, value: Any) -> Any:
        """The first document (value) whose indexed value equals `value`, or None."""
        async for v in self.find(index, value, limit=1):
            return v
        return None

    async def range(
        self,
        index: str,
        lower: Any = None,
        upper: Any = None,
        *,
        include_lower: bool = True,
        include_upper: bool = False,
        limit: Optional[int] = None,
        page_size: int = 1000,
        reverse: bool = False,
    ) -> AsyncIterator[Document]:
        """Documents of an ordered index between `lower` and `upper` (None: unbounded;
        tuples for composite keys), in index order, or descending with `reverse=True`
        (`users.range("age", reverse=True, limit=10)`: the 10 oldest)."""
        async for d in self._lookup(
            index,
            "range",
            limit,
            page_size,
            reverse=reverse,
            lower=None if lower is None else _values(lower),
            lower_inclusive=include_lower,
            upper=None if upper is None else _values(upper),
            upper_inclusive=include_upper,
        ):
            yield d

    async def prefix(
        self,
        index: str,
        prefix: Union[str, bytes],
        *,
        equal: Any = None,
        limit: Optional[int] = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Document]:
        """Documents of an ordered index whose (next) field starts with `prefix`, after
        leading fields equal to `equal` (a tuple) if given."""
        values = [] if equal is None else _values(equal)
        async for d in self._lookup(
            index, "prefix", limit, page_size, values=values, prefix=prefix
        ):
            yield d

    async def search(
        self,
        text: str,
        *,
        index: Optional[str] = None,
        mode: str = "all",
        prefix: bool = False,
        limit: int = 20,
        offset: int = 0,
    ) -> AsyncIterator[SearchHit]:
        """Full-text search ranked by BM25. `mode`: "all" words, "any" word, or "phrase";
        `prefix=True` treats the last word as a prefix. `index` defaults to the
        collection's only search index."""
        if index is None:
            names = [i.name for i in await self.indexes() if i.kind == "search"]
            if len(names) != 1:
                raise InvalidArgument(
                    f"collection {self._name!r} has {len(names)} search indexes; pass index="
                )
            index = names[0]
        hits = await self._reader.search(
            self._name, index, text, mode=mode, prefix=prefix, limit=limit, offset=offset
        )
        for score, id, version, doc in hits:
            yield SearchHit(id=id, score=score, version=version, document=doc)

    async def indexes(self) -> list[IndexInfo]:
        """The collection's indexes."""
        return [
            IndexInfo(
                name=i["name"],
                fields=i["fields"],
                kind=i["kind"],
                unique=i["unique"],
                # The engine gives every index its text options; they mean something
                # only for a search index (None for the others, as documented).
                text=i.get("text") if i["kind"] == "search" else None,
            )
            for i in await self._reader.indexes(self._name)
        ]


class Collection(_Reads):
    """A collection of the latest state: every write is its own durable transaction."""

    def __init__(self, db: Database, name: str) -> None:
        super().__init__(db._native.reader(), name)
        self._db = db

    async def put(
        self, doc: Any, id: Optional[IdLike] = None, *, relaxed: bool = False
    ) -> uuid.UUID:
        """Write a document (a new time-ordered id unless `id` is given); returns the id.
        Durable when this returns, unless `relaxed=True` (visible at once; a crash may lose
        it, never part of it)."""
        self._db._check_writer()
        new_id, _ = await self._db._native.put(self._name, doc, id, relaxed)
        return new_id

    async def put_versioned(
        self, doc: Any, id: Optional[IdLike] = None, *, relaxed: bool = False
    ) -> tuple[uuid.UUID, int]:
        """Like `put`, returning `(id, version)`: the version to pass to `put_if` later."""
        self._db._check_writer()
        return await self._db._native.put(self._name, doc, id, relaxed)

    async def put_raw(
        self, data: bytes, id: Optional[IdLike] = None, *, relaxed: bool = False
    ) -> uuid.UUID:
        """Write a document given as CBOR bytes: one CBOR item, stored in canonical form
        (anything else raises `DocumentError`); returns the id."""
        self._db._check_writer()
        new_id, _ = await self._db._native.put_raw(self._name, bytes(data), id, relaxed)
        return new_id

    async def delete(self, id: IdLike, *, relaxed: bool = False) -> bool:
        """Delete an entity; returns whether it existed."""
        self._db._check_writer()
        return await self._db._native.delete(self._name, id, relaxed)

    async def create_index(
        self,
        fields: Union[str, Sequence[str]],
        *,
        name: Optional[str] = None,
        unique: bool = False,
        kind: str = "ordered",
    ) -> str:
        """Declare an index on one field path (`"address.city"`) or several (composite)
        and build it in one transaction. `kind`: "ordered" (equality, ranges, prefixes) or
        "equality" (hashed keys, equality only). Returns the index name (by default the
        fields joined by commas)."""
        async with self._db.transaction() as tx:
            return await tx.collection(self._name).create_index(
                fields, name=name, unique=unique, kind=kind
            )

    async def create_search_index(
        self,
        fields: Union[str, Sequence[str]],
        *,
        name: Optional[str] = None,
        stem_english: bool = False,
        fold_case: bool = True,
        fold_diacritics: bool = True,
    ) -> str:
        """Declare a full-text index over text fields; returns its name."""
        fs = [fields] if isinstance(fields, str) else list(fields)
        n = name or "search:" + ",".join(fs)
        async with self._db.transaction() as tx:
            await tx._native().create_index(
                self._name,
                n,
                fs,
                kind="search",
                stem_english=stem_english,
                fold_case=fold_case,
                fold_diacritics=fold_diacritics,
            )
        return n

    async def drop_index(self, name: str) -> bool:
        """Drop an index; returns whether it existed."""
        async with self._db.transaction() as tx:
            return await tx.collection(self._name).drop_index(name)

    async def put_if(self, doc: Any, id: IdLike, version: Optional[int]) -> int:
        """Write only if the entity's current version is `version` (None: it must not
        exist); raises `Conflict` otherwise. Returns the new version."""
        async with self._db.transaction() as tx:
            await tx.collection(self._name).put_if(doc, id, version)
        assert tx.sequence is not None
        return tx.sequence

    async def delete_if(self, id: IdLike, version: Optional[int]) -> bool:
        """Delete only if the entity's current version is `version`; raises `Conflict`
        otherwise. Returns whether it existed."""
        async with self._db.transaction() as tx:
            existed = await tx.collection(self._name).delete_if(id, version)
        return existed


class TxCollection(_Reads):
    """A collection inside a transaction: reads see the transaction's writes."""

    def __init__(self, tx: _entidb.Transaction, name: str) -> None:
        super().__init__(tx.reader(), name)
        self._tx = tx

    async def put(self, doc: Any, id: Optional[IdLike] = None) -> uuid.UUID:
        """Write a document in the transaction; returns its id."""
        return await self._tx.put(self._name, doc, id)

    async def put_raw(self, data: bytes, id: Optional[IdLike] = None) -> uuid.UUID:
        """Write a document given as CBOR bytes (stored canonicalized); returns its id."""
        return await self._tx.put_raw(self._name, bytes(data), id)

    async def create_index(
        self,
        fields: Union[str, Sequence[str]],
        *,
        name: Optional[str] = None,
        unique: bool = False,
        kind: str = "ordered",
    ) -> str:
        """Declare an index in this transaction (built from what the transaction sees,
        committed with it); see `Collection.create_index`."""
        fs = [fields] if isinstance(fields, str) else list(fields)
        n = name or ",".join(fs)
        await self._tx.create_index(self._name, n, fs, kind=kind, unique=unique)
        return n

    async def drop_index(self, name: str) -> bool:
        """Drop an index in this transaction; returns whether it existed."""
        return await self._tx.drop_index(self._name, name)

    async def delete(self, id: IdLike) -> bool:
        """Delete an entity in the transaction; returns whether it existed."""
        return await self._tx.delete(self._name, id)

    async def put_if(self, doc: Any, id: IdLike, version: Optional[int]) -> None:
        """Write only if the committed version is `version` (None: must not exist);
        raises `Conflict` otherwise."""
        await self._tx.put_if(self._name, doc, id, version)

    async def delete_if(self, id: IdLike, version: Optional[int]) -> bool:
        """Delete only if the committed version is `version`; raises `Conflict` otherwise."""
        return await self._tx.delete_if(self._name, id, version)


class Transaction:
    """A write transaction. Use `async with db.transaction() as tx:`; it commits when the
    block ends and aborts if it raises. Only one transaction writes at a time; others wait
    when they begin."""

    def __init__(
        self, db: Database, relaxed: bool = False, origin: Optional[str] = None
    ) -> None:
        self._db = db
        self._relaxed = relaxed
        self._origin = origin
        self._tx: Optional[_entidb.Transaction] = None
        self._task: Optional[asyncio.Task[Any]] = None
        # Committed or aborted: `async with` (or `begin`) may start it again.
        self._finished = False
        self.sequence: Optional[int] = None

    async def begin(self) -> Transaction:
        """Start the transaction (`async with` does this; for a transaction from
        `Database.begin`, which has begun, `async with` only commits or aborts it)."""
        if self._tx is not None and not self._finished:
            raise InvalidArgument("the transaction has begun already")
        self._db._check_writer()
        tx = await self._db._native.begin()
        try:
            if self._relaxed:
                await tx.set_relaxed(True)
            if self._origin is not None:
                await tx.set_origin(self._origin)
        except BaseException:
            # It holds the single writer: give it back before the error goes up.
            await tx.abort()
            raise
        self._tx = tx
        self._finished = False
        self.sequence = None
        self._task = _current_task()
        # Weakly: a transaction the application drops without committing or aborting is
        # freed as before, and freeing it gives the writer back.
        self._db._writer = weakref.ref(self)
        return self

    def _done(self) -> None:
        self._finished = True
        if self._db._writer is not None and self._db._writer() is self:
            self._db._writer = None

    async def set_origin(self, origin: str) -> None:
        """Tag this transaction's change-feed record with `origin` (at most 255 bytes), so
        that a reader of the feed can tell (and skip) its own writes."""
        await self._native().set_origin(origin)

    async def hold_feed(self, name: str, position: int) -> None:
        """From this commit on, keep every change-feed record after `position` (the last
        sequence the holder has processed; at most this transaction's own, `read_sequence()
        + 1`) under hold `name`, whatever `feed_retention` says, until the hold is moved or
        released. A feed consumer stores its position and moves its hold in one transaction.
        Raises `FeedTruncated` if the feed no longer has `position + 1`, `InvalidArgument` for
        an empty, control-character or over-255-byte name."""
        await self._native().hold_feed(name, position)

    async def release_feed_hold(self, name: str) -> bool:
        """Release hold `name` when this transaction commits; returns whether it existed."""
        return await self._native().release_feed_hold(name)

    async def read_sequence(self) -> int:
        """The sequence this transaction reads at."""
        return await self._native().read_sequence()

    async def collections(self) -> list[str]:
        """Names of the collections as this transaction sees them."""
        return await self._native().reader().collections()

    async def create_collection(self, name: str) -> None:
        """Create an empty collection (raises `InvalidArgument` if it exists)."""
        await self._native().create_collection(name)

    async def drop_collection(self, name: str) -> bool:
        """Drop a collection with its entities and indexes; returns whether it existed."""
        return await self._native().drop_collection(name)

    def _native(self) -> _entidb.Transaction:
        if self._tx is None:
            raise Closed("the transaction has not begun (use `async with`)")
        return self._tx

    def collection(self, name: str) -> TxCollection:
        """A collection inside this transaction."""
        return TxCollection(self._native(), name)

    async def commit(self) -> int:
        """Commit; returns the commit's sequence."""
        native = self._native()
        try:
            self.sequence = await native.commit()
        finally:
            self._done()
        return self.sequence

    async def abort(self) -> None:
        """Discard every write of the transaction."""
        native = self._native()
        try:
            await native.abort()
        finally:
            self._done()

    async def __aenter__(self) -> Transaction:
        if self._tx is not None and not self._finished:
            return self  # `async with await db.begin() as tx:` has begun it
        return await self.begin()

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.abort()


class SnapshotCollection(_Reads):
    """A collection as of a snapshot."""


class Snapshot:
    """A consistent read-only view at one sequence; it never changes however long it
    lives, and never blocks writers."""

    def __init__(self, reader: _entidb.Reader) -> None:
        self._reader = reader

    @property
    def sequence(self) -> int:
        """The sequence this snapshot reads at."""
        s = self._reader.sequence()
        assert s is not None
        return s

    def collection(self, name: str) -> SnapshotCollection:
        """A collection as of this snapshot."""
        return SnapshotCollection(self._reader, name)

    async def collections(self) -> list[str]:
        """Names of the collections as of this snapshot."""
        return await self._reader.collections()


class Database:
    """An open database. Open with `await entidb.open(path)`; close with `await db.close()`
    or `async with await entidb.open(path) as db:`."""

    def __init__(self, native: _entidb.Database) -> None:
        self._native = native
        # The transaction that holds the single writer, when one began through this handle.
        self._writer: Optional[weakref.ref[Transaction]] = None
        #: For a database returned by `entidb.restore`: the backup's summary (sequence,
        #: collections, entities, indexes, bytes); None otherwise.
        self.restore_summary: Optional[dict[str, Any]] = None

    def collection(self, name: str) -> Collection:
        """A handle on a collection (created by its first write)."""
        return Collection(self, name)

    def _own_transaction(self) -> Optional[Transaction]:
        """The open transaction the calling task began, if any."""
        tx = self._writer() if self._writer is not None else None
        if tx is not None and tx._task is not None and tx._task is _current_task():
            return tx
        return None

    def _check_writer(self) -> None:
        """Raises `InvalidArgument` when the calling task holds an open transaction: a
        second writer in the same task would wait for it forever (the writer is single and
        not re-entrant). Another task waits for it, as it should."""
        if self._own_transaction() is not None:
            raise InvalidArgument(
                "this task has an open transaction, and the database has one writer: "
                "write through tx.collection(...), or commit or abort it first "
                "(waiting for it here would never end)"
            )

    def transaction(self, *, relaxed: bool = False, origin: Optional[str] = None) -> Transaction:
        """A write transaction for `async with`. `relaxed=True` commits without waiting for
        the disk sync (a crash may lose it, never part of it). `origin` tags its
        change-feed record (see `Change.origin`)."""
        return Transaction(self, relaxed, origin)

    async def begin(
        self, *, relaxed: bool = False, origin: Optional[str] = None
    ) -> Transaction:
        """Begin a transaction explicitly (commit or abort it yourself)."""
        return await Transaction(self, relaxed, origin).begin()

    def snapshot(self) -> Snapshot:
        """A snapshot of the current state."""
        return Snapshot(self._native.snapshot())

    def collections(self) -> list[str]:
        """Names of the collections."""
        return self._native.collections()

    async def create_collection(self, name: str) -> None:
        """Create an empty collection now (a first write creates one too); raises
        `InvalidArgument` if it exists or the name is not valid."""
        self._check_writer()
        await self._native.create_collection(name)

    async def drop_collection(self, name: str) -> bool:
        """Drop a collection with its entities and indexes."""
        self._check_writer()
        return await self._native.drop_collection(name)

    async def changes_page(self, since: int = 0, limit: int = 100) -> list[list[Change]]:
        """Up to `limit` committed transactions after sequence `since`, without waiting
        (one list of changes per transaction, in commit order). Raises `FeedTruncated` if
        `since` is older than the feed retains."""
        return [b.changes for b in await self.changes_page_filtered(since, limit)]

    async def changes_page_filtered(
        self,
        since: int = 0,
        limit: int = 100,
        *,
        collections: Optional[Sequence[str]] = None,
        exclude_origin: Optional[str] = None,
    ) -> list["ChangeBatch"]:
        """Like `changes_page`, but keeps only the changes of `collections` (all if None) and
        none of the transactions tagged with origin `exclude_origin` (a replicator's own
        writes). Left-out changes cost nothing: their values are never read. Every
        transaction is returned, as a `ChangeBatch` with its sequence, even when nothing of
        it is left, so that `batches[-1].sequence` is always where to continue."""
        native = await self._native.changes_page(
            since, limit, None if collections is None else list(collections), exclude_origin
        )
        return [
            ChangeBatch(
                seq,
                ts,
                origin,
                [Change(seq, ts, origin, c, i, v, op, d) for c, i, v, op, d in changes],
            )
            for seq, ts, origin, changes in native
        ]

    @property
    def oldest_retained_sequence(self) -> int:
        """The oldest sequence the change feed still holds (`changes(since)` below it
        raises `FeedTruncated`)."""
        return self._native.oldest_retained_sequence()

    async def hold_feed(self, name: str, position: int) -> None:
        """Set change-feed hold `name` to `position` in a transaction of its own (see
        `Transaction.hold_feed`). A hold that is never released keeps every later record:
        release the holds of consumers that are gone."""
        self._check_writer()
        await self._native.hold_feed(name, position)

    async def release_feed_hold(self, name: str) -> bool:
        """Release change-feed hold `name` in a transaction of its own; returns whether it
        existed (releasing a missing hold commits nothing)."""
        self._check_writer()
        return await self._native.release_feed_hold(name)

    def feed_holds(self) -> dict[str, int]:
        """The change-feed holds: each name and the position it keeps the feed after. A
        database with sync attached has one named `entidb-sync`."""
        return dict(self._native.feed_holds())

    def last_maintenance_error(self) -> Optional[str]:
        """The last flush or compaction error after a commit (the commit had succeeded; the
        work is retried by later commits), or None."""
        return self._native.last_maintenance_error()

    async def changes(self, since: int = 0) -> AsyncIterator[Change]:
        """The durable change feed after sequence `since`, then every new commit as it
        happens (the iterator waits; it ends when the database closes). A relaxed commit is
        in the feed at once; a power loss may take it back, and its sequence numbers then go
        to later commits. Pages pulled by `entidb.sync` are relaxed unless
        `durable_pulls=True`, so a consumer that keeps its position outside this database
        should use that."""
        stream = self._native.changes(since)
        while True:
            batch = await stream.next_batch()
            if batch is None:
                return
            seq, ts, origin, changes = batch
            for coll, id, version, op, doc in changes:
                yield Change(seq, ts, origin, coll, id, version, op, doc)

    @property
    def last_sequence(self) -> int:
        """The highest committed sequence."""
        return self._native.last_sequence()

    @property
    def durable_sequence(self) -> int:
        """The highest sequence known durable: every commit at or below it survives a power
        loss. A relaxed commit is above it until a later disk sync (a durable commit's, a
        checkpoint's) covers it."""
        return self._native.durable_sequence()

    def new_id(self) -> uuid.UUID:
        """A new time-ordered entity id."""
        return self._native.new_id()

    def stats(self) -> dict[str, Any]:
        """Counters since open (reads, writes, commits, scans, index lookups, ...)."""
        return self._native.stats()

    async def checkpoint(self) -> None:
        """Flush the write buffer to a segment."""
        self._check_writer()
        await self._native.checkpoint()

    async def compact(self) -> None:
        """Merge all segments, reclaiming space."""
        self._check_writer()
        await self._native.compact()

    async def verify(self) -> int:
        """Check every segment checksum; returns the entries read."""
        return await self._native.verify()

    async def verify_indexes(self) -> dict[str, Any]:
        """Check every index against the documents; `report["ok"]` is the verdict."""
        return await self._native.verify_indexes()

    async def close(self) -> None:
        """Checkpoint and close; later reads and writes raise `Closed` (`collections()`,
        `last_sequence`, `stats()` and `new_id()` still answer from memory). A transaction still open in
        this task is aborted first (closing waits for the writer, which it holds)."""
        tx = self._own_transaction()
        if tx is not None:
            await tx.abort()
        await self._native.close()

    async def schema_version(self) -> int:
        """The committed schema version (0 for a database never migrated)."""
        return await self._native.schema_version()

    async def migrate(self, steps: Migrations) -> tuple[int, int]:
        """Run every step above the current schema version, in order, each in its own
        transaction that also records the new version: a step and its version commit
        together or not at all. A failing step raises `MigrationError` (chained to the
        cause) and leaves the database at the previous version. Returns (from, to)."""
        current = await self._native.schema_version()
        target = max(steps, default=0)
        if current > target:
            raise MigrationError(
                f"the database is at schema version {current}, newer than this "
                f"application's {target}; upgrade the application"
            )
        for v in range(current + 1, target + 1):
            step = steps.get(v)
            if step is None:
                raise InvalidArgument(
                    f"no migration step for version {v} (the database is at {current})"
                )
            tx = await self.begin()
            native = tx._native()
            try:
                if await native.schema_version() >= v:
                    await tx.abort()  # migrated meanwhile by another task
                    continue
                await step(tx)
                await native.set_schema_version(v)
                await tx.commit()
            except Exception as e:
                await tx.abort()
                raise MigrationError(f"migration to schema version {v} failed: {e}") from e
            except BaseException:
                # Cancelled (a timeout, Ctrl-C): the step's transaction holds the writer.
                await tx.abort()
                raise
        return current, target

    async def backup(self, target: Union[PathLike, Writable]) -> dict[str, Any]:
        """Back up a consistent snapshot while writers keep going (streaming; memory does
        not grow with the database) to the file `target` (written beside it, synced, then
        renamed into place) or into a binary file object (anything with `write`, such as an
        `io.BytesIO` or an upload stream; flushing and closing it is yours). Returns a summary
        (sequence, collections, entities, indexes, bytes)."""
        if isinstance(target, (str, os.PathLike)):
            return await self._native.backup(os.fspath(target))
        return await self._native.backup_to(target)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()


async def open(
    path: PathLike,
    *,
    migrations: Optional[Migrations] = None,
    key: Union[bytes, str, None] = None,
    read_only: bool = False,
    create: bool = True,
    memtable_bytes: Optional[int] = None,
    cache_bytes: Optional[int] = None,
    forbid_full_scans: bool = False,
    feed_retention: Optional[int] = None,
    block_size: Optional[int] = None,
    compression: Optional[bool] = None,
    compaction_trigger: Optional[int] = None,
    auto_maintenance: Optional[bool] = None,
    background_maintenance: Optional[bool] = None,
    max_document_bytes: Optional[int] = None,
    wal_preallocate: Optional[int] = None,
    ingest_bytes: Optional[int] = None,
) -> Database:
    """Open (creating if needed) the database in directory `path`, and run `migrations`
    (see `Database.migrate`) if given. With `key` (32 bytes, or a passphrase stretched with
    Argon2id) every file is encrypted with AES-256-GCM; a wrong key raises `WrongKey`. With
    `read_only=True` it takes no lock and writes nothing (writes raise `ReadOnly`): it can read
    a snapshot of a database another process has open.

    Tuning (None keeps the engine's default; see `sdk-python/README.md`): `memtable_bytes`
    (write buffer, 64 MiB), `cache_bytes` (block cache, 64 MiB), `feed_retention`
    (transactions the change feed keeps, 100,000), `block_size` (16 KiB), `compression`
    (LZ4, on), `compaction_trigger` (segments before a merge, 8), `auto_maintenance`
    (flush and compact after commits, on), `background_maintenance` (do that on a thread of
    the database's own rather than in the committing call, on), `max_document_bytes` (16 MiB),
    `wal_preallocate` (1 MiB), `ingest_bytes` (a transaction this large goes straight to a
    segment, 32 MiB; 0: never), `forbid_full_scans` (off)."""
    native = await _entidb.Database.open(
        os.fspath(path),
        key=key,
        read_only=read_only,
        create=create,
        memtable_bytes=memtable_bytes,
        cache_bytes=cache_bytes,
        forbid_full_scans=forbid_full_scans,
        feed_retention=feed_retention,
        block_size=block_size,
        compression=compression,
        compaction_trigger=compaction_trigger,
        auto_maintenance=auto_maintenance,
        background_maintenance=background_maintenance,
        max_document_bytes=max_document_bytes,
        wal_preallocate=wal_preallocate,
        ingest_bytes=ingest_bytes,
    )
    db = Database(native)
    if migrations:
        try:
            await db.migrate(migrations)
        except BaseException:
            await db.close()
            raise
    return db


async def rekey(path: PathLike, old: Union[bytes, str], new: Union[bytes, str]) -> None:
    """Re-encrypt the closed database in `path` from key `old` to `new` (crash-safe:
    afterwards exactly one of the two opens it)."""
    await _entidb.Database.rekey(os.fspath(path), old, new)


async def verify_backup(source: Union[PathLike, Readable]) -> dict[str, Any]:
    """Check a backup (a file, or a binary file object with `read`) without restoring it
    (every checksum, the frame order and the whole-file SHA-256); raises `Corruption` if it
    is damaged or truncated."""
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
    return await _entidb.Database.verify_backup(source)


async def restore(
    backup: Union[PathLike, Readable],
    path: PathLike,
    *,
    key: Union[bytes, str, None] = None,
    memtable_bytes: Optional[int] = None,
    cache_bytes: Optional[int] = None,
    feed_retention: Optional[int] = None,
) -> Database:
    """Restore a backup (a file, or a binary file object with `read`) into the new database
    directory `path` (refused if it already holds a database) and return it open; its
    `restore_summary` says what was restored. With `key` the restored database is encrypted
    (open it again with the same key). Indexes are rebuilt."""
    if isinstance(backup, (str, os.PathLike)):
        backup = os.fspath(backup)
    native, summary = await _entidb.Database.restore(
        backup,
        os.fspath(path),
        key=key,
        memtable_bytes=memtable_bytes,
        cache_bytes=cache_bytes,
        feed_retention=feed_retention,
    )
    db = Database(native)
    db.restore_summary = summary
    return db


async def open_memory(
    *,
    forbid_full_scans: bool = False,
    feed_retention: Optional[int] = None,
    memtable_bytes: Optional[int] = None,
    cache_bytes: Optional[int] = None,
    max_document_bytes: Optional[int] = None,
    ingest_bytes: Optional[int] = None,
) -> Database:
    """A database in memory (gone when closed). It takes the tuning options of `open`
    listed here; the others (durability, compaction, encryption, migrations, read-only)
    concern files and are not offered."""
    native = await _entidb.Database.open(
        None,
        forbid_full_scans=forbid_full_scans,
        feed_retention=feed_retention,
        memtable_bytes=memtable_bytes,
        cache_bytes=cache_bytes,
        max_document_bytes=max_document_bytes,
        ingest_bytes=ingest_bytes,
    )
    return Database(native)


from . import sync  # noqa: E402  (the submodule needs the names above)
