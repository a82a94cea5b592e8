"""How failures are sorted (errors.describe): which ones mean "retry later"."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg

from flowmesh import errors


@pytest.mark.parametrize("state", ["53300", "57P01", "57P02", "57P03", "08006", "08001", "08P01"])
def test_a_full_starting_or_stopping_server_is_unreachable(state):
    failure = errors.describe(pg.lookup(state)("server says no"))
    assert (failure.kind, failure.sqlstate, failure.exit_code) == (
        errors.UNREACHABLE, state, errors.EXIT_UNREACHABLE)
    assert failure.message == "cannot reach the database: server says no"


def test_a_statement_timeout_is_retried_and_says_so():
    failure = errors.describe(pg.lookup("57014")("canceling statement due to statement timeout"))
    assert (failure.kind, failure.exit_code) == (errors.UNREACHABLE, errors.EXIT_UNREACHABLE)
    assert failure.message == ("the database did not answer in time: "
                               "canceling statement due to statement timeout")


def test_a_socket_failure_without_sqlstate_is_unreachable():
    failure = errors.describe(psycopg.OperationalError("server closed the connection"))
    assert failure.kind == errors.UNREACHABLE


@pytest.mark.parametrize(("state", "kind"), [
    ("22P02", errors.BAD_DATA), ("23505", errors.BAD_DATA), ("54000", errors.BAD_DATA),
    ("42501", errors.REFUSED), ("42P01", errors.REFUSED), ("53100", errors.UNREACHABLE),
])
def test_other_states_keep_their_kind(state, kind):
    assert errors.describe(pg.lookup(state)("x")).kind == kind
