"""The estimator of one endpoint class (ruxa_async._pace.Pace), driven on a made-up clock."""

from __future__ import annotations

import math
import random

import pytest

from ruxa_async._bucketfit import Drain
from ruxa_async._pace import Pace


def unknown(unit: float = 1.0, start_rate: float = 10.0) -> Pace:
    """A pace with nothing configured, ramping from ``start_rate`` (10/s)."""
    return Pace(
        ceiling=None,
        burst=10,
        start_rate=start_rate,
        min_rate=0.2,
        unit=unit,
        adaptive=True,
        now=0.0,
    )


def send(pace: Pace, start: float, end: float, rate: float, *, accepted: bool = True) -> float:
    """Send evenly at ``rate`` over [start, end); return the last grant time."""
    t = start
    while t < end:
        pace.on_sent(t)
        if accepted:
            pace.on_accepted(t, t)
        t += 1.0 / rate
    return t


def test_ramp_doubles_every_half_unit_of_demand() -> None:
    """While unknown, the pace doubles per half unit of demand (capped by what was sent)."""
    pace = unknown()
    send(pace, 0.0, 1.0, 40.0)
    pace.advance(0.5, 1.0)
    assert pace.phase == "ramp"
    assert pace.rate == pytest.approx(20.0)
    pace.advance(0.5, 1.0)
    assert pace.rate == pytest.approx(40.0)


def test_ramp_never_runs_twice_ahead_of_the_sends() -> None:
    """A client that sends 5/s cannot ramp its pace past 10/s."""
    pace = unknown()
    send(pace, 0.0, 1.0, 5.0)
    pace.advance(3.0, 1.0)
    assert pace.rate == pytest.approx(10.0)


def test_ramp_429_settles_under_the_admitted_rate() -> None:
    """A 429 while ramping: half the pace, at most 0.9 of what the server admitted."""
    pace = unknown()
    last = send(pace, 0.0, 2.0, 100.0)
    pace.rate = 240.0
    pace.on_refused(last, 240.0, last)
    assert pace.phase == "hold"
    assert pace.source == "429s"
    assert pace.estimate == pytest.approx(90.0, rel=0.02)  # 0.9 of 100 admitted per second
    assert pace.rate == pytest.approx(0.95 * pace.estimate)


def test_hold_then_probe_then_a_429_near_the_limit() -> None:
    """After the hold the probe climbs; its 429 gives an estimate between base and the peak."""
    pace = unknown()
    last = send(pace, 0.0, 2.0, 100.0)
    pace.on_refused(last, 200.0, last)
    base = pace.rate
    pace.advance(1.0, last)  # one unit after the ramp's episode
    assert pace.phase == "probe"
    assert pace.probes == 1
    send(pace, last, last + 3.0, 1.1 * base)
    pace.advance(3.0, last + 3.0)
    peak = pace.rate
    assert peak == pytest.approx(base * 2 ** ((3 / 4) ** 2))
    pace.on_refused(last + 3.0, peak, last + 3.0)
    assert base / 0.95 <= pace.estimate <= peak  # type: ignore[operator]


def test_repeated_429s_at_the_settled_pace_step_down_faster() -> None:
    """Each 429 in a row at the settled pace steps further down (10 %, then 19 %)."""
    pace = Pace(
        ceiling=100.0, burst=10, start_rate=10.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
    )
    pace.on_refused(0.5, 100.0, 0.5)
    first = pace.rate
    pace.on_refused(1.0, first, 1.0)
    assert first == pytest.approx(90.0)
    assert pace.rate == pytest.approx(first * 0.81)


def test_a_drop_keeps_probes_frequent_until_the_old_limit_is_back() -> None:
    """Below an earlier limit the hold stays short; found unchanged, it doubles."""
    pace = Pace(
        ceiling=None, burst=10, start_rate=10.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
    )
    pace.settle_at(100.0, "429s", changed=True)
    pace.settle_at(100.0, "429s", changed=False)
    assert pace.hold == 8.0  # unchanged limit: the hold doubled
    pace.advance(3.0, 1.0)  # held a while: a limit to come back to
    pace.phase = "hold"
    pace.on_refused(1.0, pace.rate, 1.0)  # a drop
    assert pace.high_water == pytest.approx(100.0)
    pace.settle_at(pace.estimate or 0.0, "429s", changed=False)
    assert pace.hold == 4.0  # still below the old limit: probe again soon


