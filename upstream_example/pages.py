"""The example app's HTML pages: plain server-rendered markup, every dynamic value escaped."""

from __future__ import annotations

from collections import deque
from html import escape

from aiohttp import web

from upstream_example.state import NOTES, Identity, Note, identity_of

MAX_NOTE = 2000

_STYLE = """
body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #222; background: #f4f5f7; }
header { background: #2d3e50; color: #fff; padding: .7rem 1.5rem; display: flex; align-items: center;
         justify-content: space-between; }
header h1 { font-size: 1.15rem; margin: 0; } header a { color: #fff; text-decoration: none; }
header form { margin: 0; }
nav { background: #e3e7ec; padding: .4rem 1.5rem; } nav a { margin-right: 1.1rem; color: #2d3e50; }
main { max-width: 58rem; margin: 1.5rem auto; background: #fff; padding: 1.2rem 1.8rem;
       border: 1px solid #d8dde3; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e6e9ed; vertical-align: top; }
td { font-family: ui-monospace, monospace; word-break: break-all; }
.muted { color: #6b7785; }
.role { background: #e3edf7; border-radius: 3px; padding: 0 .4rem; margin-right: .3rem; }
textarea { width: 100%; min-height: 5rem; font: inherit; }
button { font: inherit; padding: .3rem .9rem; cursor: pointer; }
#echo { font-family: ui-monospace, monospace; background: #eef6ee; padding: .5rem; min-height: 1.5rem; }
"""

_NAV = (
    ("/", "Home"),
    ("/form", "Notes"),
    ("/ws-page", "Live echo"),
    ("/public/", "About (public)"),
    ("/api/whoami", "whoami (JSON)"),
    ("/echo", "Echo (JSON)"),
)


def _page(title: str, who: Identity, body: str) -> web.Response:
    user = escape(who.email or who.user_id or "") if who.signed_in else "not signed in"
    # The sign-out form posts to the gateway's own endpoint: this app has no sessions to end.
    signout = (
        '<form method="post" action="/auth/logout"><button type="submit">Sign out</button></form>'
        if who.signed_in
        else ""
    )
    links = "".join(f'<a href="{href}">{escape(label)}</a>' for href, label in _NAV)
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · Legacy Intranet</title><style>{_STYLE}</style></head><body>"
        f'<header><h1><a href="/">Legacy Intranet</a></h1>'
        f'<span class="muted" style="color:#cfd8e3">{user}</span>{signout}</header>'
        f"<nav>{links}</nav><main>{body}</main></body></html>"
    )
    return web.Response(text=html, content_type="text/html")


async def index(request: web.Request) -> web.Response:
    who = identity_of(request)
    greeting = f"Hello, {escape(who.email or who.user_id or '')}" if who.signed_in else "Hello, stranger"
    roles = "".join(f'<span class="role">{escape(role)}</span>' for role in who.roles) or "none"
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in request.headers.items()
    )
    body = (
        f"<h2>{greeting}</h2>"
        f"<p>Your roles: {roles}</p>"
        f'<p class="muted">Session: {escape(who.session_id or "none")}</p>'
        f"<h3>Request headers received</h3>"
        f"<table><tr><th>Name</th><th>Value</th></tr>{rows}</table>"
    )
    return _page("Home", who, body)


def _notes_body(request: web.Request, message: str = "") -> str:
    notes: deque[Note] = request.app[NOTES]
    items = "".join(
        f"<li>{escape(note.text)} <span class='muted'>by {escape(note.author or 'nobody')}</span></li>"
        for note in notes
    )
    return (
        f"<h2>Notes</h2>{message}"
        '<form method="post" action="/form"><label for="note">New note</label>'
        '<textarea id="note" name="note" required></textarea>'
        '<p><button type="submit">Save note</button></p></form>'
        f"<h3>Recorded notes</h3><ul id='notes'>{items or '<li class=muted>none yet</li>'}</ul>"
    )


async def form_page(request: web.Request) -> web.Response:
    return _page("Notes", identity_of(request), _notes_body(request))


async def form_post(request: web.Request) -> web.Response:
    """Records the note with no CSRF check at all, like many legacy apps: the gateway must stop forgeries."""
    who = identity_of(request)
    form = await request.post()
    text = form.get("note")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE:
        message = f"<p style='color:#a00'>A note needs 1 to {MAX_NOTE} characters.</p>"
        return _page("Notes", who, _notes_body(request, message))
    notes: deque[Note] = request.app[NOTES]
    notes.append(Note(text=text.strip(), author=who.email))
    return _page("Notes", who, _notes_body(request, "<p>Saved.</p>"))


_WS_SCRIPT = """
const out = document.getElementById("echo");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onopen = () => ws.send("hello");
ws.onmessage = (event) => { out.textContent = event.data; };
ws.onerror = () => { out.textContent = "websocket error"; };
ws.onclose = (event) => { document.getElementById("state").textContent = "closed (" + event.code + ")"; };
"""


async def ws_page(request: web.Request) -> web.Response:
    body = (
        "<h2>Live echo</h2><p>This page opens a websocket to <code>/ws</code>, sends "
        "<code>hello</code> and shows what comes back.</p>"
        '<div id="echo"></div><p class="muted" id="state"></p>'
        f"<script>{_WS_SCRIPT}</script>"
    )
    return _page("Live echo", identity_of(request), body)


async def public(request: web.Request) -> web.Response:
    who = identity_of(request)
    status = f"signed in as {escape(who.email or who.user_id or '')}" if who.signed_in else "not signed in"
    body = (
        "<h2>About Legacy Intranet</h2>"
        "<p>This page is public: it works without signing in.</p>"
        f'<p>You are <strong id="status">{status}</strong>.</p>'
    )
    return _page("About", who, body)
