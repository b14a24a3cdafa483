"""Where the explorer may listen, and which Host headers it answers (DNS rebinding).

The API has no authentication, so ``mav serve`` listens on loopback unless told
otherwise (:func:`is_loopback`).  Loopback alone is not enough: a page on another
site can point its own name at 127.0.0.1 (DNS rebinding) and make the browser send
requests here, but those requests carry that site's name in the Host header.
:class:`HostCheck` answers 400 to every request whose Host is not this server as
the user reached it: ``127.0.0.1``, ``localhost`` or ``[::1]``, the hosts the app was
given (the bound host), or the address the connection arrived on (an IP address,
which a rebinding page cannot send), each with the port the server listens on.

A page of another site can still make the browser send a request here without reading the
answer (a form, a ``fetch`` in ``no-cors`` mode); :class:`OriginCheck` answers 403 to every
request that may change something (any method but GET, HEAD and OPTIONS) whose ``Origin`` is
not this server as addressed, or whose ``Sec-Fetch-Site`` says another site sent it.  Requests
without either header (curl, scripts, the tests) are answered as before.

This module imports neither torch nor the app, so the command line checks its
``--host`` before anything heavy loads.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Iterable

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_PORT = re.compile(r"[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for the rest, "" and 0.0.0.0."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """``"[::1]:8050"`` -> ``("::1", 8050)``, ``"localhost"`` -> ``("localhost", None)``; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port = value.split(":")
    elif ":" in value:  # an IPv6 address must be in brackets
        return None
    else:
        name, port = value, None
    if not name or (port is not None and not _PORT.fullmatch(port)):
        return None
    return name, None if port is None else int(port)


def _unmapped(address: str) -> str:
    """``"::ffff:192.168.1.5"`` (an IPv4 client on a dual-stack socket) -> ``"192.168.1.5"``; others unchanged."""
    try:
        mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    except ValueError:
        return address
    return str(mapped) if mapped is not None else address


class HostCheck:
    """ASGI middleware: 400 for a request whose Host header names another server than this one.

    ``hosts`` are names accepted besides 127.0.0.1, localhost and [::1] (``mav serve``
    passes its ``--host``).  The port must be the one the connection arrived on
    (80 or 443 when the header has none).  No CORS headers are ever added.
    """

    def __init__(self, app, hosts: Iterable[str] = ()):
        self.app = app
        self.names = frozenset(LOOPBACK_NAMES) | {h.strip().lower().strip("[]") for h in hosts if h.strip()}

    def allowed(self, scope) -> bool:
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"host"]
        if len(values) != 1:
            return False
        parsed = split_host_header(values[0].decode("latin-1"))
        if parsed is None:
            return False
        name, port = parsed
        server = scope.get("server")
        local, local_port = (str(server[0]).lower(), server[1]) if server else (None, None)
        if local_port is not None:
            default = 443 if scope.get("scheme") in ("https", "wss") else 80
            if (port if port is not None else default) != local_port:
                return False
        return name in self.names or (local is not None and name in (local, _unmapped(local)))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        server = scope.get("server")
        port = f":{server[1]}" if server and server[1] is not None else ""
        names = ", ".join(f"[{n}]{port}" if ":" in n else f"{n}{port}" for n in sorted(self.names))
        body = json.dumps({"detail": f"bad Host header: this server answers only requests addressed to {names}"
                                     " (a page of another site cannot use it)"}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _header(scope, name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    return values[0].decode("latin-1").strip() if len(values) == 1 else None if not values else ""


def _same_origin(origin: str, scope) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is this server as the request's Host header names it."""
    scheme, sep, rest = origin.partition("://")
    host = _header(scope, b"host")
    if not sep or not host or "/" in rest or scheme.lower() != scope.get("scheme", "http"):
        return False
    theirs, ours = split_host_header(rest), split_host_header(host)
    if theirs is None or ours is None:
        return False
    default = 443 if scheme.lower() == "https" else 80
    return (theirs[0], theirs[1] or default) == (ours[0], ours[1] or default)


class OriginCheck:
    """ASGI middleware: 403 for a state-changing request sent by a page of another site.

    A request whose method is not GET, HEAD or OPTIONS is refused when it carries an ``Origin``
    header that is not this server (scheme, host and port as the Host header names them;
    ``null`` included) or a ``Sec-Fetch-Site`` of ``cross-site`` or ``same-site``.
    """

    def __init__(self, app):
        self.app = app

    def refused(self, scope) -> str | None:
        if scope["type"] != "http" or scope.get("method", "GET").upper() in _SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is not None and not _same_origin(origin, scope):
            return f"requests from another site are refused (Origin {origin[:100]!r} is not this server)"
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        if site in ("cross-site", "same-site"):
            return f"requests from another site are refused (Sec-Fetch-Site: {site})"
        return None

    async def __call__(self, scope, receive, send):
        why = self.refused(scope)
        if why is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": why}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
