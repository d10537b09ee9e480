"""Prometheus metrics at [metrics].path: what they count and who may read them (issue 5)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from tests.conftest import PASSWORD, GatewayFactory, register, signed_in


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted(p for p in (match.group(2) or "").split(",") if p))
            if got == want:
                return float(match.group(3))
    return 0.0


async def test_metrics_count_logins_refreshes_and_requests(gw: Any, clock: Any) -> None:
    """A login, a failed login, a transparent refresh and proxied requests show up in /metrics."""
    await signed_in(gw)
    await gw.post("/auth/login", json={"email": "alice@example.com", "password": "not the password!"})
    clock.advance(400)
    assert (await gw.get("/app/x")).status == 200
    resp = await gw.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert sample(text, "gateway_logins_total", outcome="success") == 1
    assert sample(text, "gateway_logins_total", outcome="failure") == 1
    assert sample(text, "gateway_refreshes_total", outcome="rotated") == 1
    assert sample(text, "gateway_requests_total", route="/", status="200") == 1
    assert sample(text, "gateway_upstream_seconds_count", route="/") == 1
    assert sample(text, "gateway_overhead_seconds_count", route="/") == 1


async def test_metrics_count_reuse_detection_and_revocations(gw: Any, clock: Any) -> None:
    """Reuse detection and the revocation it causes are counted."""
    await signed_in(gw)
    rt = next(c.value for c in gw.session.cookie_jar if c.key == "gw_refresh")
    gw.session.cookie_jar.clear()
    await gw.post("/auth/refresh", cookies={"gw_refresh": rt})
    clock.advance(11)
    gw.session.cookie_jar.clear()
    await gw.post("/auth/refresh", cookies={"gw_refresh": rt})
    text = await (await gw.get("/metrics")).text()
    assert sample(text, "gateway_refreshes_total", outcome="reuse_detected") == 1
    assert sample(text, "gateway_revocations_total", reason="refresh_reuse") == 1


async def test_throttled_attempts_are_counted(make_gateway: GatewayFactory) -> None:
    """Login attempts refused by throttling are counted."""
    gw = await make_gateway(login={"max_failures": 1})
    await register(gw)
    await gw.post("/auth/login", json={"email": "alice@example.com", "password": "wrong wrong wrong"})
    await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    text = await (await gw.get("/metrics")).text()
    assert sample(text, "gateway_throttled_total") == 1
    assert sample(text, "gateway_logins_total", outcome="throttled") == 1


async def test_upstream_errors_are_counted(make_gateway: GatewayFactory, unused_tcp_port: int) -> None:
    """An unreachable upstream is counted as an upstream error."""
    gw = await make_gateway(
        routes=[{"path": "/", "auth": "public", "upstream": f"http://127.0.0.1:{unused_tcp_port}"}]
    )
    assert (await gw.get("/x")).status == 502
    text = await (await gw.get("/metrics")).text()
    assert sample(text, "gateway_upstream_errors_total", route="/", kind="unavailable") == 1


async def test_metrics_hidden_from_addresses_outside_the_allow_list(make_gateway: GatewayFactory) -> None:
    """From an address outside [metrics].allow the path answers 404 and shows nothing."""
    gw = await make_gateway(metrics={"allow": (ipaddress.ip_network("10.0.0.0/8"),)})
    resp = await gw.get("/metrics")
    assert resp.status == 404
    assert "gateway_" not in await resp.text()


async def test_metrics_can_be_disabled(make_gateway: GatewayFactory, recorder: Any) -> None:
    """With metrics disabled the path is an ordinary proxied path."""
    gw = await make_gateway(metrics={"enabled": False}, routes=[{"path": "/", "auth": "public"}])
    resp = await gw.get("/metrics")
    assert resp.status == 200
    assert recorder.last["path"] == "/metrics"
