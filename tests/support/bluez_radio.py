"""python-dbusmock template: BlueZ 5 with a simulated radio between its adapters.

Loaded by path into a dbusmock process on a private bus (tests/support/bluez.py).
It keeps python-dbusmock's ``bluez5`` template (the object manager, agent and
profile managers) and adds what that template lacks for a GATT client and a
GATT server to meet:

* ``AddRadioAdapter(name, address, alias)``: an adapter with ``GattManager1``
  and ``LEAdvertisingManager1`` whose callers are known by their bus name (the
  template's ``LEAdvertisingManager1`` only counts advertisements);
* an application registered with ``GattManager1.RegisterApplication`` on one
  adapter, and an advertisement registered on it, appear on every other radio
  adapter as a remote ``Device1`` (``dev_<MAC>``), with ``ManufacturerData`` and
  ``ServiceData`` as dicts (the template's are arrays, which bleak cannot read)
  and the advertised service UUIDs;
* while an adapter discovers, the RSSI of every advertising device on it changes
  every 200 ms, as advertisements are heard (bleak reports a device to a scan
  only when its properties change);
* ``Device1.Connect`` mirrors the peripheral's GATT services and characteristics
  under the device (``serviceXXXX/charYYYY``, announced with ``InterfacesAdded``
  as BlueZ does) and sets ``ServicesResolved``, which the template's never does;
* the bridge: ``WriteValue`` on a mirrored characteristic calls the peripheral
  application's ``WriteValue`` with BlueZ's options (``device``, ``mtu``,
  ``type``); ``StartNotify`` calls its ``StartNotify``; a ``PropertiesChanged``
  of ``Value`` on the application's characteristic (how a GATT server notifies)
  is copied to every mirror with notifications on, so the central's notification
  callback fires.

Every link has the ATT MTU given by the template parameter ``mtu`` (default 23,
BlueZ's before an exchange), exposed as the characteristics' ``MTU`` property.
"""

from __future__ import annotations

import ctypes

import dbus
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.mockobject import DBusMockObject
from dbusmock.templates import bluez5

BUS_NAME = bluez5.BUS_NAME
MAIN_OBJ = "/"
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True

RADIO_IFACE = "org.flowmesh.RadioMock"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
GATT_MANAGER_IFACE = "org.bluez.GattManager1"
GATT_SERVICE_IFACE = "org.bluez.GattService1"
GATT_CHAR_IFACE = "org.bluez.GattCharacteristic1"
ADVERTISING_IFACE = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT_IFACE = "org.bluez.LEAdvertisement1"
CALL_TIMEOUT_S = 5.0

#: adapter path -> {"address", "app": (owner, path) | None, "gatt": [...], "advert": props | None}
radios: dict[str, dict] = {}
#: mirrored characteristic path -> (owner, application characteristic path)
mirrors: dict[str, tuple[str, str]] = {}
settings = {"mtu": 23}


#: How often an advertising device is "heard" by the adapters that scan (ms).
ADVERTISING_INTERVAL_MS = 200
_glib = ctypes.CDLL("libglib-2.0.so.0")
_SOURCE_FUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


def load(mock, parameters):
    bluez5.load(mock, parameters)
    settings["mtu"] = int(parameters.get("mtu", 23))
    # the mock runs GLib's main loop (through ctypes, without PyGObject): tick on it
    settings["tick"] = _SOURCE_FUNC(_advertising_tick)  # kept referenced while the timer lives
    _glib.g_timeout_add(ctypes.c_uint(ADVERTISING_INTERVAL_MS), settings["tick"], None)


def _advertising_tick(_data) -> int:
    """Every advertising interval, each scanning adapter hears the advertising devices
    again (an RSSI change, which is what bleak reports to a scan)."""
    try:
        for obj in list(mockobject.objects.values()):
            peer = getattr(obj, "radio_peer", None)
            if peer is not None and radios.get(peer, {}).get("advert") is not None \
                    and mockobject.objects[obj.radio_central].props[ADAPTER_IFACE]["Discovering"]:
                _bump_rssi(obj)
    except Exception as e:  # a timer that raises would stop the radio
        _manager().log(f"advertising tick failed: {e!r}")
    return 1  # G_SOURCE_CONTINUE


