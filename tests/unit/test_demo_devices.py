"""The demo's simulated devices: the same metrics on every run, drifting as the scenario says."""

from __future__ import annotations

import random

from flowmesh_edge.demo import DEVICES, HEARTBEAT_S, PI_HEATS_AT_S, SEED, Device


def series(node_id: str, beats: int) -> list[dict]:
    clock = iter([i * HEARTBEAT_S for i in range(beats)])
    device = Device(node_id, dict(DEVICES)[node_id], lambda: next(clock), random.Random(SEED))
    return [device.sample() for _ in range(beats)]


def test_every_run_samples_the_same_metrics():
    for node_id, _ in DEVICES:
        assert series(node_id, 20) == series(node_id, 20)


def test_the_phone_drains_and_slows_while_the_laptop_holds_steady():
    phone = series("phone", 15)
    batteries = [m["battery_percent"] for m in phone]
    latencies = [m["latency_ms"] for m in phone]
    assert batteries == sorted(batteries, reverse=True) and batteries[-1] < 15 < batteries[0]
    assert latencies == sorted(latencies) and latencies[-1] > latencies[0] + 100
    laptop = series("laptop", 15)
    # what the trend model reads a slope from does not move on the healthy witness
    for metric in ("latency_ms", "temperature_c", "packet_loss"):
        assert len({m[metric] for m in laptop}) == 1, metric


def test_the_pi_heats_only_from_its_moment():
    temperatures = [m["temperature_c"] for m in series("pi", 20)]
    heats_at = int(PI_HEATS_AT_S / HEARTBEAT_S)
    assert len(set(temperatures[:heats_at + 1])) == 1
    assert temperatures[heats_at + 1:] == sorted(temperatures[heats_at + 1:])
    assert temperatures[-1] >= 80  # past the degraded threshold before it fails
