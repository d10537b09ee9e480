"""What a person does in the browser, as reusable steps for the journeys."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from playwright.async_api import BrowserContext, Page

from tests.conftest import PASSWORD

EMAIL = "alice@example.com"
ACCESS_COOKIE = "gw_access"
REFRESH_COOKIE = "gw_refresh"


async def sign_in(
    page: Page, email: str = EMAIL, password: str = PASSWORD, *, remember: bool = False
) -> None:
    """Fill in the gateway's sign-in form the way a person would (by label) and submit it."""
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    if remember:
        await page.get_by_label("Keep me signed in").check()
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign in").click()


async def cookies(context: BrowserContext) -> dict[str, str]:
    return {c["name"]: c["value"] for c in await context.cookies()}


def path_of(url: str) -> str:
    return urlsplit(url).path


def next_of(url: str) -> str | None:
    """The `next` query parameter of a login-page URL, decoded."""
    values = parse_qs(urlsplit(url).query).get("next")
    return values[0] if values else None
