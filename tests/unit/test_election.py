"""Leader election's pure decisions, and the write fence in KubeApi against a real HTTP server.

The Lease protocol itself (take, renew, release, take over) runs against the real apiserver in
tests/cluster/test_failover.py; here: what a replica concludes from what it read, when, and
that no write leaves a replica whose fence has run out, not even one already waiting for a
connection when it ran out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client as k8s_client

from stagewright.handlers.election import (
    LEADER_ADDRESS_ANNOTATION,
    Fence,
    Observed,
    Timing,
    expired,
    lease_body,
    may_acquire,
    observe,
    released_body,
    valid_until,
)
from stagewright.handlers.kube_api import KubeApi, NotLeaderError

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
MOMENT = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)


def lease(holder: str | None, version: str, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "stagewright", "namespace": "ops", "resourceVersion": version}
    if "address" in spec:
        meta["annotations"] = {LEADER_ADDRESS_ANNOTATION: spec.pop("address")}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, **spec}}


# What a replica concludes


def test_an_unchanged_lease_ages_on_the_observers_clock_only() -> None:
    first = observe(None, lease("a", "1"), now=100.0)
    again = observe(first, lease("a", "1"), now=112.0)
    assert again.observed_at == 100.0  # the same version: first seen at 100
    assert not expired(again, 114.9)
    assert expired(again, 115.0)
    renewed = observe(again, lease("a", "2"), now=113.0)
    assert renewed.observed_at == 113.0  # a renew resets it, whatever its renewTime says
    assert not expired(renewed, 127.9)


def test_a_new_observer_waits_a_whole_lease_whatever_the_lease_says() -> None:
    """Clocks are not compared across machines: a renewTime long past does not shorten it."""
    stale = lease("a", "7", renewTime="2020-01-01T00:00:00.000000Z")
    seen = observe(None, stale, now=50.0)
    assert not may_acquire(seen, "b", 64.9)
    assert may_acquire(seen, "b", 65.0)


def test_who_may_take_the_lease() -> None:
    held = observe(None, lease("a", "1"), now=0.0)
    assert may_acquire(held, "a", 1.0)  # its own: renew
    assert not may_acquire(held, "b", 1.0)
    released = observe(held, lease(None, "2"), now=1.0)
    assert may_acquire(released, "b", 1.0)  # released on shutdown: at once


def test_the_leader_stops_before_any_standby_can_take_over() -> None:
    """A renew sent at s is seen by a standby no earlier than s, which then waits the lease
    duration from there; the leader's right ends at s + renew deadline, 5 s before."""
    sent = 1000.0
    standby_sees = sent  # the earliest a standby can observe the renew
    takeover = observe(None, lease("a", "9"), now=standby_sees)
    assert valid_until(sent, TIMING) < takeover.observed_at + takeover.duration
    assert takeover.observed_at + takeover.duration - valid_until(sent, TIMING) == 5


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(15, 15, 2), (15, 10, 10),
                                                              (10, 15, 2), (15, 10, 0)])
