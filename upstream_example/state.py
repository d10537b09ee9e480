"""The example app's typed state and the identity it reads from the gateway's headers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from aiohttp import web

MAX_NOTES = 1000  # the oldest notes are forgotten, so a load test cannot grow memory without bound


@dataclass(frozen=True)
class IdentityHeaders:
    """The header names the gateway uses ([headers] in its config); the defaults match its own."""

    user_id: str = "X-Auth-User-Id"
    email: str = "X-Auth-User-Email"
    roles: str = "X-Auth-User-Roles"
    session_id: str = "X-Auth-Session-Id"


@dataclass(frozen=True)
class Identity:
    user_id: str | None
    email: str | None
    roles: tuple[str, ...]
    session_id: str | None

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None or self.email is not None


@dataclass(frozen=True)
class Note:
    text: str
    author: str | None  # the email header at the time of posting; None when nobody was signed in


HEADERS = web.AppKey("headers", IdentityHeaders)
NOTES = web.AppKey("notes", deque[Note])


def identity_of(request: web.Request) -> Identity:
    """Whatever the identity headers say: this app trusts them blindly, as legacy apps do."""
    names = request.app[HEADERS]
    roles = request.headers.get(names.roles, "")
    return Identity(
        user_id=request.headers.get(names.user_id),
        email=request.headers.get(names.email),
        roles=tuple(role.strip() for role in roles.split(",") if role.strip()),
        session_id=request.headers.get(names.session_id),
    )
