"""One module per transport; see ``..transport`` for the interface. Nothing is
imported here, so that a member loads only the transports it uses."""
