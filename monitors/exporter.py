"""Prometheus exporter: FlowMesh's SQL, as metrics.

    python -m monitors.exporter --port 9464 [--bind 0.0.0.0] [--database-url URL]

Every scrape runs a few read-only named queries (a small psycopg pool keeps
the connections), so the figures are as fresh as the database:

    flowmesh_up                                   1 when the last scrape reached the database
    flowmesh_heartbeats_per_minute{tetrahedron}   heartbeats received in the last minute
    flowmesh_nodes{tetrahedron,status}            nodes online / degraded / offline, as of now
    flowmesh_open_alerts{type,severity}           open guardian alerts
    flowmesh_node_health_score{tetrahedron,node}  health score in [0, 1]
    flowmesh_node_predicted_risk{tetrahedron,node} predicted failure risk in [0, 1]
    flowmesh_last_check_duration_seconds          duration of the last heartbeat check
    flowmesh_last_check_timestamp_seconds         when it ran
    flowmesh_scrape_duration_seconds              how long this scrape's queries took

A scrape while the database is away answers with flowmesh_up 0 rather than
an error, so alerting can tell "FlowMesh is down" from "no data".
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import click
import psycopg
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from flowmesh import database, settings
from flowmesh.clisupport import database_url_option
from flowmesh.errors import FlowMeshError, describe
from flowmesh.queries import query

log = logging.getLogger("monitors.exporter")


class FlowMeshCollector(Collector):
    def __init__(self, pool: ConnectionPool):
        self.pool = pool

    def collect(self):
        started = time.perf_counter()
        up = GaugeMetricFamily("flowmesh_up", "1 when the last scrape reached the database.")
        try:
            with self.pool.connection(timeout=settings.CONNECT_TIMEOUT_S) as conn:
                families = list(self._families(conn))
        except (psycopg.Error, TimeoutError, OSError) as exc:
            log.warning("scrape failed: %s", describe(exc).message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily("flowmesh_scrape_duration_seconds",
                                 "Seconds this scrape's queries took.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _families(self, conn: psycopg.Connection):
        rate = GaugeMetricFamily("flowmesh_heartbeats_per_minute",
                                 "Heartbeats received in the last minute.", labels=["tetrahedron"])
        for name, n in conn.execute(query("metrics_heartbeats")):
            rate.add_metric([name], n)
        yield rate

        nodes = GaugeMetricFamily("flowmesh_nodes", "Nodes by status, as of now.",
                                  labels=["tetrahedron", "status"])
        for tetrahedron, status, n in conn.execute(query("metrics_nodes_by_status")):
            nodes.add_metric([tetrahedron, status], n)
        yield nodes

        alerts = GaugeMetricFamily("flowmesh_open_alerts", "Open guardian alerts.",
                                   labels=["type", "severity"])
        for alert_type, severity, n in conn.execute(query("metrics_open_alerts")):
            alerts.add_metric([alert_type, severity], n)
        yield alerts

        score = GaugeMetricFamily("flowmesh_node_health_score", "Node health score, 0 to 1.",
                                  labels=["tetrahedron", "node"])
        risk = GaugeMetricFamily("flowmesh_node_predicted_risk",
                                 "Node predicted failure risk, 0 to 1.", labels=["tetrahedron", "node"])
        for tetrahedron, node, health, predicted in conn.execute(query("metrics_node_health")):
            if health is not None:
                score.add_metric([tetrahedron, node], health)
            if predicted is not None:
                risk.add_metric([tetrahedron, node], predicted)
        yield score
        yield risk

        row = conn.execute(query("metrics_last_check")).fetchone()
        if row is not None:
            duration_ms, started_at, _ = row
            d = GaugeMetricFamily("flowmesh_last_check_duration_seconds",
                                  "Duration of the last heartbeat check.")
            d.add_metric([], duration_ms / 1000)
            yield d
            ts = GaugeMetricFamily("flowmesh_last_check_timestamp_seconds",
                                   "When the last heartbeat check ran (Unix time).")
            ts.add_metric([], started_at.timestamp())
            yield ts


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="HTTP port for /metrics.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@database_url_option
def main(port: int, bind: str, database_url: str | None) -> None:
    """Serve FlowMesh metrics for Prometheus at http://BIND:PORT/metrics."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s exporter %(levelname)s %(message)s")
    try:
        url = database.resolve_url(database_url)
    except FlowMeshError as exc:
        failure = describe(exc)
        click.echo(f"exporter: {failure.message}", err=True)
        sys.exit(failure.exit_code)
    pool = database.pool(url, application_name="flowmesh-exporter")
    REGISTRY.register(FlowMeshCollector(pool))
    try:
        server, thread = start_http_server(port, addr=bind)
    except OSError as exc:
        click.echo(f"exporter: cannot listen on {bind}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    click.echo(f"serving FlowMesh metrics on http://{bind}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    pool.close()


if __name__ == "__main__":
    main()
