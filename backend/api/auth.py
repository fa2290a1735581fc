"""Who is calling: client API keys (Bearer), and the workers' internal token."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from dataclasses import dataclass

from flask import g, request

from backend.api.context import api_keys, settings
from backend.core.errors import Forbidden, Unauthorized

LOCAL_OWNER = "local"


@dataclass(frozen=True)
class Principal:
    owner: str
    is_admin: bool

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller may see; None for all (admins)."""
        return None if self.is_admin else self.owner


@functools.lru_cache(maxsize=1024)
def is_loopback_address(address: str | None) -> bool:
    """Whether ``address`` is a loopback IP address (127.0.0.0/8, ::1); False for names."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


#: Every loopback caller of an API without keys (immutable, so one serves every request).
_LOCAL_ADMIN = Principal(owner=LOCAL_OWNER, is_admin=True)


def authenticate_client() -> None:
    """``before_request`` of the client blueprints: sets ``g.principal`` or refuses."""
    keys = api_keys()
    if not keys:
        # No keys configured: the API is a local development tool and serves loopback only.
        if not is_loopback_address(request.remote_addr):
            raise Forbidden("no API_KEYS are configured, so this API only serves loopback clients")
        g.principal = _LOCAL_ADMIN
        return
    token = bearer_token()
    if token is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    for key, (owner, is_admin) in keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            g.principal = Principal(owner=owner, is_admin=is_admin)
            return
    raise Unauthorized("unknown API key")


def bearer_token() -> str | None:
    """The key of the request's ``Authorization: Bearer <key>`` header (stripped), or None
    when there is no such header or it names another scheme or no key."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def require_admin() -> None:
    authenticate_client()
    if not g.principal.is_admin:
        raise Forbidden("this endpoint needs an admin API key")


def require_internal_token() -> None:
    """``before_request`` of the internal blueprint: only workers with the shared token pass."""
    expected = settings().internal_service_token
    given = request.headers.get("X-Internal-Token", "")
    if not expected or not hmac.compare_digest(str(expected).encode(), given.encode()):
        raise Unauthorized("missing or wrong X-Internal-Token")
