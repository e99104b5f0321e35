"""The fleet's outage rules in virtual time: gates of several "processes" over one link.

Each :class:`OutageShare` stands for one process; :class:`MemoryOutageLink`
keeps the record and the probe lease as Redis does, on the loop's virtual clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ruxa_async import OutageGate, OutagePolicy, ServiceUnavailableError, SyncRuxaClient
from ruxa_async._fleet_outage import (
    MemoryOutageLink,
    OutageShare,
    SharedOutageGate,
    outage_gate,
    policy_of,
)
from tests.test_outage_gate import REFUSED, URL, Service
from tests.virtual_time import T0, VirtualTimeLoop, virtual_time


def fleet_gates(
    loop: VirtualTimeLoop, count: int, link: MemoryOutageLink | None = None, **policy: Any
) -> list[SharedOutageGate]:
    """``count`` gates, one per "process", each having reached the service once."""
    link = link or MemoryOutageLink(clock=loop.time)
    gates = []
    for _ in range(count):
        gate = link.share().gate(
            OutagePolicy(**policy), url=URL, clock=loop.time, sleep=asyncio.sleep
        )
        gate.on_reply()
        gates.append(gate)
    return gates


async def settle() -> None:
    """Let background announcements run (no virtual time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


@virtual_time
async def test_one_process_closing_pauses_the_fleet(loop: VirtualTimeLoop) -> None:
    """A gate that closes on its own failures closes every other gate without a failure."""
    a, b, c = fleet_gates(loop, 3, failures=2)
    a.on_failure(REFUSED)
    await settle()
    assert b.is_open()  # one failure is not an outage yet
    a.on_failure(REFUSED)
    await settle()
    assert not (a.is_open())
    assert not (b.is_open())
    assert not (c.is_open())
    stats = b.statistics()
    assert (stats.outages, stats.fleet_closes) == (1, 1)
    assert a.statistics().fleet_closes == 0


@virtual_time
async def test_the_fleet_probes_at_one_gates_pace(loop: VirtualTimeLoop) -> None:
    """Three processes with waiters send the probes one gate alone would: 0.5, 1.5, 3.5, ..."""
    gates = fleet_gates(loop, 3, failures=1, probe_initial=0.5, probe_max=2.0)
    service = Service(loop, up_at=T0 + 9.0)
    gates[0].on_failure(REFUSED)
    await settle()
    waiters = [gate.wait_open(service.probe) for gate in gates for _ in range(5)]
    await asyncio.gather(*waiters)
    assert service.probes == [0.5, 1.5, 3.5, 5.5, 7.5, 9.5]
    assert all(gate.is_open() for gate in gates)
    assert sum(gate.statistics().probes for gate in gates) == 6


@virtual_time
async def test_a_reply_anywhere_reopens_every_gate(loop: VirtualTimeLoop) -> None:
    """A late reply in one process resumes the waiters of all, with no probe sent."""
    a, b = fleet_gates(loop, 2, failures=1)
    service = Service(loop)
    a.on_failure(REFUSED)
    await settle()
    waiters = [asyncio.ensure_future(g.wait_open(service.probe)) for g in (a, b, b)]
    await asyncio.sleep(0.3)
    b.on_reply()
    await asyncio.gather(*waiters)
    assert loop.time() == T0 + 0.3
    assert service.probes == []
    assert a.statistics().fleet_reopens == 1
    assert b.statistics().fleet_reopens == 0


@virtual_time
async def test_a_process_failing_right_after_the_fleet_recovered_waits_alone(
    loop: VirtualTimeLoop,
) -> None:
    """Closing again just after another's reply reopened it: the others keep sending."""
    a, b = fleet_gates(loop, 2, failures=1)
    a.on_failure(REFUSED)
    await settle()
    b.on_reply()  # b reaches the service: a's trouble is its own
    await settle()
    assert a.is_open()
    a.on_failure(REFUSED)
    await settle()
    assert not a.is_open()
    assert b.is_open()
    a.on_reply()
    await asyncio.sleep(11.0)  # later, a's outage is news for the fleet again
    a.on_failure(REFUSED)
    await settle()
    assert not b.is_open()
    assert b.statistics().fleet_closes == 2


@virtual_time
async def test_the_bound_counts_from_the_fleets_start(loop: VirtualTimeLoop) -> None:
    """A process that joins an outage 6 s late gives up at the fleet's ``max_outage``."""
    link = MemoryOutageLink(clock=loop.time)
    (first,) = fleet_gates(loop, 1, link, failures=1, max_outage=10.0)
    first.on_failure(REFUSED)
    await settle()
    await asyncio.sleep(6.0)
    (late,) = fleet_gates(loop, 1, link, failures=1, max_outage=10.0)
    late.on_failure(REFUSED)
    with pytest.raises(ServiceUnavailableError):
        await late.wait_open(Service(loop).probe)
    assert loop.time() == pytest.approx(T0 + 10.0)


@virtual_time
async def test_a_record_nobody_keeps_alive_does_not_age_a_new_outage(
    loop: VirtualTimeLoop,
) -> None:
    """An outage left on record by a fleet that stopped does not count against the next one."""
    link = MemoryOutageLink(clock=loop.time)
    (gone,) = fleet_gates(loop, 1, link, failures=1, max_outage=10.0)
    gone.on_failure(REFUSED)  # recorded, then nobody waits, probes or announces a recovery
    await settle()
    await asyncio.sleep(15.0)
    (fresh,) = fleet_gates(loop, 1, link, failures=1, max_outage=10.0)
    fresh.on_failure(REFUSED)
    with pytest.raises(ServiceUnavailableError):
        await fresh.wait_open(Service(loop).probe)
    assert loop.time() == pytest.approx(T0 + 25.0)


@virtual_time
async def test_a_missed_recovery_is_found_at_the_next_turn(loop: VirtualTimeLoop) -> None:
    """A process that heard nothing (its share is off the link's news) still resumes."""
    link = MemoryOutageLink(clock=loop.time)
    (a,) = fleet_gates(loop, 1, link, failures=1)
    deaf = OutageShare(link).gate(OutagePolicy(failures=1), url=URL, clock=loop.time)
    deaf.on_reply()
    service = Service(loop, up_at=T0 + 2.0)
    a.on_failure(REFUSED)
    deaf.on_failure(REFUSED)
    await settle()
    await asyncio.sleep(2.2)  # no waiter in a: its late reply ends the fleet's record
    a.on_reply()
    await settle()
    assert a.is_open()
    assert not deaf.is_open()
    await deaf.wait_open(service.probe)
    assert deaf.is_open()
    assert len(service.probes) == 1


@virtual_time
async def test_a_process_still_down_puts_the_outage_back_on_record(
    loop: VirtualTimeLoop,
) -> None:
    """A failed probe of an outage the fleet has no record of any more pauses the fleet again."""
    link = MemoryOutageLink(clock=loop.time)
    (other,) = fleet_gates(loop, 1, link, failures=1)
    deaf = OutageShare(link).gate(OutagePolicy(failures=1), url=URL, clock=loop.time)
    deaf.on_reply()
    deaf.on_failure(REFUSED)
    await settle()
    assert not other.is_open()
    other.on_reply()  # a late reply ends the fleet's record; deaf does not hear of it
    await settle()
    assert other.is_open()
    assert not deaf.is_open()
    service = Service(loop, up_at=T0 + 3.0)
    waiter = asyncio.ensure_future(deaf.wait_open(service.probe))
    await asyncio.sleep(0.6)
    assert service.probes == [0.5]
    assert not other.is_open()
    assert other.statistics().fleet_closes == 2
    await waiter
    assert service.probes == [0.5, 1.5, 2.5, 3.5]
    assert other.is_open()


def test_outage_argument_precedence() -> None:
    """An explicit gate wins; a policy (or None) is shared when the coordinator shares outages."""

    class Sharing:
        outage = MemoryOutageLink().share()

    policy = OutagePolicy(max_outage=42.0)
    mine = OutageGate(policy, url=URL)
    assert outage_gate(mine, Sharing(), url=URL) == (policy, mine)
    got_policy, gate = outage_gate(policy, Sharing(), url=URL)
    assert isinstance(gate, SharedOutageGate)
    assert got_policy is policy
    assert gate.policy is policy
    default, gate = outage_gate(None, Sharing(), url=URL)
    assert isinstance(gate, SharedOutageGate)
    assert default == OutagePolicy()
    _, gate = outage_gate(policy, None, url=URL)
    assert type(gate) is OutageGate
    assert policy_of(mine) is policy
    assert policy_of(None) == OutagePolicy()


def test_sync_client_takes_a_gate_and_bounds_its_calls_by_its_policy() -> None:
    """SyncRuxaClient(outage=<gate>): its request bound follows the gate's ``max_outage``."""
    long = OutageGate(OutagePolicy(max_outage=1000.0), url=URL)
    with SyncRuxaClient("sk-test", base_url=URL, outage=long) as client:
        assert client.outage_policy.max_outage == 1000.0
        assert client.request_timeout > 1000.0