def test_configured_ceiling_is_never_exceeded() -> None:
    """A probe stops at the configured rate and settles there."""
    pace = Pace(
        ceiling=50.0, burst=10, start_rate=10.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
    )
    assert pace.burst == 5.0  # half the configured burst back to back
    pace.on_refused(0.5, 50.0, 0.5)
    send(pace, 1.0, 30.0, 60.0)
    for step in range(30):
        pace.advance(1.0, 1.0 + step)
    assert pace.rate == pytest.approx(50.0 * 0.99)  # 1 % under it: the server's bucket refills
    assert pace.estimate == 50.0
    assert pace.source == "configured"


def test_published_quota_replaces_discovery() -> None:
    """A hint with a rate puts the pace just under it, with half the seen burst."""
    pace = unknown()
    assert pace.on_hint(100.0, 20.0)
    assert (pace.phase, pace.source, pace.estimate) == ("hinted", "headers", 100.0)
    assert pace.rate == pytest.approx(97.0)
    assert pace.burst == 10.0
    assert not pace.on_hint(100.0, 20.0)


def serve(
    pace: Pace,
    server_rate: float,
    burst: float,
    start: float,
    until: float,
    pause: float = 1.0,
    jitter: float = 0.0,
    seed: int = 0,
    stall: float = 0.0,
    stall_every: float = 1.0,
) -> int:
    """Send at the pace against a full token bucket over [start, until); return the 429s.

    Sends go evenly at the pace, always wanted (demand is unlimited); each
    reaches the server up to ``jitter`` seconds late (a seeded draw); a 429
    closes the gate for ``pause`` seconds, during which the bucket refills.
    With ``stall``, about every ``stall_every`` seconds the client sends
    nothing for ``stall`` seconds, then spends the tokens it saved (up to
    its burst) back to back, as a late event loop does.
    """
    draw = random.Random(seed).random
    tokens, stamp, t, episodes = burst, start, start, 0
    next_stall = start + 2.0 * draw() * stall_every if stall else math.inf
    saved = 0.0
    while t < until:
        if t >= next_stall:  # the client's loop is late: its saved tokens go back to back
            t += stall
            saved = min(pace.burst, stall * pace.rate)
            next_stall = t + 2.0 * draw() * stall_every
        arrival = max(stamp, t + draw() * jitter)
        tokens = min(burst, tokens + (arrival - stamp) * server_rate)
        stamp = arrival
        pace.on_sent(t)
        if tokens >= 1.0:
            tokens -= 1.0
            pace.on_accepted(t, t)
            if saved >= 1.0:
                saved -= 1.0
                continue
            step = 1.0 / pace.rate
            t += step
            pace.advance(step, t)
            continue
        episodes += 1
        pace.on_refused(t, pace.rate, t)
        t += pause
        pace.on_pause_end(t)
    return episodes


def test_ramp_then_one_probe_fit_the_servers_bucket() -> None:
    """From nothing: the ramp's 429 and one probe's 429 fit rate and burst; then it holds long."""
    pace = unknown(start_rate=20.0)
    assert serve(pace, 100.0, 20.0, 0.0, 12.0) == 2
    assert pace.estimate == pytest.approx(100.0, rel=0.03)
    assert pace.estimated_burst == pytest.approx(20.0, abs=3.0)
    assert pace.rate == pytest.approx(0.97 * pace.estimate)  # type: ignore[operator]
    assert pace.hold == 16.0  # found unchanged with a fit: probe rarely
    assert serve(pace, 100.0, 20.0, 12.0, 24.0) == 0  # no 429 for the next 12 s


def test_a_drop_is_fitted_with_the_known_burst() -> None:
    """After the limit halves, the pace settles just under the new one within two episodes."""
    pace = unknown(start_rate=20.0)
    serve(pace, 100.0, 20.0, 0.0, 12.0)
    assert serve(pace, 50.0, 20.0, 12.0, 16.0) == 2  # a step down, then a fit
    assert pace.estimate == pytest.approx(50.0, rel=0.03)
    assert pace.rate == pytest.approx(0.97 * pace.estimate)  # type: ignore[operator]
    assert pace.hold == 4.0  # below the old limit: probe again soon, it may come back


def test_late_arrivals_do_not_make_the_pace_flip_flop() -> None:
    """Sends reaching the server up to 10 ms late: a handful of episodes, not one per probe."""
    pace = Pace(
        ceiling=None, burst=10, start_rate=200.0, min_rate=1.0, unit=0.2, adaptive=True, now=0.0
    )
    assert serve(pace, 250.0, 10.0, 0.0, 50.0, pause=0.2, jitter=0.01) <= 8
    assert pace.estimate == pytest.approx(250.0, rel=0.05)
    assert pace.rate < 250.0


