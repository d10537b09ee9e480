"""The client's address: the TCP peer, or the nearest untrusted hop of X-Forwarded-For when the
peer is a configured trusted proxy (uvicorn's proxy_headers model; SECURITY item 85)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gateway.config import IPNetwork


def _trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> tuple[str, bool]:
    """Return (client address, whether the TCP peer is a trusted proxy)."""
    peer = peer or "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer, False
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):  # walk back from the nearest hop until one we do not trust
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop)), True
            except ValueError:
                return peer, True
    return (hops[0] if hops else peer), True
