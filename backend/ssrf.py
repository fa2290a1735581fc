"""The SSRF guard for webhook URLs: only http(s) to public addresses.

Checked when a job is created and again right before each send (DNS can change in between).
Loopback is allowed only with WEBHOOK_ALLOW_LOOPBACK=1, for tests and local development.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from backend.errors import ValidationFailed

#: Cloud metadata endpoints that are not covered by the link-local check.
METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
MAX_URL_LENGTH = 2048


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address in METADATA_ADDRESSES or address.is_link_local:
        return "a link-local or metadata address"
    if address.is_private or address.is_reserved or address.is_multicast or address.is_unspecified:
        return "a private or reserved address"
    return None


def check_webhook_url(url: object, *, allow_loopback: bool, resolve=socket.getaddrinfo) -> str:
    """Return ``url`` if a webhook may be sent there.

    Raises:
        ValidationFailed: not an http(s) URL, or it points (or resolves) to loopback,
            private, link-local, metadata or reserved addresses, or it does not resolve.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(f"webhook_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValidationFailed(f"webhook_url is not a valid URL, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"webhook_url must be an http or https URL with a host, got {url!r}")
    if parts.username or parts.password:
        raise ValidationFailed("webhook_url must not carry credentials")
    try:
        infos = resolve(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ValidationFailed(f"webhook_url host {parts.hostname!r} does not resolve: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        reason = _refusal(address, allow_loopback)
        if reason:
            raise ValidationFailed(f"webhook_url {url!r} points to {reason} ({address})")
    return url
