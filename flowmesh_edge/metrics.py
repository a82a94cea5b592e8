"""Local metrics through psutil: what the device can tell about itself.

Keys are the ones the health rules score (``cpu_percent``,
``battery_percent``, ``temperature_c``, ``latency_ms``, ``packet_loss``); a
metric the machine cannot provide (no battery, no sensors) is left out rather
than guessed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil


class MetricsSampler:
    """Samples CPU, memory, battery, temperature, load and uptime.

    CPU percent is measured between successive calls, so the first sample is
    primed at construction and each heartbeat reports the interval since the
    previous one.
    """

    def __init__(self, battery: Callable[[], object] | None = None,
                 temperatures: Callable[[], dict] | None = None) -> None:
        # the sensors are psutil's unless given (the same shapes: psutil's
        # sbattery, and {chip: [shwtemp...]}), so every branch can be exercised
        self._battery = battery or getattr(psutil, "sensors_battery", None)
        self._temperatures = temperatures or getattr(psutil, "sensors_temperatures", None)
        psutil.cpu_percent(interval=None)
        self._boot = psutil.boot_time()

    def sample(self) -> dict[str, float]:
        metrics: dict[str, float] = {
            "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
            "memory_percent": round(psutil.virtual_memory().percent, 1),
            "uptime_s": round(time.time() - self._boot),
        }
        if hasattr(os, "getloadavg"):
            metrics["load_1m"] = round(os.getloadavg()[0], 2)
        battery = _read(self._battery)
        if battery is not None:
            metrics["battery_percent"] = round(battery.percent, 1)
            metrics["power_plugged"] = bool(battery.power_plugged)
        temperature = _hottest(_read(self._temperatures))
        if temperature is not None:
            metrics["temperature_c"] = round(temperature, 1)
        return metrics


def _read(sensor: Callable[[], object] | None):
    """A sensor's reading, or None when the machine has no such sensor."""
    if sensor is None:
        return None
    try:
        return sensor()
    except (OSError, RuntimeError):
        return None


def _hottest(readings: dict | None) -> float | None:
    """The hottest current reading of the machine's temperature sensors, if any."""
    if not readings:
        return None
    values = [t.current for entries in readings.values() for t in entries if t.current]
    return max(values) if values else None
