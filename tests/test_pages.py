"""The gateway's HTML pages, rendered by a tiny aiohttp app: accessibility, errors, `next`, headers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from gateway import errors
from gateway.config import Config, PagesConfig, RegistrationConfig, TokensConfig
from gateway.keys import CONFIG
from gateway.pages import (
    account_page,
    describe_client,
    logged_out_page,
    login_page,
    register_page,
    setup_pages,
)
from gateway.store import SessionRecord
from gateway.tokens import Claims

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
)
SAFARI_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Version/17.0 Safari/604.1"
FIREFOX_UA = "Mozilla/5.0 (Windows NT 10.0) Gecko/20100101 Firefox/128.0"
View = Callable[[web.Request], web.Response]


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


class Document(HTMLParser):
    """Every element of a page with its attributes and the text inside it."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def by_id(self, element_id: str) -> Element:
        return next(e for e in self.elements if e.attrs.get("id") == element_id)

    def visible_inputs(self) -> list[Element]:
        return [e for e in self.all("input") if e.attrs.get("type") != "hidden"]


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    html: str
    doc: Document = field(init=False)

    def __post_init__(self) -> None:
        self.doc = Document(self.html)


Render = Callable[..., Awaitable[Page]]


@pytest.fixture
def render(aiohttp_client: AiohttpClient) -> Render:
    """Serve one page function on a tiny app with `config` and GET it."""

    async def go(view: View, config: Config | None = None, query: str = "") -> Page:
        app = web.Application()
        app[CONFIG] = config or Config()
        setup_pages(app)

        async def handler(request: web.Request) -> web.StreamResponse:
            return view(request)

        app.router.add_get("/page", handler)
        client = await aiohttp_client(app)
        resp = await client.get("/page" + query)
        return Page(resp.status, dict(resp.headers), await resp.text())

    return go


def with_config(**sections: object) -> Config:
    return dataclasses.replace(Config(), **sections)  # type: ignore[arg-type]


CLAIMS = Claims(sub="u1", email="ada@example.com", roles=("user", "admin"), sid="s1", ver=1, iat=0, exp=0)
SESSIONS = [
    SessionRecord("s2", "u1", 1_700_000_000.0, 1_700_003_600.0, 1_800_000_000.0, 1800.0, "10.0.0.2 curl/8.5"),
    SessionRecord(
        "s1", "u1", 1_700_000_100.0, 1_700_007_200.0, 1_800_000_000.0, 1800.0, f"127.0.0.1 {CHROME_UA}"
    ),
]

PAGES: dict[str, View] = {
    "login": lambda r: login_page(r),
    "register": lambda r: register_page(r),
    "logged_out": logged_out_page,
    "account": lambda r: account_page(r, CLAIMS, SESSIONS),
}


# ---- accessibility --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["login", "register"])
async def test_every_input_has_a_label(render: Render, name: str) -> None:
    """Every visible form control has a <label for=…> naming it, remember-me included."""
    page = await render(PAGES[name], with_config(tokens=TokensConfig(remember_me=True)))
    inputs = page.doc.visible_inputs()
    assert len(inputs) >= 2
    for control in inputs:
        label = page.doc.one("label", for_=control.attrs["id"])
        assert label.text.strip()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("login", {"email": "username", "password": "current-password"}),
        ("register", {"email": "email", "password": "new-password"}),
    ],
    ids=["login", "register"],
)
async def test_autocomplete_tells_password_managers_what_each_field_is(
    render: Render, name: str, expected: dict[str, str]
) -> None:
    """Sign-in asks for the saved credentials, registration for a new password."""
    page = await render(PAGES[name])
    for field_id, token in expected.items():
        assert page.doc.by_id(field_id).attrs["autocomplete"] == token


async def test_first_empty_field_is_focused(render: Render) -> None:
    """A fresh sign-in page puts the cursor in the email field, a refilled one in the password."""
    fresh = await render(PAGES["login"])
    refilled = await render(lambda r: login_page(r, email="ada@example.com"))
    assert "autofocus" in fresh.doc.by_id("email").attrs
    assert "autofocus" in refilled.doc.by_id("password").attrs
    assert "autofocus" not in refilled.doc.by_id("email").attrs


# ---- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    view: Callable[..., web.Response]
    exc: errors.GatewayError
    status: int
    fields: dict[str, str]  # field -> text its message must contain
    headers: dict[str, str] = field(default_factory=dict)


