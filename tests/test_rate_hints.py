"""Rate-limit headers: each family parsed (hostile values included), and obeyed end to end."""

from __future__ import annotations

import pytest

from ruxa_async import RateLimits, RuxaClient
from ruxa_async._ratehints import parse_rate_headers, parse_retry_after
from ruxa_async.testing import Dialect, FakeRuxa, RateLimit, SimConfig

NOW = 1_700_000_000.0


def test_ietf_structured_fields() -> None:
    """RateLimit-Policy q/w and RateLimit r/t (draft 08+) give quota, window, remaining, reset."""
    hint = parse_rate_headers(
        {
            "ratelimit-policy": '"burst";q=100;w=1, "day";q=1000;w=86400',
            "ratelimit": '"burst";r=42;t=1',
        }
    )
    assert hint is not None
    assert (hint.family, hint.limit, hint.window, hint.remaining, hint.reset) == (
        "ietf",
        100.0,
        1.0,
        42.0,
        1.0,
    )
    assert hint.rate == 100.0


def test_ietf_dictionary_form_of_drafts_06_07() -> None:
    """The older RateLimit dictionary (limit=, remaining=, reset=) is read too."""
    hint = parse_rate_headers({"ratelimit": "limit=10, remaining=3, reset=7"})
    assert hint is not None
    assert (hint.limit, hint.remaining, hint.reset, hint.window) == (10.0, 3.0, 7.0, None)


def test_ietf_legacy_fields_with_a_window() -> None:
    """RateLimit-Limit with a quota policy, plus -Remaining and -Reset."""
    hint = parse_rate_headers(
        {"ratelimit-limit": "20, 20;w=10", "ratelimit-remaining": "0", "ratelimit-reset": "4"}
    )
    assert hint is not None
    assert (hint.family, hint.rate, hint.remaining, hint.reset) == ("ietf-legacy", 2.0, 0.0, 4.0)


def test_x_ratelimit_reset_as_delta_and_as_unix_time() -> None:
    """X-RateLimit-Reset below 10^9 is seconds, above it a Unix time."""
    delta = parse_rate_headers({"x-ratelimit-limit": "60", "x-ratelimit-reset": "30"}, now=NOW)
    epoch = parse_rate_headers({"x-ratelimit-reset": str(int(NOW) + 12)}, now=NOW)
    assert delta is not None
    assert epoch is not None
    assert (delta.family, delta.limit, delta.reset, delta.window) == (
        "x-ratelimit",
        60.0,
        30.0,
        None,
    )
    assert epoch.reset == 12.0


def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After is delay-seconds or an HTTP date (a past date means now)."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", now=NOW) == pytest.approx(5.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=NOW) == 0.0
    hint = parse_rate_headers({"retry-after": "2"})
    assert hint is not None
    assert (hint.family, hint.retry_after) == ("retry-after", 2.0)


@pytest.mark.parametrize(
    "headers",
    [
        {"ratelimit-policy": "q=-5;w=-1", "ratelimit": "r=abc;t=1e999"},
        {"ratelimit-policy": '"x";q=1e300;w=nan', "ratelimit": '"x";r=-1;t=-3'},
        {"ratelimit-limit": "∞", "ratelimit-remaining": "NaN", "ratelimit-reset": "99999999999"},
        {"x-ratelimit-limit": "", "x-ratelimit-remaining": " ", "x-ratelimit-reset": "-1"},
        {"x-ratelimit-limit": "10" * 400, "retry-after": "Someday, never"},
        {"retry-after": "-5"},
        {"ratelimit": ";;;===,,,", "ratelimit-policy": '"unterminated;q='},
    ],
)
def test_hostile_values_are_dropped_not_raised(headers: dict[str, str]) -> None:
    """Negative, huge, non-numeric and malformed values leave fields None; nothing raises."""
    hint = parse_rate_headers(headers, now=NOW)
    if hint is None:
        return
    for value in (hint.limit, hint.window, hint.remaining, hint.reset, hint.retry_after):
        assert value is None or 0.0 <= value <= 1e7
    assert hint.rate is None or hint.rate > 0.0


def test_no_rate_headers_is_no_hint() -> None:
    """A reply without any of the headers yields None (the common case costs nothing)."""
    assert parse_rate_headers({}) is None
    assert parse_rate_headers({"content-type": "application/json"}) is None


@pytest.mark.parametrize("family", ["ietf", "ietf-legacy", "x-ratelimit"])
async def test_published_quota_is_obeyed_without_429s(family: str) -> None:
    """With a header family on, unknown limits are learned from headers: no 429 at all."""
    config = SimConfig(
        create_limit=RateLimit(per_second=200.0, burst=10),
        dialect=Dialect(rate_headers=family),  # type: ignore[arg-type]
    )
    async with FakeRuxa(config) as fake:
        async with RuxaClient(fake.api_key, base_url=fake.url, rate_limits=RateLimits()) as client:
            for i in range(300):
                await client.create_task("google/nano-banana", {"prompt": f"p{i}"})
            learned = client.statistics().rate.classes["create"]
        stats = fake.stats()
    assert stats.by_status.get(200) == 300
    assert stats.rate_limited_create == 0
    assert learned.source == "headers"
    assert learned.estimated_limit == pytest.approx(200.0)


def test_simulator_bucket_headers_follow_each_family() -> None:
    """The simulator's bucket is described per family: quota per window, remaining, reset."""
    from ruxa_async.testing._limits import TokenBucket

    bucket = TokenBucket(RateLimit(per_second=2.0, burst=20))
    bucket.tokens = 4.5
    assert bucket.headers("none") == {}
    assert bucket.headers("ietf") == {
        "RateLimit-Policy": '"bucket";q=20;w=10',
        "RateLimit": '"bucket";r=4;t=8',
    }
    assert bucket.headers("ietf-legacy") == {
        "RateLimit-Limit": "20, 20;w=10",
        "RateLimit-Remaining": "4",
        "RateLimit-Reset": "8",
    }
    bucket.tokens = 0.2
    assert bucket.headers("x-ratelimit") == {
        "X-RateLimit-Limit": "20",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "10",
    }