def _bus() -> dbus.bus.BusConnection:
    return mockobject.objects["/"].connection


def _manager():
    return mockobject.objects["/"]


def _dev_name(address: str) -> str:
    return "dev_" + address.replace(":", "_").upper()


def _failed(message: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(message, name="org.bluez.Error.Failed")


class RadioAdapter(DBusMockObject):
    """An adapter whose managers know who called them (dbus-python's sender_keyword)."""

    @dbus.service.method(GATT_MANAGER_IFACE, in_signature="oa{sv}", out_signature="", sender_keyword="sender")
    def RegisterApplication(self, app_path, options, sender=None):
        radio = radios[self.path]
        if radio["app"] is not None:
            raise dbus.exceptions.DBusException("Already Exists", name="org.bluez.Error.AlreadyExists")
        proxy = _bus().get_object(sender, app_path, introspect=False)
        objects = proxy.GetManagedObjects(dbus_interface=OBJECT_MANAGER_IFACE, timeout=CALL_TIMEOUT_S)
        services = {str(p): i[GATT_SERVICE_IFACE] for p, i in objects.items() if GATT_SERVICE_IFACE in i}
        chars = {str(p): i[GATT_CHAR_IFACE] for p, i in objects.items() if GATT_CHAR_IFACE in i}
        if not services:
            raise dbus.exceptions.DBusException("No services", name="org.bluez.Error.InvalidArguments")
        radio["app"] = (sender, str(app_path))
        radio["gatt"] = [(str(services[s]["UUID"]),
                          [(c, str(chars[c]["UUID"]), [str(f) for f in chars[c]["Flags"]])
                           for c in sorted(chars) if str(chars[c]["Service"]) == s])
                         for s in sorted(services)]
        radio["match"] = _bus().add_signal_receiver(
            _application_value_changed, signal_name="PropertiesChanged", dbus_interface=dbus.PROPERTIES_IFACE,
            bus_name=sender, path_keyword="path", sender_keyword="sender")
        _announce(self.path)

    @dbus.service.method(GATT_MANAGER_IFACE, in_signature="o", out_signature="")
    def UnregisterApplication(self, app_path):
        radio = radios[self.path]
        if radio["app"] is None or radio["app"][1] != str(app_path):
            raise dbus.exceptions.DBusException("Does Not Exist", name="org.bluez.Error.DoesNotExist")
        radio["match"].remove()
        radio["app"], radio["gatt"], radio["match"] = None, [], None
        for device in _devices_of(self.path):  # the server went away: its links drop, its GATT goes
            _drop_link(device)
            _remove_gatt(device)

    @dbus.service.method(ADVERTISING_IFACE, in_signature="oa{sv}", out_signature="", sender_keyword="sender")
    def RegisterAdvertisement(self, adv_path, options, sender=None):
        proxy = _bus().get_object(sender, adv_path, introspect=False)
        props = proxy.GetAll(ADVERTISEMENT_IFACE, dbus_interface=dbus.PROPERTIES_IFACE,
                             timeout=CALL_TIMEOUT_S)
        radios[self.path]["advert"] = dict(props)
        _announce(self.path)

    @dbus.service.method(ADVERTISING_IFACE, in_signature="o", out_signature="")
    def UnregisterAdvertisement(self, adv_path):
        radios[self.path]["advert"] = None


def _adapter_props(address: str, alias: str) -> dict:
    return {
        "Address": dbus.String(address), "AddressType": dbus.String("public"),
        "Name": dbus.String(alias), "Alias": dbus.String(alias), "Class": dbus.UInt32(268),
        "Powered": dbus.Boolean(True), "Discoverable": dbus.Boolean(False),
        "Discovering": dbus.Boolean(False), "Pairable": dbus.Boolean(True),
        "DiscoverableTimeout": dbus.UInt32(180), "PairableTimeout": dbus.UInt32(0),
        "UUIDs": dbus.Array(["00001800-0000-1000-8000-00805f9b34fb",
                             "00001801-0000-1000-8000-00805f9b34fb"], signature="s"),
        "Modalias": dbus.String("usb:v1D6Bp0245d050A"),
        "Roles": dbus.Array(["central", "peripheral"], signature="s"),
    }


@dbus.service.method(RADIO_IFACE, in_signature="sss", out_signature="s")
def AddRadioAdapter(self, device_name, address, alias):
    """An adapter on the simulated radio; returns its object path."""
    path = "/org/bluez/" + device_name
    props = _adapter_props(address, alias)
    self.AddObject(path, ADAPTER_IFACE, props, [
        ("RemoveDevice", "o", "", bluez5.RemoveDevice),
        ("StartDiscovery", "", "", _start_discovery),
        ("StopDiscovery", "", "", _stop_discovery),
        ("SetDiscoveryFilter", "a{sv}", "", ""),
    ], mock_class=RadioAdapter)
    adapter = mockobject.objects[path]
    adapter.props.setdefault(GATT_MANAGER_IFACE, {})
    adapter.props[ADVERTISING_IFACE] = {"ActiveInstances": dbus.Byte(0),
                                        "SupportedInstances": dbus.Byte(bluez5.MAX_ADVERTISEMENT_INSTANCES),
                                        "SupportedIncludes": dbus.Array(["local-name"], signature="s")}
    radios[path] = {"address": address, "app": None, "gatt": [], "advert": None, "match": None}
    _manager().EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                          [dbus.ObjectPath(path), {ADAPTER_IFACE: props}])
    for other in radios:
        if other != path:
            _announce(other)
    return path


