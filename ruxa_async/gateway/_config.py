"""The gateway's settings as frozen data, read from a TOML file.

Nothing secret is kept in the clear that need not be: user tokens appear only
as SHA-256 digests (``token_sha256``), upstream keys and the signing secret may
be named by environment variable (``key_env``, ``signing_secret_env``) instead
of written into the file. Every secret field is excluded from ``repr``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import validators as v

from .._config import DEFAULT_BASE_URL
from .._errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the `gateway` extra installs tomli on 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "AlertSettings",
    "CallbackSettings",
    "GatewayConfig",
    "Policy",
    "StateSettings",
    "UpstreamKey",
    "UserEntry",
    "hash_token",
    "load_config",
    "parse_config",
]

Window = Literal["day", "week", "month"]
ALL_MODELS = "*"


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a config file stores in place of a user's raw token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _optional_non_negative(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{attr.name} must be a number, got NaN")


def _models(value: Any) -> frozenset[str] | None:
    """``"*"`` (or absent) means every model; otherwise a set of names."""
    if value is None or value == ALL_MODELS:
        return None
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(m) for m in value)


@attrs.frozen(kw_only=True)
class Policy:
    """What one user may do. Unset fields of a user fall back to ``[defaults]``.

    ``models`` is None for every model (``"*"`` in the file). ``budget`` is in
    credits per ``window`` (calendar day, ISO week or month, UTC); None means
    unlimited. ``max_in_flight`` caps tasks created but not yet finished;
    ``requests_per_second`` and ``burst`` shape every request of the user.
    ``max_prompt_chars`` tightens the catalogue's prompt limit.
    """

    models: frozenset[str] | None = attrs.field(default=None, converter=_models)
    budget: float | None = attrs.field(default=None, validator=_optional_non_negative)
    window: Window = attrs.field(default="day", validator=v.in_(("day", "week", "month")))
    max_in_flight: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))
    requests_per_second: float | None = attrs.field(default=None, validator=v.optional(v.gt(0)))
    burst: int = attrs.field(default=20, validator=v.ge(1))
    max_prompt_chars: int | None = attrs.field(default=None, validator=v.optional(v.ge(1)))

    def allows(self, model: str) -> bool:
        """True when ``model`` is on this policy's list (or the list is open)."""
        return self.models is None or model in self.models


@attrs.frozen(kw_only=True)
class UserEntry:
    """A configured user: a name, the digest of their token, their policy."""

    name: str
    token_sha256: str = attrs.field(repr=False)
    policy: Policy
    webhook_secret: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class UpstreamKey:
    """One real Ruxa key of the pool, known by its ``name`` (the secret is never shown)."""

    name: str
    key: str = attrs.field(repr=False)
    base_url: str = DEFAULT_BASE_URL


@attrs.frozen(kw_only=True)
class CallbackSettings:
    """How relayed callbacks are delivered to users' ``callBackUrl``.

    ``allow_private`` permits loopback and private-network addresses (tests, a
    single-machine setup); by default they are refused so a user cannot point
    the gateway at the internal network.
    """

    allow_private: bool = False
    attempts: int = attrs.field(default=5, validator=v.ge(1))
    first_retry: float = attrs.field(default=0.5, validator=v.gt(0))
    timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    upstream_hmac_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class AlertSettings:
    """Where and when alerts go: budget thresholds and spend-rate jumps."""

    webhook_url: str | None = None
    thresholds: tuple[float, ...] = (0.8, 0.95, 1.0)
    spend_jump_factor: float = attrs.field(default=5.0, validator=v.gt(1))
    spend_jump_min_credits: float = attrs.field(default=50.0, validator=v.ge(0))


