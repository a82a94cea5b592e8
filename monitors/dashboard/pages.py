"""The pages: static HTML whose script reads ``location.pathname`` and fetches the
JSON API, and the login form that sets the token cookie.

When a credential is required (off loopback), a page requested without one
redirects to /login; the static assets (no data in them) are served to anyone.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .access import COOKIE, Unauthorized
from .api import identify
from .responses import error

STATIC = Path(__file__).with_name("static")
#: Largest login form read, in bytes (a JWT is well under this).
LOGIN_FORM_MAX = 16384


def _page(filename: str):
    async def page(request: Request) -> Response:
        try:
            identify(request)
        except Unauthorized:
            return RedirectResponse("/login", 303)
        return FileResponse(STATIC / filename, headers={"Cache-Control": "no-cache"})

    return page


async def login_page(request: Request) -> Response:
    return FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-cache"})


async def login(request: Request) -> Response:
    """POST /login, form field ``token`` (the token, or a JWT): set the cookie, go to /.
    A wrong token goes back to /login?error=1."""
    if _cross_site(request):
        return error(403, "a sign-in posted from another site is refused")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_FORM_MAX:
            return error(413, "the login form is too large")
    token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    access = request.app.state.dashboard.access
    try:
        access.check(token)
    except Unauthorized:
        return RedirectResponse("/login?error=1", 303)
    response = RedirectResponse("/", 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


def _cross_site(request: Request) -> bool:
    """A form posted from another origin (login CSRF): browsers send Origin with every POST."""
    origin = request.headers.get("origin")
    return origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}"


async def logout(request: Request) -> Response:
    if _cross_site(request):
        return error(403, "a sign-out posted from another site is refused")
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


routes = [
    Route("/", _page("overview.html")),
    # names may hold a '/': matched as paths, the node's page first (see api.routes)
    Route("/t/{name:path}/n/{node:path}", _page("node.html")),
    Route("/t/{name:path}", _page("tetrahedron.html")),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
]
