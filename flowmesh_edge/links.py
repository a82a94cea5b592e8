"""Which meshes the agent joins, over which transports, and what it remembers of them.

``flowmesh-edge run`` joins the mesh of ``--mesh-key`` (saving it in
``meshes.json``) and every saved mesh with auto-reconnect on. Each mesh is one
:class:`~flowmesh_edge.mesh.MeshNode` with its own transports:

* UDP, always (the primary: its address is the member's), on ``--mesh-port``
  for the first mesh and a free port for the others (one socket per port);
* a WebSocket listener with ``--ws-port`` (first mesh);
* the relays: ``--relay`` URLs with the ``--relay-token-file`` token for the
  first mesh, and each saved mesh's own relay;
* Bluetooth LE with ``--ble`` (first mesh);

and, with ``--mdns``, an mDNS advertisement and browser feeding the node what
it finds. A transport that is not configured is not imported.

Saved endpoints seed each node's peers, most recently successful first. While
running, each member's first path, every path switch and every recovery are
recorded in the saved mesh (endpoint, round trip, connected over which
transport), written at most
every ``SAVE_EVERY_S`` and at stop. A mesh forgotten meanwhile
(``flowmesh-edge meshes forget``) is left at the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .mesh import DEFAULT_PORT, Address, MeshConfig, MeshNode
from .mesh.membership import MemberEvent, PeerInfo
from .mesh.relay_protocol import relay_url_problem
from .mesh.security import mesh_id_of
from .mesh.transport import Transport
from .mesh.transports.udp import UdpTransport
from .meshes import MeshesFileError, SavedMesh, SavedMeshes, hold_agent_lock

log = logging.getLogger("flowmesh_edge.links")

#: Seconds between writes of meshes.json while the agent runs (and at stop).
SAVE_EVERY_S = 30.0
#: Seconds between looks at meshes.json for a keyring changed by ``flowmesh-edge keys``.
KEYS_POLL_S = 1.0
#: Saved endpoints of a mesh a restarted agent rejoins through (the most recently successful).
SAVED_PEERS_MAX = 8


@dataclass
class MeshOptions:
    """What the command line says about the mesh."""

    mesh_key: str | None = None
    mesh_name: str | None = None
    port: int = DEFAULT_PORT
    bind: str = "0.0.0.0"
    peers: list[Address] = field(default_factory=list)
    relays: list[str] = field(default_factory=list)
    relay_token: str | None = None
    ws_port: int | None = None
    mdns: bool = False
    ble: bool = False
    meshes_file: Path | None = None
    #: mDNS interfaces (None: zeroconf's default, every one); tests use 127.0.0.1.
    mdns_interfaces: list[str] | None = None


@dataclass
class Link:
    """One joined mesh: its node, its saved record's id, its mDNS discovery."""

    mesh_id: str
    node: MeshNode
    mdns: object | None = None


