"""The application protocols (alerts, search, state sync) against a fake engine,
and a new protocol plugged into real nodes without touching the engine."""

from __future__ import annotations

import asyncio

import pytest

from flowmesh_edge.mesh import Application, InMemoryNetwork, MeshMessage, MessageType
from flowmesh_edge.mesh.alerts import AckTracker, Alerts
from flowmesh_edge.mesh.config import MeshConfig
from flowmesh_edge.mesh.membership import MemberEvent
from flowmesh_edge.mesh.search import Search, SearchResult
from flowmesh_edge.mesh.simulation import converge, run_virtual, start_mesh
from flowmesh_edge.mesh.state_sync import StateSync
from flowmesh_edge.mesh.wire import Update
from tests.conftest import until
from tests.mesh.fakes import FakeHost


def message(mtype: MessageType, origin: str, payload: dict, message_id: int = 1,
            path: tuple[str, ...] = ()) -> MeshMessage:
    return MeshMessage(mtype, origin, payload, message_id, path, sender=origin)


def attached(app, *members: str, **cfg):
    host = FakeHost(config=MeshConfig(**cfg))
    host.join(*members)
    app.attach(host)
    return host, app


# -- acks ---------------------------------------------------------------------------------


def test_ack_tracker_counts_each_awaited_member_once():
    t = AckTracker(7, {"b", "c", "d"})
    assert t.ack("b") and not t.ack("b") and not t.ack("stranger")
    t.depart("c")
    t.depart("b")  # acked already: stays acked
    assert (t.pending, t.acked, t.departed) == ({"d"}, {"b"}, {"c"})
    assert not t.settled and not t.complete
    t.ack("d")
    assert t.settled and not t.complete  # c never acked


def test_ack_tracker_is_complete_when_everyone_acked():
    t = AckTracker(1, {"b"})
    t.ack("b")
    assert t.settled and t.complete


# -- alerts --------------------------------------------------------------------------------


def test_a_critical_alert_is_acknowledged_to_its_origin_even_when_it_comes_again():
    host, alerts = attached(Alerts())
    alert = message(MessageType.ALERT, "b", {"priority": "critical", "alert": {}}, message_id=42)
    assert alerts.receive(alert) is True  # the user's handlers see it too
    alerts.duplicate(alert)
    assert host.routed == [(MessageType.ACK, "b", {"ack": 42})] * 2
    assert alerts.stats.received == 1


def test_a_normal_alert_is_not_acknowledged():
    host, alerts = attached(Alerts())
    normal = message(MessageType.ALERT, "b", {"priority": "normal", "alert": {}})
    assert alerts.receive(normal)
    alerts.duplicate(normal)
    assert host.routed == []


def test_a_critical_alert_is_resent_to_silent_members_until_they_ack():
    async def main():
        host, alerts = attached(Alerts(), "b", "c", critical_retry_s=0.5, critical_deadline_s=5)
        task = asyncio.create_task(alerts.broadcast({"type": "fire"}, priority="critical"))
        await asyncio.sleep(0.01)
        (mtype, payload), = host.originated
        alerts.receive(message(MessageType.ACK, "b", {"ack": 1}))
        await asyncio.sleep(0.6)  # c is silent: resent to c alone
        resent = [(t, e.destination) for t, e in host.resent]
        alerts.receive(message(MessageType.ACK, "c", {"ack": 1}))
        report = await task
        return payload, resent, report, alerts.stats

    payload, resent, report, stats = run_virtual(main())
    assert payload == {"priority": "critical", "alert": {"type": "fire"}}
    assert resent == [(MessageType.ALERT, "c")]
    assert report.complete and report.acked == {"b", "c"} and not report.missing
    assert (stats.sent, stats.retransmits, stats.critical_complete) == (1, 1, 1)


def test_a_member_dead_before_acking_is_reported_departed_not_retried():
    async def main():
        host, alerts = attached(Alerts(), "b", critical_retry_s=0.5, critical_deadline_s=2)
        task = asyncio.create_task(alerts.broadcast({}, priority="critical"))
        await asyncio.sleep(0.01)
        host.members.apply(Update(MessageType.DEAD, "b", 1, origin="c"))
        return await task, host.resent

    report, resent = run_virtual(main())
    assert report.departed == {"b"} and not report.complete and resent == []


def test_an_unknown_priority_is_refused():
    host, alerts = attached(Alerts())
    with pytest.raises(ValueError, match="priority"):
        asyncio.run(alerts.broadcast({}, priority="urgent"))


# -- state sync ----------------------------------------------------------------------------


def test_updating_state_bumps_its_version_and_spreads_it():
    host, sync = attached(StateSync())
    sync.set_initial({"fps": 30})
    assert sync.update({"battery": 80}) == 2
    assert host.originated == [(MessageType.NODE_STATE_SYNC, {
        "state": {"fps": 30, "battery": 80}, "version": 2, "inc": host.incarnation})]


def test_remote_states_merge_by_incarnation_then_version():
    host, sync = attached(StateSync())
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"state": {"v": 2}, "version": 2, "inc": 5}))
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"state": {"v": 1}, "version": 1, "inc": 5}))
    assert sync.remote["b"] == (5, 2, {"v": 2})
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"state": {"v": 0}, "version": 1, "inc": 6}))
    assert sync.remote["b"] == (6, 1, {"v": 0})  # restarted: its counter started again


