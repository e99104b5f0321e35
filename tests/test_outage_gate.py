"""The outage gate, run in virtual time: the loop's clock jumps to the next timer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ruxa_async import APIConnectionError, OutagePolicy, ServiceUnavailableError
from ruxa_async._outage import OutageGate, call_deadline
from tests.virtual_time import T0, VirtualTimeLoop, virtual_time

URL = "http://ruxa.example:8080"


REFUSED = APIConnectionError("POST /x: cannot connect (Connection refused)", request_sent=False)


class Service:
    """A probe target that is down until ``up_at`` (virtual time); records probe times."""

    def __init__(self, loop: VirtualTimeLoop, up_at: float = float("inf")) -> None:
        self.loop = loop
        self.up_at = up_at
        self.probes: list[float] = []

    async def probe(self) -> None:
        now = self.loop.time()
        self.probes.append(round(now - T0, 6))
        if now < self.up_at:
            raise REFUSED


def make_gate(loop: VirtualTimeLoop, **policy: Any) -> OutageGate:
    return OutageGate(OutagePolicy(**policy), url=URL, clock=loop.time, sleep=asyncio.sleep)


def contacted(loop: VirtualTimeLoop, **policy: Any) -> OutageGate:
    """A gate whose service has answered once (so the first-contact rule is over)."""
    gate = make_gate(loop, **policy)
    gate.on_reply()
    return gate


@virtual_time
async def test_gate_closes_after_failures_in_a_row(loop: VirtualTimeLoop) -> None:
    """Only ``failures`` connection failures with no reply between them close the gate."""
    gate = contacted(loop, failures=3)
    assert gate.on_failure(REFUSED) is False
    assert gate.on_failure(REFUSED) is False
    gate.on_reply()
    assert gate.on_failure(REFUSED) is False
    assert gate.on_failure(REFUSED) is False
    assert gate.is_open()
    assert gate.on_failure(REFUSED) is True
    assert not gate.is_open()
    assert gate.statistics().outages == 1


@virtual_time
async def test_first_failure_closes_a_service_never_reached(loop: VirtualTimeLoop) -> None:
    """Before any reply, one failure is enough: a wrong URL is not retried per request."""
    gate = make_gate(loop, failures=3)
    assert gate.on_failure(REFUSED) is True
    assert not gate.is_open()


@virtual_time
async def test_one_prober_at_a_backoff_pace_while_many_wait(loop: VirtualTimeLoop) -> None:
    """Fifty waiters cost one probe at a time: 0.5 s, then doubling up to 2 s apart."""
    gate = contacted(loop, failures=1, probe_initial=0.5, probe_max=2.0)
    service = Service(loop, up_at=T0 + 9.0)
    gate.on_failure(REFUSED)
    await asyncio.gather(*(gate.wait_open(service.probe) for _ in range(50)))
    assert service.probes == [0.5, 1.5, 3.5, 5.5, 7.5, 9.5]


@virtual_time
async def test_first_success_reopens_for_every_waiter_at_once(loop: VirtualTimeLoop) -> None:
    """Every waiter resumes at the moment the successful probe returns, not on its own timer."""
    gate = contacted(loop, failures=1)
    service = Service(loop, up_at=T0 + 3.0)
    gate.on_failure(REFUSED)
    resumed: list[float] = []

    async def waiter() -> None:
        await gate.wait_open(service.probe)
        resumed.append(loop.time())

    await asyncio.gather(*(waiter() for _ in range(20)))
    assert set(resumed) == {T0 + 3.5}
    stats = gate.statistics()
    assert (stats.down, stats.down_seconds, stats.probes) == (False, 3.5, 4)


@virtual_time
async def test_a_late_reply_reopens_the_gate_without_a_probe(loop: VirtualTimeLoop) -> None:
    """Any reply (to a request sent before the gate closed) proves the service is back."""
    gate = contacted(loop, failures=1)
    service = Service(loop)
    gate.on_failure(REFUSED)
    waiter = asyncio.ensure_future(gate.wait_open(service.probe))
    await asyncio.sleep(0.2)
    gate.on_reply()
    await waiter
    assert service.probes == []
    assert loop.time() == T0 + 0.2


@virtual_time
async def test_outage_longer_than_max_outage_fails_every_waiter_once(
    loop: VirtualTimeLoop,
) -> None:
    """After ``max_outage`` every waiter gets ServiceUnavailableError naming the URL and cause."""
    gate = contacted(loop, failures=1, max_outage=10.0)
    service = Service(loop)
    gate.on_failure(REFUSED)
    results = await asyncio.gather(
        *(gate.wait_open(service.probe) for _ in range(5)), return_exceptions=True
    )
    assert loop.time() == T0 + 10.0
    assert all(isinstance(r, ServiceUnavailableError) for r in results)
    error = results[0]
    assert isinstance(error, ServiceUnavailableError)
    assert URL in str(error)
    assert "Connection refused" in str(error)
    assert error.request_sent is False
    assert gate.statistics().gave_up == 1


@virtual_time
async def test_after_giving_up_callers_fail_fast_until_a_probe_is_due(
    loop: VirtualTimeLoop,
) -> None:
    """Past the bound a caller fails at once, or probes when one is due, and recovers if up."""
    gate = make_gate(loop, first_contact=5.0, probe_initial=0.5, probe_max=2.0)
    service = Service(loop, up_at=T0 + 20.0)
    gate.on_failure(REFUSED)
    with pytest.raises(ServiceUnavailableError):
        await gate.wait_open(service.probe)
    assert loop.time() == T0 + 5.0
    probes = len(service.probes)
    with pytest.raises(ServiceUnavailableError):
        await gate.wait_open(service.probe)  # no probe due yet: fails without a request
    assert len(service.probes) == probes
    await asyncio.sleep(30.0)
    await gate.wait_open(service.probe)  # one due probe finds the service back
    assert gate.is_open()
    assert len(service.probes) == probes + 1


@virtual_time
async def test_call_deadline_bounds_the_wait(loop: VirtualTimeLoop) -> None:
    """A call with its own deadline leaves the gate at that deadline; others keep waiting."""
    gate = contacted(loop, failures=1)
    service = Service(loop, up_at=T0 + 8.0)
    gate.on_failure(REFUSED)
    other = asyncio.ensure_future(gate.wait_open(service.probe))
    with call_deadline(3.0, clock=loop.time), pytest.raises(ServiceUnavailableError) as caught:
        await gate.wait_open(service.probe)
    assert loop.time() == T0 + 3.0
    assert "timeout" in str(caught.value)
    await other
    assert loop.time() == T0 + 8.5


@virtual_time
async def test_a_cancelled_prober_hands_probing_to_another_waiter(loop: VirtualTimeLoop) -> None:
    """Cancelling the caller that was probing does not leave the others waiting forever."""
    gate = contacted(loop, failures=1)
    service = Service(loop, up_at=T0 + 4.0)
    gate.on_failure(REFUSED)
    prober = asyncio.ensure_future(gate.wait_open(service.probe))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(gate.wait_open(service.probe)) for _ in range(3)]
    await asyncio.sleep(1.0)
    prober.cancel()
    await asyncio.gather(*others)
    assert gate.is_open()
    assert service.probes[0] == 0.5


@virtual_time
async def test_logs_say_when_the_service_went_away_and_came_back(loop: VirtualTimeLoop) -> None:
    """One WARNING when the gate closes, one INFO when it reopens, both naming the URL."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ruxa_async")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        gate = contacted(loop, failures=1)
        gate.on_failure(REFUSED)
        await gate.wait_open(Service(loop, up_at=T0 + 1.0).probe)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert all(URL in text for _, text in lines)
    assert "stopped answering" in lines[0][1]
    assert "answers again" in lines[1][1]
