"""Status badges, as healthchecks.io serves them: ``/badge/<tetrahedron>.svg`` and
``/badge/<tetrahedron>.json`` (shields.io's endpoint schema).

The message is ``mesh_summary.status`` (up, late or down: the badge rule is
SQL's); this module only draws it. Badges follow the API's access rule.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import psycopg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flowmesh.errors import FlowMeshError

from .access import Unauthorized
from .api import identify, unauthorized
from .responses import JSON, error, failure

#: Colours of shields.io's palette, per status; grey for anything else.
COLOURS = {"up": "#4c1", "late": "#fe7d37", "down": "#e05d44"}
#: The same, by shields.io's names (the JSON endpoint's ``color``).
COLOUR_NAMES = {"up": "brightgreen", "late": "orange", "down": "red"}
GREY = "#9f9f9f"
NO_CACHE = {"Cache-Control": "no-cache"}


def text_width(text: str) -> int:
    """Approximate pixel width of ``text`` in 11 px Verdana (shields.io's font):
    narrow letters 4 px, wide ones 10, the rest 7."""
    narrow, wide = set("fijlrt.,:;!|'() "), set("mwMW@%")
    return sum(4 if c in narrow else 10 if c in wide else 7 for c in text)


def svg(label: str, message: str, colour: str) -> str:
    """A flat badge: ``label`` on grey, ``message`` on ``colour``."""
    left, right = text_width(label) + 10, text_width(message) + 10
    width = left + right
    label_x, message_x = left / 2, left + right / 2
    # quotes too: the label (a name from the URL) also goes into an attribute
    label, message = (escape(s, {'"': "&quot;", "'": "&apos;"}) for s in (label, message))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{label}: {message}"><title>{label}: {message}</title>'
        f'<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        f'<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        f'font-size="11">'
        f'<text x="{label_x}" y="15" fill="#010101" fill-opacity=".3">{label}</text>'
        f'<text x="{label_x}" y="14">{label}</text>'
        f'<text x="{message_x}" y="15" fill="#010101" fill-opacity=".3">{message}</text>'
        f'<text x="{message_x}" y="14">{message}</text></g></svg>'
    )


def endpoint_json(label: str, status: str) -> dict:
    """shields.io's endpoint schema (https://shields.io/badges/endpoint-badge)."""
    return {"schemaVersion": 1, "label": label, "message": status,
            "color": COLOUR_NAMES.get(status, "lightgrey")}


async def _status(request: Request, name: str) -> tuple[int, str | None, Response | None]:
    """(HTTP status, the badge status, or the error response to send instead)."""
    try:
        identity = identify(request)
    except Unauthorized as exc:
        return 401, None, unauthorized(str(exc))
    try:
        async with request.app.state.dashboard.reader.session(identity) as session:
            row = await session.row("badge", {"name": name})
    except (psycopg.Error, FlowMeshError, OSError, TimeoutError) as exc:
        response = failure(exc, request.app.state.dashboard.live.error)
        return response.status_code, None, response
    if row is None:
        return 404, None, error(404, f"no tetrahedron named {name!r}")
    return 200, row["status"], None


async def badge_svg(request: Request) -> Response:
    name = request.path_params["name"]
    code, status, _ = await _status(request, name)
    message = status if status is not None else {404: "not found", 401: "unauthorized"}.get(code, "unknown")
    return Response(svg(name, message, COLOURS.get(status, GREY)), code, NO_CACHE,
                    media_type="image/svg+xml")


async def badge_json(request: Request) -> Response:
    name = request.path_params["name"]
    code, status, problem = await _status(request, name)
    if problem is not None:
        return problem
    return JSON(endpoint_json(name, status), code)


routes = [
    Route("/badge/{name:path}.svg", badge_svg),  # a name may hold a '/' (see api.routes)
    Route("/badge/{name:path}.json", badge_json),
]