def test_queries_follow_the_create_pace_until_a_429_of_their_own() -> None:
    """A ramping class starts from the other's settled pace, rises with it, never sinks with it."""
    creates, queries = unknown(), unknown()
    last = send(creates, 0.0, 2.0, 100.0)
    creates.on_refused(last, 200.0, last)
    assert queries.follow(creates, last)
    assert (queries.phase, queries.rate, queries.source) == ("hold", creates.rate, "slow start")
    assert queries.hold >= 4.0  # long enough for the creates' next finding to arrive first
    creates.settle_at(120.0, "429s", changed=True)  # the creates found a higher limit
    assert queries.follow(creates, last)
    assert queries.rate == creates.rate
    creates.settle_at(60.0, "429s", changed=True)  # ... a lower one: not a ceiling for queries
    assert not queries.follow(creates, last)
    assert queries.rate == pytest.approx(0.95 * 120.0)
    queries.on_refused(last + 1.0, queries.rate, last + 1.0)  # a 429 of its own
    creates.settle_at(200.0, "429s", changed=True)
    assert not queries.follow(creates, last + 2.0)


def test_a_class_admitted_above_the_leaders_pace_keeps_its_own() -> None:
    """Queries already admitted at 150/s do not drop to the creates' 90/s."""
    creates, queries = unknown(), unknown()
    send(queries, 0.0, 2.0, 150.0)
    last = send(creates, 0.0, 2.0, 100.0)
    creates.on_refused(last, 200.0, last)
    assert queries.follow(creates, 2.0)
    assert queries.rate == pytest.approx(0.9 * 150.0, rel=0.02)


def test_a_followers_first_429_remembers_the_pace_it_followed() -> None:
    """Queries that followed the creates keep their burst guess and probe back to the old pace."""
    creates, queries = unknown(), unknown()
    last = send(creates, 0.0, 2.0, 100.0)
    creates.on_refused(last, 200.0, last)
    assert queries.follow(creates, last)
    assert queries.estimated_burst == creates.estimated_burst
    followed = queries.rate
    end = send(queries, 0.0, last + 3.0, followed)  # a long drain: no burst to learn from it
    queries.advance(3.0, end)  # held three units, not yet probing
    queries.on_refused(end, followed, end)  # the limit dropped under the followed pace
    assert queries.estimated_burst == creates.estimated_burst
    assert queries.high_water == pytest.approx(followed / 0.95)
    assert queries.hold == 4.0  # below an earlier pace: probe again soon


def test_a_late_loop_in_the_ramp_still_costs_two_episodes() -> None:
    """Loop stalls of 0.2 s make the ramp's and the probe's drains alike: still two 429s in all.

    Like drains cross twice or agree over a range; the fit is taken where they
    first agree, and the first probe's finding holds long whatever it is.
    """
    for seed in range(12):
        pace = Pace(
            ceiling=None, burst=10, start_rate=40.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
        )
        assert serve(pace, 100.0, 20.0, 0.0, 24.0, stall=0.2, seed=seed) == 2, seed
        assert 0.85 * 100.0 <= (pace.estimate or 0.0) <= 1.04 * 100.0


def test_sends_granted_in_the_refused_sends_instant_count_in_its_drain() -> None:
    """Saved tokens granted in one instant: those that went before the refused one count."""
    pace = unknown()
    for t in (0.0, 0.1, 0.2, 0.2, 0.2):
        pace.on_sent(t)
    assert pace._drain(0.2) == Drain((0.0, 0.1, 0.2, 0.2), 0.2)


def test_a_first_probe_finding_far_from_the_ramps_guess_holds_long() -> None:
    """The ramp's estimate is a rule of thumb: the first probe's finding is held long."""
    pace = unknown()
    last = send(pace, 0.0, 2.0, 100.0)
    pace.on_refused(last, 240.0, last)  # the ramp's guess: 90/s
    pace.advance(1.0, last)
    assert pace.phase == "probe"
    end = send(pace, last, last + 3.0, 150.0)  # admitted well past the guess
    pace.on_refused(end, 160.0, end)
    assert (pace.estimate or 0.0) > 1.2 * 90.0  # far from the guess ...
    assert pace.hold == 16.0  # ... yet held as long as a fitted finding


