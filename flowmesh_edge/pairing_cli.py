"""``flowmesh-edge pair``: join a mesh through a member by comparing a 6-digit code.

Thin over :mod:`flowmesh_edge.pairing`. On the member, ``pair --accept``
offers one saved mesh (or the key of ``--mesh-key-file``) and waits for one
request; on the new device, ``pair`` finds the members that accept (or takes
``--with``), and both show the code and ask. Nothing here ever prints a key,
a relay token or a database credential; keys are read from files of mode
0600 only, never from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .config import default_node_id
from .mesh import DEFAULT_PORT
from .mesh.address import IP_TRANSPORTS, Address, is_loopback
from .mesh.relay_protocol import public_url
from .mesh.security import mesh_id_of
from .meshes import MeshesFileError, MeshNotFound, SavedMesh, SavedMeshes
from .meshes_cli import meshes_file_option
from .pairing import PAIRING_PORT, PAIRING_TIMEOUT_S

if TYPE_CHECKING:  # imported when used: X25519 and the transports are not the agent's to load
    from .pairing.discovery import Member
    from .pairing.protocol import Credentials

#: A credential file for the new device: ``<data dir>/credentials/<node id>.url``.
CREDENTIALS_DIR = "credentials"
SECRET_MODE = 0o600


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


@click.command("pair")
@click.option("--accept", is_flag=True,
              help="On a member of the mesh: wait for one new device and hand it the mesh's credentials.")
@click.option("--with", "target", metavar="HOST[:PORT]|ws://HOST:PORT|ble:ADDRESS",
              help="The member to pair with (new device) [default: list the members found nearby].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=PAIRING_TIMEOUT_S,
              show_default=True,
              help="Seconds to wait for a request (--accept) and for the users to confirm (on the new "
              "device, counted from its first message; the steps before the code wait 10 s each).")
@click.option("--yes", is_flag=True,
              help="Confirm the code without asking (and pick the only member found): scripts and tests "
              "only, it gives up the protection the code gives.")
@click.option("--node-id", envvar="FLOWMESH_NODE_ID", show_envvar=True,
              help="This device's id [default: the host name].")
@meshes_file_option
@click.option("--port", type=click.IntRange(0, 65535), default=PAIRING_PORT, show_default=True,
              help="UDP port pairing listens on (--accept; 0: a free one, printed), or the port the "
              "new device's broadcast asks on.")
@click.option("--bind", default="0.0.0.0", show_default=True,
              help="Address pairing listens on (--accept): 0.0.0.0 answers the LAN's broadcasts.")
@click.option("--ws-port", type=click.IntRange(0, 65535),
              help="Also accept pairing over WebSocket on this port (--accept; 0: a free one).")
@click.option("--ble/--no-ble", default=False, show_default=True,
              help="Pairing over Bluetooth LE: advertise (--accept) or scan for members.")
@click.option("--ble-adapter", default="hci0", show_default=True, help="The Bluetooth adapter.")
@click.option("--mdns/--no-mdns", default=False, show_default=True,
              help="Advertise (--accept) or look for members over mDNS.")
@click.option("--mdns-interface", "mdns_interfaces", multiple=True, hidden=True)  # tests: 127.0.0.1
@click.option("--broadcast-address", default="255.255.255.255", hidden=True)  # tests: 127.255.255.255
@click.option("--mesh", "mesh_id", metavar="ID",
              help="The saved mesh to offer (--accept), when several are saved (the start of its id).")
@click.option("--mesh-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Offer the mesh of the key in this file (mode 0600) instead of a saved one (--accept).")
@click.option("--mesh-name", help="A name for the mesh of --mesh-key-file [default: its id].")
@click.option("--mesh-key", hidden=True, expose_value=True)
@click.option("--mesh-port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="UDP port of the mesh on this device, told to the other side.")
@click.option("--device-credential", type=click.Path(dir_okay=False, path_type=Path),
              help="A database credential for the new device, in a file of mode 0600 (--accept), as "
              "`flowmesh devices add ... --output F` writes it; sent over the encrypted channel.")
@click.option("--credential-output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the new device writes a database credential it receives (mode 0600) "
              "[default: <data dir>/credentials/<node id>.url].")
def pair(accept, target, timeout_s, yes, node_id, meshes_file, port, bind, ws_port, ble, ble_adapter,
         mdns, mdns_interfaces, broadcast_address, mesh_id, mesh_key_file, mesh_name, mesh_key, mesh_port,
         device_credential, credential_output) -> None:
    """Join a mesh by pairing with one of its members, or (--accept) let a new device join.

    \b
    On a member:     flowmesh-edge pair --accept
    On the new one:  flowmesh-edge pair            (or --with HOST:PORT, ws://HOST:PORT, ble:ADDRESS)

    Both screens show the same 6-digit code; each user checks that it matches the
    other screen and confirms. Only then does the member send the mesh's keys (and,
    with --device-credential, a database credential) over a channel only the two
    devices can read, and the new device saves the mesh for `flowmesh-edge run`.
    Exits 0 once paired, 1 with a one-line reason otherwise.
    """
    if mesh_key is not None:
        raise _fail("keys are never taken on the command line (they would show in the process "
                    "list and the shell's history): put the key in a file of mode 0600 and pass "
                    "--mesh-key-file FILE")
    node_id = node_id or default_node_id()
    if accept:
        if target:
            raise click.UsageError("--with is for the new device; --accept waits for one")
        _accept(node_id, timeout_s, yes, meshes_file, port, bind, ws_port, ble, ble_adapter, mdns,
                list(mdns_interfaces) or None, mesh_id, mesh_key_file, mesh_name, mesh_port,
                device_credential)
    else:
        if mesh_id or mesh_key_file or device_credential:
            raise click.UsageError("--mesh, --mesh-key-file and --device-credential go with --accept")
        _join(node_id, target, timeout_s, yes, meshes_file, port, ble, ble_adapter, mdns,
              list(mdns_interfaces) or None, broadcast_address, mesh_port, credential_output)


# -- the member ------------------------------------------------------------------------------------


def _accept(node_id, timeout_s, yes, meshes_file, port, bind, ws_port, ble, ble_adapter, mdns,
            mdns_interfaces, mesh_id, mesh_key_file, mesh_name, mesh_port, device_credential) -> None:
    store = _load(meshes_file)
    if mesh_key_file is not None:
        if mesh_id:
            raise click.UsageError("give --mesh or --mesh-key-file, not both")
        from .mesh.keyring import key_problem

        key = read_secret_file(mesh_key_file, "mesh key").strip()
        problem = key_problem(key)
        if problem:
            raise _fail(f"{mesh_key_file}: {problem}")
        offered = _offered_by_key(store, key, mesh_name)
    else:
        offered = _choose_saved(store, mesh_id)
    from .pairing.protocol import Credentials

    credential = None
    if device_credential is not None:
        credential = read_secret_file(device_credential, "device credential").strip()
    capabilities = ["udp", *(["ws"] if ws_port is not None else []), *(["ble"] if ble else [])]
    credentials = Credentials(
        mesh_id=offered.mesh_id, name=offered.name, keys=offered.keys,
        keyring_version=offered.keyring_version, encrypt=offered.encrypt, relay_url=offered.relay_url,
        relay_token=offered.relay_token, endpoints=[str(Address.udp("0.0.0.0", mesh_port))],
        node_id=node_id, capabilities=capabilities, device_credential=credential)
    try:
        credentials.check()
    except ValueError as exc:
        raise _fail(f"mesh {offered.mesh_id} cannot be offered: {exc}") from None
    result = asyncio.run(_accept_async(node_id, credentials, timeout_s, yes, port, bind, ws_port, ble,
                                       ble_adapter, mdns, mdns_interfaces))
    summary = refused_summary(result.refused)
    if summary:
        click.echo(summary, err=True)
    if not result.ok:
        raise _fail(f"pairing failed: {result.detail}")
    joined = result.joined or {}
    recorded = []
    if mesh_key_file is not None and offered.mesh_id not in store:
        _add_mesh(store, credentials, founder=None)  # this member holds the mesh from now on
    now = time.time()
    for text in joined.get("endpoints", [])[:16]:
        with contextlib.suppress(ValueError):
            address = _with_host_of(Address.parse(text), result.peer_address)
            if address is not None:
                store.record_endpoint(offered.mesh_id, joined["node"], address, None, now)
                recorded.append(str(address))
    _save(store)
    if result.joined is None:  # its DONE never came: it most likely saved them, but did not say
        click.echo(f"paired: {result.detail} ({result.peer_node}, mesh {offered.name} "
                   f"({offered.mesh_id})); its endpoint is not recorded")
        return
    click.echo(f"paired: {result.peer_node} joined mesh {offered.name} ({offered.mesh_id})"
               + (f"; its endpoint {', '.join(recorded)} is saved" if recorded else ""))


#: Refusals not worth a word: a retransmission answered again is how loss is repaired.
_UNREMARKABLE = {"duplicate"}


def refused_summary(refused: dict[str, int]) -> str | None:
    """One line of what the member refused while it waited, or None when nothing was."""
    shown = [(reason, n) for reason, n in sorted(refused.items()) if n and reason not in _UNREMARKABLE]
    if not shown:
        return None
    return "refused while waiting: " + ", ".join(f"{reason} {n}" for reason, n in shown)


async def _accept_async(node_id, credentials, timeout_s, yes, port, bind, ws_port, ble, ble_adapter,
                        mdns, mdns_interfaces):
    from .mesh.transport import Transport, Transports
    from .mesh.transports.udp import UdpTransport
    from .pairing.channel import Channel, accept
    from .pairing.discovery import MdnsAdvertiser
    from .pairing.guard import PairingGuard
    from .pairing.protocol import Offer

    transports: list[Transport] = [UdpTransport(bind, port)]
    if ws_port is not None:
        from .mesh.transports.websocket import WebSocketTransport

        transports.append(WebSocketTransport(bind, ws_port))
    if ble:
        from .mesh.transports.ble import BleTransport

        transports.append(BleTransport(ble_adapter, local_name="flowmesh-pair", scan=False))
    channel = Channel(Transports(transports))
    try:
        await channel.start()
    except OSError as exc:
        raise _fail(f"cannot listen for pairing on {bind}:{port}: {exc.strerror or exc}") from None
    except Exception as exc:  # BLE: no adapter, no BlueZ
        raise _fail(f"cannot listen for pairing: {exc}") from None
    advertiser = None
    try:
        endpoints = channel.endpoints()
        guard = PairingGuard(node_id, credentials,
                             Offer(node_id, credentials.name, tuple(str(e) for e in endpoints)),
                             timeout_s=timeout_s)
        if mdns:
            advertiser = MdnsAdvertiser(node_id, credentials.name, endpoints, mdns_interfaces)
            await advertiser.start()
        click.echo(f"{node_id} accepts pairing into mesh {credentials.name} ({credentials.mesh_id}) "
                   f"for {timeout_s:g} s on {', '.join(str(e) for e in endpoints)}")
        click.echo("on the new device run: flowmesh-edge pair"
                   + ("" if port == PAIRING_PORT else f" --port {endpoints[0].port}")
                   + f"   (or --with HOST:{endpoints[0].port})")
        return await accept(channel, guard, _asker(yes, "new device {peer} asks to join"),
                            timeout_s=timeout_s)
    finally:
        if advertiser is not None:
            await advertiser.close()
        await channel.close()


def _offered_by_key(store: SavedMeshes, key: str, name: str | None) -> SavedMesh:
    """The mesh of a key given in a file: the saved one holding it, else a new record."""
    saved = store.holding(key)
    if saved is not None:
        return saved
    return SavedMesh(mesh_key=key, name=name or mesh_id_of(key), joined_at=time.time())


def _choose_saved(store: SavedMeshes, mesh_id: str | None) -> SavedMesh:
    if mesh_id:
        try:
            return store.find(mesh_id)
        except MeshNotFound as exc:
            raise _fail(str(exc)) from None
    saved = list(store)
    if not saved:
        raise _fail(f"no saved mesh in {store.path} to offer: join one first (flowmesh-edge run "
                    "--mesh-key ...), or pass --mesh-key-file FILE")
    if len(saved) > 1:
        listing = ", ".join(f"{m.mesh_id} ({m.name})" for m in saved)
        raise _fail(f"{len(saved)} saved meshes ({listing}): choose one with --mesh ID")
    return saved[0]


# -- the new device --------------------------------------------------------------------------------


def _join(node_id, target, timeout_s, yes, meshes_file, port, ble, ble_adapter, mdns, mdns_interfaces,
          broadcast_address, mesh_port, credential_output) -> None:
    store = _load(meshes_file)  # a file that cannot be saved to is found before pairing
    if store.error is not None:
        raise _fail(str(store.error))
    output = credential_output or _default_credential_path(node_id)
    if target:
        address = parse_target(target, port)
    else:
        address = _pick(asyncio.run(_find(port, broadcast_address, ble, ble_adapter, mdns, mdns_interfaces)),
                        yes)

    def save(credentials: Credentials) -> None:
        _check_no_takeover(store, credentials)
        if credentials.device_credential is not None:
            write_secret_file(output, credentials.device_credential + "\n")
        _add_mesh(store, credentials, founder=credentials.node_id)
        now = time.time()
        for text in credentials.endpoints[:16]:
            with contextlib.suppress(ValueError):
                endpoint = _with_host_of(Address.parse(text), address)
                if endpoint is not None:
                    store.record_endpoint(credentials.mesh_id, credentials.node_id, endpoint, None, now)
        try:
            store.save()
        except MeshesFileError:
            if credentials.device_credential is not None:
                output.unlink(missing_ok=True)
            raise

    result = asyncio.run(_join_async(node_id, address, timeout_s, yes, save, ble_adapter, mesh_port))
    if not result.ok:
        raise _fail(f"pairing failed: {result.detail}")
    c = result.credentials
    assert c is not None
    keys = f"{len(c.keys)} key{'s' if len(c.keys) != 1 else ''}"
    relay = f", relay {public_url(c.relay_url)}" if c.relay_url else ""
    click.echo(f"paired with {c.node_id}: mesh {c.name} ({c.mesh_id}) saved in {store.path} "
               f"({keys}, keyring version {c.keyring_version}, "
               f"{'encrypted' if c.encrypt else 'authenticated, not encrypted'}{relay}, "
               f"{len(c.endpoints)} endpoint{'s' if len(c.endpoints) != 1 else ''} of {c.node_id})")
    files = f" --meshes-file {meshes_file}" if meshes_file else ""
    if c.device_credential is not None:
        click.echo(f"database credential written to {output} (mode 0600)")
        click.echo(f'next: FLOWMESH_DATABASE_URL="$(cat {output})" '
                   f"flowmesh-edge run --node-id {node_id}{files}")
    else:
        click.echo(f"next: flowmesh-edge run --node-id {node_id}{files} (with the database URL an operator "
                   f"made for this device: flowmesh devices add TETRAHEDRON {node_id} --output FILE)")


async def _join_async(node_id, address, timeout_s, yes, save, ble_adapter, mesh_port):
    from .pairing.channel import Channel, pair

    channel = Channel(_transport_for(address, ble_adapter))
    try:
        await channel.start()
    except Exception as exc:
        raise _fail(f"cannot reach {address}: {exc}") from None
    try:
        click.echo(f"pairing with {address} ...")
        return await pair(channel, address, node_id, _asker(yes, "member {peer} answers"), save,
                          timeout_s=timeout_s,
                          mesh_endpoints=[str(Address.udp("0.0.0.0", mesh_port))])
    finally:
        await channel.close()


def _transport_for(address: Address, ble_adapter: str):
    if address.transport in ("ws", "wss"):
        from .mesh.transports.websocket import WebSocketTransport

        return WebSocketTransport("127.0.0.1", None)
    if address.transport == "ble":
        from .mesh.transports.ble import BleTransport

        return BleTransport(ble_adapter, serve=False, scan=False)
    from .mesh.transports.udp import UdpTransport

    return UdpTransport("127.0.0.1" if is_loopback(address.host) else "0.0.0.0", 0)


async def _find(port, broadcast_address, ble, ble_adapter, mdns, mdns_interfaces) -> list[Member]:
    from .pairing.discovery import FIND_S, find_members

    ways = ", ".join(["LAN broadcast", *(["mDNS"] if mdns else []), *(["Bluetooth LE"] if ble else [])])
    click.echo(f"looking for members that accept pairing ({ways}) for {FIND_S:g} s ...")
    return await find_members(port=port, broadcast_address=broadcast_address,
                              bind="127.0.0.1" if is_loopback(broadcast_address) else "0.0.0.0",
                              mdns=mdns, mdns_interfaces=mdns_interfaces, ble=ble, ble_adapter=ble_adapter,
                              wait_s=FIND_S)


def _pick(members: list[Member], yes: bool) -> Address:
    if not members:
        raise _fail("no member accepting pairing was found nearby; run `flowmesh-edge pair --accept` "
                    "on one, or name it with --with HOST:PORT")
    for index, member in enumerate(members, 1):
        click.echo(f"  {index}. {member.describe()}")
    if yes:
        if len(members) > 1:
            raise _fail(f"{len(members)} members found: name one with --with")
        return members[0].address
    answer = asyncio.run(_read_line(f"pair with which? [1-{len(members)}] ")).strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(members):
        raise _fail("no member chosen")
    return members[int(answer) - 1].address


def parse_target(text: str, default_port: int = PAIRING_PORT) -> Address:
    """``HOST[:PORT]`` (UDP), ``udp:HOST:PORT``, ``ws://HOST:PORT``, ``wss://HOST:PORT``
    or ``ble:AA:BB:CC:DD:EE:FF`` -> the Address to pair with (a UDP host resolved)."""
    scheme = re.match(r"(wss?)://(.+)$", text)
    if scheme:
        host_port = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:/]+):(\d{1,5})/?", scheme.group(2))
        if host_port is None or not 0 < int(host_port.group(2)) < 65536:
            raise click.BadParameter(f"{text!r}: want ws://HOST:PORT", param_hint="--with")
        return Address(scheme.group(1), host_port.group(1).strip("[]"), int(host_port.group(2)))
    if text.lower().startswith("ble:"):  # ble:MAC, or the address form ble:[MAC]:0
        mac = re.fullmatch(r"ble:(\[)?((?:[0-9a-f]{2}:){5}[0-9a-f]{2})(?(1)\]:0|)", text, re.IGNORECASE)
        if mac is None:
            raise click.BadParameter(f"{text!r}: want ble:AA:BB:CC:DD:EE:FF", param_hint="--with")
        return Address("ble", mac.group(2).upper(), 0)
    text = text.removeprefix("udp:")
    if ":" not in text or (text.startswith("[") and text.endswith("]")):
        text = f"{text}:{default_port}"  # a bare host: the pairing port
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT, ws://HOST:PORT or ble:ADDRESS",
                                 param_hint="--with")
    host = host.strip("[]")
    if ":" in host:  # an IPv6 literal: the pairing socket is IPv4 (as the mesh's UDP transport)
        raise click.BadParameter(f"{text!r}: pairing over UDP is IPv4 only; give an IPv4 address "
                                 "or a host name that has one", param_hint="--with")
    try:  # answers come from an address: compare them to the one we send to
        host = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
    except OSError as exc:
        raise click.BadParameter(f"cannot resolve {host} to an IPv4 address: {exc}",
                                 param_hint="--with") from None
    return Address.udp(host, int(port))


# -- shared ----------------------------------------------------------------------------------------


def _asker(yes: bool, who: str):
    """``who``: how the other side is introduced, with ``{peer}`` for its node id."""
    from .pairing.protocol import format_code

    async def ask(code: str, peer: str) -> bool:
        shown = f"Code: {format_code(code)}"
        if yes:
            click.echo(f"{who.format(peer=peer)}. {shown} (confirmed by --yes)")
            return True
        click.echo(f"{who.format(peer=peer)}.")
        answer = await _read_line(f"{shown} — does the other screen show the same? [y/N] ")
        return answer.strip().lower() in ("y", "yes")
    return ask


async def _read_line(prompt: str) -> str:
    """One line of stdin, read without blocking the event loop (messages keep flowing and
    the question is cancelled when the other side gives up); "" at end of input."""
    click.echo(prompt, nl=False)
    if sys.stdin is None or sys.stdin.closed:
        return ""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    line = bytearray()
    done: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        chunk = os.read(fd, 1)  # a byte at a time: what follows the line is the next question's
        if chunk and chunk != b"\n":
            line.extend(chunk)
        elif not done.done():
            done.set_result(line.decode(errors="replace"))

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError, NotImplementedError):  # a regular file: reading it never blocks
        answer = await asyncio.to_thread(sys.stdin.readline)
    else:
        try:
            answer = await done
        finally:
            loop.remove_reader(fd)
    if not sys.stdin.isatty():
        click.echo()  # no terminal echoed the answer's newline: end the prompt's line
    return answer


def read_secret_file(path: Path, what: str) -> str:
    """A secret from a file that only its owner may read (mode 0600 or stricter)."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise _fail(f"{path}: the {what} file is readable by others (mode {stat.S_IMODE(mode):04o}); "
                        f"chmod 600 {path}")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _fail(f"{path}: the {what} is not UTF-8 text") from None


