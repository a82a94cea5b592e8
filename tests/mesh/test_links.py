"""The agent's meshes (links.py): joined from the command line, saved, rejoined
after a restart with nothing on the command line, left when forgotten."""

from __future__ import annotations

import json
import uuid

from click.testing import CliRunner

from flowmesh_edge import MeshNode
from flowmesh_edge import links as links_module
from flowmesh_edge.cli import main
from flowmesh_edge.links import MeshLinks, MeshOptions
from flowmesh_edge.mesh.keyring import key_id
from flowmesh_edge.mesh.security import mesh_id_of
from tests.conftest import until

KEY = "links-test-mesh-key-0123456789"


def options(meshes_file, **given) -> MeshOptions:
    return MeshOptions(port=0, bind="127.0.0.1", meshes_file=meshes_file, **given)


def status(node: MeshNode, peer: str) -> str | None:
    info = node.peers().get(peer)
    return info.status if info else None


async def test_a_restarted_member_rejoins_its_saved_mesh_and_forget_makes_it_leave(tmp_path, monkeypatch):
    monkeypatch.setattr(links_module, "SAVE_EVERY_S", 0.2)
    meshes_file = tmp_path / "meshes.json"
    a = MeshNode("a", port=0, bind="127.0.0.1", mesh_key=KEY)
    events: list[str] = []
    a.on_member(lambda e, p: events.append(e.kind) if e.node_id == "b" else None)
    await a.start()
    try:
        first = MeshLinks("b", options(meshes_file, mesh_key=KEY, mesh_name="home", peers=[a.address]))
        assert len(first.build()) == 1
        await first.start()
        await until(lambda: status(a, "b") == "alive", 10)
        await first.stop()  # says goodbye and saves
        await until(lambda: events[-1:] == ["left"], 10)
        assert meshes_file.stat().st_mode & 0o777 == 0o600
        saved = json.loads(meshes_file.read_text())["meshes"]
        assert [m["name"] for m in saved] == ["home"]
        assert str(a.address) in [e["address"] for e in saved[0]["endpoints"]]

        # a restart with no key, no peer: the saved mesh and its endpoints are enough
        again = MeshLinks("b", options(meshes_file))
        assert [link.mesh_id for link in again.build()] == [mesh_id_of(KEY)]
        await again.start()
        try:
            await until(lambda: status(a, "b") == "alive", 10)
            listed = CliRunner().invoke(main, ["meshes", "list", "--meshes-file", str(meshes_file)])
            assert listed.exit_code == 0 and "home" in listed.output and KEY not in listed.output
            forgot = CliRunner().invoke(main, ["meshes", "forget", mesh_id_of(KEY)[:6],
                                               "--meshes-file", str(meshes_file)])
            assert forgot.exit_code == 0, forgot.output
            await until(lambda: events[-1:] == ["left"], 10)  # the running agent left it
            assert again.links == []
        finally:
            await again.stop()
        assert json.loads(meshes_file.read_text())["meshes"] == []
    finally:
        await a.stop()


async def test_a_corrupt_saved_meshes_file_is_reported_and_left_untouched(tmp_path, caplog):
    meshes_file = tmp_path / "meshes.json"
    meshes_file.write_bytes(b"{not json")
    meshes_file.chmod(0o600)
    links = MeshLinks("b", options(meshes_file, mesh_key=KEY))
    assert len(links.build()) == 1  # the mesh of the command line is joined all the same
    await links.start()
    await links.stop()
    assert meshes_file.read_bytes() == b"{not json"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(meshes_file) in errors[0] and "\n" not in errors[0]


async def test_without_a_key_or_a_saved_mesh_there_is_no_mesh(tmp_path):
    assert MeshLinks("b", options(tmp_path / "meshes.json")).build() == []


async def test_two_members_with_no_peers_find_each_other_over_mdns(tmp_path):
    """Bound to 127.0.0.1 (no broadcast), no peer given: mDNS on loopback is the only way.
    A key and names of this run only: another run on the host is another mesh."""
    run = uuid.uuid4().hex[:8]
    key, names = f"{KEY}-{run}", (f"a-{run}", f"b-{run}")
    members = [MeshLinks(name, options(tmp_path / f"{name}.json", mesh_key=key, mdns=True,
                                       mdns_interfaces=["127.0.0.1"])) for name in names]
    for links in members:
        links.build()
        await links.start()
    try:
        a, b = (links.primary for links in members)
        await until(lambda: status(a, names[1]) == "alive" and status(b, names[0]) == "alive", 15)
        assert all(link.mdns is not None for links in members for link in links.links)
    finally:
        for links in members:
            await links.stop()


async def two_agents(files) -> tuple[MeshLinks, MeshLinks]:
    """Agents a and b of mesh "home", each with its meshes file, b joining through a."""
    a = MeshLinks("a", options(files[0], mesh_key=KEY, mesh_name="home"))
    a.build()
    await a.start()
    b = MeshLinks("b", options(files[1], mesh_key=KEY, mesh_name="home", peers=[a.primary.address]))
    b.build()
    await b.start()
    return a, b


