"""Benchmark (not a test): `await users.put` / `get` throughput against aiosqlite and the
standard library's sqlite3.

    python sdk-python/bench/bench_put_get.py [--n 20000] [--concurrency 1,16] [--batch 100]

All three store the same documents: EntiDB as CBOR maps, SQLite as JSON text in a table keyed
by a 16-byte id (WAL, synchronous=FULL). Workloads:

* put: one durable transaction per put;
* put in transactions: `--batch` puts per transaction (each put awaited on its own);
* get: random existing ids.

aiosqlite uses one connection (its own thread); sqlite3 is called directly from the
coroutines (blocking the event loop, as naive code would). Prints ops/s and the ratios
EntiDB/aiosqlite and EntiDB/sqlite3 per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiosqlite

import entidb

Rates = dict[str, float]


def doc(i: int) -> dict[str, Any]:
    return {"name": f"user {i}", "age": i % 90, "email": f"u{i}@example.com", "tags": ["a", "b"]}


async def run(n: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> float:
    per = n // concurrency
    start = time.perf_counter()

    async def worker(w: int) -> None:
        for i in range(per):
            await work(w * per + i)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per * concurrency / (time.perf_counter() - start)


async def run_batched(
    n: int, concurrency: int, batch: int, begin: Callable[[], Awaitable[Any]],
    put: Callable[[Any, int], Awaitable[None]], commit: Callable[[Any], Awaitable[None]],
) -> float:
    per = n // concurrency
    start = time.perf_counter()

    async def worker(w: int) -> None:
        for b in range(0, per, batch):
            tx = await begin()
            for i in range(b, min(b + batch, per)):
                await put(tx, w * per + i)
            await commit(tx)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return per * concurrency / (time.perf_counter() - start)


async def bench_entidb(dir: Path, n: int, concurrency: int, batch: int) -> Rates:
    db = await entidb.open(dir)
    users = db.collection("users")
    ids: list[uuid.UUID] = [uuid.UUID(int=0)] * n

    async def put(i: int) -> None:
        ids[i] = await users.put(doc(i))

    puts = await run(n, concurrency, put)

    async def begin() -> entidb.Transaction:
        return await db.begin()

    async def put_tx(tx: entidb.Transaction, i: int) -> None:
        await tx.collection("batched").put(doc(i))

    async def commit(tx: entidb.Transaction) -> None:
        await tx.commit()

    put_txs = await run_batched(n, concurrency, batch, begin, put_tx, commit)
    rng = random.Random(1)

    async def get(i: int) -> None:
        assert await users.get(ids[rng.randrange(n)]) is not None

    gets = await run(n, concurrency, get)
    await db.close()
    return {"put": puts, "put in transactions": put_txs, "get": gets}


async def bench_aiosqlite(dir: Path, n: int, concurrency: int, batch: int) -> Rates:
    dir.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(dir / "db.sqlite") as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        for t in ("users", "batched"):
            await conn.execute(f"CREATE TABLE {t}(id BLOB PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID")
        await conn.commit()
        ids: list[bytes] = [b""] * n
        lock = asyncio.Lock()  # one connection: transactions must not interleave

        async def put(i: int) -> None:
            id = uuid.uuid4().bytes
            async with lock:
                await conn.execute("INSERT INTO users(id, doc) VALUES (?, ?)", (id, json.dumps(doc(i))))
                await conn.commit()
            ids[i] = id

        puts = await run(n, concurrency, put)

        async def begin() -> None:
            await lock.acquire()

        async def put_tx(_: Any, i: int) -> None:
            await conn.execute(
                "INSERT INTO batched(id, doc) VALUES (?, ?)", (uuid.uuid4().bytes, json.dumps(doc(i)))
            )

        async def commit(_: Any) -> None:
            await conn.commit()
            lock.release()

        put_txs = await run_batched(n, concurrency, batch, begin, put_tx, commit)
        rng = random.Random(1)

        async def get(i: int) -> None:
            async with conn.execute("SELECT doc FROM users WHERE id = ?", (ids[rng.randrange(n)],)) as cur:
                row = await cur.fetchone()
                assert row is not None
                json.loads(row[0])

        gets = await run(n, concurrency, get)
    return {"put": puts, "put in transactions": put_txs, "get": gets}


async def bench_sqlite3(dir: Path, n: int, concurrency: int, batch: int) -> Rates:
    dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(dir / "db.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for t in ("users", "batched"):
        conn.execute(f"CREATE TABLE {t}(id BLOB PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID")
    ids: list[bytes] = [b""] * n

    async def put(i: int) -> None:
        id = uuid.uuid4().bytes
        conn.execute("INSERT INTO users(id, doc) VALUES (?, ?)", (id, json.dumps(doc(i))))
        ids[i] = id

    puts = await run(n, concurrency, put)

    async def begin() -> None:
        conn.execute("BEGIN")

    async def put_tx(_: Any, i: int) -> None:
        conn.execute("INSERT INTO batched(id, doc) VALUES (?, ?)", (uuid.uuid4().bytes, json.dumps(doc(i))))

    async def commit(_: Any) -> None:
        conn.execute("COMMIT")

    # Calls never yield, so the coroutines' transactions cannot interleave.
    put_txs = await run_batched(n, concurrency, batch, begin, put_tx, commit)
    rng = random.Random(1)

    async def get(i: int) -> None:
        row = conn.execute("SELECT doc FROM users WHERE id = ?", (ids[rng.randrange(n)],)).fetchone()
        assert row is not None
        json.loads(row[0])

    gets = await run(n, concurrency, get)
    conn.close()
    return {"put": puts, "put in transactions": put_txs, "get": gets}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--batch", type=int, default=100)
    a = p.parse_args()
    print("| workload | coroutines | EntiDB | aiosqlite | sqlite3 | EntiDB/aiosqlite | EntiDB/sqlite3 |")
    print("|---|---|---|---|---|---|---|")
    for c in [int(x) for x in a.concurrency.split(",")]:
        n = a.n // (c * a.batch) * c * a.batch  # every worker does whole batches
        with tempfile.TemporaryDirectory() as t:
            e = await bench_entidb(Path(t) / "entidb", n, c, a.batch)
            s = await bench_aiosqlite(Path(t) / "aiosqlite", n, c, a.batch)
            q = await bench_sqlite3(Path(t) / "sqlite3", n, c, a.batch)
        for w in e:
            print(
                f"| {w} | {c} | {e[w]:,.0f} | {s[w]:,.0f} | {q[w]:,.0f} | "
                f"{e[w] / s[w]:.2f} | {e[w] / q[w]:.2f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
