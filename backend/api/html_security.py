"""Security headers on every answer: what a browser may run, frame and leak from our pages.

The admin pages (``/dashboard``, ``/rq``) show what tenants control: task arguments, results,
error messages. They insert it as text, never as HTML; the Content-Security-Policy is the
second wall, should some page ever slip: only scripts and styles served from this origin run
(no inline script, no ``eval``, no inline event handlers such as ``onerror=``), nothing is
embedded as a plugin, no ``<base>`` can redirect relative URLs, and no other site may frame
the pages (clickjacking).

The headers go on every response, not only on HTML: an error page or a JSON body that a
browser is tricked into rendering gets the same policy, and ``nosniff`` stops it from guessing
that JSON is HTML or script.
"""

from __future__ import annotations

from flask import Flask

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # Bootstrap's stylesheet draws its select arrows and checkboxes as data: SVGs.
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Older browsers ignore frame-ancestors; this says the same to them.
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send "Origin: null" on the pages' own same-origin
    # POSTs, which the cross-site guard (backend.api.browser_guard) must then refuse.
    # same-origin keeps Origin/Referer for our own requests and sends nothing to other sites.
    "Referrer-Policy": "same-origin",
}


#: As a WSGI header list takes them; and their names as ``str.lower`` gives them.
_HEADER_ITEMS = tuple(HEADERS.items())
_NAMES = frozenset(name.lower() for name in HEADERS)


def init_app(app: Flask) -> None:
    # Added where the answer starts (WSGI's start_response), not in an after_request hook: every
    # answer of the app passes there, errors included, and a poll pays a few list operations
    # instead of a hook and four Headers.add calls (57 Python calls of 488 per GET /jobs/<id>,
    # issue 17, T3).
    app.wsgi_app = SecurityHeaders(app.wsgi_app)


class SecurityHeaders:
    """WSGI middleware: adds each of ``HEADERS`` that the answer does not set itself (a view that
    needs a stricter or looser value for itself can set it)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            for name, _value in headers:
                if name.lower() in _NAMES:
                    headers = add_security_headers(headers)
                    break
            else:
                headers = [*headers, *_HEADER_ITEMS]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_headers)


def add_security_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with each of ``HEADERS`` that they do not hold already."""
    present = {name.lower() for name, _ in headers}
    return [*headers, *((name, value) for name, value in _HEADER_ITEMS if name.lower() not in present)]
