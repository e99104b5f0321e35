"""The verifier remembers the callers of Authorization headers it has seen, and forgets
them on a reload, when a minted token expires and when it is full."""

from __future__ import annotations

from ruxa_async.gateway import GatewayConfig, Policy, UserEntry, hash_token, mint_token
from ruxa_async.gateway._tokens import _HEADERS_KEPT, TokenVerifier

SECRET = "gateway-signing-secret-for-tests-0123456789"
ALICE = "rxu_alice-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
NOW = 1_800_000_000.0


def _config(token: str = ALICE, policy: Policy | None = None) -> GatewayConfig:
    entry = UserEntry(name="alice", token_sha256=hash_token(token), policy=policy or Policy())
    return GatewayConfig(users={"alice": entry}, signing_secret=SECRET)


def _fresh(config: GatewayConfig, header: str | None, now: float = NOW) -> object:
    """What a verifier that has never seen ``header`` makes of it."""
    return TokenVerifier(config, clock=lambda: now).identify(header)


def test_a_remembered_header_names_the_caller_a_fresh_look_names() -> None:
    """Asked again, a header gives the caller it gave the first time; headers that name
    nobody give None each time (and are not remembered)."""
    config = _config()
    verifier = TokenVerifier(config, clock=lambda: NOW)
    headers = [f"Bearer {ALICE}", f"bearer   {ALICE} ", "Bearer rxu_nobody", "Basic x", "", None]
    for header in headers * 2:
        assert verifier.identify(header) == _fresh(config, header)
    assert verifier.identify(f"Bearer {ALICE}") is not None
    assert len(verifier._headers) == 2


def test_a_reload_forgets_remembered_headers() -> None:
    """After a reload that changes alice's token or policy, her old header says what the new
    config says."""
    verifier = TokenVerifier(_config(), clock=lambda: NOW)
    header = f"Bearer {ALICE}"
    assert verifier.identify(header) is not None
    narrowed = _config(policy=Policy(models=["sora-2"]))
    verifier.update(narrowed)
    who = verifier.identify(header)
    assert who is not None
    assert who.policy == narrowed.users["alice"].policy
    verifier.update(_config(token="rxu_alice-new-token-aaaaaaaaaaaaaaaaaaaaaaa"))
    assert verifier.identify(header) is None


def test_a_remembered_minted_token_still_expires() -> None:
    """A minted token's header, remembered while valid, names nobody from its expiry on."""
    now = [NOW]
    verifier = TokenVerifier(_config(), clock=lambda: now[0])
    header = f"Bearer {mint_token(SECRET, 'dana', ttl=60, now=NOW)}"
    first = verifier.identify(header)
    assert first is not None
    assert first.user == "dana"
    now[0] += 59.9
    assert verifier.identify(header) == first
    now[0] += 0.1
    assert verifier.identify(header) is None
    assert verifier.identify(header) is None
    assert header not in verifier._headers


def test_the_remembered_headers_are_bounded() -> None:
    """Many valid headers (the same token, with spaces before and after it) never make the
    memory hold more than its bound."""
    verifier = TokenVerifier(_config(), clock=lambda: NOW)
    seen = 0
    for before in range(80):
        for after in range(80):
            assert verifier.identify("Bearer " + " " * before + ALICE + " " * after) is not None
            assert len(verifier._headers) <= _HEADERS_KEPT
            seen += 1
    assert seen > _HEADERS_KEPT


def test_a_header_is_remembered_under_its_exact_text() -> None:
    """A header differing in any character from a remembered one is looked at afresh."""
    verifier = TokenVerifier(_config(), clock=lambda: NOW)
    assert verifier.identify(f"Bearer {ALICE}") is not None
    assert verifier.identify(f"Bearer {ALICE}x") is None
    assert verifier.identify(f"Bearer {ALICE[:-1]}") is None
    assert verifier.identify(f"Bearer {ALICE}") == _fresh(_config(), f"Bearer {ALICE}")
