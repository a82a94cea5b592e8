"""The relay server (``flowmesh-edge relay``): forwards mesh frames by node id
between members that share no other path. ``server`` holds the server,
``command`` the CLI; the protocol is ``flowmesh_edge.mesh.relay_protocol``.
Nothing is imported here, so that the agent does not load ``websockets``."""