@dbus.service.method(RADIO_IFACE, in_signature="", out_signature="a{sv}")
def RadioState(self):
    """What the radio holds, for tests: links and registrations."""
    return {
        "applications": dbus.Array([p for p, r in radios.items() if r["app"]], signature="s"),
        "advertising": dbus.Array([p for p, r in radios.items() if r["advert"] is not None], signature="s"),
        "connected": dbus.Array([p for p, o in mockobject.objects.items()
                                 if getattr(o, "radio_connected", False)], signature="s"),
    }


def _devices_of(peripheral_path: str) -> list[DBusMockObject]:
    name = _dev_name(radios[peripheral_path]["address"])
    return [mockobject.objects[f"{c}/{name}"] for c in radios
            if c != peripheral_path and f"{c}/{name}" in mockobject.objects]


def _announce(peripheral_path: str) -> None:
    """Make an advertising (or serving) adapter visible on every other radio adapter."""
    radio = radios[peripheral_path]
    advert = radio["advert"]
    if advert is None and radio["app"] is None:
        return
    advert = advert or {}
    uuids = [str(u) for u in advert.get("ServiceUUIDs", [])] + [s for s, _ in radio["gatt"]]
    peripheral = mockobject.objects[peripheral_path]
    name = str(advert.get("LocalName", peripheral.props[ADAPTER_IFACE]["Alias"]))
    for central_path in radios:
        if central_path == peripheral_path:
            continue
        path = f"{central_path}/{_dev_name(radio['address'])}"
        device = mockobject.objects.get(path)
        if device is None:
            props = {
                "Address": dbus.String(radio["address"]), "AddressType": dbus.String("public"),
                "Name": dbus.String(name), "Alias": dbus.String(name),
                "Adapter": dbus.ObjectPath(central_path),
                "UUIDs": dbus.Array(sorted(set(uuids)), signature="s"),
                "Paired": dbus.Boolean(False), "Bonded": dbus.Boolean(False), "Trusted": dbus.Boolean(False),
                "Blocked": dbus.Boolean(False), "Connected": dbus.Boolean(False),
                "ServicesResolved": dbus.Boolean(False), "LegacyPairing": dbus.Boolean(False),
                "RSSI": dbus.Int16(-60), "TxPower": dbus.Int16(0),
                "ManufacturerData": dbus.Dictionary(advert.get("ManufacturerData", {}), signature="qv"),
                "ServiceData": dbus.Dictionary(advert.get("ServiceData", {}), signature="sv"),
            }
            _manager().AddObject(path, DEVICE_IFACE, props, [
                ("Connect", "", "", _connect), ("Disconnect", "", "", _disconnect),
                ("Pair", "", "", ""), ("CancelPairing", "", "", ""),
                ("ConnectProfile", "s", "", ""), ("DisconnectProfile", "s", "", ""),
            ])
            device = mockobject.objects[path]
            device.radio_peer, device.radio_central = peripheral_path, central_path
            device.radio_connected, device.radio_gatt = False, []
            _manager().EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                                  [dbus.ObjectPath(path), {DEVICE_IFACE: props}])
        else:
            device.UpdateProperties(DEVICE_IFACE, {"UUIDs": dbus.Array(sorted(set(uuids)), signature="s")})
        if mockobject.objects[central_path].props[ADAPTER_IFACE]["Discovering"]:
            _bump_rssi(device)


