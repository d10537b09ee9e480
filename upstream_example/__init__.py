"""A stand-in legacy web app ("Legacy Intranet") for the gateway's demo and tests.

It knows nothing about tokens: it trusts the identity headers the gateway adds, echoes requests
byte for byte, streams large bodies both ways, serves a websocket and accepts form posts, so every
proxying behaviour can be seen in a browser and checked by a test. Never expose it directly.
"""

from __future__ import annotations

from upstream_example.app import create_app
from upstream_example.state import IdentityHeaders

__all__ = ["IdentityHeaders", "create_app"]
