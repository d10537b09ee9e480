"""gateway: an authenticating reverse proxy for legacy web apps that have no login of their own."""

__version__ = "0.1.0"