async def test_keys_commands_rotate_the_key_of_two_running_agents_and_both_save_it(tmp_path, monkeypatch,
                                                                                   caplog):
    monkeypatch.setattr(links_module, "KEYS_POLL_S", 0.1)
    caplog.set_level("DEBUG")
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    a, b = await two_agents(files)
    runner = CliRunner()

    def keys(*args: str) -> str:
        result = runner.invoke(main, ["keys", *args, "--meshes-file", str(files[0])])
        assert result.exit_code == 0, result.output
        return result.output

    def rings() -> list[list[str]]:
        return [links.primary.keyring.ids() for links in (a, b)]

    try:
        await until(lambda: status(a.primary, "b") == "alive", 10)
        old = a.primary.keyring.primary.id
        added = keys("add")
        new = added.split("installed key ")[1].split()[0]
        assert "the running agent carries it out" in added
        await until(lambda: rings() == [[old, new], [old, new]], 10)
        keys("use", new)
        await until(lambda: rings() == [[new, old], [new, old]], 10)
        keys("remove", old)
        await until(lambda: rings() == [[new], [new]], 10)
        assert status(a.primary, "b") == "alive" and status(b.primary, "a") == "alive"
        await until(lambda: json.loads(files[0].read_text())["meshes"][0]["wanted_keys"] is None, 10)
        listed = json.loads(keys("list", "--json"))
        assert [(r["key"], r["role"]) for r in listed] == [(new, "primary")]
    finally:
        await b.stop()
        await a.stop()
    saved = [json.loads(f.read_text())["meshes"][0] for f in files]
    assert saved[0]["keys"] == saved[1]["keys"] and len(saved[0]["keys"]) == 1 and KEY not in saved[0]["keys"]
    assert saved[0]["id"] == saved[1]["id"] == mesh_id_of(KEY)  # the mesh keeps its name
    assert saved[0]["keyring_version"] == saved[1]["keyring_version"] >= 3
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    # no key ever reaches the log, only key ids
    assert KEY not in caplog.text and saved[0]["keys"][0] not in caplog.text and new in caplog.text


async def test_a_rotation_asked_for_while_no_agent_runs_is_carried_out_when_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(links_module, "KEYS_POLL_S", 0.1)
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    a, b = await two_agents(files)
    runner = CliRunner()
    try:
        await until(lambda: status(a.primary, "b") == "alive", 10)
        await b.stop()  # b's agent is stopped when its owner rotates the key
        rotated = runner.invoke(main, ["keys", "rotate", "--meshes-file", str(files[1])])
        assert rotated.exit_code == 0, rotated.output
        assert "no agent runs on" in rotated.output
        assert "the next `flowmesh-edge run` carries it out" in rotated.output
        saved = json.loads(files[1].read_text())["meshes"][0]
        assert saved["keys"] == [KEY] and len(saved["wanted_keys"]) == 1  # asked for, not done
        new = saved["wanted_keys"][0]
        listed = runner.invoke(main, ["keys", "list", "--meshes-file", str(files[1])]).output
        assert "wanted primary" in listed and new not in listed
        # the next run carries it out over the mesh, safely: a still holds the old key
        b = MeshLinks("b", options(files[1]))
        b.build()
        await b.start()
        await until(lambda: a.primary.keyring.ids() == b.primary.keyring.ids() == [key_id(new)], 15)
        await until(lambda: json.loads(files[1].read_text())["meshes"][0]["wanted_keys"] is None, 10)
        # b came back within the second it left: it refutes a's record of its leaving
        await until(lambda: status(a.primary, "b") == "alive" and status(b.primary, "a") == "alive", 10)
    finally:
        await b.stop()
        await a.stop()
    assert json.loads(files[0].read_text())["meshes"][0]["keys"] == [new]


def test_a_key_file_must_be_0600_and_its_key_is_never_printed(tmp_path):
    meshes_file = tmp_path / "meshes.json"
    store = links_module.SavedMeshes(meshes_file)
    store.add_or_update(KEY, "home")
    store.save()
    runner = CliRunner()
    key_file = tmp_path / "key"
    key_file.write_text("a key from a file, 16+ bytes\n")
    key_file.chmod(0o644)
    add = ["keys", "add", "--key-file", str(key_file), "--meshes-file", str(meshes_file)]
    loose = runner.invoke(main, add)
    assert loose.exit_code == 1 and "must be 0600" in loose.output
    key_file.chmod(0o600)
    added = runner.invoke(main, add)
    assert added.exit_code == 0 and "a key from a file" not in added.output
    wanted = json.loads(meshes_file.read_text())["meshes"][0]["wanted_keys"]
    assert wanted == [KEY, "a key from a file, 16+ bytes"]
    key_file.write_bytes(b"\xff\xfe not text at all 16+")
    binary = runner.invoke(main, add)
    assert binary.exit_code == 1 and "UTF-8" in binary.output and "\\xff" not in binary.output