def test_a_pull_is_answered_and_a_malformed_state_counted():
    host, sync = attached(StateSync())
    sync.set_initial({"fps": 30})
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"pull": True}))
    assert host.routed == [(MessageType.NODE_STATE_SYNC, "b", {"state": {"fps": 30}, "version": 1,
                                                                "inc": host.incarnation})]
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"state": [1], "version": 1}))
    assert host.dropped == {"malformed": 1} and "b" not in sync.remote


def test_stamps_heard_in_probes_pull_only_newer_states_once():
    host, sync = attached(StateSync())
    sync.heard("b", (5, 0))  # no state at all: nothing to pull
    sync.heard("b", (5, 2))  # nothing known about b yet: pull
    sync.heard("b", (5, 2))  # asked already, the answer is on its way: not again
    sync.receive(message(MessageType.NODE_STATE_SYNC, "b", {"state": {"v": 3}, "version": 3, "inc": 5}))
    sync.heard("b", (5, 3))  # what we hold: no pull
    sync.heard("b", (5, 4))  # newer: pull
    host.clock.t += 2  # its answer was lost: the next probe asks again
    sync.heard("b", (5, 4))
    sync.heard("b", (6, 0))  # restarted, no state yet: nothing to pull
    assert [r[1] for r in host.routed] == ["b", "b", "b"]


def test_the_stamp_is_the_incarnation_at_the_last_update_and_the_version():
    host, sync = attached(StateSync())
    assert sync.stamp() == (host.incarnation, 0)
    host.originate = lambda mtype, payload: None
    host.incarnation += 3
    sync.update({"fps": 1})
    assert sync.stamp() == (host.incarnation, 1)


def test_a_removed_member_state_is_forgotten():
    host, sync = attached(StateSync())
    sync.remote["b"] = (1, 1, {"x": 1})
    sync.member_event(MemberEvent("dead", "b", 1))
    assert "b" in sync.remote
    sync.member_event(MemberEvent("removed", "b", 1))
    assert "b" not in sync.remote


# -- search --------------------------------------------------------------------------------


def test_a_query_is_answered_by_every_handler_with_something_to_say():
    async def main():
        host, search = attached(Search())
        host.user_handlers[MessageType.SEARCH_QUERY] = [
            lambda m: {"seen": m.payload["query"]["person"]}, lambda m: None, _async_answer]
        consumed = not search.receive(message(MessageType.SEARCH_QUERY, "b",
                                              {"query_id": "b:1", "query": {"person": "p1"}}))
        await asyncio.gather(*host.tasks)
        return consumed, host.routed

    async def _async_answer(m):
        return "async"

    consumed, routed = run_virtual(main())
    assert consumed  # the handlers are called for their answers, not a second time
    assert routed == [(MessageType.SEARCH_RESULT, "b", {"query_id": "b:1", "result": {"seen": "p1"}}),
                      (MessageType.SEARCH_RESULT, "b", {"query_id": "b:1", "result": "async"})]


def test_the_asker_collects_the_answers_that_arrive_in_time():
    async def main():
        host, search = attached(Search())
        task = asyncio.create_task(search.query({"person": "p1"}, timeout=1.0))
        await asyncio.sleep(0.1)
        (mtype, payload), = host.originated
        qid = payload["query_id"]
        search.receive(message(MessageType.SEARCH_RESULT, "c", {"query_id": qid, "result": 1}, path=("b",)))
        search.receive(message(MessageType.SEARCH_RESULT, "d", {"query_id": "other", "result": 2}))
        results = await task
        search.receive(message(MessageType.SEARCH_RESULT, "e", {"query_id": qid, "result": 3}))  # too late
        return results

    assert run_virtual(main()) == [SearchResult("c", 1, 2)]


# -- a new protocol, plugged in ------------------------------------------------------------


class Registry(Application):
    """A toy hash registry: entries broadcast, kept by every member, not shown to on()."""

    types = frozenset({MessageType.ROUTE_BROADCAST})

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    def add(self, key: str, value: str) -> None:
        self.entries[key] = value
        self.host.originate(MessageType.ROUTE_BROADCAST, {"key": key, "value": value})

    def receive(self, message: MeshMessage) -> bool:
        self.entries[message.payload["key"]] = message.payload["value"]
        return False


def test_a_new_application_protocol_plugs_into_the_engine():
    async def main():
        net = InMemoryNetwork(seed=21)
        nodes = await start_mesh(5, net)
        await converge(nodes)
        registries = [Registry() for _ in nodes]
        seen_by_users = []
        for node, registry in zip(nodes, registries, strict=True):
            node.register(registry)
            node.on(MessageType.ROUTE_BROADCAST, seen_by_users.append)
        registries[2].add("abc", "frame-17")
        await until(lambda: all(r.entries == {"abc": "frame-17"} for r in registries), 2)
        for n in nodes:
            await n.stop()
        return seen_by_users

    assert run_virtual(main()) == []


def test_a_message_type_has_one_owner_and_must_be_an_envelope():
    async def main():
        nodes = await start_mesh(1, InMemoryNetwork())
        errors = []
        for app in (Alerts(), _PingApp()):
            try:
                nodes[0].register(app)
            except ValueError as exc:
                errors.append(str(exc))
        await nodes[0].stop()
        return errors

    errors = run_virtual(main())
    assert "ALERT" in errors[0] and "ACK" in errors[0]
    assert "PING" in errors[1]


class _PingApp(Application):
    types = frozenset({MessageType.PING})
