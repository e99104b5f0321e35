"""Frozen, keyword-only settings of the simulator: dialect, task behaviour, limits, faults.

Ruxa documents little of its wire beyond the happy path, so every open choice
(how errors are signalled, ``message`` or ``msg``, the success word, callback
shape and signing) is a :class:`Dialect` or :class:`CallbackDelivery` switch.
Derive variants with ``attrs.evolve`` or :meth:`FakeRuxa.reconfigure`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

from ._rules import InputRules

__all__ = [
    "CallbackDelivery",
    "Dialect",
    "Faults",
    "InputRules",
    "ModelBehavior",
    "RateLimit",
    "SimConfig",
]

DEFAULT_API_KEY = "sk-simulator-key"

_probability = [v.ge(0.0), v.le(1.0)]
_non_negative = v.ge(0.0)
_positive = v.gt(0.0)


@attrs.frozen(kw_only=True)
class Dialect:
    """How the simulated service spells its replies, for the choices Ruxa leaves open.

    ``errors="http"`` sends an error with that HTTP status *and* an envelope
    ``{code, message, data: null}``; ``"envelope"`` always answers HTTP 200 with
    the code in the envelope (kie.ai's observed behaviour). ``unknown_task="422"``
    answers a query for an unknown id with kie's ``422 recordInfo is null``.
    ``retry_after`` adds a ``Retry-After`` header (whole seconds, at least 1) to
    429 replies. ``rate_headers`` makes every reply of a rate-limited endpoint
    class describe its bucket in one header family: ``"ietf"`` (draft
    ``RateLimit-Policy`` + ``RateLimit``), ``"ietf-legacy"`` (``RateLimit-Limit``
    / ``-Remaining`` / ``-Reset``) or ``"x-ratelimit"`` (``X-RateLimit-*``); see
    :mod:`ruxa_async.testing._limits`. ``result_json="object"`` sends ``resultJson`` as an object
    instead of the documented JSON string. ``callback_style`` picks the kie
    envelope ``{code, msg, data: task}`` or a flat ``{taskId, state, resultUrls,
    failMsg}`` callback body.
    """

    errors: Literal["http", "envelope"] = attrs.field(
        default="http", validator=v.in_(("http", "envelope"))
    )
    message_field: Literal["message", "msg"] = attrs.field(
        default="message", validator=v.in_(("message", "msg"))
    )
    success_state: Literal["success", "completed"] = attrs.field(
        default="success", validator=v.in_(("success", "completed"))
    )
    unknown_task: Literal["404", "422"] = attrs.field(
        default="404", validator=v.in_(("404", "422"))
    )
    retry_after: bool = True
    rate_headers: Literal["none", "ietf", "ietf-legacy", "x-ratelimit"] = attrs.field(
        default="none", validator=v.in_(("none", "ietf", "ietf-legacy", "x-ratelimit"))
    )
    result_json: Literal["string", "object"] = attrs.field(
        default="string", validator=v.in_(("string", "object"))
    )
    callback_style: Literal["kie", "flat"] = attrs.field(
        default="kie", validator=v.in_(("kie", "flat"))
    )


@attrs.frozen(kw_only=True)
class ModelBehavior:
    """How long a model's tasks take and how often they fail.

    Durations are lognormal: ``median_seconds * exp(sigma * N(0, 1))``, at least
    ``min_seconds``; a median of 0 makes tasks finish at once. A failed task
    reports ``fail_code`` and ``fail_msg``. ``outputs`` is the number of result
    URLs a successful task returns.
    """

    median_seconds: float = attrs.field(validator=_non_negative)
    sigma: float = attrs.field(default=0.5, validator=_non_negative)
    fail_rate: float = attrs.field(default=0.0, validator=_probability)
    min_seconds: float = attrs.field(default=0.0, validator=_non_negative)
    fail_code: str = "500"
    fail_msg: str = "Internal server error"
    outputs: int = attrs.field(default=1, validator=v.ge(1))


@attrs.frozen(kw_only=True)
class RateLimit:
    """A token bucket: ``per_second`` refill, at most ``burst`` tokens; rejections are free."""

    per_second: float = attrs.field(validator=_positive)
    burst: int = attrs.field(default=10, validator=v.ge(1))


@attrs.frozen(kw_only=True)
class Faults:
    """Per-request fault probabilities, drawn independently for each request.

    They apply to the create and query endpoints, and to result downloads when
    ``files`` is True. ``*_before`` faults happen before anything is done;
    ``*_after_create`` faults (create only) happen after the task was created
    and charged, which makes the outcome ambiguous for the client. A dropped
    request has its connection closed without any reply. ``slow_reply`` holds
    the reply back ``slow_seconds`` (a create's task is made first).
    """

    error_500_before: float = attrs.field(default=0.0, validator=_probability)
    error_500_after_create: float = attrs.field(default=0.0, validator=_probability)
    drop_before: float = attrs.field(default=0.0, validator=_probability)
    drop_after_create: float = attrs.field(default=0.0, validator=_probability)
    slow_reply: float = attrs.field(default=0.0, validator=_probability)
    slow_seconds: float = attrs.field(default=5.0, validator=_non_negative)
    files: bool = False

    @property
    def active(self) -> bool:
        """True when at least one fault can happen."""
        return (
            self.error_500_before > 0
            or self.error_500_after_create > 0
            or self.drop_before > 0
            or self.drop_after_create > 0
            or self.slow_reply > 0
        )


def _check_delays(inst: CallbackDelivery, attr: attrs.Attribute[float], value: float) -> None:
    if value < inst.delay_min:
        raise ValueError(f"delay_max ({value}) must be >= delay_min ({inst.delay_min})")


@attrs.frozen(kw_only=True)
class CallbackDelivery:
    """How task-completion callbacks reach a task's ``callBackUrl``.

    Each delivery is due a uniform ``[delay_min, delay_max]`` seconds after the
    task ends; it is dropped (never sent) with probability ``drop`` and sent
    twice with probability ``duplicate``. A reply other than 2xx, a connection
    error or a ``timeout`` is retried up to ``retries`` times, the n-th retry
    ``retry_interval * 2**(n-1)`` seconds later. With ``hmac_key`` set, each
    POST carries ``X-Webhook-Timestamp`` (Unix seconds) and
    ``X-Webhook-Signature`` = base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")),
    kie.ai's scheme. At most ``concurrency`` POSTs are in flight (read when the
    simulator starts).
    """

    delay_min: float = attrs.field(default=0.0, validator=_non_negative)
    delay_max: float = attrs.field(default=0.0, validator=[_non_negative, _check_delays])
    drop: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    timeout: float = attrs.field(default=15.0, validator=_positive)
    retries: int = attrs.field(default=0, validator=v.ge(0))
    retry_interval: float = attrs.field(default=0.5, validator=_non_negative)
    hmac_key: str | None = attrs.field(default=None, repr=False)
    concurrency: int = attrs.field(default=64, validator=v.ge(1))


def _to_accept(value: str | Iterable[str]) -> str | frozenset[str]:
    if isinstance(value, str):
        if value == "catalog":  # the default's former name
            return "documented"
        if value not in ("documented", "any"):
            raise ValueError(f'accept_models must be "documented", "any" or a set, got {value!r}')
        return value
    return frozenset(value)


def _to_prices(value: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(p) for k, p in value.items()}


def _to_models(value: Mapping[str, ModelBehavior]) -> dict[str, ModelBehavior]:
    return dict(value)


def _optional_non_negative(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attr.name} must be >= 0 or None, got {value!r}")


_optional_limit = v.optional(v.instance_of(RateLimit))


@attrs.frozen(kw_only=True)
class SimConfig:
    """Everything the simulator does, as data.

    ``credits=None`` means an unlimited balance; otherwise each create is
    charged the model's price (``prices`` over the simulator's own table of the
    documented models; a model with no price costs 0) and refused with 402 when
    the balance is short. ``models`` gives per-model behaviour, other models use
    ``default_behavior``. ``accept_models`` is ``"documented"`` (default: the
    five models the reference documents, §6.1, plus those in ``models``; the
    service refuses models it lacks, §10), ``"any"`` (every model name, with
    only the documented ones' inputs checked), or a set of names (plus those in
    ``models``); other models get 422. ``input_rules`` picks the readings of
    what the reference leaves open about inputs. Result files stop being served
    ``result_ttl`` seconds after completion (None: never) and are ``file_size``
    bytes long. ``seed`` makes every random draw repeatable.
    """

    api_key: str = attrs.field(default=DEFAULT_API_KEY, repr=False, validator=v.min_len(1))
    credits: float | None = attrs.field(default=None, validator=_optional_non_negative)
    prices: Mapping[str, float] = attrs.field(factory=dict, converter=_to_prices)
    models: Mapping[str, ModelBehavior] = attrs.field(factory=dict, converter=_to_models)
    default_behavior: ModelBehavior = attrs.field(
        factory=lambda: ModelBehavior(median_seconds=0.2, sigma=0.3),
        validator=v.instance_of(ModelBehavior),
    )
    create_limit: RateLimit | None = attrs.field(default=None, validator=_optional_limit)
    query_limit: RateLimit | None = attrs.field(default=None, validator=_optional_limit)
    faults: Faults = attrs.field(factory=Faults, validator=v.instance_of(Faults))
    dialect: Dialect = attrs.field(factory=Dialect, validator=v.instance_of(Dialect))
    callbacks: CallbackDelivery = attrs.field(
        factory=CallbackDelivery, validator=v.instance_of(CallbackDelivery)
    )
    accept_models: str | frozenset[str] = attrs.field(default="documented", converter=_to_accept)
    input_rules: InputRules = attrs.field(factory=InputRules, validator=v.instance_of(InputRules))
    result_ttl: float | None = attrs.field(default=None, validator=_optional_non_negative)
    file_size: int = attrs.field(default=2048, validator=v.ge(64))
    seed: int | None = None


_NESTED: dict[str, type[Any]] = {
    "dialect": Dialect,
    "faults": Faults,
    "callbacks": CallbackDelivery,
    "input_rules": InputRules,
    "default_behavior": ModelBehavior,
    "create_limit": RateLimit,
    "query_limit": RateLimit,
}


def config_changes(base: SimConfig, data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a JSON-shaped patch into keyword changes for ``attrs.evolve(base, ...)``.

    Nested settings given as objects patch the current value field by field
    (``{"faults": {"drop_before": 0.1}}`` keeps the other faults); ``null``
    clears an optional one (a rate limit). ``models`` replaces the whole table.
    Raises ValueError for an unknown setting or a bad value.
    """
    known = {f.name for f in attrs.fields(SimConfig)}
    changes: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            raise ValueError(f"unknown simulator setting {name!r}")
        cls = _NESTED.get(name)
        if cls is not None and isinstance(value, Mapping):
            current = getattr(base, name)
            try:
                changes[name] = cls(**value) if current is None else attrs.evolve(current, **value)
            except TypeError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        elif name == "models" and isinstance(value, Mapping):
            try:
                changes[name] = {
                    model: b if isinstance(b, ModelBehavior) else ModelBehavior(**b)
                    for model, b in value.items()
                }
            except TypeError as exc:
                raise ValueError(f"models: {exc}") from exc
        else:
            changes[name] = value
    return changes


def config_from_dict(data: Mapping[str, Any], base: SimConfig | None = None) -> SimConfig:
    """Build a :class:`SimConfig` from a JSON-shaped mapping, over ``base`` or the defaults."""
    start = SimConfig() if base is None else base
    try:
        return attrs.evolve(start, **config_changes(start, data))
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def config_to_dict(config: SimConfig) -> dict[str, Any]:
    """A JSON-ready view of ``config``, without the API key and the HMAC key."""
    out = attrs.asdict(config, recurse=True)
    out.pop("api_key", None)
    out["callbacks"].pop("hmac_key", None)
    accept = config.accept_models
    out["accept_models"] = accept if isinstance(accept, str) else sorted(accept)
    return out
