"""Fitting a token bucket to the sends it admitted (ruxa_async._bucketfit), on made-up times."""

from __future__ import annotations

import pytest

from ruxa_async._bucketfit import Drain, agreement, excess, joint_fit, rate_for_burst

RATE, BURST = 100.0, 20.0


def first_refusal(times: list[float], rate: float = RATE, burst: float = BURST) -> Drain:
    """Serve ``times`` from a full bucket; the sends before its first refusal, and when it came."""
    tokens, stamp = burst, times[0]
    for i, t in enumerate(times):
        tokens = min(burst, tokens + (t - stamp) * rate)
        stamp = t
        if tokens < 1.0:
            return Drain(tuple(times[:i]), t)
        tokens -= 1.0
    raise AssertionError("the bucket never ran dry")


def ramp(start: float, doubling: float, until: float) -> list[float]:
    """Sends at a pace doubling every ``doubling`` seconds, from ``start`` per second."""
    times, t = [], 0.0
    while t < until:
        times.append(t)
        t += 1.0 / (start * 2.0 ** (t / doubling))
    return times


def steady(rate: float, start: float, until: float) -> list[float]:
    """Sends evenly spaced at ``rate`` per second."""
    n = int((until - start) * rate)
    return [start + i / rate for i in range(n)]


def test_excess_at_the_true_rate_is_the_burst() -> None:
    """Whatever the shape of the sends, the excess at the server's rate is its burst."""
    for times in (ramp(20.0, 0.5, 3.0), steady(130.0, 0.0, 10.0), steady(300.0, 0.0, 5.0)):
        assert excess(first_refusal(times), RATE) == pytest.approx(BURST, abs=1.0)


def test_one_refusal_cannot_tell_rate_from_burst() -> None:
    """A single drain fits a slower rate with a larger burst just as well."""
    drain = first_refusal(ramp(20.0, 0.5, 3.0))
    assert excess(drain, 80.0) > BURST + 5.0
    assert excess(drain, 150.0) < BURST - 5.0


def test_a_fast_climb_and_a_slow_probe_pin_down_rate_and_burst() -> None:
    """The ramp's drain and a probe's drain from a refilled bucket cross at the server's bucket."""
    climb = first_refusal(ramp(20.0, 0.5, 3.0))
    probe = first_refusal(steady(90.0, 5.0, 7.0) + steady(110.0, 7.0, 20.0))
    fit = joint_fit(climb, probe, 40.0, 110.0)  # up to the probe's pace
    assert fit is not None
    rate, burst = fit
    assert rate == pytest.approx(RATE, rel=0.03)
    assert burst == pytest.approx(BURST, abs=2.0)


def test_drains_of_somewhat_different_lengths_fit() -> None:
    """Windows 1.65 times apart (sends at 150/s, then 130/s) still cross at the server's bucket."""
    fast = first_refusal(steady(150.0, 0.0, 5.0))
    slow = first_refusal(steady(130.0, 10.0, 20.0))
    fit = joint_fit(fast, slow, 40.0, 150.0)
    assert fit is not None
    assert fit[0] == pytest.approx(RATE, rel=0.02)
    assert fit[1] == pytest.approx(BURST, abs=1.0)


def test_parallel_drains_have_no_fit() -> None:
    """Two drains of the same shape give no crossing, so no fit is claimed."""
    a = first_refusal(steady(150.0, 0.0, 5.0))
    b = Drain(tuple(t + 10.0 for t in a.times), a.end + 10.0)
    assert joint_fit(a, b, 40.0, 250.0) is None


def test_a_known_burst_gives_the_rate_from_one_drain() -> None:
    """With the burst known, one refusal says the rate, e.g. after the limit halved."""
    drain = first_refusal(steady(90.0, 0.0, 10.0), rate=50.0)
    rate = rate_for_burst(drain, BURST, 36.0, 90.0)
    assert rate == pytest.approx(50.0, rel=0.05)
    assert rate_for_burst(drain, BURST, 60.0, 90.0) is None  # the answer lies below the range
    assert rate_for_burst(Drain((), 1.0), BURST, 10.0, 90.0) is None


def test_like_drains_agree_near_the_servers_rate_without_pinning_it() -> None:
    """Two steady drains of like windows: no fit is claimed, but they agree near the rate."""
    fast = first_refusal(steady(150.0, 0.0, 5.0))
    slow = first_refusal(steady(140.0, 10.0, 20.0))
    assert joint_fit(fast, slow, 60.0, 150.0) is None
    rate = agreement(fast, slow, 60.0, 150.0)
    assert rate == pytest.approx(RATE, rel=0.1)
