"""Shared fixtures: a fresh database per test, and a real `entidb serve` for sync tests."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

import entidb


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[entidb.Database]:
    d = await entidb.open(tmp_path / "db")
    yield d
    await d.close()


class Server:
    def __init__(self, url: str, token: str, proc: subprocess.Popen[str]) -> None:
        self.url = url
        self.token = token
        self.proc = proc

    def mint(self, sub: str, db: str = "app", scope: str = "read,write") -> str:
        """A token for another client, minted by `entidb token` with the dev key."""
        out = subprocess.run(
            [
                os.environ["ENTIDB_BIN"],
                "token",
                "--data-dir",
                self.data_dir,
                "--client",
                sub,
                "--db",
                db,
                "--scope",
                scope,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().splitlines()[-1].strip()

    data_dir: str = ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """`entidb serve` on 127.0.0.1 with a fresh data directory (binary from $ENTIDB_BIN)."""
    binary = os.environ.get("ENTIDB_BIN")
    if not binary:
        pytest.skip("ENTIDB_BIN is not set (scripts/test.sh sets it)")
    data = tmp_path / "server-data"
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("try it:"):
            break
    text = "".join(lines)
    m = re.search(r"listening on (http://\S+)", text)
    t = re.search(r"dev token[^\n]*\n\s*(\S+)", text)
    assert m and t, f"server did not start:\n{text}"
    s = Server(m.group(1), t.group(1), proc)
    s.data_dir = str(data)
    yield s
    proc.terminate()
    proc.wait(timeout=30)
