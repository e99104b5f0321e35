"""What runs: the contenders, the workloads and their parameters in each mode.

All parameters are given at real scale. A workload with time factor ``k``
runs ``k`` times faster than real: the simulator's rate limits are
multiplied by ``k`` and its task durations divided by ``k``, and every
client's time settings (poll intervals, backoff, pauses, Retry-After) are
divided by ``k``. Counts and ratios (requests per task, 429s per 1,000 tasks,
makespan ÷ ideal) do not change under this scaling; times do, and are
reported both as measured and multiplied by ``k`` (the real-scale
equivalent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

SEED = 20240601
REFERENCE = "ruxa_async"


@dataclass(frozen=True)
class Contender:
    """A client implementation under test."""

    key: str
    label: str
    module: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender(
            "ruxa_async",
            "ruxa_async (polling)",
            "benchmarks._ruxa",
            "client.as_completed(); the workload's limits given as RateLimits; polling only",
            {"limits": "known"},
        ),
        Contender(
            "ruxa_async_unknown",
            "ruxa_async (limits unknown)",
            "benchmarks._ruxa",
            "as above with default RateLimits(): limits discovered from 429s",
            {"limits": "unknown"},
        ),
        Contender(
            "ruxa_async_headers",
            "ruxa_async (limits unknown, rate-limit headers)",
            "benchmarks._ruxa",
            "default RateLimits() against a simulator that sends IETF RateLimit headers",
            {"limits": "unknown", "sim": {"dialect": {"rate_headers": "ietf"}}},
        ),
        Contender(
            "ruxa_async_callbacks",
            "ruxa_async (callbacks)",
            "benchmarks._ruxa",
            "as ruxa_async (polling) plus a CallbackServer on loopback; polling is a safety net",
            {"limits": "known", "callbacks": True},
        ),
        Contender(
            "B0",
            "B0 vendor blog",
            "benchmarks.baselines.vendor_blog",
            "gather() of one coroutine per task, no limiter, fixed 5 s polls (<= 60), "
            "3 attempts with 2^n s / Retry-After backoff",
        ),
        Contender(
            "B1",
            "B1 cookbook",
            "benchmarks.baselines.cookbook",
            "OpenAI cookbook processor: buckets at 75 % of the limits, 1 ms loop, "
            "15 s global pause after a 429, 5 attempts, fixed 5 s polls",
        ),
        Contender(
            "B2",
            "B2 aiometer+aiolimiter+stamina",
            "benchmarks.baselines.off_the_shelf",
            "aiometer.amap creates (max_at_once=100, max_per_second=R_c), "
            "AsyncLimiter(R_q, 1) for GETs, stamina retries honouring Retry-After, "
            "fixed 5 s polls per task",
        ),
    )
}

ALL = ("ruxa_async", "ruxa_async_unknown", "ruxa_async_callbacks", "B0", "B1", "B2")


@dataclass(frozen=True)
class Model:
    """A simulated model: lognormal durations (real-scale median) and a failure share."""

    name: str
    median_s: float
    sigma: float
    fail_rate: float = 0.0


IMAGE = "bench/image"
VIDEO = "bench/video"


@dataclass(frozen=True)
class Workload:
    """One workload: the simulator's settings, the jobs, the contenders, the limits."""

    key: str
    title: str
    isolates: str
    n: int
    k: float
    models: tuple[Model, ...]
    contenders: tuple[str, ...]
    wall_cap: float  # compressed seconds per contender
    create_rate: float | None = 50.0
    query_rate: float | None = 50.0
    create_burst: int = 10
    query_burst: int = 10
    faults: dict[str, float] = field(default_factory=dict)
    drop: tuple[float, float] | None = None  # W2: (start, length), real-scale seconds
    hold_s: float | None = None  # W4: seconds to hold once every task is pending
    max_pending: int | None = None  # as_completed(max_pending=...); None: the whole batch
    client_k: float | None = None  # time factor for client settings, when not k
    sample: bool = False  # sample the simulator's counters over time (for the figures)
    caps: dict[str, float] = field(default_factory=dict)  # per-contender wall caps
    note: str = ""

    def cap_for(self, contender: str) -> float:
        """The wall cap of ``contender`` on this workload, in compressed seconds."""
        return self.caps.get(contender, self.wall_cap)

    @property
    def pending_bound(self) -> int:
        """ruxa_async's ``max_pending``: the whole batch unless set (baselines have no bound)."""
        return self.max_pending if self.max_pending is not None else self.n

    @property
    def client_scale(self) -> float:
        """The factor dividing every client time setting."""
        return self.client_k if self.client_k is not None else self.k

    def sim_config(self) -> dict[str, Any]:
        """The simulator's JSON config (compressed by ``k``)."""
        k = self.k
        config: dict[str, Any] = {
            "seed": SEED,
            "models": {
                m.name: {
                    "median_seconds": m.median_s / k,
                    "sigma": m.sigma,
                    "fail_rate": m.fail_rate,
                }
                for m in self.models
            },
            "create_limit": None
            if self.create_rate is None
            else {"per_second": self.create_rate * k, "burst": self.create_burst},
            "query_limit": None
            if self.query_rate is None
            else {"per_second": self.query_rate * k, "burst": self.query_burst},
        }
        if self.faults:
            config["faults"] = dict(self.faults)
        return config

    def parameters(self) -> dict[str, Any]:
        """The exact parameters, for the report."""
        out: dict[str, Any] = {
            "tasks": self.n,
            "time_factor_k": self.k,
            "create_limit_per_s": self.create_rate,
            "create_burst": self.create_burst if self.create_rate else None,
            "query_limit_per_s": self.query_rate,
            "query_burst": self.query_burst if self.query_rate else None,
            "models": [
                {"name": m.name, "median_s": m.median_s, "sigma": m.sigma, "fail_rate": m.fail_rate}
                for m in self.models
            ],
            "seed": SEED,
            "wall_cap_s": self.wall_cap,
            "max_pending": self.pending_bound,
        }
        if self.caps:
            out["wall_cap_s_for"] = dict(self.caps)
        if self.client_k is not None:
            out["client_time_factor"] = self.client_k
        if self.faults:
            out["faults"] = dict(self.faults)
        if self.drop:
            out["limits_halved_at_s"], out["limits_halved_for_s"] = self.drop
        if self.hold_s:
            out["hold_s"] = self.hold_s
        return out


