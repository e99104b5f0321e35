"""`ruxa-async gateway --simulate` and `ruxa-async mint-token` as real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from ruxa_async import AuthenticationError, RuxaClient
from ruxa_async.gateway import hash_token
from tests.conftest import FAST_POLL
from tests.helpers_gateway import NB, PROMPT, TOKENS
from tests.helpers_proc import ROOT, child_env, cli, reaped, run_cli

SIGNING = "cli-test-signing-secret-9876543210"


def write_config(path: Path, users: list[str]) -> None:
    lines = [f'signing_secret = "{SIGNING}"', "reload_interval = 3600"]
    lines += ["[defaults]", 'models = ["google/nano-banana"]', "budget = 100"]
    for name in users:
        lines += [f"[users.{name}]", f'token_sha256 = "{hash_token(TOKENS[name])}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_gateway(config: Path) -> subprocess.Popen[str]:
    """``ruxa-async gateway --simulate --config CONFIG --port 0``, stderr piped."""
    return subprocess.Popen(
        cli("gateway", "--simulate", "--config", str(config), "--port", "0"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


async def test_the_standalone_gateway_serves_mints_and_reloads_on_sighup(tmp_path: Path) -> None:
    """--simulate serves the API and demo; mint-token tokens work; SIGHUP adds a user."""
    config = tmp_path / "gateway.toml"
    write_config(config, ["alice"])
    with reaped(start_gateway(config)) as proc:
        assert proc.stderr is not None
        first = await asyncio.to_thread(proc.stderr.readline)
        assert first.startswith("ruxa-async gateway on "), first
        url = first.split()[-1]
        minted = run_cli(
            "mint-token",
            "--config",
            str(config),
            "--user",
            "zed",
            "--ttl",
            "120",
            "--models",
            NB,
            key=None,
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        async with RuxaClient(api_key=token, base_url=url, poll=FAST_POLL) as zed:
            assert (await zed.generate(NB, PROMPT, timeout=30)).succeeded
        async with RuxaClient(api_key=TOKENS["bob"], base_url=url, poll=FAST_POLL) as bob:
            with pytest.raises(AuthenticationError):
                await bob.create_task(NB, PROMPT)
            write_config(config, ["alice", "bob"])
            proc.send_signal(signal.SIGHUP)
            while True:
                try:
                    await bob.create_task(NB, PROMPT)
                    break
                except AuthenticationError:
                    await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/demo/") as page:
            assert page.status == 200
            assert "<script>" in await page.text()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        rest = proc.stderr.read()
    assert code == 0
    for secret in (SIGNING, token, *TOKENS.values()):
        assert secret not in first + rest


def test_mint_token_new_user_prints_a_token_and_only_its_digest_for_the_config() -> None:
    """--new-user prints the raw token once and the config lines with its SHA-256 only."""
    done = run_cli("mint-token", "--new-user", "erin", key=None)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    token = next(line for line in lines if line.startswith("rxu_"))
    assert f'token_sha256 = "{hash_token(token)}"' in done.stdout
    assert done.stdout.count(token) == 1


def test_mint_token_without_a_secret_says_what_is_missing(tmp_path: Path) -> None:
    """A config without signing_secret: exit 2 and a message naming the setting."""
    config = tmp_path / "gateway.toml"
    config.write_text("[defaults]\nbudget = 1\n", encoding="utf-8")
    done = run_cli("mint-token", "--config", str(config), "--user", "x", key=None)
    assert done.returncode == 2
    assert "signing_secret" in done.stderr


def test_the_loop_option_picks_uvloop_or_the_standard_asyncio_loop() -> None:
    """--loop: auto and uvloop run the gateway on uvloop (installed here), asyncio on the
    standard loop."""
    import uvloop

    from ruxa_async.gateway._cli import _loop_factory

    assert _loop_factory("auto") is uvloop.new_event_loop
    assert _loop_factory("uvloop") is uvloop.new_event_loop
    assert _loop_factory("asyncio") is None