@attrs.frozen(kw_only=True)
class StateSettings:
    """Where ownership, budgets and the audit log live (the ``[state]`` table).

    Without ``redis_url`` the gateway keeps them in SQLite at ``state_path``.
    With it, every gateway naming the same Redis and ``namespace`` shares them:
    budgets and in-flight caps hold across instances, and any instance answers
    a task's owner. ``timeout`` bounds every Redis call; while Redis does not
    answer, creates get 503. A settled task's record is kept ``keep_settled``
    seconds (then its id answers 404); the audit stream keeps about
    ``audit_maxlen`` entries. A query spends a permit of the user's request rate
    leased from Redis in blocks of at most ``rate_lease`` (1: every query is a
    Redis call). ``redis_url_env`` names an environment variable holding the URL
    (it may carry a password). Changes take effect on restart.
    """

    redis_url: str | None = attrs.field(default=None, repr=False)
    namespace: str = attrs.field(default="ruxa-gateway", validator=v.min_len(1))
    timeout: float = attrs.field(default=1.0, validator=v.gt(0))
    keep_settled: float = attrs.field(default=30 * 86_400.0, validator=v.gt(0))
    audit_maxlen: int = attrs.field(default=1_000_000, validator=v.ge(1000))
    rate_lease: int = attrs.field(default=64, validator=v.ge(1))


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """Everything a gateway does, as data. Build with :func:`load_config` or directly.

    Upstream pacing: with ``upstream_create_per_second`` / ``upstream_query_per_second``
    unset and ``upstream_discover_rate`` off (the default), each key's client relays
    requests as they come, bounded by ``upstream_max_in_flight``; a 429 cools that key
    for its ``Retry-After`` and callers get 429 at once. Set the rates your Ruxa account
    allows to pace at them, or ``upstream_discover_rate = true`` to let the client ramp
    up and learn the limit (smoother under a hidden limit, but a fresh gateway then
    holds a burst of creates back for a few seconds).
    ``upstream_http``: ``"auto"`` (the default) relays through the gateway's own light
    HTTP/1.1 client (``httptools``, in the ``gateway`` extra) when it can serve the key's
    URL, else aiohttp's; ``"aiohttp"`` always uses aiohttp's (and proxies from the
    environment).
    """

    keys: tuple[UpstreamKey, ...] = ()
    users: Mapping[str, UserEntry] = attrs.field(factory=dict)
    defaults: Policy = attrs.field(factory=Policy)
    signing_secret: str | None = attrs.field(default=None, repr=False)
    webhook_secret: str | None = attrs.field(default=None, repr=False)
    public_url: str | None = None
    state_path: str = ":memory:"
    prices: Mapping[str, float] = attrs.field(factory=dict)
    charge_failed: bool = True
    max_body: int = attrs.field(default=64 * 1024, validator=v.ge(256))
    body_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    header_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    upstream_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    upstream_max_in_flight: int = attrs.field(default=256, validator=v.ge(1))
    upstream_create_per_second: float | None = attrs.field(
        default=None, validator=v.optional(v.gt(0))
    )
    upstream_query_per_second: float | None = attrs.field(
        default=None, validator=v.optional(v.gt(0))
    )
    upstream_discover_rate: bool = False
    upstream_http: str = attrs.field(default="auto", validator=v.in_(("auto", "aiohttp")))
    settle_after: float = attrs.field(default=30.0, validator=v.ge(0))
    sweep_interval: float = attrs.field(default=10.0, validator=v.gt(0))
    reload_interval: float = attrs.field(default=2.0, validator=v.gt(0))
    demo: bool = False
    metrics: bool = True
    callbacks: CallbackSettings = attrs.field(factory=CallbackSettings)
    alerts: AlertSettings = attrs.field(factory=AlertSettings)
    state: StateSettings = attrs.field(factory=StateSettings)
    path: str | None = None


_POLICY_FIELDS = {f.name for f in attrs.fields(Policy)}


