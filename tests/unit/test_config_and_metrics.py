from __future__ import annotations

from collections import namedtuple

import psutil
import pytest

from flowmesh import limits
from flowmesh_edge.backoff import backoff_delay
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
        ({"batch_size": limits.BATCH_MAX_ITEMS + 1}, "batch size"),
        ({"node_id": "n" * (limits.NODE_ID_MAX_BYTES + 1)}, "129 bytes; the limit is 128"),
        ({"node_id": "é" * 65}, "130 bytes; the limit is 128"),
        ({"backoff_initial_s": 5, "backoff_max_s": 1}, "backoff"),
        ({"db_timeout_s": 0}, "database timeout"),
        ({"flush_timeout_s": -1}, "flush timeout"),
        ({"http_port": 65536}, "http port"),
        ({"http_port": -1}, "http port"),
        ({"http_bind": ""}, "http bind"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AgentConfig(**{"node_id": "pi", **kwargs})


def test_the_endpoints_are_off_and_on_loopback_by_default():
    config = AgentConfig(node_id="pi")
    assert (config.http_port, config.http_bind) == (None, "127.0.0.1")


def test_outbox_path_is_per_node_and_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWMESH_DATA_DIR", str(tmp_path))
    path = AgentConfig(node_id="cam/01 east").resolved_outbox_path()
    assert path == tmp_path / "outbox" / "cam_01_east.sqlite3"


def test_node_id_up_to_the_limit_is_accepted():
    assert AgentConfig(node_id="n" * limits.NODE_ID_MAX_BYTES).node_id == "n" * 128
    assert AgentConfig(node_id="é" * 64).node_id == "é" * 64  # 128 bytes


def test_sample_reports_real_ranges():
    metrics = MetricsSampler().sample()
    assert 0 <= metrics["cpu_percent"] <= 100
    assert 0 < metrics["memory_percent"] <= 100
    assert metrics["uptime_s"] > 0


# the shapes psutil documents for sensors_battery() and sensors_temperatures()
sbattery = namedtuple("sbattery", "percent secsleft power_plugged")
shwtemp = namedtuple("shwtemp", "label current high critical")


def test_battery_and_temperature_are_reported_when_the_device_has_them():
    sampler = MetricsSampler(
        battery=lambda: sbattery(percent=82.44, secsleft=psutil.POWER_TIME_UNKNOWN, power_plugged=False),
        temperatures=lambda: {"coretemp": [shwtemp("Core 0", 48.5, 90.0, 100.0),
                                           shwtemp("Core 1", 51.25, 90.0, 100.0)],
                              "acpitz": [shwtemp("", 0.0, None, None)]})
    metrics = sampler.sample()
    assert metrics["battery_percent"] == 82.4 and metrics["power_plugged"] is False
    assert metrics["temperature_c"] == 51.2


def test_missing_or_failing_sensors_are_left_out():
    def broken():
        raise OSError("no sensor")

    for battery, temperatures in ((lambda: None, dict), (broken, broken)):
        metrics = MetricsSampler(battery=battery, temperatures=temperatures).sample()
        assert "battery_percent" not in metrics and "power_plugged" not in metrics
        assert "temperature_c" not in metrics


def test_backoff_starts_at_the_initial_wait_doubles_and_is_capped():
    nominal = [backoff_delay(a, 1.0, 60.0, uniform=lambda lo, hi: 1.0) for a in range(10)]
    assert nominal == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    lowest = [backoff_delay(a, 1.0, 60.0, uniform=lambda lo, hi: lo) for a in range(8)]
    highest = [backoff_delay(a, 1.0, 60.0, uniform=lambda lo, hi: hi) for a in range(8)]
    assert lowest == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 48, 48])
    assert highest == pytest.approx([1.2, 2.4, 4.8, 9.6, 19.2, 38.4, 60, 60])  # never above the cap
    assert backoff_delay(10_000, 1.0, 60.0) <= 60


def test_backoff_jitter_spreads_within_twenty_percent():
    import random

    rng = random.Random(7)
    waits = [backoff_delay(3, 1.0, 60.0, uniform=rng.uniform) for _ in range(2000)]
    assert 8 * 0.8 <= min(waits) < 8 * 0.82 and 8 * 1.18 < max(waits) <= 8 * 1.2