def test_a_drop_right_after_a_probes_429_keeps_the_found_limit() -> None:
    """A 429 at the settled pace one unit after a probe found the limit: the limit may come back."""
    pace = unknown()
    last = send(pace, 0.0, 2.0, 100.0)
    pace.on_refused(last, 240.0, last)
    pace.advance(1.0, last)
    end = send(pace, last, last + 3.0, 150.0)
    pace.on_refused(end, 160.0, end)
    found = pace.estimate
    pace.advance(1.0, end + 1.0)  # held one unit only
    pace.on_refused(end + 1.0, pace.rate, end + 1.0)  # the limit dropped
    assert pace.high_water == found
    assert pace.hold == 4.0


def test_a_probe_back_at_the_old_limits_pace_settles_there_without_a_429() -> None:
    """Below an old limit a probe reaching its pace stops there; the old limit counts until held."""
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.high_water = 200.0
    send(pace, 0.0, 10.0, 400.0)  # plenty sent: the climb is not held back
    pace.advance(4.0, 10.0)
    assert pace.phase == "probe"
    for _ in range(40):
        pace.advance(0.05, 10.0)
        if pace.phase != "probe":
            break
    assert pace.phase == "hold"
    assert pace.estimate == 200.0
    assert pace.rate == pytest.approx(0.95 * 200.0)
    assert pace.high_water == 200.0  # a 429 soon after would still find it
    pace.advance(2.0, 12.0)  # held two units, no 429
    assert pace.high_water is None


def test_a_probe_at_a_configured_ceiling_keeps_the_old_limit_until_held() -> None:
    """A climb that reaches the ceiling before the server refuses probes often after its 429."""
    pace = Pace(
        ceiling=200.0, burst=10, start_rate=10.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
    )
    send(pace, 0.0, 10.0, 400.0)
    pace.advance(3.0, 10.0)  # held at the ceiling
    pace.on_refused(10.0, pace.rate, 10.0)  # the limit dropped
    assert pace.high_water == 200.0
    for _ in range(60):
        pace.advance(0.1, 10.0)
    assert (pace.phase, pace.source) == ("hold", "configured")  # climbed back to the ceiling
    pace.on_refused(10.0, pace.rate, 10.0)  # ... too fast: the server refuses right after
    assert pace.high_water == 200.0
    assert pace.hold <= 6.0  # probe again soon


def test_below_an_old_limit_a_limit_found_twice_holds_longer() -> None:
    """Each probe below an old limit costs a pause: found twice, the hold is 1.5 times longer."""
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.high_water = 200.0
    pace.settle_at(100.0, "429s", changed=False)
    assert pace.hold == 4.0
    pace.settle_at(100.0, "429s", changed=False)
    assert pace.hold == 6.0


def test_a_pace_run_ahead_of_what_the_server_admits_is_not_back_at_the_old_limit() -> None:
    """The climb reaches the old limit's pace, but only half of it was admitted: keep probing."""
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.high_water = 200.0
    send(pace, 0.0, 10.0, 100.0)  # the server still admits only the old pace
    pace.advance(4.0, 10.0)
    for _ in range(40):
        pace.advance(0.05, 10.0)
    assert pace.rate >= 0.95 * 200.0
    assert (pace.phase, pace.estimate, pace.high_water) == ("probe", 100.0, 200.0)


def test_a_followers_first_429_in_a_probe_keeps_the_leaders_burst() -> None:
    """Queries that followed, then probed: their drain since the start tells no burst."""
    creates, queries = unknown(), unknown()
    last = send(creates, 0.0, 2.0, 100.0)
    creates.on_refused(last, 200.0, last)
    assert queries.follow(creates, last)
    burst = creates.estimated_burst
    end = send(queries, last, last + 6.0, queries.rate)
    queries.advance(6.0, end)
    assert queries.phase == "probe"
    end = send(queries, end, end + 1.0, 1.3 * queries.base)
    queries.advance(1.0, end)
    queries.on_refused(end, queries.rate, end)
    assert queries.estimated_burst == burst


def test_below_an_old_limit_a_probe_doubles_in_one_unit() -> None:
    """Below an earlier limit a probe climbs fast (it may be back): double in one unit, not four."""
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.high_water = 400.0
    send(pace, 0.0, 10.0, 400.0)
    pace.advance(4.0, 10.0)
    pace.advance(1.0, 10.0)
    assert pace.rate == pytest.approx(2.0 * pace.base)