def _bump_rssi(device: DBusMockObject) -> None:
    rssi = int(device.props[DEVICE_IFACE]["RSSI"])
    device.UpdateProperties(DEVICE_IFACE, {"RSSI": dbus.Int16(-61 if rssi == -60 else -60)})


def _start_discovery(adapter):
    adapter.UpdateProperties(ADAPTER_IFACE, {"Discovering": dbus.Boolean(True)})
    prefix = adapter.path + "/dev_"
    for path, obj in list(mockobject.objects.items()):
        if path.startswith(prefix) and "/" not in path[len(prefix):] \
                and radios.get(getattr(obj, "radio_peer", ""), {}).get("advert") is not None:
            _bump_rssi(obj)


def _stop_discovery(adapter):
    adapter.UpdateProperties(ADAPTER_IFACE, {"Discovering": dbus.Boolean(False)})


def _connect(device):
    radio = radios[device.radio_peer]
    if radio["app"] is None and radio["advert"] is None:
        raise _failed("Software caused connection abort")  # nothing there to answer
    if device.radio_connected:
        raise dbus.exceptions.DBusException("Already Connected", name="org.bluez.Error.AlreadyConnected")
    device.radio_connected = True
    device.UpdateProperties(DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
    _mirror_gatt(device)
    device.UpdateProperties(DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(True)})


def _disconnect(device):
    if not device.radio_connected:
        raise dbus.exceptions.DBusException("Not Connected", name="org.bluez.Error.NotConnected")
    _drop_link(device)


def _drop_link(device) -> None:
    if not device.radio_connected:
        return
    device.radio_connected = False
    for path in device.radio_gatt:
        char = mockobject.objects.get(path)
        if char is not None and GATT_CHAR_IFACE in char.props:
            char.notifying = False
    device.UpdateProperties(DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False),
                                           "Connected": dbus.Boolean(False)})


def _remove_gatt(device) -> None:
    for path in reversed(device.radio_gatt):
        mirrors.pop(path, None)
        obj = mockobject.objects.get(path)
        if obj is None:
            continue
        interfaces = dbus.Array(list(obj.props), signature="s")
        _manager().RemoveObject(path)
        _manager().EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas",
                              [dbus.ObjectPath(path), interfaces])
    device.radio_gatt = []


