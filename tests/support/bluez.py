"""BlueZ mocked on a private system bus, for the BLE tests (no Bluetooth hardware).

:func:`mock_bluez` starts a ``dbus-daemon`` of its own (python-dbusmock's
``PrivateDBus``), points ``DBUS_SYSTEM_BUS_ADDRESS`` at it for the duration,
and runs python-dbusmock with the template in ``bluez_radio.py`` (its ``bluez5``
template plus a simulated radio between adapters, the GATT manager and the
client/server bridge that template lacks). Both processes are stopped and the
variable restored on exit, whatever happened. The mock's log (every D-Bus call
it served) is kept in the returned object's ``log`` for failure messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMPLATE = Path(__file__).with_name("bluez_radio.py")
RADIO_IFACE = "org.flowmesh.RadioMock"
SYSTEM_BUS_ENV = "DBUS_SYSTEM_BUS_ADDRESS"
#: Bound on every synchronous call into the mock (seconds).
CALL_TIMEOUT_S = 10.0


def missing() -> str | None:
    """Why the mock cannot run here (None when it can)."""
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (Debian package dbus-daemon)"
    try:
        import dbus  # noqa: F401
        import dbusmock  # noqa: F401
    except ImportError as e:
        return f"python-dbusmock is not installed ({e})"
    return None


class MockBlueZ:
    """The running mock: add adapters to its radio, read its state."""

    def __init__(self, mock, log_path: Path):
        self.mock = mock
        self.log_path = log_path

    def add_adapter(self, name: str, address: str, alias: str = "flowmesh") -> str:
        """A Bluetooth adapter (``hci0``...) with this MAC on the simulated radio; its path."""
        return str(self.mock.obj.AddRadioAdapter(name, address, alias, dbus_interface=RADIO_IFACE,
                                                 timeout=CALL_TIMEOUT_S))

    def state(self) -> dict:
        """Registered applications, advertisements and connected links (blocking: call it
        through ``asyncio.to_thread`` while transports run, the mock may be calling them)."""
        raw = self.mock.obj.RadioState(dbus_interface=RADIO_IFACE, timeout=CALL_TIMEOUT_S)
        return {str(k): sorted(str(p) for p in v) for k, v in raw.items()}

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""


@contextlib.contextmanager
def mock_bluez(mtu: int = 23) -> Iterator[MockBlueZ]:
    """A private system bus with BlueZ mocked on it, every link at ATT MTU ``mtu``."""
    from dbusmock import BusType, PrivateDBus, SpawnedMock

    previous = os.environ.get(SYSTEM_BUS_ENV)
    workdir = Path(tempfile.mkdtemp(prefix="flowmesh-bluez-"))
    log_path = workdir / "dbusmock.log"
    bus = PrivateDBus(BusType.SYSTEM)
    mock = None
    try:
        bus.start()  # sets DBUS_SYSTEM_BUS_ADDRESS
        with log_path.open("wb") as log:
            mock = SpawnedMock.spawn_with_template(str(TEMPLATE), {"mtu": mtu}, bustype=BusType.SYSTEM,
                                                   stdout=log, stderr=subprocess.STDOUT)
        yield MockBlueZ(mock, log_path)
    finally:
        if mock is not None:
            mock.terminate()
        bus.stop()
        if previous is None:
            os.environ.pop(SYSTEM_BUS_ENV, None)
        else:
            os.environ[SYSTEM_BUS_ENV] = previous
        shutil.rmtree(workdir, ignore_errors=True)
