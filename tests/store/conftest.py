"""The `store` fixture: every storage backend in turn, opened fresh for each test and closed after.

A backend is one entry of BACKENDS: its name (the test id) and an async context manager that
yields an opened, empty store. Add PostgreSQL here and the whole contract suite runs against it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pg_server import empty_tables

from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

OpenBackend = Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[Store]]


@dataclass(frozen=True)
class Backend:
    open: OpenBackend  # (request, tmp_path) -> async context manager yielding an empty, opened store
    marks: tuple[pytest.MarkDecorator, ...] = ()


@asynccontextmanager
async def open_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    # A folder that does not exist yet: open() must create it.
    store = await SQLiteStore.open(str(tmp_path / "data" / "gateway.db"))
    try:
        yield store
    finally:
        await store.close()


# postgres_cluster and postgres_url (one cluster per test session) come from tests/conftest.py.


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgresStore on the session database, emptied for this test; closed after."""
    store = await PostgresStore.open(postgres_url)  # migrates on first use
    try:
        await empty_tables(postgres_url)
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_postgres(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    # getfixturevalue: only tests of this backend start (or skip for lack of) the server.
    url = request.getfixturevalue("postgres_url")
    store = await PostgresStore.open(url)
    try:
        await empty_tables(url)  # one cluster and database per session; emptying per test is cheap
        yield store
    finally:
        await store.close()


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(open_sqlite),
    "postgres": Backend(open_postgres, marks=(pytest.mark.postgres,)),
}


@pytest.fixture(params=[pytest.param(name, marks=b.marks, id=name) for name, b in BACKENDS.items()])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened, empty store of each backend; closed after the test."""
    async with BACKENDS[request.param].open(request, tmp_path) as opened:
        yield opened