W5_FAULTS = {
    "error_500_before": 0.01,
    "error_500_after_create": 0.002,
    "drop_before": 0.005,
    "drop_after_create": 0.002,
}


@dataclass(frozen=True)
class Plan:
    """A mode: calibration size and the workloads in order."""

    mode: str
    calibration_requests: int
    workloads: tuple[Workload, ...]


def _cap(n: int, rate: float, k: float, tail_s: float, drop_s: float = 0.0) -> float:
    """A wall cap, in compressed seconds: 1.6 times a rough ideal makespan, plus 5 s."""
    return round(1.6 * (n / rate + drop_s / 2 + tail_s) / k + 5.0, 1)


@dataclass(frozen=True)
class _Sizes:
    n: int  # W1, W2
    n5: int  # W5
    n4: int
    hold: float
    n6: int
    n7: int
    calibration: int
    n9: int
    drop: tuple[float, float]
    k: float  # W1
    k25: float  # W2, W5
    k6: float
    w7_cap: float


_MODES = {
    "full": _Sizes(
        10_000, 5_000, 100_000, 15.0, 2_000, 50_000, 50_000, 2_000, (60.0, 60.0), 5, 8, 16, 90
    ),
    "quick": _Sizes(600, 400, 4_000, 2.0, 200, 2_000, 2_000, 600, (4.0, 4.0), 16, 16, 64, 30),
    "smoke": _Sizes(150, 100, 1_000, 0.5, 50, 500, 500, 150, (2.0, 2.0), 32, 32, 128, 20),
}

# The smoke run (CI) proves the harness end to end: every workload runs, every contender runs
# on at least one of them, and ruxa_async wherever a goal reads it; not every pair.
_SMOKE_CONTENDERS = {
    "W1": ("ruxa_async", "B1"),
    "W2": ("ruxa_async_unknown",),
    "W9": ("ruxa_async_headers",),
    "W4": ("ruxa_async",),
    "W5": ("ruxa_async", "B0"),
    "W6": ("ruxa_async_callbacks",),
    "W7": ("ruxa_async", "B2"),
}


