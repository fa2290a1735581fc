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

from flask import Flask, Response

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


def init_app(app: Flask) -> None:
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    # Only where missing: a view that needs a stricter or looser value for itself can set it. One
    # pass over the headers (Headers.setdefault scans them once per name: ~3x the cost per request).
    present = {name.lower() for name, _ in response.headers}
    for name, value in HEADERS.items():
        if name.lower() not in present:
            response.headers.add(name, value)
    return response
