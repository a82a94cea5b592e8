"""Proximity pairing: a new device joins a mesh through a member, both users comparing a 6-digit code.

* ``protocol``: the messages and the two state machines (pure);
* ``guard``: the accepting member's front door (one attempt at a time, rate limit, lockout);
* ``channel``: running the protocol over a mesh transport (UDP, WebSocket, BLE);
* ``discovery``: finding members that accept pairing (LAN broadcast, mDNS, BLE).

Only ``protocol`` and ``guard`` are imported here: the others import transports.
"""
