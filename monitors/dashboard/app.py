"""The dashboard's ASGI application: pages, JSON API, live events, badges.

    app = create_app(url, token=None, jwt_secret=None)

The pool and the LISTEN connection open with the application (its lifespan)
and never need the database to be up: while it is away the API answers 503
and the stream says so, and both recover by themselves.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware

from flowmesh_edge.http_guard import PAGES_POLICY, Guard

from . import api, badges, live, pages
from .access import Access
from .reader import Reader


@dataclass
class Dashboard:
    """What the handlers share, at ``request.app.state.dashboard``."""

    access: Access
    reader: Reader
    live: live.Live


def create_app(database_url: str, *, token: str | None = None, jwt_secret: str | None = None,
               pool_size: int = 4, pool_timeout_s: float = 5.0, keepalive_s: float = live.KEEPALIVE_S,
               refresh_s: float = live.REFRESH_S, ping_s: float = live.PING_S) -> Starlette:
    """The dashboard for the database at ``database_url``.

    ``token``: the operator token every request must carry (None: no
    credential needed; off loopback the command requires one). ``jwt_secret``:
    also accept Supabase JWTs signed with it. ``pool_timeout_s``: how long a
    request waits for a database connection before answering 503.
    """
    reader = Reader(database_url, max_size=pool_size, timeout_s=pool_timeout_s)
    dashboard = Dashboard(
        access=Access(token=token, jwt_secret=jwt_secret),
        reader=reader,
        live=live.Live(database_url, reader, keepalive_s=keepalive_s, refresh_s=refresh_s, ping_s=ping_s),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await reader.open()
        await dashboard.live.start()
        try:
            yield
        finally:
            await dashboard.live.stop()
            await reader.close()

    # without a token the dashboard is on loopback: a request for another host name
    # is a web page's DNS rebinding, refused before any route
    guard = Middleware(Guard, policy=PAGES_POLICY, loopback_only=token is None)
    app = Starlette(routes=[*api.routes, *live.routes, *badges.routes, *pages.routes], lifespan=lifespan,
                    middleware=[guard])
    app.state.dashboard = dashboard
    return app