FIELD_ERRORS = {
    "bad password": ErrorCase(
        login_page, errors.InvalidCredentials(), 401, {"password": "The email or password is incorrect."}
    ),
    "missing fields": ErrorCase(
        login_page,
        errors.InvalidInput({"email": "is required", "password": "is required"}),
        400,
        {"email": "Email address is required.", "password": "Password is required."},
    ),
    "weak password": ErrorCase(
        register_page,
        errors.InvalidInput({"password": "must be at least 15 characters"}),
        400,
        {"password": "Password must be at least 15 characters."},
    ),
    "email taken": ErrorCase(register_page, errors.EmailTaken(), 409, {"email": "already exists"}),
    "domain not allowed": ErrorCase(
        register_page,
        errors.RegistrationClosed("registration is not open to this email domain"),
        403,
        {"email": "Registration is not open to this email domain."},
    ),
}


@pytest.mark.parametrize("case", FIELD_ERRORS.values(), ids=FIELD_ERRORS.keys())
async def test_field_error_is_tied_to_its_field_and_keeps_the_email(render: Render, case: ErrorCase) -> None:
    """The status matches the error, the message sits by its field, and the email stays filled in."""
    page = await render(lambda r: case.view(r, email="ada@example.com", exc=case.exc))
    assert page.status == case.status
    assert page.doc.one("title").text.startswith("Error: ")
    assert page.doc.by_id("email").attrs["value"] == "ada@example.com"
    assert "value" not in page.doc.by_id("password").attrs
    summary_links = {a.attrs["href"] for a in page.doc.all("a") if a.attrs.get("href", "").startswith("#")}
    for name, text in case.fields.items():
        control = page.doc.by_id(name)
        message = page.doc.by_id(f"{name}-error")
        assert text in message.text
        assert f"{name}-error" in control.attrs["aria-describedby"].split()
        assert control.attrs.get("aria-invalid") == "true"
        assert f"#{name}" in summary_links
    for name in {"email", "password"} - case.fields.keys():
        assert "aria-invalid" not in page.doc.by_id(name).attrs


THROTTLED = {
    "too many attempts": (errors.TooManyAttempts(retry_after=599.2), 429, "600", "10 minutes"),
    "overloaded": (errors.Overloaded(retry_after=1), 503, "1", "busy"),
}


@pytest.mark.parametrize(("exc", "status", "retry_after", "text"), THROTTLED.values(), ids=THROTTLED.keys())
async def test_throttled_login_says_when_to_retry(
    render: Render, exc: errors.GatewayError, status: int, retry_after: str, text: str
) -> None:
    """Throttling answers its status with Retry-After and a page-level message, email kept."""
    page = await render(lambda r: login_page(r, email="ada@example.com", exc=exc))
    assert page.status == status
    assert page.headers["Retry-After"] == retry_after
    summary = page.doc.one("div", role="alert")
    assert text in summary.text
    assert "autofocus" in summary.attrs
    assert page.doc.by_id("email").attrs["value"] == "ada@example.com"


async def test_closed_registration_shows_no_form(render: Render) -> None:
    """With registration disabled the page answers 403, says so and offers only sign-in."""
    config = with_config(registration=RegistrationConfig(enabled=False))
    page = await render(lambda r: register_page(r, error="Registration is closed.", status=403), config)
    assert page.status == 403
    assert "Registration is closed" in page.doc.one("h1").text
    assert not page.doc.all("form")
    assert page.doc.one("a", href="/auth/login")


async def test_plain_error_message_is_shown_with_its_status(render: Render) -> None:
    """An `error=` text without an exception shows in the summary with the given status."""
    page = await render(lambda r: login_page(r, error="Something odd happened.", status=422))
    assert page.status == 422
    assert "Something odd happened." in page.doc.one("div", role="alert").text


# ---- next -----------------------------------------------------------------------------------------


async def test_next_is_carried_as_a_hidden_field(render: Render) -> None:
    """The target page and query survive the form post as a hidden `next` field and in the links."""
    page = await render(
        lambda r: login_page(r, next_url=r.query.get("next")), query="?next=%2Fapp%2Fpage%3Fx%3D1"
    )
    assert page.doc.one("input", name="next", type="hidden").attrs["value"] == "/app/page?x=1"
    assert page.doc.one("a", href="/auth/register?next=%2Fapp%2Fpage%3Fx%3D1")


