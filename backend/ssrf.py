"""The SSRF guard for webhook URLs: only http(s) to globally routable addresses.

Checked when a job is created and again right before each send. At send time the name is
resolved once, every address it resolves to is checked, and the connection is made to a
checked address (``WebhookTarget.addresses``), never by resolving the name again: a DNS answer
that changes between the check and the connect (rebinding) cannot reach an internal address.

Refused: anything that is not globally routable (``ipaddress``' ``is_global``: private,
shared 100.64/10, reserved, link-local, documentation, ...), multicast, cloud metadata
addresses, and the IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, NAT64, Teredo,
IPv4-compatible), which are unwrapped and the IPv4 address checked too. Loopback is allowed
only with WEBHOOK_ALLOW_LOOPBACK=1, for tests and local development; nothing else that is not
global is allowed then.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from backend.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud metadata endpoints (both are also outside ``is_global``; named for the message).
METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
MAX_URL_LENGTH = 2048

#: IPv6 prefixes that embed an IPv4 address in their last 32 bits (RFC 6052 well-known NAT64
#: prefix; the deprecated IPv4-compatible ::/96). ``is_global`` calls both global.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
#: Local-use NAT64 (RFC 8215): translated inside one network only, the IPv4 address may sit at
#: several places, so the whole prefix is refused. Python 3.11 calls it global.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
#: Characters kept as they are in the request target; anything else (spaces, control
#: characters, non-ASCII) is percent-encoded, so the request line cannot be split.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class WebhookTarget:
    """Where one webhook goes: the name for Host/SNI/certificate, the addresses to connect to."""

    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    request_target: str  # path and query for the request line
    addresses: tuple[str, ...]  # every address the name resolved to; all of them were checked

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a 6to4, NAT64, Teredo or IPv4-compatible address leads to."""
    found: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # the relay server and the client behind it
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _refusal(address: IPAddress, allow_loopback: bool) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the kernel connects an IPv4-mapped address over IPv4
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address in METADATA_ADDRESSES or address.is_link_local:
        return "a link-local or metadata address"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global or (isinstance(address, ipaddress.IPv6Address) and address in _LOCAL_NAT64):
        return "a private or reserved address (not globally routable)"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            # Loopback inside 6to4/NAT64 is not the local host: it is refused even when loopback is allowed.
            if _refusal(inner, allow_loopback=False):
                return f"a private or reserved address (it embeds {inner})"
    return None


def _connect_form(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ascii_host_name(host: str) -> str:
    """The host name as sent in Host and SNI (IDNA for international names)."""
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not _HOSTNAME.fullmatch(ascii_host):
        raise ValidationFailed(f"webhook_url host {host!r} is not a valid host name")
    return ascii_host


def resolve_webhook_url(url: object, *, allow_loopback: bool, resolve=None) -> WebhookTarget:
    """Check ``url`` and resolve its host once; the target names the addresses to connect to.

    ``resolve`` is ``socket.getaddrinfo`` unless given (tests give a resolver that changes its answer).

    Raises:
        ValidationFailed: not an http(s) URL, a port outside 1-65535, or the host points (or
            resolves) to an address that is not globally routable, or it does not resolve.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(f"webhook_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError above 65535 or when not a number
    except ValueError:
        raise ValidationFailed(f"webhook_url is not a valid URL, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(f"webhook_url must be an http or https URL with a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("webhook_url must not carry credentials")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise ValidationFailed(f"webhook_url port must be 1-65535, got {port}")
    host = parts.hostname
    literal = _ip_literal(host)
    if literal is None:
        host = _ascii_host_name(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = (resolve or socket.getaddrinfo)(host, port, proto=socket.IPPROTO_TCP)
            addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        except (OSError, UnicodeError, ValueError) as exc:
            raise ValidationFailed(f"webhook_url host {parts.hostname!r} does not resolve: {exc}") from None
        if not addresses:
            raise ValidationFailed(f"webhook_url host {parts.hostname!r} does not resolve")
    for address in addresses:
        reason = _refusal(address, allow_loopback)
        if reason:
            raise ValidationFailed(f"webhook_url {url!r} points to {reason} ({address})")
    request_target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
    connect_to = tuple(dict.fromkeys(_connect_form(address) for address in addresses))
    return WebhookTarget(parts.scheme, host.rstrip(".") or host, port, request_target, connect_to)


def check_webhook_url(url: object, *, allow_loopback: bool, resolve=None) -> str:
    """Return ``url`` if a webhook may be sent there (see ``resolve_webhook_url``).

    Raises:
        ValidationFailed: as ``resolve_webhook_url``.
    """
    resolve_webhook_url(url, allow_loopback=allow_loopback, resolve=resolve)
    return url
