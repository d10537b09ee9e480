"""`create_app()`: the example legacy app's routes, used by `python -m upstream_example` and the tests."""

from __future__ import annotations

from collections import deque

from aiohttp import web

from upstream_example import api, pages
from upstream_example.state import HEADERS, MAX_NOTES, NOTES, IdentityHeaders

# Raw request bodies (echo and upload digests are of the bytes sent) and room for the big cookies
# and identity headers a legacy SSO setup produces.
_HANDLER_ARGS = {"auto_decompress": False, "max_line_size": 32768, "max_field_size": 32768}


def create_app(headers: IdentityHeaders | None = None) -> web.Application:
    app = web.Application(handler_args=_HANDLER_ARGS)
    app[HEADERS] = headers or IdentityHeaders()
    app[NOTES] = deque(maxlen=MAX_NOTES)
    router = app.router
    router.add_get("/", pages.index)
    for path in ("/echo", "/echo/{tail:.*}"):
        router.add_route("*", path, api.echo)
    router.add_get("/form", pages.form_page)
    router.add_post("/form", pages.form_post)
    router.add_get("/form/notes", api.notes)
    router.add_get("/download", api.download)
    router.add_post("/upload", api.upload)
    router.add_get("/ws", api.websocket_echo)
    router.add_get("/ws-page", pages.ws_page)
    router.add_get("/api/whoami", api.whoami)
    for path in ("/public", "/public/", "/public/about"):
        router.add_get(path, pages.public)
    router.add_get("/cookies", api.cookies)
    return app