def build(mode: str, *, real_scale_headline: bool = False, k: float | None = None) -> Plan:
    """The plan for ``mode`` (smoke, quick or full); ``k`` overrides W1's and W2's factor."""
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}")
    z = _MODES[mode]
    k1 = float(k or z.k)
    k2 = float(k or z.k25)
    image = Model(IMAGE, 8.0, 0.5)
    image_tail = 8.0 * math.exp(3 * 0.5)
    w1 = Workload(
        "W1",
        "steady batch",
        "end-to-end throughput, requests per task and lag under a realistic budget",
        n=z.n,
        k=k1,
        models=(image,),
        contenders=ALL,
        wall_cap=_cap(z.n, 50.0, k1, image_tail),
        caps={"B1": round(_cap(z.n, 50.0, k1, image_tail) / 2, 1)},
        note="B1 is capped at half the others' wall cap: after its first 429 it spends most "
        "of its time in 15 s pauses (see the summary)",
    )
    workloads: list[Workload] = [w1]
    if real_scale_headline:
        workloads.append(
            Workload(
                "W1-real",
                "steady batch at real scale (headline)",
                "the headline without time compression, to check the compressed figures",
                n=z.n,
                k=1.0,
                models=(image,),
                contenders=("ruxa_async",),
                wall_cap=_cap(z.n, 50.0, 1.0, image_tail),
            )
        )
    video_tail = 120.0 * math.exp(3 * 0.3)
    workloads += [
        Workload(
            "W2",
            "capacity drop",
            "adaptation: limits halve, then recover; the 429 burst and the time to re-converge",
            n=z.n,
            k=k2,
            models=(image,),
            contenders=("ruxa_async", "ruxa_async_unknown", "B2"),
            wall_cap=_cap(z.n, 50.0, k2, image_tail, z.drop[1]),
            drop=z.drop,
        ),
        Workload(
            "W9",
            "independent token-bucket server",
            "rate discovery as a new user meets it: create and query 100/s each, burst 20, "
            "Retry-After: 1 on every 429, sub-second tasks",
            n=z.n9,
            k=1.0,
            models=(Model(IMAGE, 0.5, 0.3),),
            contenders=("ruxa_async", "ruxa_async_unknown", "ruxa_async_headers"),
            wall_cap=_cap(z.n9, 100.0, 1.0, 0.5 * math.exp(3 * 0.3)) + 20.0,
            create_rate=100.0,
            query_rate=100.0,
            create_burst=20,
            query_burst=20,
            sample=True,
            note="real scale (k = 1): the simulator's Retry-After is whole seconds, so a 429 "
            "costs the class a full second, as it would against a real server",
        ),
        Workload(
            "W4",
            "many pending",
            "memory per pending task, idle CPU and event-loop lag while holding many tasks",
            n=z.n4,
            k=1.0,
            models=(Model(IMAGE, 3600.0, 0.0),),
            contenders=("ruxa_async", "B2"),
            wall_cap=240.0 if mode == "full" else 60.0,
            create_rate=5000.0,
            create_burst=100,
            hold_s=z.hold,
            note="durations of one hour: nothing finishes while held; "
            "the create limit is above what any client reaches here",
        ),
        Workload(
            "W5",
            "faults",
            "correctness under failures: every job resolved exactly once, duplicates counted",
            n=z.n5,
            k=z.k25,
            models=(Model(IMAGE, 8.0, 0.5, fail_rate=0.02),),
            contenders=("ruxa_async", "ruxa_async_callbacks", "B0", "B2"),
            wall_cap=_cap(z.n5, 50.0, z.k25, image_tail),
            faults=W5_FAULTS,
        ),
        Workload(
            "W6",
            "images and videos",
            "whether polling spends requests where the completions are",
            n=z.n6,
            k=z.k6,
            models=(Model(IMAGE, 5.0, 0.3), Model(VIDEO, 120.0, 0.3)),
            contenders=("ruxa_async", "ruxa_async_callbacks", "B0", "B2"),
            wall_cap=_cap(z.n6, 50.0, z.k6, video_tail),
            note="jobs alternate image, video",
        ),
        Workload(
            "W7",
            "CPU ceiling",
            "tasks/s and client CPU per task with no limits and instant tasks",
            n=z.n7,
            k=1.0,
            client_k=100.0,
            models=(Model(IMAGE, 0.0, 0.0),),
            contenders=("ruxa_async", "B0", "B1", "B2"),
            wall_cap=z.w7_cap,
            create_rate=None,
            query_rate=None,
            caps={"B1": float(min(20, z.w7_cap))},
            note="client time settings run 100x faster (5 s polls become 50 ms) so that "
            "waiting does not hide CPU cost; B1's 1 ms main loop launches at most 1,000 "
            "requests/s per kind, so it is capped early",
        ),
    ]
    if mode == "smoke":
        workloads = [replace(w, contenders=_SMOKE_CONTENDERS[w.key]) for w in workloads]
    return Plan(mode, z.calibration, tuple(workloads))
