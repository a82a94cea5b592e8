"""The route table as pure state, on a clock the test moves."""

from __future__ import annotations

from flowmesh_edge.mesh.routing import RouteTable
from tests.mesh.fakes import Clock


def table(clock: Clock | None = None, ttl_s: float = 60.0) -> RouteTable:
    return RouteTable("me", ttl_s, clock or Clock())


def everyone(node: str) -> bool:
    return True


def test_a_member_is_reached_directly_until_a_probe_to_it_fails():
    clock = Clock()
    routes = table(clock)
    assert routes.direct_usable("c") and routes.next_hop("c", everyone) == "c"
    routes.direct_failed("c")
    assert not routes.direct_usable("c")
    assert routes.next_hop("c", everyone) is None  # no route known: flood
    clock.t = 1
    routes.heard_from("c")  # a datagram from c itself, after the failure
    assert routes.direct_usable("c") and routes.next_hop("c", everyone) == "c"


def test_hearing_from_a_member_before_its_failure_does_not_count():
    clock = Clock()
    routes = table(clock)
    routes.heard_from("c")
    clock.t = 1
    routes.direct_failed("c")
    assert not routes.direct_usable("c")


def test_routes_are_learned_only_where_the_direct_path_failed():
    routes = table()
    assert not routes.learn("c", "b", 2)  # c answers directly: no route needed
    routes.direct_failed("c")
    assert routes.learn("c", "b", 2)
    assert routes.routes() == {"c": ("b", 2)}
    assert routes.next_hop("c", everyone) == "b"


def test_routes_to_self_and_through_the_destination_itself_are_ignored():
    routes = table()
    routes.direct_failed("c")
    assert not routes.learn("me", "b", 2)
    assert not routes.learn("c", "c", 1)
    assert routes.routes() == {}


def test_a_shorter_route_replaces_a_longer_one_and_not_the_reverse():
    routes = table()
    routes.direct_failed("d")
    routes.learn("d", "b", 3)
    assert routes.learn("d", "c", 2)
    assert not routes.learn("d", "b", 4)
    assert routes.learn("d", "e", 2)  # as short: the fresher one wins
    assert routes.routes() == {"d": ("e", 2)}


def test_routes_expire_and_an_expired_one_is_replaced_whatever_its_length():
    clock = Clock()
    routes = table(clock, ttl_s=10)
    routes.direct_failed("d")
    routes.learn("d", "b", 2)
    clock.t = 10
    assert routes.routes() == {}
    assert routes.next_hop("d", everyone) is None
    assert routes.learn("d", "c", 5)
    assert routes.routes() == {"d": ("c", 5)}
    clock.t = 25
    routes.expire()
    assert routes._routes == {}


def test_a_dead_next_hop_is_not_used():
    routes = table()
    routes.direct_failed("d")
    routes.learn("d", "b", 2)
    assert routes.next_hop("d", lambda node: node != "b") is None
    assert routes.next_hop("d", lambda node: node != "d") == "b"  # only the hop must be up


def test_a_dead_destination_with_a_working_direct_path_is_flooded():
    routes = table()
    assert routes.next_hop("d", lambda node: node != "d") is None


def test_forgetting_a_member_drops_routes_to_it_and_through_it():
    routes = table()
    for dest in ("c", "d", "e"):
        routes.direct_failed(dest)
    routes.learn("c", "b", 2)
    routes.learn("d", "b", 3)
    routes.learn("e", "c", 2)
    routes.forget("b")
    assert routes.routes() == {"e": ("c", 2)}
    routes.forget("e")
    assert routes.routes() == {}
    assert routes.direct_usable("e")  # a member that comes back starts afresh
