"""The domain exception tree. No HTTP statuses here: the HTTP layer maps each class once.

GatewayError
├── InvalidInput            bad user input; `.fields` maps a field name to the reason
├── EmailTaken              registration of an email that exists (after normalisation)
├── RegistrationClosed      registration disabled, or email domain not allowed
├── InvalidCredentials      unknown email, wrong password, disabled user: one class on purpose
├── TooManyAttempts         login throttled; `.retry_after` seconds
├── Overloaded              the password-hashing queue is full; `.retry_after` seconds
├── InvalidRefreshToken     unknown, expired, revoked or reused refresh token
├── Unauthenticated         no valid access token where one is required
├── NotFound                an admin action named a user or session that does not exist
└── StoreError              the store failed (unreachable, corrupt)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the domain raises on purpose."""

    message = "request failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message


class InvalidInput(GatewayError):
    message = "the request is invalid"

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        super().__init__(message)
        self.fields = fields


class EmailTaken(GatewayError):
    message = "an account with this email already exists"


class RegistrationClosed(GatewayError):
    message = "registration is closed"


class InvalidCredentials(GatewayError):
    message = "the email or password is incorrect"


class TooManyAttempts(GatewayError):
    message = "too many failed attempts; try again later"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(GatewayError):
    message = "the server is busy; try again shortly"

    def __init__(self, retry_after: float = 1.0, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRefreshToken(GatewayError):
    message = "the session has ended; sign in again"


class Unauthenticated(GatewayError):
    message = "authentication required"


class NotFound(GatewayError):
    message = "not found"


class StoreError(GatewayError):
    message = "the store is unavailable"
