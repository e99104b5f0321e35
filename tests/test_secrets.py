"""Secrets: the API key, the callback URL token and the HMAC key never show.

Two failing runs are captured whole and searched for every secret in its raw,
URL-encoded, base64 (at any alignment) and hex forms:

* the real CLI at ``-vv``: a partly failing run with callbacks, a run whose
  key is rejected, and ``status`` with that key; stdout, stderr and every file
  the runs wrote (journal with its WAL, results.jsonl, downloads);
* an in-process run with callbacks, HMAC and the root logger at DEBUG (every
  library's records, formatted with their tracebacks): faults, failed tasks,
  invalid jobs, forged callbacks, a key revoked mid-run and a wrong key; plus
  the repr, str and traceback of everything a user can hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp

from ruxa_async import (
    Job,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    RuxaClient,
    RuxaError,
    Timeouts,
)
from ruxa_async.testing import CallbackDelivery, FakeRuxa, Faults, ModelBehavior, SimConfig
from ruxa_async.webhooks import CallbackServer

from .helpers_proc import FAST_CLI, NB, SimProcess, nb_job, read_results, run_cli, write_jobs

API_KEY = "sk-live-Zq8vN3pL0xTm7RkW2yHcQe"
WRONG_KEY = "sk-live-Bf4Jd9QsXe1Ua6PgWt"
CALLBACK_SECRET = "cbtoken-Kp2Wm8Rz5Tn1Vx7Ys3Ld"
HMAC_KEY = "hmac-Gh6Jq0Nc4Fb9Mz2Wr5TaVk"
# Anything after the callback path other than the "<secret>" / "<redacted>" placeholders.
CALLBACK_TOKEN = re.compile(r"/ruxa/callback/(?!<)[A-Za-z0-9._~%-]{8,}")


def forms(secret: str) -> set[str]:
    """How a secret could show up: raw, URL-encoded, hex, base64 at each byte alignment."""
    raw = secret.encode()
    found = {secret, quote(secret, safe=""), quote_plus(secret), raw.hex()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for pad in range(3):
            text = encode(b"\0" * pad + raw).decode()
            start = -(-4 * pad // 3)  # the first character that depends on the secret alone
            found.add(text[start : len(text) - 4])  # the last group also depends on padding
    return found


def leaks(texts: list[str], secrets: list[str]) -> list[str]:
    """Every (secret, form, where) found in ``texts``."""
    found = []
    for secret in secrets:
        for form in forms(secret):
            for i, text in enumerate(texts):
                if form in text:
                    at = text.index(form)
                    context = text[max(0, at - 80) : at + 80]
                    found.append(f"{secret[:8]}... as {form!r} in text {i}: {context!r}")
    return found


def test_the_leak_search_finds_encoded_secrets() -> None:
    """The search below is not vacuous: it finds a secret however it is encoded or embedded."""
    basic = base64.b64encode(f"user:{API_KEY}".encode()).decode()
    for text in [
        f"Authorization: Bearer {API_KEY}",
        f"url=https://x/?key={quote(API_KEY, safe='')}",
        f"Authorization: Basic {basic}",
        base64.b64encode(b"ab" + API_KEY.encode()).decode(),
        API_KEY.encode().hex(),
    ]:
        assert leaks([text], [API_KEY]), text
    assert not leaks(["sk-live-<redacted> and ***"], [API_KEY])
    assert CALLBACK_TOKEN.search("POST http://h:1/ruxa/callback/Kp2Wm8Rz5Tn1Vx7Y")
    assert not CALLBACK_TOKEN.search("listening on http://h:1/ruxa/callback/<secret>")


def _files(*folders: Path) -> list[str]:
    texts = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    return texts


def test_cli_at_debug_never_shows_the_key_or_the_callback_token(tmp_path: Path) -> None:
    """-vv runs (partial failure with callbacks, rejected key, status): no secret in any output."""
    sim = SimProcess(
        tmp_path,
        key=API_KEY,
        default_behavior={"median_seconds": 0.2, "fail_rate": 0.4},
        seed=5,
    )
    try:
        jobs = [nb_job(f"s{i}", f"secret run {i}") for i in range(6)]
        jobs.append({"id": "bad", "model": NB, "input": {"prompt": "x", "image_size": "0"}})
        good = write_jobs(tmp_path / "good.jsonl", jobs)
        out_a, out_b = tmp_path / "a", tmp_path / "b"
        common = ("--base-url", sim.url, "-vv", *FAST_CLI)
        a = run_cli(
            "run",
            str(good),
            "--out",
            str(out_a),
            "--callback-bind",
            "127.0.0.1:0",
            *common,
            key=API_KEY,
        )
        assert a.returncode == 1, a.stderr
        assert "DEBUG" in a.stderr
        results = read_results(out_a)
        assert {r["status"] for r in results} >= {"succeeded", "failed", "invalid"}
        stats = sim.stats()
        assert stats["callbacks_delivered"] > 0  # the token was really in use

        other = write_jobs(tmp_path / "other.jsonl", [nb_job(f"w{i}", f"w {i}") for i in range(3)])
        b = run_cli("run", str(other), "--out", str(out_b), *common, key=WRONG_KEY)
        assert b.returncode == 3, b.stderr
        assert "401" in b.stderr

        task_id = next(r["task_id"] for r in results if r["task_id"])
        c = run_cli("status", task_id, "--base-url", sim.url, "-vv", key=WRONG_KEY)
        assert c.returncode == 3, c.stderr
    finally:
        sim.close()

    texts = [a.stdout, a.stderr, b.stdout, b.stderr, c.stdout, c.stderr, *_files(out_a, out_b)]
    assert len(texts) > 8
    found = leaks(texts, [API_KEY, WRONG_KEY])
    assert not found, found
    tokens = [m.group(0) for t in texts for m in CALLBACK_TOKEN.finditer(t)]
    assert not tokens, tokens


async def test_in_process_failing_run_at_debug_never_shows_a_secret() -> None:
    """Root logger at DEBUG, callbacks with HMAC, faults and bad keys: no secret anywhere."""
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        texts = await _failing_run()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    texts.extend(handler.texts)
    assert any("DEBUG" in t and "callback" in t for t in handler.texts)
    assert any("ambiguous retry" in t for t in handler.texts)
    assert any("401" in t for t in handler.texts)
    found = leaks(texts, [API_KEY, WRONG_KEY, CALLBACK_SECRET, HMAC_KEY])
    assert not found, found


class _Capture(logging.Handler):
    """Every record from every logger, formatted with its traceback and stack."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))
        self.texts.append(repr(record.args))


