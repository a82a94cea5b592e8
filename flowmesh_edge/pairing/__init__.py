"""Proximity pairing: a new device joins a mesh through a member, both users comparing a 6-digit code.

* ``protocol``: the messages and the two state machines (pure);
* ``guard``: the accepting member's front door (a return-routability cookie, one attempt at a
  time, rate limits overall and per host, lockout);
* ``channel``: running the protocol over a mesh transport (UDP, WebSocket, BLE);
* ``discovery``: finding members that accept pairing (LAN broadcast, mDNS, BLE).

Nothing is imported here (the CLI stays light): import the module you need.
"""

#: The UDP port members accept pairing on (next to the mesh's 9999).
PAIRING_PORT = 9998
#: Default seconds to wait for a request, and for both users to compare and confirm.
PAIRING_TIMEOUT_S = 120.0
