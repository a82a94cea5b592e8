"""Saved meshes: the file (round trip, mode, atomicity, refusal of what it cannot
read), the store's rules (endpoint order and bound, forget, merging savers), and
``flowmesh-edge meshes`` (list, --json, forget), which never prints a secret."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from click.testing import CliRunner

from flowmesh_edge import meshes as store_module
from flowmesh_edge.cli import main
from flowmesh_edge.mesh.security import mesh_id_of
from flowmesh_edge.meshes import (
    MAX_ENDPOINTS,
    KnownEndpoint,
    MeshesFileError,
    MeshNotFound,
    SavedMesh,
    SavedMeshes,
)

KEY = "correct horse battery staple"
OTHER_KEY = "another mesh key, long enough"
#: a key whose mesh id starts like KEY's (16cf...), for ambiguous prefixes
NEIGHBOUR_KEY = "ambiguous mesh key 233"
TOKEN = "relay-token-s3cr3t"
URL_SECRET = "url-password-s3cr3t"
RELAY_URL = f"wss://dev:{URL_SECRET}@relay.example:8765/mesh?token={URL_SECRET}"
T0 = 1_790_000_000.25  # exactly representable through ISO 8601 and back


@pytest.fixture
def path(tmp_path):
    return tmp_path / "data" / "meshes.json"


def _populated(path) -> SavedMeshes:
    store = SavedMeshes.load(path)
    mesh = store.add_or_update(KEY, "home", founder="pi-kitchen", relay_url=RELAY_URL,
                               relay_token=TOKEN, at=T0)
    store.record_endpoint(mesh.mesh_id, "pi-hall", "udp:192.0.2.7:7946", 3.5, T0 + 10)
    store.record_endpoint(mesh.mesh_id, "pi-hall", "relay:pi-hall@relay.example:8765", None, T0 + 11)
    store.record_connected(mesh.mesh_id, "relay", T0 + 12)
    store.add_or_update(OTHER_KEY, "office", auto_reconnect=False, at=T0 + 20)
    store.save()
    return store


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the file ------------------------------------------------------------------


def test_a_missing_file_is_no_mesh_and_saving_creates_it_0600(path):
    store = SavedMeshes.load(path)
    assert len(store) == 0 and not path.exists()
    old_umask = os.umask(0)  # the file's mode must not depend on the umask
    try:
        _populated(path)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["meshes.json", "meshes.json.lock"]


def test_round_trip(path):
    saved = _populated(path)
    loaded = SavedMeshes.load(path)
    assert list(loaded) == list(saved)
    home = loaded.get(mesh_id_of(KEY))
    assert (home.name, home.founder, home.relay_url, home.relay_token, home.mesh_key) == \
        ("home", "pi-kitchen", RELAY_URL, TOKEN, KEY)
    assert (home.joined_at, home.last_connected, home.connected_via) == (T0, T0 + 12, "relay")
    assert home.endpoints == [
        KnownEndpoint("pi-hall", "udp:192.0.2.7:7946", last_seen=T0 + 10, rtt_ms=3.5, last_success=T0 + 10),
        KnownEndpoint("pi-hall", "relay:pi-hall@relay.example:8765", last_seen=T0 + 11),
    ]
    document = json.loads(path.read_text())
    assert document["version"] == store_module.SCHEMA_VERSION
    assert document["meshes"][0]["joined_at"] == "2026-09-21T14:13:20.250000+00:00"
    assert loaded.get(mesh_id_of(OTHER_KEY)).auto_reconnect is False


def test_repr_shows_no_secret(path):
    text = repr(list(_populated(path)))
    for secret in (KEY, TOKEN, URL_SECRET):
        assert secret not in text


def test_a_loose_mode_is_reported_once_and_fixed_on_save(path):
    _populated(path)
    path.chmod(0o644)
    reports: list[str] = []
    store = SavedMeshes.load(path, report=reports.append)
    assert len(reports) == 1 and "\n" not in reports[0]
    assert str(path) in reports[0] and "0644" in reports[0]
    assert store.warnings == reports
    assert _mode(path) == 0o644  # loading changes nothing
    store.save()
    assert _mode(path) == 0o600
    reports.clear()
    SavedMeshes.load(path, report=reports.append)
    assert reports == []


def test_save_replaces_the_file_whole_or_not_at_all(path, monkeypatch):
    _populated(path)
    before = path.read_bytes()
    inode = os.stat(path).st_ino
    store = SavedMeshes.load(path)
    store.add_or_update("a third mesh key of 16+ bytes", "lab")

    def power_cut(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module.os, "fsync", power_cut)
    with pytest.raises(MeshesFileError, match="cannot write it: input/output error"):
        store.save()
    monkeypatch.undo()
    assert path.read_bytes() == before and os.stat(path).st_ino == inode
    assert sorted(p.name for p in path.parent.iterdir()) == ["meshes.json", "meshes.json.lock"]
    store.save()  # the changes are still in memory: a later save writes them
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one
    assert len(SavedMeshes.load(path)) == 3


BROKEN = {
    "garbage": (b"\x00\x01 not json at all", "not valid JSON (Expecting value at line 1 column 1)"),
    "binary": (b"\xff\xfe\x00", "not UTF-8 text (byte 0)"),
    "empty": (b"", "not valid JSON"),
    "truncated": (b'{"version": 1, "meshes": [', "not valid JSON"),
    "not an object": (b"[]", "expected a JSON object, found a list"),
    "unknown version": (b'{"version": 3, "meshes": []}', "unknown version 3"),
    "no version": (b'{"meshes": []}', "unknown version None"),
    "boolean version": (b'{"version": true, "meshes": []}', "unknown version True"),
    "meshes not a list": (b'{"version": 1, "meshes": {}}', "meshes: expected a list, found an object"),
    "unknown field": (b'{"version": 1, "meshes": [], "extra": 1}', "unknown field 'extra'"),
}


def _mesh_json(**changes) -> bytes:
    mesh = {"id": mesh_id_of(KEY), "name": "home", "key": KEY, "joined_at": "2026-11-22T08:00:00+00:00",
            "endpoints": []}
    mesh.update(changes)
    return json.dumps({"version": 1, "meshes": [mesh]}).encode()


WRONG_TYPES = {
    "name a number": (_mesh_json(name=3), "meshes[0].name: expected a non-empty string, found 3"),
    "id of another key": (_mesh_json(id="0000000000000000"), "meshes[0].id: 0000000000000000 is not"),
    "naive time": (_mesh_json(joined_at="2026-11-22T08:00:00"), "meshes[0].joined_at: expected an ISO"),
    "auto_reconnect a string": (_mesh_json(auto_reconnect="yes"), "meshes[0].auto_reconnect"),
    "rtt a string": (_mesh_json(endpoints=[{"node": "n", "address": "udp:h:1", "rtt_ms": "3"}]),
                     "meshes[0].endpoints[0].rtt_ms"),
    "rtt not finite": (b'{"version": 1, "meshes": [{"id": "%s", "name": "h", "key": "%s", '
                       b'"joined_at": "2026-11-22T08:00:00+00:00", '
                       b'"endpoints": [{"node": "n", "address": "udp:h:1", "rtt_ms": NaN}]}]}'
                       % (mesh_id_of(KEY).encode(), KEY.encode()), "meshes[0].endpoints[0].rtt_ms"),
    "bad address": (_mesh_json(endpoints=[{"node": "n", "address": "nowhere"}]),
                    "meshes[0].endpoints[0].address"),
    "key a number": (_mesh_json(key=12345678901234567890), "meshes[0].key: expected a non-empty string"),
}


def _mesh_json_v2(**changes) -> bytes:
    mesh = {"id": mesh_id_of(KEY), "name": "home", "keys": [KEY], "joined_at": "2026-11-22T08:00:00+00:00",
            "endpoints": []}
    mesh.update(changes)
    return json.dumps({"version": 2, "meshes": [mesh]}).encode()


WRONG_TYPES.update({
    "v2 keys missing": (_mesh_json_v2(keys=None), "meshes[0].keys: expected a list of keys"),
    "v2 keys empty": (_mesh_json_v2(keys=[]), "meshes[0].keys: expected a list of keys"),
    "v2 short secondary": (_mesh_json_v2(keys=[KEY, "short"]),
                           "meshes[0].keys: key 2: a key must be at least"),
    "v2 key twice": (_mesh_json_v2(keys=[KEY, KEY]), "meshes[0].keys: a key appears twice"),
    "v2 too many keys": (_mesh_json_v2(keys=[f"{KEY}{i}" for i in range(5)]), "holds at most 4 keys"),
    "v2 encrypt a string": (_mesh_json_v2(encrypt="yes"), "meshes[0].encrypt: expected true or false"),
    "v2 negative keyring version": (_mesh_json_v2(keyring_version=-1), "meshes[0].keyring_version"),
    "v2 id not hex": (_mesh_json_v2(id="not an id at all"), "meshes[0].id: expected 16 hex digits"),
    "v2 single key field": (_mesh_json_v2(key=KEY), "meshes[0]: unknown field 'key'"),
})


@pytest.mark.parametrize("content, problem", [*BROKEN.values(), *WRONG_TYPES.values()],
                         ids=[*BROKEN, *WRONG_TYPES])
def test_an_unreadable_file_is_reported_in_one_line_and_left_untouched(path, content, problem):
    path.parent.mkdir()
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(MeshesFileError) as caught:
        SavedMeshes.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert KEY not in message
    # an agent may go on without its saved meshes, but never overwrites them
    store = SavedMeshes.load(path, lenient=True)
    assert len(store) == 0 and store.error is not None
    store.add_or_update(OTHER_KEY, "office")
    with pytest.raises(MeshesFileError, match="not saved"):
        store.save()
    assert path.read_bytes() == content


def test_a_file_turned_corrupt_after_loading_is_not_overwritten(path):
    store = _populated(path)
    path.write_bytes(b"{ garbage")
    store.add_or_update(OTHER_KEY, "office renamed")
    with pytest.raises(MeshesFileError, match="not valid JSON"):
        store.save()
    assert path.read_bytes() == b"{ garbage"


def test_permission_denied_is_reported_and_untouched(path):
    _populated(path)
    before = path.read_bytes()
    if os.geteuid() != 0:
        path.chmod(0)
        with pytest.raises(MeshesFileError, match="cannot read it: permission denied"):
            SavedMeshes.load(path)
        path.chmod(0o600)
        assert path.read_bytes() == before
        return
    # root reads everything: load as nobody in a child process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                SavedMeshes.load(path)
            except MeshesFileError as exc:
                os.write(write_end, str(exc).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child loaded a file it may not read"
    assert message == f"{path}: cannot read it: permission denied"
    assert path.read_bytes() == before


# -- the store -----------------------------------------------------------------


def test_a_store_built_from_meshes_saves_them(path):
    store = SavedMeshes(path, [SavedMesh(mesh_key=KEY, name="home", joined_at=T0)])
    store.save()
    assert [m.name for m in SavedMeshes.load(path)] == ["home"]


def test_joining_again_keeps_what_is_known(path):
    store = _populated(path)
    mesh = store.add_or_update(KEY, "home renamed", at=T0 + 999)
    assert (mesh.name, mesh.joined_at, mesh.relay_token, len(mesh.endpoints)) == \
        ("home renamed", T0, TOKEN, 2)
    with pytest.raises(ValueError, match="16 bytes"):
        store.add_or_update("short")


def test_reconnection_takes_auto_reconnect_meshes_with_endpoints_by_last_success(path):
    store = SavedMeshes.load(path)
    mesh_id = store.add_or_update(KEY, "home", at=T0).mesh_id
    store.add_or_update(OTHER_KEY, "office", auto_reconnect=False, at=T0)
    store.record_endpoint(mesh_id, "a", "udp:192.0.2.1:1", 9.0, T0 + 1)     # answered first
    store.record_endpoint(mesh_id, "b", "udp:192.0.2.2:1", None, T0 + 50)   # heard of, never answered
    store.record_endpoint(mesh_id, "c", "ws:192.0.2.3:80", 40.0, T0 + 30)   # answered last
    store.record_endpoint(mesh_id, "a", "udp:192.0.2.1:1", None, T0 + 60)   # seen again, no answer
    (rejoin,) = store.auto_reconnect()
    assert rejoin.mesh_id == mesh_id
    assert [e.node_id for e in rejoin.endpoints] == ["c", "a", "b"]
    a = next(e for e in rejoin.endpoints if e.node_id == "a")
    assert (a.last_seen, a.last_success, a.rtt_ms) == (T0 + 60, T0 + 1, 9.0)
    assert [e.node_id for e in store.get(mesh_id).endpoints] == ["a", "b", "c"]  # a copy was sorted
    store.set_auto_reconnect(mesh_id, False)
    assert store.auto_reconnect() == []


def test_endpoints_are_bounded_least_recently_seen_first(path):
    store = SavedMeshes.load(path)
    mesh_id = store.add_or_update(KEY, "home").mesh_id
    for i in range(MAX_ENDPOINTS + 5):
        store.record_endpoint(mesh_id, f"n{i}", f"udp:192.0.2.1:{1000 + i}", None, T0 + i)
    store.record_endpoint(mesh_id, "n0", "udp:192.0.2.1:1000", 1.0, T0 + 500)  # back, and it answered
    kept = {e.node_id for e in store.get(mesh_id).endpoints}
    assert len(kept) == MAX_ENDPOINTS
    assert kept == {"n0"} | {f"n{i}" for i in range(6, MAX_ENDPOINTS + 5)}


def test_forget(path):
    store = _populated(path)
    forgotten = store.forget(mesh_id_of(KEY))
    assert forgotten.name == "home"
    store.save()
    assert [m.name for m in SavedMeshes.load(path)] == ["office"]
    assert KEY not in path.read_text()
    with pytest.raises(MeshNotFound):
        store.forget(mesh_id_of(KEY))


def test_a_mesh_forgotten_by_another_saver_stays_forgotten(path):
    _populated(path)
    agent = SavedMeshes.load(path)
    cli = SavedMeshes.load(path)
    cli.forget(mesh_id_of(KEY))
    cli.save()
    # the agent, still in the mesh, records what it sees and saves
    agent.record_endpoint(mesh_id_of(KEY), "pi-hall", "udp:192.0.2.7:7946", 2.0, T0 + 100)
    agent.add_or_update("a mesh joined meanwhile, 16+", "lab")
    assert agent.save() == {mesh_id_of(KEY)}
    assert sorted(m.name for m in SavedMeshes.load(path)) == ["lab", "office"]
    assert mesh_id_of(KEY) not in agent
    # and a mesh another saver added is kept by the next save here
    cli.record_connected(mesh_id_of(OTHER_KEY), "udp", T0 + 200)
    assert cli.save() == set()
    assert sorted(m.name for m in SavedMeshes.load(path)) == ["lab", "office"]
    assert SavedMeshes.load(path).get(mesh_id_of(OTHER_KEY)).connected_via == "udp"


def test_joining_again_after_a_forget_elsewhere_brings_it_back(path):
    _populated(path)
    agent, cli = SavedMeshes.load(path), SavedMeshes.load(path)
    cli.forget(mesh_id_of(KEY))
    cli.save()
    agent.add_or_update(KEY, "home")  # an explicit join
    assert agent.save() == set()
    assert mesh_id_of(KEY) in SavedMeshes.load(path)


def test_find_by_prefix(path):
    store = _populated(path)
    home, office = mesh_id_of(KEY), mesh_id_of(OTHER_KEY)
    assert store.find(home[:4]).name == "home"
    assert store.find(office.upper()).name == "office"
    store.add_or_update(NEIGHBOUR_KEY, "neighbour")
    common = os.path.commonprefix([home, mesh_id_of(NEIGHBOUR_KEY)])
    assert common
    with pytest.raises(MeshNotFound, match="matches 2 saved meshes"):
        store.find(common)
    with pytest.raises(MeshNotFound, match="no saved mesh"):
        store.find("zz")
    with pytest.raises(MeshNotFound, match="no mesh id given"):
        store.find(" ")


# -- the command line ------------------------------------------------------------


def _cli(path, *args: str):
    return CliRunner().invoke(main, ["meshes", *args], env={"FLOWMESH_MESHES_FILE": str(path)})


def _no_secret(result) -> None:
    for secret in (KEY, TOKEN, URL_SECRET):
        assert secret not in result.output and secret not in result.stderr


def test_cli_list(path):
    _populated(path)
    store = SavedMeshes.load(path)
    store.record_connected(mesh_id_of(KEY), "relay", time.time() - 5)
    store.record_endpoint(mesh_id_of(OTHER_KEY), "x", "udp:192.0.2.9:1", None, time.time() - 3 * 3600 - 60)
    store.save()
    result = _cli(path, "list")
    assert result.exit_code == 0, result.output
    _no_secret(result)
    lines = result.output.splitlines()
    assert lines[0].split() == ["id", "name", "state", "auto_reconnect", "endpoints"]
    home, office = lines[1], lines[2]
    assert home.startswith(mesh_id_of(KEY)) and "home" in home
    assert "connected over relay, 5 s ago" in home or "connected over relay, 6 s ago" in home
    assert home.split()[-2:] == ["on", "2"]
    assert "last seen 3 h ago" in office and office.split()[-2:] == ["off", "1"]


def test_cli_list_never_connected_and_empty(path, monkeypatch):
    assert _cli(path, "list").output.strip() == "(none)"
    store = SavedMeshes.load(path)
    store.add_or_update(KEY, "home")
    store.save()
    # the data directory's variable places the file, as for the other commands
    monkeypatch.delenv("FLOWMESH_MESHES_FILE", raising=False)
    monkeypatch.setenv("FLOWMESH_DATA_DIR", str(path.parent))
    result = CliRunner().invoke(main, ["meshes", "list"])
    assert "never connected" in result.output


def test_cli_list_json(path):
    _populated(path)
    result = _cli(path, "list", "--json")
    assert result.exit_code == 0, result.output
    _no_secret(result)
    records = {r["name"]: r for r in json.loads(result.output)}
    home = records["home"]
    assert home["id"] == mesh_id_of(KEY) and home["relay_token_saved"] is True
    assert home["relay_url"] == "wss://relay.example:8765/mesh?..."
    assert home["state"].startswith("last seen")
    assert [e["address"] for e in home["endpoints"]] == ["udp:192.0.2.7:7946",
                                                          "relay:pi-hall@relay.example:8765"]
    assert set(home) & {"key", "mesh_key", "token", "relay_token"} == set()
    assert records["office"]["auto_reconnect"] is False


def test_cli_forget(path):
    _populated(path)
    result = _cli(path, "forget", mesh_id_of(KEY)[:5])
    assert result.exit_code == 0, result.output
    _no_secret(result)
    assert result.output.strip() == f"forgot mesh {mesh_id_of(KEY)} (home)"
    assert [m.name for m in SavedMeshes.load(path)] == ["office"]
    unknown = _cli(path, "forget", "zzzz")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == "flowmesh-edge: no saved mesh has an id starting with 'zzzz'"


def test_cli_forget_ambiguous(path):
    store = _populated(path)
    store.add_or_update(NEIGHBOUR_KEY, "neighbour")
    store.save()
    common = os.path.commonprefix([mesh_id_of(KEY), mesh_id_of(NEIGHBOUR_KEY)])
    result = _cli(path, "forget", common)
    assert result.exit_code == 1 and "matches 2 saved meshes" in result.stderr
    assert len(SavedMeshes.load(path)) == 3


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["forget", "abc"]])
def test_cli_reports_a_corrupt_file_in_one_line(path, command):
    path.parent.mkdir()
    content = b'{"version": 7, "meshes": []}'
    path.write_bytes(content)
    result = _cli(path, *command)
    assert result.exit_code == 1
    assert result.stderr == f"flowmesh-edge: {path}: unknown version 7 (this agent reads versions 1, 2)\n"
    assert result.stdout == ""
    assert path.read_bytes() == content


def test_cli_warns_of_a_loose_mode(path):
    _populated(path)
    path.chmod(0o640)
    result = _cli(path, "list")
    assert result.exit_code == 0
    assert result.stderr.count("\n") == 1 and "mode 0640" in result.stderr
    _no_secret(result)


def test_a_version_1_file_is_read_and_written_as_version_2_with_its_id(path):
    path.parent.mkdir()
    path.write_bytes(_mesh_json())
    path.chmod(0o600)
    store = SavedMeshes.load(path)
    home = store.get(mesh_id_of(KEY))
    assert (home.keys, home.encrypt, home.keyring_version) == ([KEY], True, 0)
    store.record_connected(home.mesh_id, "udp", T0)
    store.save()
    document = json.loads(path.read_text())
    assert document["version"] == 2
    assert document["meshes"][0]["keys"] == [KEY] and "key" not in document["meshes"][0]


def test_a_rotated_mesh_keeps_its_id_and_is_found_by_any_of_its_keys(path):
    store = SavedMeshes(path)
    founded = store.add_or_update(KEY, "home", at=T0).mesh_id
    store.set_keys(founded, [OTHER_KEY, KEY], version=2)
    store.set_keys(founded, [OTHER_KEY], version=3)
    store.save()
    again = SavedMeshes.load(path)
    home = again.get(founded)  # the id of the founding key, through the rotation
    assert (home.keys, home.keyring_version) == ([OTHER_KEY], 3)
    # joining with the current key finds the same mesh, not a new one
    assert again.add_or_update(OTHER_KEY, "home").mesh_id == founded
    assert len(again) == 1
    with pytest.raises(ValueError, match="at least 16 bytes"):
        again.set_keys(founded, ["short"], version=4)
    assert again.get(founded).keys == [OTHER_KEY]


def test_an_agent_saving_endpoints_does_not_undo_a_keyring_changed_by_the_cli(path):
    agent = SavedMeshes(path)
    mesh_id = agent.add_or_update(KEY, "home", at=T0).mesh_id
    agent.save()
    cli = SavedMeshes.load(path)
    cli.set_keys(mesh_id, [KEY, OTHER_KEY], version=1)  # flowmesh-edge keys add
    cli.save()
    agent.record_connected(mesh_id, "udp", T0 + 5)  # the agent's own news, saved later
    agent.save()
    saved = SavedMeshes.load(path).get(mesh_id)
    assert (saved.keys, saved.keyring_version, saved.last_connected) == ([KEY, OTHER_KEY], 1, T0 + 5)
    assert agent.get(mesh_id).keys == [KEY, OTHER_KEY]  # and the agent's copy now knows it
