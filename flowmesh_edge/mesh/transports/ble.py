"""Bluetooth LE: the mesh over one GATT service (``ble:[AA:BB:CC:DD:EE:FF]:0``).

Every member is both a GATT server (the peripheral, with ``bless``: it
advertises :data:`SERVICE_UUID` and serves two characteristics) and a GATT
client (the central, with ``bleak``: it scans for that service and connects to
the members it finds)::

    FlowMesh service  SERVICE_UUID
      write   WRITE_UUID   write, write-without-response   central -> peripheral
      notify  NOTIFY_UUID  notify, read                    peripheral -> central

A datagram to a member goes down one link: written to its write
characteristic over our own connection to it (made on the first send, kept,
with notifications of its notify characteristic on so it can answer), or, when
that member is a central connected to us (it wrote to us within
``central_ttl_s``) and we have no connection of our own to it, notified on our
notify characteristic. Datagrams (up to 1400 bytes) are cut to the link's ATT
payload, ``MTU - 3`` bytes, and put back together per sender
(:mod:`.ble_fragments`, whose header also names the writer, since a GATT server
does not learn which central wrote, and the destination of a notification,
since every subscribed central receives it).

The address of a member is its adapter's MAC: ``Address("ble", MAC, 0)``. A scan
reports each member found (at first sight, then every ``rediscover_s``) through
``on_discovered``. ``send`` never blocks and never raises: datagrams wait in a
bounded queue per peer, drained by one task per peer; a failed connect or write
is counted in ``errors`` and ``send_failures`` (by reason) and the peer is left
alone for a back-off (1 s doubling to 30 s). Malformed or incomplete fragments
are dropped and counted in ``dropped``.

On a device this needs BlueZ (``bluetoothd``, 5.55 or newer) and a D-Bus
policy that lets the agent's user talk to ``org.bluez`` (the ``bluetooth``
group on Debian). Note that bless sets the adapter's alias to ``local_name``
while serving, as BlueZ advertises the alias as the device name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bless import BlessServer, GATTAttributePermissions, GATTCharacteristicProperties
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_next import Message as NextMessage  # bless's D-Bus library, for its connection
from dbus_next import Variant as NextVariant

from ..address import Address
from ..transport import Discovered, Receiver, Transport
from ..wire import MAX_DATAGRAM
from . import ble_fragments as fragments

log = logging.getLogger(__name__)

BLE = "ble"
#: The FlowMesh GATT service, advertised and scanned for (a random UUID of our own).
SERVICE_UUID = "6f3b1e40-9c2d-4a57-8e61-f10e5a7c0d01"
#: Central -> peripheral: fragments written by the central (write and write-without-response).
WRITE_UUID = "6f3b1e41-9c2d-4a57-8e61-f10e5a7c0d01"
#: Peripheral -> central: fragments notified to the subscribed centrals.
NOTIFY_UUID = "6f3b1e42-9c2d-4a57-8e61-f10e5a7c0d01"
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0


class BleUnavailable(RuntimeError):
    """No usable Bluetooth adapter (no BlueZ on the system bus, no such adapter)."""


@dataclass
class _Peer:
    """One member we send to: its queue, the task draining it, our client link if any."""

    mac: str
    queue: asyncio.Queue
    task: asyncio.Task | None = None
    client: BleakClient | None = None
    mtu: int = fragments.MIN_ATT_MTU
    backoff_s: float = 0.0
    retry_at: float = 0.0
    used: float = 0.0  #: when a datagram was last queued for it
    busy: bool = False  #: a datagram is on its way


@dataclass
class _Central:
    """A central that wrote to our GATT server: the MTU it reported, when it last wrote."""

    mtu: int
    seen: float
    sent: int = 0  #: datagrams notified to it


class BleTransport(Transport):
    """The mesh over Bluetooth LE on one adapter (``hci0``), as GATT server and client."""

    name = BLE

    def __init__(self, adapter: str = "hci0", *, local_name: str = "flowmesh", scan: bool = True,
                 serve: bool = True, scan_window_s: float = 10.0, scan_interval_s: float = 30.0,
                 connect_timeout_s: float = 10.0, io_timeout_s: float = 5.0, queue_limit: int = 64,
                 max_peers: int = 32, reassembly_timeout_s: float = 5.0, central_ttl_s: float = 30.0,
                 rediscover_s: float = 60.0, write_with_response: bool = True):
        """
        ``scan``: look for members (else only the addresses given are reached, bleak
        looking each up when first connecting); ``serve``: run the GATT server and
        advertise (else this member only connects out, and cannot be found).
        ``scan_window_s`` of every ``scan_interval_s`` is spent scanning (equal values
        scan all the time: finds members sooner, costs power and radio time); ``queue_limit``
        datagrams wait per peer, beyond which sends are refused and counted;
        ``write_with_response`` makes every fragment an acknowledged ATT write (slower, but
        the link reports a lost write instead of dropping it silently).
        """
        self.adapter = adapter
        self.local_name = local_name
        self.scan, self.serve = scan, serve
        self.scan_window_s, self.scan_interval_s = scan_window_s, scan_interval_s
        self.connect_timeout_s, self.io_timeout_s = connect_timeout_s, io_timeout_s
        self.queue_limit, self.max_peers = queue_limit, max_peers
        self.central_ttl_s, self.rediscover_s = central_ttl_s, rediscover_s
        self.write_with_response = write_with_response
        self.address = Address(BLE, "00:00:00:00:00:00", 0)  # the adapter's MAC after start
        self.errors = [0]
        self.send_failures: Counter[str] = Counter()
        self._reassembler = fragments.Reassembler(MAX_DATAGRAM, reassembly_timeout_s)
        #: Fragments and datagrams given up, by reason (shared with the reassembler).
        self.dropped: Counter[str] = self._reassembler.dropped
        #: Notifications addressed to another central (every subscriber receives them).
        self.overheard = 0
        self._receiver: Receiver | None = None
        self._discovered: list[Discovered] = []
        self._devices: dict[str, BLEDevice] = {}
        self._announced: dict[str, float] = {}
        self._peers: dict[str, _Peer] = {}
        self._centrals: dict[str, _Central] = {}
        self._message_id = random.getrandbits(16)
        self._server: BlessServer | None = None
        self._scan_task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._scanning = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver
        mac = await adapter_address(self.adapter)
        self.address = Address(BLE, mac, 0)
        self._running = True
        try:
            if self.serve:
                await self._start_server()
            if self.scan:
                self._scan_task = asyncio.create_task(self._scan_loop(), name=f"ble-scan-{self.adapter}")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._running = False
        tasks = [t for t in [self._scan_task, *(p.task for p in self._peers.values())] if t is not None]
        await _cancel(tasks)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._scan_task = None
        for peer in self._peers.values():
            await self._drop_client(peer)
        self._peers.clear()
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(Exception):
                await _within(server.stop(), self.io_timeout_s)
            with contextlib.suppress(Exception):
                server.bus.disconnect()
                await _within(server.bus.wait_for_disconnect(), self.io_timeout_s)
            with contextlib.suppress(Exception):
                server.bus._sock.close()  # dbus-next shuts its socket down but never closes it

    # -- the interface -----------------------------------------------------------------
    def send(self, data: bytes, address: Address) -> None:
        if not self._running:
            return
        reason = None
        if address.transport != BLE:
            reason = "not_ble"
        elif len(data) > MAX_DATAGRAM:
            reason = "oversized"
        else:
            try:
                fragments.mac_bytes(address.host)
            except ValueError:
                reason = "bad_address"
        if reason is None:
            peer = self._peer(address.host.upper())
            if peer is None:
                reason = "too_many_peers"
            elif time.monotonic() < peer.retry_at:
                reason = "backoff"
            else:
                try:
                    peer.queue.put_nowait(bytes(data))
                    return
                except asyncio.QueueFull:
                    reason = "queue_full"
        self.errors[0] += 1
        self.send_failures[reason] += 1

    def on_discovered(self, callback: Discovered) -> None:
        self._discovered.append(callback)

    def stats(self) -> dict:
        return {"peers": {mac: {"linked": bool(p.client and p.client.is_connected), "mtu": p.mtu,
                                "queued": p.queue.qsize()} for mac, p in self._peers.items()},
                "centrals": sorted(self._centrals), "errors": self.errors[0],
                "send_failures": dict(self.send_failures), "dropped": dict(self.dropped),
                "overheard": self.overheard}

    # -- sending -----------------------------------------------------------------------
    def _peer(self, mac: str) -> _Peer | None:
        peer = self._peers.get(mac)
        if peer is None:
            if len(self._peers) >= self.max_peers and not self._retire_idle_peer():
                return None
            peer = self._peers[mac] = _Peer(mac, asyncio.Queue(self.queue_limit))
            peer.task = asyncio.create_task(self._drain(peer), name=f"ble-send-{mac}")
        peer.used = time.monotonic()
        return peer

    def _retire_idle_peer(self) -> bool:
        """Make room: the least recently used peer with nothing queued is let go."""
        idle = [p for p in self._peers.values() if p.queue.empty() and not p.busy]
        if not idle:
            return False
        peer = min(idle, key=lambda p: p.used)
        del self._peers[peer.mac]
        task = asyncio.create_task(self._retire(peer), name=f"ble-retire-{peer.mac}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, peer: _Peer) -> None:
        if peer.task is not None:
            await _cancel([peer.task])
        await self._drop_client(peer)

    async def _drain(self, peer: _Peer) -> None:
        while True:
            data = await peer.queue.get()
            if time.monotonic() < peer.retry_at:
                self.errors[0] += 1
                self.send_failures["backoff"] += 1
                continue
            peer.busy = True
            try:
                await self._deliver(peer, data)
                peer.backoff_s = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # bleak, D-Bus and timeout errors: the link is gone
                self.errors[0] += 1
                self.send_failures["link"] += 1
                peer.backoff_s = min(_BACKOFF_MAX_S, max(_BACKOFF_FIRST_S, peer.backoff_s * 2))
                peer.retry_at = time.monotonic() + peer.backoff_s * random.uniform(0.8, 1.2)
                log.info("BLE link to %s failed (%s: %s); retrying in %.1f s",
                         peer.mac, type(e).__name__, e, peer.backoff_s)
                self._devices.pop(peer.mac, None)  # BlueZ may have forgotten it: the scan finds it anew
                await self._drop_client(peer)
            finally:
                peer.busy = False

    async def _deliver(self, peer: _Peer, data: bytes) -> None:
        central = self._centrals.get(peer.mac)
        linked = peer.client is not None and peer.client.is_connected
        if not linked and central is not None and self._server is not None \
                and time.monotonic() - central.seen < self.central_ttl_s:
            await self._notify(peer.mac, central, data)
            return
        client = await self._connect(peer)
        for fragment in fragments.split(data, self._next_message_id(), self.address.host, peer.mtu):
            await _within(client.write_gatt_char(WRITE_UUID, fragment, response=self.write_with_response),
                          self.io_timeout_s)

    async def _notify(self, mac: str, central: _Central, data: bytes) -> None:
        """Notify each fragment as BlueZ expects of a GATT server: a PropertiesChanged of
        the characteristic's Value. Sent one at a time, each awaited until written:
        bless's update_value queues them all at once, and its D-Bus library (dbus-next)
        drops the connection when the socket pushes back (EAGAIN) under such a burst."""
        assert self._server is not None
        bus = self._server.bus
        gatt = self._server.get_characteristic(NOTIFY_UUID).gatt
        for fragment in fragments.split(data, self._next_message_id(), mac, central.mtu):
            gatt._value = fragment  # what a read returns, as update_value would leave it
            signal = NextMessage.new_signal(gatt.path, "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                            "sa{sv}as", [gatt.interface_name,
                                                         {"Value": NextVariant("ay", fragment)}, []])
            await _within(bus.send(signal), self.io_timeout_s)
        central.sent += 1

    async def _connect(self, peer: _Peer) -> BleakClient:
        if peer.client is not None and peer.client.is_connected:
            return peer.client
        await self._drop_client(peer)
        if peer.mac not in self._devices and self._scanning:
            deadline = time.monotonic() + self.connect_timeout_s
            while peer.mac not in self._devices and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # our scan may see it: one scan per adapter at a time
        target = self._devices.get(peer.mac, peer.mac)  # a bare MAC makes bleak scan for it
        client = BleakClient(target, timeout=self.connect_timeout_s, bluez={"adapter": self.adapter})
        peer.client = client
        await _within(client.connect(), self.connect_timeout_s + 1)
        write = client.services.get_characteristic(WRITE_UUID)
        if write is None or client.services.get_characteristic(NOTIFY_UUID) is None:
            raise BleUnavailable(f"{peer.mac} does not serve the FlowMesh GATT service")
        peer.mtu = write.max_write_without_response_size + fragments.ATT_OVERHEAD
        await _within(client.start_notify(NOTIFY_UUID, partial(self._on_notification, peer.mac)),
                      self.io_timeout_s)
        log.info("BLE link to %s up (ATT MTU %d)", peer.mac, peer.mtu)
        return client

    async def _drop_client(self, peer: _Peer) -> None:
        client, peer.client = peer.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await _within(client.disconnect(), self.io_timeout_s)

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        return self._message_id

    # -- receiving ---------------------------------------------------------------------
    def _on_write(self, characteristic, value) -> None:
        """bless: a central wrote a fragment to our write characteristic."""
        if str(characteristic.uuid).lower() != WRITE_UUID:
            self.dropped["unexpected_write"] += 1
            return
        fragment = fragments.parse(bytes(value))
        if fragment is None:
            self._reassembler.feed("", None)
            return
        mtu, now = max(fragment.mtu, fragments.MIN_ATT_MTU), time.monotonic()
        central = self._centrals.get(fragment.peer)
        if central is None:
            if len(self._centrals) >= self.max_peers:  # forget the longest silent
                del self._centrals[min(self._centrals, key=lambda m: self._centrals[m].seen)]
            central = self._centrals[fragment.peer] = _Central(mtu, now)
        central.mtu, central.seen = mtu, now
        self._deliver_up("w/" + fragment.peer, fragment.peer, fragment)

    def _on_notification(self, mac: str, _characteristic, value: bytearray) -> None:
        """bleak: the peripheral ``mac`` notified a fragment."""
        fragment = fragments.parse(bytes(value))
        if fragment is None:
            self._reassembler.feed("", None)
            return
        if fragment.peer != self.address.host:
            self.overheard += 1
            return
        self._deliver_up("n/" + mac, mac, fragment)

    def _deliver_up(self, key: str, mac: str, fragment: fragments.Fragment) -> None:
        data = self._reassembler.feed(key, fragment)
        if data is not None and self._receiver is not None:
            try:
                self._receiver(data, Address(BLE, mac, 0))
            except Exception:  # the receiver must not raise; never into bless or bleak either
                self.dropped["receiver_error"] += 1
                log.exception("BLE receiver failed")

    def _read(self, characteristic, **_kwargs) -> bytearray:
        return bytearray()

    # -- discovery ---------------------------------------------------------------------
    async def _scan_loop(self) -> None:
        continuous = self.scan_window_s >= self.scan_interval_s
        while self._running:
            scanner = BleakScanner(self._on_advertisement, service_uuids=[SERVICE_UUID],
                                   bluez={"adapter": self.adapter})
            try:
                await _within(scanner.start(), self.io_timeout_s)
                self._scanning = True
                try:
                    await asyncio.sleep(float("inf") if continuous else self.scan_window_s)
                finally:
                    self._scanning = False
                    with contextlib.suppress(Exception):
                        await _within(scanner.stop(), self.io_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors[0] += 1
                self.send_failures["scan"] += 1
                log.info("BLE scan on %s failed: %s", self.adapter, e)
            await asyncio.sleep(max(self.scan_interval_s - self.scan_window_s, _BACKOFF_FIRST_S))

    def _on_advertisement(self, device: BLEDevice, _advertisement) -> None:
        mac = device.address.upper()
        if mac == self.address.host:
            return
        if mac not in self._devices and len(self._devices) >= 4 * self.max_peers:
            self._devices.pop(next(iter(self._devices)))
        self._devices[mac] = device
        now = time.monotonic()
        if now - self._announced.get(mac, -self.rediscover_s - 1) <= self.rediscover_s:
            return
        if mac not in self._announced and len(self._announced) >= 4 * self.max_peers:
            del self._announced[min(self._announced, key=self._announced.__getitem__)]
        self._announced[mac] = now
        for callback in self._discovered:
            try:
                callback(Address(BLE, mac, 0))
            except Exception:
                log.exception("BLE discovery callback failed")

    # -- the GATT server ---------------------------------------------------------------
    async def _start_server(self) -> None:
        loop = asyncio.get_running_loop()
        server = BlessServer(name=self.local_name, loop=loop, adapter=self.adapter)
        self._server = server
        server.read_request_func = self._read
        server.write_request_func = self._on_write
        await _within(server.add_new_service(SERVICE_UUID), self.io_timeout_s)
        await server.add_new_characteristic(
            SERVICE_UUID, WRITE_UUID,
            GATTCharacteristicProperties.write | GATTCharacteristicProperties.write_without_response,
            None, GATTAttributePermissions.writeable)
        await server.add_new_characteristic(
            SERVICE_UUID, NOTIFY_UUID,
            GATTCharacteristicProperties.notify | GATTCharacteristicProperties.read,
            bytearray(), GATTAttributePermissions.readable)
        await _within(server.start(), self.io_timeout_s)


async def _within(awaitable, seconds: float):
    """``asyncio.wait_for`` without its flaw before Python 3.12: a cancellation that
    arrives just as the awaited completes is lost there (the caller's loop then runs on
    after ``close`` cancelled it); ``asyncio.timeout`` keeps it."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel and await, cancelling again any task that let a cancellation pass (bounded)."""
    for _ in range(20):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
    log.warning("BLE tasks still running after being cancelled: %s", [t.get_name() for t in pending])


async def adapter_address(adapter: str) -> str:
    """The MAC of a BlueZ adapter (``hci0``), read over the system bus."""
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except Exception as e:
        raise BleUnavailable(f"no system D-Bus for BlueZ: {e}") from e
    try:
        reply = await _within(bus.call(Message(
            destination="org.bluez", path=f"/org/bluez/{adapter}",
            interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
            body=["org.bluez.Adapter1", "Address"])), 10)
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await _within(bus.wait_for_disconnect(), 5)
    if reply is None or reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        raise BleUnavailable(f"Bluetooth adapter {adapter} not found through BlueZ ({detail})")
    return str(reply.body[0].value).upper()