class MeshLinks:
    """Every mesh this agent is a member of. ``meta`` goes to every node."""

    def __init__(self, node_id: str, options: MeshOptions, meta: dict | None = None):
        self.node_id = node_id
        self.options = options
        self.meta = dict(meta or {})
        self.links: list[Link] = []
        self.store: SavedMeshes | None = None
        self._saver: asyncio.Task | None = None
        self._dirty = False
        self._mtime: int | None = None  #: of meshes.json, as we last read or wrote it
        self._agent_lock: int | None = None  #: fd of meshes.json.agent, held while running

    # -- what to join ----------------------------------------------------------------------
    def plan(self) -> list[tuple[SavedMesh | None, str]]:
        """(saved record, mesh key) of each mesh to join, the command line's first; the
        saved record, when there is one, also gives the mesh's keyring and id."""
        opts = self.options
        try:
            self.store = SavedMeshes.load(opts.meshes_file)
            with contextlib.suppress(OSError):
                self._mtime = self.store.path.stat().st_mtime_ns
        except MeshesFileError as exc:
            # reported, left as it is, never overwritten: the agent runs without it
            log.error("%s; saved meshes are not used or updated", exc)
            self.store = None
        joined: list[tuple[SavedMesh | None, str]] = []
        if opts.mesh_key:
            saved = None
            if self.store is not None:
                saved = self.store.add_or_update(
                    opts.mesh_key, opts.mesh_name, founder=None,
                    relay_url=opts.relays[0] if opts.relays else None,
                    relay_token=opts.relay_token if opts.relays else None)
                self._dirty = True
            joined.append((saved, opts.mesh_key))
        if self.store is not None:
            first = joined[0][0].mesh_id if joined and joined[0][0] is not None else None
            for saved in self.store.auto_reconnect():
                if saved.mesh_id != first:
                    joined.append((saved, saved.mesh_key))
        return joined

    def build(self) -> list[Link]:
        """The nodes, one per mesh to join (none: no key given, nothing saved)."""
        for index, (saved, key) in enumerate(self.plan()):
            mesh_id = saved.mesh_id if saved is not None else mesh_id_of(key)
            self.links.append(Link(mesh_id, self._node(index, saved, key, mesh_id)))
        return self.links

    def _node(self, index: int, saved: SavedMesh | None, key: str, mesh_id: str) -> MeshNode:
        opts = self.options
        first = index == 0
        port = opts.port if first else 0
        # LAN broadcast discovery on the first mesh's port only, as MeshConfig decides it
        broadcast = MeshConfig(bind=opts.bind).effective_broadcast_address() if first else None
        udp = UdpTransport(opts.bind, port, broadcast)
        transports: list[Transport] = [udp]
        if first and opts.ws_port is not None:
            from .mesh.transports.websocket import WebSocketTransport

            transports.append(WebSocketTransport(opts.bind, opts.ws_port))
        relays = [(url, opts.relay_token or "") for url in opts.relays] if first else []
        if saved is not None and saved.relay_url and saved.relay_token \
                and saved.relay_url not in {url for url, _ in relays}:
            problem = relay_url_problem(saved.relay_url)
            if problem:  # a hand-edited file: the mesh is joined without that relay
                log.error("saved mesh %s: %s; joining it without that relay", saved.mesh_id, problem)
            else:
                relays.append((saved.relay_url, saved.relay_token))
        if relays:
            from .mesh.transports.relay import RelayTransport

            transports.append(RelayTransport(self.node_id, mesh_id, relays))
        if first and opts.ble:
            from .mesh.transports.ble import BleTransport

            transports.append(BleTransport())
        peers = list(opts.peers) if first else []
        if saved is not None:
            # most recent success first (auto_reconnect's order); a few are enough to rejoin,
            # and each one is sent a discovery every few seconds until then
            for endpoint in saved.endpoints[:SAVED_PEERS_MAX]:
                with contextlib.suppress(ValueError):
                    address = Address.parse(endpoint.address)
                    if address not in peers:
                        peers.append(address)
        keys, encrypt, version = ((saved.keys, saved.encrypt, saved.keyring_version) if saved is not None
                                  else ([key], True, 0))
        return MeshNode(self.node_id, port=port, bind=opts.bind, mesh_key=keys, peers=peers,
                        meta=self.meta, transport=transports if len(transports) > 1 else udp,
                        config=MeshConfig(encrypt=encrypt), keyring_version=version)

    @property
    def primary(self) -> MeshNode | None:
        return self.links[0].node if self.links else None

    # -- running ---------------------------------------------------------------------------
    async def start(self) -> None:
        for link in self.links:
            node = link.node
            node.on_path(self._path_handler(link))
            node.on_member(self._member_handler(link))
            node.on_keyring(self._keyring_handler(link))
            await node.start()
            if self.options.mdns:
                from .mesh.mdns import MdnsDiscovery

                def found(peer: str, addresses: list[Address], node: MeshNode = node) -> None:
                    # mDNS is unauthenticated: what it finds is only asked to join; the
                    # member's own authenticated frames then say where it is
                    for address in addresses:
                        node.add_peer(address)

                link.mdns = MdnsDiscovery(self.node_id, link.mesh_id, node.endpoints, found,
                                          interfaces=self.options.mdns_interfaces)
                try:
                    await link.mdns.start()
                except Exception as exc:  # no multicast here: the mesh goes on without it
                    log.warning("mDNS discovery is off for mesh %s: %s", link.mesh_id, exc)
                    link.mdns = None
        if self.store is not None:
            # ``flowmesh-edge keys`` looks for this to know that an agent will spread its change
            self._agent_lock = hold_agent_lock(self.store.path)
            await self.save()  # a mesh joined from the command line is saved at once
            self._saver = asyncio.get_running_loop().create_task(self._save_every(), name="meshes.json")

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
            self._saver = None
        for link in self.links:
            if link.mdns is not None:
                await link.mdns.close()
                link.mdns = None
            await link.node.stop()
        await self.save()
        if self._agent_lock is not None:
            os.close(self._agent_lock)
            self._agent_lock = None

    def _reached(self, link: Link, peer: str, address: Address, rtt_s: float | None) -> None:
        """A member of the mesh is reached at ``address``: remember it in the saved mesh."""
        if self.store is None or link.mesh_id not in self.store:
            return
        now = time.time()
        self.store.record_endpoint(link.mesh_id, peer, address, rtt_s * 1000 if rtt_s is not None else None,
                                   now)
        self.store.record_connected(link.mesh_id, address.transport, now)
        self._dirty = True

    def _path_handler(self, link: Link) -> Callable[..., None]:
        """A member's first path, and every switch (a joined member's included)."""
        def on_path(peer: str, address: Address, previous: Address | None, rtt_s: float | None) -> None:
            self._reached(link, peer, address, rtt_s)
        return on_path

    def _member_handler(self, link: Link) -> Callable[[MemberEvent, PeerInfo | None], None]:
        """A member back from suspect or dead, on the path it had: no path event says so."""
        def on_member(event: MemberEvent, peer: PeerInfo | None) -> None:
            if event.kind == "recovered" and peer is not None and peer.address.host:
                self._reached(link, peer.node_id, peer.address, None)
        return on_member

    def _keyring_handler(self, link: Link) -> Callable[[int, list[str]], None]:
        """The mesh's keyring changed here (a step of ours, or one taken from a member):
        save it at once, so that a restart starts from it."""
        def on_keyring(version: int, keys: list[str]) -> None:
            if self.store is None or link.mesh_id not in self.store:
                return
            self.store.set_keys(link.mesh_id, keys, version)
            self._dirty = True
            asyncio.get_running_loop().create_task(self.save())
        return on_keyring

    async def _save_every(self) -> None:
        since_save, step = 0.0, min(KEYS_POLL_S, SAVE_EVERY_S)
        while True:
            await asyncio.sleep(step)
            since_save += step
            if self._file_changed():  # another process wrote it: perhaps a forget, or keys
                self._dirty = True
                self._apply_keys_from_file()
            if since_save >= SAVE_EVERY_S:
                since_save = 0.0
                await self.save()

    def _apply_keys_from_file(self) -> None:
        """A keyring changed in the file (``flowmesh-edge keys``): carry it out over the
        mesh, in its safe steps (rotation.py)."""
        try:
            on_disk = SavedMeshes.load(self.store.path)  # type: ignore[union-attr]
            self._mtime = on_disk.path.stat().st_mtime_ns
        except (MeshesFileError, OSError) as exc:
            log.error("%s; keyring changes in it are not applied", exc)
            return
        for link in self.links:
            if link.mesh_id not in on_disk:
                continue
            wanted = on_disk.get(link.mesh_id)
            if link.node.keyring.encrypt != wanted.encrypt:  # flowmesh-edge keys encryption
                link.node.keyring.encrypt = wanted.encrypt
                log.info("mesh %s: encryption %s", link.mesh_id, "on" if wanted.encrypt else "off")
            rotation = link.node.rotation
            held = [k.raw.decode() for k in link.node.keyring.keys]
            if wanted.keys != held and wanted.keyring_version > rotation.version:
                log.info("mesh %s: keyring version %d asked for in %s: spreading it", link.mesh_id,
                         wanted.keyring_version, on_disk.path)
                link.node.spawn(self._change_keys(link, wanted.keys, wanted.keyring_version))

    async def _change_keys(self, link: Link, keys: list[str], version: int) -> None:
        try:
            if not await link.node.rotation.change_to(keys, at_least=version - 1):
                log.warning("mesh %s: not every member acknowledged the keyring change; those that "
                            "did not are sent it when they next talk", link.mesh_id)
        except ValueError as exc:
            log.error("mesh %s: keyring in the file refused: %s", link.mesh_id, exc)

    def _file_changed(self) -> bool:
        try:
            return self.store is not None and self.store.path.stat().st_mtime_ns != self._mtime
        except OSError:
            return False

    async def save(self) -> None:
        """Write meshes.json when something changed; leave the meshes forgotten meanwhile."""
        if self.store is None or not self._dirty:
            return
        self._dirty = False
        try:
            # in the loop's thread: the path and member handlers change the store in it,
            # and it is not made for two threads (a write is a few milliseconds every 30 s)
            forgotten = self.store.save()
            self._mtime = self.store.path.stat().st_mtime_ns
        except (MeshesFileError, OSError) as exc:
            log.error("%s; saved meshes are no longer updated", exc)
            self.store = None
            return
        for link in [x for x in self.links if x.mesh_id in forgotten]:
            log.info("mesh %s was forgotten (flowmesh-edge meshes forget): leaving it", link.mesh_id)
            if link.mdns is not None:
                await link.mdns.close()
            await link.node.stop()
            self.links.remove(link)
