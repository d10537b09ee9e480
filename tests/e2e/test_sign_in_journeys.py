"""Signing in, creating an account and signing out, in a real Chromium against the real gateway."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from playwright.async_api import BrowserContext, Page, Response, expect

from tests.conftest import PASSWORD
from tests.e2e.conftest import Servers, StartServers
from tests.e2e.steps import ACCESS_COOKIE, EMAIL, REFRESH_COOKIE, cookies, next_of, path_of, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def _posts_to(path: str) -> Callable[[Response], bool]:
    """Matches the response to a form post to `path` (whatever the query)."""
    return lambda r: r.request.method == "POST" and path_of(r.url) == path


async def test_protected_page_leads_to_sign_in_and_back_to_the_exact_page(
    page: Page, servers: Servers
) -> None:
    """A protected page sends the browser to sign in, then back to that page and query, greeted."""
    await servers.add_user()
    await page.goto(f"{servers.url}/?tab=recent&n=2")

    assert path_of(page.url) == "/auth/login"
    assert next_of(page.url) == "/?tab=recent&n=2"
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert servers.upstream_requests == [], "the app must not be reached before sign-in"

    async with page.expect_response(_posts_to("/auth/login")) as posted:
        await sign_in(page)
    login: Response = await posted.value
    assert login.status == 303  # never 307/308: the password must not be re-posted to the app

    assert page.url == f"{servers.url}/?tab=recent&n=2"
    await expect(page.get_by_role("heading", name=f"Hello, {EMAIL}")).to_be_visible()
    assert servers.upstream_requests == ["GET /?tab=recent&n=2"]
    assert "password" not in page.url


async def test_bad_password_shows_the_error_inline_and_keeps_the_email(
    page: Page, context: BrowserContext, servers: Servers
) -> None:
    """A wrong password re-renders the form with the error tied to the field and the email kept."""
    await servers.add_user()
    await page.goto(f"{servers.url}/auth/login")

    async with page.expect_response(_posts_to("/auth/login")) as posted:
        await sign_in(page, password="not the right passphrase at all")
    assert (await posted.value).status == 401

    password = page.get_by_label("Password", exact=True)
    await expect(page.locator("#password-error")).to_contain_text("The email or password is incorrect.")
    await expect(password).to_have_attribute("aria-invalid", "true")
    await expect(password).to_have_attribute("aria-describedby", "password-error")
    await expect(password).to_have_value("")  # never echoed back
    await expect(page.get_by_label("Email address")).to_have_value(EMAIL)
    await expect(page.get_by_role("alert")).to_contain_text("There is a problem")
    assert path_of(page.url) == "/auth/login"
    assert ACCESS_COOKIE not in await cookies(context)
    assert REFRESH_COOKIE not in await cookies(context)
    assert servers.upstream_requests == []


async def test_register_signs_in_and_returns_to_the_original_page(page: Page, servers: Servers) -> None:
    """Create account from the sign-in page: signed in at once, back on the page first asked for."""
    await page.goto(f"{servers.url}/form?draft=7")
    await page.get_by_role("link", name="Create an account").click()

    assert path_of(page.url) == "/auth/register"
    assert next_of(page.url) == "/form?draft=7"
    await page.get_by_label("Email address").fill("newcomer@example.com")
    await page.get_by_label("Password", exact=True).fill("a long and unusual passphrase for tests 9")
    async with page.expect_response(_posts_to("/auth/register")) as posted:
        await page.get_by_role("button", name="Create account").click()
    assert (await posted.value).status == 303

    await expect(page.get_by_role("heading", name="Notes", exact=True)).to_be_visible()
    assert page.url == f"{servers.url}/form?draft=7"
    await expect(page.locator("header")).to_contain_text("newcomer@example.com")
    assert servers.upstream_requests == ["GET /form?draft=7"]


async def test_sign_out_then_back_button_and_fresh_visit_show_sign_in(
    page: Page, context: BrowserContext, servers: Servers
) -> None:
    """After signing out, neither the back button nor a new visit shows the app's page again."""
    user = await servers.add_user()
    await page.goto(f"{servers.url}/")
    await sign_in(page)
    await expect(page.get_by_role("heading", name=f"Hello, {EMAIL}")).to_be_visible()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="You have signed out")).to_be_visible()
    assert path_of(page.url) == "/auth/logout"
    assert ACCESS_COOKIE not in await cookies(context)
    assert REFRESH_COOKIE not in await cookies(context)
    assert await servers.live_sessions(user.id) == []

    await page.go_back()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert path_of(page.url) == "/auth/login"
    await expect(page.get_by_text(f"Hello, {EMAIL}")).to_have_count(0)

    await page.goto(f"{servers.url}/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert servers.upstream_requests == ["GET /"], "only the one page seen while signed in"


async def test_remember_me_keeps_the_box_ticked_and_the_session_long(
    page: Page, context: BrowserContext, start_servers: StartServers
) -> None:
    """With remember_me on: a failed sign-in keeps the box ticked; signing in with it lasts days."""
    servers = await start_servers(tokens={"remember_me": True})
    await servers.add_user()
    await page.goto(f"{servers.url}/")
    await sign_in(page, password="not the right passphrase at all", remember=True)
    await expect(page.locator("#password-error")).to_be_visible()
    await expect(page.get_by_label("Keep me signed in")).to_be_checked()

    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name=f"Hello, {EMAIL}")).to_be_visible()

    refresh = next(c for c in await context.cookies() if c["name"] == REFRESH_COOKIE)
    tokens = servers.config.tokens
    lifetime = refresh["expires"] - time.time()
    assert lifetime > tokens.refresh_ttl * 2  # not the ordinary idle timeout
    assert lifetime == pytest.approx(tokens.remember_refresh_ttl, abs=60)