def _policy(raw: Mapping[str, Any], base: Policy | None, where: str) -> Policy:
    known = {k: raw[k] for k in raw if k in _POLICY_FIELDS}
    try:
        return Policy(**known) if base is None else attrs.evolve(base, **known)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _secret(raw: Mapping[str, Any], name: str, where: str) -> str | None:
    value = raw.get(name)
    env = raw.get(f"{name}_env")
    if value is None and env is not None:
        value = os.environ.get(str(env))
        if not value:
            raise ConfigurationError(f"{where}: environment variable {env} is not set")
    return str(value) if value is not None else None


def _keys(raw: Any, default_url: str) -> tuple[UpstreamKey, ...]:
    keys = []
    for i, entry in enumerate(raw or ()):
        where = f"upstream.keys[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        key = _secret(entry, "key", where)
        if not key:
            raise ConfigurationError(f"{where}: give key = ... or key_env = ...")
        name = str(entry.get("name", f"key{i + 1}"))
        keys.append(
            UpstreamKey(name=name, key=key, base_url=str(entry.get("base_url", default_url)))
        )
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigurationError("upstream.keys: key names must be unique")
    return tuple(keys)


def _users(raw: Mapping[str, Any], defaults: Policy) -> dict[str, UserEntry]:
    users: dict[str, UserEntry] = {}
    digests: set[str] = set()
    for name, entry in raw.items():
        where = f"users.{name}"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        digest = str(entry.get("token_sha256", "")).strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigurationError(
                f"{where}: token_sha256 must be a SHA-256 hex digest "
                "(`ruxa-async mint-token --new-user NAME` prints one)"
            )
        if digest in digests:
            raise ConfigurationError(f"{where}: two users share one token")
        digests.add(digest)
        users[name] = UserEntry(
            name=name,
            token_sha256=digest,
            policy=_policy(entry, defaults, where),
            webhook_secret=_secret(entry, "webhook_secret", where),
        )
    return users


def _section(cls: type[Any], raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a table")
    fields = {f.name for f in attrs.fields(cls)}
    values = {k: (tuple(x) if isinstance(x, list) else x) for k, x in raw.items() if k in fields}
    if cls is CallbackSettings and "upstream_hmac_key" not in values:
        values["upstream_hmac_key"] = _secret(raw, "upstream_hmac_key", where)
    if cls is StateSettings and "redis_url" not in values:
        values["redis_url"] = _secret(raw, "redis_url", where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


_TOP = {f.name for f in attrs.fields(GatewayConfig)} - {
    "keys",
    "users",
    "defaults",
    "signing_secret",
    "webhook_secret",
    "callbacks",
    "alerts",
    "state",
    "prices",
    "path",
}


def parse_config(data: Mapping[str, Any], *, path: str | None = None) -> GatewayConfig:
    """Build a :class:`GatewayConfig` from TOML-shaped data; raise ConfigurationError if wrong."""
    defaults = _policy(data.get("defaults", {}), None, "defaults")
    upstream = data.get("upstream", {})
    if not isinstance(upstream, Mapping):
        raise ConfigurationError("upstream must be a table")
    default_url = str(upstream.get("base_url", DEFAULT_BASE_URL))
    top = {k: data[k] for k in data if k in _TOP}
    try:
        return GatewayConfig(
            keys=_keys(upstream.get("keys"), default_url),
            users=_users(data.get("users", {}), defaults),
            defaults=defaults,
            signing_secret=_secret(data, "signing_secret", "gateway"),
            webhook_secret=_secret(data, "webhook_secret", "gateway"),
            prices={str(k): float(p) for k, p in data.get("prices", {}).items()},
            callbacks=_section(CallbackSettings, data.get("callbacks"), "callbacks"),
            alerts=_section(AlertSettings, data.get("alerts"), "alerts"),
            state=_section(StateSettings, data.get("state"), "state"),
            path=path,
            **top,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"gateway config: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read a gateway TOML file (see the README's gateway section for its keys)."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file} is not valid TOML: {exc}") from None
    return parse_config(data, path=str(file))
