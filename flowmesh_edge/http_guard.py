"""What every FlowMesh web listener (the agent's endpoints, the dashboard) puts
in front of its routes: security headers on every response, and a Host check
for a listener that answers without credentials.

A listener with no credentials is allowed on loopback only; that alone does not
stop a web page the operator visits from reading it through DNS rebinding (its
own host name re-pointed at 127.0.0.1). Refusing any Host that is not a
loopback address or ``localhost`` does.

Imported only by a process that serves HTTP (it loads Starlette).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .mesh.address import is_loopback

#: The pages' policy: scripts, styles and requests from this origin only; no
#: inline script (an injected attribute never runs), no framing.
PAGES_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'self'")


def host_name(host_header: str) -> str:
    """The host of a Host header, without its port: ``[::1]:8080`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """ASGI middleware: ``policy`` as Content-Security-Policy and the usual
    hardening headers on every response; with ``loopback_only``, a request whose
    Host is not this machine is answered 421 and goes no further."""

    def __init__(self, app: ASGIApp, *, policy: str = PAGES_POLICY, loopback_only: bool = False) -> None:
        self.app = app
        self.loopback_only = loopback_only
        # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with
        # the sign-in form, which the login's cross-site check would refuse
        self.headers = [("content-security-policy", policy), ("x-content-type-options", "nosniff"),
                        ("referrer-policy", "same-origin"), ("x-frame-options", "DENY")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        if self.loopback_only:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_name(host)):
                response = JSONResponse(
                    {"error": f"host {host_name(host)[:64]!r} is not this machine: without credentials "
                              "this listener answers requests for localhost or a loopback address only"},
                    421)
                await response(scope, receive, send_hardened)
                return
        await self.app(scope, receive, send_hardened)
