"""Who the client is behind a trusted proxy (backend/api/forwarded.py)."""

from __future__ import annotations

from backend.api.forwarded import TrustedProxies, parse_networks


def proxies(spec: str) -> TrustedProxies:
    return TrustedProxies(lambda environ, start_response: None, parse_networks(spec))


def test_a_host_on_a_trusted_network_cannot_pose_as_loopback():
    # Given the compose network trusted, as DEPLOYMENT_GUIDE.md suggests for per-client limits
    trusted = proxies("127.0.0.1,::1,172.16.0.0/12")

    # When another container connects straight to gunicorn and forwards "for 127.0.0.1"
    # Then it is not a loopback client (with no API_KEYS that would make it an admin)
    for forged in ("127.0.0.1", "::1", "[::1]:80", "127.0.0.1, 127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0"):
        assert trusted.client("172.18.0.5", forged) == "0.0.0.0", forged
    # while the address it names for a real remote client is believed
    assert trusted.client("172.18.0.5", "203.0.113.7") == "203.0.113.7"


def test_a_loopback_proxy_may_still_forward_for_a_loopback_client():
    # nginx on the same host forwarding a request that came from this host
    assert proxies("127.0.0.1,::1").client("127.0.0.1", "127.0.0.1") == "127.0.0.1"
    assert proxies("127.0.0.1,::1").client("127.0.0.1", "203.0.113.7") == "203.0.113.7"
