"""Who the client is behind a reverse proxy: X-Forwarded-For, trusted from trusted peers only.

The API decides by the client's address (no API_KEYS: loopback clients only; rate limits
without a key: per address). Behind nginx on the same host or in the same pod every request
comes from 127.0.0.1, which would make every internet client "loopback". So when the peer
is one of TRUSTED_PROXIES (default: loopback), the client is the right-most address of
X-Forwarded-For that is not itself a trusted proxy; the shipped nginx config overwrites the
header with the address it saw, so a client cannot choose it. From any other peer the header
is ignored: a client that reaches gunicorn directly cannot claim to be loopback.

Trusting a loopback peer gives nothing away: a local process that sends a forged header
can only make itself look remote, never more trusted than it is. Trusting a network (say the
compose network) trusts every host in it to name the client, but never to name a loopback
client: only a loopback peer can be, or speak for, a loopback client, so no host on a trusted
network can pose as loopback (which, with no API_KEYS, would make it an admin).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The client of a request whose forwarded address cannot be believed: matches no rule.
UNKNOWN = "0.0.0.0"


def parse_networks(spec: str | None) -> tuple[Network, ...]:
    """``"127.0.0.1,::1,10.0.0.0/8"`` as networks; ``"none"`` or empty trusts nobody.

    Raises:
        ValueError: an entry is not an IP address or network.
    """
    entries = [entry.strip() for entry in (spec or "").split(",") if entry.strip()]
    if [entry.lower() for entry in entries] == ["none"]:
        return ()
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES entry must be an IP address or network, got {entry!r}") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:1234"
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


class TrustedProxies:
    """WSGI middleware: sets REMOTE_ADDR to the client a trusted proxy forwarded for."""

    def __init__(self, app: Callable, networks: Iterable[Network]):
        self.app = app
        self.networks = tuple(networks)

    def trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address, or None when ``peer`` is the client."""
        if not forwarded_for:
            return None  # the usual case without a proxy: nothing to parse
        peer_address = _address(peer or "")
        if not self.trusted(peer_address):
            return None
        hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
        client = None
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                # Garbage in the header: whatever it names cannot be told apart from a
                # forgery, so the client is unknown; never loopback.
                return UNKNOWN
            client = address
            if not self.trusted(address):
                break
        # (Every hop a trusted proxy: the left-most one is as far as the chain goes.)
        if client is None:
            return None
        if (client.is_loopback or client.is_unspecified) and not peer_address.is_loopback:
            return UNKNOWN  # only a loopback peer speaks for a loopback client
        return str(client)

    def __call__(self, environ: dict, start_response: Callable):
        client = self.client(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"))
        if client is not None:
            environ["jobservice.proxy_addr"] = environ.get("REMOTE_ADDR")
            environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)