def test_a_probes_early_429_steps_down_and_corrects_a_burst_learned_too_small() -> None:
    """A burst fitted too small (7.8 of 10) puts the pace over the limit; early 429s correct it.

    Probes then find the server's bucket already empty: such a 429 is a step
    down, and the burst the last probe's drain tells at the lower rate
    replaces the small one, so the pace ends under the limit (W2 run 2).
    """
    pace = Pace(
        ceiling=None, burst=10, start_rate=10.0, min_rate=0.2, unit=0.25, adaptive=True, now=0.0
    )
    pace.fitted = True
    pace.settle_at(110.0, "429s", changed=True)
    pace.estimated_burst, pace.burst_fitted, pace.burst = 7.8, True, 3.9
    pace.high_water = 200.0
    serve(pace, 100.0, 10.0, 0.0, 8.0, pause=0.25, jitter=0.002)
    assert (pace.estimated_burst or 0.0) > 9.0
    assert pace.rate < 100.0


def test_a_burst_the_server_saved_is_no_sign_the_old_limit_is_back() -> None:
    """At k = 4 a burst of 10 is 36/s over a unit: a limit still at 100 must not look like 136."""
    pace = unknown(unit=0.25)
    pace.settle_at(100.0, "429s", changed=True)
    pace.estimated_burst = 10.0
    pace.high_water = 173.0
    end = send(pace, 0.0, 10.0, 100.0)
    for _ in range(9):  # the server's saved burst, admitted back to back
        pace.on_sent(end)
        pace.on_accepted(end, end)
    pace.advance(1.0, end)
    assert pace.phase == "probe"
    for _ in range(40):
        pace.advance(0.01, end)
    assert pace.rate >= 0.95 * 173.0
    assert (pace.phase, pace.estimate) == ("probe", 100.0)


def test_a_probe_at_a_configured_ceiling_is_found_back_over_a_short_unit() -> None:
    """Unit 0.25 s, burst 10.75: burst / two units (21.5/s) alone was past the 20 % margin.

    The probe sent at the ceiling with everything admitted, yet never settled back on
    it: the estimate stayed at the low finding for good (a CI failure of
    ``test_configured_limit_is_a_ceiling_and_a_starting_point``).
    """
    pace = Pace(
        ceiling=80.0, burst=10, start_rate=10.0, min_rate=0.2, unit=0.25, adaptive=True, now=0.0
    )
    pace.settle_at(36.0, "429s", changed=True)
    pace.estimated_burst = 10.75
    t = 0.0
    for _ in range(400):  # 4 s of demand, every send admitted at the pace
        t = send(pace, t, t + 0.01, max(pace.rate, 1.0))
        pace.advance(0.01, t)
    assert (pace.phase, pace.source, pace.estimate) == ("hold", "configured", 80.0)


def test_below_an_old_limit_a_probe_waits_at_its_pace_until_the_server_admits_it() -> None:
    """k = 4: a climb past the old limit's pace drew a 429 before the server was seen admitting it.

    That 429's drain began under the lower limit, so it read the limit low (a
    restore in W2 found 25 s late). Held at the old pace, the probe settles
    back on the old limit without a 429.
    """
    pace = unknown(unit=0.25)
    pace.settle_at(100.0, "429s", changed=True)
    pace.estimated_burst = 10.0
    pace.high_water = 200.0
    t, top = 0.0, 0.0
    for _ in range(300):  # 3 s of demand, every send admitted (the server is back at 200/s)
        t = send(pace, t, t + 0.01, max(pace.rate, 1.0))
        pace.advance(0.01, t)
        top = max(top, pace.rate)
    assert top <= 0.95 * 200.0
    assert (pace.phase, pace.estimate) == ("hold", 200.0)


def test_a_429_after_a_stall_is_read_at_the_settled_pace_not_below() -> None:
    """Replies stop, the in-flight bound stops the sends, and the probe's pace sinks with them.

    The 429 that follows was granted at that sunken pace, while the server had
    just admitted the settled one: it steps down from the settled pace (a fleet
    run learned a limit of 31 and a burst of 424 from such a 429).
    """
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.estimated_burst = 10.0
    t = send(pace, 0.0, 4.0, pace.rate)
    pace.advance(4.0, t)
    assert pace.phase == "probe"
    t += 1.5  # nothing sent for one and a half units
    pace.advance(0.01, t)
    assert pace.rate < 20.0  # the pace sank with the sends
    end = send(pace, t, t + 0.3, pace.rate, accepted=False)  # no reply yet
    pace.advance(0.3, end)
    pace.on_refused(end, pace.rate, end)
    assert pace.estimate == pytest.approx(0.9 * 100.0)
    assert pace.estimated_burst == 10.0