def write_secret_file(path: Path, text: str) -> None:
    """Atomically, mode 0600 from the start (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), SECRET_MODE)
    try:
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:  # a secret half-written is not left behind under another name
        temp.unlink(missing_ok=True)
        raise


def _default_credential_path(node_id: str) -> Path:
    from flowmesh import settings

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node_id)[:100]
    return settings.data_dir() / CREDENTIALS_DIR / f"{safe}.url"


class MeshTakeover(Exception):
    """Credentials naming a mesh this device saved, with none of its keys."""


def _check_no_takeover(store: SavedMeshes, credentials: Credentials) -> None:
    """A member is trusted for its own mesh only: credentials that name the id of a mesh
    already saved here but share no key with its keyring would replace another mesh's
    keys, relay and founder. Refused before anything is written."""
    if credentials.mesh_id not in store:
        return
    saved = store.get(credentials.mesh_id)
    if not set(saved.keys) & set(credentials.keys):
        raise MeshTakeover(f"mesh {credentials.mesh_id} ({saved.name}) is already saved here with other "
                           "keys; nothing was saved (forget it first with `flowmesh-edge meshes forget "
                           f"{credentials.mesh_id}` if it is meant to be replaced)")


def _add_mesh(store: SavedMeshes, credentials: Credentials, founder: str | None) -> None:
    """Save the mesh received (or offered from a key file) with its whole keyring and its id
    (stable through rotations: not the id of today's primary key). Never over another
    mesh saved under that id with none of these keys (MeshTakeover)."""
    _check_no_takeover(store, credentials)
    store.add_or_update(credentials.keys[0], credentials.name, founder=founder,
                        relay_url=credentials.relay_url, relay_token=credentials.relay_token,
                        mesh_id=credentials.mesh_id, secondary_keys=credentials.keys[1:],
                        encrypt=credentials.encrypt, keyring_version=credentials.keyring_version)


def _with_host_of(address: Address, reached: Address | None) -> Address | None:
    """An endpoint advertised on every interface takes the host pairing reached its owner at
    (None when that was no IP path: the endpoint says nothing usable then)."""
    if not address.is_wildcard:
        return address
    if reached is not None and reached.transport in IP_TRANSPORTS | {"ws", "wss"}:
        return address.with_host(reached.host.split("#", 1)[0])  # a WebSocket peer's connection
    return None


def _load(path: Path | None) -> SavedMeshes:
    try:
        return SavedMeshes.load(path, report=lambda m: click.echo(f"flowmesh-edge: warning: {m}", err=True))
    except MeshesFileError as exc:
        raise _fail(str(exc)) from None


def _save(store: SavedMeshes) -> None:
    try:
        store.save()
    except MeshesFileError as exc:
        raise _fail(str(exc)) from None
