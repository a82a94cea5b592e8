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