def _shown(value: object) -> list[str]:
    texts = [repr(value), str(value)]
    if isinstance(value, BaseException):
        texts.append("".join(traceback.format_exception(value)))
        texts.append(repr(vars(value)))
    return texts


async def _failing_run() -> list[str]:
    texts: list[str] = []
    config = SimConfig(
        api_key=API_KEY,
        seed=13,
        default_behavior=ModelBehavior(median_seconds=0.3, sigma=0.3, fail_rate=0.3),
        faults=Faults(error_500_before=0.05, error_500_after_create=0.05, drop_before=0.03),
        callbacks=CallbackDelivery(hmac_key=HMAC_KEY, drop=0.3, duplicate=0.3),
    )
    server = CallbackServer(secret=CALLBACK_SECRET, hmac_key=HMAC_KEY)
    poll = PollPolicy(first_check=0.2, callback_grace_factor=1.0, callback_grace=0.3)
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_time=20.0)
    async with FakeRuxa(config) as fake:
        client = RuxaClient(API_KEY, base_url=fake.url, callbacks=server, poll=poll, retry=retry)
        texts += _shown(client)
        async with client:
            assert client.callback_url is not None
            assert CALLBACK_SECRET in client.callback_url
            jobs = [Job(model=NB, input={"prompt": f"p{i}"}, key=f"k{i}") for i in range(40)]
            jobs.append(Job(model=NB, input={"prompt": "x", "image_size": "9:9"}, key="invalid"))
            jobs.append(Job(model="acme/unknown", input={"prompt": "x"}, key="unknown"))
            report = await client.run_batch(jobs)
            assert report.failed > 0
            texts += _shown(report)
            for outcome in report.outcomes:
                texts += _shown(outcome)
                if outcome.error is not None:
                    texts += _shown(outcome.error)
            await _forged_callbacks(server)

            # The key is revoked while a task is pending: polling fails with 401.
            fake.reconfigure(default_behavior=ModelBehavior(median_seconds=30.0), faults=Faults())
            handle = await client.submit(NB, {"prompt": "revoked"})
            texts += _shown(handle)
            fake.reconfigure(api_key="sk-rotated-by-someone-else")
            try:
                await handle.wait(timeout=20)
            except RuxaError as exc:
                texts += _shown(exc)
            texts += _shown(client.statistics()) + _shown(server.statistics())
        texts += _shown(client) + _shown(server) + _shown(config) + _shown(config.callbacks)

        fake.reconfigure(api_key=API_KEY)
        async with RuxaClient(
            WRONG_KEY,
            base_url=fake.url,
            retry=retry,
            rate_limits=RateLimits(max_in_flight=4),
            timeouts=Timeouts(total=5),
        ) as wrong:
            for call in (
                wrong.create_task(NB, {"prompt": "x"}),
                wrong.get_task("task_anything"),
                wrong.wait("task_anything", timeout=5),
                wrong.download(fake.url + "/files/nope/nope.png", "/nonexistent/dir/x.png"),
            ):
                try:
                    await call
                except (RuxaError, OSError) as exc:
                    texts += _shown(exc)
            batch = await wrong.run_batch([Job(model=NB, input={"prompt": "y"})])
            texts += _shown(batch) + _shown(batch.outcomes[0].error)
            texts += _shown(wrong) + _shown(wrong.statistics())
    return texts


async def _forged_callbacks(server: CallbackServer) -> None:
    base = server.callback_url.rsplit("/", 1)[0]
    body = json.dumps({"code": 200, "data": {"taskId": "task_x", "state": "success"}}).encode()
    async with aiohttp.ClientSession() as session:
        for url, payload, headers in [
            (base + "/wrong-token-wrong-token", body, {}),
            (server.callback_url, body, {}),
            (
                server.callback_url,
                body,
                {"X-Webhook-Timestamp": "1", "X-Webhook-Signature": "AAAA"},
            ),
            (server.callback_url, b"{broken", {}),
            (server.callback_url, b"x" * 300_000, {}),
        ]:
            async with session.post(url, data=payload, headers=headers) as reply:
                await reply.read()
    await asyncio.sleep(0)
