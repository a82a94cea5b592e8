"""Errors, and the one place a failure becomes a message and an exit code.

Every program that talks to Postgres (both CLIs, the agent's shipper, the
monitor, the exporter) asks :func:`describe` what a failure means, so the
same error reads the same everywhere and is retried (or not) for the same
reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: SQLSTATE classes meaning "this data is bad" (22 data exception, 23
#: integrity constraint, 54 program limit exceeded), as opposed to "try later".
DATA_ERROR_CLASSES = ("22", "23", "54")
#: SQLSTATE classes and codes meaning "the database is not there right now,
#: try again later", whatever exception class the driver files them under:
#: class 08 (connection exception), 53300 too_many_connections (every slot
#: taken, or a pooler's client limit), 57P01 admin_shutdown, 57P02
#: crash_shutdown, 57P03 cannot_connect_now (starting up or shutting down),
#: and 57014 query_canceled (a statement timeout or a client's deadline: the
#: path or the server is too slow now, not the data wrong).
UNREACHABLE_CLASSES = ("08",)
QUERY_CANCELED = "57014"
UNREACHABLE_STATES = frozenset({"53300", "57P01", "57P02", "57P03", QUERY_CANCELED})

#: Exit codes of the command lines: 1 for an error, 3 when the database cannot
#: be reached (2 is click's, for usage errors).
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3

#: What a failure is, for whoever must decide what to do next.
UNREACHABLE = "unreachable"  #: the database is not there right now: retry later
BAD_DATA = "bad-data"        #: the database refused this data: retrying it will not help
REFUSED = "refused"          #: refused for a reason data cannot fix (permissions, schema)
ERROR = "error"              #: an expected failure that is not the database's


class FlowMeshError(Exception):
    """An expected failure with a message meant for the user."""


class DatabaseUnreachable(FlowMeshError):
    """The database could not be reached or started."""


@dataclass(frozen=True)
class Failure:
    kind: str
    #: One line, meant for a person.
    message: str
    exit_code: int
    sqlstate: str | None = None


def redact_secrets(text: str) -> str:
    """``text`` with the password of any database URL or conninfo string in it masked."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password=)('[^']*'|[^\s&]*)", r"\1***", text)  # conninfo or query string


def one_line(exc: BaseException) -> str:
    """An exception's message as a single line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else exc.__class__.__name__
    return first.removeprefix("connection failed: ").strip()


def describe(exc: BaseException) -> Failure:
    """What ``exc`` means: its kind, a one-line message and the exit code."""
    import psycopg  # noqa: PLC0415 (errors.py stays importable without the driver)

    if isinstance(exc, DatabaseUnreachable):
        return Failure(UNREACHABLE, str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, FlowMeshError):
        return Failure(ERROR, str(exc), EXIT_ERROR)
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or None
        # SQLSTATE first: psycopg files some data errors (class 54) under
        # OperationalError, beside the real connection failures.
        if state == QUERY_CANCELED:  # retried like an outage, but it is no outage
            return Failure(UNREACHABLE, f"the database did not answer in time: {one_line(exc)}",
                           EXIT_UNREACHABLE, state)
        if state and (state in UNREACHABLE_STATES or state[:2] in UNREACHABLE_CLASSES):
            return Failure(UNREACHABLE, f"cannot reach the database: {one_line(exc)}",
                           EXIT_UNREACHABLE, state)
        if state and state[:2] in DATA_ERROR_CLASSES:
            return Failure(BAD_DATA, f"database error [{state}]: {one_line(exc)}", EXIT_ERROR, state)
        if isinstance(exc, psycopg.OperationalError):  # a socket failed (no SQLSTATE), and kin
            return Failure(UNREACHABLE, f"cannot reach the database: {one_line(exc)}",
                           EXIT_UNREACHABLE, state)
        label = f" [{state}]" if state else ""
        return Failure(REFUSED, f"database error{label}: {one_line(exc)}", EXIT_ERROR, state)
    if isinstance(exc, (OSError, TimeoutError)):  # a pool's wait, a socket
        return Failure(UNREACHABLE, f"cannot reach the database: {one_line(exc)}", EXIT_UNREACHABLE)
    return Failure(ERROR, one_line(exc), EXIT_ERROR)
