"""Who is calling: configured user tokens (looked up by digest) and minted scoped tokens.

A scoped token is ``rxs1.<payload>.<signature>``: the payload is base64url
JSON ``{sub, iat, exp, jti, models?, budget?}`` and the signature is
base64url(HMAC-SHA256(signing secret, "rxs1." + payload)). It proves itself:
the gateway stores nothing per token except, when it carries a budget, what
it has spent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping

import attrs

from .._errors import ConfigurationError
from ._config import GatewayConfig, Policy, hash_token

__all__ = ["Identity", "TokenVerifier", "mint_token", "new_user_token"]

PREFIX = "rxs1."
_MAX_TOKEN = 4096
_CLOCK_SKEW = 60.0
_CACHE_SIZE = 50_000
_HEADERS_KEPT = 4096  # Authorization headers remembered with their caller (all forgotten when full)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    mac = hmac.new(secret.encode(), (PREFIX + payload).encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def mint_token(
    secret: str,
    user: str,
    *,
    ttl: float = 600.0,
    models: Iterable[str] | None = None,
    budget: float | None = None,
    now: float | None = None,
) -> str:
    """A short-lived scoped token for ``user``, signed with the gateway's ``secret``.

    The token expires after ``ttl`` seconds, may use only ``models`` (None: what
    the user's policy allows) and may spend at most ``budget`` credits over its
    life (None: only the user's own budget applies). An app's backend mints one
    for a signed-in user and hands it to the browser; the browser never sees
    the Ruxa key.
    """
    if not secret:
        raise ConfigurationError("mint_token needs the gateway's signing secret")
    if not user or not isinstance(user, str):
        raise ConfigurationError("mint_token needs a user name")
    if not ttl > 0:
        raise ConfigurationError(f"ttl must be > 0 seconds, got {ttl!r}")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "sub": user,
        "iat": int(issued),
        "exp": issued + ttl,
        "jti": secrets.token_hex(8),
    }
    if models is not None:
        claims["models"] = sorted(set(models))
    if budget is not None:
        if not budget >= 0:
            raise ConfigurationError(f"budget must be >= 0 credits, got {budget!r}")
        claims["budget"] = float(budget)
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{PREFIX}{payload}.{_sign(secret, payload)}"


def new_user_token() -> tuple[str, str]:
    """A fresh random user token and the SHA-256 digest the config file stores for it."""
    token = "rxu_" + secrets.token_urlsafe(32)
    return token, hash_token(token)


@attrs.frozen(kw_only=True)
class Identity:
    """An authenticated caller: the user name, the policy in force, and a token's scope.

    ``scope`` is the scoped token's id (its budget is kept under it), or None
    for a configured user token.
    """

    user: str
    policy: Policy
    scope: str | None = None
    token_budget: float | None = None


def _narrow(policy: Policy, models: object) -> Policy | None:
    if models is None:
        return policy
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        return None
    allowed = frozenset(models)
    if policy.models is not None:
        allowed &= policy.models
    return attrs.evolve(policy, models=allowed)


class TokenVerifier:
    """Turns an ``Authorization`` header into an :class:`Identity`, or None (answer 401)."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.update(config)

    def update(self, config: GatewayConfig) -> None:
        """Take the users, defaults and signing secret of a (re)loaded config."""
        # Scoped tokens already verified, by digest: (identity, expiry). Emptied here
        # because a reload may change a user's policy or the signing secret.
        self._verified: dict[str, tuple[Identity, float]] = {}
        # The callers of Authorization headers seen lately (no digest computed again):
        # (identity, expiry or None for a configured token). Emptied here for the same reasons.
        self._headers: dict[str, tuple[Identity, float | None]] = {}
        self._by_digest = {
            u.token_sha256: Identity(user=u.name, policy=u.policy) for u in config.users.values()
        }
        self._users = dict(config.users)
        self._defaults = config.defaults
        self._secret = config.signing_secret
        self._webhook_secret = config.webhook_secret

    def identify(self, header: str | None) -> Identity | None:
        """The caller behind ``Authorization: Bearer <token>``; None for anything else."""
        if header is None:
            return None
        known = self._headers.get(header)
        if known is not None:
            if known[1] is None or self._clock() < known[1]:
                return known[0]
            del self._headers[header]  # an expired scoped token: checked in full again
        if not header or len(header) > _MAX_TOKEN + 16:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hash_token(token)
        found: tuple[Identity, float | None] | None
        if token.startswith(PREFIX):
            found = self._cached(digest, token)
        else:
            user = self._by_digest.get(digest)
            found = None if user is None else (user, None)
        if found is None:
            return None
        if len(self._headers) >= _HEADERS_KEPT:
            self._headers.clear()
        self._headers[header] = found
        return found[0]

    def _cached(self, digest: str, token: str) -> tuple[Identity, float] | None:
        """A scoped token's identity and expiry, verified once per token and kept until it
        expires."""
        hit = self._verified.get(digest)
        if hit is not None:
            if self._clock() < hit[1]:
                return hit
            del self._verified[digest]
            return None
        found = self._scoped(token)
        if found is not None:
            if len(self._verified) >= _CACHE_SIZE:
                now = self._clock()
                self._verified = {d: v for d, v in self._verified.items() if v[1] > now}
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.clear()
            self._verified[digest] = found
        return found

    def webhook_secret(self, user: str) -> str | None:
        """The secret that signs callbacks relayed to ``user``: theirs, else the gateway's."""
        entry = self._users.get(user)
        return (entry.webhook_secret if entry else None) or self._webhook_secret

    def _claims(self, token: str) -> Mapping[str, object] | None:
        if self._secret is None:
            return None
        body = token[len(PREFIX) :]
        payload, dot, signature = body.partition(".")
        if not dot or not payload or not signature:
            return None
        if not hmac.compare_digest(_sign(self._secret, payload), signature):
            return None
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError):
            return None
        return claims if isinstance(claims, dict) else None

    def _scoped(self, token: str) -> tuple[Identity, float] | None:
        claims = self._claims(token)
        if claims is None:
            return None
        user, exp, jti = claims.get("sub"), claims.get("exp"), claims.get("jti")
        iat = claims.get("iat", 0)
        if not isinstance(user, str) or not user or not isinstance(jti, str):
            return None
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)):
            return None
        now = self._clock()
        if now >= exp or iat > now + _CLOCK_SKEW:
            return None
        entry = self._users.get(user)
        policy = _narrow(entry.policy if entry else self._defaults, claims.get("models"))
        if policy is None:
            return None
        budget = claims.get("budget")
        if budget is not None and not (isinstance(budget, (int, float)) and budget >= 0):
            return None
        identity = Identity(
            user=user,
            policy=policy,
            scope=f"token:{jti}",
            token_budget=float(budget) if budget is not None else None,
        )
        return identity, float(exp)
