"""Who may read the dashboard: the token off loopback, the login cookie, Supabase JWTs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid

import httpx
import jwt
import pytest

from tests.conftest import register
from tests.support.dashboard import running_dashboard
from tests.support.lines import Lines

TOKEN = "a-long-operator-token-" + uuid.uuid4().hex
SECRET = "jwt-secret-" + uuid.uuid4().hex


def user_jwt(user_id, *, secret: str = SECRET, role: str = "authenticated", expires_in: float = 300) -> str:
    claims = {"sub": str(user_id), "role": role, "aud": "authenticated", "exp": int(time.time() + expires_in)}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_without_a_token_every_route_is_refused_and_the_token_lets_in(db_url, conn):
    register(conn, "home", "pi")
    with running_dashboard(db_url, token=TOKEN) as base, httpx.Client(base_url=base, timeout=10) as client:
        for path in ("/api/fleet", "/api/tetrahedrons/home", "/api/health", "/badge/home.json",
                     "/api/events"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/badge/home.svg").status_code == 401
        assert client.get("/api/fleet", headers={"Authorization": "Bearer wrong-token-0123456789"}
                          ).status_code == 401
        assert client.get("/api/fleet", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        # a page redirects to the login form; static assets and the form are public
        page = client.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert client.get("/login").status_code == 200
        ok = client.get("/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert [t["name"] for t in ok.json()["tetrahedrons"]] == ["home"]


def test_the_login_form_sets_a_cookie_that_lets_in(db_url, conn):
    register(conn, "home", "pi")
    with running_dashboard(db_url, token=TOKEN) as base, httpx.Client(base_url=base, timeout=10) as client:
        refused = client.post("/login", data={"token": "not-the-token-at-all"})
        assert refused.status_code == 303 and refused.headers["location"] == "/login?error=1"
        assert "flowmesh_token" not in client.cookies
        accepted = client.post("/login", data={"token": TOKEN})
        assert accepted.status_code == 303 and accepted.headers["location"] == "/"
        cookie = accepted.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/api/fleet").status_code == 200  # the cookie, no header
        assert client.get("/").status_code == 200
        # a form posted by another site neither signs in nor out (login CSRF)
        foreign = {"Origin": "http://evil.example"}
        assert client.post("/logout", headers=foreign).status_code == 403
        assert client.get("/api/fleet").status_code == 200
        client.post("/logout")
        assert client.get("/api/fleet").status_code == 401
        assert client.post("/login", data={"token": TOKEN}, headers=foreign).status_code == 403
        assert client.get("/api/fleet").status_code == 401


def test_an_open_dashboard_answers_only_for_this_machine_and_hardens_every_response(db_url, conn):
    register(conn, "home", "pi")
    with running_dashboard(db_url) as base, httpx.Client(base_url=base, timeout=10) as client:
        for host in ("localhost", "127.0.0.1:1", "[::1]:8080"):
            assert client.get("/api/fleet", headers={"Host": host}).status_code == 200, host
        # DNS rebinding: a web page's own host name pointed at 127.0.0.1
        rebound = client.get("/api/fleet", headers={"Host": "evil.example:8080"})
        assert rebound.status_code == 421 and "not this machine" in rebound.json()["error"]
        for path in ("/", "/api/fleet", "/badge/home.svg"):
            headers = client.get(path).headers
            assert "script-src 'self'" in headers["content-security-policy"], path
            assert headers["x-content-type-options"] == "nosniff"


def test_a_users_jwt_sees_their_own_tetrahedron_and_an_outsiders_sees_nothing(db_url, conn):
    owner, outsider = uuid.uuid4(), uuid.uuid4()
    register(conn, "home", "pi", user_id=owner)
    register(conn, "shed", "cam")
    with running_dashboard(db_url, jwt_secret=SECRET) as base, \
            httpx.Client(base_url=base, timeout=10) as client:
        def get(path, token):
            return client.get(path, headers={"Authorization": f"Bearer {token}"})

        # the connecting role (a superuser here) sees both; the owner only theirs
        assert sorted(t["name"] for t in client.get("/api/fleet").json()["tetrahedrons"]) == ["home", "shed"]
        mine = get("/api/fleet", user_jwt(owner))
        assert mine.status_code == 200
        assert [t["name"] for t in mine.json()["tetrahedrons"]] == ["home"]
        assert get("/api/tetrahedrons/home", user_jwt(owner)).status_code == 200
        assert get("/api/tetrahedrons/shed", user_jwt(owner)).status_code == 404
        theirs = get("/api/fleet", user_jwt(outsider))
        assert theirs.status_code == 200 and theirs.json()["tetrahedrons"] == []
        assert get("/api/tetrahedrons/home", user_jwt(outsider)).status_code == 404
        assert get("/badge/home.json", user_jwt(outsider)).status_code == 404
        # the anon role may read none of it: refused by Postgres, said as such
        anon = get("/api/fleet", user_jwt(outsider, role="anon"))
        assert anon.status_code == 403 and anon.json()["sqlstate"] == "42501"
        # a JWT in the login cookie works the same (a browser's EventSource sends no header)
        assert client.post("/login", data={"token": user_jwt(outsider)}).status_code == 303
        assert client.get("/api/fleet").json()["tetrahedrons"] == []


@pytest.mark.parametrize("token, reason", [
    (user_jwt(uuid.uuid4(), secret="another-secret-entirely-" + "x" * 32), "not valid"),
    (user_jwt(uuid.uuid4(), expires_in=-60), "expired"),
    (user_jwt(uuid.uuid4(), role="postgres"), "role"),
    (jwt.encode({"sub": "x", "role": "authenticated"}, SECRET, algorithm="HS256"), "exp"),
])
def test_a_bad_jwt_is_refused_with_its_reason(db_url, token, reason):
    with running_dashboard(db_url, jwt_secret=SECRET) as base:
        response = httpx.get(f"{base}/api/fleet", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert token not in response.text


SERVING = re.compile(r"^dashboard: (http://\S+)$", re.MULTILINE)


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "flowmesh.cli", "dashboard", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_command_refuses_to_serve_other_machines_without_a_token_file(db_url, tmp_path):
    done = run_cli("--bind", "0.0.0.0", "--port", "0", "--database-url", db_url)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "--token-file" in done.stderr, done.stderr
    loose = tmp_path / "token"
    loose.write_text(TOKEN + "\n")
    loose.chmod(0o644)
    done = run_cli("--bind", "0.0.0.0", "--port", "0", "--database-url", db_url, "--token-file", str(loose))
    assert done.returncode == 1
    assert "mode 0644" in done.stderr and TOKEN not in done.stderr, done.stderr


def test_the_command_says_when_its_port_is_taken(db_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("--port", str(port), "--database-url", db_url)
    assert done.returncode == 1
    assert done.stderr == f"flowmesh: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_the_command_serves_with_a_token_file_and_stops_on_sigterm(db_url, conn, tmp_path):
    register(conn, "home", "pi")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "flowmesh.cli", "dashboard", "--bind", "0.0.0.0",
                             "--port", "0", "--database-url", db_url],
                            env={**os.environ, "FLOWMESH_DASHBOARD_TOKEN_FILE": str(token_file)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        first = out.wait_for(lambda line: True, 20)  # the URL comes first
        match = SERVING.match(first)
        assert match, first
        port = match.group(1).rsplit(":", 1)[1].strip("/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"{base}/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.1)
        assert response.status_code == 200
        assert httpx.get(f"{base}/api/fleet", timeout=5).status_code == 401
        with httpx.stream("GET", f"{base}/api/events", headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=10) as stream:
            assert stream.status_code == 200
            proc.terminate()  # with a stream open: it must still stop at once
            assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    logs = out.close() + err.close()
    assert TOKEN not in logs
    assert "Traceback" not in logs, logs
