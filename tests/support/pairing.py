"""Driving `flowmesh-edge pair` in tests: the processes, their files, the mocked BlueZ.

Used by tests/integration/test_pairing_cli.py and test_pairing_discovery.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from flowmesh_edge.mesh.address import Address
from flowmesh_edge.mesh.transports.lossy import WrappedTransport
from flowmesh_edge.meshes import SavedMeshes
from flowmesh_edge.pairing.protocol import Kind, decode

KEY, OLD_KEY = "the primary key of home 0001", "an older key still accepted"
TOKEN, CREDENTIAL = "relay-token-secret-77", "postgresql://flowmesh_dev_laptop:pw-secret-88@127.0.0.1:6432/flowmesh"
SECRETS = (KEY, OLD_KEY, TOKEN, "pw-secret-88")
WAIT_S = 20.0


class Cli:
    """One ``flowmesh-edge`` process, its output read without blocking past a deadline."""

    def __init__(self, args: list[str], env: dict, stdin: bytes | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "flowmesh_edge.cli", *args], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if stdin is not None:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()
        self.out = b""

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.out.decode(errors="replace"))
            if found:
                return found
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, min(left, 0.5)))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            self.out += chunk
            if left <= 0 or (ready and not chunk):  # out of time, or the process closed its output
                self.proc.kill()
                raise AssertionError(f"no {pattern!r} in {self.out.decode(errors='replace')!r}; "
                                     f"stderr {self.proc.stderr.read().decode(errors='replace')!r}")

    def finish(self, timeout: float = WAIT_S) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, (self.out + out).decode(errors="replace"), err.decode(errors="replace")


def cli_env(tmp_path: Path) -> dict:
    """The environment of a CLI under test: no FLOWMESH_ setting of ours, its own data dir."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMESH_")}
    environment["FLOWMESH_DATA_DIR"] = str(tmp_path / "data")
    return environment


def saved_member_file(tmp_path: Path) -> Path:
    """The accepting member's saved meshes: one mesh, its keyring of two keys, with a relay."""
    path = tmp_path / "member" / "meshes.json"
    store = SavedMeshes.load(path)
    store.add_or_update(KEY, "home", relay_url="wss://relay.example:8765", relay_token=TOKEN,
                        secondary_keys=[OLD_KEY], keyring_version=2, encrypt=True)
    store.save()
    return path


@contextlib.asynccontextmanager
async def mocked_bluez() -> AsyncIterator[object]:
    """BlueZ mocked on a private system bus with adapters hci0..hci2 (tests/mesh/test_ble.py's),
    started and stopped off the event loop (both block). Callers skip when ``missing()``."""
    from tests.mesh.test_ble import MAC_A, MAC_B, MAC_C, release_bleak
    from tests.support.bluez import mock_bluez

    def start(stack: contextlib.ExitStack):
        mock = stack.enter_context(mock_bluez())
        for name, mac in (("hci0", MAC_A), ("hci1", MAC_B), ("hci2", MAC_C)):
            mock.add_adapter(name, mac, f"member-{name}")
        return mock

    with contextlib.ExitStack() as stack:
        mock = await asyncio.to_thread(start, stack)
        try:
            yield mock
        finally:
            await release_bleak()
            await asyncio.to_thread(stack.close)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def accepting(env, member_file, *extra: str) -> Cli:
    return Cli(["pair", "--accept", "--yes", "--port", "0", "--bind", "127.0.0.1", "--timeout", "20",
                "--meshes-file", str(member_file), "--node-id", "pi-kitchen", *extra], env)


def udp_port(member: Cli) -> int:
    return int(member.wait_for(r"on udp:127\.0\.0\.1:(\d+)").group(1))


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


class DropsDone(WrappedTransport):
    """Loses every DONE: the new device saved the mesh, the member never hears it say so."""

    def send(self, data: bytes, address: Address) -> None:
        if decode(data).kind is Kind.DONE:
            self.dropped += 1
            return
        self.inner.send(data, address)
