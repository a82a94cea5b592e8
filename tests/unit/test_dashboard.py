"""The dashboard's pure parts: access rules, badges, the live queue bound. No I/O."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET

import jwt
import pytest
from psycopg_pool import PoolTimeout

from monitors.dashboard import access, badges, live
from monitors.dashboard.access import OPERATOR, Access, AccessError, Identity, Unauthorized
from monitors.dashboard.responses import failure

TOKEN = "operator-token-0123456789abcdef"
SECRET = "s" * 40


@pytest.mark.parametrize("bind, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.org", False),
])
def test_only_loopback_binds_go_without_a_token(bind, loopback):
    assert access.is_loopback(bind) is loopback


def test_off_loopback_a_private_token_file_is_required(tmp_path):
    with pytest.raises(AccessError, match="--token-file"):
        Access.for_bind("0.0.0.0", None, None)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o640)
    with pytest.raises(AccessError, match="mode 0640") as refused:
        Access.for_bind("0.0.0.0", token_file, None)
    assert TOKEN not in str(refused.value)
    token_file.chmod(0o600)
    assert Access.for_bind("0.0.0.0", token_file, None).token == TOKEN
    token_file.write_text("short\n")
    with pytest.raises(AccessError, match="at least 16"):
        Access.for_bind("0.0.0.0", token_file, None)
    secret_file = tmp_path / "secret"
    secret_file.write_text("too-short-a-secret")
    secret_file.chmod(0o600)
    with pytest.raises(AccessError, match="at least 32"):
        Access.for_bind("127.0.0.1", None, secret_file)
    assert Access.for_bind("127.0.0.1", None, None) == Access()


def test_a_request_is_identified_by_bearer_or_cookie_and_a_wrong_credential_is_never_ignored():
    open_access, closed = Access(), Access(token=TOKEN)
    assert open_access.identify(None, None) is OPERATOR
    assert closed.identify(f"Bearer {TOKEN}", None) is OPERATOR
    assert closed.identify(None, TOKEN) is OPERATOR
    for header, cookie in ((None, None), ("Bearer nope", None), (None, "nope"), (f"Basic {TOKEN}", None),
                           ("Bearer", None)):
        with pytest.raises(Unauthorized):
            closed.identify(header, cookie)
    with pytest.raises(Unauthorized):  # on loopback too: a wrong credential is refused
        open_access.identify("Bearer nope", None)


def test_a_jwt_becomes_the_claims_role_and_claims():
    with_jwt = Access(jwt_secret=SECRET)
    claims = {"sub": "a-user", "role": "authenticated", "aud": "authenticated", "exp": int(time.time()) + 60}
    identity = with_jwt.identify(f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}", None)
    assert identity.role == "authenticated" and json.loads(identity.claims) == claims
    assert identity.key != OPERATOR.key
    expired = jwt.encode({**claims, "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="expired"):
        with_jwt.check(expired)
    with pytest.raises(Unauthorized, match="role"):
        with_jwt.check(jwt.encode({**claims, "role": "postgres"}, SECRET, algorithm="HS256"))
    with pytest.raises(Unauthorized, match="not valid"):
        with_jwt.check(jwt.encode(claims, "t" * 40, algorithm="HS256"))
    with pytest.raises(Unauthorized, match="not valid"):  # no algorithm but HS256
        with_jwt.check(jwt.encode(claims, None, algorithm="none"))


def test_a_badge_is_well_formed_svg_with_its_words_escaped():
    text = badges.svg("<home & co>", "late", badges.COLOURS["late"])
    root = ET.fromstring(text)
    assert root.tag.endswith("svg") and int(root.get("width")) > 0
    assert "<home & co>: late" in root.find("{http://www.w3.org/2000/svg}title").text
    # a name that closes the attribute it is put in adds no attribute: the SVG root keeps its own
    hostile = 'x" onload="alert(1)" y="'
    root = ET.fromstring(badges.svg(hostile, "late", badges.COLOURS["late"]))
    assert root.get("onload") is None and root.get("aria-label") == f"{hostile}: late"
    assert badges.text_width("mmmm") > badges.text_width("iiii")
    assert badges.endpoint_json("home", "down") == {"schemaVersion": 1, "label": "home", "message": "down",
                                                    "color": "red"}


async def test_a_slow_client_drops_events_instead_of_growing():
    subscriber = live.Subscriber(Identity())
    for n in range(live.QUEUE_SIZE + 50):
        subscriber.offer(("change", ("heartbeat", [str(n)])))
    assert subscriber.queue.qsize() == live.QUEUE_SIZE
    assert subscriber.overflowed and subscriber.dropped == 50
    subscriber.close()  # room is made for the end of the stream
    assert subscriber.queue.qsize() == 1
    assert await asyncio.wait_for(subscriber.queue.get(), 1) is live._CLOSE


def test_an_event_is_one_sse_record():
    assert live.sse("change", {"kind": "heartbeat", "tetrahedrons": None}) == \
        'event: change\ndata: {"kind":"heartbeat","tetrahedrons":null}\n\n'


def test_the_cli_loads_the_web_stack_only_when_the_dashboard_runs():
    from tests.unit.test_imports import loaded

    web = ("starlette", "uvicorn", "jwt", "monitors.dashboard.app")
    assert loaded("import flowmesh.cli", web) == []
    assert loaded("import flowmesh_edge.cli, flowmesh_edge.agent", web + ("monitors.dashboard",)) == []


def test_the_dashboards_pool_opens_connections_with_the_shared_options():
    from flowmesh import database, settings

    pool = database.async_pool("postgresql://me@127.0.0.1:1/db?keepalives_idle=30",
                               application_name="flowmesh-dashboard")
    options = pool.kwargs
    assert options["application_name"] == "flowmesh-dashboard"
    assert options["prepare_threshold"] is None and options["autocommit"] is True
    assert "keepalives_idle" not in options  # the URL's own setting wins
    assert options["keepalives_count"] == settings.KEEPALIVES_COUNT
    assert pool.min_size == 0 and pool.max_size == 4 and pool.timeout == settings.CONNECT_TIMEOUT_S


def test_a_pool_timeout_is_busy_while_the_database_is_there_and_unreachable_when_it_is_not():
    busy = failure(PoolTimeout("couldn't get a connection after 5.00 sec"))
    assert busy.status_code == 503 and json.loads(busy.body)["error"].startswith("dashboard busy: ")
    away = failure(PoolTimeout("couldn't get a connection after 5.00 sec"), "connection refused")
    assert away.status_code == 503
    assert json.loads(away.body)["error"] == "database unreachable: connection refused"


def test_only_the_triggers_notifications_reach_clients_and_the_rest_are_counted():
    hub = live.Live("postgresql:///nowhere", reader=None)
    client = hub.subscribe(OPERATOR)
    tid = "6f1c0000-0000-4000-8000-000000000001"
    for payload in ("not json", '{"kind": "heartbeat"}', '{"kind": "reload", "tetrahedrons": null}',
                    '{"kind": "status", "tetrahedrons": ["x"]}', '{"kind": "status", "tetrahedrons": [1]}'):
        hub._dispatch(payload)
    assert client.queue.empty()
    assert hub.dropped == {"malformed": 2, "unknown kind": 1, "bad ids": 2}
    hub._dispatch(f'{{"kind": "status", "tetrahedrons": ["{tid.upper()}"]}}')
    assert client.queue.get_nowait() == ("change", ("status", [tid]))


def test_a_jwt_user_learns_the_database_is_away_but_not_the_servers_names():
    state = {"reachable": False, "error": "database unreachable: connection to db.internal:5432 refused"}
    user = Identity(role="authenticated", claims="{}")
    assert live._shown_to(user, state) == {"reachable": False, "error": "database unreachable"}
    assert live._shown_to(OPERATOR, state) == state
