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

Names are resolved on a ``BoundedResolver`` (backend/webhooks/resolver.py), within a
``LookupBudget``: a deadline for all of a caller's lookups together (one API request's, batch
included: WEBHOOK_RESOLVE_SECONDS; one delivery's: what is left of WEBHOOK_TIMEOUT) and, for a
request, at most WEBHOOK_MAX_HOSTS distinct names. A slow DNS server so holds no thread longer
than its caller's budget, and a request cannot make the service look up thousands of names.
A budget names its owner (the API key's owner, the job's owner at send time): one owner's
lookups hold at most a quarter of the pool's threads until they really end, so one tenant's
slow DNS leaves the other tenants' lookups room (see BoundedResolver).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from backend.core.errors import ServiceUnavailable, ValidationFailed
from backend.core.settings import Settings
from backend.webhooks.resolver import BoundedResolver, LookupTimeout, OwnerLookupsBusy, ResolverBusy

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

#: For callers that bring no budget (scripts, tests): the same bounds, a 5 s deadline.
DEFAULT_RESOLVER = BoundedResolver()
DEFAULT_LOOKUP_SECONDS = 5.0
#: Lookup threads per API process for submissions: a request waits on at most one lookup at a
#: time and leaves at most one behind (the one it gave up on), so slow names tie up these
#: threads, never the request threads.
SUBMISSION_LOOKUP_THREADS = 16
_RESOLVER_MADE = threading.Lock()


class LookupNotAnswered(ValidationFailed):
    """A webhook host whose lookup gave no answer this time (it may next time): 422 at
    submission; at send time a failed attempt that is tried again (unlike a refusal)."""


class LookupTimedOut(LookupNotAnswered):
    """A webhook host that did not resolve within the budget."""


#: getaddrinfo's answers that a name has no address: the name is refused. Any other failure
#: (EAI_AGAIN "temporary failure in name resolution", EAI_FAIL, a system error) says nothing
#: about the name and may pass.
_NO_SUCH_NAME = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}


class LookupsBusy(ServiceUnavailable):
    """Every lookup thread is busy, or the owner's share of them: answered at once (503 at
    submission; at send time the delivery is put off a little, not counted as an attempt)."""


class LookupBudget:
    """What one caller may spend resolving webhook hosts: ``seconds`` for all its lookups
    together, counted from ``started`` (a ``time.monotonic()`` value; now when not given), and
    at most ``max_hosts`` distinct names (None: no cap). ``owner`` is whose share of the
    resolver's threads its lookups count in (None: no share).

    ``setting`` names what sets the budget, for the messages. A name already resolved under
    this budget is not looked up again (a batch's jobs naming one host cost one lookup).
    """

    def __init__(
        self,
        seconds: float,
        *,
        max_hosts: int | None = None,
        resolver: BoundedResolver | None = None,
        setting: str | None = None,
        started: float | None = None,
        owner: str | None = None,
    ):
        self.seconds = seconds
        self.ends = (time.monotonic() if started is None else started) + seconds
        self.max_hosts = max_hosts
        self.resolver = resolver or DEFAULT_RESOLVER
        self.setting = setting
        self.owner = owner
        self._answers: dict[tuple[str, int], list] = {}
        self._hosts: set[str] = set()

    def getaddrinfo(self, host: str, port: int, lookup=None) -> list:
        """``getaddrinfo`` within the budget.

        Raises:
            ValidationFailed: a name past ``max_hosts``.
            LookupTimedOut: no answer before the budget ran out.
            LookupsBusy: every lookup thread is busy, or the owner's share of them.
            OSError: the name does not resolve.
        """
        if (host, port) in self._answers:
            return self._answers[(host, port)]
        if host not in self._hosts and self.max_hosts is not None and len(self._hosts) >= self.max_hosts:
            raise ValidationFailed(
                f"one request may name at most {self.max_hosts} distinct webhook_url host names (WEBHOOK_MAX_HOSTS)",
                details={"setting": "WEBHOOK_MAX_HOSTS", "limit": self.max_hosts},
            )
        named = f" ({self.setting})" if self.setting else ""
        self._hosts.add(host)
        try:
            answer = self.resolver.getaddrinfo(
                host, port, timeout=self.ends - time.monotonic(), lookup=lookup, owner=self.owner
            )
        except LookupTimeout:
            raise LookupTimedOut(
                f"webhook_url host {host!r} did not resolve within {self.seconds:.3g} s{named}",
                details={"setting": self.setting, "limit": self.seconds},
            ) from None
        except OwnerLookupsBusy as exc:
            raise LookupsBusy(
                f"{exc.share} webhook_url host lookups of this owner are still running (slow DNS),"
                " the most one owner may hold; try again shortly",
                details={"limit": exc.share},
                retry_after=2,
            ) from None
        except ResolverBusy:
            raise LookupsBusy(
                "too many webhook_url host lookups are running; try again shortly", retry_after=2
            ) from None
        self._answers[(host, port)] = answer
        return answer


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


def submission_budget(settings: Settings, extensions: dict, owner: str | None = None) -> LookupBudget:
    """The budget of one API request's webhook_url hosts (WEBHOOK_RESOLVE_SECONDS, WEBHOOK_MAX_HOSTS),
    on the app's resolver (``extensions["webhook_resolver"]``, made on first use), its lookups
    counted in ``owner``'s share of that resolver's threads."""
    resolver = extensions.get("webhook_resolver")
    if resolver is None:
        with _RESOLVER_MADE:
            resolver = extensions.setdefault("webhook_resolver", BoundedResolver(threads=SUBMISSION_LOOKUP_THREADS))
    return LookupBudget(
        settings.webhook_resolve_seconds,
        max_hosts=settings.webhook_max_hosts,
        resolver=resolver,
        setting="WEBHOOK_RESOLVE_SECONDS",
        owner=owner,
    )


def resolve_webhook_url(
    url: object, *, allow_loopback: bool, resolve=None, budget: LookupBudget | None = None
) -> WebhookTarget:
    """Check ``url`` and resolve its host once; the target names the addresses to connect to.

    ``resolve`` is ``socket.getaddrinfo`` unless given (tests give a resolver that changes its
    answer); it runs on ``budget``'s resolver, within its deadline (DEFAULT_LOOKUP_SECONDS when
    no budget is given).

    Raises:
        ValidationFailed: not an http(s) URL, a port outside 1-65535, or the host points (or
            resolves) to an address that is not globally routable, or no such name exists, or
            a name past the budget's cap; ``LookupNotAnswered`` (``LookupTimedOut``: not
            within the budget) when the lookup failed in a way that may pass.
        LookupsBusy: every lookup thread is busy.
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
            budget = budget or LookupBudget(DEFAULT_LOOKUP_SECONDS)
            infos = budget.getaddrinfo(host, port, resolve)
            addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
        except OSError as exc:
            if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME:
                raise ValidationFailed(f"webhook_url host {parts.hostname!r} does not resolve: {exc}") from None
            raise LookupNotAnswered(
                f"webhook_url host {parts.hostname!r} could not be resolved now (a temporary failure): {exc}",
                details={"retryable": True},
            ) from None
        except (UnicodeError, ValueError) as exc:
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


def check_webhook_url(url: object, *, allow_loopback: bool, resolve=None, budget: LookupBudget | None = None) -> str:
    """Return ``url`` if a webhook may be sent there (see ``resolve_webhook_url``).

    Raises:
        ValidationFailed, LookupsBusy: as ``resolve_webhook_url``.
    """
    resolve_webhook_url(url, allow_loopback=allow_loopback, resolve=resolve, budget=budget)
    return url