def test_timing_must_leave_room_between_renew_and_takeover(
        duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timing(duration, deadline, retry)


# What a replica writes


def test_a_new_lease_names_its_holder_and_where_it_can_be_reached() -> None:
    body = lease_body("ops", "stagewright", "pod-a_1", TIMING, previous=None,
                      address="10.0.0.7:9443", moment=MOMENT)
    assert body["metadata"] == {"name": "stagewright", "namespace": "ops",
                                "annotations": {LEADER_ADDRESS_ANNOTATION: "10.0.0.7:9443"}}
    assert body["spec"] == {"holderIdentity": "pod-a_1", "leaseDurationSeconds": 15,
                            "renewTime": "2026-12-07T12:00:00.123456Z",
                            "acquireTime": "2026-12-07T12:00:00.123456Z",
                            "leaseTransitions": 0}


def test_a_renew_keeps_acquire_time_and_transitions_a_takeover_counts_one() -> None:
    mine = observe(None, lease("a", "5", acquireTime="2026-12-07T11:00:00.000000Z",
                               leaseTransitions=3, address="10.0.0.1:1"), now=0)
    renew = lease_body("ops", "stagewright", "a", TIMING, previous=mine, address=None,
                       moment=MOMENT)
    assert renew["metadata"]["resourceVersion"] == "5"  # the write's precondition
    assert renew["spec"]["acquireTime"] == "2026-12-07T11:00:00.000000Z"
    assert renew["spec"]["leaseTransitions"] == 3
    assert LEADER_ADDRESS_ANNOTATION not in (renew["metadata"].get("annotations") or {})
    taken = lease_body("ops", "stagewright", "b", TIMING, previous=mine, address="10.0.0.2:2",
                       moment=MOMENT)
    assert taken["spec"]["leaseTransitions"] == 4
    assert taken["spec"]["acquireTime"] == "2026-12-07T12:00:00.123456Z"
    assert taken["metadata"]["annotations"] == {LEADER_ADDRESS_ANNOTATION: "10.0.0.2:2"}


def test_a_released_lease_has_no_holder_and_no_address() -> None:
    mine = observe(None, lease("a", "5", address="10.0.0.1:1", leaseTransitions=2), now=0)
    released = released_body(mine, MOMENT)
    assert released["spec"]["holderIdentity"] is None
    assert released["spec"]["leaseTransitions"] == 2
    assert released["metadata"]["resourceVersion"] == "5"
    assert released["metadata"]["annotations"] == {}
    assert may_acquire(observe(mine, released | {"metadata": {"resourceVersion": "6"}}, 1),
                       "b", 1.0)


def test_observed_reads_the_address_annotation() -> None:
    seen: Observed = observe(None, lease("a", "1", address="[fd00::7]:9443"), now=0)
    assert (seen.holder, seen.address) == ("a", "[fd00::7]:9443")


# The fence


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_fence_is_closed_until_opened_and_runs_out_by_the_clock() -> None:
    clock = Clock()
    fence = Fence(clock)
    with pytest.raises(NotLeaderError):
        fence.check()
    fence.open_until(10.0)
    fence.check()
    clock.now = 10.0  # frozen (SIGSTOP) past the deadline and woken: the clock ran on
    assert not fence.valid()
    with pytest.raises(NotLeaderError):
        fence.check()
    fence.open_until(30.0)
    fence.close()
    with pytest.raises(NotLeaderError):
        fence.check()


class Server:
    """A stand-in API server that records what reached it; ``hold`` keeps answers back."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.path))
        self.arrived.set()
        await self.hold.wait()
        return web.json_response({"metadata": {"name": "x", "resourceVersion": "1"}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    stand_in = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield stand_in, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _api(url: str, fence: Fence) -> KubeApi:
    configuration = k8s_client.Configuration()
    configuration.host = url
    return KubeApi(configuration, fence=fence)


async def test_a_closed_fence_stops_every_write_but_the_leases(
        server: tuple[Server, str]) -> None:
    stand_in, url = server
    fence = Fence()
    async with _api(url, fence) as api:
        with pytest.raises(NotLeaderError):
            await api.patch_imagebuild_status("ns", "web", {"phase": "Building"})
        with pytest.raises(NotLeaderError):
            await api.create_pod({"metadata": {"name": "web-1-1", "namespace": "ns"}})
        with pytest.raises(NotLeaderError):
            await api.delete_pod("ns", "web-1-1")
        with pytest.raises(NotLeaderError):
            await api.create_event({"metadata": {"namespace": "ns"}})
        assert stand_in.received == []  # nothing left the process
        await api.get_imagebuild("ns", "web")  # reads are never fenced
        await api.replace_lease({"metadata": {"name": "l", "namespace": "ops"}})
        fence.open_until(float("inf"))
        await api.patch_imagebuild_status("ns", "web", {"phase": "Building"})
    assert [method for method, _ in stand_in.received] == ["GET", "PUT", "PATCH"]


async def test_a_write_that_waited_for_a_connection_past_the_deadline_is_not_sent(
        server: tuple[Server, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """One connection, held by a slow request: the write queued behind it is checked again
    when it gets the connection, after the fence ran out, and never reaches the server."""
    monkeypatch.setattr("stagewright.handlers.kube_api.MAX_CONNECTIONS", 1)
    stand_in, url = server
    fence = Fence()
    fence.open_until(float("inf"))
    async with _api(url, fence) as api:
        stand_in.hold.clear()
        slow = asyncio.create_task(api.get_imagebuild("ns", "slow"))
        await asyncio.wait_for(stand_in.arrived.wait(), 5)
        queued = asyncio.create_task(api.patch_imagebuild_status("ns", "web", {"x": 1}))
        await asyncio.sleep(0.05)  # it waits for the one connection
        fence.close()  # the lease ran out meanwhile
        stand_in.hold.set()
        await slow
        with pytest.raises(NotLeaderError):
            await queued
    assert stand_in.received == [("GET", "/apis/stagewright.dev/v1alpha1/namespaces/ns/"
                                         "imagebuilds/slow")]