def _mirror_gatt(device) -> None:
    """The peripheral's services and characteristics under the central's device object."""
    radio = radios[device.radio_peer]
    if device.radio_gatt or radio["app"] is None:
        return
    owner = radio["app"][0]
    handle = 0x0a
    for service_uuid, chars in radio["gatt"]:
        service_path = f"{device.path}/service{handle:04x}"
        handle += 1
        service_props = {"UUID": dbus.String(service_uuid), "Primary": dbus.Boolean(True),
                         "Device": dbus.ObjectPath(device.path)}
        _manager().AddObject(service_path, GATT_SERVICE_IFACE, service_props, [])
        _manager().EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                              [dbus.ObjectPath(service_path), {GATT_SERVICE_IFACE: service_props}])
        device.radio_gatt.append(service_path)
        for app_char, char_uuid, flags in chars:
            char_path = f"{service_path}/char{handle:04x}"
            handle += 1
            char_props = {"UUID": dbus.String(char_uuid), "Service": dbus.ObjectPath(service_path),
                          "Flags": dbus.Array(flags, signature="s"), "Value": dbus.Array([], signature="y"),
                          "Notifying": dbus.Boolean(False), "MTU": dbus.UInt16(settings["mtu"])}
            _manager().AddObject(char_path, GATT_CHAR_IFACE, char_props, [
                ("ReadValue", "a{sv}", "ay", _read_value), ("WriteValue", "aya{sv}", "", _write_value),
                ("StartNotify", "", "", _start_notify), ("StopNotify", "", "", _stop_notify),
            ])
            char = mockobject.objects[char_path]
            char.device, char.notifying = device, False
            mirrors[char_path] = (owner, app_char)
            _manager().EmitSignal(OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                                  [dbus.ObjectPath(char_path), {GATT_CHAR_IFACE: char_props}])
            device.radio_gatt.append(char_path)


def _application_char(char):
    if not char.device.radio_connected:
        raise _failed("Not connected")
    owner, path = mirrors[char.path]
    return _bus().get_object(owner, path, introspect=False)


def _link_options(char, **extra) -> dbus.Dictionary:
    central = radios[char.device.radio_central]["address"]
    return dbus.Dictionary({"device": dbus.ObjectPath(f"{char.device.radio_peer}/{_dev_name(central)}"),
                            "mtu": dbus.UInt16(settings["mtu"]), "link": dbus.String("LE"), **extra},
                           signature="sv")


def _read_value(char, options):
    return _application_char(char).ReadValue(_link_options(char, offset=dbus.UInt16(0)),
                                             dbus_interface=GATT_CHAR_IFACE, timeout=CALL_TIMEOUT_S)


def _write_value(char, value, options):
    if len(value) > settings["mtu"] - 3:
        raise dbus.exceptions.DBusException("Invalid Length", name="org.bluez.Error.InvalidValueLength")
    kind = str(options.get("type", "request"))
    _application_char(char).WriteValue(
        dbus.Array(value, signature="y"), _link_options(char, offset=dbus.UInt16(0), type=dbus.String(kind)),
        dbus_interface=GATT_CHAR_IFACE, timeout=CALL_TIMEOUT_S)


def _start_notify(char):
    target = _application_char(char)
    if not char.notifying:
        target.StartNotify(dbus_interface=GATT_CHAR_IFACE, timeout=CALL_TIMEOUT_S)
        char.notifying = True
        char.UpdateProperties(GATT_CHAR_IFACE, {"Notifying": dbus.Boolean(True)})


def _stop_notify(char):
    if char.notifying:
        char.notifying = False
        char.UpdateProperties(GATT_CHAR_IFACE, {"Notifying": dbus.Boolean(False)})


def _application_value_changed(interface, changed, invalidated, path=None, sender=None):
    """A GATT server notifies by changing its characteristic's Value: copy it to the subscribed links."""
    if interface != GATT_CHAR_IFACE or "Value" not in changed:
        return
    value = dbus.Array(changed["Value"], signature="y")
    for mirror_path, (owner, app_char) in list(mirrors.items()):
        char = mockobject.objects.get(mirror_path)
        if app_char == str(path) and owner == str(sender) and char is not None and char.notifying \
                and char.device.radio_connected:
            char.UpdateProperties(GATT_CHAR_IFACE, {"Value": value})
