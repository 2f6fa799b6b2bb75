"""Benchmark (not a test): `await users.put` / `get` throughput against aiosqlite.

    python sdk-python/bench/bench_put_get.py [--n 20000] [--concurrency 1,16]

Both store the same documents: EntiDB as CBOR maps, SQLite (through aiosqlite, WAL,
synchronous=FULL, one connection) as JSON text in a table keyed by a 16-byte id. Each put is
its own durable transaction in both. Gets read random existing ids. Prints ops/s and the
EntiDB/aiosqlite ratio for each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiosqlite

import entidb


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


async def bench_entidb(dir: Path, n: int, concurrency: int) -> tuple[float, float]:
    db = await entidb.open(dir)
    users = db.collection("users")
    ids: list[uuid.UUID] = [uuid.UUID(int=0)] * n

    async def put(i: int) -> None:
        ids[i] = await users.put(doc(i))

    puts = await run(n, concurrency, put)
    rng = random.Random(1)

    async def get(i: int) -> None:
        assert await users.get(ids[rng.randrange(n)]) is not None

    gets = await run(n, concurrency, get)
    await db.close()
    return puts, gets


async def bench_sqlite(dir: Path, n: int, concurrency: int) -> tuple[float, float]:
    dir.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(dir / "db.sqlite") as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("CREATE TABLE users(id BLOB PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID")
        await conn.commit()
        ids: list[bytes] = [b""] * n

        async def put(i: int) -> None:
            id = uuid.uuid4().bytes
            await conn.execute("INSERT INTO users(id, doc) VALUES (?, ?)", (id, json.dumps(doc(i))))
            await conn.commit()
            ids[i] = id

        puts = await run(n, concurrency, put)
        rng = random.Random(1)

        async def get(i: int) -> None:
            async with conn.execute("SELECT doc FROM users WHERE id = ?", (ids[rng.randrange(n)],)) as cur:
                row = await cur.fetchone()
                assert row is not None
                json.loads(row[0])

        gets = await run(n, concurrency, get)
    return puts, gets


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--concurrency", default="1,16")
    a = p.parse_args()
    for c in [int(x) for x in a.concurrency.split(",")]:
        n = a.n // c * c  # every worker does the same number of ops
        with tempfile.TemporaryDirectory() as t:
            e = await bench_entidb(Path(t) / "entidb", n, c)
            s = await bench_sqlite(Path(t) / "sqlite", n, c)
        print(f"concurrency {c}: put EntiDB {e[0]:,.0f}/s aiosqlite {s[0]:,.0f}/s ratio {e[0] / s[0]:.2f}")
        print(f"concurrency {c}: get EntiDB {e[1]:,.0f}/s aiosqlite {s[1]:,.0f}/s ratio {e[1] / s[1]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
