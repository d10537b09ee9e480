"""The example legacy app: it echoes what it received, streams big bodies, echoes websockets, records
form posts and trusts the identity headers, so the gateway's tests can observe what got through."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from yarl import URL

from upstream_example import IdentityHeaders, create_app
from upstream_example.api import pattern_chunks

MiB = 1024 * 1024
ALICE = {
    "X-Auth-User-Id": "7",
    "X-Auth-User-Email": "alice@example.com",
    "X-Auth-User-Roles": "admin, staff",
    "X-Auth-Session-Id": "s-1",
}

App = TestClient[web.Request, web.Application]


@pytest.fixture
async def app(aiohttp_client: AiohttpClient) -> App:
    return await aiohttp_client(create_app())


def digest_of(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


async def test_echo_returns_raw_target_headers_and_body_digest(app: App) -> None:
    """The echo reports the target as received, every header in wire order and case, and the body's digest."""
    target = "/echo/a%2Fb?x=%21&y=a+b"
    response = await app.post(
        URL(target, encoded=True), data=b"payload", headers={"X-First": "1", "x-second": "two"}
    )
    echoed = await response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == target
    names = [name for name, _ in echoed["headers"]]
    assert names.index("X-First") < names.index("x-second")
    assert ["x-second", "two"] in echoed["headers"]
    assert (echoed["body_length"], echoed["body_sha256"]) == (7, digest_of(b"payload"))


@pytest.mark.parametrize(("query", "size"), [("", MiB), ("?size=200000", 200000)], ids=["default", "sized"])
async def test_download_streams_the_pattern(app: App, query: str, size: int) -> None:
    """The download has the requested length, announced in Content-Length, and the deterministic pattern."""
    response = await app.get("/download" + query)
    body = await response.read()
    assert response.headers["Content-Length"] == str(size)
    assert (len(body), digest_of(body)) == (size, digest_of(*pattern_chunks(size)))


def test_pattern_changes_when_chunks_are_reordered() -> None:
    """Each chunk of the pattern carries its index, so a swapped or repeated chunk changes the digest."""
    first, second = list(pattern_chunks(128 * 1024))
    assert first != second


async def test_download_rejects_a_bad_size(app: App) -> None:
    """A size that is not a whole number of bytes is refused with 400."""
    assert (await app.get("/download?size=-1")).status == 400


async def test_upload_digest_is_streamed(app: App) -> None:
    """A 3 MiB chunked upload, above aiohttp's 1 MiB read() limit, is measured and hashed whole."""
    parts = [bytes([n]) * MiB for n in range(3)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = await app.post("/upload", data=body())
    assert await response.json() == {"length": 3 * MiB, "sha256": digest_of(*parts)}


async def test_websocket_echoes_messages_and_close_code(app: App) -> None:
    """Text and binary messages come back unchanged, and the app answers a close with the same code."""
    ws = await app.ws_connect("/ws", protocols=["echo.v1"])
    assert ws.protocol == "echo.v1"
    await ws.send_str("hello")
    assert await ws.receive_str() == "hello"
    await ws.send_bytes(b"\x00\xff")
    assert await ws.receive_bytes() == b"\x00\xff"
    await ws.close(code=4002)
    assert ws.close_code == 4002


async def test_websocket_closes_first_on_request(app: App) -> None:
    """The text message `close:4001` makes the app close with 4001, for close-code propagation tests."""
    ws = await app.ws_connect("/ws")
    await ws.send_str("close:4001")
    assert (await ws.receive()).type is WSMsgType.CLOSE
    assert ws.close_code == 4001


async def test_form_records_notes(app: App) -> None:
    """A posted note is recorded, listed as JSON and shown escaped on the page."""
    page = await (await app.post("/form", data={"note": "<b>forged?</b>"})).text()
    assert "&lt;b&gt;forged?&lt;/b&gt;" in page
    assert await (await app.get("/form/notes")).json() == ["<b>forged?</b>"]


async def test_cookies_sets_two_cookies(app: App) -> None:
    """/cookies answers with two Set-Cookie headers of the app's own."""
    response = await app.get("/cookies")
    cookies = response.headers.getall("Set-Cookie")
    assert [cookie.split(";")[0] for cookie in cookies] == ["app_a=1", "app_b=2"]


async def test_home_greets_the_user_from_identity_headers(app: App) -> None:
    """The home page greets the user by email, shows the roles, lists the headers and offers sign-out."""
    page = await (await app.get("/", headers=ALICE)).text()
    assert "Hello, alice@example.com" in page
    assert "admin" in page and "staff" in page
    assert "<th>X-Auth-Session-Id</th>" in page
    assert 'action="/auth/logout"' in page


@pytest.mark.parametrize(
    ("headers", "shown"),
    [({}, "not signed in"), (ALICE, "signed in as alice@example.com")],
    ids=["anonymous", "alice"],
)
async def test_public_page_works_without_sign_in(app: App, headers: dict[str, str], shown: str) -> None:
    """The public page answers everyone and says whether an identity header was present."""
    response = await app.get("/public/about", headers=headers)
    assert response.status == 200
    assert f'<strong id="status">{shown}</strong>' in await response.text()


async def test_whoami_reports_the_identity_headers(app: App) -> None:
    """/api/whoami returns the identity headers as JSON, roles split into a list."""
    who = await (await app.get("/api/whoami", headers=ALICE)).json()
    assert who == {
        "user_id": "7",
        "email": "alice@example.com",
        "roles": ["admin", "staff"],
        "session_id": "s-1",
    }


async def test_custom_identity_header_names(aiohttp_client: AiohttpClient) -> None:
    """The app reads the header names it is given, as the gateway's [headers] table may rename them."""
    client = await aiohttp_client(create_app(IdentityHeaders(email="X-Remote-Email")))
    who = await (await client.get("/api/whoami", headers={"X-Remote-Email": "bob@example.com"})).json()
    assert who["email"] == "bob@example.com"


async def test_ws_page_connects_to_ws(app: App) -> None:
    """The websocket page has the #echo element and a script that opens /ws on its own host and says hello."""
    page = await (await app.get("/ws-page")).text()
    assert 'id="echo"' in page
    assert 'location.host + "/ws"' in page and 'ws.send("hello")' in page
