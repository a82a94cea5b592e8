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
from .mesh.keyring import key_id
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
        #: meshes.json as we last read or wrote it (``_identity``)
        self._file_id: tuple[int, int, int] | None = None
        self._changing: set[str] = set()  #: meshes whose wanted ring is being carried out
        self._agent_lock: int | None = None  #: fd of meshes.json.agent, held while running

    # -- what to join ----------------------------------------------------------------------
    def plan(self) -> list[tuple[SavedMesh | None, str]]:
        """(saved record, mesh key) of each mesh to join, the command line's first; the
        saved record, when there is one, also gives the mesh's keyring and id."""
        opts = self.options
        try:
            self.store = SavedMeshes.load(opts.meshes_file)
            with contextlib.suppress(OSError):
                self._file_id = _identity(self.store.path)
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
                if opts.mesh_key not in saved.keys:
                    log.warning("mesh %s: the key given (--mesh-key, %s) was rotated out of it; its saved "
                                "keyring (%s) is used: start the agent without --mesh-key", saved.mesh_id,
                                key_id(opts.mesh_key), " ".join(key_id(k) for k in saved.keys))
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
            self._carry_out(self.store)  # a keyring asked for while no agent ran
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
            if event.kind in ("joined", "recovered"):
                self._carry_out(self.store)  # a keyring asked for waits for the mesh
        return on_member

    def _keyring_handler(self, link: Link) -> Callable[[int, list[str]], None]:
        """The mesh's keyring changed here (a step of ours, or one taken from a member):
        save it at once, so that a restart starts from it."""
        def on_keyring(version: int, keys: list[str]) -> None:
            if self.store is None or link.mesh_id not in self.store:
                return
            self.store.set_keys(link.mesh_id, keys, version)
            self._dirty = True
            link.node.spawn(self.save())  # a task the node holds (and stop() saves anyway)
        return on_keyring

    async def _save_every(self) -> None:
        since_save, step = 0.0, min(KEYS_POLL_S, SAVE_EVERY_S)
        while True:
            await asyncio.sleep(step)
            since_save += step
            if self._file_changed():  # another process wrote it: a forget, or a keys command
                self._dirty = True
                self._read_requests()
            if since_save >= SAVE_EVERY_S:
                since_save = 0.0
                await self.save()  # which also retries a keyring change that stopped short

    def _read_requests(self) -> None:
        """What ``flowmesh-edge keys`` wrote in the file: carry it out."""
        try:
            on_disk = SavedMeshes.load(self.store.path)  # type: ignore[union-attr]
        except MeshesFileError as exc:
            log.error("%s; keyring requests in it are not carried out", exc)
            return
        self._carry_out(on_disk)

    def _carry_out(self, source: SavedMeshes | None) -> None:
        """Apply each mesh's ``encrypt`` and carry out its wanted ring, as ``source`` says."""
        for link in self.links if source is not None else []:
            if link.mesh_id not in source:  # type: ignore[operator]
                continue
            saved = source.get(link.mesh_id)  # type: ignore[union-attr]
            node = link.node
            if node.keyring.encrypt != saved.encrypt:  # flowmesh-edge keys encryption
                node.keyring.encrypt = saved.encrypt
                log.info("mesh %s: encryption %s", link.mesh_id, "on" if saved.encrypt else "off")
            wanted = saved.wanted_keys
            # not before joining (unless there is nobody to join): the steps wait for the
            # members known, and with none known a removal would cut them all off
            joined = bool(node.members.alive()) or not saved.endpoints
            if wanted and joined and link.mesh_id not in self._changing and node.running:
                self._changing.add(link.mesh_id)
                node.spawn(self._change_keys(link, wanted))

    async def _change_keys(self, link: Link, wanted: list[str]) -> None:
        """Carry out a wanted ring over the mesh (rotation.py's steps); once this member's
        ring is that one, clear the request."""
        node = link.node
        try:
            held = [k.raw.decode() for k in node.keyring.keys]
            if held != wanted:
                log.info("mesh %s: carrying out the keyring asked for (%s)", link.mesh_id,
                         " ".join(key_id(k) for k in wanted))
                if not await node.change_keys(wanted):
                    log.warning("mesh %s: the keyring change stopped short (see above); it is tried "
                                "again in %.0f s", link.mesh_id, SAVE_EVERY_S)
                    return
            log.info("mesh %s: keyring %s in place", link.mesh_id, " ".join(key_id(k) for k in wanted))
            if self.store is not None and link.mesh_id in self.store:
                self.store.wanted_done(link.mesh_id, wanted)
                self._dirty = True
                self._changing.discard(link.mesh_id)
                await self.save()  # and carries out a ring asked for meanwhile, if any
        except ValueError as exc:
            log.error("mesh %s: the keyring asked for is refused: %s", link.mesh_id, exc)
        finally:
            self._changing.discard(link.mesh_id)

    def _file_changed(self) -> bool:
        try:
            return self.store is not None and _identity(self.store.path) != self._file_id
        except OSError:
            return False

    async def save(self) -> None:
        """Write meshes.json when something changed; leave the meshes forgotten meanwhile;
        then carry out the keyring asked for in it, if any."""
        if self.store is not None and self._dirty:
            await self._write()
        self._carry_out(self.store)

    async def _write(self) -> None:
        """Write the store, merged with the file; leave the meshes it says were forgotten."""
        self._dirty = False
        try:
            # in the loop's thread: the path and member handlers change the store in it,
            # and it is not made for two threads (a write is a few milliseconds every 30 s)
            forgotten = self.store.save()
            self._file_id = _identity(self.store.path)
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


def _identity(path: Path) -> tuple[int, int, int]:
    """Which version of the file this is: every save replaces it by a new file (a new
    inode), so two saves within the clock's granularity still differ."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size