@pytest.mark.parametrize(
    "target", ["//evil.example", "https://evil.example/", "/\\evil.example", "/%2F%2Fevil.example"]
)
@pytest.mark.parametrize("view", [login_page, register_page], ids=["login", "register"])
async def test_unsafe_next_falls_back_to_root(
    render: Render, view: Callable[..., web.Response], target: str
) -> None:
    """An off-site `next` is never echoed into the form: it becomes "/" (SECURITY item 115)."""
    page = await render(lambda r: view(r, next_url=target))
    assert page.doc.one("input", name="next").attrs["value"] == "/"
    assert "evil" not in page.html


# ---- headers, assets, escaping --------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
async def test_every_page_sends_the_security_headers(render: Render, name: str) -> None:
    """CSP, frame denial, no referrer, nosniff, no-store and a UTF-8 HTML type on each page."""
    page = await render(PAGES[name])
    csp = dict(d.strip().split(" ", 1) for d in page.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["form-action"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["base-uri"] == "'none'"
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"


async def test_inline_stylesheet_is_allowed_by_its_hash(render: Render) -> None:
    """The CSP's style-src names the SHA-256 of the exact inline stylesheet, so the page is styled."""
    page = await render(PAGES["login"])
    css = re.search(r"<style>(.*?)</style>", page.html, re.S)
    assert css is not None and ".button" in css[1]
    digest = base64.b64encode(hashlib.sha256(css[1].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}';" in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("name", PAGES)
async def test_pages_load_nothing_external(render: Render, name: str) -> None:
    """No page refers to another origin: every link, image and form target is a local path."""
    page = await render(PAGES[name], with_config(tokens=TokensConfig(remember_me=True)))
    assert not re.search(r"(?i)https?:|//[a-z0-9]", page.html.replace("<!doctype html>", ""))
    for element in page.doc.elements:
        for attr in ("href", "src", "action"):
            if attr in element.attrs:
                value = element.attrs[attr]
                assert value.startswith(("/", "#")) and not value.startswith("//"), value
    assert not page.doc.all("script")
    assert not page.doc.all("link", rel="stylesheet")


async def test_email_is_escaped(render: Render) -> None:
    """A hostile email comes back as inert text in the value attribute, never as markup."""
    hostile = '"><script>alert(1)</script>'
    page = await render(lambda r: login_page(r, email=hostile, exc=errors.InvalidCredentials()))
    assert "<script" not in page.html
    assert not page.doc.all("script")
    assert page.doc.by_id("email").attrs["value"] == hostile


async def test_account_page_escapes_user_data(render: Render) -> None:
    """Email, roles and the client's user agent are shown as text, not markup."""
    claims = dataclasses.replace(CLAIMS, email="<b>x</b>@example.com", roles=("<i>r</i>",))
    session = dataclasses.replace(SESSIONS[1], client="127.0.0.1 <script>alert(1)</script>")
    page = await render(lambda r: account_page(r, claims, [session]))
    assert "<script" not in page.html and "<b>" not in page.html and "<i>" not in page.html
    assert [d.text.strip() for d in page.doc.all("dd")] == ["<b>x</b>@example.com", "<i>r</i>"]
    assert "<script>alert(1)</script>" in page.doc.one("span", class_="device").attrs["title"]


# ---- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
async def test_remember_me_only_when_enabled(render: Render, enabled: bool) -> None:
    """The "keep me signed in" checkbox exists exactly when [tokens].remember_me is on."""
    page = await render(PAGES["login"], with_config(tokens=TokensConfig(remember_me=enabled)))
    boxes = page.doc.all("input", name="remember", type="checkbox")
    assert len(boxes) == (1 if enabled else 0)
    if enabled:
        assert boxes[0].attrs["value"] == "on"
        assert "checked" not in boxes[0].attrs


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
async def test_create_account_link_follows_registration_switch(render: Render, enabled: bool) -> None:
    """Sign-in links to registration only while registration is enabled."""
    page = await render(PAGES["login"], with_config(registration=RegistrationConfig(enabled=enabled)))
    assert len(page.doc.all("a", href="/auth/register")) == (1 if enabled else 0)


async def test_auth_prefix_and_product_name_are_used(render: Render) -> None:
    """Forms post under the configured prefix and the page is titled with the product name."""
    config = with_config(
        server=dataclasses.replace(Config().server, auth_prefix="/sso"),
        pages=PagesConfig(product_name="Acme Portal"),
    )
    page = await render(PAGES["login"], config)
    assert page.doc.one("form").attrs == {"method": "post", "action": "/sso/login", "novalidate": ""}
    assert page.doc.one("title").text == "Sign in – Acme Portal"
    assert not page.doc.all("img")


async def test_register_page_states_the_minimum_password_length(render: Render) -> None:
    """The password hint tells the configured minimum length and is tied to the field."""
    config = with_config(passwords=dataclasses.replace(Config().passwords, min_length=20))
    page = await render(PAGES["register"], config)
    assert "at least 20 characters" in page.doc.by_id("password-hint").text
    assert "password-hint" in page.doc.by_id("password").attrs["aria-describedby"].split()
    assert page.doc.one("form").attrs["action"] == "/auth/register"


@pytest.mark.parametrize(
    ("logo", "src", "img_src"),
    [
        ("https://cdn.example.com:8443/brand/logo.svg", "https://cdn.example.com:8443/brand/logo.svg",
         "'self' https://cdn.example.com:8443"),
        ("/static/logo.svg", "/static/logo.svg", "'self'"),
        ("javascript:alert(1)", None, "'self'"),
    ],
    ids=["absolute", "same-origin", "refused"],
)  # fmt: skip
async def test_logo_is_shown_with_alt_text_and_allowed_by_csp(
    render: Render, logo: str, src: str | None, img_src: str
) -> None:
    """A configured logo is an <img> with alt text whose origin, and only that, the CSP allows."""
    config = with_config(pages=PagesConfig(product_name="Acme", logo_url=logo))
    page = await render(PAGES["login"], config)
    images = page.doc.all("img")
    assert [i.attrs["src"] for i in images] == ([src] if src else [])
    assert all(i.attrs["alt"] == "Acme logo" for i in images)
    assert f"img-src {img_src};" in page.headers["Content-Security-Policy"]


# ---- signed out, account --------------------------------------------------------------------------


async def test_signed_out_page_links_to_sign_in(render: Render) -> None:
    """The signed-out page says so and offers a way back in."""
    page = await render(PAGES["logged_out"])
    assert page.status == 200
    assert "signed out" in page.doc.one("h1").text
    assert page.doc.one("a", href="/auth/login").text.strip() == "Sign in again"


async def test_account_page_lists_sessions_and_offers_sign_out(render: Render) -> None:
    """Email, roles, one row per session with the current one marked first, and both sign-out forms."""
    page = await render(PAGES["account"])
    assert page.status == 200
    text = " ".join(page.html.split())
    assert "ada@example.com" in text and "user" in text and "admin" in text
    rows = page.doc.all("tr")[1:]
    assert len(rows) == 2
    assert "This device" in rows[0].text and "Chrome on Linux" in rows[0].text
    assert "This device" not in rows[1].text and "curl/8.5" in rows[1].text
    assert page.doc.all("time")[0].attrs["datetime"] == "2023-11-14T22:15:00+00:00"
    forms = {f.attrs["action"]: f for f in page.doc.all("form")}
    assert forms.keys() == {"/auth/logout", "/auth/logout-all"}
    assert all(f.attrs["method"] == "post" for f in forms.values())
    assert "Sign out everywhere" in forms["/auth/logout-all"].text
    assert "Sign out" in forms["/auth/logout"].text


@pytest.mark.parametrize(
    ("client", "device", "address"),
    [
        (f"127.0.0.1 {CHROME_UA}", "Chrome on Linux", "127.0.0.1"),
        (f"::1 {SAFARI_UA}", "Safari on iOS", "::1"),
        (f"203.0.113.9 {FIREFOX_UA}", "Firefox on Windows", "203.0.113.9"),
        ("10.0.0.2 curl/8.5.0", "curl/8.5.0", "10.0.0.2"),
        ("10.0.0.2", "Unknown client", "10.0.0.2"),
    ],
    ids=["chrome", "safari-ios", "firefox", "curl", "no-agent"],
)  # fmt: skip
def test_client_is_described_for_people(client: str, device: str, address: str) -> None:
    """The stored client string becomes a short "browser on system" and the address."""
    described = describe_client(client)
    assert (described["device"], described["address"]) == (device, address)


async def test_pages_without_setup_fail_with_the_fix(aiohttp_client: AiohttpClient) -> None:
    """Rendering on an app where setup_pages never ran names the missing call instead of a KeyError."""
    app = web.Application()
    app[CONFIG] = Config()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return login_page(request)
        except RuntimeError as e:
            seen.append(str(e))
            return web.Response(status=500)

    app.router.add_get("/page", handler)
    client = await aiohttp_client(app)
    assert (await client.get("/page")).status == 500
    assert seen and "setup_pages(app)" in seen[0]
