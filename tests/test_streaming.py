"""1 GiB down and up through the gateway with bounded memory (issue 3 item 7).

Everything runs in this process (gateway, example upstream, client), so tracemalloc's peak covers
all three: if any of them buffered a body, the peak would be near the body's size.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from tests.conftest import Clock, make_config
from upstream_example import create_app as create_upstream
from upstream_example.api import pattern_chunks

GIB = 1024**3
PEAK_LIMIT = 64 * 1024**2  # far below the body; generous for buffers in flight

pytestmark = pytest.mark.slow


@pytest.fixture
async def streaming_gateway(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Path, clock: Clock
) -> Any:
    upstream = await aiohttp_server(create_upstream())
    config = make_config(
        tmp_path,
        str(upstream.make_url("")).rstrip("/"),
        routes=[{"path": "/", "auth": "public", "max_body_size": 2 * GIB}],
    )
    return await aiohttp_client(create_app(config, clock=clock))


async def test_one_gib_download_streams_with_flat_memory(streaming_gateway: Any) -> None:
    """A 1 GiB download arrives whole and intact while traced memory stays far below its size."""
    expected = hashlib.sha256()
    for chunk in pattern_chunks(GIB):
        expected.update(chunk)
    digest, seen = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        resp = await streaming_gateway.get(f"/download?size={GIB}")
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(GIB)
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
            seen += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == GIB
    assert digest.hexdigest() == expected.hexdigest()
    assert peak < PEAK_LIMIT, f"peak traced memory {peak / 2**20:.0f} MiB"


async def test_one_gib_upload_streams_with_flat_memory(streaming_gateway: Any) -> None:
    """A 1 GiB chunked upload reaches the upstream intact while traced memory stays flat."""
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for chunk in pattern_chunks(GIB):
            expected.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        resp = await streaming_gateway.post("/upload", data=body())
        result = await resp.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 200
    assert result["length"] == GIB
    assert result["sha256"] == expected.hexdigest()
    assert peak < PEAK_LIMIT, f"peak traced memory {peak / 2**20:.0f} MiB"
