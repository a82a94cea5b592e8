"""Saved meshes: every mesh this device joined, so that it rejoins them by itself.

One JSON file, ``<data dir>/meshes.json`` (see :func:`default_path`), mode
0600 because it holds mesh keys and relay tokens::

    {"version": 2, "meshes": [{"id": "3f2a...", "name": "home", "keys": ["...", "..."],
      "encrypt": true,
      "founder": "pi-kitchen", "relay_url": "wss://relay.example:8765", "relay_token": "...",
      "joined_at": "2026-11-22T08:30:00+00:00", "last_connected": "...",
      "connected_via": "relay", "auto_reconnect": true,
      "endpoints": [{"node": "pi-hall", "address": "udp:192.0.2.7:7946",
                     "last_seen": "...", "rtt_ms": 3.2, "last_success": "..."}]}]}

Times are ISO 8601 in UTC in the file and Unix seconds (``time.time()``) in
Python.

``keys`` is the mesh's keyring, primary first: the primary signs (and, with
``encrypt``, encrypts) what this device sends, and every key is accepted from
others, so that a key is rotated without a flag day (see
:mod:`flowmesh_edge.mesh.keyring`). The id is
:func:`~flowmesh_edge.mesh.security.mesh_id_of` the key the mesh was founded
(or first joined) with, and stays the mesh's name through rotations. Version
1 files (one ``key``, whose id the id had to be) are read and written as
version 2.

Never losing the file matters more than loading it: a file that cannot be
read (bad JSON, a wrong type, an unknown version, permission denied) raises
:class:`MeshesFileError`, one line naming the file and the problem, and is
left as it is. ``load(path, lenient=True)`` gives an agent an empty store
that refuses to save instead, so it runs without its saved meshes and never
overwrites them. A file readable by group or others is reported when loaded
and written 0600 on the next save.

Saving is atomic (a 0600 temporary file in the same directory, fsync, rename,
fsync of the directory) and merges with what is on disk under a lock file:
the agent and ``flowmesh-edge meshes forget`` can both hold the store, and a
mesh forgotten by one is not brought back by the other's next save (see
:meth:`SavedMeshes.save`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .mesh.address import Address
from .mesh.keyring import check_keyring
from .mesh.security import mesh_id_of

log = logging.getLogger("flowmesh_edge.meshes")

FILE_NAME = "meshes.json"
#: The file's layout; a file of another version is refused, not guessed at.
SCHEMA_VERSION = 2
#: Versions read: 1 had a single ``key`` and no ``encrypt`` (read as encrypted: every
#: member of a mesh of version-5 frames accepts encrypted frames).
READABLE_VERSIONS = (1, 2)
#: Endpoints remembered per mesh: the least recently seen goes first beyond it.
#: 64 covers every path (UDP, WebSocket, relay, BLE) of a 16-member mesh.
MAX_ENDPOINTS = 64
#: A mesh id: 16 hex digits (security.mesh_id_of).
_MESH_ID = re.compile(r"[0-9a-f]{16}")
#: Mode of the file (and of its temporary copy): it holds keys.
FILE_MODE = 0o600

#: ``report(message)``: how ``load`` tells of a file with a loose mode.
Report = Callable[[str], None]


class MeshesFileError(Exception):
    """The saved meshes file cannot be read or written; one line naming the file."""


class MeshNotFound(LookupError):
    """No saved mesh, or more than one, matches what was asked for."""

    def __str__(self) -> str:  # KeyError-style quoting is not wanted in messages
        return str(self.args[0]) if self.args else "no such mesh"


@dataclass
class KnownEndpoint:
    """Where a member of a saved mesh was reached (or heard of)."""

    node_id: str
    #: :class:`~flowmesh_edge.mesh.address.Address` text form, ``udp:192.0.2.7:7946``.
    address: str
    #: When it was last heard of or from (Unix seconds).
    last_seen: float | None = None
    #: Last measured round trip, in milliseconds.
    rtt_ms: float | None = None
    #: When it last answered (a round trip was measured); reconnection tries the
    #: most recent first.
    last_success: float | None = None


@dataclass
class SavedMesh:
    """One mesh this device joined. ``repr`` never shows a key, the token or the relay URL."""

    #: The primary key: what this device signs and encrypts with.
    mesh_key: str = field(repr=False)
    name: str
    joined_at: float
    founder: str | None = None
    relay_url: str | None = field(default=None, repr=False)  # may carry a credential
    relay_token: str | None = field(default=None, repr=False)
    endpoints: list[KnownEndpoint] = field(default_factory=list)
    #: When a member was last reached, and over which transport (``udp``, ``relay``...).
    last_connected: float | None = None
    connected_via: str | None = None
    auto_reconnect: bool = True
    #: Keys still accepted besides the primary (a rotation under way), newest first.
    secondary_keys: list[str] = field(default_factory=list, repr=False)
    #: The mesh's id; default: the id of ``mesh_key`` (a mesh founded or joined with it).
    mesh_id: str = ""
    #: Whether this device encrypts what it sends (it accepts both kinds; keyring.py).
    encrypt: bool = True
    #: How many keyring changes the mesh has seen: a change spread over the mesh is
    #: taken only when newer than the keyring held (rotation.py).
    keyring_version: int = 0

    def __post_init__(self) -> None:
        if not self.mesh_id:
            self.mesh_id = mesh_id_of(self.mesh_key)

    @property
    def keys(self) -> list[str]:
        """The keyring, primary first."""
        return [self.mesh_key, *self.secondary_keys]

    @property
    def last_seen(self) -> float | None:
        """The latest sign of life of the mesh: a connection or an endpoint heard of."""
        times = [t for t in (self.last_connected, *(e.last_seen for e in self.endpoints)) if t is not None]
        return max(times, default=None)

    def endpoints_by_success(self) -> list[KnownEndpoint]:
        """Most recent success first, then most recently seen, then fastest;
        never-answered endpoints after every answered one."""
        return sorted(self.endpoints, key=lambda e: (
            e.last_success is None, -(e.last_success or 0.0), -(e.last_seen or 0.0),
            e.rtt_ms if e.rtt_ms is not None else float("inf")))


def default_path() -> Path:
    """``<data dir>/meshes.json`` (the data dir from ``FLOWMESH_DATA_DIR`` or the user's)."""
    from flowmesh import settings

    return settings.data_dir() / FILE_NAME


class SavedMeshes:
    """The saved meshes of one file. Changes are in memory until :meth:`save`, and
    are made through the methods below (a ``SavedMesh`` changed by hand is not
    known to have changed, and the file's copy wins at the next save)."""

    def __init__(self, path: Path | str, meshes: list[SavedMesh] | None = None):
        """``meshes`` (usually none: see :meth:`load`) are saved by the next ``save``."""
        self.path = Path(path)
        self._meshes: dict[str, SavedMesh] = {m.mesh_id: m for m in meshes or []}
        #: Why the file could not be loaded (``lenient`` loads only); ``save`` then refuses.
        self.error: MeshesFileError | None = None
        #: What was loaded with a problem worth telling (a loose file mode).
        self.warnings: list[str] = []
        self._on_disk: set[str] = set()  # ids in the file as of the last load or save
        self._changed: set[str] = set(self._meshes)  # ids added or changed here since then
        self._joined: set[str] = set(self._meshes)  # ids added here (add_or_update) since then
        self._forgotten: set[str] = set()  # ids forgotten here since then
        #: ids whose keyring changed here since then: only those keyrings overwrite the
        #: file's (the agent recording endpoints must not undo a ``keys`` command's change)
        self._keys_changed: set[str] = set(self._meshes)

    # -- loading ----------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str | None = None, *, lenient: bool = False,
             report: Report | None = None) -> SavedMeshes:
        """The meshes in ``path`` (default :func:`default_path`); a missing file is none.

        Raises :class:`MeshesFileError` when the file cannot be read or makes no
        sense, unless ``lenient``: then an empty store whose ``error`` says why and
        whose ``save`` refuses. A loose mode is told to ``report`` (default: a
        warning in the log) and kept in ``warnings``.
        """
        store = cls(path if path is not None else default_path())
        try:
            meshes, warning = _read(store.path)
        except MeshesFileError as exc:
            if not lenient:
                raise
            store.error = exc
            return store
        store._meshes = {m.mesh_id: m for m in meshes}
        store._on_disk = set(store._meshes)
        if warning:
            store.warnings.append(warning)
            (report or log.warning)(warning)
        return store

    # -- reading ----------------------------------------------------------

    def __iter__(self) -> Iterator[SavedMesh]:
        return iter(list(self._meshes.values()))

    def __len__(self) -> int:
        return len(self._meshes)

    def __contains__(self, mesh_id: object) -> bool:
        return mesh_id in self._meshes

    def get(self, mesh_id: str) -> SavedMesh:
        try:
            return self._meshes[mesh_id]
        except KeyError:
            raise MeshNotFound(f"no saved mesh {mesh_id}") from None

    def find(self, prefix: str) -> SavedMesh:
        """The mesh whose id is ``prefix`` or starts with it, when only one does."""
        prefix = prefix.strip().lower()
        if not prefix:
            raise MeshNotFound("no mesh id given")
        if prefix in self._meshes:
            return self._meshes[prefix]
        matches = sorted(i for i in self._meshes if i.startswith(prefix))
        if not matches:
            raise MeshNotFound(f"no saved mesh has an id starting with {prefix!r}")
        if len(matches) > 1:
            raise MeshNotFound(f"{prefix!r} matches {len(matches)} saved meshes "
                               f"({', '.join(matches)}); give more of the id")
        return self._meshes[matches[0]]

    def auto_reconnect(self) -> list[SavedMesh]:
        """The meshes to rejoin at start-up, most recently connected first, each a
        copy with its endpoints in the order to try them (by last success)."""
        meshes = [m for m in self._meshes.values() if m.auto_reconnect]
        meshes.sort(key=lambda m: -(m.last_connected or 0.0))
        out = []
        for mesh in meshes:
            ordered = copy.deepcopy(mesh)
            ordered.endpoints = ordered.endpoints_by_success()
            out.append(ordered)
        return out

    # -- changing ---------------------------------------------------------

    def holding(self, key: str) -> SavedMesh | None:
        """The saved mesh whose keyring holds ``key``, if any."""
        return next((m for m in self._meshes.values() if key in m.keys), None)

    def add_or_update(self, mesh_key: str, name: str | None = None, *, founder: str | None = None,
                      relay_url: str | None = None, relay_token: str | None = None,
                      auto_reconnect: bool | None = None, at: float | None = None,
                      mesh_id: str | None = None, secondary_keys: list[str] | None = None,
                      encrypt: bool | None = None, keyring_version: int | None = None) -> SavedMesh:
        """Remember a mesh on joining it. Its id is ``mesh_id`` (a mesh joined by
        pairing: the id it has), else that of the saved mesh holding ``mesh_key`` in
        its keyring, else the key's own. Joining again keeps what is known
        (endpoints, joined at) and changes what is given; a ``mesh_key`` its ring does
        not hold becomes its primary, and ``secondary_keys`` (when given) the rest of
        its keyring, ``mesh_key`` then primary."""
        check_keyring([mesh_key, *(secondary_keys or [])])
        if mesh_id is None:
            holder = self.holding(mesh_key)
            mesh_id = holder.mesh_id if holder is not None else mesh_id_of(mesh_key)
        mesh = self._meshes.get(mesh_id)
        if mesh is None:
            mesh = SavedMesh(mesh_key=mesh_key, name=name or mesh_id, mesh_id=mesh_id,
                             secondary_keys=list(secondary_keys or []),
                             joined_at=at if at is not None else time.time())
            self._meshes[mesh_id] = mesh
            self._keys_changed.add(mesh_id)
        else:
            if name:
                mesh.name = name
            # a key the ring holds already stays where it is (``run --mesh-key`` with a key
            # since rotated to secondary must not undo the rotation); a new one leads
            if secondary_keys is not None or mesh_key not in mesh.keys:
                rest = secondary_keys if secondary_keys is not None else mesh.keys
                self._set_keys(mesh, [mesh_key, *rest])
        for attribute, value in (("founder", founder), ("relay_url", relay_url),
                                 ("relay_token", relay_token), ("auto_reconnect", auto_reconnect),
                                 ("encrypt", encrypt)):
            if value is not None:
                setattr(mesh, attribute, value)
        if keyring_version is not None and keyring_version != mesh.keyring_version:
            mesh.keyring_version = keyring_version
            self._keys_changed.add(mesh_id)
        self._touch(mesh_id)
        self._joined.add(mesh_id)
        return mesh

    def set_keys(self, mesh_id: str, keys: list[str], version: int) -> SavedMesh:
        """Make ``keys`` (primary first) the mesh's keyring, at keyring ``version``;
        ValueError for a bad one."""
        mesh = self.get(mesh_id)
        self._set_keys(mesh, keys)
        if version != mesh.keyring_version:
            mesh.keyring_version = version
            self._keys_changed.add(mesh_id)
        self._touch(mesh_id)
        return mesh

    def _set_keys(self, mesh: SavedMesh, keys: list[str]) -> None:
        keys = list(dict.fromkeys(keys))  # a key once, first place kept
        check_keyring(keys)
        if keys != mesh.keys:
            mesh.mesh_key, mesh.secondary_keys = keys[0], keys[1:]
            self._keys_changed.add(mesh.mesh_id)

    def record_endpoint(self, mesh_id: str, node_id: str, address: Address | str,
                        rtt_ms: float | None, seen_at: float) -> KnownEndpoint:
        """A member of the mesh heard of at ``address``; with ``rtt_ms`` it answered
        there (a success). Beyond MAX_ENDPOINTS the least recently seen is dropped."""
        mesh = self.get(mesh_id)
        text = str(Address.of(address))
        endpoint = next((e for e in mesh.endpoints if e.node_id == node_id and e.address == text), None)
        if endpoint is None:
            endpoint = KnownEndpoint(node_id, text)
            mesh.endpoints.append(endpoint)
        endpoint.last_seen = max(seen_at, endpoint.last_seen or seen_at)
        if rtt_ms is not None:
            if not math.isfinite(rtt_ms) or rtt_ms < 0:
                raise ValueError(f"a round trip of {rtt_ms} ms")
            endpoint.rtt_ms = float(rtt_ms)
            endpoint.last_success = max(seen_at, endpoint.last_success or seen_at)
        if len(mesh.endpoints) > MAX_ENDPOINTS:
            mesh.endpoints.sort(key=lambda e: -(e.last_seen or 0.0))
            del mesh.endpoints[MAX_ENDPOINTS:]
        self._touch(mesh_id)
        return endpoint

    def record_connected(self, mesh_id: str, via: str, at: float) -> None:
        """A member of the mesh was reached over transport ``via`` at ``at``."""
        mesh = self.get(mesh_id)
        mesh.last_connected, mesh.connected_via = at, via
        self._touch(mesh_id)

    def set_auto_reconnect(self, mesh_id: str, on: bool) -> None:
        self.get(mesh_id).auto_reconnect = on
        self._touch(mesh_id)

    def forget(self, mesh_id: str) -> SavedMesh:
        """Remove a mesh (its key with it) at the next save; returns what was removed."""
        mesh = self.get(mesh_id)
        del self._meshes[mesh_id]
        self._changed.discard(mesh_id)
        self._keys_changed.discard(mesh_id)
        self._joined.discard(mesh_id)
        self._forgotten.add(mesh_id)
        return mesh

    def _touch(self, mesh_id: str) -> None:
        self._changed.add(mesh_id)
        self._forgotten.discard(mesh_id)

    # -- saving -----------------------------------------------------------

    def save(self) -> set[str]:
        """Write the file atomically, 0600, merged with what another process
        (the agent, the CLI) saved since our load: meshes changed here are written
        as they are here, meshes forgotten here are removed, and the rest are
        taken from the file. A mesh forgotten elsewhere (in our last load or save,
        gone from the file now) is dropped here too unless it was joined here
        since (``add_or_update``): recording endpoints does not bring it back.
        Returns the ids of the meshes so dropped (an agent leaves them).

        Refuses (MeshesFileError) when the file could not be loaded, or cannot
        be read now: what is there is never replaced by what we do not know."""
        if self.error is not None:
            raise MeshesFileError(f"{self.path}: not saved, the file could not be loaded "
                                  f"({_problem_of(self.error)})")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise MeshesFileError(f"{self.path}: cannot create its directory: {_os_problem(exc)}") from None
        with self._lock():
            on_disk, _ = _read(self.path)
            merged = {m.mesh_id: m for m in on_disk}
            gone = (self._on_disk - set(merged)) - self._joined
            for mesh_id in self._forgotten:
                merged.pop(mesh_id, None)
            for mesh_id in self._changed - gone:
                if mesh_id in self._meshes:
                    ours, theirs = self._meshes[mesh_id], merged.get(mesh_id)
                    if theirs is not None and mesh_id not in self._keys_changed:
                        ours.mesh_key, ours.secondary_keys = theirs.mesh_key, list(theirs.secondary_keys)
                        ours.keyring_version = theirs.keyring_version
                    merged[mesh_id] = ours
            # in the order joined, so that the file reads (and diffs) the same every time
            merged = dict(sorted(merged.items(), key=lambda item: (item[1].joined_at, item[0])))
            _write_atomically(self.path, _dump(list(merged.values())))
        self._meshes = merged
        self._on_disk = set(merged)
        self._changed.clear()
        self._keys_changed.clear()
        self._joined.clear()
        self._forgotten.clear()
        return gone

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One saver at a time (an advisory lock on ``meshes.json.lock``, also 0600)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise MeshesFileError(f"{lock_path}: cannot open the lock file: {_os_problem(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# -- is an agent running on this file? ------------------------------------------


def _agent_marker(path: Path) -> Path:
    return path.with_name(path.name + ".agent")


def hold_agent_lock(path: Path) -> int | None:
    """Say, while the returned descriptor is open, that an agent runs on ``path``: a
    shared lock on ``<file>.agent`` (0600), which ``agent_running`` tests. None when
    the lock file cannot be made (the agent runs anyway)."""
    try:
        fd = os.open(_agent_marker(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        log.warning("%s: cannot open it: %s", _agent_marker(path), _os_problem(exc))
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def agent_running(path: Path) -> bool:
    """Whether an agent holds ``path`` (``hold_agent_lock``), so that a keyring change
    written in it is spread over the mesh."""
    try:
        fd = os.open(_agent_marker(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# -- the file -----------------------------------------------------------------


def _read(path: Path) -> tuple[list[SavedMesh], str | None]:
    """The meshes in the file and a warning about its mode, or MeshesFileError."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise MeshesFileError(f"{path}: cannot read it: {_os_problem(exc)}") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MeshesFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MeshesFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} "
                              f"column {exc.colno})") from None
    try:
        meshes = _parse(document)
    except _Invalid as exc:
        raise MeshesFileError(f"{path}: {exc}") from None
    warning = None
    if mode & 0o077:
        warning = (f"{path} is open to group or others (mode {stat.S_IMODE(mode):04o}) and holds "
                   f"mesh keys; it will be written {FILE_MODE:04o} on the next save")
    return meshes, warning


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise MeshesFileError(f"{path}: cannot write it: {_os_problem(exc)}") from None


def _os_problem(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _problem_of(error: MeshesFileError) -> str:
    return str(error).split(": ", 1)[-1]


class _Invalid(ValueError):
    """What is wrong in the document, and where (``meshes[0].endpoints[2].rtt_ms``)."""


_MESH_FIELDS = {"id", "name", "keys", "encrypt", "keyring_version", "founder", "relay_url", "relay_token",
                "joined_at", "last_connected", "connected_via", "auto_reconnect", "endpoints"}
#: Version 1 had one key and no choice of encryption.
_MESH_FIELDS_V1 = (_MESH_FIELDS - {"keys", "encrypt", "keyring_version"}) | {"key"}
_ENDPOINT_FIELDS = {"node", "address", "last_seen", "rtt_ms", "last_success"}


def _parse(document: object) -> list[SavedMesh]:
    if not isinstance(document, dict):
        raise _Invalid(f"expected a JSON object, found {_kind(document)}")
    version = document.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise _Invalid(f"unknown version {version!r} (this agent reads versions "
                       f"{', '.join(map(str, READABLE_VERSIONS))})")
    unknown = set(document) - {"version", "meshes"}
    if unknown:
        raise _Invalid(f"unknown field {sorted(unknown)[0]!r}")
    items = document.get("meshes")
    if not isinstance(items, list):
        raise _Invalid(f"meshes: expected a list, found {_kind(items)}")
    meshes: list[SavedMesh] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        mesh = _parse_mesh(item, f"meshes[{index}]", version)
        if mesh.mesh_id in seen:
            raise _Invalid(f"meshes[{index}]: mesh {mesh.mesh_id} appears twice")
        seen.add(mesh.mesh_id)
        meshes.append(mesh)
    return meshes


def _parse_mesh(item: object, where: str, version: int) -> SavedMesh:
    fields = _object(item, where, _MESH_FIELDS if version == SCHEMA_VERSION else _MESH_FIELDS_V1)
    mesh_id = _string(fields, "id", where)
    if version == 1:
        keys = [_string(fields, "key", where)]
        if len(keys[0].encode()) < 16:
            raise _Invalid(f"{where}.key: shorter than 16 bytes")
        if mesh_id != mesh_id_of(keys[0]):
            raise _Invalid(f"{where}.id: {mesh_id} is not the id of its key")
    else:
        keys = fields.get("keys")
        if not isinstance(keys, list) or not keys:
            raise _Invalid(f"{where}.keys: expected a list of keys, primary first, found {_kind(keys)}")
        try:
            check_keyring(keys)
        except ValueError as exc:
            raise _Invalid(f"{where}.keys: {exc}") from None
    if not _MESH_ID.fullmatch(mesh_id):
        raise _Invalid(f"{where}.id: expected 16 hex digits")
    encrypt = fields.get("encrypt", True)
    if not isinstance(encrypt, bool):
        raise _Invalid(f"{where}.encrypt: expected true or false, found {_kind(encrypt)}")
    keyring_version = fields.get("keyring_version", 0)
    if type(keyring_version) is not int or keyring_version < 0:
        raise _Invalid(f"{where}.keyring_version: expected a whole number, found {_kind(keyring_version)}")
    endpoints = fields.get("endpoints", [])
    if not isinstance(endpoints, list):
        raise _Invalid(f"{where}.endpoints: expected a list, found {_kind(endpoints)}")
    auto = fields.get("auto_reconnect", True)
    if not isinstance(auto, bool):
        raise _Invalid(f"{where}.auto_reconnect: expected true or false, found {_kind(auto)}")
    return SavedMesh(
        mesh_key=keys[0], secondary_keys=keys[1:], mesh_id=mesh_id, encrypt=encrypt,
        keyring_version=keyring_version,
        name=_string(fields, "name", where),
        joined_at=_time(fields, "joined_at", where, required=True),
        founder=_string(fields, "founder", where, required=False),
        relay_url=_string(fields, "relay_url", where, required=False),
        relay_token=_string(fields, "relay_token", where, required=False),
        endpoints=[_parse_endpoint(e, f"{where}.endpoints[{i}]") for i, e in enumerate(endpoints)],
        last_connected=_time(fields, "last_connected", where),
        connected_via=_string(fields, "connected_via", where, required=False),
        auto_reconnect=auto,
    )


def _parse_endpoint(item: object, where: str) -> KnownEndpoint:
    fields = _object(item, where, _ENDPOINT_FIELDS)
    address = _string(fields, "address", where)
    try:
        Address.parse(address)
    except ValueError:
        raise _Invalid(f"{where}.address: {address!r} is not transport:host:port") from None
    rtt = fields.get("rtt_ms")
    if rtt is not None and (isinstance(rtt, bool) or not isinstance(rtt, int | float)
                            or not math.isfinite(rtt) or rtt < 0):
        raise _Invalid(f"{where}.rtt_ms: expected a number of milliseconds, found {_kind(rtt)}")
    return KnownEndpoint(node_id=_string(fields, "node", where), address=address,
                         last_seen=_time(fields, "last_seen", where), rtt_ms=rtt,
                         last_success=_time(fields, "last_success", where))


def _object(item: object, where: str, allowed: set[str]) -> dict:
    if not isinstance(item, dict):
        raise _Invalid(f"{where}: expected an object, found {_kind(item)}")
    unknown = set(item) - allowed
    if unknown:
        raise _Invalid(f"{where}: unknown field {sorted(unknown)[0]!r}")
    return item


def _string(fields: dict, name: str, where: str, *, required: bool = True) -> str | None:
    value = fields.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _Invalid(f"{where}.{name}: expected a non-empty string, found {_kind(value)}")
    return value


def _time(fields: dict, name: str, where: str, *, required: bool = False) -> float | None:
    value = fields.get(name)
    if value is None and not required:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError
    except ValueError:
        shown = json.dumps(value[:40]) if isinstance(value, str) else _kind(value)
        raise _Invalid(f"{where}.{name}: expected an ISO 8601 time with its zone, found {shown}") from None
    return moment.timestamp()


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"  # never the value: it could be a key
    if isinstance(value, int | float):
        return repr(value)
    return {"dict": "an object", "list": "a list"}.get(type(value).__name__, type(value).__name__)


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat()


def _dump(meshes: list[SavedMesh]) -> bytes:
    document = {"version": SCHEMA_VERSION, "meshes": [
        {"id": m.mesh_id, "name": m.name, "keys": m.keys, "encrypt": m.encrypt,
         "keyring_version": m.keyring_version, "founder": m.founder,
         "relay_url": m.relay_url, "relay_token": m.relay_token, "joined_at": _iso(m.joined_at),
         "last_connected": _iso(m.last_connected), "connected_via": m.connected_via,
         "auto_reconnect": m.auto_reconnect,
         "endpoints": [{"node": e.node_id, "address": e.address, "last_seen": _iso(e.last_seen),
                        "rtt_ms": e.rtt_ms, "last_success": _iso(e.last_success)}
                       for e in m.endpoints]}
        for m in meshes]}
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