def test_a_429_with_the_units_replies_still_out_steps_down_from_what_was_sent() -> None:
    """A server stall: the last unit's replies are mostly still out when a 429 comes.

    Every send granted before the refused one was admitted, replied to or not:
    the step down reads the rate sent, not the few replies in so far (a fleet
    run settled at 51/s of 100 from such a 429, 57/s of replies against 97/s sent).
    """
    pace = unknown()
    pace.settle_at(100.0, "429s", changed=True)
    pace.estimated_burst = 10.0
    held = pace.rate
    t = send(pace, 0.0, 2.0, held)  # the server admitted the settled pace for two units
    end = send(pace, t, t + 0.6, held, accepted=False)  # then its replies stall
    pace.on_refused(end, held, end)
    assert pace.estimate == pytest.approx(0.9 * held / 0.95, rel=0.02)
    assert pace.rate >= 0.85 * held


def test_a_limit_a_probe_finds_again_is_settled_closer_and_held_longest() -> None:
    """A second probe finds the fitted limit again (within 3 %): pace at 0.985 of it, no 429s."""
    pace = unknown(start_rate=20.0)
    assert serve(pace, 100.0, 20.0, 0.0, 12.0) == 2
    assert pace.rate == pytest.approx(0.97 * pace.estimate)  # type: ignore[operator]
    assert serve(pace, 100.0, 20.0, 12.0, 40.0) == 1  # the next probe finds it again
    assert pace.estimate == pytest.approx(100.0, rel=0.02)
    assert pace.rate == pytest.approx(0.985 * pace.estimate)  # type: ignore[operator]
    assert pace.hold == 64.0
    # Sends reaching the server up to 10 ms late: the closer pace still draws no 429.
    assert serve(pace, 100.0, 20.0, 40.0, 85.0, jitter=0.01, seed=3) == 0


def test_a_follower_that_finds_the_followed_limit_holds_as_long_as_its_leader() -> None:
    """Queries' own first probe finds the creates' fitted limit: settled close, probed rarely."""
    creates = unknown(start_rate=20.0)
    assert serve(creates, 100.0, 20.0, 0.0, 12.0) == 2
    queries = unknown()
    assert queries.follow(creates, 12.0)
    assert serve(queries, 100.0, 20.0, 12.0, 40.0) == 1  # its own probe's 429
    assert queries.estimate == pytest.approx(100.0, rel=0.02)
    assert queries.rate == pytest.approx(0.985 * queries.estimate)  # type: ignore[operator]
    assert queries.hold == 64.0  # the creates held 16 s before their own second probe


def test_a_429_at_a_pace_settled_close_to_a_confirmed_limit_backs_off_to_the_fitted_share() -> None:
    """Refused at 0.985 of a limit found twice: back to 0.97 of it, no 10 % step down."""
    pace = unknown(start_rate=20.0)
    serve(pace, 100.0, 20.0, 0.0, 40.0)
    assert pace.confirmed
    limit = pace.estimate
    end = send(pace, 40.0, 43.0, pace.rate)
    pace.advance(3.0, end)
    pace.on_refused(end, pace.rate, end)  # e.g. a late loop bunched the sends
    assert pace.estimate == limit
    assert pace.rate == pytest.approx(0.97 * limit)  # type: ignore[operator]
    assert pace.refused_pace == pytest.approx(0.985 * limit)  # type: ignore[operator]
    end = send(pace, end, end + 3.0, pace.rate)
    pace.advance(3.0, end)
    pace.on_refused(end, pace.rate, end)  # refused there too: now a step down
    assert pace.rate < 0.9 * limit  # type: ignore[operator]


def test_a_drop_under_a_confirmed_limit_is_a_limit_to_come_back_to() -> None:
    """The limit halves under a pace close to a confirmed limit: probe back to it often."""
    pace = unknown(start_rate=20.0)
    serve(pace, 100.0, 20.0, 0.0, 40.0)
    assert pace.confirmed
    limit = pace.estimate
    serve(pace, 50.0, 20.0, 40.0, 50.0)  # backs off, then steps down to the new limit
    assert pace.estimate == pytest.approx(50.0, rel=0.1)
    assert pace.high_water == limit
    assert pace.hold == 4.0
