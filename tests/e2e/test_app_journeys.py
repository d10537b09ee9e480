"""Using the legacy app through the gateway in a real Chromium: silent refresh, websockets, CSRF,
and a session that ends while the user is typing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from playwright.async_api import BrowserContext, Page, expect

from gateway.keys import ACCOUNTS
from tests.e2e.conftest import Servers, StartServers
from tests.e2e.steps import ACCESS_COOKIE, EMAIL, REFRESH_COOKIE, cookies, path_of, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ACCESS_TTL = 2  # seconds; leeway 0, so the token is dead the moment the browser drops its cookie

PARALLEL_WHOAMI = """
async () => {
  const calls = Array.from({length: 10}, () =>
    fetch("/api/whoami").then(async (r) => ({status: r.status, body: await r.text()})));
  return Promise.all(calls);
}
"""


async def _signed_in_at(page: Page, servers: Servers, path: str) -> None:
    await page.goto(servers.url + path)
    await sign_in(page)
    assert page.url == servers.url + path


async def test_expired_access_token_is_refreshed_for_links_and_parallel_fetches(
    page: Page, context: BrowserContext, start_servers: StartServers
) -> None:
    """Past the access TTL a click and then 10 parallel fetches all pass, and the user stays in."""
    servers = await start_servers(tokens={"access_ttl": ACCESS_TTL, "leeway": 0})
    user = await servers.add_user()
    await _signed_in_at(page, servers, "/")
    first = (await cookies(context))[ACCESS_COOKIE]

    await asyncio.sleep(ACCESS_TTL + 0.5)
    assert ACCESS_COOKIE not in await cookies(context), "the browser dropped the expired cookie"
    await page.get_by_role("link", name="Notes").click()
    await expect(page.get_by_role("heading", name="Notes", exact=True)).to_be_visible()
    assert path_of(page.url) == "/form"
    await expect(page.locator("header")).to_contain_text(EMAIL)
    second = (await cookies(context))[ACCESS_COOKIE]
    assert second != first

    await asyncio.sleep(ACCESS_TTL + 0.5)
    results = await page.evaluate(PARALLEL_WHOAMI)
    assert [r["status"] for r in results] == [200] * 10
    assert {json.loads(r["body"])["email"] for r in results} == {EMAIL}
    jar = await cookies(context)
    assert jar[ACCESS_COOKIE] not in (first, second)
    assert REFRESH_COOKIE in jar

    await page.reload()
    await expect(page.locator("header")).to_contain_text(EMAIL)
    assert path_of(page.url) == "/form", "not sent to the login page"
    assert len(await servers.live_sessions(user.id)) == 1, "no reuse detection, no second session"


async def test_websocket_page_echoes_through_the_gateway(page: Page, servers: Servers) -> None:
    """The app's websocket page gets its echo back; revoking the session closes the socket."""
    user = await servers.add_user()
    await _signed_in_at(page, servers, "/ws-page")
    await expect(page.locator("#echo")).to_have_text("hello")
    await expect(page.locator("#state")).to_have_text("")  # still open

    await servers.app[ACCOUNTS].logout_all(user.id)
    await expect(page.locator("#state")).to_have_text("closed (1008)")


async def test_form_posted_from_another_origin_is_refused(
    page: Page,
    context: BrowserContext,
    servers: Servers,
    other_origin: Callable[[str], Awaitable[str]],
) -> None:
    """A page on another port auto-submits a note to the app: 403, nothing recorded, still signed in."""
    await servers.add_user()
    await _signed_in_at(page, servers, "/form")
    attacker = await other_origin(
        f'<form method="post" action="{servers.url}/form">'
        '<input name="note" value="forged by another site"></form>'
        "<script>document.forms[0].submit()</script>"
    )

    async with page.expect_response(f"{servers.url}/form") as posted:
        await page.goto(attacker)
    assert (await posted.value).status == 403
    await expect(page.get_by_text("cross-site request refused")).to_be_visible()

    await page.goto(f"{servers.url}/form/notes")
    assert json.loads(await page.locator("body").inner_text()) == []
    assert "POST /form" not in servers.upstream_requests
    assert ACCESS_COOKIE in await cookies(context), "a forged request does not sign the user out"


async def test_session_ending_during_form_entry_keeps_the_post_resubmittable(
    page: Page, context: BrowserContext, servers: Servers
) -> None:
    """A form sent after the session was revoked gets 401, not a redirect, and can be sent again."""
    user = await servers.add_user()
    await _signed_in_at(page, servers, "/form")
    await page.get_by_label("New note").fill("typed while the session ended")
    await servers.app[ACCOUNTS].logout_all(user.id)

    async with page.expect_response(f"{servers.url}/form") as posted:
        await page.get_by_role("button", name="Save note").click()
    response = await posted.value
    assert response.status == 401
    assert response.request.redirected_from is None
    assert path_of(page.url) == "/form", "no redirect: the browser still holds the POST"
    assert "POST /form" not in servers.upstream_requests

    # Sign in again in another tab, come back and reload: the browser sends the same form again.
    other = await context.new_page()
    await other.goto(f"{servers.url}/auth/login")
    await sign_in(other)
    await other.close()
    async with page.expect_response(f"{servers.url}/form") as resent:
        await page.reload()
    assert (await resent.value).request.method == "POST"
    await expect(page.locator("#notes")).to_contain_text("typed while the session ended")
