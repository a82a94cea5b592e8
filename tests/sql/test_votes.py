"""Guardian votes: quorum in SQL, one vote per vertex, outsiders kept out."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import acting_as, register

USERS = {name: uuid.uuid4() for name in ("pi", "laptop", "phone", "cam")}


@pytest.fixture
def mesh(conn):
    tid = None
    for node, user in USERS.items():
        tid = register(conn, "home", node, user)
    return tid


def propose(conn, tid, subject="cam", proposer="pi", **kw):
    args = "".join(f", {k} => %({k})s" for k in kw)
    sql = f"select id, status from propose_guardian_decision(%(t)s, 'quarantine', %(s)s, %(p)s{args})"
    return conn.execute(sql, {"t": tid, "s": subject, "p": proposer, **kw}).fetchone()


def vote(conn, tid, decision, voter, approve=True):
    return conn.execute("select status from cast_guardian_vote(%s, %s, %s, %s)",
                        (tid, decision, voter, approve)).fetchone()[0]


def test_majority_of_the_other_vertices_passes_a_decision(conn, mesh):
    decision, status = propose(conn, mesh)
    assert status == "open"
    assert vote(conn, mesh, decision, "pi") == "open"      # 1 of 3 voters (cam is the subject)
    assert vote(conn, mesh, decision, "laptop") == "passed"  # 2 > 0.5 x 3
    details = conn.execute("select details from guardian_decisions where id = %s", (decision,)).fetchone()[0]
    assert details == {"voters": 3, "approvals": 2, "rejections": 0}
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is passed"):
        vote(conn, mesh, decision, "phone")


def test_rejection_once_the_quorum_is_out_of_reach(conn, mesh):
    decision, _ = propose(conn, mesh, quorum=0.7)
    assert vote(conn, mesh, decision, "pi", False) == "rejected"  # the 2 left cannot exceed 2.1
    other, _ = propose(conn, mesh, subject="phone", quorum=0.6)
    assert vote(conn, mesh, other, "pi", False) == "open"  # the 2 left could still exceed 1.8


def test_one_vote_per_vertex_and_no_vote_on_oneself(conn, mesh):
    decision, _ = propose(conn, mesh)
    vote(conn, mesh, decision, "pi")
    with pytest.raises(psycopg.errors.UniqueViolation, match="already voted"):
        vote(conn, mesh, decision, "pi", False)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="about itself"):
        vote(conn, mesh, decision, "cam")
    with pytest.raises(psycopg.errors.UniqueViolation, match="already open"):
        propose(conn, mesh)


def test_a_vote_names_the_decisions_tetrahedron(conn, mesh):
    decision, _ = propose(conn, mesh)
    elsewhere = register(conn, "elsewhere", "pi")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="does not exist in tetrahedron"):
        vote(conn, elsewhere, decision, "pi")


def test_vertices_vote_only_for_themselves_and_outsiders_see_nothing(conn, mesh):
    decision, _ = propose(conn, mesh)
    with acting_as(conn, "authenticated", USERS["laptop"]):
        assert vote(conn, mesh, decision, "laptop") == "open"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not act for vertex pi"):
            vote(conn, mesh, decision, "pi")
        assert conn.execute("select count(*) from guardian_votes").fetchone() == (1,)
    stranger = uuid.uuid4()
    with acting_as(conn, "authenticated", stranger):
        assert conn.execute("select count(*) from guardian_decisions").fetchone() == (0,)
        assert conn.execute("select count(*) from guardian_votes").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            vote(conn, mesh, decision, "phone")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into guardian_votes values (%s, %s, 'phone', true)", (decision, mesh))
    with acting_as(conn, "anon"), pytest.raises(psycopg.errors.InsufficientPrivilege):
        vote(conn, mesh, decision, "phone")


def test_undecided_decisions_expire(conn, mesh):
    decision, _ = propose(conn, mesh, ttl_minutes=1)
    vote(conn, mesh, decision, "pi")
    conn.execute("update guardian_decisions set closes_at = now() - interval '1 second'")
    assert conn.execute("select close_expired_decisions()").fetchone() == (1,)
    assert conn.execute("select status from guardian_decisions").fetchone() == ("expired",)


@pytest.mark.parametrize(("kw", "sqlstate"), [
    ({"quorum": 1.0}, "22023"), ({"quorum": 0}, "22023"), ({"ttl_minutes": 0}, "22023"),
])
def test_bad_proposals(conn, mesh, kw, sqlstate):
    with pytest.raises(psycopg.Error) as info:
        propose(conn, mesh, **kw)
    assert info.value.sqlstate == sqlstate


def test_unknown_subject_and_non_vertex_proposer(conn, mesh):
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="not a node"):
        propose(conn, mesh, subject="ghost")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a vertex"):
        propose(conn, mesh, proposer="ghost")
