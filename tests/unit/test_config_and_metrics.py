from __future__ import annotations

import pytest

from flowmesh_edge.config import AgentConfig
from flowmesh_edge.metrics import MetricsSampler


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_id": ""}, "node id"),
        ({"node_id": "a\nb"}, "node id"),
        ({"tetrahedron": "x" * 129}, "tetrahedron name"),
        ({"interval_s": 0}, "interval"),
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": 10_001}, "batch size"),
        ({"backoff_initial_s": 5, "backoff_max_s": 1}, "backoff"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AgentConfig(**{"node_id": "pi", **kwargs})


def test_outbox_path_is_per_node_and_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWMESH_DATA_DIR", str(tmp_path))
    path = AgentConfig(node_id="cam/01 east").resolved_outbox_path()
    assert path == tmp_path / "outbox" / "cam_01_east.sqlite3"


def test_sample_reports_real_ranges():
    metrics = MetricsSampler().sample()
    assert 0 <= metrics["cpu_percent"] <= 100
    assert 0 < metrics["memory_percent"] <= 100
    assert metrics["uptime_s"] > 0
    if "battery_percent" in metrics:
        assert 0 <= metrics["battery_percent"] <= 100
