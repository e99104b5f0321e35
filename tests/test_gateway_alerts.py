"""Budget threshold alerts: once per threshold and window, with a bounded memory of marks."""

from __future__ import annotations

from datetime import datetime, timezone

from ruxa_async.gateway import AlertSettings
from ruxa_async.gateway._alerts import Alerter
from ruxa_async.gateway._policy import window_bounds

MONDAY_NOON = datetime(2026, 11, 30, 12, tzinfo=timezone.utc).timestamp()
DAY = 86_400.0


def thresholds(alerter: Alerter, scope: str) -> list[float]:
    """The thresholds alerted so far for ``scope``, in order."""
    return [a["threshold"] for a in alerter.sent if a["scope"] == scope]


def test_marks_of_ended_windows_and_idle_tokens_are_forgotten_at_a_rollover() -> None:
    """A new UTC day drops the day's marks and those of tokens idle a whole day; no repeats."""
    now = [MONDAY_NOON]
    alerter = Alerter(AlertSettings(), clock=lambda: now[0])
    monday = window_bounds("day", now[0])[0]
    alerter.budget("user:alice", monday, 9.0, 10.0)
    for n in range(50):
        alerter.budget(f"token:{n}", "life", 10.0, 10.0)
    assert alerter.marked_budgets == 51
    now[0] += DAY
    alerter.budget("user:alice", window_bounds("day", now[0])[0], 1.0, 10.0)
    alerter.budget("token:0", "life", 10.0, 10.0)
    assert alerter.marked_budgets == 50  # Monday is over; the tokens were used on Monday
    now[0] += DAY
    alerter.budget("token:0", "life", 10.0, 10.0)
    assert alerter.marked_budgets == 1  # only token:0 was used on Tuesday
    assert thresholds(alerter, "token:0") == [0.8, 0.95, 1.0]
    assert thresholds(alerter, "user:alice") == [0.8]


def test_a_threshold_alerts_once_in_a_window_that_outlives_the_day() -> None:
    """A weekly budget's 80 % alert is not repeated on the next days of the same week."""
    now = [MONDAY_NOON]
    alerter = Alerter(AlertSettings(), clock=lambda: now[0])
    week = window_bounds("week", now[0])[0]
    alerter.budget("user:bob", week, 8.0, 10.0)
    for _ in range(6):
        now[0] += DAY
        assert window_bounds("week", now[0])[0] == week
        alerter.budget("user:bob", week, 8.5, 10.0)
    assert thresholds(alerter, "user:bob") == [0.8]
    now[0] += DAY
    alerter.budget("user:bob", window_bounds("week", now[0])[0], 8.0, 10.0)
    assert thresholds(alerter, "user:bob") == [0.8, 0.8]
    assert alerter.marked_budgets == 1
