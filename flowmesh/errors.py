"""Errors the CLIs turn into one clear line."""


class FlowMeshError(Exception):
    """An expected failure with a message meant for the user."""


class DatabaseUnreachable(FlowMeshError):
    """The database could not be reached or started."""
