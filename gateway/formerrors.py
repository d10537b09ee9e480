"""How a domain error reads on the gateway's forms: an HTTP status, messages tied to fields, headers.

The status comes from the one error table in `middleware`, so a form post and a JSON request
failing the same way answer the same status. Field reasons from the domain ("is required") are
completed with the field's label ("Email address is required.").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway import errors
from gateway.middleware import ERROR_TABLE

LABELS = {"email": "Email address", "password": "Password"}


@dataclass
class Problems:
    """What went wrong, shaped for a form: messages by field, page-wide messages, the status."""

    status: int = 200
    fields: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _wait(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def problems_of(exc: errors.GatewayError | None, *, registration_open: bool = True) -> Problems:
    if exc is None:
        return Problems()
    status = next((status for cls, (status, _) in ERROR_TABLE.items() if isinstance(exc, cls)), 500)
    p = Problems(status=status)
    if isinstance(exc, errors.InvalidCredentials):
        # One message for unknown email, wrong password and disabled user, on purpose (SECURITY B.1).
        p.fields["password"] = "The email or password is incorrect."  # noqa: S105 (a message)
    elif isinstance(exc, errors.TooManyAttempts | errors.Overloaded):
        seconds = max(1, math.ceil(exc.retry_after))
        p.headers["Retry-After"] = str(seconds)
        if isinstance(exc, errors.TooManyAttempts):
            p.general.append(f"Too many failed attempts. Try again in {_wait(seconds)}.")
        else:
            p.general.append("The service is busy right now. Try again in a moment.")
    elif isinstance(exc, errors.InvalidInput):
        for name, reason in exc.fields.items():
            if name in LABELS:
                p.fields[name] = _sentence(f"{LABELS[name]} {reason}")
            else:
                p.general.append(_sentence(f"{name} {reason}"))
        if not exc.fields:
            p.general.append(_sentence(exc.message))
    elif isinstance(exc, errors.EmailTaken):
        p.fields["email"] = "An account with this email address already exists. Sign in instead."
    elif isinstance(exc, errors.RegistrationClosed) and registration_open:
        p.fields["email"] = _sentence(exc.message)  # open, but not to this email's domain
    else:
        p.general.append(_sentence(exc.message))
    return p
