"""What callers of the public MeshNode constructor rely on."""

from __future__ import annotations

import pytest

from flowmesh_edge.mesh import MeshNode


def test_heartbeat_interval_is_accepted_but_says_it_no_longer_applies():
    with pytest.warns(DeprecationWarning, match="heartbeat_interval has no effect"):
        node = MeshNode("cam", 0, b"k" * 16, "127.0.0.1", [("127.0.0.1", 10001)], 1.0)
    assert node.node_id == "cam" and [str(a) for a in node.bootstrap] == ["udp:127.0.0.1:10001"]


def test_a_node_id_over_the_shared_limit_is_refused_in_one_line():
    with pytest.raises(ValueError, match="129 bytes; the limit is 128") as info:
        MeshNode("n" * 129, mesh_key=b"k" * 16)
    assert "\n" not in str(info.value)
