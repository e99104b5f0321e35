"""The in-process rate state: episodes, gates and the token bucket, on an injected clock."""

from __future__ import annotations

import asyncio

from ruxa_async._ratestate import LearnedLimit, LocalRateState, RateState


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_local_state_satisfies_the_protocol() -> None:
    """LocalRateState is a RateState (the interface a shared store implements)."""
    assert isinstance(LocalRateState(), RateState)


def test_read_returns_what_was_written() -> None:
    """A learned limit written for one class is read back for that class only."""
    state = LocalRateState()
    learned = LearnedLimit(rate=9.0, burst=3.0, estimate=10.0, source="429s", episode=1)

    async def scenario() -> None:
        assert await state.read("create") is None
        await state.write("create", learned)
        assert await state.read("create") == learned
        assert await state.read("query") is None

    asyncio.run(scenario())


def test_only_the_first_429_of_an_episode_begins_it() -> None:
    """begin_episode is a compare-and-increment on the class's counter."""
    state = LocalRateState()

    async def scenario() -> None:
        assert await state.begin_episode("create", 0)
        assert not await state.begin_episode("create", 0)
        assert await state.begin_episode("create", 1)
        assert await state.begin_episode("query", 0)

    asyncio.run(scenario())


def test_gate_closes_for_relative_seconds_and_never_shortens() -> None:
    """A client gate closes both classes; a shorter close keeps the longer deadline."""
    clock = Clock()
    state = LocalRateState(clock)
    state.close_gate_now("client", 2.0)
    state.close_gate_now("client", 1.0)
    assert state.gate_remaining_now("client") == 2.0
    clock.now += 1.5
    assert state.gate_remaining_now("client") == 0.5
    assert state.gate_remaining_now("query") == 0.0
    clock.now += 1.0
    assert state.gate_remaining_now("client") == 0.0


def test_bucket_refills_at_the_given_rate_up_to_the_burst() -> None:
    """take() grants from a full bucket, then says how long until the next token."""
    clock = Clock()
    state = LocalRateState(clock)
    assert [state.take_now("create", 1, 10.0, 2.0) for _ in range(2)] == [0.0, 0.0]
    assert abs(state.take_now("create", 1, 10.0, 2.0) - 0.1) < 1e-9
    clock.now += 10.0
    assert state.take_now("create", 2, 10.0, 2.0) == 0.0
    assert state.take_now("create", 1, 10.0, 2.0) > 0.0


def test_closing_a_gate_spends_no_saved_tokens_at_reopening() -> None:
    """After a gate closes, one token is there when it reopens, and no saved burst."""
    clock = Clock()
    state = LocalRateState(clock)
    assert state.take_now("query", 1, 10.0, 5.0) == 0.0
    state.close_gate_now("query", 1.0)
    clock.now += 1.0
    assert state.take_now("query", 1, 10.0, 5.0) == 0.0
    assert abs(state.take_now("query", 1, 10.0, 5.0) - 0.1) < 1e-9
